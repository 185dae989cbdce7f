package worker_test

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/coordinator"
	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/memstore"
	"github.com/downpour-ml/downpour/paramserver/node"
	"github.com/downpour-ml/downpour/worker"
)

// A whole job in one process: its coordinator, a parameter-server shard and
// a worker, each with its own NATS connection, on the job's store (here in
// memory; etcdstore.New(cli, name) on a cluster). The worker trains until
// the job's last step is pushed.
func ExampleRun() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := embedded.StartNATS("", 0)
	if err != nil {
		panic(err)
	}
	defer srv.Shutdown()
	conn := func() *nats.Conn {
		nc, err := nats.Connect("", nats.InProcessServer(srv))
		if err != nil {
			panic(err)
		}
		return nc
	}
	spec := job.Default()
	spec.Name, spec.Workers, spec.Shards, spec.Steps = "demo", 1, 1, 20
	st := memstore.New().Job(spec.Name)
	errs := make(chan error, 3)
	go func() { errs <- coordinator.Run(ctx, st, coordinator.Config{Spec: spec, Log: quiet}) }()
	go func() { errs <- node.Run(ctx, node.Config{Store: st, NATS: conn(), Log: quiet, Shard: 0}) }()
	go func() { errs <- worker.Run(ctx, worker.Config{Store: st, ID: "w1", NATS: conn(), Log: quiet}) }()
	for range 3 {
		if err := <-errs; err != nil {
			panic(err)
		}
	}
	lk, _ := st.Look(ctx)
	fmt.Println(lk.State)
	// Output: done
}
