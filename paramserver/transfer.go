package paramserver

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"sync"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/downpour-ml/downpour/internal/wire"
)

// Transfer is a PushPull in flight: its caller may compute on the parameters
// that have arrived (WaitRange) while the rest are still moving, and must
// not change grads before WaitPushed returns.
type Transfer struct {
	groups []group
	pushed []chan struct{} // closed when group i's push is acknowledged
	pulled []chan struct{} // closed when group i's parameters are in params
	failed chan struct{}   // closed after the first error, once every group has stopped
	done   chan struct{}   // closed when every group has finished or failed
	err    error           // the first error; read after failed or done is closed
}

// StartPushPull starts PushPull in the background and returns at once. The
// groups go in the order a step reads their first parameter (ReadOrder; by
// default front to back), so that the forward pass finds the parameters it
// needs first among the first to arrive.
func (c *Client) StartPushPull(ctx context.Context, step int64, grads, params []float32) *Transfer {
	return c.StartPushPullSparse(ctx, step, grads, params, nil, nil)
}

// StartPushPullSparse is StartPushPull for a step that touches only parts
// of the parameters, such as the rows of an embedding table that a batch's
// tokens use. push and pull are sorted, disjoint [lo, hi) ranges of the flat
// vector (nil for all of it): grads must be zero outside push, which is
// sent; only params inside pull are pulled, and the rest of params is left
// as it was. Blocks the ranges cover whole travel as usual; the others
// travel as sparse blocks (see wire.ParseSpans), packed into as few
// messages as fit. The shards apply exactly what the whole gradient would
// have them apply, so this changes how much moves, never the parameters.
func (c *Client) StartPushPullSparse(ctx context.Context, step int64, grads, params []float32, push, pull [][2]int) *Transfer {
	t := &Transfer{failed: make(chan struct{}), done: make(chan struct{})}
	err := c.adopt()
	if err == nil {
		err = checkRanges(push, len(grads))
	}
	if err == nil {
		err = checkRanges(pull, len(params))
	}
	if err == nil {
		t.groups, err = c.transferGroups(push, pull)
	}
	if err != nil {
		t.err = err
		close(t.failed)
		close(t.done)
		return t
	}
	for range t.groups {
		t.pushed = append(t.pushed, make(chan struct{}))
		t.pulled = append(t.pulled, make(chan struct{}))
	}
	go c.run(ctx, t, step, grads, params)
	return t
}

// run moves a transfer's groups: pushes start strictly in the groups'
// order, at most PushWindow at once, so that the first groups' pushes are
// not crowded out by later ones; each group's pull follows its push, at
// most Window pulls at once. Where every group fits in the window, each
// dense group's push and pull go as one request (wire.PushRequest.Pull):
// half the messages, and one round trip where there were two.
func (c *Client) run(ctx context.Context, t *Transfer, step int64, grads, params []float32) {
	defer close(t.done)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The first error ends the transfer, but it is told (failed closed)
	// only once every group has stopped: until then a push may still be
	// reading grads, which the caller may change as soon as a wait returns.
	var once sync.Once
	fail := func(err error) {
		once.Do(func() {
			t.err = err
			cancel()
		})
	}
	defer func() {
		if t.err != nil {
			close(t.failed)
		}
	}()
	acquire := func(sem chan struct{}) bool {
		select {
		case sem <- struct{}{}:
			return true
		case <-ctx.Done():
			fail(ctx.Err())
			return false
		}
	}
	pushing := make(chan struct{}, max(1, c.PushWindow))
	pulling := make(chan struct{}, max(1, c.Window))
	// A group's push brings its pull back (pushThenPull) when every group
	// fits in the window at once: then no group's push waits for another's
	// parameters, which in sync mode wait for every rank.
	combine := !c.SeparatePulls && len(t.groups) <= cap(pulling)
	var wg sync.WaitGroup
	for i, g := range t.groups {
		if combine {
			if !acquire(pulling) { // never waits: the groups fit
				break
			}
			wg.Go(func() {
				err := c.route(ctx, g, func(ctx context.Context, g group) error { return c.pushThenPull(ctx, g, step, grads, params) })
				<-pulling
				if err != nil {
					fail(err)
					return
				}
				close(t.pushed[i])
				close(t.pulled[i])
			})
			continue
		}
		if !acquire(pushing) {
			break
		}
		wg.Go(func() {
			err := c.route(ctx, g, func(ctx context.Context, g group) error { return c.push(ctx, g, step, grads, g.push) })
			<-pushing
			if err != nil {
				fail(err)
				return
			}
			close(t.pushed[i])
			if !acquire(pulling) {
				return
			}
			err = c.route(ctx, g, func(ctx context.Context, g group) error { return c.pull(ctx, g, step+1, false, params, g.pull) })
			<-pulling
			if err != nil {
				fail(err)
				return
			}
			close(t.pulled[i])
		})
	}
	wg.Wait()
}

// transferGroups cuts a transfer into messages, in read order. Without
// ranges they are the client's usual groups. With ranges, each shard's
// blocks are packed afresh by what they carry this time, so that a table
// of which a step moves a few rows goes in a few messages, not in as many
// as its whole would need.
func (c *Client) transferGroups(push, pull [][2]int) ([]group, error) {
	var groups []group
	if push == nil && pull == nil {
		groups = slices.Clone(c.groups)
	} else {
		for _, bs := range c.shardBlocks() {
			pushSpans, pullSpans := make([][]byte, len(bs)), make([][]byte, len(bs))
			sizes := make([]int, len(bs))
			for i, b := range bs {
				var pushSize, pullSize int
				pushSpans[i], pushSize = sparseBlock(push, b)
				pullSpans[i], pullSize = sparseBlock(pull, b)
				// A push that brings its pull back carries the pull's
				// span list too (its bin header, or a nil).
				pullList := 1
				if pullSpans[i] != nil {
					pullList = 5 + len(pullSpans[i])
				}
				sizes[i] = max(pushSize+pullList, pullSize)
			}
			gs, err := c.pack(bs[0].Shard, bs, sizes, pushSpans, pullSpans)
			if err != nil {
				return nil, err
			}
			groups = append(groups, gs...)
		}
	}
	slices.SortStableFunc(groups, func(a, b group) int { return c.readCmp(a.blocks[0], b.blocks[0]) })
	return groups, nil
}

// sparseBlock is block b's span list for the parts of it inside ranges (nil
// to send it whole: when ranges is nil or covers it, or when its spans
// would take no fewer bytes than its data) and the bytes it then takes in
// a message beyond wire.PerBlock.
func sparseBlock(ranges [][2]int, b job.Block) ([]byte, int) {
	if ranges == nil {
		return nil, 4 * b.Len
	}
	spans := blockSpans(ranges, b)
	if spans == nil {
		return nil, 4 * b.Len
	}
	floats, _, _ := wire.ParseSpans(spans)
	size := 4*floats + len(spans) + 8 // the spans' key and bin header
	if size >= 4*b.Len {
		return nil, 4 * b.Len
	}
	return spans, size
}

// checkRanges checks that ranges are sorted, disjoint, non-empty [lo, hi)
// ranges within a vector of n floats.
func checkRanges(ranges [][2]int, n int) error {
	end := 0
	for _, r := range ranges {
		if r[0] < end || r[1] <= r[0] || r[1] > n {
			return fmt.Errorf("paramserver: range [%d, %d) is empty, out of order or outside the %d parameters", r[0], r[1], n)
		}
		end = r[1]
	}
	return nil
}

// blockSpans encodes the parts of block b inside ranges (sorted, disjoint
// ranges of the flat vector) as a span list: nil when they cover all of b,
// so that it travels whole, and wire.EmptySpans when they miss it.
func blockSpans(ranges [][2]int, b job.Block) []byte {
	lo, hi := b.Offset, b.Offset+b.Len
	i, _ := slices.BinarySearchFunc(ranges, lo, func(r [2]int, lo int) int { return cmp.Compare(r[1], lo+1) })
	var spans [][2]int // [start, end) within b, adjacent ones merged
	for ; i < len(ranges) && ranges[i][0] < hi; i++ {
		s, e := max(ranges[i][0], lo)-lo, min(ranges[i][1], hi)-lo
		if n := len(spans); n > 0 && spans[n-1][1] == s {
			spans[n-1][1] = e
		} else {
			spans = append(spans, [2]int{s, e})
		}
	}
	if len(spans) == 0 {
		return wire.EmptySpans
	}
	if len(spans) == 1 && spans[0] == [2]int{0, b.Len} {
		return nil
	}
	out := make([]byte, 0, 8*len(spans))
	for _, sp := range spans {
		out = wire.AppendSpan(out, sp[0], sp[1]-sp[0])
	}
	return out
}

// wait waits for every channel in chans whose group overlaps [lo, hi).
func (t *Transfer) wait(chans []chan struct{}, lo, hi int) error {
	select {
	case <-t.failed: // (a transfer refused at its start has no groups)
		return t.err
	default:
	}
	for i, g := range t.groups {
		if !slices.ContainsFunc(g.blocks, func(b job.Block) bool { return b.Offset < hi && b.Offset+b.Len > lo }) {
			continue
		}
		select {
		case <-chans[i]:
		case <-t.failed:
			return t.err
		}
	}
	return nil
}

// WaitRange waits until params[lo:hi] hold the pulled parameters.
func (t *Transfer) WaitRange(lo, hi int) error { return t.wait(t.pulled, lo, hi) }

// WaitPushed waits until every gradient has been pushed: grads may change.
func (t *Transfer) WaitPushed() error { return t.wait(t.pushed, 0, math.MaxInt) }

// Wait waits for the whole transfer and returns its first error.
func (t *Transfer) Wait() error {
	<-t.done
	return t.err
}
