package paramserver

import (
	"fmt"
	"math"
	"slices"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/downpour-ml/downpour/internal/wire"
)

// Stats counts what a shard did; the counts reconcile exactly with what
// workers sent: every accepted (rank, step, block) gradient is either applied
// once, or counted as a duplicate, or skipped for being non-finite.
type Stats struct {
	Accepted   int64 // block gradients accepted for the first time
	Applied    int64 // block updates applied (sync: one per block and step)
	Duplicates int64 // block gradients acknowledged and dropped as resends
	Skipped    int64 // block gradients dropped for holding NaN or Inf (policy skip)
	// Replicated shards (see Chain):
	Replicated     int64 // updates applied as a backup copy (also counted in Applied)
	ReplDuplicates int64 // entries dropped as resends of updates applied
	Resent         int64 // entries sent down a chain again
	StaleAcks      int64 // acknowledgements from a copy the chain no longer runs to
	Filled         int64 // blocks filled from a predecessor's state (a copy that joined a chain)
}

type block struct {
	job.Block
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
	// sync: the parameters at clock keptAt (-1: none), see job.ShardConfig.Keep.
	kept   []float32
	keptAt int64
	// Replication (shard_repl.go): the shards before and after this copy
	// in the block's chain (-1: none), the clock every copy after it has
	// applied, the entries sent down the chain and not yet acknowledged (in
	// clock order), and the tick they were last sent or acknowledged.
	prev, next int
	acked      int64
	log        []wire.Entry
	sentAt     int64
	// A copy that joined a chain holds nothing until its predecessor's
	// state entries have all come (filled): the parts got so far, of the
	// state at clock fillAt.
	filled  bool
	fillAt  int64
	fillGot uint64
}

// waiter is a held pull (req), or a held push acknowledgement (targets:
// the clocks its blocks must have settled), or both (a push that pulls).
type waiter struct {
	token   uint64
	req     *wire.PullRequest
	targets []target
	since   int64 // tick it arrived
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
	cfg       job.ShardConfig
	blocks    []*block
	pos       map[uint32]int
	epochs    []uint64
	rankClock []int64 // ssp/async: steps each rank has completed on this shard
	active    []bool  // elastic ssp: the ranks that bound the staleness
	pushers   []bool  // ssp/async: the ranks that push a block of this shard (with seats, not every one)
	// Replication (shard_repl.go): the shard's index and placement version
	// once Chain has made it part of chains (version 0: it keeps no
	// copies), the blocks it holds a backup copy of (blocks holds its
	// primaries), and the entries and acknowledgements to send, by shard.
	self       int
	version    int64
	lineage    int64
	copies     []*block
	cpos       map[uint32]int
	outEntries map[int][]wire.Entry
	outAcks    map[int][]wire.Ack
	replBytes  int // the bytes of data a replication message carries at most (0: job.RunBytes)
	waiting    []waiter
	ready      []Answer
	now        int64 // ticks
	sum        []float32
	dense      []byte // a sparse push's block made whole (zeros where it carries nothing)
	snapAt     int64  // sync: step of the pending snapshot, -1 for none
	snapped    int    // blocks copied for snapAt
	snaps      []*Snapshot
	stats      Stats
}

// NewShard makes the shard that owns blocks, initialising each block's
// parameters with init. cfg must be valid.
func NewShard(cfg job.ShardConfig, blocks []job.Block, init func(b job.Block, dst []float32)) *Shard {
	if err := cfg.Validate(); err != nil {
		panic("paramserver: " + err.Error())
	}
	if cfg.NonFinite == "" {
		cfg.NonFinite = job.Refuse
	}
	s := &Shard{cfg: cfg, pos: make(map[uint32]int, len(blocks)), epochs: make([]uint64, cfg.Ranks),
		rankClock: make([]int64, cfg.Ranks), active: make([]bool, cfg.Ranks), snapAt: -1,
		self: -1, cpos: map[uint32]int{}, outEntries: map[int][]wire.Entry{}, outAcks: map[int][]wire.Ack{}}
	maxLen := 0
	for i, b := range blocks {
		blk := &block{Block: b, w: make([]float32, b.Len), keptAt: -1, prev: -1, next: -1, filled: true}
		init(b, blk.w)
		for range cfg.Optimizer.Slots() {
			blk.slots = append(blk.slots, make([]float32, b.Len))
		}
		if cfg.Mode == job.Sync {
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
	s.setPushers()
	return s
}

// setPushers finds the ranks that push a block the shard is primary of.
func (s *Shard) setPushers() {
	s.pushers = make([]bool, s.cfg.Ranks)
	for r := range s.pushers {
		for _, b := range s.blocks {
			if s.cfg.Pushes(r, b.Tensor) {
				s.pushers[r] = true
				break
			}
		}
	}
}

// Clock is the number of steps every block of the shard has applied (sync),
// or the number of steps every rank has completed on it (ssp, async).
func (s *Shard) Clock() int64 {
	if s.cfg.Mode != job.Sync {
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
		if !s.cfg.Pushes(r, b.Tensor) {
			return refuse(wire.BadRank, "block %d: rank %d is seat %d of its replica, which does not hold tensor %d", pb.ID, r, r%s.cfg.Seats, b.Tensor)
		}
		if _, err := checkSpans(b, pb.Spans, len(pb.Data)); err != nil {
			return err
		}
		if s.cfg.Mode == job.Sync && p.Step > b.clock {
			return refuse(wire.BadStep, "block %d: step %d is ahead of its clock %d", pb.ID, p.Step, b.clock)
		}
		finite[k] = wire.Finite(pb.Data)
		if !finite[k] && s.cfg.NonFinite == job.Refuse {
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
		if s.cfg.Mode == job.Sync {
			applied = s.pushSync(b, r, p.Step, &p.Blocks[k], finite[k]) || applied
		} else {
			applied = s.pushAsync(b, r, p.Step, &p.Blocks[k], finite[k]) || applied
		}
	}
	if s.cfg.Mode != job.Sync {
		s.advanceRank(r)
		if s.stats.Accepted > accepted { // a new step, not a late resend
			s.active[r] = true
		}
	}
	if applied || s.cfg.Mode != job.Sync {
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
		ApplyBytes(s.cfg.Optimizer, b.w, pb.Data, b.slots, b.clock)
	case s.cfg.Optimizer.Kind == "sgd":
		at := 0
		wire.EachSpan(pb.Spans, func(off, n int) {
			ApplyBytes(s.cfg.Optimizer, b.w[off:off+n], pb.Data[at:at+4*n], nil, b.clock)
			at += 4 * n
		})
	default:
		ApplyBytes(s.cfg.Optimizer, b.w, s.expand(b.Len, pb), b.slots, b.clock)
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
	if s.cfg.Mode != job.Sync {
		// The new holder numbers its steps afresh: (rank, epoch, step)
		// names a gradient.
		for _, b := range s.blocks {
			b.last[r] = -1
		}
		for _, b := range s.copies {
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
	replicas := s.cfg.Replicas()
	if replicas == 1 { // nothing to wait for: apply straight from the message
		s.snapBlock(b)
		skip := b.bad
		if !skip {
			s.apply(b, pb)
			s.stats.Applied++
		}
		b.bad = false
		b.clock++
		s.snapBlock(b)
		s.keepBlock(b)
		if skip {
			s.forward(b, wire.Entry{ID: b.ID, At: b.clock - 1, Skip: true})
		} else {
			s.forward(b, entryOf(b, pb.Data, pb.Spans))
		}
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
	if b.n < replicas {
		return false
	}
	s.snapBlock(b)
	skip := b.bad
	var sum []float32
	if !skip {
		// The replicas' gradients in replica order: ranks seat, seat +
		// Seats, ... (with one seat a replica, every rank in order).
		seats, seat := max(1, s.cfg.Seats), r%max(1, s.cfg.Seats)
		sum = s.sum[:b.Len]
		copy(sum, b.g[seat])
		for q := seat + seats; q < s.cfg.Ranks; q += seats {
			native.Saxpy(len(sum), 1, b.g[q], 1, sum, 1) // sum + 1*g: the plain sum
		}
		native.Sscal(len(sum), 1/float32(replicas), sum, 1)
		Apply(s.cfg.Optimizer, b.w, sum, b.slots, b.clock)
		s.stats.Applied++
	}
	clear(b.got)
	b.n, b.bad = 0, false
	b.clock++
	s.snapBlock(b)
	s.keepBlock(b)
	if skip {
		s.forward(b, wire.Entry{ID: b.ID, At: b.clock - 1, Skip: true})
	} else {
		s.forward(b, entryOf(b, wire.FloatBytes(sum), nil)) // the mean the copies apply as it is
	}
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
		s.stats.Skipped++ // nothing for the copies: a resend after a handover is skipped again
		return false
	}
	s.apply(b, pb)
	s.stats.Applied++
	b.clock++
	e := entryOf(b, pb.Data, pb.Spans)
	e.Rank, e.Epoch, e.Step = uint32(r), s.epochs[r], step
	s.forward(b, e)
	return true
}

// slowest is the clock of the slowest rank that bounds the staleness: any
// rank, or (elastic) any active rank. With none active (bound reports
// false), it is the furthest clock, where a rank that becomes active starts.
// Lag is how many steps rank r is behind the fastest active rank (ssp and
// async: the clock lag a bounded-staleness job bounds); 0 in sync mode,
// where every rank pushes the same step.
func (s *Shard) Lag(r int) int64 {
	if s.cfg.Mode == job.Sync || r < 0 || r >= len(s.rankClock) {
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
		// Every rank that pushes here bounds it (with seats, a rank whose
		// seat holds no block of this shard never advances on it).
		clock, bound = math.MaxInt64, false
		for r, p := range s.pushers {
			if p {
				clock, bound = min(clock, s.rankClock[r]), true
			}
		}
		if !bound {
			return minOf(s.rankClock), true
		}
		return clock, true
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
	c, any := int64(math.MaxInt64), false
	for _, b := range s.blocks {
		if s.cfg.Pushes(r, b.Tensor) { // a seat's rank pushes only its own tensors' blocks
			c, any = min(c, b.last[r]), true
		}
	}
	if any {
		s.rankClock[r] = c + 1
	}
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
