package paramserver

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
)

var testTensors = []models.Tensor{{Name: "a", Shape: []int{7, 5}}, {Name: "b", Shape: []int{13}}, {Name: "c", Shape: []int{3, 3}}}

func initFlat(p *job.Placement) []float32 {
	w := make([]float32, p.Size())
	for i, off := range models.Offsets(p.Tensors) {
		models.InitUniform(w[off:off+p.Tensors[i].Size()], 1, p.Tensors[i].Name, 0.5)
	}
	return w
}

func syncCfg(ranks int, opt job.Optimizer) job.ShardConfig {
	return job.ShardConfig{Mode: job.Sync, Ranks: ranks, Optimizer: opt}
}

func newShards(p *job.Placement, cfg job.ShardConfig) []*Shard {
	w0 := initFlat(p)
	shards := make([]*Shard, p.Shards)
	for s := range shards {
		shards[s] = NewShard(cfg, p.OnShard(s), func(b job.Block, dst []float32) { copy(dst, w0[b.Offset:b.Offset+b.Len]) })
	}
	return shards
}

// pushes cuts rank's gradient for step into one push per block.
func pushes(p *job.Placement, rank int, epoch uint64, step int64, g []float32) []*wire.PushRequest {
	var out []*wire.PushRequest
	for _, b := range p.Blocks {
		out = append(out, &wire.PushRequest{V: wire.Version, Job: "j", Rank: uint32(rank), Epoch: epoch, Step: step,
			Blocks: []wire.Block{{ID: b.ID, Data: wire.AppendFloats(nil, g[b.Offset:b.Offset+b.Len])}}})
	}
	return out
}

func gather(p *job.Placement, shards []*Shard) []float32 {
	w := make([]float32, p.Size())
	for _, b := range p.Blocks {
		v, ok := shards[b.Shard].Params(b.ID)
		if !ok {
			panic("block not on its shard")
		}
		copy(w[b.Offset:], v)
	}
	return w
}

func grads(rng *rand.Rand, n int) []float32 {
	g := make([]float32, n)
	for i := range g {
		g[i] = float32(rng.NormFloat64())
	}
	return g
}

// refOptimizer is the textbook form of each update rule on the whole
// parameter vector, written independently of Apply.
type refOptimizer struct {
	opt  job.Optimizer
	a, b []float32 // state: momentum increment, adagrad sum, adam moments
}

func (r *refOptimizer) step(w, g []float32, t int64) {
	if r.a == nil {
		r.a, r.b = make([]float32, len(w)), make([]float32, len(w))
	}
	lr := float32(r.opt.Schedule.Rate(r.opt.LR, t))
	switch r.opt.Kind {
	case "sgd":
		for i := range w {
			w[i] = w[i] - float32(lr*g[i]) // each product rounded: never fused into a multiply-add
		}
	case "momentum":
		m := float32(r.opt.MomentumAt(t))
		for i := range w {
			r.a[i] = float32(m*r.a[i]) - float32(lr*g[i])
			w[i] = w[i] + r.a[i]
		}
	case "adagrad":
		for i := range w {
			r.a[i] = r.a[i] + g[i]*g[i]
			w[i] = w[i] - lr*g[i]/(float32(math.Sqrt(float64(r.a[i])))+float32(r.opt.Eps))
		}
	case "adam":
		b1, b2 := float32(r.opt.Beta1), float32(r.opt.Beta2)
		bc1 := float32(1 - math.Pow(r.opt.Beta1, float64(t+1)))
		bc2 := float32(1 - math.Pow(r.opt.Beta2, float64(t+1)))
		for i := range w {
			r.a[i] = b1*r.a[i] + float32(1-r.opt.Beta1)*g[i]
			r.b[i] = b2*r.b[i] + float32(1-r.opt.Beta2)*g[i]*g[i]
			mhat, vhat := r.a[i]/bc1, r.b[i]/bc2
			w[i] = w[i] - lr*mhat/(float32(math.Sqrt(float64(vhat)))+float32(r.opt.Eps))
		}
	}
}

// reference applies one BSP step: the mean over ranks, summed in rank order.
func (r *refOptimizer) syncStep(w []float32, gs [][]float32, t int64) {
	g := slices.Clone(gs[0])
	for _, h := range gs[1:] {
		for j := range g {
			g[j] += h[j]
		}
	}
	if len(gs) > 1 {
		s := 1 / float32(len(gs))
		for j := range g {
			g[j] *= s
		}
	}
	r.step(w, g, t)
}

func testOptimizers() []job.Optimizer {
	mom := job.DefaultOptimizer("momentum", 0.05)
	mom.Momentum, mom.MomentumFinal, mom.RampStart, mom.RampEnd = 0.5, 0.7, 1, 3
	sgd := job.DefaultOptimizer("sgd", 0.3)
	sgd.Schedule = job.Schedule{Kind: "halving", HalveAfter: 2, HalveEvery: 1}
	ada := job.DefaultOptimizer("adagrad", 0.1)
	ada.Schedule = job.Schedule{Kind: "exp", Decay: 1.5, Floor: 0.02}
	return []job.Optimizer{sgd, mom, ada, job.DefaultOptimizer("adam", 0.01)}
}

// Sync-mode parameters after every step are bit-identical to the textbook
// update of the whole vector, for every optimizer and schedule, 1-4 shards,
// several block sizes, and any arrival order of pushes with resends mixed in.
func TestSyncMatchesReferenceAnyShardsAnyOrder(t *testing.T) {
	const ranks, steps = 3, 5
	rng := rand.New(rand.NewPCG(1, 2))
	n := models.TotalSize(testTensors)
	gs := make([][][]float32, steps)
	for s := range gs {
		for range ranks {
			gs[s] = append(gs[s], grads(rng, n))
		}
	}
	for _, opt := range testOptimizers() {
		ref := initFlat(job.Place(testTensors, 4, 1))
		r := &refOptimizer{opt: opt}
		var want [][]float32
		for s := 0; s < steps; s++ {
			r.syncStep(ref, gs[s], int64(s))
			want = append(want, slices.Clone(ref))
		}
		for shards := 1; shards <= 4; shards++ {
			for _, bs := range []int{1, 4, 6, 100} {
				p := job.Place(testTensors, bs, shards)
				sh := newShards(p, syncCfg(ranks, opt))
				for s := 0; s < steps; s++ {
					var msgs []*wire.PushRequest
					for r := 0; r < ranks; r++ {
						msgs = append(msgs, pushes(p, r, 1, int64(s), gs[s][r])...)
					}
					msgs = append(msgs, msgs[rng.IntN(len(msgs))], msgs[rng.IntN(len(msgs))]) // resends
					rng.Shuffle(len(msgs), func(i, j int) { msgs[i], msgs[j] = msgs[j], msgs[i] })
					for _, m := range msgs {
						if err := sh[p.Blocks[m.Blocks[0].ID].Shard].Push(m); err != nil {
							t.Fatal(err)
						}
					}
					for _, x := range sh {
						if len(x.Blocks()) > 0 && x.Clock() != int64(s+1) {
							t.Fatalf("%s, %d shards: clock %d after step %d", opt.Kind, shards, x.Clock(), s)
						}
					}
					if got := gather(p, sh); !slices.Equal(got, want[s]) {
						t.Fatalf("%s, %d shards, block %d: parameters after step %d differ from the reference", opt.Kind, shards, bs, s)
					}
				}
				var st Stats
				for _, x := range sh {
					s := x.Stats()
					st.Accepted, st.Applied, st.Duplicates = st.Accepted+s.Accepted, st.Applied+s.Applied, st.Duplicates+s.Duplicates
				}
				if st.Accepted != int64(steps*ranks*len(p.Blocks)) || st.Applied != int64(steps*len(p.Blocks)) || st.Duplicates != 2*steps {
					t.Fatalf("%s: stats %+v do not reconcile", opt.Kind, st)
				}
			}
		}
	}
}

// Async mode applies each push on arrival with the optimizer: one rank's
// pushes in order give exactly the reference's sequential updates.
func TestAsyncAppliesOnArrival(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	p := job.Place(testTensors, 8, 2)
	for _, opt := range testOptimizers() {
		sh := newShards(p, job.ShardConfig{Mode: job.Async, Ranks: 2, Optimizer: opt})
		ref := initFlat(p)
		r := &refOptimizer{opt: opt}
		for s := 0; s < 4; s++ {
			g := grads(rng, p.Size())
			r.step(ref, g, int64(s))
			for _, m := range pushes(p, s%2, 1, int64(s/2), g) {
				if err := sh[p.Blocks[m.Blocks[0].ID].Shard].Push(m); err != nil {
					t.Fatal(err)
				}
			}
		}
		if !slices.Equal(gather(p, sh), ref) {
			t.Fatalf("%s: async updates differ from the sequential reference", opt.Kind)
		}
	}
}

func TestRefusedPushesChangeNothing(t *testing.T) {
	p := job.Place(testTensors, 8, 1)
	sh := newShards(p, syncCfg(2, job.DefaultOptimizer("sgd", 0.1)))[0]
	before := gather(p, []*Shard{sh})
	n := p.Size()
	for _, m := range pushes(p, 0, 5, 0, make([]float32, n)) {
		if err := sh.Push(m); err != nil {
			t.Fatal(err)
		}
	}
	bad := func(mut func(m *wire.PushRequest)) *wire.PushRequest {
		m := pushes(p, 1, 5, 0, grads(rand.New(rand.NewPCG(3, 3)), n))[0]
		mut(m)
		return m
	}
	nan := make([]float32, p.Blocks[0].Len)
	nan[len(nan)-1] = float32(math.NaN())
	inf := slices.Clone(nan)
	inf[len(inf)-1] = float32(math.Inf(-1))
	cases := []struct {
		name string
		m    *wire.PushRequest
		want wire.Kind
	}{
		{"rank", bad(func(m *wire.PushRequest) { m.Rank = 2 }), wire.BadRank},
		{"stale epoch", pushes(p, 0, 4, 0, make([]float32, n))[1], wire.StaleEpoch},
		{"future step", bad(func(m *wire.PushRequest) { m.Step = 1 }), wire.BadStep},
		{"unknown block", bad(func(m *wire.PushRequest) { m.Blocks[0].ID = 999 }), wire.UnknownBlock},
		{"short block", bad(func(m *wire.PushRequest) { m.Blocks[0].Data = m.Blocks[0].Data[4:] }), wire.BadLength},
		{"nan", bad(func(m *wire.PushRequest) { m.Blocks[0].Data = wire.AppendFloats(nil, nan) }), wire.NonFinite},
		{"inf", bad(func(m *wire.PushRequest) { m.Blocks[0].Data = wire.AppendFloats(nil, inf) }), wire.NonFinite},
		// A message whose second block is bad must not store its first.
		{"partly bad", bad(func(m *wire.PushRequest) {
			m.Blocks = append(m.Blocks, wire.Block{ID: 1, Data: wire.AppendFloats(nil, make([]float32, p.Blocks[1].Len-1))})
		}), wire.BadLength},
		// Sparse blocks: spans past the block's end, data that does not
		// match the spans, a malformed span list.
		{"spans past the end", bad(func(m *wire.PushRequest) {
			m.Blocks[0].Spans, m.Blocks[0].Data = wire.AppendSpan(nil, p.Blocks[0].Len-1, 2), make([]byte, 8)
		}), wire.BadLength},
		{"spans short of data", bad(func(m *wire.PushRequest) {
			m.Blocks[0].Spans, m.Blocks[0].Data = wire.AppendSpan(nil, 1, 2), make([]byte, 4)
		}), wire.BadLength},
		{"spans overlap", bad(func(m *wire.PushRequest) {
			m.Blocks[0].Spans, m.Blocks[0].Data = wire.AppendSpan(wire.AppendSpan(nil, 1, 2), 2, 1), make([]byte, 12)
		}), wire.Malformed},
		{"sparse nan", bad(func(m *wire.PushRequest) {
			m.Blocks[0].Spans, m.Blocks[0].Data = wire.AppendSpan(nil, 3, 1), wire.AppendFloats(nil, []float32{float32(math.NaN())})
		}), wire.NonFinite},
		// A newer epoch in a refused push must not fence the rank.
		{"new epoch, bad block", bad(func(m *wire.PushRequest) { m.Epoch, m.Blocks[0].ID = 9, 999 }), wire.UnknownBlock},
	}
	for _, tc := range cases {
		if err := sh.Push(tc.m); !errors.Is(err, &wire.Error{Kind: tc.want}) {
			t.Errorf("%s: err=%v, want kind %v", tc.name, err, tc.want)
		}
	}
	// Rank 1 pushes its whole (zero) gradient at epoch 5: the step completes,
	// and nothing refused above may have leaked into it.
	for _, m := range pushes(p, 1, 5, 0, make([]float32, n)) {
		if err := sh.Push(m); err != nil {
			t.Fatal(err)
		}
	}
	if sh.Clock() != 1 {
		t.Fatalf("step not applied: clock %d", sh.Clock())
	}
	if after := gather(p, []*Shard{sh}); !slices.Equal(after, before) {
		t.Fatal("a refused push changed the parameters")
	}
	if err := sh.Push(pushes(p, 1, 5, 0, grads(rand.New(rand.NewPCG(4, 4)), n))[0]); err != nil {
		t.Fatalf("resend of an applied step: %v", err)
	}
	if after := gather(p, []*Shard{sh}); !slices.Equal(after, before) {
		t.Fatal("a resend of an applied step changed the parameters")
	}
}

// Fencing in sync mode: when a rank's epoch rises (a new holder), the old
// holder's stored gradient for the current step is dropped, and the old
// holder's later pushes are refused.
func TestSyncNewEpochReplacesPendingGradient(t *testing.T) {
	p := job.Place(testTensors, 100, 1)
	sh := newShards(p, syncCfg(2, job.DefaultOptimizer("sgd", 1)))[0]
	n := p.Size()
	zombie := make([]float32, n)
	for i := range zombie {
		zombie[i] = 1000
	}
	for _, m := range pushes(p, 0, 1, 0, zombie) {
		sh.Push(m)
	}
	ones := make([]float32, n)
	for i := range ones {
		ones[i] = 1
	}
	for _, m := range append(pushes(p, 0, 2, 0, ones), pushes(p, 1, 1, 0, ones)...) {
		if err := sh.Push(m); err != nil {
			t.Fatal(err)
		}
	}
	want := initFlat(p)
	for i := range want {
		want[i] -= 1 // mean of two unit gradients, lr 1
	}
	if !slices.Equal(gather(p, []*Shard{sh}), want) {
		t.Fatal("the old holder's gradient was applied")
	}
	if err := sh.Push(pushes(p, 0, 1, 1, zombie)[0]); wire.ErrKind(err) != wire.StaleEpoch {
		t.Fatalf("zombie push: %v", err)
	}
}

// Policy skip: a non-finite gradient is accepted and counted, and the blocks
// it touches skip that step's update while their clocks advance.
func TestNonFiniteSkip(t *testing.T) {
	p := job.Place(testTensors, 100, 1)
	cfg := syncCfg(2, job.DefaultOptimizer("sgd", 1))
	cfg.NonFinite = job.Skip
	sh := newShards(p, cfg)[0]
	n := p.Size()
	g := make([]float32, n)
	g[3] = float32(math.NaN())
	ones := slices.Repeat([]float32{1}, n)
	for _, m := range append(pushes(p, 0, 1, 0, g), pushes(p, 1, 1, 0, ones)...) {
		if err := sh.Push(m); err != nil {
			t.Fatal(err)
		}
	}
	w := gather(p, []*Shard{sh})
	w0 := initFlat(p)
	bad := p.Blocks[0] // element 3 lies in the first block
	for i := range w {
		inBad := i >= bad.Offset && i < bad.Offset+bad.Len
		if inBad && w[i] != w0[i] || !inBad && w[i] != w0[i]-0.5 {
			t.Fatalf("element %d: %v (initial %v)", i, w[i], w0[i])
		}
	}
	if sh.Clock() != 1 || sh.Stats().Skipped != 1 || sh.Stats().Applied != int64(len(p.Blocks)-1) {
		t.Fatalf("clock %d, stats %+v", sh.Clock(), sh.Stats())
	}
}

// Async and ssp: a resend of an older step (a delayed duplicate) is
// acknowledged and not applied, even after newer steps.
func TestAsyncDuplicatesAfterNewerSteps(t *testing.T) {
	p := job.Place(testTensors, 100, 1)
	sh := newShards(p, job.ShardConfig{Mode: job.Async, Ranks: 1, Optimizer: job.DefaultOptimizer("sgd", 1)})[0]
	rng := rand.New(rand.NewPCG(9, 1))
	p0, p1 := pushes(p, 0, 1, 0, grads(rng, p.Size())), pushes(p, 0, 1, 1, grads(rng, p.Size()))
	for _, m := range append(p0, p1...) {
		sh.Push(m)
	}
	after := gather(p, []*Shard{sh})
	for _, m := range append(p0, p1...) {
		if err := sh.Push(m); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(after, gather(p, []*Shard{sh})) {
		t.Fatal("a resend was applied again")
	}
	if st := sh.Stats(); st.Applied != int64(2*len(p.Blocks)) || st.Duplicates != int64(2*len(p.Blocks)) {
		t.Fatalf("stats %+v", st)
	}
}

func nan() float64 { return math.NaN() }

// Fence raises ranks' epochs, never lowers them: a push from a fenced epoch
// is refused and changes nothing; the rank's next holder pushes as usual.
func TestFence(t *testing.T) {
	p := job.Place(testTensors, 6, 1)
	sh := newShards(p, syncCfg(2, job.DefaultOptimizer("sgd", 0.1)))[0]
	sh.Fence([]uint64{3, 0})
	if got := sh.Epochs(); got[0] != 3 || got[1] != 0 {
		t.Fatalf("epochs %v", got)
	}
	sh.Fence([]uint64{1, 0, 9}) // lower, and a rank that does not exist: no change
	if got := sh.Epochs(); got[0] != 3 || got[1] != 0 {
		t.Fatalf("epochs %v after a lower fence", got)
	}
	before := gather(p, []*Shard{sh})
	g := grads(rand.New(rand.NewPCG(1, 1)), p.Size())
	for _, m := range pushes(p, 0, 2, 0, g) {
		if err := sh.Push(m); wire.ErrKind(err) != wire.StaleEpoch {
			t.Fatalf("push from fenced epoch 2: %v", err)
		}
	}
	for _, m := range pushes(p, 1, 1, 0, g) {
		if err := sh.Push(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range pushes(p, 0, 3, 0, g) {
		if err := sh.Push(m); err != nil {
			t.Fatalf("push from the fence's epoch: %v", err)
		}
	}
	if sh.Clock() != 1 || slices.Equal(gather(p, []*Shard{sh}), before) {
		t.Fatal("the step did not apply")
	}
}

// A sync shard keeps each Keep step's parameters (below KeepBefore) until
// the next one, so an exact pull of that step reads exactly that step's
// parameters however far the shard has gone on; an exact pull of a step
// neither live nor kept is refused Gone, while plain pulls read the live
// parameters as before. A restored shard keeps its restore step.
func TestExactPullsReadKeptSteps(t *testing.T) {
	const ranks, steps = 2, 8
	rng := rand.New(rand.NewPCG(3, 4))
	p := job.Place(testTensors, 6, 1)
	opt := testOptimizers()[1]
	cfg := syncCfg(ranks, opt)
	cfg.Keep, cfg.KeepBefore = 3, 6
	sh := newShards(p, cfg)[0]
	ref := newShards(p, syncCfg(ranks, opt))[0] // no copies kept
	var at [][]float32                          // the parameters after each step
	at = append(at, gather(p, []*Shard{ref}))
	ids := sh.Blocks()
	read := func(step int64, exact bool) ([]float32, error) {
		req := &wire.PullRequest{MinClock: step, IDs: ids, Exact: exact}
		if now, err := sh.Pull(req, 1); err != nil || !now {
			t.Fatalf("pull of step %d at clock %d: answerable %v, %v", step, sh.Clock(), now, err)
		}
		blocks, err := sh.Read(req)
		if err != nil {
			return nil, err
		}
		w := make([]float32, p.Size())
		for k, b := range blocks {
			if !wire.CopyFloats(w[p.Blocks[ids[k]].Offset:][:p.Blocks[ids[k]].Len], b.Data) {
				t.Fatal("block length")
			}
		}
		return w, nil
	}
	gone := func(err error) bool { return errors.Is(err, &wire.Error{Kind: wire.Gone}) }
	for s := int64(0); s < steps; s++ {
		for r := 0; r < ranks; r++ {
			for _, m := range pushes(p, r, 1, s, grads(rng, p.Size())) {
				for _, x := range []*Shard{sh, ref} {
					if err := x.Push(m); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		at = append(at, gather(p, []*Shard{ref}))
		clock := s + 1
		for step := int64(1); step <= clock; step++ {
			got, err := read(step, true)
			kept := step == clock || (step%3 == 0 && step < 6 && (clock < step+3 || step+3 >= 6)) // the latest kept step stays
			switch {
			case kept && err != nil:
				t.Fatalf("exact pull of step %d at clock %d: %v", step, clock, err)
			case kept && !slices.Equal(got, at[step]):
				t.Fatalf("exact pull of step %d at clock %d: not that step's parameters", step, clock)
			case !kept && !gone(err):
				t.Fatalf("exact pull of step %d at clock %d: %v, want gone", step, clock, err)
			}
			if got, err := read(step, false); err != nil || !slices.Equal(got, at[clock]) {
				t.Fatalf("plain pull of step %d at clock %d: %v, or not the live parameters", step, clock, err)
			}
		}
	}
	// A pull of a step ahead waits, exact or not.
	if now, err := sh.Pull(&wire.PullRequest{MinClock: steps + 1, IDs: ids, Exact: true}, 2); now || err != nil {
		t.Fatalf("exact pull ahead of the clock: answerable %v, %v", now, err)
	}
	// Restored at a step to keep, the shard keeps it.
	cfg.KeepBefore = 0
	sh = newShards(p, cfg)[0]
	for s := int64(0); s < 3; s++ {
		for r := 0; r < ranks; r++ {
			for _, m := range pushes(p, r, 1, s, grads(rng, p.Size())) {
				if err := sh.Push(m); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	snap := sh.snapshotNow()
	want := gather(p, []*Shard{sh})
	sh, err := RestoreShard(cfg, p.OnShard(0), snap)
	if err != nil {
		t.Fatal(err)
	}
	for r := 0; r < ranks; r++ {
		for _, m := range pushes(p, r, 1, 3, grads(rng, p.Size())) {
			if err := sh.Push(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got, err := read(3, true); err != nil || !slices.Equal(got, want) {
		t.Fatalf("exact pull of the restore step after one more: %v, or not its parameters", err)
	}
	for _, bad := range []job.ShardConfig{{Mode: job.Async, Ranks: 1, Optimizer: opt, Keep: 2}, {Mode: job.Sync, Ranks: 1, Optimizer: opt, Keep: -1}} {
		if bad.Validate() == nil {
			t.Fatalf("%+v validated", bad)
		}
	}
}
