package coordinator_test

import (
	"context"
	"fmt"
	"time"

	"github.com/downpour-ml/downpour/coordinator"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/memstore"
)

// A coordinator leads its job through the job's store (here in memory;
// etcdstore.New(cli, name) on a cluster): it creates the job, gives the
// worker that joins a rank, and marks the job done once the rank is.
func ExampleRun() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	spec := job.Default()
	spec.Name, spec.Workers, spec.Shards = "demo", 1, 1
	st := memstore.New().Job(spec.Name)
	lead, err := st.Campaign(ctx, "coordinator-1", 10)
	if err != nil {
		panic(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- coordinator.Run(ctx, st, coordinator.Config{Spec: spec, Leader: lead, OnFinish: func(context.Context, *job.Placement) error {
			fmt.Println("every rank is done")
			return nil
		}})
	}()

	// A worker joins, and is given rank 0.
	_, _, err = st.Find(ctx, time.Second)
	if err != nil {
		panic(err)
	}
	lease, _ := st.Grant(ctx, 10)
	if err := st.JoinWorker(ctx, lease, "w1", job.WorkerMember{}); err != nil {
		panic(err)
	}
	a, _ := st.WaitAssignment(ctx, "w1")
	fmt.Printf("w1: rank %d, epoch %d\n", a.Rank, a.Epoch)
	_, rev, _ := st.Placement(ctx)
	if _, err := st.RankDone(ctx, *a, rev); err != nil {
		panic(err)
	}
	fmt.Println(<-done)
	// Output:
	// w1: rank 0, epoch 1
	// every rank is done
	// <nil>
}
