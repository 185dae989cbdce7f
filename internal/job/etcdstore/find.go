package etcdstore

import (
	"context"
	"fmt"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ReadPlacement returns the job's current placement and the etcd revision
// that last changed it.
func ReadPlacement(ctx context.Context, cli *clientv3.Client, name string) (*job.Placement, int64, error) {
	r, err := cli.Get(ctx, KeysFor(name).Placement())
	if err != nil {
		return nil, 0, fmt.Errorf("reading the placement: %w", err)
	}
	if len(r.Kvs) == 0 {
		return nil, 0, fmt.Errorf("job %s has no placement", name)
	}
	p, err := job.DecodePlacement(r.Kvs[0].Value)
	if err != nil {
		return nil, 0, err
	}
	return p, r.Kvs[0].ModRevision, nil
}

// NextPlacement waits until the job's placement is newer than version and
// returns it (with the revision that wrote it), or returns nil once the job
// is done. Only ctx bounds the wait. It watches the job's state and
// placement keys only (WaitKeys): every role waits here for the
// whole job.
func NextPlacement(ctx context.Context, cli *clientv3.Client, name string, version int64) (*job.Placement, int64, error) {
	keys := KeysFor(name)
	// An etcd leader change ends the watch (and may fail the read): read
	// and watch again, which misses nothing, since the state and the
	// placement are read afresh.
	for ; ; time.Sleep(200 * time.Millisecond) {
		var next *job.Placement
		var rev int64
		var bad error
		err := WaitKeys(ctx, cli, []string{keys.State(), keys.Placement()}, 1<<62, func(kvs map[string]*mvccpb.KeyValue) bool {
			if kv := kvs[keys.State()]; kv != nil && string(kv.Value) == job.StateDone {
				return true
			}
			kv := kvs[keys.Placement()]
			if kv == nil {
				return false
			}
			p, err := job.DecodePlacement(kv.Value)
			if err != nil {
				bad = err
				return true
			}
			if p.Version > version {
				next, rev = p, kv.ModRevision
				return true
			}
			return false
		})
		switch {
		case err == nil:
			return next, rev, bad
		case Transient(err) && ctx.Err() == nil:
			continue
		case ctx.Err() != nil:
			return nil, 0, ctx.Err()
		default:
			return nil, 0, fmt.Errorf("watching job %s: %w", name, err)
		}
	}
}

// Find waits (up to timeout) for job name to exist in etcd and returns its
// spec and block placement, which the coordinator writes together.
func Find(ctx context.Context, cli *clientv3.Client, name string, timeout time.Duration) (*job.Spec, *job.Placement, error) {
	keys := KeysFor(name)
	specData, err := Wait(ctx, cli, keys.Spec(), timeout)
	if err != nil {
		return nil, nil, fmt.Errorf("job %s not found (start its coordinator first): %w", name, err)
	}
	spec, err := job.DecodeSpec(specData)
	if err != nil {
		return nil, nil, err
	}
	placeData, err := Wait(ctx, cli, keys.Placement(), timeout)
	if err != nil {
		return nil, nil, err
	}
	p, err := job.DecodePlacement(placeData)
	if err != nil {
		return nil, nil, err
	}
	return spec, p, nil
}
