package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/latency"
	"github.com/downpour-ml/downpour/internal/metrics"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
	"github.com/downpour-ml/downpour/shard"
)

func newSeq2SeqTrainer(cfg Config, spec *job.Spec, a job.Assignment, p *job.Placement) (*seq2seqTrainer, error) {
	client, err := paramserver.NewClient(cfg.NATS, spec.Name, p, a.Rank, a.Epoch)
	if err == nil {
		client.Observe = observe(spec.Name, cfg.Record)
	}
	if err != nil {
		return nil, err
	}
	t := &seq2seqTrainer{cfg: cfg, spec: spec, a: a, client: client, model: models.NewSeq2Seq[float32](spec.Seq2Seq)}
	client.ReadOrder(t.model.ReadOrder())
	if spec.NPush > 1 {
		t.acc = make([]float32, len(t.model.Grads()))
	}
	if t.data, err = cfg.openData(spec); err != nil {
		return nil, err
	}
	t.model.Hooks = t.hooks()
	return t, nil
}

// clock is the shards' slowest clock.
func (t *seq2seqTrainer) clock(ctx context.Context) (int64, error) { return t.client.Clock(ctx) }

// idle tells the shards this rank has no work for now (elastic ssp).
func (t *seq2seqTrainer) idle(ctx context.Context) error  { return t.client.Idle(ctx) }
func (t *seq2seqTrainer) handover(q *job.Placement) error { return t.client.Handover(q) }

// close stops a transfer still in flight (when the step loop ends early).
func (t *seq2seqTrainer) close() {
	t.abort()
	t.next = nil
}

// seq2seqTrainer trains a Seq2Seq replica: one rank's steps, with the
// push of each step and the pull of the next in flight behind the next
// forward pass.
type seq2seqTrainer struct {
	cfg    Config
	spec   *job.Spec
	a      job.Assignment
	client *paramserver.Client
	model  *models.Seq2Seq[float32]
	data   shard.Dataset
	acc    []float32 // async with n_push > 1: gradients summed since the last push
	// The last step's push and this step's pull, in flight while this
	// step's forward pass starts on the parameters already pulled.
	inFlight
	// The transfer moves only the parts of the parameters a batch uses
	// (models.Seq2Seq.Ranges): the push, this step's rows; the pull, the
	// rows of the next step's batch, which is read ahead into next.
	next       *models.SeqBatch
	nextAt     at
	pushRanges [][2]int
	pullRanges [][2]int
	report     progressReport
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
func (t *seq2seqTrainer) step(ctx context.Context, s at) error {
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
		var err error
		if b, err = t.data.Batch(t.spec.Seed, s.Shard, s.Data, t.spec.Batch); err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
	}
	t.next = nil
	loss, tokens := t.model.Loss(b, true)
	if err := t.settle(); err != nil {
		return fmt.Errorf("step %d: push and pull: %w", step-1, err)
	}
	grads := t.model.Grads()
	t.model.ClipGrads(t.spec.ClipNorm)
	if t.acc != nil {
		for i, g := range grads {
			t.acc[i] += g
		}
		grads = t.acc
	}
	switch {
	case pipelined && !s.Last:
		t.nextAt = at{Shard: s.Shard, Data: s.Data + 1}
		next, err := t.data.Batch(t.spec.Seed, t.nextAt.Shard, t.nextAt.Data, t.spec.Batch)
		if err != nil {
			return fmt.Errorf("step %d: the next batch: %w", step, err)
		}
		t.next = next
		var push, pull [][2]int // nil: whole
		if !t.spec.DenseTransfer {
			t.pushRanges = t.model.Ranges(b, t.pushRanges[:0])
			t.pullRanges = t.model.Ranges(t.next, t.pullRanges[:0])
			push, pull = t.pushRanges, t.pullRanges
			// The next step reads only the rows it pulls: the tables need
			// hold no others (ReleaseEmbeddings).
			t.model.ReleaseEmbeddings()
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
	t.report.step(t.cfg, t.spec, t.a.Rank, s, time.Since(start), loss, 0, int64(tokens))
	return nil
}

// observe is a client's Observe hook that records its requests to the
// shards of job in the metrics
// and in the worker's recorder, if it has one.
func observe(job string, rec *latency.Recorder) func(op paramserver.Op, shard int, d time.Duration, bytes int) {
	m := metrics.NewRequests(job)
	return func(op paramserver.Op, shard int, d time.Duration, bytes int) {
		m.Record(string(op), shard, d, bytes)
		if rec != nil {
			rec.Request(string(op), shard, d)
		}
	}
}
