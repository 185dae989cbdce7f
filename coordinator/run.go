package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
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
func resume(ctx context.Context, st job.Store, l job.Leadership, p *job.Placement) (*job.Placement, error) {
	cp, _, err := st.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	if cp == nil || len(cp.Files) == 0 {
		return nil, fmt.Errorf("%w: no complete checkpoint (train with --checkpoint-every)", ErrNothingToResume)
	}
	q, err := p.Reshard(p.Shards, cp.Step, cp.Files)
	if err != nil {
		return nil, err
	}
	if err := st.Place(ctx, l, q, nil); err != nil {
		return nil, err
	}
	return q, nil
}

// Config is what Run needs besides the job's store.
type Config struct {
	Spec job.Spec
	Log  *slog.Logger
	// JoinTimeout bounds how long a rank may stay without a worker; 0 means
	// 5 minutes.
	JoinTimeout time.Duration
	// Leader, when set, is this coordinator's won election: every write is
	// guarded by it, and Run returns ErrNotLeader once it is lost.
	Leader job.Leadership
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

// Run coordinates the job in st until every rank is done, then marks it
// done. It returns early with ctx's error, or when the job cannot proceed.
func Run(ctx context.Context, st job.Store, cfg Config) error {
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
	p := job.PlaceCopies(spec.Tensors(), spec.BlockSize, spec.Shards, max(1, spec.PSReplicas))
	if len(p.Blocks) < spec.Shards {
		return fmt.Errorf("the model has %d blocks of %d floats for %d shards: lower --block-size or --ps-shards", len(p.Blocks), spec.BlockSize, spec.Shards)
	}
	if cfg.Leader != nil {
		if err := st.CheckLeader(ctx, cfg.Leader); err != nil {
			return fmt.Errorf("job %s: %w", spec.Name, err)
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
	// Create the job, or join it if it exists with the same spec (only join,
	// to resume).
	p, err := create(ctx, st, cfg, p)
	if err != nil {
		return err
	}
	c := &run{st: st, cfg: cfg, job: NewSeatedJob(spec.Mode, spec.Ranks(), spec.Seats(), p, int(cfg.JoinTimeout/time.Second)), placed: p}
	if spec.UsesTasks() {
		if err := c.restoreTasks(ctx); err != nil {
			return err
		}
	}
	err = c.loop(ctx)
	if err == nil {
		// The job is marked done, by a write that checked this
		// coordinator still led: a lease lost after it loses nothing.
		return nil
	}
	if cause := context.Cause(ctx); errors.Is(cause, ErrNotLeader) {
		return fmt.Errorf("job %s: %w", spec.Name, ErrNotLeader)
	}
	return err
}

// create creates the job in st with its first placement p, or joins it if
// it exists with the same spec (with cfg.Resume, only joins it, and writes
// the placement that resumes it); it returns the job's placement.
func create(ctx context.Context, st job.Store, cfg Config, p *job.Placement) (*job.Placement, error) {
	spec := &cfg.Spec
	created, stored, state, err := st.Create(ctx, cfg.Leader, spec, p, cfg.Resume)
	switch {
	case err != nil:
		return nil, err
	case created:
		cfg.Log.Info("created job", "job", spec.Name, "params", p.Size(), "blocks", len(p.Blocks), "shards", spec.Shards)
	case stored == nil: // only when resuming
		return nil, fmt.Errorf("job %s: %w: no such job", spec.Name, ErrNothingToResume)
	case !bytes.Equal(stored, spec.Encode()):
		return nil, fmt.Errorf("job %s: %w (stored: %s)", spec.Name, ErrSpecConflict, stored)
	case state == job.StateDone:
		return nil, fmt.Errorf("job %s: %w", spec.Name, ErrJobDone)
	default:
		if p, _, err = st.Placement(ctx); err != nil {
			return nil, err
		}
		cfg.Log.Info("joined existing job", "job", spec.Name, "placement", p.Version)
	}
	if cfg.Resume {
		if p, err = resume(ctx, st, cfg.Leader, p); err != nil {
			return nil, fmt.Errorf("job %s: %w", spec.Name, err)
		}
		cfg.Log.Info("resuming", "job", spec.Name, "from_step", p.Start, "placement", p.Version)
	}
	return p, nil
}

// restoreTasks gives the job its task queue: the stored one, which a
// coordinator that takes over carries on with, or a new one; and the queue
// as it was at the last complete checkpoint, to go back to.
func (c *run) restoreTasks(ctx context.Context) error {
	spec := &c.cfg.Spec
	b, err := c.st.TaskQueue(ctx)
	if err != nil {
		return err
	}
	q := NewTasks(spec.Workers, spec.Steps, spec.TaskSteps, spec.TaskTimeout, spec.TaskAttempts)
	if b != nil {
		if q, err = DecodeTasks(b); err != nil {
			return err
		}
	}
	every := spec.CheckpointEvery
	if c.cfg.Snapshot == nil {
		every = 0
	}
	c.job.UseTasks(q, every)
	cp, _, err := c.st.Checkpoint(ctx)
	if err != nil {
		return err
	}
	if cp != nil {
		if b, err := c.st.TaskQueueAt(ctx, cp.Step); err == nil && b != nil {
			if qa, err := DecodeTasks(b); err == nil {
				c.job.RestoreQueueAt(cp.Step, qa)
			}
		}
	}
	return nil
}

// run is the store adapter of a Job: it feeds the machine with the job's
// events, first the job as it is and then its changes, and carries out its
// actions as the store's writes, guarded by the coordinator's leadership.
type run struct {
	st     job.Store
	cfg    Config
	job    *Job
	placed *job.Placement // the placement last written
}

// loop rebuilds the job's state from the store, then follows its events
// until the job is done.
func (c *run) loop(ctx context.Context) error {
	view, events, err := c.st.Follow(ctx)
	if err != nil {
		return err
	}
	for id, a := range view.Assigned {
		c.job.RestoreAssignment(id, a)
	}
	if view.Checkpoint != nil {
		// Known before any dead holder below rolls the job back: a
		// rollback goes to this checkpoint, not to step 0.
		c.job.CheckpointRecorded(*view.Checkpoint)
	}
	// Workers whose assignment exists but whose lease is gone are down.
	for _, id := range c.job.Holders() {
		if !view.Live[id] {
			if finished, err := c.exec(ctx, c.job.WorkerDown(id)); err != nil || finished {
				return err
			}
		}
	}
	for _, ev := range view.Events {
		if finished, err := c.handle(ctx, ev); err != nil || finished {
			return err
		}
	}
	if finished, err := c.exec(ctx, c.job.Resume()); err != nil || finished {
		return err
	}
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
		case ev, ok := <-events:
			if !ok {
				return fmt.Errorf("the job's events ended: %w", ctx.Err())
			}
			if finished, err := c.handle(ctx, ev); err != nil || finished {
				return err
			}
		}
	}
}

// handle turns one event into the machine's input and carries out its
// actions.
func (c *run) handle(ctx context.Context, ev job.Event) (finished bool, err error) {
	var out []Action
	switch ev.Kind {
	case job.WorkerUp:
		out = c.job.WorkerUpAs(ev.Worker, ev.Member)
	case job.WorkerDown:
		c.cfg.Log.Info("worker left", "worker", ev.Worker)
		out = c.job.WorkerDown(ev.Worker)
	case job.ShardDown:
		out = c.job.ShardDown(ev.Shard, ev.Placement)
	case job.ShardUp:
		out = c.job.ShardUp(ev.Shard, ev.Placement, ev.Filled)
	case job.SnapshotRecorded:
		out = c.job.SnapshotRecorded(ev.Snapshot)
	case job.CheckpointRecorded: // read back when the coordinator restarts
		c.job.CheckpointRecorded(ev.Checkpoint)
	case job.ReshardRequested:
		out = c.job.ReshardRequested(ev.Reshard)
	case job.TaskReported:
		out = c.job.TaskDone(ev.Worker, ev.Task.ID)
	case job.RankReported:
		out = c.job.RankDone(ev.Rank)
	case job.Malformed:
		c.cfg.Log.Warn("ignoring a malformed record", "what", ev.What, "err", ev.Err)
	case job.Failed:
		return false, ev.Err
	}
	return c.exec(ctx, out)
}

// exec carries out actions in order; it reports whether the job finished.
func (c *run) exec(ctx context.Context, actions []Action) (finished bool, err error) {
	l := c.cfg.Leader
	// Tasks given and the queue that says so are one decision: they are
	// written in one transaction (the queue as it is last), so that a
	// coordinator that dies between the two cannot leave a task pending
	// with a worker that was never given it, nor given twice.
	var given []job.GivenTask
	at := map[string]int{} // worker -> its task in given
	var queue *Tasks
	flush := func() error {
		var q []byte
		if queue != nil {
			q = queue.Encode()
		}
		g := given
		given, queue = nil, nil
		clear(at)
		return c.st.GiveTasks(ctx, l, g, q)
	}
	for _, a := range actions {
		switch a.Kind {
		case DoGiveTask:
			if i, ok := at[a.Worker]; ok {
				given[i].Task = a.Task // the later word for the same worker
			} else {
				at[a.Worker] = len(given)
				given = append(given, job.GivenTask{Worker: a.Worker, Task: a.Task})
			}
			continue
		case DoSaveTasks:
			queue = a.Tasks
			continue
		}
		if err := flush(); err != nil {
			return false, err
		}
		if finished, err := c.do(ctx, a); err != nil || finished {
			return finished, err
		}
	}
	return false, flush()
}

// do carries out one action other than giving tasks.
func (c *run) do(ctx context.Context, a Action) (finished bool, err error) {
	l := c.cfg.Leader
	switch a.Kind {
	case DoAssign:
		if err := c.st.Assign(ctx, l, a.Assign.Worker, a.Assign.Assignment); err != nil {
			return false, err
		}
		c.cfg.Log.Info("assigned rank", "worker", a.Assign.Worker, "rank", a.Assign.Rank, "epoch", a.Assign.Epoch, "data_shard", a.Assign.DataShard)
	case DoUnassign:
		return false, c.st.Unassign(ctx, l, a.Worker)
	case DoPlace:
		return false, c.place(ctx, a)
	case DoCheckpoint:
		if err := c.st.RecordCheckpoint(ctx, l, a.Checkpoint); err != nil {
			return false, err
		}
		c.cfg.Log.Info("checkpoint complete", "step", a.Checkpoint.Step)
	case DoAnswer:
		if err := c.st.AnswerReshard(ctx, l, a.Reshard); err != nil {
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
		return true, c.st.MarkDone(ctx, l)
	case DoFail:
		return false, fmt.Errorf("job %s: %w", c.cfg.Spec.Name, a.Err)
	case DoSnapshot:
		step := a.Checkpoint.Step
		if err := c.st.SaveTaskQueueAt(ctx, l, step, a.Tasks.Encode()); err != nil {
			return false, err
		}
		if err := c.cfg.Snapshot(ctx, c.placed, step); err != nil {
			c.cfg.Log.Warn("asking the shards for a snapshot", "step", step, "err", err)
		}
	}
	return false, nil
}

// place writes the placement of a DoPlace with the record of what it
// throws away.
func (c *run) place(ctx context.Context, a Action) error {
	q := a.Placement
	if q.HandedOver { // nothing thrown away: no rollback record
		if err := c.st.Place(ctx, c.cfg.Leader, q, nil); err != nil {
			return err
		}
		c.placed = q
		c.cfg.Log.Warn("handed over", "why", a.Why, "placement", q.Version, "lineage", q.Lineage(), "down", q.Down, "filling", q.Filling, "steps_thrown_away", 0)
		return nil
	}
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
	if err := c.st.Place(ctx, c.cfg.Leader, q, &rec); err != nil {
		return err
	}
	c.placed = q
	c.cfg.Log.Warn("re-placed the job", "why", a.Why, "placement", q.Version, "shards", q.Shards, "from_step", q.Start,
		"reached_step", rec.FromStep, "steps_thrown_away", max(0, rec.FromStep-q.Start))
	return nil
}
