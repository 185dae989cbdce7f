package worker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/metrics"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
	"github.com/downpour-ml/downpour/shard"
)

// seatTrainer runs one seat of a Seq2Seq replica laid out over seats
// (job.Spec.Stages, SoftmaxSlices): rank r is seat r mod Seats of replica
// r / Seats. Seat 0 alone reads the replica's batches (its data shard's)
// and orders each step to the others with what they need of it (its
// shape and labels: SeatLink.SendOrder); each step every seat pulls only
// its own tensors (stage 0: only the embedding rows the batch uses), runs
// its part of the step with the other seats over a SeatLink
// (models.SeatStep), and pushes only its own tensors' gradients, as its
// own rank: the shards wait, for each block, for the seat of every
// replica that holds it. The top stage reports the replica's progress.
type seatTrainer struct {
	cfg     Config
	spec    *job.Spec
	a       job.Assignment
	replica int
	seat    int
	plan    models.StagePlan
	version int64 // the placement's: the seats' messages are of this era
	client  *paramserver.Client
	link    *SeatLink
	model   *models.Seq2Seq[float32]
	data    shard.Dataset
	pulled  int64  // the step whose parameters the model holds; -1: none
	era     uint64 // the replica's formation's (SeatLink.Ready); 0: not formed
	begun   int64  // how many of the replica's steps its seats had begun when it formed
	wait    prometheus.Counter
	dropped prometheus.Counter
	inFlight
	next   *models.SeqBatch
	nextAt at
	push   [][2]int
	pull   [][2]int
	report progressReport
	// Of a seat other than 0: the order runSeatTasks took for the next
	// step (nil: the step waits for it), and the batch it makes of orders.
	order  *SeatOrder
	shaped models.SeqBatch
}

func newSeatTrainer(cfg Config, spec *job.Spec, a job.Assignment, p *job.Placement) (*seatTrainer, error) {
	plan, err := spec.Plan()
	if err != nil {
		return nil, err
	}
	seats := plan.Seats()
	t := &seatTrainer{cfg: cfg, spec: spec, a: a, replica: a.Rank / seats, seat: a.Rank % seats, plan: plan, version: p.Version, pulled: -1}
	// The seat holds its own tensors alone, packed in order: the client
	// moves them through a placement of its blocks at those offsets.
	t.model = models.NewSeq2SeqHolding[float32](spec.Seq2Seq, plan.SeatTensors(spec.Seq2Seq)[t.seat])
	t.model.Hooks = t.hooks()
	if t.client, err = paramserver.NewClient(cfg.NATS, spec.Name, heldPlacement(p, t.model.Offsets()), a.Rank, a.Epoch); err != nil {
		return nil, err
	}
	t.client.Observe = observe(spec.Name, cfg.Record)
	if t.seat == 0 { // the replica's reader
		if t.data, err = cfg.openData(spec); err != nil {
			return nil, err
		}
	}
	if t.link, err = NewSeatLink(cfg.NATS, spec.Name, t.replica, t.seat, seats, cfg.StepTimeout); err != nil {
		return nil, err
	}
	t.wait = metrics.SeatWait.WithLabelValues(spec.Name, strconv.Itoa(t.replica), strconv.Itoa(t.seat))
	t.dropped = metrics.SeatDropped.WithLabelValues(spec.Name, strconv.Itoa(t.replica), strconv.Itoa(t.seat))
	return t, nil
}

func (t *seatTrainer) clock(ctx context.Context) (int64, error) { return t.client.Clock(ctx) }
func (t *seatTrainer) idle(ctx context.Context) error           { return t.client.Idle(ctx) }
func (t *seatTrainer) handover(q *job.Placement) error          { return t.client.Handover(q) }

func (t *seatTrainer) close() {
	t.abort()
	t.next = nil
	t.link.Close()
}

// step runs the seat's part of step s: the parameters of its tensors after
// s steps (pulled with the last step's push, or on their own), the batch's
// forward and backward passes with the other seats, the clip of the
// replica's gradient, and the push of its part (with the pull of the next
// step's, in the background until the next step begins).
func (t *seatTrainer) step(ctx context.Context, s at) error {
	start := time.Now()
	step := s.N
	if t.era == 0 {
		if err := t.form(ctx); err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
	}
	b, err := t.batch(ctx, s)
	if err != nil {
		return fmt.Errorf("step %d: %w", step, err)
	}
	if t.pulled != step {
		// Not what the last transfer pulled for: let it land, and pull
		// this batch's part.
		if err := t.settle(); err != nil {
			return fmt.Errorf("step %d: push and pull: %w", step-1, err)
		}
		t.pull = t.seatRanges(b, t.pull[:0])
		sctx, cancel := context.WithTimeout(ctx, t.cfg.StepTimeout)
		err = t.client.PullRanges(sctx, step, t.model.Params(), t.pull)
		cancel()
		if err != nil {
			return fmt.Errorf("step %d: pull: %w", step, err)
		}
	}
	t.next, t.pulled = nil, -1
	t.link.Begin(t.era, step)
	stop := t.link.SeatContext(ctx) // a re-placement ends the step's waits
	waited := t.link.Stats().Waited
	// The last step's push and this step's pull may still be in flight:
	// the model's hooks wait for each tensor's parameters as the step
	// reaches it, and for the push before the backward pass writes the
	// gradients.
	loss, tokens, err := t.model.SeatStep(t.plan, t.seat, b, t.spec.StageChunk(), t.spec.ClipNorm, t.link)
	stop()
	t.wait.Add((t.link.Stats().Waited - waited).Seconds())
	if xerr := t.settle(); err == nil && xerr != nil {
		err = fmt.Errorf("push and pull of step %d: %w", step-1, xerr)
	}
	if err != nil {
		return fmt.Errorf("step %d: seat %d of replica %d: %w", step, t.seat, t.replica, err)
	}
	t.push = t.seatRanges(b, t.push[:0])
	sctx, cancel := context.WithTimeout(ctx, t.cfg.StepTimeout)
	if s.Last {
		err := t.client.StartPushPullSparse(sctx, step, t.model.Grads(), t.model.Params(), t.push, [][2]int{}).Wait()
		cancel()
		if err != nil {
			return fmt.Errorf("step %d: push: %w", step, err)
		}
	} else {
		// The next step's pull goes with this one's push: the reader
		// reads the next batch now for its rows (the batch a task's next
		// step reads; if another comes, the step pulls again); another
		// seat's pull is all of its tensors, whatever the batch.
		next := &models.SeqBatch{}
		if t.seat == 0 {
			t.nextAt = at{Shard: s.Shard, Data: s.Data + 1}
			var err error
			if next, err = t.data.Batch(t.spec.Seed, t.nextAt.Shard, t.nextAt.Data, t.spec.Batch); err != nil {
				cancel()
				return fmt.Errorf("step %d: the next batch: %w", step, err)
			}
			t.next = next
		}
		t.pull = t.seatRanges(next, t.pull[:0])
		if !t.spec.DenseTransfer {
			// Every step pulls the rows it reads: the tables need hold no
			// others (a stage 0 of the paper's model held 960 MB of them).
			t.model.ReleaseEmbeddings()
		}
		t.xfer, t.xstop = t.client.StartPushPullSparse(sctx, step, t.model.Grads(), t.model.Params(), t.push, t.pull), cancel
		t.pulled = step + 1
	}
	if t.seat == t.plan.Stages-1 {
		t.report.step(t.cfg, t.spec, t.replica, s, time.Since(start), loss, 0, int64(tokens))
	}
	return nil
}

// batch is step s's batch: the reader's (seat 0) from its data, which it
// orders to the other seats with what they need of it; another seat's
// from that order (the one runSeatTasks took, or the next), with zeros
// for the tokens it does not read.
func (t *seatTrainer) batch(ctx context.Context, s at) (*models.SeqBatch, error) {
	if t.seat == 0 {
		b := t.next
		if b == nil || t.nextAt != (at{Shard: s.Shard, Data: s.Data}) {
			t.pulled = -1 // what is in flight was pulled for another batch
			var err error
			if b, err = t.data.Batch(t.spec.Seed, s.Shard, s.Data, t.spec.Batch); err != nil {
				return nil, err
			}
		}
		t.next = nil
		err := t.link.SendOrder(SeatOrder{N: s.N, Shard: s.Shard, At: s.Data, Last: s.Last,
			Size: b.Size, SrcLen: b.SrcLen, TgtLen: b.TgtLen, Labels: b.TgtOut})
		return b, err
	}
	o := t.order
	t.order = nil
	if o == nil {
		octx, cancel := context.WithTimeout(ctx, t.cfg.StepTimeout)
		got, err := t.link.NextOrder(octx)
		cancel()
		if err != nil {
			if octx.Err() != nil && ctx.Err() == nil {
				err = fmt.Errorf("%w: seat 0's order, after %v", ErrSeatTimeout, t.cfg.StepTimeout)
			}
			return nil, err
		}
		o = &got
	}
	if o.N != s.N || o.Shard != s.Shard || o.At != s.Data {
		return nil, fmt.Errorf("%w: seat 0 ordered step %d (data step %d of shard %d), this seat runs step %d (%d of %d)", ErrSeatLost, o.N, o.At, o.Shard, s.N, s.Data, s.Shard)
	}
	b := &t.shaped // (SeatStep keeps nothing of it past the step)
	b.Size, b.SrcLen, b.TgtLen, b.TgtOut = o.Size, o.SrcLen, o.TgtLen, o.Labels
	b.Src = zeros(b.Src, o.Size*o.SrcLen)
	b.TgtIn = zeros(b.TgtIn, o.Size*o.TgtLen)
	return b, nil
}

// zeros is n zeros, in buf's memory where it is large enough.
func zeros(buf []int32, n int) []int32 {
	if cap(buf) < n {
		return make([]int32, n)
	}
	buf = buf[:n]
	clear(buf)
	return buf
}

// form waits for the replica's seats to form (SeatLink.Ready): every one
// listening, all agreeing on who holds each seat.
func (t *seatTrainer) form(ctx context.Context) error {
	f, err := t.link.Ready(ctx, uint64(t.version), t.a.Epoch)
	if err != nil {
		return fmt.Errorf("the replica's seats: %w", err)
	}
	t.era, t.begun = f.Era, f.Begun
	return nil
}

// drop forgets the step that failed (the replica lost a seat, or a seat
// sent what could not be used): the next forms the replica again and
// pulls its parameters afresh. What the step pushed stays pushed: a retry
// under the same step number is a duplicate the shards drop.
func (t *seatTrainer) drop() {
	t.abort()
	t.era, t.next, t.pulled, t.order = 0, nil, -1, nil
	t.dropped.Inc()
}

// broken says whether err is the replica's, not this seat's: a seat that
// died, rejoined or sent what could not be used. The seat drops the step
// and forms the replica again (async, ssp).
func broken(err error) bool {
	return errors.Is(err, ErrSeatTimeout) || errors.Is(err, ErrSeatLost) || errors.Is(err, ErrSeatRejoined) ||
		errors.Is(err, models.ErrSeatMessage) || wire.ErrKind(err) == wire.Malformed
}

// runSeatTasks (async, ssp) runs a laid-out replica's tasks: seat 0 takes
// them from the coordinator as runTasks does, and its steps order
// themselves to the other seats (seatTrainer.batch), which run what they
// are ordered. A step the replica loses (a seat died, or rejoined) is
// dropped, the replica forms again around the seat's new holder, and seat
// 0 orders the step again under the same step number (the shards drop
// what was pushed of it before, as duplicates), or, if it is a new seat 0,
// goes on with a task of its own after the steps any seat had begun. The
// task of a seat 0 that died goes back to the queue, as any worker's.
func runSeatTasks(ctx context.Context, cfg Config, spec *job.Spec, t *seatTrainer, lease job.Lease, pushed *int64) error {
	log := cfg.Log.With("worker", cfg.ID, "replica", t.replica, "seat", t.seat)
	// formLoop forms the replica; a seat that cannot (no other seat
	// answers in time) keeps trying while the job runs. reform does so
	// after a step was lost; in ssp the seat is idle meanwhile, not
	// holding the other replicas back.
	formLoop := func() error {
		for {
			if err := leaseLost(lease); err != nil {
				return err
			}
			err := t.form(ctx)
			if err == nil || ctx.Err() != nil || !broken(err) {
				return err
			}
			log.Warn("forming the replica", "err", err)
		}
	}
	reform := func(step int64, why error) error {
		log.Warn("the replica lost the step: forming it again", "step", step, "err", why)
		t.drop()
		if err := idleInSSP(ctx, spec, t); err != nil {
			return err
		}
		return formLoop()
	}
	if t.seat != 0 {
		for {
			if err := leaseLost(lease); err != nil {
				return err
			}
			if t.era == 0 {
				if err := formLoop(); err != nil {
					return err
				}
			}
			o, err := t.link.NextOrder(ctx)
			if err == nil {
				t.order = &o
				err = t.step(ctx, at{Shard: o.Shard, Data: o.At, N: o.N, Last: o.Last})
			}
			switch {
			case err != nil && ctx.Err() == nil && broken(err):
				if err := reform(o.N, err); err != nil {
					return err
				}
			case err != nil:
				return err
			case o.Last:
				if err := idleInSSP(ctx, spec, t); err != nil {
					return err
				}
			}
		}
	}
	var last job.Task
	for {
		task, err := nextTask(ctx, cfg, spec, t, last, pushed)
		if err != nil {
			return err
		}
		retry := false // the step at d was lost: order it again
		for d := task.From; d < task.To; {
			if err := leaseLost(lease); err != nil {
				return err
			}
			if t.era == 0 {
				if err := formLoop(); err != nil {
					return err
				}
				// Number the steps after any a seat has begun, unless
				// this is the lost step again and no seat went past it.
				if !retry || t.begun > *pushed+1 {
					*pushed = max(*pushed, t.begun)
				}
			}
			s := at{Shard: task.Shard, Data: d, N: *pushed, Last: d == task.To-1}
			if err := t.step(ctx, s); err != nil { // (which orders it to the other seats)
				if ctx.Err() != nil || !broken(err) {
					return err
				}
				if err := reform(s.N, err); err != nil {
					return err
				}
				retry = true
				continue
			}
			*pushed++
			d++
			retry = false
		}
		if err := taskDone(ctx, cfg, spec, t, task); err != nil {
			return err
		}
		last = task
	}
}

// seatRanges appends to dst the parts of the seat's vector a step of b
// reads and writes: its tensors, and of its embedding tables only the rows
// b uses (all of them with a dense transfer).
func (t *seatTrainer) seatRanges(b *models.SeqBatch, dst [][2]int) [][2]int {
	if t.spec.DenseTransfer {
		return append(dst, [2]int{0, len(t.model.Params())})
	}
	return t.model.Ranges(b, dst)
}

// heldPlacement is p's blocks of the tensors a seat holds, at their offsets
// in its vector (offs: each tensor's, -1 for one it does not hold).
func heldPlacement(p *job.Placement, offs []int) *job.Placement {
	q := *p
	q.Blocks = nil
	full := models.Offsets(p.Tensors)
	for _, b := range p.Blocks {
		if off := offs[b.Tensor]; off >= 0 {
			b.Offset = off + b.Offset - full[b.Tensor]
			q.Blocks = append(q.Blocks, b)
		}
	}
	return &q
}
