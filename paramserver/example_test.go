package paramserver_test

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
)

// A job's parameters on two shards: each shard serves its blocks of the
// placement, and a worker pushes a step's gradient and pulls the
// parameters after it through one client (sync mode, one rank, SGD).
func Example() {
	srv, err := embedded.StartNATS("", 0)
	if err != nil {
		panic(err)
	}
	defer srv.Shutdown()
	nc, err := nats.Connect("", nats.InProcessServer(srv))
	if err != nil {
		panic(err)
	}
	defer nc.Close()

	tensors := []models.Tensor{{Name: "w", Shape: []int{2, 3}}, {Name: "b", Shape: []int{3}}}
	p := job.Place(tensors, 4, 2) // blocks of up to 4 floats on 2 shards
	cfg := job.ShardConfig{Mode: job.Sync, Ranks: 1, Optimizer: job.DefaultOptimizer("sgd", 0.5)}
	for i := range p.Shards {
		sh := paramserver.NewShard(cfg, p.OnShard(i), func(b job.Block, dst []float32) {
			for k := range dst {
				dst[k] = 1 // every parameter starts at 1
			}
		})
		svc, err := paramserver.Serve(nc, sh, paramserver.ServiceConfig{Job: "demo", Shard: i, Placement: p.Version})
		if err != nil {
			panic(err)
		}
		defer svc.Close()
	}

	c, err := paramserver.NewClient(nc, "demo", p, 0, 1) // rank 0, epoch 1
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	grads := []float32{1, 2, 3, 4, 5, 6, 0, 0, 2}
	if err := c.Push(ctx, 0, grads); err != nil { // step 0's gradient
		panic(err)
	}
	params := make([]float32, p.Size())
	if err := c.Pull(ctx, 1, params); err != nil { // the parameters after 1 step
		panic(err)
	}
	fmt.Println(params)
	// Output: [0.5 0 -0.5 -1 -1.5 -2 1 1 0]
}
