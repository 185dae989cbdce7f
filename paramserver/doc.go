// Package paramserver is the parameter server of downpour: the state of one
// shard as a pure state machine (Shard), the optimizer arithmetic it
// applies to its blocks (Apply), its snapshots, the NATS service that drives
// it (Service), and the client workers use to push gradients and pull
// parameters (Client). The placement of blocks onto shards and the shards'
// settings are the job's (package job).
//
// A shard is driven like this (Example shows it whole):
//
//	p := job.Place(tensors, blockSize, shards)
//	sh := paramserver.NewShard(cfg, p.OnShard(i), initBlock)
//	svc, err := paramserver.Serve(nc, sh, paramserver.ServiceConfig{Job: name, Shard: i, Placement: p.Version})
//	defer svc.Close()
//
// and a worker talks to all shards through one Client:
//
//	c, err := paramserver.NewClient(nc, name, p, rank, epoch)
//	err = c.Push(ctx, step, grads)
//	err = c.Pull(ctx, step+1, params) // parameters after step+1 applied steps
//
// or, as workers train, moving a step's push and the next step's pull in
// the background while the next forward pass starts, in the order it reads
// the parameters, and only the embedding rows the two batches use:
//
//	c.ReadOrder(model.ReadOrder())
//	xf := c.StartPushPullSparse(ctx, step, grads, params, model.Ranges(b, nil), model.Ranges(next, nil))
//	err = xf.WaitRange(lo, hi) // before reading params[lo:hi]
//	err = xf.Wait()
package paramserver
