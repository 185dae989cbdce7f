package paramserver

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
)

// A sync job whose replicas are laid out over seats (each seat its own
// rank, pushing only its tensors' blocks) applies, bit for bit, what a job
// of as many one-rank replicas applies: the replicas' gradients summed in
// replica order. A seat that pushes a block of another seat's tensor is
// refused (BadRank) and changes nothing.
func TestSeatsApplyWhatReplicasWould(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	for _, opt := range testOptimizers() {
		p := job.Place(testTensors, 4, 2)
		const replicas, seats = 3, 2
		seatOf := []int{1, 0, 1} // tensors a and c on seat 1, b on seat 0
		seated := syncCfg(replicas*seats, opt)
		seated.Seats, seated.TensorSeat = seats, seatOf
		if err := seated.Validate(); err != nil {
			t.Fatal(err)
		}
		whole, laid := newShards(p, syncCfg(replicas, opt)), newShards(p, seated)
		for step := range int64(3) {
			for rep := range replicas {
				g := grads(rng, p.Size())
				for _, req := range pushes(p, rep, 1, step, g) {
					if err := whole[shardOf(p, req)].Push(req); err != nil {
						t.Fatal(err)
					}
				}
				for seat := range seats {
					for _, req := range pushes(p, rep*seats+seat, 1, step, g) {
						req.Blocks = slices.DeleteFunc(req.Blocks, func(b wire.Block) bool { return seatOf[p.Blocks[b.ID].Tensor] != seat })
						if len(req.Blocks) == 0 {
							continue
						}
						if err := laid[shardOf(p, req)].Push(req); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			if !slices.Equal(gather(p, laid), gather(p, whole)) {
				t.Fatalf("%s, step %d: the seats' update differs from the replicas'", opt.Kind, step)
			}
		}
		before := gather(p, laid)
		stray := pushes(p, 0, 1, 3, grads(rng, p.Size()))[0] // rank 0 is seat 0: it holds tensor b alone
		stray.Blocks = slices.DeleteFunc(stray.Blocks, func(b wire.Block) bool { return seatOf[p.Blocks[b.ID].Tensor] == 0 })
		if len(stray.Blocks) == 0 {
			t.Fatal("no block of another seat's tensor to push")
		}
		if err := laid[shardOf(p, stray)].Push(stray); wire.ErrKind(err) != wire.BadRank {
			t.Fatalf("a push of another seat's block: %v, want kind BadRank", err)
		}
		if !slices.Equal(gather(p, laid), before) {
			t.Fatal("a refused push changed the parameters")
		}
	}
	bad := syncCfg(4, job.DefaultOptimizer("sgd", 0.1))
	for _, c := range []struct {
		seats int
		of    []int
		mode  string
	}{{3, []int{0}, job.Sync}, {2, nil, job.Sync}, {2, []int{2}, job.Sync}, {2, nil, job.Async}} {
		bad.Seats, bad.TensorSeat, bad.Mode = c.seats, c.of, c.mode
		if bad.Validate() == nil {
			t.Fatalf("accepted %d seats over 4 ranks, tensors on %v, %s mode", c.seats, c.of, c.mode)
		}
	}
}

// shardOf is the shard a push request built by pushes goes to.
func shardOf(p *job.Placement, req *wire.PushRequest) int { return p.Blocks[req.Blocks[0].ID].Shard }

// PullRanges fills exactly the parts of params inside its ranges, with the
// shards' values, whether a range covers blocks whole, in part or not at
// all, on a client of some blocks (NewClientFor) as on a whole one; the
// rest of params stays as it was, and no message goes to a shard for
// blocks the ranges miss.
func TestPullRangesPullsOnlyItsRanges(t *testing.T) {
	nc := testenv.NATSConn(t, 64<<10)
	ts := []models.Tensor{{Name: "emb", Shape: []int{500, 16}}, {Name: "w", Shape: []int{40, 40}}, {Name: "b", Shape: []int{9}}}
	p := job.Place(ts, 1000, 2)
	serveAll(t, nc, newShards(p, syncCfg(1, job.DefaultOptimizer("sgd", 0.1))), ServiceConfig{})
	want := initFlat(p)
	offs := models.Offsets(ts)
	_, pulls := subjectCounts(t, nc, "j")
	for _, c := range []struct {
		name   string
		keep   func(job.Block) bool
		ranges [][2]int
	}{
		{"rows and a tensor", nil, [][2]int{{16 * 3, 16 * 5}, {16 * 400, 16 * 401}, {offs[1], offs[2]}}},
		{"a tensor of its own", func(b job.Block) bool { return b.Tensor == 1 }, [][2]int{{offs[1], offs[2]}}},
		{"rows of its own", func(b job.Block) bool { return b.Tensor == 0 }, [][2]int{{16 * 7, 16 * 8}}},
	} {
		cl, err := NewClientFor(nc, "j", p, 0, 1, c.keep)
		if err != nil {
			t.Fatal(err)
		}
		w := make([]float32, p.Size())
		for i := range w {
			w[i] = -7
		}
		before := pulls.Load()
		if err := cl.PullRanges(context.Background(), 0, w, c.ranges); err != nil {
			t.Fatal(err)
		}
		in := func(i int) bool {
			return slices.ContainsFunc(c.ranges, func(r [2]int) bool { return i >= r[0] && i < r[1] })
		}
		for i, v := range w {
			if in(i) && v != want[i] || !in(i) && v != -7 {
				t.Fatalf("%s: float %d is %v (inside the ranges: %v)", c.name, i, v, in(i))
			}
		}
		touched := map[int]bool{}
		for _, b := range p.Blocks {
			for i := b.Offset; i < b.Offset+b.Len; i++ {
				if in(i) {
					touched[b.Shard] = true
				}
			}
		}
		awaitCount(func() int { return int(pulls.Load() - before) }, len(touched))
		time.Sleep(20 * time.Millisecond)
		if got := int(pulls.Load() - before); got != len(touched) {
			t.Fatalf("%s: %d pull messages for ranges on %d shards", c.name, got, len(touched))
		}
	}
}
