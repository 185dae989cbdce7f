package job

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/jobetcd"
	"github.com/downpour-ml/downpour/paramserver/placement"
)

// ReadPlacement returns the job's current placement and the etcd revision
// that last changed it.
func ReadPlacement(ctx context.Context, cli *clientv3.Client, name string) (*placement.Placement, int64, error) {
	r, err := cli.Get(ctx, jobetcd.KeysFor(name).Placement())
	if err != nil {
		return nil, 0, fmt.Errorf("reading the placement: %w", err)
	}
	if len(r.Kvs) == 0 {
		return nil, 0, fmt.Errorf("job %s has no placement", name)
	}
	p, err := placement.Decode(r.Kvs[0].Value)
	if err != nil {
		return nil, 0, err
	}
	return p, r.Kvs[0].ModRevision, nil
}

// NextPlacement waits until the job's placement is newer than version and
// returns it (with the revision that wrote it), or returns nil once the job
// is done. Only ctx bounds the wait.
func NextPlacement(ctx context.Context, cli *clientv3.Client, name string, version int64) (*placement.Placement, int64, error) {
	keys := jobetcd.KeysFor(name)
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// check reports whether kv ends the wait: a newer placement, or done.
	var next *placement.Placement
	var rev int64
	check := func(kv *mvccpb.KeyValue) (bool, error) {
		switch string(kv.Key) {
		case keys.State():
			return string(kv.Value) == jobetcd.StateDone, nil
		case keys.Placement():
			p, err := placement.Decode(kv.Value)
			if err != nil {
				return false, err
			}
			if p.Version > version {
				next, rev = p, kv.ModRevision
				return true, nil
			}
		}
		return false, nil
	}
	// An etcd leader change ends the watch (and may fail the read): read
	// and watch again, which misses nothing, since the state and the
	// placement are read afresh.
	for ; ; time.Sleep(200 * time.Millisecond) {
		r, err := cli.Txn(ctx).Then(clientv3.OpGet(keys.State()), clientv3.OpGet(keys.Placement())).Commit()
		if err != nil {
			if jobetcd.Transient(err) && ctx.Err() == nil {
				continue
			}
			return nil, 0, fmt.Errorf("reading job %s: %w", name, err)
		}
		for _, op := range r.Responses {
			for _, kv := range op.GetResponseRange().Kvs {
				if stop, err := check(kv); err != nil || stop {
					return next, rev, err
				}
			}
		}
		wctx, wcancel := context.WithCancel(ctx)
		wc := cli.Watch(wctx, keys.Root(), clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision+1))
		var werr error
		for wr := range wc {
			if werr = wr.Err(); werr != nil {
				break
			}
			for _, ev := range wr.Events {
				if ev.Type != mvccpb.PUT {
					continue
				}
				if stop, err := check(ev.Kv); err != nil || stop {
					wcancel()
					return next, rev, err
				}
			}
		}
		wcancel()
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
		if werr != nil && !jobetcd.Transient(werr) {
			return nil, 0, fmt.Errorf("watching job %s: %w", name, werr)
		}
	}
}

// Find waits (up to timeout) for job name to exist in etcd and returns its
// spec and block placement, which the coordinator writes together.
func Find(ctx context.Context, cli *clientv3.Client, name string, timeout time.Duration) (*Spec, *placement.Placement, error) {
	keys := jobetcd.KeysFor(name)
	specData, err := jobetcd.Wait(ctx, cli, keys.Spec(), timeout)
	if err != nil {
		return nil, nil, fmt.Errorf("job %s not found (start its coordinator first): %w", name, err)
	}
	spec, err := DecodeSpec(specData)
	if err != nil {
		return nil, nil, err
	}
	placeData, err := jobetcd.Wait(ctx, cli, keys.Placement(), timeout)
	if err != nil {
		return nil, nil, err
	}
	p, err := placement.Decode(placeData)
	if err != nil {
		return nil, nil, err
	}
	return spec, p, nil
}
