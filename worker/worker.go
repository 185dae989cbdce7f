// Package worker is one model replica of a downpour job: it registers in etcd
// under a lease, waits for the coordinator to give it a rank and a data shard,
// and then, step after step, pulls the parameters from the shards, computes
// the loss and gradient of a batch of its data shard, clips the gradient and
// pushes it.
//
//	err := worker.Run(ctx, worker.Config{Job: "demo", ID: "w1", NATS: nc, Etcd: cli})
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/jobetcd"
	"github.com/downpour-ml/downpour/internal/metrics"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
	"github.com/downpour-ml/downpour/paramserver/placement"
	"github.com/downpour-ml/downpour/shard"
)

// Config is a worker's connections and limits. Zero values get the defaults
// named on each field.
type Config struct {
	Job  string
	ID   string // unique among the job's workers; default host-pid-time
	NATS *nats.Conn
	Etcd *clientv3.Client
	Log  *slog.Logger
	// LeaseTTL is the lease of the worker's membership, in seconds; default 10.
	LeaseTTL int64
	// WaitTimeout bounds each wait for the job (spec, rank, placement,
	// shards); default 5 minutes.
	WaitTimeout time.Duration
	// StepTimeout bounds one step's pull and push; default 5 minutes.
	StepTimeout time.Duration
}

func (c *Config) defaults() {
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = fmt.Sprintf("%s-%d-%d", host, os.Getpid(), time.Now().UnixNano())
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 10
	}
	if c.WaitTimeout == 0 {
		c.WaitTimeout = 5 * time.Minute
	}
	if c.StepTimeout == 0 {
		c.StepTimeout = 5 * time.Minute
	}
}

// Run joins the job and trains until its last step is pushed.
func Run(ctx context.Context, cfg Config) (err error) {
	cfg.defaults()
	if err := wire.ValidJob(cfg.Job); err != nil {
		return err
	}
	keys := jobetcd.KeysFor(cfg.Job)
	log := cfg.Log.With("worker", cfg.ID)

	spec, p, err := job.Find(ctx, cfg.Etcd, cfg.Job, cfg.WaitTimeout)
	if err != nil {
		return err
	}
	lease, err := jobetcd.Grant(ctx, cfg.Etcd, cfg.LeaseTTL)
	if err != nil {
		return err
	}
	defer lease.Close()
	// Losing the lease (a long freeze, a partition) ends the worker's
	// membership: whatever it is doing or waiting for stops, fenced.
	ctx, fence := context.WithCancelCause(ctx)
	defer fence(nil)
	go func() {
		select {
		case <-lease.Lost():
			fence(fmt.Errorf("%w: lost the etcd lease: this worker is no longer a member of the job", ErrFenced))
		case <-ctx.Done():
		}
	}()
	defer func() {
		if c := context.Cause(ctx); errors.Is(c, ErrFenced) {
			err = c
		}
	}()
	if _, err := cfg.Etcd.Put(ctx, keys.Worker(cfg.ID), "{}", clientv3.WithLease(lease.ID)); err != nil {
		return fmt.Errorf("registering worker: %w", err)
	}
	// Wait for a rank, as long as the job runs: a spare worker waits until
	// a rank is free, and leaves when the job ends without needing it.
	var assignData []byte
	jobDone := false
	err = jobetcd.WaitPrefix(ctx, cfg.Etcd, keys.Root(), 1<<62, func(kvs map[string][]byte) bool {
		assignData, jobDone = kvs[keys.Assign(cfg.ID)], string(kvs[keys.State()]) == jobetcd.StateDone
		return assignData != nil || jobDone
	})
	if err != nil {
		return fmt.Errorf("waiting for a rank: %w", err)
	}
	if assignData == nil {
		log.Info("the job is done; it did not need this worker")
		return nil
	}
	var a jobetcd.Assignment
	if err := json.Unmarshal(assignData, &a); err != nil {
		return fmt.Errorf("assignment: %w", err)
	}
	err = jobetcd.WaitPrefix(ctx, cfg.Etcd, keys.Shards(), cfg.WaitTimeout, func(kvs map[string][]byte) bool {
		return len(kvs) >= p.Shards
	})
	if err != nil {
		return fmt.Errorf("waiting for %d parameter-server shards: %w", p.Shards, err)
	}
	log.Info("joined", "rank", a.Rank, "epoch", a.Epoch, "data_shard", a.DataShard)

	p, rev, err := job.ReadPlacement(ctx, cfg.Etcd, cfg.Job)
	if err != nil {
		return err
	}
	var pushed int64 // with tasks: the rank's steps so far (its push numbering never goes back)
	for {
		next, nextRev, err := runEra(ctx, cfg, spec, a, p, rev, lease, &pushed)
		if err != nil || next == nil {
			if err == nil {
				log.Info("job done", "rank", a.Rank)
			}
			return err
		}
		// A worker that was given up on (its lease ran out while it was
		// frozen or cut off) has lost its rank: it must not run again.
		cur, err := cfg.Etcd.Get(ctx, keys.Assign(cfg.ID))
		if err != nil {
			return fmt.Errorf("re-reading its rank: %w", err)
		}
		var now jobetcd.Assignment
		if len(cur.Kvs) == 0 || json.Unmarshal(cur.Kvs[0].Value, &now) != nil || now != a {
			return fmt.Errorf("%w: rank %d epoch %d is no longer this worker's", ErrFenced, a.Rank, a.Epoch)
		}
		select {
		case <-lease.Lost():
			return fmt.Errorf("%w: lost the etcd lease", ErrFenced)
		default:
		}
		log.Info("re-placed: resuming", "placement", next.Version, "shards", next.Shards, "at_step", next.Start)
		p, rev = next, nextRev
	}
}

// superseded says whether err is a shard's refusal of a step sent under a
// placement the job has replaced: the worker then waits for the new one (and
// finds itself fenced off, if it was given up on).
func superseded(err error) bool { return errors.Is(err, &wire.Error{Kind: wire.Superseded}) }

// ErrFenced is returned by a worker that is no longer a member of its job.
var ErrFenced = errors.New("fenced off")

// runEra trains under placement p (written at etcd revision rev) from its
// start step to the last step, and reports the rank done, if p is still the
// job's placement by then. If the job is re-placed first, runEra drops what
// it was doing and returns the new placement.
func runEra(ctx context.Context, cfg Config, spec *job.Spec, a jobetcd.Assignment, p *placement.Placement, rev int64,
	lease *jobetcd.Lease, pushed *int64) (*placement.Placement, int64, error) {
	keys := jobetcd.KeysFor(cfg.Job)
	log := cfg.Log.With("worker", cfg.ID)
	var t interface {
		step(ctx context.Context, s at) error
		close()                                   // stops what is still in flight
		clock(ctx context.Context) (int64, error) // the shards' slowest clock
		idle(ctx context.Context) error           // elastic ssp: no work for now
	}
	var err error
	if spec.Model == "gan" {
		t, err = newGANTrainer(cfg, spec, a, p)
	} else {
		t, err = newTrainer(cfg, spec, a, p)
	}
	if err != nil {
		return nil, 0, err
	}
	defer t.close()
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	type era struct {
		p   *placement.Placement
		rev int64
		err error
	}
	nextCh := make(chan era, 1)
	go func() {
		next, rev, err := job.NextPlacement(ectx, cfg.Etcd, cfg.Job, p.Version)
		if next != nil || err == nil && spec.UsesTasks() {
			cancel() // drop the step in flight: it belongs to the old placement (or, with tasks, the job is done)
		}
		nextCh <- era{next, rev, err}
	}()
	// next waits for the next placement: the job rolled back or was
	// re-placed. Once this rank has finished (finished), the job's end is
	// the normal way out; before, it means the job ended without this rank.
	next := func(finished bool) (*placement.Placement, int64, error) {
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
	if spec.UsesTasks() {
		err := runTasks(ectx, cfg, spec, t, lease, pushed)
		if ectx.Err() != nil && ctx.Err() == nil || superseded(err) { // re-placed, or the job is done
			return next(true)
		}
		return nil, 0, err
	}
	first := p.Start
	if spec.Mode == placement.SSP && a.Epoch > 1 {
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
		select {
		case <-lease.Lost():
			return nil, 0, fmt.Errorf("%w: lost the etcd lease: this worker is no longer a member of the job", ErrFenced)
		default:
		}
		if err := t.step(ectx, at{Shard: a.DataShard, Data: step, N: step, Last: step == spec.Steps-1}); err != nil {
			if ectx.Err() != nil && ctx.Err() == nil || superseded(err) { // re-placed
				return next(false)
			}
			return nil, 0, err
		}
	}
	if err := cfg.NATS.FlushTimeout(5 * time.Second); err != nil { // the last progress report goes out before "done"
		log.Warn("flushing progress", "err", err)
	}
	// Done counts only if the placement this rank ran under is still the
	// job's: else the job rolled back, and this rank reruns from there.
	r, err := cfg.Etcd.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(keys.Placement()), "=", rev)).
		Then(clientv3.OpPut(keys.Done(a.Rank), strconv.FormatUint(a.Epoch, 10))).
		Commit()
	if err != nil {
		return nil, 0, fmt.Errorf("reporting rank %d done: %w", a.Rank, err)
	}
	if !r.Succeeded {
		return next(false)
	}
	// Stay until the job is done: if it rolls back first, this rank reruns
	// its steps from the checkpoint.
	log.Info("finished its steps; waiting for the job to end", "rank", a.Rank, "steps", spec.Steps)
	return next(true)
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
func runTasks(ctx context.Context, cfg Config, spec *job.Spec, t interface {
	step(ctx context.Context, s at) error
	clock(ctx context.Context) (int64, error)
	idle(ctx context.Context) error
}, lease *jobetcd.Lease, pushed *int64) error {
	keys := jobetcd.KeysFor(cfg.Job)
	log := cfg.Log.With("worker", cfg.ID)
	var last jobetcd.Task
	for {
		var task jobetcd.Task
		err := jobetcd.WaitPrefix(ctx, cfg.Etcd, keys.TaskOf(cfg.ID), 1<<62, func(kvs map[string][]byte) bool {
			task = jobetcd.Task{}
			return json.Unmarshal(kvs[keys.TaskOf(cfg.ID)], &task) == nil && task.ID >= 0 && task != last
		})
		if err != nil {
			return err
		}
		if spec.Mode == placement.SSP {
			clock, err := t.clock(ctx)
			if err != nil {
				return fmt.Errorf("reading the job's clock: %w", err)
			}
			*pushed = max(*pushed, clock)
		}
		log.Info("task", "id", task.ID, "data_shard", task.Shard, "from", task.From, "to", task.To, "attempt", task.Attempts, "clock", *pushed)
		for d := task.From; d < task.To; d++ {
			select {
			case <-lease.Lost():
				return fmt.Errorf("%w: lost the etcd lease: this worker is no longer a member of the job", ErrFenced)
			default:
			}
			if err := t.step(ctx, at{Shard: task.Shard, Data: d, N: *pushed, Last: d == task.To-1}); err != nil {
				return err
			}
			*pushed++
		}
		if spec.Mode == placement.SSP {
			if err := t.idle(ctx); err != nil {
				return fmt.Errorf("saying the rank is idle: %w", err)
			}
		}
		b, _ := json.Marshal(task)
		if _, err := cfg.Etcd.Put(ctx, keys.TaskDone(cfg.ID), string(b)); err != nil {
			return fmt.Errorf("reporting task %d done: %w", task.ID, err)
		}
		last = task
	}
}

func newTrainer(cfg Config, spec *job.Spec, a jobetcd.Assignment, p *placement.Placement) (*trainer, error) {
	client, err := paramserver.NewClient(cfg.NATS, spec.Name, p, a.Rank, a.Epoch)
	if err == nil {
		client.Observe = observe(spec.Name)
	}
	if err != nil {
		return nil, err
	}
	t := &trainer{cfg: cfg, spec: spec, a: a, client: client, model: models.NewSeq2Seq[float32](spec.Seq2Seq)}
	client.ReadOrder(t.model.ReadOrder())
	if spec.NPush > 1 {
		t.acc = make([]float32, len(t.model.Grads()))
	}
	if t.data, err = spec.OpenData(); err != nil {
		return nil, err
	}
	t.model.Hooks = &models.Hooks{
		NeedParams: func(lo, hi int) {
			if t.xfer != nil && t.xerr == nil {
				t.xerr = t.xfer.WaitRange(lo, hi)
			}
		},
		GradsFree: func() {
			if t.xfer != nil && t.xerr == nil {
				t.xerr = t.xfer.WaitPushed()
			}
		},
	}
	return t, nil
}

// clock is the shards' slowest clock.
func (t *trainer) clock(ctx context.Context) (int64, error) { return t.client.Clock(ctx) }

// idle tells the shards this rank has no work for now (elastic ssp).
func (t *trainer) idle(ctx context.Context) error { return t.client.Idle(ctx) }

// settle waits for the transfer in flight, if any, and forgets it.
func (t *trainer) settle() error {
	if t.xfer == nil {
		return nil
	}
	err := t.xfer.Wait()
	if t.xerr != nil {
		err = t.xerr
	}
	t.xstop()
	t.xfer, t.xstop, t.xerr = nil, nil, nil
	return err
}

// close stops a transfer still in flight (when the step loop ends early).
func (t *trainer) close() {
	if t.xfer != nil {
		t.xstop()
		t.xfer.Wait()
		t.xfer = nil
	}
	t.next = nil
}

type trainer struct {
	cfg    Config
	spec   *job.Spec
	a      jobetcd.Assignment
	client *paramserver.Client
	model  *models.Seq2Seq[float32]
	data   shard.Dataset
	acc    []float32 // async with n_push > 1: gradients summed since the last push
	// xfer is the last step's push and this step's pull, in flight while
	// this step's forward pass starts on the parameters already pulled.
	xfer  *paramserver.Transfer
	xstop context.CancelFunc
	xerr  error // the first error the model's hooks met waiting on xfer
	// The transfer moves only the parts of the parameters a batch uses
	// (models.Seq2Seq.Ranges): the push, this step's rows; the pull, the
	// rows of the next step's batch, which is read ahead into next.
	next       *models.SeqBatch
	nextAt     at
	pushRanges [][2]int
	pullRanges [][2]int
	// Loss, tokens and wall time since the last progress report: a report
	// covers every step of its logging interval, not just its last one.
	loss   float64
	tokens int64
	nanos  int64
}

// step runs one step: pull the parameters (in sync and ssp modes, those
// after step applied steps, as far as the mode requires; in async mode,
// whatever the shards hold, every n_fetch steps), compute the gradient of
// this rank's batch, clip it, and push it (in async mode, the sum of the last
// n_push steps' gradients, every n_push steps). When every step pulls and
// pushes, a step's push and the next step's pull go together in the
// background (a Transfer), and the next step's forward pass starts on each
// layer as soon as its parameters have arrived: the communication hides
// behind the computation. The transfer moves only the embedding rows the
// two batches use (the push, this batch's; the pull, the next one's) and
// the other tensors whole: the shards apply what the whole gradient would
// have them apply, so the parameters the next step reads are the same.
func (t *trainer) step(ctx context.Context, s at) error {
	start := time.Now()
	step := s.N
	pipelined := t.spec.NFetch == 1 && t.spec.NPush == 1
	if step%t.spec.NFetch == 0 && t.xfer == nil {
		sctx, cancel := context.WithTimeout(ctx, t.cfg.StepTimeout)
		err := t.client.Pull(sctx, step, t.model.Params())
		cancel()
		if err != nil {
			return fmt.Errorf("step %d: pull: %w", step, err)
		}
	}
	b := t.next
	if b == nil || t.nextAt.Shard != s.Shard || t.nextAt.Data != s.Data {
		// Not the batch the transfer in flight pulled the rows of (the
		// loop moved elsewhere): let it land, then pull everything.
		if t.xfer != nil {
			if err := t.settle(); err != nil {
				return fmt.Errorf("step %d: push and pull: %w", step-1, err)
			}
			sctx, cancel := context.WithTimeout(ctx, t.cfg.StepTimeout)
			err := t.client.Pull(sctx, step, t.model.Params())
			cancel()
			if err != nil {
				return fmt.Errorf("step %d: pull: %w", step, err)
			}
		}
		b = t.data.Batch(t.spec.Seed, s.Shard, s.Data, t.spec.Batch)
	}
	t.next = nil
	loss, tokens := t.model.Loss(b, true)
	if err := t.settle(); err != nil {
		return fmt.Errorf("step %d: push and pull: %w", step-1, err)
	}
	grads := t.model.Grads()
	models.ClipGlobalNorm(grads, t.spec.ClipNorm)
	if t.acc != nil {
		for i, g := range grads {
			t.acc[i] += g
		}
		grads = t.acc
	}
	switch {
	case pipelined && !s.Last:
		t.nextAt = at{Shard: s.Shard, Data: s.Data + 1}
		t.next = t.data.Batch(t.spec.Seed, t.nextAt.Shard, t.nextAt.Data, t.spec.Batch)
		var push, pull [][2]int // nil: whole
		if !t.spec.DenseTransfer {
			t.pushRanges = t.model.Ranges(b, t.pushRanges[:0])
			t.pullRanges = t.model.Ranges(t.next, t.pullRanges[:0])
			push, pull = t.pushRanges, t.pullRanges
		}
		xctx, cancel := context.WithTimeout(ctx, t.cfg.StepTimeout)
		t.xfer, t.xstop = t.client.StartPushPullSparse(xctx, step, grads, t.model.Params(), push, pull), cancel
	case (step+1)%t.spec.NPush == 0 || s.Last:
		sctx, cancel := context.WithTimeout(ctx, t.cfg.StepTimeout)
		err := t.client.Push(sctx, step, grads)
		cancel()
		if err != nil {
			return fmt.Errorf("step %d: push: %w", step, err)
		}
		if t.acc != nil {
			clear(t.acc)
		}
	}
	t.loss += loss
	t.tokens += int64(tokens)
	took := time.Since(start)
	t.nanos += took.Nanoseconds()
	rank := strconv.Itoa(t.a.Rank)
	metrics.WorkerSteps.WithLabelValues(t.spec.Name, rank).Inc()
	metrics.StepSeconds.WithLabelValues(t.spec.Name, rank).Observe(took.Seconds())
	if tokens > 0 {
		metrics.WorkerLoss.WithLabelValues(t.spec.Name, rank).Set(loss / float64(tokens))
	}
	if rank, at := s.progress(t.spec, t.a.Rank); at%t.spec.LogEvery == 0 || s.Last {
		data, _ := wire.Encode(&wire.Progress{V: wire.Version, Rank: rank, Step: at, Loss: t.loss,
			Tokens: t.tokens, Nanos: t.nanos})
		t.loss, t.tokens, t.nanos = 0, 0, 0
		if err := t.cfg.NATS.Publish(wire.ProgressSubject(t.spec.Name), data); err != nil {
			t.cfg.Log.Warn("progress report failed", "err", err)
		}
	}
	return nil
}

// observe is a client's Observe hook that records its requests to the
// shards of job in the metrics.
func observe(job string) func(op paramserver.Op, shard int, d time.Duration, bytes int) {
	return func(op paramserver.Op, shard int, d time.Duration, bytes int) {
		metrics.Request(job, string(op), shard, d, bytes)
	}
}
