// Package paramserver is the parameter server of downpour: the placement of
// parameter blocks onto shards, the state of one shard as a pure state
// machine (Core), the NATS service that drives it (Service), and the client
// workers use to push gradients and pull parameters (Client).
//
// A shard is driven like this:
//
//	p := paramserver.Place(spec.Tensors(), spec.BlockSize, spec.Shards)
//	core := paramserver.NewCore(spec.Workers, spec.LR, p.OnShard(i), initBlock)
//	svc, err := paramserver.Serve(nc, spec.Name, i, core, log)
//	defer svc.Close()
//
// and a worker talks to all shards through one Client:
//
//	c, err := paramserver.NewClient(nc, spec.Name, p, rank, epoch)
//	err = c.Pull(ctx, step, params) // parameters after `step` applied steps
//	err = c.Push(ctx, step, grads)
package paramserver
