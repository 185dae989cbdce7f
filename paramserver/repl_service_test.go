package paramserver

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/models"
)

// Two ranks train through three shards that keep two copies of each block,
// over a real NATS server (one rank by PushPull, as workers do, the other
// by Pull and Push). Mid-run, once shard 1 has applied step 4, it dies (its
// service stops and its state is gone): the test hands its blocks over to
// their backups (the new placement; the survivors chained to it and served
// under it; the clients told), as the coordinator and the shard processes
// would. The ranks' requests in flight go again to the new primaries, no
// step is redone, and both ranks end with the parameters of the
// unreplicated reference, bit for bit.
func TestReplicatedShardsHandOverOverNATS(t *testing.T) {
	nc := testenv.NATSConn(t, 64<<10)
	ts := []models.Tensor{{Name: "big", Shape: []int{300, 200}}, {Name: "small", Shape: []int{17}}}
	const ranks, steps = 2, 12
	opt := job.DefaultOptimizer("adam", 0.01)
	p := job.PlaceCopies(ts, 5000, 3, 2)
	cfg := syncCfg(ranks, opt)
	cfg.PullTTL = 20 // ticks of 100 ms
	w0 := initFlat(p)
	shards := make([]*Shard, p.Shards)
	svcs := make([]*Service, p.Shards)
	for i := range shards {
		shards[i] = NewShard(cfg, p.Held(i), func(b job.Block, dst []float32) { copy(dst, w0[b.Offset:b.Offset+b.Len]) })
		if err := shards[i].Chain(i, p); err != nil {
			t.Fatal(err)
		}
		svc, err := Serve(nc, shards[i], ServiceConfig{Job: "j", Shard: i, Placement: p.Version, Log: quiet})
		if err != nil {
			t.Fatal(err)
		}
		svcs[i] = svc
	}
	t.Cleanup(func() {
		for _, s := range svcs {
			if s != nil {
				s.Close()
			}
		}
	})
	rng := rand.New(rand.NewPCG(35, 2))
	gs := make([][][]float32, steps)
	for s := range gs {
		gs[s] = [][]float32{grads(rng, p.Size()), grads(rng, p.Size())}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	clients := make([]*Client, ranks)
	for r := range clients {
		c, err := NewClient(nc, "j", p, r, 1)
		if err != nil {
			t.Fatal(err)
		}
		clients[r] = c
	}
	var wg sync.WaitGroup
	final := make([][]float32, ranks)
	errs := make([]error, ranks)
	for r, c := range clients {
		wg.Go(func() {
			w := make([]float32, p.Size())
			if errs[r] = c.Pull(ctx, 0, w); errs[r] != nil {
				return
			}
			for s := range int64(steps) {
				if r == 1 {
					errs[r] = c.PushPull(ctx, s, gs[s][r], w)
				} else if errs[r] = c.Push(ctx, s, gs[s][r]); errs[r] == nil {
					errs[r] = c.Pull(ctx, s+1, w)
				}
				if errs[r] != nil {
					return
				}
			}
			final[r] = w
		})
	}
	// Shard 1 dies once it has applied step 4.
	const dead = 1
	for {
		svcs[dead].mu.Lock()
		clock := shards[dead].Clock()
		svcs[dead].mu.Unlock()
		if clock >= 5 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	svcs[dead].Close()
	svcs[dead] = nil
	q, err := p.Handover(dead)
	if err != nil {
		t.Fatal(err)
	}
	for i, svc := range svcs {
		if svc == nil {
			continue
		}
		svc.Close()
		if err := shards[i].Chain(i, q); err != nil {
			t.Fatal(err)
		}
		if svcs[i], err = Serve(nc, shards[i], ServiceConfig{Job: "j", Shard: i, Placement: q.Version, Log: quiet}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range clients {
		if err := c.Handover(q); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	// A client made under the old placement and told of the new one reads
	// the shards' clock under it (a worker's clock read, an idle mark and a
	// snapshot request go again under the new placement as pushes do).
	late, err := NewClient(nc, "j", p, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := late.Handover(q); err != nil {
		t.Fatal(err)
	}
	if clock, err := late.Clock(ctx); err != nil || clock != steps {
		t.Fatalf("the clock after the handover: %d, %v (want %d)", clock, err, steps)
	}
	if err := late.Handover(p); err == nil {
		t.Fatal("a client went back to the placement it was handed over from")
	}
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	ref := slices.Clone(w0)
	ro := &refOptimizer{opt: opt}
	for s := range int64(steps) {
		ro.syncStep(ref, gs[s], s)
	}
	for r := range final {
		if !slices.Equal(final[r], ref) {
			t.Fatalf("rank %d ended with parameters that differ from the unreplicated reference", r)
		}
	}
	var applied int64 // by primaries: each block's step once, but a step the dead one applied and could not pass on
	for i, sh := range shards {
		st := sh.Stats()
		applied += st.Applied - st.Replicated
		if i == dead {
			continue
		}
		if sh.Clock() != steps {
			t.Fatalf("shard %d at clock %d, want %d", i, sh.Clock(), steps)
		}
		t.Logf("shard %d: %d blocks primary, %d backup; %d updates applied as primary, %d as a copy, %d resends dropped", i, len(sh.blocks), len(sh.copies), st.Applied-st.Replicated, st.Replicated, st.Duplicates)
	}
	if want := int64(steps * len(p.Blocks)); applied < want || applied > want+int64(len(p.OnShard(dead))) {
		t.Fatalf("primaries applied %d updates; %d blocks x %d steps is %d, and at most the dead shard's %d blocks' last step again", applied, len(p.Blocks), steps, want, len(p.OnShard(dead)))
	}
}
