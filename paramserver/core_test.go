package paramserver

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
)

var testTensors = []models.Tensor{{Name: "a", Shape: []int{7, 5}}, {Name: "b", Shape: []int{13}}, {Name: "c", Shape: []int{3, 3}}}

func initFlat(p *Placement) []float32 {
	w := make([]float32, p.Size())
	for i, off := range models.Offsets(p.Tensors) {
		models.InitUniform(w[off:off+p.Tensors[i].Size()], 1, p.Tensors[i].Name, 0.5)
	}
	return w
}

func newCores(p *Placement, ranks int, lr float64) []*Core {
	w0 := initFlat(p)
	cores := make([]*Core, p.Shards)
	for s := range cores {
		cores[s] = NewCore(ranks, lr, p.OnShard(s), func(b Block, dst []float32) { copy(dst, w0[b.Offset:b.Offset+b.Len]) })
	}
	return cores
}

// pushes cuts rank's gradient for step into one push per block.
func pushes(p *Placement, rank int, epoch uint64, step int64, g []float32) []*wire.PushRequest {
	var out []*wire.PushRequest
	for _, b := range p.Blocks {
		out = append(out, &wire.PushRequest{V: wire.Version, Job: "j", Rank: uint32(rank), Epoch: epoch, Step: step,
			Blocks: []wire.Block{{ID: b.ID, Data: wire.AppendFloats(nil, g[b.Offset:b.Offset+b.Len])}}})
	}
	return out
}

func gather(p *Placement, cores []*Core) []float32 {
	w := make([]float32, p.Size())
	for _, b := range p.Blocks {
		v, ok := cores[b.Shard].Params(b.ID)
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

// reference is the obvious single-process BSP update: w -= lr/ranks * sum over
// ranks in rank order.
func reference(w []float32, gs [][]float32, lr float64) {
	eta := float32(lr) / float32(len(gs))
	for j := range w {
		s := gs[0][j]
		for r := 1; r < len(gs); r++ {
			s += gs[r][j]
		}
		w[j] -= eta * s
	}
}

// Sync-mode parameters after every step are bit-identical to the reference
// for 1-4 shards, any block size, and any arrival order of pushes (with
// duplicates mixed in).
func TestCoreSyncMatchesReferenceAnyShardsAnyOrder(t *testing.T) {
	const ranks, steps, lr = 3, 4, 0.3
	rng := rand.New(rand.NewPCG(1, 2))
	n := models.TotalSize(testTensors)
	gs := make([][][]float32, steps)
	for s := range gs {
		for range ranks {
			gs[s] = append(gs[s], grads(rng, n))
		}
	}
	ref := initFlat(Place(testTensors, 4, 1))
	var refAfter [][]float32
	for s := 0; s < steps; s++ {
		reference(ref, gs[s], lr)
		refAfter = append(refAfter, slices.Clone(ref))
	}
	for shards := 1; shards <= 4; shards++ {
		for _, bs := range []int{1, 4, 6, 100} {
			p := Place(testTensors, bs, shards)
			cores := newCores(p, ranks, lr)
			for s := 0; s < steps; s++ {
				var msgs []*wire.PushRequest
				for r := 0; r < ranks; r++ {
					msgs = append(msgs, pushes(p, r, 1, int64(s), gs[s][r])...)
				}
				msgs = append(msgs, msgs[rng.IntN(len(msgs))], msgs[rng.IntN(len(msgs))]) // resends
				rng.Shuffle(len(msgs), func(i, j int) { msgs[i], msgs[j] = msgs[j], msgs[i] })
				for _, m := range msgs {
					if _, err := cores[p.Blocks[m.Blocks[0].ID].Shard].Push(m); err != nil {
						t.Fatal(err)
					}
				}
				for _, c := range cores {
					if len(c.Blocks()) > 0 && c.Clock() != int64(s+1) {
						t.Fatalf("%d shards: clock %d after step %d", shards, c.Clock(), s)
					}
				}
				if got := gather(p, cores); !slices.Equal(got, refAfter[s]) {
					t.Fatalf("%d shards, block %d: parameters after step %d differ from the reference", shards, bs, s)
				}
			}
		}
	}
}

func TestCoreRefusesAndChangesNothing(t *testing.T) {
	p := Place(testTensors, 8, 1)
	c := newCores(p, 2, 0.1)[0]
	before := gather(p, []*Core{c})
	n := p.Size()
	ok := pushes(p, 0, 5, 0, make([]float32, n))
	for _, m := range ok {
		if _, err := c.Push(m); err != nil {
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
	}
	for _, tc := range cases {
		applied, err := c.Push(tc.m)
		if applied || !errors.Is(err, &wire.Error{Kind: tc.want}) {
			t.Errorf("%s: applied=%v err=%v, want kind %v", tc.name, applied, err, tc.want)
		}
	}
	// Rank 1 now pushes its whole (zero) gradient: the step completes, and
	// nothing refused above may have leaked into it.
	var applied bool
	for _, m := range pushes(p, 1, 5, 0, make([]float32, n)) {
		a, err := c.Push(m)
		if err != nil {
			t.Fatal(err)
		}
		applied = applied || a
	}
	if !applied || c.Clock() != 1 {
		t.Fatalf("step not applied: clock %d", c.Clock())
	}
	if after := gather(p, []*Core{c}); !slices.Equal(after, before) {
		t.Fatal("a refused push changed the parameters")
	}
	// A resend of the applied step is acknowledged and changes nothing.
	if a, err := c.Push(pushes(p, 1, 5, 0, grads(rand.New(rand.NewPCG(4, 4)), n))[0]); a || err != nil {
		t.Fatalf("resend of an applied step: applied=%v err=%v", a, err)
	}
	if after := gather(p, []*Core{c}); !slices.Equal(after, before) {
		t.Fatal("a resend of an applied step changed the parameters")
	}
}

func TestPlacementCoversAndBalances(t *testing.T) {
	ts := models.Seq2SeqConfig{SrcVocab: 4000, TgtVocab: 4000, Embed: 256, Hidden: 256, Layers: 2}.Tensors()
	for _, shards := range []int{1, 2, 3, 4, 8} {
		p := Place(ts, 64<<10, shards)
		q, err := DecodePlacement(p.Encode())
		if err != nil {
			t.Fatal(err)
		}
		load := make([]int, shards)
		for _, b := range q.Blocks {
			load[b.Shard] += b.Len
		}
		mean := float64(p.Size()) / float64(shards)
		worst := float64(slices.Max(load)) / mean
		t.Logf("%d shards: max/mean bytes %.4f", shards, worst)
		if worst > 1.05 {
			t.Errorf("%d shards: max/mean load %.3f > 1.05", shards, worst)
		}
	}
	if !slices.Equal(Place(ts, 1000, 3).Encode(), Place(ts, 1000, 3).Encode()) {
		t.Fatal("placement is not deterministic")
	}
}

func TestDecodePlacementRejects(t *testing.T) {
	p := Place(testTensors, 4, 2)
	for name, mut := range map[string]func(*Placement){
		"gap":       func(p *Placement) { p.Blocks[1].Offset++ },
		"shard":     func(p *Placement) { p.Blocks[0].Shard = 2 },
		"short":     func(p *Placement) { p.Blocks = p.Blocks[:len(p.Blocks)-1] },
		"too long":  func(p *Placement) { p.Blocks[0].Len = 5 },
		"no shards": func(p *Placement) { p.Shards = 0 },
	} {
		q, _ := DecodePlacement(p.Encode())
		mut(q)
		if _, err := DecodePlacement(q.Encode()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := DecodePlacement([]byte("{")); err == nil {
		t.Error("accepted bad JSON")
	}
}

func FuzzDecodePlacement(f *testing.F) {
	f.Add(Place(testTensors, 4, 2).Encode())
	f.Add([]byte(`{"shards":1,"block_size":1,"tensors":[{"name":"x","shape":[-1]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := DecodePlacement(data)
		if err != nil {
			return
		}
		for s := 0; s < p.Shards && s < 64; s++ {
			p.OnShard(s)
		}
	})
}
