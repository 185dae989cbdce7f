package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
)

// syntheticTrainer trains the load model (models.SyntheticConfig): a step
// stands for a forward and backward pass of a set length on an accelerator.
// As the real trainers do, the last step's push and this step's pull run in
// the background while the "forward pass" reads the tensors in order, each
// for an equal share of the step time once its parameters have arrived; the
// gradient is written once the push has read the last one's.
type syntheticTrainer struct {
	cfg    Config
	spec   *job.Spec
	a      job.Assignment
	client *paramserver.Client
	w, g   []float32
	u      []float32 // the targets' direction
	spans  [][2]int  // the tensors, in the order the pass reads them
	inFlight
	xferStep int64
	report   progressReport
}

func newSyntheticTrainer(cfg Config, spec *job.Spec, a job.Assignment, p *job.Placement) (*syntheticTrainer, error) {
	client, err := paramserver.NewClient(cfg.NATS, spec.Name, p, a.Rank, a.Epoch)
	if err != nil {
		return nil, err
	}
	client.Observe = observe(spec.Name, cfg.Record)
	n := spec.Synthetic.Params
	t := &syntheticTrainer{cfg: cfg, spec: spec, a: a, client: client,
		w: make([]float32, n), g: make([]float32, n), u: make([]float32, n)}
	models.SyntheticDirection(t.u, spec.Seed)
	ts := spec.Tensors()
	for i, off := range models.Offsets(ts) {
		t.spans = append(t.spans, [2]int{off, off + ts[i].Size()})
	}
	client.ReadOrder(t.spans)
	return t, nil
}

func (t *syntheticTrainer) clock(ctx context.Context) (int64, error) { return t.client.Clock(ctx) }
func (t *syntheticTrainer) idle(ctx context.Context) error           { return t.client.Idle(ctx) }
func (t *syntheticTrainer) handover(q *job.Placement) error          { return t.client.Handover(q) }
func (t *syntheticTrainer) close()                                   { t.abort() }

// step runs step s: the parameters of step s (pulled now, or arriving from
// the transfer in flight), the step time, the gradient of the batch, and the
// push of it with the next step's pull.
func (t *syntheticTrainer) step(ctx context.Context, s at) error {
	start := time.Now()
	var wait time.Duration
	if t.xfer != nil && t.xferStep+1 != s.N {
		if err := t.settle(); err != nil {
			return fmt.Errorf("step %d: push and pull: %w", t.xferStep, err)
		}
	}
	if t.xfer == nil {
		sctx, cancel := context.WithTimeout(ctx, t.cfg.StepTimeout)
		err := t.client.Pull(sctx, s.N, t.w)
		cancel()
		if err != nil {
			return fmt.Errorf("step %d: pull: %w", s.N, err)
		}
		wait += time.Since(start)
	}
	// Each tensor's share of the step ends at a deadline: the later of the
	// last one's and its parameters' arrival, plus the share. (Deadlines,
	// not sleeps of a share each, so that a timer's lateness is not added
	// up over the tensors.)
	per := t.spec.Synthetic.StepTime() / time.Duration(len(t.spans))
	end := time.Now()
	for _, sp := range t.spans {
		if t.xfer != nil && t.xerr == nil {
			w0 := time.Now()
			t.xerr = t.xfer.WaitRange(sp[0], sp[1])
			if w := time.Since(w0); w > 100*time.Microsecond { // it waited: the share starts on arrival
				wait += w
				end = later(end, w0.Add(w))
			}
		}
		end = end.Add(per)
		if err := sleep(ctx, time.Until(end)); err != nil {
			return err
		}
	}
	if t.cfg.Record != nil {
		t.cfg.Record.Late(max(0, time.Since(end)))
	}
	w0 := time.Now()
	if err := t.settle(); err != nil { // the push has read the last gradient
		return fmt.Errorf("step %d: push and pull: %w", s.N-1, err)
	}
	wait += time.Since(w0)
	loss := models.SyntheticGrad(t.g, t.w, t.u, models.SyntheticScale(t.spec.Seed, s.Shard, s.Data))
	if s.Last {
		sctx, cancel := context.WithTimeout(ctx, t.cfg.StepTimeout)
		err := t.client.Push(sctx, s.N, t.g)
		cancel()
		if err != nil {
			return fmt.Errorf("step %d: push: %w", s.N, err)
		}
	} else {
		xctx, cancel := context.WithTimeout(ctx, t.cfg.StepTimeout)
		t.xfer, t.xstop, t.xferStep = t.client.StartPushPull(xctx, s.N, t.g, t.w), cancel, s.N
	}
	if t.cfg.Record != nil {
		t.cfg.Record.Step(wait)
	}
	// The loss is a whole batch's: it counts as each of its examples'.
	t.report.step(t.cfg, t.spec, t.a.Rank, s, time.Since(start), loss*float64(t.spec.Batch), 0, int64(t.spec.Batch))
	return nil
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
