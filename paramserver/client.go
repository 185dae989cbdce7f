package paramserver

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/wire"
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
	// the next forward pass waits for. A transfer whose groups all fit in
	// Window sends each push with its pull and all of them at once: there
	// the limit does not apply.
	PushWindow int
	// SeparatePulls has a transfer send each push and the next step's pull
	// as two requests, as before a push could bring its pull back
	// (wire.PushRequest.Pull), for comparison. (A shard that predates it
	// answers the push alone, and the client then pulls on its own.)
	SeparatePulls bool
	// order, when set by ReadOrder, ranks the parts of the parameter vector
	// by when a step first reads them.
	order [][3]int // [lo, hi, rank], sorted by lo
	// Observe, when set, is told how long each push or pull message to a
	// shard took from first send to reply (resends included), and how
	// many bytes of floats it carried: for metrics. It must return at once.
	Observe func(op Op, shard int, d time.Duration, bytes int)
	// keep picks the client's blocks (nil: all); hand follows the
	// placement's handovers (client_handover.go).
	keep func(job.Block) bool
	hand handovers
}

// Op names a client's request kind, for Observe.
type Op string

const (
	OpPush Op = "push"
	OpPull Op = "pull"
	// OpPushPull is a push that brought the next step's parameters back
	// (wire.PushRequest.Pull).
	OpPushPull Op = "pushpull"
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
	shard   int
	version int64 // of the placement it was packed under
	blocks  []job.Block
	ids     []uint32
	// contiguous: the blocks follow one another in the flat vector, so a
	// dense push sends them split (wire.EncodeEnvelope), straight from the
	// gradient.
	contiguous bool
	// In a sparse transfer, the span list of each block's push and pull
	// (nil, or nil for a block, where it travels whole).
	push, pull [][]byte
}

// NewClient prepares the messages of placement p for rank and epoch.
func NewClient(nc *nats.Conn, jobName string, p *job.Placement, rank int, epoch uint64) (*Client, error) {
	return NewClientFor(nc, jobName, p, rank, epoch, nil)
}

// NewClientFor is NewClient for the blocks keep accepts (all when nil): a
// client of one parameter group, such as a GAN's generator.
func NewClientFor(nc *nats.Conn, jobName string, p *job.Placement, rank int, epoch uint64, keep func(job.Block) bool) (*Client, error) {
	c := &Client{nc: nc, job: jobName, version: p.Version, shards: p.Shards, rank: uint32(rank), epoch: epoch, Attempt: DefaultAttempt, Window: DefaultWindow, PushWindow: DefaultPushWindow,
		keep: keep}
	c.hand.init(p)
	var err error
	if c.groups, err = c.placementGroups(p); err != nil {
		return nil, err
	}
	return c, nil
}

// placementGroups packs the client's blocks (those keep accepts) of
// placement p into message groups, shard by shard, each shard's in read
// order once ReadOrder has given one; the groups carry c.version.
func (c *Client) placementGroups(p *job.Placement) ([]group, error) {
	var groups []group
	for s := 0; s < p.Shards; s++ {
		var bs []job.Block
		for _, b := range p.OnShard(s) {
			if c.keep == nil || c.keep(b) {
				bs = append(bs, b)
			}
		}
		if len(bs) == 0 {
			continue
		}
		if c.order != nil {
			slices.SortStableFunc(bs, c.readCmp)
		}
		gs, err := c.pack(s, bs, wholeSizes(bs), nil, nil)
		if err != nil {
			return nil, err
		}
		groups = append(groups, gs...)
	}
	return groups, nil
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
func (c *Client) shardBlocks() [][]job.Block {
	var out [][]job.Block
	for _, gs := range byShard(c.groups) {
		var bs []job.Block
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

func (c *Client) readCmp(a, b job.Block) int {
	if d := c.readRank(a.Offset) - c.readRank(b.Offset); d != 0 {
		return d
	}
	return a.Offset - b.Offset
}

// wholeSizes is the bytes of each block's data, whole.
func wholeSizes(blocks []job.Block) []int {
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
func (c *Client) pack(shard int, blocks []job.Block, sizes []int, push, pull [][]byte) ([]group, error) {
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
		g := group{shard: shard, version: c.version, blocks: blocks[start:end], contiguous: !slices.Contains(run[start+1:end], true)}
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

// messageLimit is the size pack fills messages to, for blocks of sizes:
// job.MessageBytes, or what the largest block needs, within max_payload.
func (c *Client) messageLimit(sizes []int) int {
	limit := job.MessageBytes
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
	if err := c.adopt(); err != nil {
		return err
	}
	return c.each(ctx, func(ctx context.Context, g group) error { return c.pull(ctx, g, minClock, false, params, nil) })
}

// PullRanges is Pull of the parts of params inside ranges (sorted,
// disjoint [lo, hi) ranges) alone, packed as a sparse transfer packs them
// (StartPushPullSparse); the rest of params is left as it was.
func (c *Client) PullRanges(ctx context.Context, minClock int64, params []float32, ranges [][2]int) error {
	if ranges == nil {
		return c.Pull(ctx, minClock, params)
	}
	if err := checkRanges(ranges, len(params)); err != nil {
		return err
	}
	if err := c.adopt(); err != nil {
		return err
	}
	groups, err := c.transferGroups(ranges, ranges)
	if err != nil {
		return err
	}
	groups = slices.DeleteFunc(groups, func(g group) bool { // nothing of it inside ranges (a nil list: all of it)
		return g.pull != nil && !slices.ContainsFunc(g.pull, func(sp []byte) bool { return !bytes.Equal(sp, wire.EmptySpans) })
	})
	return c.eachOf(ctx, groups, func(ctx context.Context, _ int, g group) error {
		return c.pull(ctx, g, minClock, false, params, g.pull)
	})
}

// PullExact (sync) fills params with the parameters at exactly step steps,
// waiting until every shard has got there. Shards keep a copy of the steps
// their job.ShardConfig.Keep names, so an evaluator that falls behind training
// still reads the step it evaluates; a step neither live nor kept is
// refused with wire.Gone.
func (c *Client) PullExact(ctx context.Context, step int64, params []float32) error {
	if err := c.adopt(); err != nil {
		return err
	}
	return c.each(ctx, func(ctx context.Context, g group) error { return c.pull(ctx, g, step, true, params, nil) })
}

// Push sends grads (laid out like the flat parameter vector) as this rank's
// gradient for step.
func (c *Client) Push(ctx context.Context, step int64, grads []float32) error {
	if err := c.adopt(); err != nil {
		return err
	}
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
		msg, err := c.request(ctx, g.version, wire.PullSubject(c.job, g.version, g.shard), nil, data)
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
		if err := c.supersededWait(ctx, g.version, err); errors.Is(err, errHandedOver) {
			return err
		}
		return fmt.Errorf("pull from shard %d refused: %w", g.shard, err)
	}
	n, err := fill(g, r, params, spans)
	if err != nil {
		return err
	}
	c.observe(OpPull, g, start, n)
	return nil
}

// fill copies a pull reply's blocks (g's, asked for with spans) into
// params, and says how many bytes of floats they held.
func fill(g group, r *wire.PullReply, params []float32, spans [][]byte) (int, error) {
	if len(r.Blocks) != len(g.blocks) {
		return 0, fmt.Errorf("pull from shard %d: %d blocks, asked for %d", g.shard, len(r.Blocks), len(g.blocks))
	}
	n := 0
	for i, b := range g.blocks {
		got := r.Blocks[i]
		n += len(got.Data)
		if got.ID != b.ID {
			return 0, fmt.Errorf("pull from shard %d: block %d where block %d was asked for", g.shard, got.ID, b.ID)
		}
		if spans == nil || spans[i] == nil {
			if !wire.CopyFloats(params[b.Offset:b.Offset+b.Len], got.Data) {
				return 0, fmt.Errorf("pull from shard %d: block %d does not match the placement", g.shard, got.ID)
			}
			continue
		}
		if floats, _, _ := wire.ParseSpans(spans[i]); 4*floats != len(got.Data) {
			return 0, fmt.Errorf("pull from shard %d: block %d holds %d bytes for spans of %d floats", g.shard, got.ID, len(got.Data), floats)
		}
		at := 0
		wire.EachSpan(spans[i], func(off, k int) {
			wire.CopyFloats(params[b.Offset+off:b.Offset+off+k], got.Data[at:at+4*k])
			at += 4 * k
		})
	}
	return n, nil
}

// pushThenPull sends g's blocks of grads for step and, in the same round
// trip, pulls them into params once the shard has applied step+1 steps
// (wire.PushRequest.Pull): in a sparse transfer, the parts g.push lists
// and the parts g.pull lists. A pull the shard held too long (Expired: the
// push was taken) is asked for again on its own, as is one a shard that
// answered the push alone (one that does not know Pull) owes.
func (c *Client) pushThenPull(ctx context.Context, g group, step int64, grads, params []float32) error {
	req := &wire.PushRequest{V: wire.Version, Job: c.job, Rank: c.rank, Epoch: c.epoch, Step: step, Pull: true, PullSpans: g.pull}
	hdr, data, n, release := encodePush(g, req, grads, g.push)
	defer release()
	start := time.Now()
	msg, err := c.request(ctx, g.version, wire.PushSubject(c.job, g.version, g.shard), hdr, data)
	if err != nil {
		return err
	}
	r, err := wire.DecodePullReply(msg.Data) // a refusal (a wire.Reply) decodes as one without blocks
	if err != nil {
		return fmt.Errorf("push and pull reply from shard %d: %w", g.shard, err)
	}
	if r.Kind == wire.Expired || r.Kind == wire.OK && len(r.Blocks) == 0 && len(g.blocks) > 0 {
		c.observe(OpPush, g, start, n)
		return c.pull(ctx, g, step+1, false, params, g.pull)
	}
	if err := r.Err(); err != nil { // the shard took neither
		if err := c.supersededWait(ctx, g.version, err); errors.Is(err, errHandedOver) {
			return err
		}
		return fmt.Errorf("push of step %d to shard %d, with its pull, refused: %w", step, g.shard, err)
	}
	got, err := fill(g, r, params, g.pull)
	if err != nil {
		return err
	}
	c.observe(OpPushPull, g, start, n+got)
	return nil
}

func (c *Client) observe(op Op, g group, start time.Time, bytes int) {
	if c.Observe != nil {
		c.Observe(op, g.shard, time.Since(start), bytes)
	}
}

// push sends g's blocks of grads (with spans, only the parts they list).
func (c *Client) push(ctx context.Context, g group, step int64, grads []float32, spans [][]byte) error {
	req := &wire.PushRequest{V: wire.Version, Job: c.job, Rank: c.rank, Epoch: c.epoch, Step: step}
	hdr, data, n, release := encodePush(g, req, grads, spans)
	defer release()
	return c.sendPush(ctx, g, step, hdr, data, n)
}

// encodePush encodes req with g's blocks of grads (with spans, only the
// parts they list), n bytes of floats: split where the blocks lie one after
// another and travel whole (the envelope in a header, the gradient as it
// lies as the body, which NATS copies once into its write buffer), else
// into a pooled buffer that release returns.
func encodePush(g group, req *wire.PushRequest, grads []float32, spans [][]byte) (hdr nats.Header, data []byte, n int, release func()) {
	req.Blocks = make([]wire.Block, len(g.blocks))
	if g.contiguous && spans == nil && req.PullSpans == nil { // (span lists would crowd the envelope)
		for i, b := range g.blocks {
			req.Blocks[i] = wire.Block{ID: b.ID}
		}
		lo, hi := g.blocks[0].Offset, g.blocks[len(g.blocks)-1].Offset+g.blocks[len(g.blocks)-1].Len
		return nats.Header{wire.EnvelopeHeader: {wire.EncodeEnvelope(req)}}, wire.FloatBytes(grads[lo:hi]), 4 * (hi - lo), func() {}
	}
	floats := 0
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
	*buf = wire.AppendPush((*buf)[:0], req)
	return nil, *buf, n, func() { putBuf(buf) }
}

// sendPush sends g's push message (of n bytes of floats) for step.
func (c *Client) sendPush(ctx context.Context, g group, step int64, hdr nats.Header, data []byte, n int) error {
	start := time.Now()
	refused, err := c.pushTo(ctx, g.version, g.shard, hdr, data)
	for err == nil && errors.Is(refused, &wire.Error{Kind: wire.Expired}) {
		// Held until its step was on every copy, longer than the shard
		// holds requests: it was taken; ask again (a resend is dropped).
		refused, err = c.pushTo(ctx, g.version, g.shard, hdr, data)
	}
	if err != nil {
		return err
	} else if refused != nil {
		if err := c.supersededWait(ctx, g.version, refused); errors.Is(err, errHandedOver) {
			return err
		}
		return fmt.Errorf("push of step %d to shard %d refused: %w", step, g.shard, refused)
	}
	c.observe(OpPush, g, start, n)
	return nil
}

// pushTo sends a push message to shard; it returns the shard's refusal, if
// it refused, or err if the exchange failed.
func (c *Client) pushTo(ctx context.Context, version int64, shard int, hdr nats.Header, data []byte) (refused, err error) {
	msg, err := c.request(ctx, version, wire.PushSubject(c.job, version, shard), hdr, data)
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
			if errs[i] = c.route(ctx, g, func(ctx context.Context, g group) error { return f(ctx, i, g) }); errs[i] != nil {
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
