package coordinator

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/memstore"
)

// The coordinator's reactions, through Run and the store's typed events,
// against the in-memory store (no etcd): ranks given and taken back, a
// spare taking over a dead worker's rank at the next epoch, checkpoints
// recorded from the shards' snapshots, a dead worker and a dead shard each
// rolling the job back to the last complete checkpoint, and the job marked
// done once every rank is, under the placement it ran under.
func TestRunReactsInMemory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := memstore.New()
	spec := job.Default()
	spec.Name, spec.Workers, spec.Shards, spec.BlockSize = "mem", 2, 2, 1024
	st := c.Job(spec.Name)
	finished := 0
	errc := make(chan error, 1)
	go func() {
		errc <- Run(ctx, st, Config{Spec: spec, Log: quiet, OnFinish: func(context.Context, *job.Placement) error {
			finished++
			return nil
		}})
	}()
	_, p, err := st.Find(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	join := func(id string) (job.Lease, func() *job.Assignment) {
		l, _ := st.Grant(ctx, 10)
		if err := st.JoinWorker(ctx, l, id, job.WorkerMember{}); err != nil {
			t.Fatal(err)
		}
		got := make(chan *job.Assignment, 1)
		go func() {
			a, err := st.WaitAssignment(ctx, id)
			if err != nil {
				t.Error(err)
			}
			got <- a
		}()
		return l, func() *job.Assignment {
			select {
			case a := <-got:
				return a
			case <-time.After(10 * time.Second):
				t.Fatalf("%s was given no rank", id)
			}
			return nil
		}
	}
	la, rankA := join("a")
	if a := rankA(); *a != (job.Assignment{Rank: 0, Epoch: 1, DataShard: 0}) {
		t.Fatalf("a's rank: %+v", a)
	}
	_, rankB := join("b")
	if b := rankB(); *b != (job.Assignment{Rank: 1, Epoch: 1, DataShard: 1}) {
		t.Fatalf("b's rank: %+v", b)
	}
	_, rankC := join("c") // a spare
	// Both shards snapshot step 10: a complete checkpoint.
	shardLeases := make([]job.Lease, 2)
	for i := range 2 {
		shardLeases[i], _ = st.Grant(ctx, 10)
		if _, err := st.ClaimShard(ctx, shardLeases[i], 2, i); err != nil {
			t.Fatal(err)
		}
		if ok, err := st.ServeShard(ctx, shardLeases[i], p.Version, i); err != nil || !ok {
			t.Fatalf("ServeShard %d: %v %v", i, ok, err)
		}
		if err := st.RecordSnapshot(ctx, job.SnapshotRecord{Path: "s", Step: 10, Shard: i, Placement: p.Version}); err != nil {
			t.Fatal(err)
		}
	}
	cp, _, err := st.NextCheckpoint(ctx, 0)
	if err != nil || cp.Step != 10 || cp.Placement != p.Version || len(cp.Files) != 2 {
		t.Fatalf("checkpoint: %+v %v", cp, err)
	}
	// a dies: c takes rank 0 at epoch 2, and the job goes back to step 10.
	c.Expire(la)
	if a := rankC(); *a != (job.Assignment{Rank: 0, Epoch: 2, DataShard: 0}) {
		t.Fatalf("the spare's rank: %+v", a)
	}
	p2, _, err := st.NextPlacement(ctx, p.Version)
	if err != nil || p2.Version != 2 || p2.Start != 10 || !slices.Equal(p2.Epochs, []uint64{2, 1}) {
		t.Fatalf("placement after a worker died: %+v %v", p2, err)
	}
	// Shard 1 of placement 2 dies: back to step 10 again, under placement 3.
	for i := range 2 {
		if ok, err := st.ServeShard(ctx, shardLeases[i], p2.Version, i); err != nil || !ok {
			t.Fatalf("ServeShard %d of placement 2: %v %v", i, ok, err)
		}
	}
	c.Expire(shardLeases[1])
	p3, rev3, err := st.NextPlacement(ctx, p2.Version)
	if err != nil || p3.Version != 3 || p3.Start != 10 {
		t.Fatalf("placement after a shard died: %+v %v", p3, err)
	}
	lk, err := st.Look(ctx)
	if err != nil || len(lk.Rollbacks) != 2 || lk.Rollbacks[0].ToStep != 10 || lk.Rollbacks[1].Placement != 3 {
		t.Fatalf("rollbacks: %+v %v", lk.Rollbacks, err)
	}
	// Done under an old placement does not count; under the current one,
	// both ranks done finish the job.
	if ok, _ := st.RankDone(ctx, job.Assignment{Rank: 0, Epoch: 2}, 1); ok {
		t.Fatal("a rank done under a replaced placement counted")
	}
	for r := range 2 {
		if ok, err := st.RankDone(ctx, job.Assignment{Rank: r, Epoch: 1}, rev3); err != nil || !ok {
			t.Fatalf("rank %d done: %v %v", r, ok, err)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if lk, _ := st.Look(ctx); lk.State != job.StateDone || finished != 1 {
		t.Fatalf("state %q, OnFinish ran %d times", lk.State, finished)
	}
}
