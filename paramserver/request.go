package paramserver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// connWatch follows one NATS connection for all the requests made on it:
// lost is a context that ends when the connection is lost (disconnected, or
// reconnecting), replaced by a fresh one after each loss. A request ties
// itself to the current one with context.AfterFunc: no lock of the
// connection, no goroutine per request.
type connWatch struct {
	mu     sync.Mutex
	lost   context.Context
	cancel context.CancelFunc
}

var watches sync.Map // *nats.Conn -> *connWatch

// watchConn returns nc's watch, starting it on first use; it ends when nc
// is closed.
func watchConn(nc *nats.Conn) *connWatch {
	if w, ok := watches.Load(nc); ok {
		return w.(*connWatch)
	}
	w := &connWatch{}
	w.lost, w.cancel = context.WithCancel(context.Background())
	if prev, loaded := watches.LoadOrStore(nc, w); loaded {
		w.cancel()
		return prev.(*connWatch)
	}
	ch := nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	if nc.IsClosed() { // closed before the listener was set: no event will come
		nc.RemoveStatusListener(ch)
		watches.Delete(nc)
		return w
	}
	go func() {
		defer watches.Delete(nc)
		defer nc.RemoveStatusListener(ch)
		for st := range ch {
			w.mu.Lock()
			w.cancel()
			if st != nats.CLOSED {
				w.lost, w.cancel = context.WithCancel(context.Background())
			}
			w.mu.Unlock()
			if st == nats.CLOSED {
				return
			}
		}
	}()
	return w
}

// current is the context that ends at the connection's next loss.
func (w *connWatch) current() context.Context {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lost
}

// request sends data and waits for the reply, resending it until ctx ends:
// at once when the connection to the NATS server is lost (the reply would
// be lost with it), after a pause while no shard is subscribed, and after
// each attempt's timeout (a request or its reply lost with the shard's
// server), which doubles from c.Attempt at each timeout, up to 8 times it,
// so that a slow shard is not flooded. A request sent under placement
// version ends with errHandedOver once the client is handed a newer one.
func (c *Client) request(ctx context.Context, version int64, subject string, hdr nats.Header, data []byte) (*nats.Msg, error) {
	backoff := 10 * time.Millisecond
	attempt := c.Attempt
	handed := c.handedSince(version)
	for {
		actx, cancel := context.WithCancelCause(ctx)
		stop := context.AfterFunc(watchConn(c.nc).current(), func() { cancel(errConnLost) })
		stopHanded := context.AfterFunc(handed, func() { cancel(errHandedOver) })
		tctx, tcancel := context.WithTimeout(actx, attempt)
		msg, err := c.nc.RequestMsgWithContext(tctx, &nats.Msg{Subject: subject, Header: hdr, Data: data})
		stop()
		stopHanded()
		cause := context.Cause(actx)
		tcancel()
		cancel(nil)
		switch {
		case err == nil:
			return msg, nil
		case ctx.Err() != nil:
			return nil, fmt.Errorf("%s: %w (last error: %v)", subject, ctx.Err(), err)
		case errors.Is(cause, errHandedOver):
			return nil, errHandedOver
		case errors.Is(cause, errConnLost):
			continue // resent at once: published while reconnecting, it goes out on the new connection
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
			attempt = min(2*attempt, 8*c.Attempt)
			continue
		case !errors.Is(err, nats.ErrNoResponders):
			return nil, fmt.Errorf("%s: %w", subject, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: %w (last error: %v)", subject, ctx.Err(), err)
		case <-handed.Done():
			return nil, errHandedOver
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}
