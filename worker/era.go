package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
)

// A trainer runs a rank's steps of one model under one placement: the
// Seq2Seq trainer (seq2seqTrainer) or the GAN's (ganTrainer). An era's loop
// (runEra, runTasks) drives it and owns the step numbers, the lease and the
// placement.
type trainer interface {
	// step runs one step of the rank: its pulls, gradient and pushes, and
	// its progress report.
	step(ctx context.Context, s at) error
	// close stops what is still in flight (when the loop ends early).
	close()
	// clock is the shards' slowest clock.
	clock(ctx context.Context) (int64, error)
	// idle tells the shards this rank has no work for now (elastic ssp).
	idle(ctx context.Context) error
	// handover moves the trainer's clients to a placement handed over
	// from theirs (job.Placement.Handover): what they have in flight goes
	// to the new primaries, and the step goes on.
	handover(q *job.Placement) error
}

// ErrFenced is returned by a worker that is no longer a member of its job
// (job.ErrFenced).
var ErrFenced = job.ErrFenced

// runEra trains under placement p (written at store revision rev) from its
// start step to the last step, and reports the rank done, if p is still the
// job's placement by then. If the job is re-placed first, runEra drops what
// it was doing and returns the new placement.
func runEra(ctx context.Context, cfg Config, spec *job.Spec, a job.Assignment, p *job.Placement, rev int64,
	lease job.Lease, pushed *int64) (*job.Placement, int64, error) {
	log := cfg.Log.With("worker", cfg.ID)
	var t trainer
	var err error
	switch spec.Model {
	case "gan":
		t, err = newGANTrainer(cfg, spec, a, p)
	case job.Synthetic:
		t, err = newSyntheticTrainer(cfg, spec, a, p)
	case "seq2seq":
		if spec.LaidOut() {
			t, err = newSeatTrainer(cfg, spec, a, p)
		} else {
			t, err = newSeq2SeqTrainer(cfg, spec, a, p)
		}
	default:
		t, err = newSeq2SeqTrainer(cfg, spec, a, p)
	}
	if err != nil {
		return nil, 0, err
	}
	defer t.close()
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := watchPlacement(ectx, ctx, cancel, cfg, spec, p, rev, t)
	next := w.next
	if spec.UsesTasks() {
		var err error
		if st, ok := t.(*seatTrainer); ok {
			err = runSeatTasks(ectx, cfg, spec, st, lease, pushed)
		} else {
			err = runTasks(ectx, cfg, spec, t, lease, pushed)
		}
		if ectx.Err() != nil && ctx.Err() == nil || superseded(err) { // re-placed, or the job is done
			return next(true)
		}
		return nil, 0, err
	}
	first := p.Start
	if spec.Mode == job.SSP && a.Epoch > 1 {
		// This worker took over a rank whose holder died: carry on where the
		// job is (the shards' slowest clock, which is about where the dead
		// holder stopped), not from the placement's first step, which the
		// other ranks, at most the staleness ahead, would wait for.
		cctx, cancel := context.WithTimeout(ectx, cfg.WaitTimeout)
		clock, err := t.clock(cctx)
		cancel()
		if err != nil {
			return nil, 0, fmt.Errorf("reading the job's clock: %w", err)
		}
		first = max(first, min(clock, spec.Steps))
		log.Info("took over a rank: starting at the job's clock", "rank", a.Rank, "step", first)
	}
	for step := first; step < spec.Steps; step++ {
		if err := leaseLost(lease); err != nil {
			return nil, 0, err
		}
		if err := t.step(ectx, at{Shard: a.DataShard, Data: step, N: step, Last: step == spec.Steps-1}); err != nil {
			// A seat of this replica was given to a new holder: the
			// coordinator rolls the job back (a sync job's worker died),
			// and the step's wait ended at the newcomer's hello, before
			// the new placement came.
			rejoined := ctx.Err() == nil && errors.Is(err, ErrSeatRejoined)
			if ectx.Err() != nil && ctx.Err() == nil || superseded(err) || rejoined { // re-placed
				if rejoined {
					log.Info("a seat of the replica has a new holder: waiting for the job's new placement", "step", step)
				}
				return next(false)
			}
			return nil, 0, err
		}
	}
	if err := cfg.NATS.FlushTimeout(5 * time.Second); err != nil { // the last progress report goes out before "done"
		log.Warn("flushing progress", "err", err)
	}
	// Done counts only if the placement this rank ran under is still the
	// job's: else the job rolled back, and this rank reruns from there. (A
	// placement handed over from it is the job's too: the watch gives its
	// revision, once it has handed the trainer over.)
	for {
		rev := w.rev()
		ok, err := cfg.Store.RankDone(ctx, a, rev)
		if err != nil {
			return nil, 0, err
		}
		if ok {
			break
		}
		if !w.handingOver(rev, ectx.Done()) {
			return next(false)
		}
	}
	// Stay until the job is done: if it rolls back first, this rank reruns
	// its steps from the checkpoint.
	log.Info("finished its steps; waiting for the job to end", "rank", a.Rank, "steps", spec.Steps)
	return next(true)
}

// placementWatch follows the job's placements during an era: it hands the
// trainer over to each placement handed over from the era's (same
// lineage), and ends the era at any other.
type placementWatch struct {
	mu     sync.Mutex
	latest int64         // the store revision of the newest placement the era runs under
	moved  chan struct{} // closed (and replaced) at each handover
	next   func(finished bool) (*job.Placement, int64, error)
}

// rev is the store revision of the newest placement the era runs under.
func (w *placementWatch) rev() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.latest
}

// handingOver waits, after the placement of revision rev turned out not
// to be the job's, until the watch has handed the era over to a newer one
// (true) or ended it (false).
func (w *placementWatch) handingOver(rev int64, ended <-chan struct{}) bool {
	for {
		w.mu.Lock()
		latest, moved := w.latest, w.moved
		w.mu.Unlock()
		if latest != rev {
			return true
		}
		select {
		case <-moved:
		case <-ended:
			return false
		}
	}
}

// watchPlacement watches, in the background, for the placements after
// p (written at revision rev). One handed over from p's lineage goes to
// the trainer (t.handover), and the era goes on under it. Any other
// cancels the era (cancel ends ectx), as does, with tasks, the job's end:
// the step in flight belongs to the old placement. The watch's next waits
// for that placement: the job rolled back or was re-placed. Once this rank
// has finished (finished), the job's end is the normal way out; before,
// it means the job ended without this rank. ctx is the worker's own, which
// the era's cancel does not end.
func watchPlacement(ectx, ctx context.Context, cancel context.CancelFunc, cfg Config, spec *job.Spec, p *job.Placement, rev int64, t trainer) *placementWatch {
	type era struct {
		p   *job.Placement
		rev int64
		err error
	}
	w := &placementWatch{latest: rev, moved: make(chan struct{})}
	nextCh := make(chan era, 1)
	go func() {
		version, lineage := p.Version, p.Lineage()
		for {
			next, rev, err := cfg.Store.NextPlacement(ectx, version)
			if next != nil && next.HandedOver && next.Lineage() == lineage {
				if herr := t.handover(next); herr == nil {
					cfg.Log.Info("placement handed over: carrying on", "worker", cfg.ID, "placement", next.Version, "down", next.Down)
					w.mu.Lock()
					w.latest = rev
					close(w.moved)
					w.moved = make(chan struct{})
					w.mu.Unlock()
					version = next.Version
					continue
				} else {
					cfg.Log.Warn("cannot follow the handover: leaving the era", "worker", cfg.ID, "placement", next.Version, "err", herr)
				}
			}
			if next != nil || err == nil && spec.UsesTasks() {
				cancel()
			}
			nextCh <- era{next, rev, err}
			return
		}
	}()
	w.next = func(finished bool) (*job.Placement, int64, error) {
		e := <-nextCh
		switch {
		case e.p != nil:
			return e.p, e.rev, nil
		case ctx.Err() != nil:
			return nil, 0, ctx.Err()
		case e.err != nil:
			return nil, 0, fmt.Errorf("waiting for a new placement: %w", e.err)
		case !finished:
			return nil, 0, errors.New("the job was marked done before this rank finished")
		}
		return nil, 0, nil
	}
	return w
}

// at names the step a trainer runs: the batch of step Data of data shard
// Shard, pushed (and pulled) as the rank's step N. Last marks the step
// before the rank reports (its job's or its task's last): its push is not
// left in flight.
type at struct {
	Shard int
	Data  int64
	N     int64
	Last  bool
}

// progress is how step s of rank is reported in the job's metrics: as the
// rank's step N; or, when the data goes out as tasks, as data step Data of
// data shard Shard, which is done once whichever worker does it (the ranks'
// step numbers then need not line up), so that the collector lines the data
// shards' steps up as it lines up the ranks'.
func (s at) progress(spec *job.Spec, rank int) (uint32, int64) {
	if spec.UsesTasks() {
		return uint32(s.Shard), s.Data
	}
	return uint32(rank), s.N
}

// runTasks (async, ssp) takes the tasks the coordinator gives this worker,
// one at a time, runs their steps and reports each done, until ctx ends (the
// job is done or re-placed). pushed numbers the rank's steps. In ssp mode
// the rank is idle between tasks (it does not hold the others back), and
// starts each task at the job's clock (the slowest active rank's), so that
// the others do not wait for it to catch up.
func runTasks(ctx context.Context, cfg Config, spec *job.Spec, t trainer, lease job.Lease, pushed *int64) error {
	var last job.Task
	for {
		task, err := nextTask(ctx, cfg, spec, t, last, pushed)
		if err != nil {
			return err
		}
		for d := task.From; d < task.To; d++ {
			if err := leaseLost(lease); err != nil {
				return err
			}
			if err := t.step(ctx, at{Shard: task.Shard, Data: d, N: *pushed, Last: d == task.To-1}); err != nil {
				return err
			}
			*pushed++
		}
		if err := taskDone(ctx, cfg, spec, t, task); err != nil {
			return err
		}
		last = task
	}
}

// nextTask waits for this worker's next task after last; in ssp, the
// rank's steps then go on from the job's clock (the slowest active
// rank's), so that the others do not wait for it to catch up.
func nextTask(ctx context.Context, cfg Config, spec *job.Spec, t trainer, last job.Task, pushed *int64) (job.Task, error) {
	task, err := cfg.Store.NextTask(ctx, cfg.ID, last)
	if err != nil {
		return job.Task{}, err
	}
	if spec.Mode == job.SSP {
		clock, err := t.clock(ctx)
		if err != nil {
			return job.Task{}, fmt.Errorf("reading the job's clock: %w", err)
		}
		*pushed = max(*pushed, clock)
	}
	cfg.Log.Info("task", "worker", cfg.ID, "id", task.ID, "data_shard", task.Shard, "from", task.From, "to", task.To, "attempt", task.Attempts, "clock", *pushed)
	return task, nil
}

// taskDone reports task done; in ssp the rank says first that it is idle
// (it does not hold the others back between tasks).
func taskDone(ctx context.Context, cfg Config, spec *job.Spec, t trainer, task job.Task) error {
	if err := idleInSSP(ctx, spec, t); err != nil {
		return err
	}
	return cfg.Store.TaskDone(ctx, cfg.ID, task)
}

// idleInSSP tells the shards, in an ssp job, that the rank has no step in
// hand: it no longer bounds the others' staleness until it pushes again.
func idleInSSP(ctx context.Context, spec *job.Spec, t trainer) error {
	if spec.Mode != job.SSP {
		return nil
	}
	if err := t.idle(ctx); err != nil {
		return fmt.Errorf("saying the rank is idle: %w", err)
	}
	return nil
}

// leaseLost is ErrFenced once the worker's lease has ended, else nil.
func leaseLost(lease job.Lease) error {
	select {
	case <-lease.Lost():
		return fmt.Errorf("%w: lost the etcd lease: this worker is no longer a member of the job", ErrFenced)
	default:
		return nil
	}
}
