package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"sort"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/coordinator"
	"github.com/downpour-ml/downpour/internal/job"
)

// resumePoint is what resuming a stopped job starts from.
type resumePoint struct {
	from   int64 // the step of the last complete checkpoint
	shards int   // shards of the job's current placement
}

// findResumable reads the spec, placement and last complete checkpoint of
// the stopped job name in etcd, or of its only job when name is empty.
func findResumable(ctx context.Context, cli *clientv3.Client, name string) (job.Spec, resumePoint, error) {
	if name == "" {
		r, err := cli.Get(ctx, "/downpour/jobs/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return job.Spec{}, resumePoint{}, fmt.Errorf("listing jobs: %w", err)
		}
		var names []string
		for _, kv := range r.Kvs {
			if n, ok := strings.CutSuffix(strings.TrimPrefix(string(kv.Key), "/downpour/jobs/"), "/spec"); ok && !strings.Contains(n, "/") {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		if len(names) != 1 {
			return job.Spec{}, resumePoint{}, fmt.Errorf("%w: the cluster holds jobs %v: name one with --job", coordinator.ErrNothingToResume, names)
		}
		name = names[0]
	}
	keys := job.KeysFor(name)
	r, err := cli.Txn(ctx).Then(clientv3.OpGet(keys.Spec()), clientv3.OpGet(keys.State()), clientv3.OpGet(keys.Checkpoint())).Commit()
	if err != nil {
		return job.Spec{}, resumePoint{}, fmt.Errorf("reading job %s: %w", name, err)
	}
	get := func(i int) []byte {
		if kvs := r.Responses[i].GetResponseRange().Kvs; len(kvs) > 0 {
			return kvs[0].Value
		}
		return nil
	}
	if get(0) == nil {
		return job.Spec{}, resumePoint{}, fmt.Errorf("job %s: %w: no such job", name, coordinator.ErrNothingToResume)
	}
	spec, err := job.DecodeSpec(get(0))
	if err != nil {
		return job.Spec{}, resumePoint{}, err
	}
	if string(get(1)) == job.StateDone {
		return job.Spec{}, resumePoint{}, fmt.Errorf("job %s: %w", name, coordinator.ErrJobDone)
	}
	var cp job.CheckpointRecord
	if get(2) == nil || json.Unmarshal(get(2), &cp) != nil {
		return job.Spec{}, resumePoint{}, fmt.Errorf("job %s: %w: no complete checkpoint (train with --checkpoint-every)", name, coordinator.ErrNothingToResume)
	}
	p, _, err := job.ReadPlacement(ctx, cli, name)
	if err != nil {
		return job.Spec{}, resumePoint{}, err
	}
	return *spec, resumePoint{from: cp.Step, shards: p.Shards}, nil
}

// onlyResumeFlags refuses job flags beside --resume: a resumed job keeps the
// spec it was started with.
func onlyResumeFlags(fs *flag.FlagSet) error {
	allowed := map[string]bool{"resume": true, "job": true, "nats": true, "etcd": true, "connect-timeout": true, "v": true, "out": true, "http": true, "log-format": true, "give-up": true}
	var bad []string
	fs.Visit(func(f *flag.Flag) {
		if !allowed[f.Name] {
			bad = append(bad, "--"+f.Name)
		}
	})
	if len(bad) > 0 {
		return fmt.Errorf("--resume continues the job as it was started; it cannot change %s", strings.Join(bad, ", "))
	}
	return nil
}
