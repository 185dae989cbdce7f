package jobrun

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/coordinator"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
)

// ResumePoint is what resuming a stopped job starts from.
type ResumePoint struct {
	From   int64 // the step of the last complete checkpoint
	Shards int   // shards of the job's current placement
}

// FindResumable reads the spec, placement and last complete checkpoint of
// the stopped job name in etcd, or of its only job when name is empty.
func FindResumable(ctx context.Context, cli *clientv3.Client, name string) (job.Spec, ResumePoint, error) {
	if name == "" {
		r, err := cli.Get(ctx, "/downpour/jobs/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return job.Spec{}, ResumePoint{}, fmt.Errorf("listing jobs: %w", err)
		}
		var names []string
		for _, kv := range r.Kvs {
			if n, ok := strings.CutSuffix(strings.TrimPrefix(string(kv.Key), "/downpour/jobs/"), "/spec"); ok && !strings.Contains(n, "/") {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		if len(names) != 1 {
			return job.Spec{}, ResumePoint{}, fmt.Errorf("%w: the cluster holds jobs %v: name one with --job", coordinator.ErrNothingToResume, names)
		}
		name = names[0]
	}
	keys := etcdstore.KeysFor(name)
	r, err := cli.Txn(ctx).Then(clientv3.OpGet(keys.Spec()), clientv3.OpGet(keys.State()), clientv3.OpGet(keys.Checkpoint())).Commit()
	if err != nil {
		return job.Spec{}, ResumePoint{}, fmt.Errorf("reading job %s: %w", name, err)
	}
	get := func(i int) []byte {
		if kvs := r.Responses[i].GetResponseRange().Kvs; len(kvs) > 0 {
			return kvs[0].Value
		}
		return nil
	}
	if get(0) == nil {
		return job.Spec{}, ResumePoint{}, fmt.Errorf("job %s: %w: no such job", name, coordinator.ErrNothingToResume)
	}
	spec, err := job.DecodeSpec(get(0))
	if err != nil {
		return job.Spec{}, ResumePoint{}, err
	}
	if string(get(1)) == job.StateDone {
		return job.Spec{}, ResumePoint{}, fmt.Errorf("job %s: %w", name, coordinator.ErrJobDone)
	}
	var cp job.CheckpointRecord
	if get(2) == nil || json.Unmarshal(get(2), &cp) != nil {
		return job.Spec{}, ResumePoint{}, fmt.Errorf("job %s: %w: no complete checkpoint (train with --checkpoint-every)", name, coordinator.ErrNothingToResume)
	}
	p, _, err := etcdstore.ReadPlacement(ctx, cli, name)
	if err != nil {
		return job.Spec{}, ResumePoint{}, err
	}
	return *spec, ResumePoint{From: cp.Step, Shards: p.Shards}, nil
}
