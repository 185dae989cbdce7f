package paramserver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/paramserver/placement"
)

// Client pushes gradients to and pulls parameters from every shard of a job
// on behalf of one rank. Each push or pull is cut into messages of at most
// MessageBytes that fit the server's max_payload, sent concurrently, and
// retried on timeout until the caller's context ends; the shards'
// exactly-once rule makes a resent push harmless.
type Client struct {
	nc      *nats.Conn
	job     string
	version int64 // of the placement
	shards  int   // of the placement
	rank    uint32
	epoch   uint64
	groups  []group
	Attempt time.Duration // timeout of a request's first attempt before it is resent (later ones wait longer)
	// Window bounds the requests in flight at once. Without a bound, a pull
	// of a large model asks for more replies at once than a NATS connection
	// buffers for its subscriber (64 MB by default), and the server drops
	// them as a slow consumer.
	Window int
	// PushWindow bounds a transfer's pushes in flight at once.
	// A group's pull waits, in the connection's outgoing stream and in the
	// shard's incoming one, behind every push sent before it: a few pushes
	// keep the link busy, more only delay the first pulls, which are what
	// the next forward pass waits for.
	PushWindow int
	// order, when set by ReadOrder, ranks the parts of the parameter vector
	// by when a step first reads them.
	order [][3]int // [lo, hi, rank], sorted by lo
	// Observe, when set, is told how long each push or pull message to a
	// shard took from first send to reply (resends included), and how
	// many bytes of floats it carried: for metrics. It must return at once.
	Observe func(op Op, shard int, d time.Duration, bytes int)
}

// Op names a client's request kind, for Observe.
type Op string

const (
	OpPush Op = "push"
	OpPull Op = "pull"
)

// DefaultWindow is the default bound on requests in flight per client.
const DefaultWindow = 16

// DefaultPushWindow is the default bound on a transfer's pushes in flight.
// On SyncOverheadW2Model (runs of 4 steps, 2 counts each, with this field
// set to 2, 4 and 16 by hand), the forward pass waited 82-94 ms a step for
// its first parameters with 2 or 4 pushes in flight, 134-144 ms with 16.
const DefaultPushWindow = 4

// DefaultAttempt is the default timeout of a request's first attempt. A
// shard answers within milliseconds, or, for a pull it must hold until a
// step is complete, within its PullTTL (job.Spec sets 2 s); a request lost
// with a NATS server is resent after it.
const DefaultAttempt = 3 * time.Second

type group struct {
	shard  int
	blocks []Block
	ids    []uint32
	// contiguous: the blocks follow one another in the flat vector, so a
	// dense push sends them split (wire.EncodeEnvelope), straight from the
	// gradient.
	contiguous bool
	// In a sparse transfer, the span list of each block's push and pull
	// (nil, or nil for a block, where it travels whole).
	push, pull [][]byte
}

// NewClient prepares the messages of placement p for rank and epoch.
func NewClient(nc *nats.Conn, job string, p *Placement, rank int, epoch uint64) (*Client, error) {
	return NewClientFor(nc, job, p, rank, epoch, nil)
}

// NewClientFor is NewClient for the blocks keep accepts (all when nil): a
// client of one parameter group, such as a GAN's generator.
func NewClientFor(nc *nats.Conn, job string, p *Placement, rank int, epoch uint64, keep func(Block) bool) (*Client, error) {
	c := &Client{nc: nc, job: job, version: p.Version, shards: p.Shards, rank: uint32(rank), epoch: epoch, Attempt: DefaultAttempt, Window: DefaultWindow, PushWindow: DefaultPushWindow}
	for s := 0; s < p.Shards; s++ {
		var bs []Block
		for _, b := range p.OnShard(s) {
			if keep == nil || keep(b) {
				bs = append(bs, b)
			}
		}
		gs, err := c.pack(s, bs, wholeSizes(bs), nil, nil)
		if err != nil {
			return nil, err
		}
		c.groups = append(c.groups, gs...)
	}
	return c, nil
}

// ReadOrder tells the client in what order a step reads the parameters:
// spans of the flat vector, first read first (models.Seq2Seq.ReadOrder).
// Each shard's blocks are then packed into messages in that order, and a
// transfer sends its messages in that order, rather than the vector's: the
// forward pass's first layers arrive first, and no message holds a block
// read early behind blocks read late.
func (c *Client) ReadOrder(spans [][2]int) {
	c.order = c.order[:0]
	for i, sp := range spans {
		c.order = append(c.order, [3]int{sp[0], sp[1], i})
	}
	slices.SortFunc(c.order, func(a, b [3]int) int { return a[0] - b[0] })
	var groups []group
	for _, bs := range c.shardBlocks() {
		slices.SortStableFunc(bs, c.readCmp)
		gs, err := c.pack(bs[0].Shard, bs, wholeSizes(bs), nil, nil)
		if err != nil { // cannot be: these blocks were packed before
			panic("paramserver: " + err.Error())
		}
		groups = append(groups, gs...)
	}
	c.groups = groups
}

// shardBlocks returns the client's blocks shard by shard, in the order
// they were packed: read order once ReadOrder has packed them (by offset
// where the read order does not tell), else by offset.
func (c *Client) shardBlocks() [][]Block {
	var out [][]Block
	for _, gs := range byShard(c.groups) {
		var bs []Block
		for _, g := range gs {
			bs = append(bs, g.blocks...)
		}
		out = append(out, bs)
	}
	return out
}

// byShard cuts groups held shard by shard (as c.groups) into each shard's
// run.
func byShard(groups []group) [][]group {
	var out [][]group
	for start := 0; start < len(groups); {
		end := start + 1
		for end < len(groups) && groups[end].shard == groups[start].shard {
			end++
		}
		out = append(out, groups[start:end])
		start = end
	}
	return out
}

func (c *Client) readCmp(a, b Block) int {
	if d := c.readRank(a.Offset) - c.readRank(b.Offset); d != 0 {
		return d
	}
	return a.Offset - b.Offset
}

// wholeSizes is the bytes of each block's data, whole.
func wholeSizes(blocks []Block) []int {
	sizes := make([]int, len(blocks))
	for i, b := range blocks {
		sizes[i] = 4 * b.Len
	}
	return sizes
}

// pack cuts one shard's blocks, in order, into messages of at most
// messageLimit bytes, each block counting for sizes[i] bytes (in a
// sparse transfer, what it carries: the larger of its push and its pull).
// A run of blocks that follow one another in the flat vector (as Place
// keeps them) goes whole into one message where it fits. push and pull,
// when set, are the blocks' span lists.
func (c *Client) pack(shard int, blocks []Block, sizes []int, push, pull [][]byte) ([]group, error) {
	run := make([]bool, len(blocks)) // where a contiguous run of blocks starts
	for i, b := range blocks {
		run[i] = i == 0 || b.Offset != blocks[i-1].Offset+blocks[i-1].Len
	}
	ends, err := wire.Group(sizes, run, c.messageLimit(sizes))
	if err != nil {
		return nil, err
	}
	var groups []group
	start := 0
	for _, end := range ends {
		g := group{shard: shard, blocks: blocks[start:end], contiguous: !slices.Contains(run[start+1:end], true)}
		for _, b := range g.blocks {
			g.ids = append(g.ids, b.ID)
		}
		if push != nil && slices.ContainsFunc(push[start:end], func(b []byte) bool { return b != nil }) {
			g.push = push[start:end]
		}
		if pull != nil && slices.ContainsFunc(pull[start:end], func(b []byte) bool { return b != nil }) {
			g.pull = pull[start:end]
		}
		groups = append(groups, g)
		start = end
	}
	return groups, nil
}

// MessageBytes is the size the client fills messages to (unless a block
// alone needs more): placement.MessageBytes, which Place's runs fit.
const MessageBytes = placement.MessageBytes

// messageLimit is the size pack fills messages to, for blocks of sizes:
// MessageBytes, or what the largest block needs, within max_payload.
func (c *Client) messageLimit(sizes []int) int {
	limit := MessageBytes
	for _, s := range sizes {
		limit = max(limit, s+wire.PerBlock+wire.Headroom)
	}
	return int(min(int64(limit), c.nc.MaxPayload()))
}

// readRank is the rank of offset in the read order (0 without one).
func (c *Client) readRank(offset int) int {
	i, found := slices.BinarySearchFunc(c.order, offset, func(o [3]int, off int) int { return cmp.Compare(o[0], off) })
	if !found {
		i--
	}
	if i < 0 || offset >= c.order[i][1] {
		return len(c.order) // outside every span: last
	}
	return c.order[i][2]
}

// Pull fills params (the flat parameter vector) from every shard once each
// has applied at least minClock steps.
func (c *Client) Pull(ctx context.Context, minClock int64, params []float32) error {
	return c.each(ctx, func(ctx context.Context, g group) error { return c.pull(ctx, g, minClock, false, params, nil) })
}

// PullExact (sync) fills params with the parameters at exactly step steps,
// waiting until every shard has got there. Shards keep a copy of the steps
// their ShardConfig.Keep names, so an evaluator that falls behind training
// still reads the step it evaluates; a step neither live nor kept is
// refused with wire.Gone.
func (c *Client) PullExact(ctx context.Context, step int64, params []float32) error {
	return c.each(ctx, func(ctx context.Context, g group) error { return c.pull(ctx, g, step, true, params, nil) })
}

// Clock returns the smallest clock of the shards: the number of steps every
// block has applied (sync), so far as the shards tell.
func (c *Client) Clock(ctx context.Context) (int64, error) {
	clock := int64(math.MaxInt64)
	seen := map[int]bool{}
	for _, g := range c.groups {
		if seen[g.shard] {
			continue
		}
		seen[g.shard] = true
		r, err := c.shardClock(ctx, g)
		if err != nil {
			return 0, err
		}
		clock = min(clock, r)
	}
	return clock, nil
}

// shardClock asks the shard of g for its clock, by a pull of g's first
// block that need not wait.
func (c *Client) shardClock(ctx context.Context, g group) (int64, error) {
	data, err := wire.Encode(&wire.PullRequest{V: wire.Version, Job: c.job, Rank: c.rank, Epoch: c.epoch, IDs: g.ids[:1]})
	if err != nil {
		return 0, err
	}
	msg, err := c.request(ctx, wire.PullSubject(c.job, c.version, g.shard), nil, data)
	if err != nil {
		return 0, err
	}
	r, err := wire.DecodePullReply(msg.Data)
	if err != nil {
		return 0, fmt.Errorf("pull reply from shard %d: %w", g.shard, err)
	}
	if err := r.Err(); err != nil {
		return 0, fmt.Errorf("pull from shard %d refused: %w", g.shard, err)
	}
	return r.Clock, nil
}

// Clocks asks each shard of the placement for its clock, one after the
// other, each within timeout: what an operator's view of a job shows. A
// shard that does not answer in time, refuses, or holds none of the
// client's blocks gets -1.
func (c *Client) Clocks(ctx context.Context, timeout time.Duration) []int64 {
	clocks := make([]int64, c.shards)
	for s := range clocks {
		clocks[s] = -1
		i := slices.IndexFunc(c.groups, func(g group) bool { return g.shard == s })
		if i < 0 {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		if clock, err := c.shardClock(cctx, c.groups[i]); err == nil {
			clocks[s] = clock
		}
		cancel()
	}
	return clocks
}

// Snapshot asks every shard of the placement to write its snapshot of the
// boundary of step, each within timeout, and returns the shards' failures
// joined (each names its shard). A shard snapshots at that boundary
// whether or not it holds blocks of this client.
func (c *Client) Snapshot(ctx context.Context, step int64, timeout time.Duration) error {
	req, err := wire.Encode(&wire.SnapshotRequest{V: wire.Version, Job: c.job, Step: step})
	if err != nil {
		return err
	}
	var errs []error
	for s := 0; s < c.shards; s++ {
		sctx, cancel := context.WithTimeout(ctx, timeout)
		msg, err := c.request(sctx, wire.SnapshotSubject(c.job, c.version, s), nil, req)
		cancel()
		if err == nil {
			var r *wire.Reply
			if r, err = wire.DecodeReply(msg.Data); err == nil {
				err = r.Err()
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", s, err))
		}
	}
	return errors.Join(errs...)
}

// Idle tells every shard that this rank has no work for now (elastic ssp):
// until it pushes again, it does not hold back the other ranks.
func (c *Client) Idle(ctx context.Context) error {
	seen := map[int]bool{}
	for _, g := range c.groups {
		if seen[g.shard] {
			continue
		}
		seen[g.shard] = true
		data, err := wire.Encode(&wire.PushRequest{V: wire.Version, Job: c.job, Rank: c.rank, Epoch: c.epoch})
		if err != nil {
			return err
		}
		if refused, err := c.pushTo(ctx, g.shard, nil, data); err != nil {
			return err
		} else if refused != nil {
			return fmt.Errorf("idle mark to shard %d refused: %w", g.shard, refused)
		}
	}
	return nil
}

// Push sends grads (laid out like the flat parameter vector) as this rank's
// gradient for step.
func (c *Client) Push(ctx context.Context, step int64, grads []float32) error {
	return c.each(ctx, func(ctx context.Context, g group) error { return c.push(ctx, g, step, grads, nil) })
}

// PushPull pushes grads for step and pulls into params the parameters after
// step+1 steps, message group by message group: each group's pull follows its
// own push at once, so pulls of early groups overlap pushes of later ones
// (the shards answer a group's pull as soon as its blocks have applied the
// step). grads and params must not overlap.
func (c *Client) PushPull(ctx context.Context, step int64, grads, params []float32) error {
	return c.StartPushPull(ctx, step, grads, params).Wait()
}

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
	err := checkRanges(push, len(grads))
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
// most Window pulls at once.
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
	var wg sync.WaitGroup
	for i, g := range t.groups {
		if !acquire(pushing) {
			break
		}
		wg.Go(func() {
			err := c.push(ctx, g, step, grads, g.push)
			<-pushing
			if err != nil {
				fail(err)
				return
			}
			close(t.pushed[i])
			if !acquire(pulling) {
				return
			}
			err = c.pull(ctx, g, step+1, false, params, g.pull)
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
				sizes[i] = max(pushSize, pullSize)
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
func sparseBlock(ranges [][2]int, b Block) ([]byte, int) {
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
func blockSpans(ranges [][2]int, b Block) []byte {
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
		if !slices.ContainsFunc(g.blocks, func(b Block) bool { return b.Offset < hi && b.Offset+b.Len > lo }) {
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

// pull fills g's blocks of params (with spans, a span list per block, only
// their parts: see blockSpans).
func (c *Client) pull(ctx context.Context, g group, minClock int64, exact bool, params []float32, spans [][]byte) error {
	data, err := wire.Encode(&wire.PullRequest{V: wire.Version, Job: c.job, Rank: c.rank, Epoch: c.epoch, MinClock: minClock, IDs: g.ids, Exact: exact, Spans: spans})
	if err != nil {
		return err
	}
	var r *wire.PullReply
	start := time.Now()
	for {
		msg, err := c.request(ctx, wire.PullSubject(c.job, c.version, g.shard), nil, data)
		if err != nil {
			return err
		}
		if r, err = wire.DecodePullReply(msg.Data); err != nil {
			return fmt.Errorf("pull reply from shard %d: %w", g.shard, err)
		}
		if r.Kind != wire.Expired { // held longer than the shard holds pulls: ask again
			break
		}
	}
	if err := r.Err(); err != nil {
		return fmt.Errorf("pull from shard %d refused: %w", g.shard, err)
	}
	if len(r.Blocks) != len(g.blocks) {
		return fmt.Errorf("pull from shard %d: %d blocks, asked for %d", g.shard, len(r.Blocks), len(g.blocks))
	}
	n := 0
	for i, b := range g.blocks {
		got := r.Blocks[i]
		n += len(got.Data)
		if got.ID != b.ID {
			return fmt.Errorf("pull from shard %d: block %d where block %d was asked for", g.shard, got.ID, b.ID)
		}
		if spans == nil || spans[i] == nil {
			if !wire.CopyFloats(params[b.Offset:b.Offset+b.Len], got.Data) {
				return fmt.Errorf("pull from shard %d: block %d does not match the placement", g.shard, got.ID)
			}
			continue
		}
		if floats, _, _ := wire.ParseSpans(spans[i]); 4*floats != len(got.Data) {
			return fmt.Errorf("pull from shard %d: block %d holds %d bytes for spans of %d floats", g.shard, got.ID, len(got.Data), floats)
		}
		at := 0
		wire.EachSpan(spans[i], func(off, k int) {
			wire.CopyFloats(params[b.Offset+off:b.Offset+off+k], got.Data[at:at+4*k])
			at += 4 * k
		})
	}
	c.observe(OpPull, g, start, n)
	return nil
}

func (c *Client) observe(op Op, g group, start time.Time, bytes int) {
	if c.Observe != nil {
		c.Observe(op, g.shard, time.Since(start), bytes)
	}
}

// push sends g's blocks of grads (with spans, only the parts they list).
func (c *Client) push(ctx context.Context, g group, step int64, grads []float32, spans [][]byte) error {
	req := &wire.PushRequest{V: wire.Version, Job: c.job, Rank: c.rank, Epoch: c.epoch, Step: step, Blocks: make([]wire.Block, len(g.blocks))}
	if g.contiguous && !slices.ContainsFunc(spans, func(sp []byte) bool { return sp != nil }) {
		// Split: the envelope in a header, the gradient as it lies as the
		// body, which NATS copies once into its write buffer.
		for i, b := range g.blocks {
			req.Blocks[i] = wire.Block{ID: b.ID}
		}
		lo, hi := g.blocks[0].Offset, g.blocks[len(g.blocks)-1].Offset+g.blocks[len(g.blocks)-1].Len
		return c.sendPush(ctx, g, step, nats.Header{wire.EnvelopeHeader: {wire.EncodeEnvelope(req)}}, wire.FloatBytes(grads[lo:hi]), 4*(hi-lo))
	}
	n, floats := 0, 0
	for _, sp := range spans {
		if sp != nil {
			k, _, _ := wire.ParseSpans(sp)
			floats += k
		}
	}
	sparse := make([]byte, 0, 4*floats) // the sparse blocks' floats, gathered
	for i, b := range g.blocks {
		if spans == nil || spans[i] == nil {
			req.Blocks[i] = wire.Block{ID: b.ID, Data: wire.FloatBytes(grads[b.Offset : b.Offset+b.Len])}
			n += 4 * b.Len
			continue
		}
		at := len(sparse)
		wire.EachSpan(spans[i], func(off, k int) { sparse = wire.AppendFloats(sparse, grads[b.Offset+off:b.Offset+off+k]) })
		req.Blocks[i] = wire.Block{ID: b.ID, Spans: spans[i], Data: sparse[at:len(sparse):len(sparse)]}
		n += len(sparse) - at
	}
	buf := getBuf()
	defer putBuf(buf)
	*buf = wire.AppendPush((*buf)[:0], req)
	return c.sendPush(ctx, g, step, nil, *buf, n)
}

// sendPush sends g's push message (of n bytes of floats) for step.
func (c *Client) sendPush(ctx context.Context, g group, step int64, hdr nats.Header, data []byte, n int) error {
	start := time.Now()
	if refused, err := c.pushTo(ctx, g.shard, hdr, data); err != nil {
		return err
	} else if refused != nil {
		return fmt.Errorf("push of step %d to shard %d refused: %w", step, g.shard, refused)
	}
	c.observe(OpPush, g, start, n)
	return nil
}

// pushTo sends a push message to shard; it returns the shard's refusal, if
// it refused, or err if the exchange failed.
func (c *Client) pushTo(ctx context.Context, shard int, hdr nats.Header, data []byte) (refused, err error) {
	msg, err := c.request(ctx, wire.PushSubject(c.job, c.version, shard), hdr, data)
	if err != nil {
		return nil, err
	}
	r, err := wire.DecodeReply(msg.Data)
	if err != nil {
		return nil, fmt.Errorf("push reply from shard %d: %w", shard, err)
	}
	return r.Err(), nil
}

// bufs recycles message buffers: NATS copies a payload into its own write
// buffer before Publish or Request returns, so a buffer can be reused at
// once, sparing a large allocation (and its zeroing) per message.
var bufs = sync.Pool{New: func() any { return new([]byte) }}

func getBuf() *[]byte  { return bufs.Get().(*[]byte) }
func putBuf(b *[]byte) { bufs.Put(b) }

// each runs f for every message group, at most Window at once, and returns
// the first error after all have returned. The groups start in turn across
// the shards (byTurn): a shard answers its messages one at a time, so in
// c.groups' order (shard by shard) the first Window requests would all
// queue at shard 0 while the others idle.
func (c *Client) each(ctx context.Context, f func(context.Context, group) error) error {
	return c.eachOf(ctx, byTurn(c.groups), func(ctx context.Context, _ int, g group) error { return f(ctx, g) })
}

// byTurn orders groups held shard by shard (as c.groups) in turns: every
// shard's first group, in shard order, then every shard's second, and so
// on.
func byTurn(groups []group) []group {
	shards := byShard(groups)
	out := make([]group, 0, len(groups))
	for turn := 0; len(out) < len(groups); turn++ {
		for _, gs := range shards {
			if turn < len(gs) {
				out = append(out, gs[turn])
			}
		}
	}
	return out
}

// eachOf is each over groups, started in their order.
func (c *Client) eachOf(ctx context.Context, groups []group, f func(context.Context, int, group) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(groups))
	sem := make(chan struct{}, max(1, c.Window))
	for i, g := range groups {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if errs[i] = f(ctx, i, g); errs[i] != nil {
				cancel()
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return ctx.Err()
}

// errConnLost cancels a request whose reply may have been lost with the
// connection to its NATS server.
var errConnLost = errors.New("the connection to the NATS server was lost")

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
// so that a slow shard is not flooded.
func (c *Client) request(ctx context.Context, subject string, hdr nats.Header, data []byte) (*nats.Msg, error) {
	backoff := 10 * time.Millisecond
	attempt := c.Attempt
	for {
		actx, cancel := context.WithCancelCause(ctx)
		stop := context.AfterFunc(watchConn(c.nc).current(), func() { cancel(errConnLost) })
		tctx, tcancel := context.WithTimeout(actx, attempt)
		msg, err := c.nc.RequestMsgWithContext(tctx, &nats.Msg{Subject: subject, Header: hdr, Data: data})
		stop()
		cause := context.Cause(actx)
		tcancel()
		cancel(nil)
		switch {
		case err == nil:
			return msg, nil
		case ctx.Err() != nil:
			return nil, fmt.Errorf("%s: %w (last error: %v)", subject, ctx.Err(), err)
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
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}
