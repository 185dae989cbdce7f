package worker

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/metrics"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
	"github.com/downpour-ml/downpour/shard"
)

// seatTrainer runs one seat of a Seq2Seq replica laid out over seats
// (job.Spec.Stages, SoftmaxSlices): rank r is seat r mod Seats of replica
// r / Seats. Every seat of a replica reads the replica's batch (its data
// shard's); each step it pulls only its own tensors (stage 0: only the
// embedding rows the batch uses), runs its part of the step with the other
// seats over a SeatLink (models.SeatStep), and pushes only its own
// tensors' gradients, as its own rank: the shards wait, for each block,
// for the seat of every replica that holds it. The top stage reports the
// replica's progress.
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
	pulled  int64 // the step whose parameters the model holds; -1: none
	ready   bool  // every seat of the replica listens (SeatLink.Ready)
	wait    prometheus.Counter
	inFlight
	next   *models.SeqBatch
	nextAt at
	push   [][2]int
	pull   [][2]int
	report progressReport
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
	if t.data, err = cfg.openData(spec); err != nil {
		return nil, err
	}
	if t.link, err = NewSeatLink(cfg.NATS, spec.Name, t.replica, t.seat, seats, cfg.StepTimeout); err != nil {
		return nil, err
	}
	t.wait = metrics.SeatWait.WithLabelValues(spec.Name, strconv.Itoa(t.replica), strconv.Itoa(t.seat))
	return t, nil
}

func (t *seatTrainer) clock(ctx context.Context) (int64, error) { return t.client.Clock(ctx) }
func (t *seatTrainer) idle(ctx context.Context) error           { return t.client.Idle(ctx) }

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
	if !t.ready {
		if err := t.link.Ready(ctx, uint64(t.version)); err != nil {
			return fmt.Errorf("step %d: the replica's seats: %w", step, err)
		}
		t.ready = true
	}
	b := t.next
	if b == nil || t.nextAt != (at{Shard: s.Shard, Data: s.Data}) || t.pulled != step {
		// Not what the last transfer pulled for: let it land, and pull
		// this batch's part.
		if err := t.settle(); err != nil {
			return fmt.Errorf("step %d: push and pull: %w", step-1, err)
		}
		var err error
		if b, err = t.data.Batch(t.spec.Seed, s.Shard, s.Data, t.spec.Batch); err != nil {
			return fmt.Errorf("step %d: %w", step, err)
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
	t.link.Begin(uint64(t.version), step)
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
		t.nextAt = at{Shard: s.Shard, Data: s.Data + 1}
		next, err := t.data.Batch(t.spec.Seed, t.nextAt.Shard, t.nextAt.Data, t.spec.Batch)
		if err != nil {
			cancel()
			return fmt.Errorf("step %d: the next batch: %w", step, err)
		}
		t.next = next
		t.pull = t.seatRanges(t.next, t.pull[:0])
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
