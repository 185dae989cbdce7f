package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/internal/testenv"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// Run against a real etcd: workers register under leases, get ranks, report
// done; the coordinator calls OnFinish once and marks the job done. A second
// coordinator with another spec is refused, and so is a rerun of the job.
func TestRunAssignsAndFinishes(t *testing.T) {
	cli := testenv.Etcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	spec := job.Default()
	spec.Name, spec.Workers = "c1", 2
	keys := etcdstore.KeysFor(spec.Name)
	finished := 0
	errc := make(chan error, 1)
	go func() {
		errc <- Run(ctx, etcdstore.New(cli, spec.Name), Config{Spec: spec, Log: quiet, OnFinish: func(ctx context.Context, p *job.Placement) error {
			finished++
			return nil
		}})
	}()
	if _, err := etcdstore.Wait(ctx, cli, keys.Spec(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	other := spec
	other.Steps++
	if err := Run(ctx, etcdstore.New(cli, other.Name), Config{Spec: other, Log: quiet}); !errors.Is(err, ErrSpecConflict) {
		t.Fatalf("second coordinator with another spec: %v", err)
	}
	ranks := map[int]bool{}
	for _, id := range []string{"w0", "w1"} {
		l, err := etcdstore.Grant(ctx, cli, 5)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		cli.Put(ctx, keys.Worker(id), "{}", clientv3.WithLease(l.ID))
		v, err := etcdstore.Wait(ctx, cli, keys.Assign(id), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var a job.Assignment
		json.Unmarshal(v, &a)
		if a.Epoch != 1 || a.DataShard != a.Rank {
			t.Fatalf("assignment %+v", a)
		}
		ranks[a.Rank] = true
	}
	if !ranks[0] || !ranks[1] {
		t.Fatalf("ranks given: %v", ranks)
	}
	cli.Put(ctx, keys.Done(0), "1")
	cli.Put(ctx, keys.Done(1), "1")
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if finished != 1 {
		t.Fatalf("OnFinish ran %d times", finished)
	}
	if v, _ := etcdstore.Wait(ctx, cli, keys.State(), time.Second); string(v) != job.StateDone {
		t.Fatalf("state %q", v)
	}
	if err := Run(ctx, etcdstore.New(cli, spec.Name), Config{Spec: spec, Log: quiet}); !errors.Is(err, ErrJobDone) {
		t.Fatalf("rerun of a finished job: %v", err)
	}
}

func TestRunJoinTimeout(t *testing.T) {
	cli := testenv.Etcd(t)
	spec := job.Default()
	spec.Name = "lonely"
	err := Run(context.Background(), etcdstore.New(cli, spec.Name), Config{Spec: spec, Log: quiet, JoinTimeout: 1500 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "2 ranks have had no worker") {
		t.Fatalf("got %v", err)
	}
}

func TestRunRefusesMoreShardsThanBlocks(t *testing.T) {
	cli := testenv.Etcd(t)
	spec := job.Default()
	spec.Shards, spec.BlockSize = 1000, 2<<20
	if err := Run(context.Background(), etcdstore.New(cli, spec.Name), Config{Spec: spec, Log: quiet}); err == nil || !strings.Contains(err.Error(), "lower --block-size") {
		t.Fatalf("got %v", err)
	}
}

// askReshard writes a reshard request and returns the coordinator's answer.
func askReshard(t *testing.T, ctx context.Context, cli *clientv3.Client, keys etcdstore.Keys, shards int) job.ReshardRequest {
	t.Helper()
	b, _ := json.Marshal(job.ReshardRequest{Shards: shards})
	if _, err := cli.Put(ctx, keys.Reshard(), string(b)); err != nil {
		t.Fatal(err)
	}
	var ans job.ReshardRequest
	err := etcdstore.WaitPrefix(ctx, cli, keys.Reshard(), 10*time.Second, func(kvs map[string][]byte) bool {
		return json.Unmarshal(kvs[keys.Reshard()], &ans) == nil && ans.Status != ""
	})
	if err != nil {
		t.Fatal(err)
	}
	return ans
}

// A re-placement starts from the last complete checkpoint of the current
// placement: without one, or onto more shards than blocks, it is refused
// and the placement stays; ranks that had finished run again.
func TestRunReshard(t *testing.T) {
	cli := testenv.Etcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	spec := job.Default()
	spec.Name, spec.Workers, spec.Shards, spec.CheckpointEvery = "rs", 2, 2, 10
	keys := etcdstore.KeysFor(spec.Name)
	errc := make(chan error, 1)
	go func() { errc <- Run(ctx, etcdstore.New(cli, spec.Name), Config{Spec: spec, Log: quiet}) }()
	if _, err := etcdstore.Wait(ctx, cli, keys.Placement(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if a := askReshard(t, ctx, cli, keys, 3); !strings.Contains(a.Status, "no complete checkpoint") {
		t.Fatalf("without a checkpoint: %+v", a)
	}
	record := func(version, step int64, shard int) {
		b, _ := json.Marshal(job.SnapshotRecord{Path: fmt.Sprintf("s%d-%d", shard, step), Step: step, Shard: shard, Placement: version})
		cli.Put(ctx, keys.ShardSnapshot(version, step, shard), string(b))
	}
	record(1, 10, 0)
	record(1, 10, 1)
	record(1, 20, 0) // step 20 is not complete: the checkpoint is step 10
	if _, err := etcdstore.Wait(ctx, cli, keys.Checkpoint(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if a := askReshard(t, ctx, cli, keys, 1<<20); !strings.Contains(a.Status, "cannot place") {
		t.Fatalf("more shards than blocks: %+v", a)
	}
	if a := askReshard(t, ctx, cli, keys, 3); a.Status != "done" || a.Version != 2 || a.Start != 10 {
		t.Fatalf("reshard: %+v", a)
	}
	p, _, err := etcdstore.New(cli, spec.Name).Placement(ctx)
	if err != nil || p.Version != 2 || p.Shards != 3 || p.Start != 10 || !slices.Equal(p.From, []string{"s0-10", "s1-10"}) {
		t.Fatalf("placement %+v, %v", p, err)
	}
	// Records of the old placement no longer count; the new one's three do.
	record(1, 20, 1)
	record(2, 20, 0)
	record(2, 20, 1)
	record(2, 20, 2)
	err = etcdstore.WaitPrefix(ctx, cli, keys.Checkpoint(), 10*time.Second, func(kvs map[string][]byte) bool {
		var cp job.CheckpointRecord
		json.Unmarshal(kvs[keys.Checkpoint()], &cp)
		return cp.Step == 20 && cp.Placement == 2 && len(cp.Files) == 3
	})
	if err != nil {
		t.Fatal(err)
	}
	// A rank that has finished runs again from the checkpoint: its done goes.
	cli.Put(ctx, keys.Done(0), "1")
	if a := askReshard(t, ctx, cli, keys, 2); a.Status != "done" || a.Version != 3 || a.Start != 20 {
		t.Fatalf("after a rank finished: %+v", a)
	}
	if r, _ := cli.Get(ctx, keys.Done(0)); len(r.Kvs) != 0 {
		t.Fatal("a done survived the reshard")
	}
	cancel()
	<-errc
}

// Resuming needs a job with a complete checkpoint, and creates nothing; it
// writes the next placement from that checkpoint and forgets finished ranks.
func TestRunResume(t *testing.T) {
	cli := testenv.Etcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	spec := job.Default()
	spec.Name, spec.Workers, spec.Shards, spec.CheckpointEvery = "re", 1, 2, 10
	keys := etcdstore.KeysFor(spec.Name)
	if err := Run(ctx, etcdstore.New(cli, spec.Name), Config{Spec: spec, Log: quiet, Resume: true}); !errors.Is(err, ErrNothingToResume) {
		t.Fatalf("resuming a job that does not exist: %v", err)
	}
	if r, _ := cli.Get(ctx, keys.Root(), clientv3.WithPrefix(), clientv3.WithCountOnly()); r.Count != 0 {
		t.Fatalf("a failed resume wrote %d keys", r.Count)
	}
	// The job runs for a while, then its coordinator stops.
	runUntilPlaced(ctx, t, cli, spec)
	if err := Run(ctx, etcdstore.New(cli, spec.Name), Config{Spec: spec, Log: quiet, Resume: true}); !errors.Is(err, ErrNothingToResume) {
		t.Fatalf("resuming without a checkpoint: %v", err)
	}
	cp, _ := json.Marshal(job.CheckpointRecord{Step: 30, Placement: 1, Files: []string{"a", "b"}})
	cli.Put(ctx, keys.Checkpoint(), string(cp))
	cli.Put(ctx, keys.Done(0), "1")
	rctx, stop := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- Run(rctx, etcdstore.New(cli, spec.Name), Config{Spec: spec, Log: quiet, Resume: true}) }()
	err := etcdstore.WaitPrefix(ctx, cli, keys.Placement(), 10*time.Second, func(kvs map[string][]byte) bool {
		p, err := job.DecodePlacement(kvs[keys.Placement()])
		return err == nil && p.Version == 2
	})
	if err != nil {
		t.Fatal(err)
	}
	p, _, _ := etcdstore.New(cli, spec.Name).Placement(ctx)
	if p.Start != 30 || p.Shards != 2 || !slices.Equal(p.From, []string{"a", "b"}) {
		t.Fatalf("resumed placement %+v", p)
	}
	for _, k := range []string{keys.Done(0)} {
		if r, _ := cli.Get(ctx, k); len(r.Kvs) != 0 {
			t.Fatalf("%s survived the resume", k)
		}
	}
	stop()
	<-errc
}

// The tasks a machine step gives and the queue that records them are
// written in one transaction: a coordinator that dies after one of them and
// before the other cannot leave a task pending with a worker that never got
// it (seen: the job then waited for the task's timeout). The last word for
// a worker, and the last queue, are what is written.
func TestExecWritesTasksAndQueueAtOnce(t *testing.T) {
	cli := testenv.Etcd(t)
	ctx := context.Background()
	spec := job.Default()
	keys := etcdstore.KeysFor(spec.Name)
	c := &run{st: etcdstore.New(cli, spec.Name), cfg: Config{Spec: spec, Log: quiet}}
	q := NewTasks(2, 100, 50, 60, 3)
	before := q.clone()
	t1, _ := q.Next("w1")
	actions := []Action{
		{Kind: DoSaveTasks, Tasks: q},
		{Kind: DoGiveTask, Worker: "w1", Task: t1},
		{Kind: DoGiveTask, Worker: "w2", Task: job.Task{ID: -1}},
	}
	t2, _ := q.Next("w2")
	actions = append(actions, Action{Kind: DoGiveTask, Worker: "w2", Task: t2}, Action{Kind: DoSaveTasks, Tasks: q})
	if _, err := c.exec(ctx, actions); err != nil {
		t.Fatal(err)
	}
	r, err := cli.Get(ctx, keys.Root(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	revs := map[int64]bool{}
	got := map[string]string{}
	for _, kv := range r.Kvs {
		revs[kv.ModRevision] = true
		got[string(kv.Key)] = string(kv.Value)
	}
	want := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	if len(r.Kvs) != 3 || len(revs) != 1 || got[keys.TaskOf("w1")] != want(t1) || got[keys.TaskOf("w2")] != want(t2) ||
		got[keys.Tasks()] != string(q.Encode()) || got[keys.Tasks()] == string(before.Encode()) {
		t.Fatalf("%d keys in %d revisions: %v", len(r.Kvs), len(revs), got)
	}
}

// A resumed sync job whose stopped run left a rank assigned to a worker that
// is gone rolls back to the checkpoint it resumed from, not to step 0: the
// coordinator knows that checkpoint before it handles the dead holder. (It
// did not: the job failed with "placement 2 starts at step 30: a new one
// cannot start earlier, at 0", seen when a fast run was stopped late.)
func TestRunResumeWithADeadHolder(t *testing.T) {
	cli := testenv.Etcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	spec := job.Default()
	spec.Name, spec.Workers, spec.Shards, spec.CheckpointEvery = "dead", 1, 2, 10
	keys := etcdstore.KeysFor(spec.Name)
	runUntilPlaced(ctx, t, cli, spec)
	cp, _ := json.Marshal(job.CheckpointRecord{Step: 30, Placement: 1, Files: []string{"a", "b"}})
	a, _ := json.Marshal(job.Assignment{Rank: 0, Epoch: 1})
	cli.Put(ctx, keys.Checkpoint(), string(cp))
	cli.Put(ctx, keys.Assign("gone"), string(a)) // no member key: its lease is gone
	rctx, stop := context.WithCancel(ctx)
	errc := make(chan error, 1)
	defer stop()
	go func() { errc <- Run(rctx, etcdstore.New(cli, spec.Name), Config{Spec: spec, Log: quiet, Resume: true}) }()
	err := etcdstore.WaitPrefix(ctx, cli, keys.Placement(), 10*time.Second, func(kvs map[string][]byte) bool {
		p, err := job.DecodePlacement(kvs[keys.Placement()])
		return err == nil && p.Version == 3
	})
	select {
	case err := <-errc:
		t.Fatalf("the resumed coordinator stopped: %v", err)
	default:
	}
	if err != nil {
		t.Fatal(err)
	}
	p, _, _ := etcdstore.New(cli, spec.Name).Placement(ctx)
	if p.Start != 30 || !slices.Equal(p.From, []string{"a", "b"}) {
		t.Fatalf("the rollback after the dead holder went to %+v, want the checkpoint of step 30", p)
	}
}

// runUntilPlaced runs spec's coordinator until it has written the job's
// placement, then stops it, as a coordinator killed early would be.
func runUntilPlaced(ctx context.Context, t *testing.T, cli *clientv3.Client, spec job.Spec) {
	t.Helper()
	rctx, stop := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- Run(rctx, etcdstore.New(cli, spec.Name), Config{Spec: spec, Log: quiet}) }()
	if _, err := etcdstore.Wait(ctx, cli, etcdstore.KeysFor(spec.Name).Placement(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	stop()
	<-errc
}
