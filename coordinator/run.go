package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
)

// Errors a caller can branch on.
var (
	ErrSpecConflict = errors.New("a job of that name exists with a different spec")
	ErrJobDone      = errors.New("the job has already finished")
	// ErrNothingToResume: the job does not exist, or has no complete
	// checkpoint.
	ErrNothingToResume = errors.New("nothing to resume")
)

// resume writes the placement that continues the job from its last complete
// checkpoint, on p's shards, and forgets the ranks that had finished after
// it: they rerun from there.
func resume(ctx context.Context, cli *clientv3.Client, l *Leadership, keys etcdstore.Keys, p *job.Placement) (*job.Placement, error) {
	r, err := cli.Get(ctx, keys.Checkpoint())
	if err != nil {
		return nil, fmt.Errorf("reading the last checkpoint: %w", err)
	}
	var cp job.CheckpointRecord
	if len(r.Kvs) == 0 || json.Unmarshal(r.Kvs[0].Value, &cp) != nil || len(cp.Files) == 0 {
		return nil, fmt.Errorf("%w: no complete checkpoint (train with --checkpoint-every)", ErrNothingToResume)
	}
	q, err := p.Reshard(p.Shards, cp.Step, cp.Files)
	if err != nil {
		return nil, err
	}
	_, err = write(ctx, cli, l, nil, clientv3.OpPut(keys.Placement(), string(q.Encode())),
		clientv3.OpDelete(keys.Dones(), clientv3.WithPrefix()))
	if err != nil {
		return nil, fmt.Errorf("writing placement %d: %w", q.Version, err)
	}
	return q, nil
}

// Config is what Run needs besides an etcd client.
type Config struct {
	Spec job.Spec
	Log  *slog.Logger
	// JoinTimeout bounds how long a rank may stay without a worker; 0 means
	// 5 minutes.
	JoinTimeout time.Duration
	// Leader, when set, is this coordinator's won election: every write is
	// guarded by it, and Run returns ErrNotLeader once it is lost.
	Leader *Leadership
	// Resume continues a stopped job from its last complete checkpoint: the
	// coordinator writes a new placement (same shards) starting from it, so
	// shards restore from its snapshots and workers resume at its step. The
	// job must exist, with the same spec, and have a complete checkpoint.
	Resume bool
	// OnFinish runs once every rank is done and before the job is marked
	// done (while the shards still serve), e.g. to save the final parameters.
	OnFinish func(ctx context.Context, p *job.Placement) error
	// Snapshot, when set, asks every shard of placement p for a snapshot now,
	// labelled step (async checkpoints); without it async jobs do not
	// checkpoint.
	Snapshot func(ctx context.Context, p *job.Placement, step int64) error
	// Reached, when set, tells how far the job got under placement p (the
	// largest clock its live shards report): a re-placement records the
	// steps it throws away (sync: to redo; async: updates lost).
	Reached func(ctx context.Context, p *job.Placement) (int64, error)
}

// Run coordinates the job until every rank is done, then marks it done. It
// returns early with ctx's error, or when the job cannot proceed.
func Run(ctx context.Context, cli *clientv3.Client, cfg Config) error {
	spec := &cfg.Spec
	if err := spec.Validate(); err != nil {
		return err
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.JoinTimeout == 0 {
		cfg.JoinTimeout = 5 * time.Minute
	}
	keys := etcdstore.KeysFor(spec.Name)
	p := job.Place(spec.Tensors(), spec.BlockSize, spec.Shards)
	if len(p.Blocks) < spec.Shards {
		return fmt.Errorf("the model has %d blocks of %d floats for %d shards: lower --block-size or --ps-shards", len(p.Blocks), spec.BlockSize, spec.Shards)
	}
	// Create the job, or join it if it exists with the same spec (only join,
	// to resume).
	create := clientv3.Compare(clientv3.CreateRevision(keys.Spec()), "=", 0)
	if cfg.Resume {
		create = clientv3.Compare(clientv3.CreateRevision(keys.Spec()), "<", 0) // never: read only
	}
	if cfg.Leader != nil {
		if ok, err := write(ctx, cli, cfg.Leader, nil); err != nil || !ok {
			return fmt.Errorf("job %s: %w", spec.Name, errors.Join(err, ErrNotLeader))
		}
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		go func() {
			select {
			case <-cfg.Leader.Lost():
				cancel(ErrNotLeader)
			case <-ctx.Done():
			}
		}()
	}
	resp, err := cli.Txn(ctx).
		If(create).
		Then(clientv3.OpPut(keys.Spec(), string(spec.Encode())),
			clientv3.OpPut(keys.Placement(), string(p.Encode())),
			clientv3.OpPut(keys.State(), job.StateRunning)).
		Else(clientv3.OpGet(keys.Spec()), clientv3.OpGet(keys.State())).
		Commit()
	if err != nil {
		return fmt.Errorf("creating job %s in etcd: %w", spec.Name, err)
	}
	if !resp.Succeeded {
		stored := resp.Responses[0].GetResponseRange().Kvs
		if len(stored) == 0 { // only when resuming
			return fmt.Errorf("job %s: %w: no such job", spec.Name, ErrNothingToResume)
		}
		old := stored[0].Value
		if !bytes.Equal(old, spec.Encode()) {
			return fmt.Errorf("job %s: %w (stored: %s)", spec.Name, ErrSpecConflict, old)
		}
		if st := resp.Responses[1].GetResponseRange().Kvs; len(st) > 0 && string(st[0].Value) == job.StateDone {
			return fmt.Errorf("job %s: %w", spec.Name, ErrJobDone)
		}
		if p, _, err = etcdstore.ReadPlacement(ctx, cli, spec.Name); err != nil {
			return err
		}
		cfg.Log.Info("joined existing job", "job", spec.Name, "placement", p.Version)
	} else {
		cfg.Log.Info("created job", "job", spec.Name, "params", p.Size(), "blocks", len(p.Blocks), "shards", spec.Shards)
	}
	if cfg.Resume {
		if p, err = resume(ctx, cli, cfg.Leader, keys, p); err != nil {
			return fmt.Errorf("job %s: %w", spec.Name, err)
		}
		cfg.Log.Info("resuming", "job", spec.Name, "from_step", p.Start, "placement", p.Version)
	}
	c := &run{cli: cli, cfg: cfg, keys: keys, job: NewJob(spec.Mode, spec.Workers, p, int(cfg.JoinTimeout/time.Second)), placed: p}
	if spec.UsesTasks() {
		r, err := cli.Get(ctx, keys.Tasks())
		if err != nil {
			return fmt.Errorf("reading the task queue: %w", err)
		}
		q := NewTasks(spec.Workers, spec.Steps, spec.TaskSteps, spec.TaskTimeout, spec.TaskAttempts)
		if len(r.Kvs) > 0 { // a coordinator that takes over carries on with the queue
			if q, err = DecodeTasks(r.Kvs[0].Value); err != nil {
				return err
			}
		}
		every := spec.CheckpointEvery
		if cfg.Snapshot == nil {
			every = 0
		}
		c.job.UseTasks(q, every)
		// The queue as it was at the last complete checkpoint, to go back to.
		r, err = cli.Get(ctx, keys.Checkpoint())
		if err != nil {
			return fmt.Errorf("reading the last checkpoint: %w", err)
		}
		var cp job.CheckpointRecord
		if len(r.Kvs) > 0 && json.Unmarshal(r.Kvs[0].Value, &cp) == nil {
			if r, err = cli.Get(ctx, keys.TasksAt(cp.Step)); err == nil && len(r.Kvs) > 0 {
				if qa, err := DecodeTasks(r.Kvs[0].Value); err == nil {
					c.job.RestoreQueueAt(cp.Step, qa)
				}
			}
		}
	}
	err = c.loop(ctx)
	if cause := context.Cause(ctx); errors.Is(cause, ErrNotLeader) {
		return fmt.Errorf("job %s: %w", spec.Name, ErrNotLeader)
	}
	return err
}

// run is the etcd adapter of a Job: it feeds the machine with the job's
// keys, first as they are and then as they change, and carries out its
// actions as writes guarded by the coordinator's leadership.
type run struct {
	cli    *clientv3.Client
	cfg    Config
	keys   etcdstore.Keys
	job    *Job
	placed *job.Placement // the placement last written
}

// loop rebuilds the job's state from etcd, then follows its events until
// the job is done.
func (c *run) loop(ctx context.Context) error {
	snap, err := c.cli.Get(ctx, c.keys.Root(), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("reading job state: %w", err)
	}
	var events []*mvccpb.KeyValue
	live := map[string]bool{}
	for _, kv := range snap.Kvs {
		k := string(kv.Key)
		if id, ok := strings.CutPrefix(k, c.keys.Assigns()); ok {
			var a job.Assignment
			if json.Unmarshal(kv.Value, &a) == nil {
				c.job.RestoreAssignment(id, a)
			}
			continue
		}
		if id, ok := strings.CutPrefix(k, c.keys.Workers()); ok {
			live[id] = true
		}
		if k == c.keys.Checkpoint() {
			// Known before any dead holder below rolls the job back: a
			// rollback goes to this checkpoint, not to step 0.
			var cp job.CheckpointRecord
			if json.Unmarshal(kv.Value, &cp) == nil {
				c.job.CheckpointRecorded(cp)
			}
		}
		events = append(events, kv)
	}
	// Workers whose assignment exists but whose lease is gone are down.
	for _, id := range c.job.Holders() {
		if !live[id] {
			if finished, err := c.exec(ctx, c.job.WorkerDown(id)); err != nil || finished {
				return err
			}
		}
	}
	for _, kv := range events {
		if finished, err := c.handle(ctx, mvccpb.PUT, kv, nil); err != nil || finished {
			return err
		}
	}
	if finished, err := c.exec(ctx, c.job.Resume()); err != nil || finished {
		return err
	}
	// seen is the revision handled last: a watch that an etcd leader
	// change ends is opened again after it.
	seen := snap.Header.Revision
	watch := func() (clientv3.WatchChan, context.CancelFunc) {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		return c.cli.Watch(wctx, c.keys.Root(), clientv3.WithPrefix(), clientv3.WithRev(seen+1), clientv3.WithPrevKV()), cancel
	}
	wc, cancel := watch()
	defer func() { cancel() }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if finished, err := c.exec(ctx, c.job.Tick()); err != nil || finished {
				return err
			}
		case wr, ok := <-wc:
			if !ok {
				return fmt.Errorf("etcd watch closed: %w", ctx.Err())
			}
			if err := wr.Err(); err != nil {
				if !etcdstore.Transient(err) || errors.Is(err, rpctypes.ErrCompacted) {
					return fmt.Errorf("watching job %s: %w", c.cfg.Spec.Name, err)
				}
				c.cfg.Log.Warn("etcd ended the job's watch: watching again", "after_revision", seen, "err", err)
				cancel()
				time.Sleep(200 * time.Millisecond)
				wc, cancel = watch()
				continue
			}
			for _, ev := range wr.Events {
				if finished, err := c.handle(ctx, ev.Type, ev.Kv, ev.PrevKv); err != nil || finished {
					return err
				}
				seen = ev.Kv.ModRevision
			}
		}
	}
}

// handle turns one key change into the machine's input and carries out its
// actions. (prev, for a deletion, is the key's last value when known.)
func (c *run) handle(ctx context.Context, typ mvccpb.Event_EventType, kv, prev *mvccpb.KeyValue) (finished bool, err error) {
	k := string(kv.Key)
	put := typ == mvccpb.PUT
	var out []Action
	if id, ok := strings.CutPrefix(k, c.keys.Workers()); ok {
		if put {
			out = c.job.WorkerUp(id)
		} else {
			c.cfg.Log.Info("worker left", "worker", id)
			out = c.job.WorkerDown(id)
		}
	} else if i, ok := strings.CutPrefix(k, c.keys.Shards()); ok && !put && prev != nil {
		var m job.ShardMember
		if idx, err := strconv.Atoi(i); err == nil && json.Unmarshal(prev.Value, &m) == nil {
			out = c.job.ShardDown(idx, m.Placement)
		}
	} else if _, ok := strings.CutPrefix(k, c.keys.ShardSnapshots()); ok && put {
		var rec job.SnapshotRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			c.cfg.Log.Warn("ignoring a malformed snapshot record", "key", k)
			return false, nil
		}
		out = c.job.SnapshotRecorded(rec)
	} else if k == c.keys.Checkpoint() && put { // read back when the coordinator restarts
		var cp job.CheckpointRecord
		if json.Unmarshal(kv.Value, &cp) == nil {
			c.job.CheckpointRecorded(cp)
		}
	} else if k == c.keys.Reshard() && put {
		var req job.ReshardRequest
		if err := json.Unmarshal(kv.Value, &req); err != nil {
			c.cfg.Log.Warn("ignoring a malformed reshard request", "err", err)
			return false, nil
		}
		out = c.job.ReshardRequested(req)
	} else if id, ok := strings.CutPrefix(k, c.keys.TaskDones()); ok && put {
		var t job.Task
		if err := json.Unmarshal(kv.Value, &t); err != nil {
			c.cfg.Log.Warn("ignoring a malformed task report", "worker", id, "err", err)
			return false, nil
		}
		out = c.job.TaskDone(id, t.ID)
	} else if r, ok := strings.CutPrefix(k, c.keys.Dones()); ok && put {
		if rank, err := strconv.Atoi(r); err == nil {
			out = c.job.RankDone(rank)
		}
	}
	return c.exec(ctx, out)
}

// exec carries out actions in order; it reports whether the job finished.
func (c *run) exec(ctx context.Context, actions []Action) (finished bool, err error) {
	put := func(what string, ops ...clientv3.Op) error {
		if _, err := write(ctx, c.cli, c.cfg.Leader, nil, ops...); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
	// Tasks given and the queue that says so are one decision: they are
	// written in one transaction (the queue as it is last), so that a
	// coordinator that dies between the two cannot leave a task pending
	// with a worker that was never given it, nor given twice.
	var taskOps []clientv3.Op
	given := map[string]int{} // worker -> its op in taskOps
	var queue *Tasks
	flush := func() error {
		if queue != nil {
			taskOps = append(taskOps, clientv3.OpPut(c.keys.Tasks(), string(queue.Encode())))
		}
		ops := taskOps
		taskOps, queue = nil, nil
		clear(given)
		if len(ops) == 0 {
			return nil
		}
		return put("giving tasks and storing the task queue", ops...)
	}
	for _, a := range actions {
		switch a.Kind {
		case DoGiveTask:
			b, _ := json.Marshal(a.Task)
			op := clientv3.OpPut(c.keys.TaskOf(a.Worker), string(b))
			if i, ok := given[a.Worker]; ok {
				taskOps[i] = op // the later word for the same worker
			} else {
				given[a.Worker] = len(taskOps)
				taskOps = append(taskOps, op)
			}
			continue
		case DoSaveTasks:
			queue = a.Tasks
			continue
		}
		if err := flush(); err != nil {
			return false, err
		}
		switch a.Kind {
		case DoAssign:
			b, _ := json.Marshal(a.Assign.Assignment)
			if err := put("assigning rank "+strconv.Itoa(a.Assign.Rank), clientv3.OpPut(c.keys.Assign(a.Assign.Worker), string(b))); err != nil {
				return false, err
			}
			c.cfg.Log.Info("assigned rank", "worker", a.Assign.Worker, "rank", a.Assign.Rank, "epoch", a.Assign.Epoch, "data_shard", a.Assign.DataShard)
		case DoUnassign:
			if err := put("unassigning "+a.Worker, clientv3.OpDelete(c.keys.Assign(a.Worker))); err != nil {
				return false, err
			}
		case DoPlace:
			q := a.Placement
			rec := job.RollbackRecord{Placement: q.Version, Why: a.Why, ToStep: q.Start, FromStep: -1}
			if a.Thrown >= 0 { // with tasks: in data steps, as the checkpoint's label
				rec.FromStep = q.Start + a.Thrown
			} else if c.cfg.Reached != nil {
				rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				if reached, err := c.cfg.Reached(rctx, c.placed); err == nil {
					rec.FromStep = reached
				}
				cancel()
			}
			b, _ := json.Marshal(rec)
			if err := put(fmt.Sprintf("writing placement %d", q.Version), clientv3.OpPut(c.keys.Placement(), string(q.Encode())),
				clientv3.OpDelete(c.keys.Dones(), clientv3.WithPrefix()), clientv3.OpPut(c.keys.Rollback(q.Version), string(b))); err != nil {
				return false, err
			}
			c.placed = q
			c.cfg.Log.Warn("re-placed the job", "why", a.Why, "placement", q.Version, "shards", q.Shards, "from_step", q.Start,
				"reached_step", rec.FromStep, "steps_thrown_away", max(0, rec.FromStep-q.Start))
		case DoCheckpoint:
			b, _ := json.Marshal(a.Checkpoint)
			if err := put(fmt.Sprintf("recording checkpoint %d", a.Checkpoint.Step), clientv3.OpPut(c.keys.Checkpoint(), string(b))); err != nil {
				return false, err
			}
			c.cfg.Log.Info("checkpoint complete", "step", a.Checkpoint.Step)
		case DoAnswer:
			b, _ := json.Marshal(a.Reshard)
			if err := put("answering a reshard request", clientv3.OpPut(c.keys.Reshard(), string(b))); err != nil {
				return false, err
			}
			c.cfg.Log.Info("reshard request", "shards", a.Reshard.Shards, "answer", a.Reshard.Status)
		case DoFinish:
			c.cfg.Log.Info("all ranks done", "job", c.cfg.Spec.Name)
			if c.cfg.OnFinish != nil {
				if err := c.cfg.OnFinish(ctx, c.job.Placement()); err != nil {
					return false, err
				}
			}
			if err := put("marking the job done", clientv3.OpPut(c.keys.State(), job.StateDone)); err != nil {
				return false, err
			}
			return true, nil
		case DoFail:
			return false, fmt.Errorf("job %s: %w", c.cfg.Spec.Name, a.Err)
		case DoSnapshot:
			step := a.Checkpoint.Step
			if err := put("storing the task queue of a checkpoint", clientv3.OpPut(c.keys.TasksAt(step), string(a.Tasks.Encode()))); err != nil {
				return false, err
			}
			if err := c.cfg.Snapshot(ctx, c.placed, step); err != nil {
				c.cfg.Log.Warn("asking the shards for a snapshot", "step", step, "err", err)
			}
		}
	}
	return false, flush()
}
