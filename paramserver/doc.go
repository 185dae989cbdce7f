// Package paramserver is the parameter server of downpour: the placement of
// parameter blocks onto shards, the state of one shard as a pure state
// machine (Shard), the NATS service that drives it (Service), and the client
// workers use to push gradients and pull parameters (Client).
//
// A shard is driven like this:
//
//	p := job.Place(tensors, blockSize, shards)
//	sh := paramserver.NewShard(cfg, p.OnShard(i), initBlock)
//	svc, err := paramserver.Serve(nc, sh, paramserver.ServiceConfig{Job: job, Shard: i})
//	defer svc.Close()
//
// and a worker talks to all shards through one Client:
//
//	c, err := paramserver.NewClient(nc, job, p, rank, epoch)
//	err = c.Pull(ctx, step, params) // parameters after `step` applied steps
//	err = c.Push(ctx, step, grads)
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
