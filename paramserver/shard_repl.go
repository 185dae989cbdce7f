package paramserver

import (
	"fmt"
	"iter"
	"slices"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/wire"
)

// Replicated shards (a placement with Copies above 1) keep each block on a
// chain of shards: its primary, then its backups in the order they take
// over (job.Placement). Invariants (each tested):
//
//   - every copy applies the same updates in the same order at the same
//     clocks: the primary's update (a sync step's mean gradient, applied
//     once; an async push) goes down the chain as a wire.Entry of clock
//     At, and a copy applies it only at clock At (a resend below its clock
//     is dropped, one above it is a gap it asks to be filled), with the
//     same kernel; so every copy of a block is bit for bit the primary's
//     at the same clock, optimizer state and the async pushes' identities
//     included;
//   - a copy acknowledges clock c up the chain only once every copy after
//     it has applied c updates (the last copy: once it has), so the
//     primary's settled clock (what every copy holds) is never ahead of
//     any copy;
//   - nothing leaves the primary that a backup lacks: a sync pull of
//     clock c is answered once c is settled, and a push is acknowledged
//     once the updates it made (or found made) are settled. A worker's
//     step whose push was not acknowledged, or whose next pull was not
//     answered, is in flight: after a handover it pushes it again, and
//     the copy that took over applies what it lacks and drops the rest as
//     resends;
//   - a shard takes entries and acknowledgements of its own placement
//     version only: a primary the job has replaced cannot get an update
//     acknowledged, so it acknowledges no push and answers no sync pull
//     of a new clock (no split brain).

// ReplResendTicks is how many ticks a copy waits for an acknowledgement
// before it sends its unacknowledged entries again (an entry lost with a
// server, or dropped by a slow consumer).
const ReplResendTicks = 5

// target is a clock a waiter needs a primary block to have settled.
type target struct {
	b     *block
	clock int64
}

// settled is the clock every copy of b has applied.
func settled(b *block) int64 {
	if b.next < 0 {
		return b.clock
	}
	return b.acked
}

// Chain makes the shard shard self of placement p, whose chains say which
// of its blocks it is the primary of, which it holds a backup of, and
// where each block's updates come from and go. The shard must hold a copy
// of exactly the blocks p gives it. A block whose next copy changed sends its
// unacknowledged entries to the new one (which drops those it has); a
// block that became primary takes pushes and pulls from now on. Pending
// sync snapshots are dropped when the primaries change (the checkpoint of
// the old placement cannot complete).
func (s *Shard) Chain(self int, p *job.Placement) error {
	held := p.Held(self)
	if n := len(s.blocks) + len(s.copies); len(held) != n {
		return fmt.Errorf("placement %d gives shard %d %d blocks; it holds %d", p.Version, self, len(held), n)
	}
	var prims, backs []*block
	for _, jb := range held {
		b, primary := s.lookup(jb.ID)
		if b == nil {
			return fmt.Errorf("placement %d gives shard %d block %d, of which it holds no copy", p.Version, self, jb.ID)
		}
		if primary && s.self >= 0 && jb.Shard != self {
			// A block handed back to the shard that was its primary (a
			// shard refilled, job.Placement.Filled): this copy steps down.
			// The step's gradients it stored go; their ranks push them
			// again to the new primary, as after a handover.
			if b.g != nil {
				clear(b.got)
				b.n, b.bad = 0, false
			}
		}
		if jb.Shard == self {
			prims = append(prims, b)
		} else {
			backs = append(backs, b)
		}
	}
	promoted := len(prims) != len(s.blocks) || slices.ContainsFunc(prims, func(b *block) bool { _, was := s.pos[b.ID]; return !was })
	// Held pulls and pushes name blocks by id and belonged to the service
	// of the placement before (closed by now): they go.
	s.waiting, s.ready = nil, nil
	for _, b := range append(slices.Clone(prims), backs...) {
		jb := p.Blocks[b.ID]
		chain := append([]int{jb.Shard}, jb.Backups...)
		k := slices.Index(chain, self)
		prev, next := -1, -1
		if k > 0 {
			prev = chain[k-1]
		}
		if k+1 < len(chain) {
			next = chain[k+1]
		}
		b.Block, b.prev = jb, prev
		if s.version == 0 { // every copy starts where the placement does
			b.next, b.acked, b.log = next, b.clock, nil
		}
		if next != b.next {
			b.next = next
			if next < 0 {
				b.log, b.acked = nil, b.clock
			} else if b.filled {
				// The new next may lack what the old one acknowledged (a
				// copy that rejoined holds nothing): the block's state at
				// its clock, after the entries it may still need. It drops
				// what it has.
				s.resend(b, 0)
				for _, e := range s.stateEntries(b) {
					s.forward(b, e)
				}
			}
		}
	}
	s.blocks, s.copies = prims, backs
	s.pos, s.cpos = make(map[uint32]int, len(prims)), make(map[uint32]int, len(backs))
	for i, b := range prims {
		s.pos[b.ID] = i
	}
	for i, b := range backs {
		s.cpos[b.ID] = i
	}
	s.self, s.version, s.lineage = self, p.Version, p.Lineage()
	s.setPushers()
	if s.cfg.Mode != job.Sync {
		for r := range s.rankClock {
			s.advanceRank(r)
		}
	}
	if promoted && s.snapAt >= 0 {
		s.snapAt, s.snapped = -1, 0
		for b := range s.held() {
			b.snap = nil
		}
	}
	s.release()
	return nil
}

// held yields every block the shard holds a copy of: its primaries, then
// its backups.
func (s *Shard) held() iter.Seq[*block] {
	return func(yield func(*block) bool) {
		for _, bs := range [][]*block{s.blocks, s.copies} {
			for _, b := range bs {
				if !yield(b) {
					return
				}
			}
		}
	}
}

// lookup finds block id among the shard's primaries, then its backups.
func (s *Shard) lookup(id uint32) (b *block, primary bool) {
	if i, ok := s.pos[id]; ok {
		return s.blocks[i], true
	}
	if i, ok := s.cpos[id]; ok {
		return s.copies[i], false
	}
	return nil, false
}

// Version is the placement version whose chains the shard follows (0:
// none, it keeps no copies).
func (s *Shard) Version() int64 { return s.version }

// Lineage is the lineage (job.Placement.Lineage) of the placement whose
// chains the shard follows (0: none).
func (s *Shard) Lineage() int64 { return s.lineage }

// forward sends block b's update of clock e.At (just applied: b.clock is
// e.At+1) down its chain, or, at the chain's end, settles it. Its data are
// copied only to go down a chain (they view a message or a buffer the
// shard reuses): an unreplicated shard's step copies nothing.
func (s *Shard) forward(b *block, e wire.Entry) {
	if b.next < 0 {
		b.acked = b.clock
		return
	}
	e.Data, e.Spans = slices.Clone(e.Data), slices.Clone(e.Spans)
	if len(b.log) == 0 {
		b.sentAt = s.now
	}
	b.log = append(b.log, e)
	s.outEntries[b.next] = append(s.outEntries[b.next], e)
}

// stateEntries are b's state at its clock as state entries: its
// parameters (with the ranks' last steps and epochs), then each optimizer
// slot.
func (s *Shard) stateEntries(b *block) []wire.Entry {
	parts := uint8(1 + len(b.slots))
	es := []wire.Entry{{ID: b.ID, At: b.clock, State: true, Parts: parts, Data: wire.FloatBytes(b.w),
		Lasts: slices.Clone(b.last), Epochs: slices.Clone(s.epochs)}}
	for k, sl := range b.slots {
		es = append(es, wire.Entry{ID: b.ID, At: b.clock, State: true, Part: uint8(k + 1), Parts: parts, Data: wire.FloatBytes(sl)})
	}
	return es // (viewing the block: forward copies what it sends)
}

// Empty marks every block of the shard as holding nothing: a shard that
// rejoins a chain (job.Placement.Rejoin) is filled from its predecessors'
// state entries.
func (s *Shard) Empty() {
	for b := range s.held() {
		b.filled, b.fillGot = false, 0
	}
}

// Filled reports whether every block of the shard holds its state.
func (s *Shard) Filled() bool {
	for b := range s.held() {
		if !b.filled {
			return false
		}
	}
	return true
}

// takeState installs a state entry's part in b (unfilled, or behind it);
// it reports whether b is filled by it.
func (s *Shard) takeState(b *block, e wire.Entry) bool {
	if b.filled {
		if e.At <= b.clock {
			s.stats.ReplDuplicates++
			return false
		}
		b.filled, b.fillGot = false, 0 // behind: filled afresh
	}
	if b.fillGot == 0 || e.At != b.fillAt {
		b.fillAt, b.fillGot = e.At, 0
	}
	if e.Part == 0 {
		wire.CopyFloats(b.w, e.Data)
		copy(b.last, e.Lasts)
		for r, ep := range e.Epochs {
			s.epochs[r] = max(s.epochs[r], ep)
		}
	} else {
		wire.CopyFloats(b.slots[e.Part-1], e.Data)
	}
	b.fillGot |= 1 << e.Part
	if b.fillGot != 1<<e.Parts-1 {
		return false
	}
	b.clock, b.filled, b.fillGot = b.fillAt, true, 0
	b.keptAt = -1
	s.keepBlock(b)
	s.stats.Filled++
	return true
}

// entryOf is the entry of the update of b from gradient bytes and spans
// just applied (forward copies what it sends).
func entryOf(b *block, data, spans []byte) wire.Entry {
	return wire.Entry{ID: b.ID, At: b.clock - 1, Data: data, Spans: spans}
}

// resend queues b's unacknowledged entries from clock from on to its next
// copy.
func (s *Shard) resend(b *block, from int64) {
	b.sentAt = s.now
	for _, e := range b.log {
		if e.At >= from {
			s.outEntries[b.next] = append(s.outEntries[b.next], e)
			s.stats.Resent++
		}
	}
}

// Replicate takes a replication message from another copy of some of the
// shard's blocks: entries from the copy before it in their chains, which
// it applies (and passes on), or acknowledgements from the copy after
// it. A message of another placement version, or naming a block whose
// chain does not run from the sender to this shard, or whose gradient
// does not fit its block, is refused and changes nothing.
func (s *Shard) Replicate(m *wire.ReplMsg) error {
	if s.version == 0 {
		return refuse(wire.Refused, "this shard keeps no copies")
	}
	if m.Placement != s.version {
		return refuse(wire.Superseded, "replication of placement %d; this shard follows placement %d", m.Placement, s.version)
	}
	from := int(m.From)
	if len(m.Entries) > 0 {
		return s.takeEntries(from, m.Entries)
	}
	return s.takeAcks(from, m.Acks)
}

func (s *Shard) takeEntries(from int, es []wire.Entry) error {
	for _, e := range es {
		i, ok := s.cpos[e.ID]
		if !ok {
			return refuse(wire.UnknownBlock, "block %d: no backup of it here", e.ID)
		}
		b := s.copies[i]
		if b.prev != from {
			return refuse(wire.Refused, "block %d: its updates come from shard %d, not %d", e.ID, b.prev, from)
		}
		switch {
		case e.State:
			lasts := 0
			if s.cfg.Mode != job.Sync {
				lasts = s.cfg.Ranks
			}
			if len(e.Data) != 4*b.Len || int(e.Parts) != 1+len(b.slots) || e.Part == 0 && (len(e.Lasts) != lasts || len(e.Epochs) != s.cfg.Ranks) {
				return refuse(wire.BadLength, "block %d: a state part of %d bytes, %d parts, %d ranks' steps and %d epochs does not fit it", e.ID, len(e.Data), e.Parts, len(e.Lasts), len(e.Epochs))
			}
		case !e.Skip:
			if _, err := checkSpans(b, e.Spans, len(e.Data)); err != nil {
				return err
			}
		}
		if s.cfg.Mode != job.Sync && int64(e.Rank) >= int64(s.cfg.Ranks) {
			return refuse(wire.BadRank, "block %d: rank %d outside 0..%d", e.ID, e.Rank, s.cfg.Ranks-1)
		}
	}
	gap := map[uint32]bool{}
	var touched []uint32
	for _, e := range es {
		b := s.copies[s.cpos[e.ID]]
		if !slices.Contains(touched, e.ID) {
			touched = append(touched, e.ID)
		}
		if e.State {
			if s.takeState(b, e) && b.next >= 0 { // pass the state on
				for _, se := range s.stateEntries(b) {
					s.forward(b, se)
				}
			} else if b.filled && b.next < 0 {
				b.acked = b.clock
			}
			delete(gap, e.ID)
			continue
		}
		switch {
		case gap[e.ID]:
			continue
		case !b.filled: // nothing to apply it to until the state comes
			gap[e.ID] = true
			continue
		case e.At < b.clock:
			s.stats.ReplDuplicates++
			continue
		case e.At > b.clock:
			gap[e.ID] = true
			continue
		}
		s.applyEntry(b, e)
		s.stats.Replicated++
		b.clock++
		s.keepBlock(b)
		s.forward(b, e)
	}
	for _, id := range touched {
		b := s.copies[s.cpos[id]]
		clock := settled(b)
		if !b.filled {
			clock = 0 // it holds nothing yet
		}
		s.outAcks[from] = append(s.outAcks[from], wire.Ack{ID: id, Clock: clock, Gap: gap[id] || !b.filled})
	}
	return nil
}

// applyEntry applies an update as the primary did (the same kernel on the
// same state), and records the push it came from (ssp, async; a push the
// primary skipped for being non-finite changes nothing and is not sent).
func (s *Shard) applyEntry(b *block, e wire.Entry) {
	if s.cfg.Mode != job.Sync {
		r := int(e.Rank)
		if e.Epoch > s.epochs[r] {
			s.newEpoch(r, e.Epoch)
		}
		if e.Epoch == s.epochs[r] {
			b.last[r] = max(b.last[r], e.Step)
		}
	}
	if e.Skip { // sync: the step's clock moves, its parameters do not
		return
	}
	s.apply(b, &wire.Block{ID: e.ID, Data: e.Data, Spans: e.Spans})
	s.stats.Applied++
}

func (s *Shard) takeAcks(from int, as []wire.Ack) error {
	for _, a := range as {
		if b, _ := s.lookup(a.ID); b == nil {
			return refuse(wire.UnknownBlock, "block %d: no copy of it here", a.ID)
		}
	}
	for _, a := range as {
		b, _ := s.lookup(a.ID)
		if b.next != from {
			s.stats.StaleAcks++ // from a copy the chain no longer runs to
			continue
		}
		c := min(a.Clock, b.clock)
		// What the next has: updates below its clock, and a state at it.
		k := 0
		for k < len(b.log) && (b.log[k].At < c || b.log[k].State && b.log[k].At <= c && !a.Gap) {
			k++
		}
		if k > 0 {
			b.sentAt = s.now
			clear(b.log[:k])
			b.log = b.log[k:]
			if len(b.log) == 0 {
				b.log = nil
			}
		}
		if c > b.acked {
			b.acked = c
			b.sentAt = s.now
			if b.prev >= 0 {
				s.outAcks[b.prev] = append(s.outAcks[b.prev], wire.Ack{ID: b.ID, Clock: b.acked})
			}
		}
		if a.Gap {
			s.resend(b, a.Clock)
		}
	}
	s.release()
	return nil
}

// Outgoing is a replication message to send: Msg to shard To's
// ReplSubject (the sender fills in the job and protocol version).
type Outgoing struct {
	To  int
	Msg *wire.ReplMsg
}

// Outgoing returns the replication messages to send, entries and
// acknowledgements for each shard in shard order, and forgets them.
func (s *Shard) Outgoing() []Outgoing {
	if len(s.outEntries) == 0 && len(s.outAcks) == 0 {
		return nil
	}
	var tos []int
	for to := range s.outEntries {
		tos = append(tos, to)
	}
	for to := range s.outAcks {
		if _, ok := s.outEntries[to]; !ok {
			tos = append(tos, to)
		}
	}
	slices.Sort(tos)
	var out []Outgoing
	limit := s.replBytes
	if limit <= 0 {
		limit = job.RunBytes
	}
	for _, to := range tos {
		// Entries go in messages of at most limit bytes of data (a
		// resend after a loss, or a new next's, may hold every block's).
		es := s.outEntries[to]
		for len(es) > 0 {
			n, size := 0, 0
			for n < len(es) && (n == 0 || size+entryBytes(es[n]) <= limit) {
				size += entryBytes(es[n])
				n++
			}
			out = append(out, Outgoing{To: to, Msg: &wire.ReplMsg{Placement: s.version, From: uint32(s.self), Entries: es[:n:n]}})
			es = es[n:]
		}
		if as := s.outAcks[to]; len(as) > 0 {
			out = append(out, Outgoing{To: to, Msg: &wire.ReplMsg{Placement: s.version, From: uint32(s.self), Acks: as}})
		}
	}
	clear(s.outEntries)
	clear(s.outAcks)
	return out
}

// entryBytes is what an entry takes in a message, about: its data and
// spans, and room for its other fields.
func entryBytes(e wire.Entry) int { return len(e.Data) + len(e.Spans) + 64 }

// SetReplicationLimit bounds the bytes of data a replication message
// carries (default job.RunBytes: a message fits NATS's default
// max_payload); an entry larger than it goes alone.
func (s *Shard) SetReplicationLimit(bytes int) { s.replBytes = bytes }

// resendStale queues again the entries of every block that has waited
// ReplResendTicks ticks without an acknowledgement.
func (s *Shard) resendStale() {
	for b := range s.held() {
		if len(b.log) > 0 && s.now-b.sentAt >= ReplResendTicks {
			s.resend(b, 0)
		}
	}
}

// unsettled lists what a push that Push just took must wait for before it
// is acknowledged, in a shard that keeps copies (nil: nothing, acknowledge
// it now): in sync mode, each of its blocks to have applied its step on
// every copy (the rank keeps its gradient until then, to push it again
// should the primary die first); in ssp and async, each of its blocks to
// have every update so far on every copy.
func (s *Shard) unsettled(p *wire.PushRequest) []target {
	if s.version == 0 {
		return nil
	}
	var ts []target
	for _, pb := range p.Blocks {
		b := s.blocks[s.pos[pb.ID]]
		want := b.clock
		if s.cfg.Mode == job.Sync {
			want = p.Step + 1
		}
		if settled(b) < want {
			ts = append(ts, target{b: b, clock: want})
		}
	}
	return ts
}

// HoldPush says whether a push that Push took can be acknowledged now;
// otherwise the shard holds it as token and names it in a later Ready, once
// every copy of its blocks has what the shard applied before and with it.
// With then set (a push that asks to pull), the answer waits for the pull
// too, as Pull's would.
func (s *Shard) HoldPush(p *wire.PushRequest, then *wire.PullRequest, token uint64) bool {
	w := waiter{token: token, req: then, targets: s.unsettled(p), since: s.now}
	if s.ready1(w) {
		return true
	}
	s.waiting = append(s.waiting, w)
	return false
}

// ready1 says whether waiter w can be answered now.
func (s *Shard) ready1(w waiter) bool {
	for _, t := range w.targets {
		if settled(t.b) < t.clock {
			return false
		}
	}
	return w.req == nil || s.answerable(w.req)
}
