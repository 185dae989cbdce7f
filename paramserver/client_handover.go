package paramserver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/wire"
)

// A job whose shards keep copies of each block (job.Placement.Copies) goes
// on through a shard's death: the coordinator hands the dead shard's
// blocks over to their backups in a new placement of the same lineage
// (job.Placement.Handover), and a client given it (Handover) sends what it
// had in flight again, under the new placement, to the blocks' new
// primaries: every request waiting on the old placement ends at once, and
// its message group is cut by the new primaries and sent again as one
// request a shard. A resent push is applied where the step was lost with
// the dead primary and dropped where it was not; a pull is asked again.
// Nothing goes back a step.

// errHandedOver ends a request sent under a placement the client has since
// been handed over from.
var errHandedOver = errors.New("the placement was handed over")

// HandoverWait bounds how long a client of a replicated job waits, after a
// shard refuses a request as sent to a superseded placement, for the
// handover that would say where to send it; past it, the refusal is
// returned (the job was re-placed, not handed over).
const HandoverWait = 30 * time.Second

// handovers is a client's view of its placement's lineage: the newest
// placement it was given, and a context that ends at the next one.
type handovers struct {
	mu      sync.Mutex
	p       *job.Placement
	next    context.Context
	advance context.CancelFunc
}

func (h *handovers) init(p *job.Placement) {
	h.p = p
	h.next, h.advance = context.WithCancel(context.Background())
}

// newest is the newest placement, and a context that ends when a newer
// one comes.
func (h *handovers) newest() (*job.Placement, context.Context) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.p, h.next
}

// Handover gives the client the placement q that the job's coordinator
// handed over to from the client's (q.HandedOver, of the same lineage,
// newer). Requests in flight under an older placement are sent again under
// q; the client's later requests go by q.
func (c *Client) Handover(q *job.Placement) error {
	c.hand.mu.Lock()
	defer c.hand.mu.Unlock()
	p := c.hand.p
	if p == nil {
		return errors.New("paramserver: a client made without a placement cannot be handed over")
	}
	if !q.HandedOver || q.Lineage() != p.Lineage() || q.Version <= p.Version || q.Shards != p.Shards {
		return fmt.Errorf("paramserver: placement %d (lineage %d) is not a handover from placement %d (lineage %d)", q.Version, q.Lineage(), p.Version, p.Lineage())
	}
	c.hand.p = q
	c.hand.advance()
	c.hand.next, c.hand.advance = context.WithCancel(context.Background())
	return nil
}

// adopt makes the client's groups those of the newest placement it was
// handed, if it has not yet (the caller's operation is the only one in
// progress that reads them).
func (c *Client) adopt() error {
	p, _ := c.hand.newest()
	if p == nil || p.Version == c.version {
		return nil
	}
	version := c.version
	c.version = p.Version // (pack gives the groups the client's version)
	groups, err := c.placementGroups(p)
	if err != nil {
		c.version = version
		return err
	}
	c.groups = groups
	return nil
}

// handedSince returns a context that ends once the client has a placement
// newer than version (ended already, if it has).
func (c *Client) handedSince(version int64) context.Context {
	p, next := c.hand.newest()
	switch {
	case p == nil: // a client made without a placement: never handed over
		return context.Background()
	case p.Version > version:
		return ended
	}
	return next
}

// ended is a context that has ended.
var ended = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// supersededWait waits, after a shard refused a request sent under
// version as superseded, for a placement handed over from it: it returns
// errHandedOver when one comes (the request goes again under it), or
// refused when none does within HandoverWait (the job was re-placed).
func (c *Client) supersededWait(ctx context.Context, version int64, refused error) error {
	if p, _ := c.hand.newest(); !errors.Is(refused, &wire.Error{Kind: wire.Superseded}) || p == nil || p.Copies < 2 {
		return refused
	}
	handed := c.handedSince(version)
	select {
	case <-handed.Done():
		return errHandedOver
	case <-ctx.Done():
		return fmt.Errorf("%w (waiting for a handover after: %v)", ctx.Err(), refused)
	case <-time.After(HandoverWait):
		return refused
	}
}

// route runs op for g and, if the placement it went under is handed over
// before it is done, cuts g by the newest placement's primaries and runs
// op for each part under it.
func (c *Client) route(ctx context.Context, g group, op func(context.Context, group) error) error {
	err := op(ctx, g)
	if !errors.Is(err, errHandedOver) {
		return err
	}
	parts := c.regroup(g)
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for i, part := range parts {
		wg.Go(func() { errs[i] = c.route(ctx, part, op) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// regroup cuts g's blocks (with their span lists) by their primaries in
// the newest placement, in g's order.
func (c *Client) regroup(g group) []group {
	p, _ := c.hand.newest()
	var parts []group
	at := map[int]int{} // shard -> index in parts
	for i, b := range g.blocks {
		s := p.Blocks[b.ID].Shard
		k, ok := at[s]
		if !ok {
			k = len(parts)
			at[s] = k
			parts = append(parts, group{shard: s, version: p.Version, contiguous: true})
			if g.push != nil {
				parts[k].push = [][]byte{}
			}
			if g.pull != nil {
				parts[k].pull = [][]byte{}
			}
		}
		part := &parts[k]
		if n := len(part.blocks); n > 0 && part.blocks[n-1].Offset+part.blocks[n-1].Len != b.Offset {
			part.contiguous = false
		}
		nb := b
		nb.Shard = s
		part.blocks = append(part.blocks, nb)
		part.ids = append(part.ids, b.ID)
		if g.push != nil {
			part.push = append(part.push, g.push[i])
		}
		if g.pull != nil {
			part.pull = append(part.pull, g.pull[i])
		}
	}
	return parts
}
