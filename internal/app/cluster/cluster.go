// Package cluster connects a role to the job's cluster: to NATS and etcd,
// as the role, with its credentials and the cluster's TLS authority when
// there are any; and it watches a NATS connection, ending a role that has
// stayed cut off from NATS for too long.
package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/downpour-ml/downpour/internal/app/auth"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/internal/metrics"
	"github.com/nats-io/nats.go"
)

// Endpoints say where the cluster is and how a role logs in to it.
type Endpoints struct {
	NATS      string        // NATS server URL(s), comma-separated
	Etcd      string        // etcd endpoint(s), comma-separated
	Timeout   time.Duration // how long to wait for NATS and etcd to answer
	CredsFile string        // this role's credentials file, where the servers require them
	TLSCA     string        // the authority NATS's and etcd's certificates come from ("": no TLS)
	// Creds are every role's credentials where this process made them (an
	// embedded cluster's, per run); they take precedence over CredsFile.
	Creds map[auth.Role]*auth.Creds
	// InProcess is the NATS server this process embeds, when it does: its
	// roles then connect to it in-process (a pipe in memory, no loopback
	// TCP), which spares the 2 kernel copies and the syscalls of every
	// message.
	InProcess nats.InProcessConnProvider
}

// ConnectNATS opens a NATS connection named after the role, with the
// role's credentials when there are any (made here, or --creds); an
// unreachable server is an error within the timeout, not a hang.
func (ep Endpoints) ConnectNATS(name string, role auth.Role) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name("downpour " + name), nats.Timeout(ep.Timeout),
		nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond)}
	creds, err := ep.CredsFor(role)
	if err != nil {
		return nil, err
	}
	if creds != nil {
		opts = append(opts, creds.NATSOptions()...)
	}
	tc, err := ep.TLS()
	if err != nil {
		return nil, err
	}
	if tc != nil {
		opts = append(opts, nats.Secure(tc))
	}
	if ep.InProcess != nil {
		opts = append(opts, nats.InProcessServer(ep.InProcess))
	}
	nc, err := nats.Connect(ep.NATS, opts...)
	if errors.Is(err, nats.ErrAuthorization) || err != nil && strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
		return nil, fmt.Errorf("NATS at %s refused this %s's credentials (give the role's own with --creds): %w", ep.NATS, role, err)
	}
	if err != nil && ep.InProcess != nil {
		// A refusal reaches an in-process client as a closed pipe; the
		// server's log has the reason.
		return nil, fmt.Errorf("the embedded NATS server closed this %s's in-process connection (its log says why): %w", role, err)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot reach NATS at %s (is it running? check --nats): %w", ep.NATS, err)
	}
	metrics.Watch(Traffic(nc), strings.Fields(name)[0]) // "ps 1" counts as ps
	return nc, nil
}

// Traffic reads nc's counts for metrics.Watch.
func Traffic(nc *nats.Conn) metrics.TrafficReader {
	return func() (metrics.Traffic, bool) {
		st := nc.Stats()
		return metrics.Traffic{InMsgs: st.InMsgs, OutMsgs: st.OutMsgs, InBytes: st.InBytes, OutBytes: st.OutBytes}, nc.IsClosed()
	}
}

// ErrNATSGone is the cause of a role's end when NATS stayed unreachable for
// longer than --give-up.
var ErrNATSGone = errors.New("NATS unreachable")

// Watch logs nc's disconnections and reconnections (it keeps
// reconnecting), and returns a context that ends, with cause ErrNATSGone,
// once nc has stayed disconnected for giveUp. stop releases it.
func Watch(ctx context.Context, nc *nats.Conn, giveUp time.Duration, log *slog.Logger) (_ context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	var mu sync.Mutex
	var timer *time.Timer
	nc.SetDisconnectErrHandler(func(c *nats.Conn, err error) {
		if c.IsClosed() {
			return // closed on purpose
		}
		log.Warn("lost NATS; reconnecting", "err", err, "give_up_after", giveUp)
		mu.Lock()
		defer mu.Unlock()
		if timer == nil {
			timer = time.AfterFunc(giveUp, func() { cancel(fmt.Errorf("%w for %v: giving up", ErrNATSGone, giveUp)) })
		}
	})
	nc.SetReconnectHandler(func(c *nats.Conn) {
		log.Warn("reconnected to NATS", "url", c.ConnectedUrl())
		mu.Lock()
		defer mu.Unlock()
		if timer != nil {
			timer.Stop()
			timer = nil
		}
	})
	return ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if timer != nil {
			timer.Stop()
		}
		cancel(nil)
	}
}

// Cause returns the NATS give-up error if that is why ctx ended, else err.
func Cause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); err != nil && errors.Is(c, ErrNATSGone) {
		return c
	}
	return err
}

// ConnectEtcd connects to etcd as role, with the role's credentials when
// there are any (made here, or --creds).
func (ep Endpoints) ConnectEtcd(ctx context.Context, role auth.Role) (*etcdstore.Client, error) {
	creds, err := ep.CredsFor(role)
	if err != nil {
		return nil, err
	}
	user, password := creds.EtcdLogin()
	tc, err := ep.TLS()
	if err != nil {
		return nil, err
	}
	cli, err := etcdstore.ConnectAs(ctx, strings.Split(ep.Etcd, ","), ep.Timeout, user, password, tc)
	if err != nil {
		return nil, err
	}
	return etcdstore.NewClient(cli), nil
}

// TLS is the clients' TLS configuration: nil without --tls-ca.
func (e Endpoints) TLS() (*tls.Config, error) {
	if e.TLSCA == "" {
		return nil, nil
	}
	return auth.ClientTLS(e.TLSCA)
}

// CredsFor returns role's credentials: made by this process, or read from
// --creds; nil without any.
func (e Endpoints) CredsFor(role auth.Role) (*auth.Creds, error) {
	if c := e.Creds[role]; c != nil {
		return c, nil
	}
	if e.CredsFile == "" {
		return nil, nil
	}
	c, err := auth.Read(e.CredsFile)
	if err != nil {
		return nil, err
	}
	if c.Role != role {
		return nil, fmt.Errorf("--creds %s holds credentials of a %s; this is a %s", e.CredsFile, c.Role, role)
	}
	return c, nil
}
