package paramserver

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/paramserver/placement"
)

// Consistency modes (placement.Sync, SSP and Async).
const (
	Sync  = placement.Sync
	SSP   = placement.SSP
	Async = placement.Async
)

// Non-finite gradient policies.
const (
	Refuse = "refuse" // refuse the whole push (NonFinite)
	Skip   = "skip"   // accept the push but drop its non-finite blocks' updates
)

// ShardConfig is what a shard's state machine needs to know of its job.
type ShardConfig struct {
	Mode      string    `json:"mode"`
	Staleness int64     `json:"staleness,omitempty"`
	Ranks     int       `json:"ranks"`
	Optimizer Optimizer `json:"optimizer"`
	NonFinite string    `json:"non_finite,omitempty"` // Refuse (default) or Skip
	// PullTTL is how many ticks a pull may wait before it is answered with
	// Expired (its sender resends); 0 means it waits as long as it takes.
	PullTTL int64 `json:"pull_ttl,omitempty"`
	// Elastic (ssp): ranks come and go (workers take data as tasks), so
	// only active ranks bound the staleness: a rank is active from its
	// first push under its epoch until it says it is idle (a push with no
	// blocks) or is fenced off (Idle, or a newer epoch).
	Elastic bool `json:"elastic,omitempty"`
	// Keep (sync): each block keeps a copy of its parameters at every
	// clock that is a positive multiple of Keep and below KeepBefore (0: no
	// bound), the latest such copy only, so that an exact pull of that step
	// (an evaluation's) is answered with that step's parameters after the
	// block has moved on.
	Keep       int64 `json:"keep,omitempty"`
	KeepBefore int64 `json:"keep_before,omitempty"`
}

// Validate reports the first thing wrong with c.
func (c ShardConfig) Validate() error {
	switch c.Mode {
	case Sync, Async:
	case SSP:
		if c.Staleness < 0 {
			return fmt.Errorf("staleness must not be negative (got %d)", c.Staleness)
		}
	default:
		return fmt.Errorf("mode %q: use sync, ssp or async", c.Mode)
	}
	if c.Ranks < 1 {
		return fmt.Errorf("a job needs at least one rank (got %d)", c.Ranks)
	}
	if c.Keep < 0 || c.KeepBefore < 0 {
		return fmt.Errorf("keep and keep_before must not be negative (got %d, %d)", c.Keep, c.KeepBefore)
	}
	if c.Keep > 0 && c.Mode != Sync {
		return fmt.Errorf("keep is for sync mode: a %s shard has no step boundaries", c.Mode)
	}
	if c.NonFinite != "" && c.NonFinite != Refuse && c.NonFinite != Skip {
		return fmt.Errorf("non-finite policy %q: use refuse or skip", c.NonFinite)
	}
	return c.Optimizer.Validate()
}

// Stats counts what a shard did; the counts reconcile exactly with what
// workers sent: every accepted (rank, step, block) gradient is either applied
// once, or counted as a duplicate, or skipped for being non-finite.
type Stats struct {
	Accepted   int64 // block gradients accepted for the first time
	Applied    int64 // block updates applied (sync: one per block and step)
	Duplicates int64 // block gradients acknowledged and dropped as resends
	Skipped    int64 // block gradients dropped for holding NaN or Inf (policy skip)
}

type block struct {
	Block
	w     []float32
	slots [][]float32
	clock int64 // updates applied (sync: steps)
	// sync: the gradients of step clock, by rank.
	g   [][]float32
	got []bool
	n   int  // ranks received for step clock
	bad bool // a gradient of step clock was non-finite (policy skip)
	// ssp and async: the last step applied from each rank, -1 for none.
	last []int64
	// The state at the pending sync snapshot step, once copied.
	snap *BlockState
	// sync: the parameters at clock keptAt (-1: none), see ShardConfig.Keep.
	kept   []float32
	keptAt int64
}

type waiter struct {
	token uint64
	req   *wire.PullRequest
	since int64 // tick it arrived
}

// Answer tells the adapter to answer the waiting pull token: with the blocks
// it asked for when Kind is OK, else with Kind.
type Answer struct {
	Token uint64
	Kind  wire.Kind
}

// Shard is the state of one parameter-server shard as a pure state machine,
// in the manner of etcd's raft: inputs arrive through Push, Pull, Tick and
// RequestSnapshot; outputs leave through Ready (pulls to answer now) and
// Snapshots (snapshots taken). It does no IO, reads no clock and takes no
// locks: the Service that drives it serialises calls.
//
// Invariants (each tested):
//   - a (rank, step, block) gradient changes the parameters at most once,
//     however often it is resent and in whatever order messages arrive;
//   - a push from an epoch older than its rank's current epoch, or that is
//     malformed in any block, changes nothing;
//   - sync: block b's step t is applied once every rank has pushed b for t,
//     as the sum over ranks in rank order times 1/ranks, so parameters depend
//     on neither arrival order nor how blocks are placed; a pull for clock c
//     is answered once every block it asks for has applied c steps;
//   - ssp: pushes apply on arrival; a pull at clock c is answered once every
//     rank has completed at least c-staleness steps on this shard (elastic:
//     every active rank; with none active, at once);
//   - async: pushes apply on arrival; pulls are answered at once.
type Shard struct {
	cfg       ShardConfig
	blocks    []*block
	pos       map[uint32]int
	epochs    []uint64
	rankClock []int64 // ssp/async: steps each rank has completed on this shard
	active    []bool  // elastic ssp: the ranks that bound the staleness
	waiting   []waiter
	ready     []Answer
	now       int64 // ticks
	sum       []float32
	dense     []byte // a sparse push's block made whole (zeros where it carries nothing)
	snapAt    int64  // sync: step of the pending snapshot, -1 for none
	snapped   int    // blocks copied for snapAt
	snaps     []*Snapshot
	stats     Stats
}

// NewShard makes the shard that owns blocks, initialising each block's
// parameters with init. cfg must be valid.
func NewShard(cfg ShardConfig, blocks []Block, init func(b Block, dst []float32)) *Shard {
	if err := cfg.Validate(); err != nil {
		panic("paramserver: " + err.Error())
	}
	if cfg.NonFinite == "" {
		cfg.NonFinite = Refuse
	}
	s := &Shard{cfg: cfg, pos: make(map[uint32]int, len(blocks)), epochs: make([]uint64, cfg.Ranks),
		rankClock: make([]int64, cfg.Ranks), active: make([]bool, cfg.Ranks), snapAt: -1}
	maxLen := 0
	for i, b := range blocks {
		blk := &block{Block: b, w: make([]float32, b.Len), keptAt: -1}
		init(b, blk.w)
		for range cfg.Optimizer.Slots() {
			blk.slots = append(blk.slots, make([]float32, b.Len))
		}
		if cfg.Mode == Sync {
			blk.g = make([][]float32, cfg.Ranks)
			blk.got = make([]bool, cfg.Ranks)
		} else {
			blk.last = make([]int64, cfg.Ranks)
			for r := range blk.last {
				blk.last[r] = -1
			}
		}
		s.blocks = append(s.blocks, blk)
		s.pos[b.ID] = i
		maxLen = max(maxLen, b.Len)
	}
	s.sum = make([]float32, maxLen)
	return s
}

// Clock is the number of steps every block of the shard has applied (sync),
// or the number of steps every rank has completed on it (ssp, async).
func (s *Shard) Clock() int64 {
	if s.cfg.Mode != Sync {
		c, _ := s.slowest()
		return c
	}
	if len(s.blocks) == 0 {
		return 0
	}
	c := s.blocks[0].clock
	for _, b := range s.blocks[1:] {
		c = min(c, b.clock)
	}
	return c
}

// Stats returns the shard's counts.
func (s *Shard) Stats() Stats { return s.stats }

// Blocks lists the owned block ids in placement order.
func (s *Shard) Blocks() []uint32 {
	ids := make([]uint32, len(s.blocks))
	for i, b := range s.blocks {
		ids[i] = b.ID
	}
	return ids
}

// BlockLen returns the length of block id, if the shard owns it. A shard's
// blocks are fixed when it is made, so BlockLen, unlike the other methods,
// may run concurrently with any of them.
func (s *Shard) BlockLen(id uint32) (int, bool) {
	i, ok := s.pos[id]
	if !ok {
		return 0, false
	}
	return s.blocks[i].Len, true
}

// Params returns the parameters of block id (the live slice: do not keep it
// across calls that change the shard).
func (s *Shard) Params(id uint32) ([]float32, bool) {
	i, ok := s.pos[id]
	if !ok {
		return nil, false
	}
	return s.blocks[i].w, true
}

func refuse(k wire.Kind, format string, args ...any) error {
	return &wire.Error{Kind: k, Msg: fmt.Sprintf(format, args...)}
}

// Push offers one rank's gradient for some blocks at one step. It returns
// nil when the push is accepted (its new gradients stored or applied, its
// resends dropped), or a *wire.Error when it is refused, in which case it
// changed nothing.
func (s *Shard) Push(p *wire.PushRequest) error {
	if int64(p.Rank) >= int64(s.cfg.Ranks) {
		return refuse(wire.BadRank, "rank %d outside 0..%d", p.Rank, s.cfg.Ranks-1)
	}
	r := int(p.Rank)
	if p.Epoch < s.epochs[r] {
		return refuse(wire.StaleEpoch, "rank %d epoch %d is older than its current epoch %d", r, p.Epoch, s.epochs[r])
	}
	finite := make([]bool, len(p.Blocks))
	for k, pb := range p.Blocks {
		i, ok := s.pos[pb.ID]
		if !ok {
			return refuse(wire.UnknownBlock, "block %d is not on this shard", pb.ID)
		}
		b := s.blocks[i]
		if _, err := checkSpans(b, pb.Spans, len(pb.Data)); err != nil {
			return err
		}
		if s.cfg.Mode == Sync && p.Step > b.clock {
			return refuse(wire.BadStep, "block %d: step %d is ahead of its clock %d", pb.ID, p.Step, b.clock)
		}
		finite[k] = wire.Finite(pb.Data)
		if !finite[k] && s.cfg.NonFinite == Refuse {
			return refuse(wire.NonFinite, "block %d from rank %d holds NaN or Inf", pb.ID, r)
		}
	}
	if len(p.Blocks) == 0 && s.cfg.Elastic {
		return s.Idle(r, p.Epoch)
	}
	if p.Epoch > s.epochs[r] {
		s.newEpoch(r, p.Epoch)
	}
	accepted := s.stats.Accepted
	applied := false
	for k, pb := range p.Blocks {
		b := s.blocks[s.pos[pb.ID]]
		if s.cfg.Mode == Sync {
			applied = s.pushSync(b, r, p.Step, &p.Blocks[k], finite[k]) || applied
		} else {
			applied = s.pushAsync(b, r, p.Step, &p.Blocks[k], finite[k]) || applied
		}
	}
	if s.cfg.Mode != Sync {
		s.advanceRank(r)
		if s.stats.Accepted > accepted { // a new step, not a late resend
			s.active[r] = true
		}
	}
	if applied || s.cfg.Mode != Sync {
		s.release()
	}
	return nil
}

// checkSpans checks that a block of a push or pull fits block b: a dense
// one carries all of b (n bytes, or, for a pull, n is -1 and nothing is
// carried), a sparse one's spans end within b and cover its n bytes.
// It returns how many floats the block carries.
func checkSpans(b *block, spans []byte, n int) (int, error) {
	if spans == nil {
		if n >= 0 && n != 4*b.Len {
			return 0, refuse(wire.BadLength, "block %d: %d bytes, want %d", b.ID, n, 4*b.Len)
		}
		return b.Len, nil
	}
	floats, end, err := wire.ParseSpans(spans)
	if err != nil {
		return 0, refuse(wire.ErrKind(err), "block %d: %v", b.ID, err)
	}
	if end > b.Len {
		return 0, refuse(wire.BadLength, "block %d: spans end at float %d of %d", b.ID, end, b.Len)
	}
	if n >= 0 && 4*floats != n {
		return 0, refuse(wire.BadLength, "block %d: %d bytes for spans of %d floats", b.ID, n, floats)
	}
	return floats, nil
}

// A sparse push stands for the whole block with zero gradients where it
// carries nothing, and the shard applies exactly what that whole block
// would, for every optimizer and mode: it makes the block whole (expand,
// or straight into the rank's stored gradient) before the usual sum and
// update. SGD alone skips that: it leaves a parameter whose gradient is
// zero exactly as it is (w + (-lr)*(+0) is w for every w, -0 and NaN
// included, and the kernels are elementwise), so a single gradient
// (sync with one rank, or ssp and async) is applied to its spans only.

// apply applies one gradient, straight from its message, to block b.
func (s *Shard) apply(b *block, pb *wire.Block) {
	switch {
	case pb.Spans == nil:
		s.cfg.Optimizer.ApplyBytes(b.w, pb.Data, b.slots, b.clock)
	case s.cfg.Optimizer.Kind == "sgd":
		at := 0
		wire.EachSpan(pb.Spans, func(off, n int) {
			s.cfg.Optimizer.ApplyBytes(b.w[off:off+n], pb.Data[at:at+4*n], nil, b.clock)
			at += 4 * n
		})
	default:
		s.cfg.Optimizer.ApplyBytes(b.w, s.expand(b.Len, pb), b.slots, b.clock)
	}
}

// expand makes a sparse block whole: its floats where its spans say, zeros
// elsewhere, in a buffer the shard reuses (it is consumed before the next
// block is expanded).
func (s *Shard) expand(n int, pb *wire.Block) []byte {
	if cap(s.dense) < 4*n {
		s.dense = make([]byte, 4*n)
	}
	d := s.dense[:4*n]
	clear(d)
	at := 0
	wire.EachSpan(pb.Spans, func(off, k int) {
		at += copy(d[4*off:4*(off+k)], pb.Data[at:at+4*k])
	})
	return d
}

// Fence raises each rank's epoch to at least epochs[r] (when the shard is
// restored, the coordinator's fence may be newer than the snapshot's: a rank
// whose holder died must not be pushed to by that holder again).
func (s *Shard) Fence(epochs []uint64) {
	for r, e := range epochs {
		if r < len(s.epochs) && e > s.epochs[r] {
			s.newEpoch(r, e)
		}
	}
}

// Epochs returns each rank's current epoch.
func (s *Shard) Epochs() []uint64 { return slices.Clone(s.epochs) }

// newEpoch fences off rank r's older epochs. In sync mode the rank's stored,
// unapplied gradients are dropped: the new holder of the rank pushes its own.
// In ssp and async modes the rank's step numbering restarts.
func (s *Shard) newEpoch(r int, epoch uint64) {
	s.epochs[r] = epoch
	if s.cfg.Mode != Sync {
		// The new holder numbers its steps afresh: (rank, epoch, step)
		// names a gradient.
		for _, b := range s.blocks {
			b.last[r] = -1
		}
		s.rankClock[r] = 0
		s.active[r] = false
		return
	}
	for _, b := range s.blocks {
		if b.got[r] {
			b.got[r] = false
			b.n--
		}
	}
}

func (s *Shard) pushSync(b *block, r int, step int64, pb *wire.Block, finite bool) bool {
	if step < b.clock || b.got[r] {
		s.stats.Duplicates++
		return false
	}
	s.stats.Accepted++
	if !finite {
		s.stats.Skipped++
		b.bad = true
	}
	if s.cfg.Ranks == 1 { // nothing to wait for: apply straight from the message
		s.snapBlock(b)
		if !b.bad {
			s.apply(b, pb)
			s.stats.Applied++
		}
		b.bad = false
		b.clock++
		s.snapBlock(b)
		s.keepBlock(b)
		return true
	}
	if b.g[r] == nil {
		b.g[r] = make([]float32, b.Len)
	}
	if pb.Spans == nil {
		wire.CopyFloats(b.g[r], pb.Data)
	} else {
		clear(b.g[r])
		at := 0
		wire.EachSpan(pb.Spans, func(off, n int) {
			wire.CopyFloats(b.g[r][off:off+n], pb.Data[at:at+4*n])
			at += 4 * n
		})
	}
	b.got[r] = true
	b.n++
	if b.n < s.cfg.Ranks {
		return false
	}
	s.snapBlock(b)
	if !b.bad {
		sum := s.sum[:b.Len]
		copy(sum, b.g[0])
		for q := 1; q < s.cfg.Ranks; q++ {
			native.Saxpy(len(sum), 1, b.g[q], 1, sum, 1) // sum + 1*g: the plain sum
		}
		native.Sscal(len(sum), 1/float32(s.cfg.Ranks), sum, 1)
		s.cfg.Optimizer.Apply(b.w, sum, b.slots, b.clock)
		s.stats.Applied++
	}
	clear(b.got)
	b.n, b.bad = 0, false
	b.clock++
	s.snapBlock(b)
	s.keepBlock(b)
	return true
}

func (s *Shard) pushAsync(b *block, r int, step int64, pb *wire.Block, finite bool) bool {
	if step <= b.last[r] {
		s.stats.Duplicates++
		return false
	}
	s.stats.Accepted++
	b.last[r] = step
	if !finite {
		s.stats.Skipped++
		return false
	}
	s.apply(b, pb)
	s.stats.Applied++
	b.clock++
	return true
}

// slowest is the clock of the slowest rank that bounds the staleness: any
// rank, or (elastic) any active rank. With none active (bound reports
// false), it is the furthest clock, where a rank that becomes active starts.
// Lag is how many steps rank r is behind the fastest active rank (ssp and
// async: the clock lag a bounded-staleness job bounds); 0 in sync mode,
// where every rank pushes the same step.
func (s *Shard) Lag(r int) int64 {
	if s.cfg.Mode == Sync || r < 0 || r >= len(s.rankClock) {
		return 0
	}
	fastest := s.rankClock[r]
	for q, c := range s.rankClock {
		if s.active[q] {
			fastest = max(fastest, c)
		}
	}
	return fastest - s.rankClock[r]
}

func (s *Shard) slowest() (clock int64, bound bool) {
	if !s.cfg.Elastic {
		return minOf(s.rankClock), true
	}
	clock = math.MaxInt64
	for r, a := range s.active {
		if a {
			clock, bound = min(clock, s.rankClock[r]), true
		}
	}
	if !bound {
		return slices.Max(s.rankClock), false
	}
	return clock, true
}

// Idle marks rank r idle (elastic ssp): it no longer bounds the staleness
// until it pushes again. An epoch newer than the rank's fences off its
// older ones, as a push of that epoch would; an older one is refused.
func (s *Shard) Idle(r int, epoch uint64) error {
	if r < 0 || r >= s.cfg.Ranks {
		return refuse(wire.BadRank, "rank %d outside 0..%d", r, s.cfg.Ranks-1)
	}
	if epoch < s.epochs[r] {
		return refuse(wire.StaleEpoch, "rank %d epoch %d is older than its current epoch %d", r, epoch, s.epochs[r])
	}
	if epoch > s.epochs[r] {
		s.newEpoch(r, epoch)
	}
	s.active[r] = false
	s.release()
	return nil
}

// advanceRank recomputes how many steps rank r has completed on this shard:
// one more than the oldest step it last pushed to any block.
func (s *Shard) advanceRank(r int) {
	if len(s.blocks) == 0 {
		return
	}
	c := s.blocks[0].last[r]
	for _, b := range s.blocks[1:] {
		c = min(c, b.last[r])
	}
	s.rankClock[r] = c + 1
}

// Pull offers a pull, identified by token. It reports whether the pull can be
// answered now (read the blocks with Read); otherwise the shard holds it and
// names it in a later Ready. A pull of a block the shard does not own, or
// of spans outside a block, is refused.
func (s *Shard) Pull(req *wire.PullRequest, token uint64) (bool, error) {
	if req.Spans != nil && len(req.Spans) != len(req.IDs) {
		return false, refuse(wire.Malformed, "%d span lists for %d block ids", len(req.Spans), len(req.IDs))
	}
	for k, id := range req.IDs {
		i, ok := s.pos[id]
		if !ok {
			return false, refuse(wire.UnknownBlock, "block %d is not on this shard", id)
		}
		if req.Spans != nil {
			if _, err := checkSpans(s.blocks[i], req.Spans[k], -1); err != nil {
				return false, err
			}
		}
	}
	if s.answerable(req) {
		return true, nil
	}
	s.waiting = append(s.waiting, waiter{token: token, req: req, since: s.now})
	return false, nil
}

// Waiting is the number of pulls held.
func (s *Shard) Waiting() int { return len(s.waiting) }

func (s *Shard) answerable(req *wire.PullRequest) bool {
	switch s.cfg.Mode {
	case Sync:
		for _, id := range req.IDs {
			if s.blocks[s.pos[id]].clock < req.MinClock {
				return false
			}
		}
		return true
	case SSP:
		c, bound := s.slowest()
		return !bound || c >= req.MinClock-s.cfg.Staleness
	}
	return true
}

// release moves the held pulls that can now be answered to the ready list.
func (s *Shard) release() {
	keep := s.waiting[:0]
	for _, w := range s.waiting {
		if s.answerable(w.req) {
			s.ready = append(s.ready, Answer{Token: w.token})
		} else {
			keep = append(keep, w)
		}
	}
	clear(s.waiting[len(keep):])
	s.waiting = keep
}

// Tick advances the shard's time by one tick: pulls held for PullTTL ticks
// are answered Expired, so that a sender who gave up leaves nothing behind.
func (s *Shard) Tick() {
	s.now++
	if s.cfg.PullTTL == 0 {
		return
	}
	keep := s.waiting[:0]
	for _, w := range s.waiting {
		if s.now-w.since >= s.cfg.PullTTL {
			s.ready = append(s.ready, Answer{Token: w.token, Kind: wire.Expired})
		} else {
			keep = append(keep, w)
		}
	}
	clear(s.waiting[len(keep):])
	s.waiting = keep
}

// Ready returns the held pulls to answer now, and forgets them. Answer those
// with Kind OK from Read before the next call that changes the shard.
func (s *Shard) Ready() []Answer {
	r := s.ready
	s.ready = nil
	return r
}

// Read answers a pull that Pull or Ready let through: the parameters of the
// blocks it asks for, in order, as wire blocks viewing the shard's memory
// (encode them before the shard changes). A sync pull with Exact set gets
// each block's parameters at exactly MinClock steps, from the live block or
// its kept copy; it is refused with Gone when the block has moved past that
// step and keeps no copy of it.
func (s *Shard) Read(req *wire.PullRequest) ([]wire.Block, error) {
	exact := req.Exact && s.cfg.Mode == Sync
	if req.Spans != nil && len(req.Spans) != len(req.IDs) {
		return nil, refuse(wire.Malformed, "%d span lists for %d block ids", len(req.Spans), len(req.IDs))
	}
	out := make([]wire.Block, len(req.IDs))
	for k, id := range req.IDs {
		i, ok := s.pos[id]
		if !ok {
			return nil, refuse(wire.UnknownBlock, "block %d is not on this shard", id)
		}
		b := s.blocks[i]
		var spans []byte
		if req.Spans != nil {
			spans = req.Spans[k]
		}
		floats, err := checkSpans(b, spans, -1)
		if err != nil {
			return nil, err
		}
		w := b.w
		if exact && b.clock != req.MinClock {
			if b.keptAt != req.MinClock {
				return nil, refuse(wire.Gone, "block %d is at step %d and keeps no copy of step %d", id, b.clock, req.MinClock)
			}
			w = b.kept
		}
		if spans == nil {
			out[k] = wire.Block{ID: id, Data: wire.FloatBytes(w)}
			continue
		}
		// A sparse read copies: its parts are not contiguous.
		data := make([]byte, 0, 4*floats)
		wire.EachSpan(spans, func(off, n int) { data = wire.AppendFloats(data, w[off:off+n]) })
		out[k] = wire.Block{ID: id, Data: data}
	}
	return out, nil
}

// ErrSnapshotPending is returned when a snapshot is requested while another
// is still being taken.
var ErrSnapshotPending = errors.New("a snapshot is already pending")

// RequestSnapshot asks for a snapshot of the shard. In sync mode it is taken
// at the boundary of step (when every block has applied exactly step steps),
// which must not have passed for any block; in ssp and async modes it is
// taken now, labelled step (there is no step boundary to wait for: the
// coordinator labels a checkpoint of an async job by the data steps done). Taken snapshots come out of Snapshots.
func (s *Shard) RequestSnapshot(step int64) error {
	if s.cfg.Mode != Sync {
		snap := s.snapshotNow()
		snap.Step = step // the label the coordinator checkpoints under
		s.snaps = append(s.snaps, snap)
		return nil
	}
	if s.snapAt >= 0 {
		return fmt.Errorf("%w (step %d)", ErrSnapshotPending, s.snapAt)
	}
	for _, b := range s.blocks {
		if b.clock > step {
			return fmt.Errorf("block %d is already at step %d, past the requested snapshot step %d", b.ID, b.clock, step)
		}
	}
	s.snapAt, s.snapped = step, 0
	for _, b := range s.blocks {
		s.snapBlock(b)
	}
	if len(s.blocks) == 0 {
		s.finishSnapshot()
	}
	return nil
}

// keepBlock copies b's parameters if its clock is a step to keep.
func (s *Shard) keepBlock(b *block) {
	k := s.cfg.Keep
	if k <= 0 || b.clock == 0 || b.clock%k != 0 || (s.cfg.KeepBefore > 0 && b.clock >= s.cfg.KeepBefore) {
		return
	}
	if b.kept == nil {
		b.kept = make([]float32, b.Len)
	}
	copy(b.kept, b.w)
	b.keptAt = b.clock
}

// snapBlock copies b's state if it stands at the pending snapshot step.
func (s *Shard) snapBlock(b *block) {
	if s.snapAt < 0 || b.clock != s.snapAt || b.snap != nil {
		return
	}
	b.snap = b.state()
	s.snapped++
	if s.snapped == len(s.blocks) {
		s.finishSnapshot()
	}
}

func (s *Shard) finishSnapshot() {
	snap := &Snapshot{Step: s.snapAt, Mode: s.cfg.Mode, Epochs: append([]uint64(nil), s.epochs...),
		RankClocks: append([]int64(nil), s.rankClock...)}
	for _, b := range s.blocks {
		snap.Blocks = append(snap.Blocks, *b.snap)
		b.snap = nil
	}
	s.snaps = append(s.snaps, snap)
	s.snapAt = -1
}

func (s *Shard) snapshotNow() *Snapshot {
	snap := &Snapshot{Step: s.Clock(), Mode: s.cfg.Mode, Epochs: append([]uint64(nil), s.epochs...),
		RankClocks: append([]int64(nil), s.rankClock...)}
	for _, b := range s.blocks {
		snap.Blocks = append(snap.Blocks, *b.state())
	}
	return snap
}

// Snapshots returns the snapshots taken since the last call.
func (s *Shard) Snapshots() []*Snapshot {
	r := s.snaps
	s.snaps = nil
	return r
}

func (b *block) state() *BlockState {
	st := &BlockState{ID: b.ID, Clock: b.clock, W: append([]float32(nil), b.w...)}
	for _, sl := range b.slots {
		st.Slots = append(st.Slots, append([]float32(nil), sl...))
	}
	if b.last != nil {
		st.Last = append([]int64(nil), b.last...)
	}
	return st
}

func minOf(xs []int64) int64 {
	if len(xs) == 0 {
		return 0
	}
	m := xs[0]
	for _, x := range xs[1:] {
		m = min(m, x)
	}
	return m
}
