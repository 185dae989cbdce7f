package paramserver

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
)

// chainNet is a set of shard state machines that keep copies of each
// other's blocks, with a network between them that the test controls:
// replication messages wait in one queue (so each link keeps its order,
// as NATS does between two connections), and may be lost.
type chainNet struct {
	t      *testing.T
	p      *job.Placement
	shards []*Shard // nil: dead
	queue  []Outgoing
	from   []int
	rng    *rand.Rand
	lose   float64 // the chance a message is lost
	lost   int
	msgs   int // messages sent
}

var chainTensors = []models.Tensor{{Name: "a", Shape: []int{7, 5}}, {Name: "b", Shape: []int{13}}, {Name: "c", Shape: []int{3, 3}}}

func chainInit(b job.Block, dst []float32) {
	for i := range dst {
		dst[i] = float32(math.Sin(float64(b.Offset + i)))
	}
}

func newChainNet(t *testing.T, cfg job.ShardConfig, shards, copies int) *chainNet {
	p := job.PlaceCopies(chainTensors, 4, shards, copies)
	n := &chainNet{t: t, p: p, rng: rand.New(rand.NewPCG(35, uint64(shards)))}
	for i := range shards {
		s := NewShard(cfg, p.Held(i), chainInit)
		if err := s.Chain(i, p); err != nil {
			t.Fatal(err)
		}
		n.shards = append(n.shards, s)
	}
	return n
}

func (n *chainNet) collect(i int) {
	for _, o := range n.shards[i].Outgoing() {
		if lim := n.shards[i].replBytes; lim > 0 && len(o.Msg.Entries) > 1 {
			size := 0
			for _, e := range o.Msg.Entries {
				size += entryBytes(e)
			}
			if size > lim {
				n.t.Fatalf("shard %d sent %d entries of %d bytes in one message; the limit is %d", i, len(o.Msg.Entries), size, lim)
			}
		}
		n.msgs++
		n.queue = append(n.queue, o)
		n.from = append(n.from, i)
	}
}

// adopt chains every live shard to placement p (a handover, a rejoin),
// and queues what each then sends.
func (n *chainNet) adopt(p *job.Placement) {
	n.t.Helper()
	n.p = p
	for i, s := range n.shards {
		if s != nil {
			if err := s.Chain(i, p); err != nil {
				n.t.Fatal(err)
			}
			n.collect(i)
		}
	}
}

// deliver passes messages on (through the codec) until none is left.
func (n *chainNet) deliver() {
	for len(n.queue) > 0 {
		o := n.queue[0]
		n.queue, n.from = n.queue[1:], n.from[1:]
		if n.shards[o.To] == nil || n.rng.Float64() < n.lose {
			n.lost++
			continue
		}
		o.Msg.V, o.Msg.Job = wire.Version, "j"
		data, err := wire.Encode(o.Msg)
		if err != nil {
			n.t.Fatal(err)
		}
		m, err := wire.DecodeRepl(data)
		if err != nil {
			n.t.Fatal(err)
		}
		if err := n.shards[o.To].Replicate(m); err != nil {
			n.t.Fatalf("shard %d refused a message of shard %d: %v", o.To, m.From, err)
		}
		n.collect(o.To)
	}
}

// settle ticks and delivers until nothing is left to resend.
func (n *chainNet) settle() {
	for range 100 {
		n.deliver()
		busy := false
		for i, s := range n.shards {
			if s == nil {
				continue
			}
			for b := range s.held() {
				busy = busy || len(b.log) > 0
			}
			s.Tick()
			n.collect(i)
		}
		if !busy && len(n.queue) == 0 {
			return
		}
	}
	for i, s := range n.shards {
		if s == nil {
			continue
		}
		for b := range s.held() {
			if len(b.log) > 0 {
				n.t.Logf("shard %d block %d: clock %d acked %d next %d prev %d filled %v log %d (first at %d state %v)", i, b.ID, b.clock, b.acked, b.next, b.prev, b.filled, len(b.log), b.log[0].At, b.log[0].State)
			}
		}
	}
	n.t.Fatal("the chains did not settle in 100 ticks")
}

// grad is rank r's gradient of step for block b: a function of the three.
func grad(r int, step int64, b job.Block) []byte {
	g := make([]float32, b.Len)
	for i := range g {
		g[i] = float32(math.Cos(float64(int64(b.Offset+i)*7+step*13+int64(r)*5))) * 0.5
	}
	return wire.FloatBytes(g)
}

// push sends rank r's gradients of step to the primaries of every block
// (only blocks, if given) and returns the tokens of the pushes held.
func (n *chainNet) push(r int, epoch uint64, step int64, only func(job.Block) bool) {
	for i, s := range n.shards {
		if s == nil {
			continue
		}
		req := &wire.PushRequest{V: wire.Version, Job: "j", Rank: uint32(r), Epoch: epoch, Step: step}
		for _, b := range n.p.OnShard(i) {
			if only == nil || only(b) {
				req.Blocks = append(req.Blocks, wire.Block{ID: b.ID, Data: grad(r, step, b)})
			}
		}
		if len(req.Blocks) == 0 {
			continue
		}
		if err := s.Push(req); err != nil {
			n.t.Fatalf("shard %d: push of rank %d step %d: %v", i, r, step, err)
		}
		n.collect(i)
	}
}

// reference pushes the same gradients to one unreplicated shard of every
// block.
func refPush(t *testing.T, ref *Shard, p *job.Placement, r int, epoch uint64, step int64) {
	req := &wire.PushRequest{V: wire.Version, Job: "j", Rank: uint32(r), Epoch: epoch, Step: step}
	for _, b := range p.Blocks {
		req.Blocks = append(req.Blocks, wire.Block{ID: b.ID, Data: grad(r, step, b)})
	}
	if err := ref.Push(req); err != nil {
		t.Fatal(err)
	}
}

// same fails unless every live copy of every block holds ref's state of it
// bit for bit: parameters, optimizer slots, clock.
func (n *chainNet) same(ref *Shard, what string) {
	n.t.Helper()
	for _, rb := range ref.blocks {
		copies := 0
		for i, s := range n.shards {
			if s == nil {
				continue
			}
			b, _ := s.lookup(rb.ID)
			if b == nil {
				continue
			}
			copies++
			if b.clock != rb.clock || !bitsEqual(b.w, rb.w) {
				n.t.Fatalf("%s: block %d on shard %d: clock %d, want %d; parameters equal: %v", what, rb.ID, i, b.clock, rb.clock, bitsEqual(b.w, rb.w))
			}
			for k := range rb.slots {
				if !bitsEqual(b.slots[k], rb.slots[k]) {
					n.t.Fatalf("%s: block %d on shard %d: optimizer slot %d differs", what, rb.ID, i, k)
				}
			}
		}
		if copies == 0 {
			n.t.Fatalf("%s: no live copy of block %d", what, rb.ID)
		}
	}
}

func bitsEqual(a, b []float32) bool {
	return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
}

var adam = job.ShardConfig{Mode: job.Sync, Ranks: 2, Optimizer: job.DefaultOptimizer("adam", 0.01)}

// Sync with 2 and 3 copies on 3 and 4 shards, a fifth of the messages
// lost, and with messages of one entry each: after every step every copy
// of every block is bit for bit the unreplicated shard's (parameters,
// Adam's moments, clock), and a pull of the next clock is answered only
// once every copy has it.
func TestChainCopiesMatchOneShard(t *testing.T) {
	for _, c := range []struct{ shards, copies, limit int }{{3, 2, 0}, {4, 3, 0}, {3, 2, 100}} {
		n := newChainNet(t, adam, c.shards, c.copies)
		n.lose = 0.2
		for _, s := range n.shards {
			s.SetReplicationLimit(c.limit) // 100 bytes: an entry (16 floats) a message
		}
		ref := NewShard(adam, n.p.Blocks, chainInit)
		for step := int64(0); step < 12; step++ {
			n.push(0, 0, step, nil)
			n.push(1, 0, step, nil)
			refPush(t, ref, n.p, 0, 0, step)
			refPush(t, ref, n.p, 1, 0, step)
			// Applied on the primaries, not yet on their backups: a pull
			// of the next clock waits.
			for i, s := range n.shards {
				ids := s.Blocks()
				if len(ids) == 0 || len(s.copies) == 0 && len(n.queue) == 0 {
					continue
				}
				req := &wire.PullRequest{V: wire.Version, Job: "j", MinClock: step + 1, IDs: ids}
				if now, err := s.Pull(req, uint64(100*step)+uint64(i)); err != nil || now {
					t.Fatalf("%d copies, step %d: shard %d answered a pull before its backups had the step (%v)", c.copies, step, i, err)
				}
			}
			n.settle()
			for i, s := range n.shards {
				if rs := s.Ready(); len(s.Blocks()) > 0 && len(rs) != 1 {
					t.Fatalf("%d copies, step %d: shard %d released %d pulls once settled, want 1", c.copies, step, i, len(rs))
				}
			}
			n.same(ref, fmt.Sprint("step ", step))
		}
		if n.lost == 0 {
			t.Fatal("no message was lost: the resends went untested")
		}
		var resent int64
		for _, s := range n.shards {
			resent += s.Stats().Resent
		}
		t.Logf("%d shards, %d copies, limit %d: %d messages, %d lost, %d entries sent again", c.shards, c.copies, c.limit, n.msgs, n.lost, resent)
	}
}

// A primary dies with step 5 applied and sent to nobody, one rank's
// gradients of step 6 stored: the placement hands its blocks over to
// their backups, both ranks push again what they have not seen answered
// (their step-5 and step-6 gradients, to every new primary), and the job
// goes on to step 10 with the unreplicated shard's parameters bit for bit,
// no step redone, every resend of an applied step dropped.
func TestChainHandoverRedoesNothing(t *testing.T) {
	n := newChainNet(t, adam, 3, 2)
	ref := NewShard(adam, n.p.Blocks, chainInit)
	for step := int64(0); step < 5; step++ {
		for r := range 2 {
			n.push(r, 0, step, nil)
			refPush(t, ref, n.p, r, 0, step)
		}
		n.settle()
	}
	// Step 5: shard 1 applies it and dies before its entries leave.
	dead := 1
	for r := range 2 {
		n.push(r, 0, 5, nil)
		refPush(t, ref, n.p, r, 0, 5)
	}
	n.shards[dead] = nil
	n.deliver() // the others' entries arrive; shard 1's are lost with it
	n.push(0, 0, 6, func(b job.Block) bool { return b.Shard != dead })
	q, err := n.p.Handover(dead)
	if err != nil {
		t.Fatal(err)
	}
	n.adopt(q)
	n.deliver()
	// Every rank pushes its step in flight again, to every primary.
	var dup0 int64
	for _, s := range n.shards {
		if s != nil {
			dup0 += s.Stats().Duplicates
		}
	}
	n.push(0, 0, 5, nil)
	n.push(1, 0, 5, nil)
	n.settle()
	n.push(0, 0, 6, nil)
	refPush(t, ref, n.p, 0, 0, 6)
	n.push(1, 0, 6, nil)
	refPush(t, ref, n.p, 1, 0, 6)
	n.settle()
	n.same(ref, "after the handover")
	var dups int64
	for _, s := range n.shards {
		if s != nil {
			dups += s.Stats().Duplicates
		}
	}
	if dups == dup0 {
		t.Fatal("no resend of an applied step was dropped: the handover test pushed nothing twice")
	}
	for step := int64(7); step < 10; step++ {
		for r := range 2 {
			n.push(r, 0, step, nil)
			refPush(t, ref, n.p, r, 0, step)
		}
		n.settle()
	}
	n.same(ref, "at step 10")
	for _, b := range n.p.Blocks {
		s := n.shards[b.Shard]
		if got, primary := s.lookup(b.ID); got.clock != 10 || !primary || slices.Contains(b.Backups, dead) {
			t.Fatalf("block %d: clock %d on its primary %d (primary there: %v), backups %v", b.ID, got.clock, b.Shard, primary, b.Backups)
		}
	}
}

// Async: each push applies once on every copy, across a handover. Rank 0's
// push of step 3 is applied on a primary that dies before it is
// replicated, and is not acknowledged; pushed again to the new primary it
// is applied there, and its resend of step 2 (acknowledged) is dropped.
// The copies end bit for bit the unreplicated shard that took steps 0-5
// once each.
func TestChainAsyncExactlyOnce(t *testing.T) {
	cfg := job.ShardConfig{Mode: job.Async, Ranks: 1, Optimizer: job.DefaultOptimizer("adam", 0.01)}
	n := newChainNet(t, cfg, 3, 2)
	ref := NewShard(cfg, n.p.Blocks, chainInit)
	acked := func(step int64) bool { // whether every shard can acknowledge rank 0's push of step now
		ok := true
		for i, s := range n.shards {
			if s == nil || len(n.p.OnShard(i)) == 0 {
				continue
			}
			req := &wire.PushRequest{V: wire.Version, Job: "j", Step: step}
			for _, b := range n.p.OnShard(i) {
				req.Blocks = append(req.Blocks, wire.Block{ID: b.ID})
			}
			ok = ok && len(s.unsettled(req)) == 0
		}
		return ok
	}
	for step := int64(0); step < 3; step++ {
		n.push(0, 1, step, nil)
		refPush(t, ref, n.p, 0, 1, step)
		if acked(step) {
			t.Fatalf("step %d acknowledged before its copies applied it", step)
		}
		n.settle()
		if !acked(step) {
			t.Fatalf("step %d not acknowledged once settled", step)
		}
	}
	dead := 2
	n.push(0, 1, 3, nil)
	refPush(t, ref, n.p, 0, 1, 3)
	n.shards[dead] = nil
	n.deliver()
	q, err := n.p.Handover(dead)
	if err != nil {
		t.Fatal(err)
	}
	n.adopt(q)
	n.push(0, 1, 2, nil) // acknowledged before: dropped everywhere
	n.push(0, 1, 3, nil) // applied where it survived, dropped; applied where it was lost
	n.settle()
	for step := int64(4); step < 6; step++ {
		n.push(0, 1, step, nil)
		refPush(t, ref, n.p, 0, 1, step)
		n.settle()
	}
	n.same(ref, "async after the handover")
	for i, s := range n.shards {
		if s == nil {
			continue
		}
		st := s.Stats()
		if st.Accepted != st.Applied-st.Replicated+st.Skipped {
			t.Fatalf("shard %d: accepted %d, applied %d (%d as a copy), skipped %d", i, st.Accepted, st.Applied, st.Replicated, st.Skipped)
		}
	}
}

// No split brain: a primary the job replaced (cut off from the others, not
// dead) applies a push, but its backup, on the new placement, refuses its
// entries as superseded: the push is never acknowledged and a sync pull of
// the next clock is never answered.
func TestChainFencedPrimaryAcknowledgesNothing(t *testing.T) {
	n := newChainNet(t, adam, 2, 2)
	zombie := 0
	q, err := n.p.Handover(zombie)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.shards[1].Chain(1, q); err != nil {
		t.Fatal(err)
	}
	z := n.shards[zombie]
	req := &wire.PushRequest{V: wire.Version, Job: "j", Rank: 0, Step: 0}
	for _, b := range n.p.OnShard(zombie) {
		req.Blocks = append(req.Blocks, wire.Block{ID: b.ID, Data: grad(0, 0, b)})
	}
	for r := range 2 {
		req.Rank = uint32(r)
		if err := z.Push(req); err != nil {
			t.Fatal(err)
		}
	}
	if z.HoldPush(req, req.ThenPull(), 7) {
		t.Fatal("the fenced primary acknowledged a push at once")
	}
	for _, o := range z.Outgoing() {
		o.Msg.V, o.Msg.Job = wire.Version, "j"
		if err := n.shards[o.To].Replicate(o.Msg); !errors.Is(err, &wire.Error{Kind: wire.Superseded}) {
			t.Fatalf("the new placement's shard took the fenced primary's message: %v", err)
		}
	}
	for range 20 {
		z.Tick()
		z.Outgoing()
	}
	if rs := z.Ready(); len(rs) != 0 {
		t.Fatalf("the fenced primary released %v", rs)
	}
}

// A replication message that does not fit the chains is refused whole and
// changes nothing: from a shard that is not the block's previous copy,
// for a block held as primary or not at all, with a gradient of the wrong
// length, for a rank outside the job.
func TestChainRefusesWhatDoesNotFit(t *testing.T) {
	n := newChainNet(t, adam, 3, 2)
	var backupOf1 job.Block // a block whose primary is shard 1, and its backup
	for _, b := range n.p.Blocks {
		if b.Shard == 1 {
			backupOf1 = b
			break
		}
	}
	to := backupOf1.Backups[0]
	other := 3 - 1 - to
	primaryHere := n.p.OnShard(to)[0]
	good := wire.Entry{ID: backupOf1.ID, At: 0, Data: grad(0, 0, backupOf1)}
	for name, c := range map[string]struct {
		m    wire.ReplMsg
		kind wire.Kind
	}{
		"not its previous copy": {wire.ReplMsg{Placement: 1, From: uint32(other), Entries: []wire.Entry{good}}, wire.Refused},
		"a block it is primary of": {wire.ReplMsg{Placement: 1, From: 1, Entries: []wire.Entry{good, {ID: primaryHere.ID, Data: grad(0, 0, primaryHere)}}},
			wire.UnknownBlock},
		"a block it does not hold": {wire.ReplMsg{Placement: 1, From: 1, Entries: []wire.Entry{{ID: 999}}}, wire.UnknownBlock},
		"short gradient":           {wire.ReplMsg{Placement: 1, From: 1, Entries: []wire.Entry{good, {ID: backupOf1.ID, At: 1, Data: make([]byte, 4)}}}, wire.BadLength},
		"another placement":        {wire.ReplMsg{Placement: 2, From: 1, Entries: []wire.Entry{good}}, wire.Superseded},
	} {
		before := n.shards[to].Stats()
		if err := n.shards[to].Replicate(&c.m); wire.ErrKind(err) != c.kind {
			t.Errorf("%s: %v, want %v", name, err, c.kind)
		}
		if b, _ := n.shards[to].lookup(backupOf1.ID); b.clock != 0 || n.shards[to].Stats() != before {
			t.Errorf("%s: the refused message changed the shard", name)
		}
	}
	async := job.ShardConfig{Mode: job.Async, Ranks: 1, Optimizer: job.DefaultOptimizer("sgd", 1)}
	a := newChainNet(t, async, 3, 2)
	e := wire.Entry{ID: backupOf1.ID, At: 0, Rank: 5, Data: grad(0, 0, backupOf1)}
	if err := a.shards[to].Replicate(&wire.ReplMsg{Placement: 1, From: 1, Entries: []wire.Entry{e}}); wire.ErrKind(err) != wire.BadRank {
		t.Errorf("an entry of rank 5 in a job of 1: %v", err)
	}
}

// Re-replication: shard 1 dies and its blocks are handed over; it comes
// back empty (a new process), rejoins as the last copy of what it held, and
// is filled from its predecessors' state entries while steps go on, under
// a fifth of the messages lost. Once filled (job.Placement.Filled), shard 0
// dies too: its blocks are handed over, to shard 1 among others, and the
// job goes on. After every step every live copy is the unreplicated
// shard's, bit for bit.
func TestChainRejoinFillsAndTakesOver(t *testing.T) {
	for _, mode := range []string{job.Sync, job.Async} {
		cfg := job.ShardConfig{Mode: mode, Ranks: 2, Optimizer: job.DefaultOptimizer("adam", 0.01)}
		n := newChainNet(t, cfg, 3, 2)
		n.lose = 0.2
		ref := NewShard(cfg, n.p.Blocks, chainInit)
		step := int64(0)
		run := func(k int) {
			for range k {
				for r := range 2 {
					n.push(r, 1, step, nil)
					refPush(t, ref, n.p, r, 1, step)
					if mode != job.Sync {
						n.settle() // async: each push applied in turn, as the reference's
					}
				}
				n.settle()
				n.same(ref, fmt.Sprintf("%s, step %d", mode, step))
				step++
			}
		}
		chain := func(p *job.Placement) {
			n.adopt(p)
			n.settle()
		}
		run(3)
		n.shards[1] = nil
		q, err := n.p.Handover(1)
		if err != nil {
			t.Fatal(err)
		}
		chain(q)
		run(2)
		r, err := q.Rejoin(1)
		if err != nil {
			t.Fatal(err)
		}
		back := NewShard(cfg, r.Held(1), func(job.Block, []float32) {})
		back.Empty()
		n.shards[1] = back
		chain(r)
		if !back.Filled() || back.Stats().Filled != int64(len(r.Held(1))) {
			t.Fatalf("%s: the rejoined shard filled %d of its %d blocks", mode, back.Stats().Filled, len(r.Held(1)))
		}
		run(2)
		f, err := r.Filled(1)
		if err != nil {
			t.Fatal(err)
		}
		chain(f)
		n.shards[0] = nil
		g, err := f.Handover(0)
		if err != nil {
			t.Fatalf("%s: shard 0 died after shard 1 was filled: %v", mode, err)
		}
		chain(g)
		run(2)
		primaryOf1 := 0
		for _, b := range g.Blocks {
			if b.Shard == 1 {
				primaryOf1++
			}
		}
		if primaryOf1 == 0 {
			t.Fatalf("%s: shard 1 took over no block", mode)
		}
		t.Logf("%s: shard 1 filled %d blocks, then was primary of %d after shard 0 died; %d messages, %d lost", mode, back.Stats().Filled, primaryOf1, n.msgs, n.lost)
	}
}
