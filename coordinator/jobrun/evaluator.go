package jobrun

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/app/evaluate"
	"github.com/downpour-ml/downpour/internal/app/telemetry"
	"github.com/downpour-ml/downpour/internal/checkpoint"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/paramserver"
)

// finishEvalWait bounds how long a finished job waits for each of its
// evaluator's pulls (not its scoring) before giving up on the evaluations
// left: the shards have reached every step, so a pull that waits is stuck.
const finishEvalWait = time.Minute

// evaluator pulls the parameters of the job's evaluation steps from the
// shards and scores them on the job's held-out data.
type evaluator struct {
	spec  *job.Spec
	score evaluate.Scorer
	col   *telemetry.Collector
	nc    *nats.Conn
	st    job.Store
	// The curves in the run directory are drawn again after each evaluation.
	out           string
	stepsPerEpoch float64
	log           *slog.Logger
}

// run evaluates every spec.EvalEvery steps before the last, from the first
// such step not yet evaluated, until ctx ends or, once finishing is closed,
// a pull is stuck.
func (e *evaluator) run(ctx context.Context, finishing <-chan struct{}, resume *ResumePoint, tookOver bool) {
	spec := e.spec
	if spec.EvalEvery == 0 {
		return
	}
	if _, _, err := e.st.Find(ctx, 5*time.Minute); err != nil {
		return
	}
	step := spec.EvalEvery
	if resume != nil {
		// The first evaluation at or after the checkpoint resumed from: at
		// the checkpoint's own step too, since the stopped run may have
		// stopped before evaluating it.
		step = max(spec.EvalEvery, (resume.From+spec.EvalEvery-1)/spec.EvalEvery*spec.EvalEvery)
	}
	// A coordinator that takes over a running job evaluates from where the
	// job is, not the steps already gone by.
	if tookOver {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if clock, err := e.clock(cctx); err == nil && clock > step {
			step = (clock/spec.EvalEvery + 1) * spec.EvalEvery
		}
		cancel()
	}
	for ; step < spec.Steps; step += spec.EvalEvery {
		params, err := e.pullBefore(ctx, finishing, step, spec.Mode == job.Sync)
		if errors.Is(err, &wire.Error{Kind: wire.Gone}) {
			// A placement change (or a takeover) lost the shards' copy of
			// this step: evaluate the next one.
			e.log.Warn("skipping an evaluation: the shards no longer hold its step", "step", step, "err", err)
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// This evaluation is lost; the next ones need not be.
			e.log.Warn("evaluation pull failed", "step", step, "err", err)
			continue
		}
		e.eval(step, params)
	}
}

// final pulls the job's final parameters, writes them to
// checkpoint/final.ckpt in the run directory and evaluates them.
func (e *evaluator) final(ctx context.Context, p *job.Placement) error {
	spec := e.spec
	params, err := e.pull(ctx, spec.Steps, false)
	if err != nil {
		return fmt.Errorf("pulling the final parameters: %w", err)
	}
	ckpt := filepath.Join(e.out, "checkpoint", "final.ckpt")
	if err := os.MkdirAll(filepath.Dir(ckpt), 0o755); err != nil {
		return err
	}
	if err := checkpoint.Write(ckpt, &checkpoint.Meta{Job: spec.Name, Step: spec.Steps, Model: spec.Model,
		Config: spec.Encode(), Tensors: p.Tensors}, params); err != nil {
		return err
	}
	e.eval(spec.Steps, params)
	return nil
}

// clock is the job's step as the shards tell it.
func (e *evaluator) clock(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	p, _, err := e.st.Placement(ctx)
	if err != nil {
		return 0, err
	}
	c, err := paramserver.NewClient(e.nc, e.spec.Name, p, 0, 0)
	if err != nil {
		return 0, err
	}
	return c.Clock(ctx)
}

// pullBefore is pull, given up finishEvalWait after finishing is closed.
func (e *evaluator) pullBefore(ctx context.Context, finishing <-chan struct{}, step int64, exact bool) ([]float32, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-finishing:
		case <-ctx.Done():
			return
		}
		select {
		case <-time.After(finishEvalWait):
			cancel()
		case <-ctx.Done():
		}
	}()
	return e.pull(ctx, step, exact)
}

// pull reads the parameters after step (exactly at step, for an exact
// pull) from the shards, under the job's current placement; if the job is
// re-placed meanwhile, it starts over under the new one. It waits for the
// job to reach step however long that takes (an evaluation every 12,500
// steps of a GAN run is 10 minutes or more away): ctx ends it with the job.
func (e *evaluator) pull(ctx context.Context, step int64, exact bool) ([]float32, error) {
	for {
		p, _, err := e.st.Placement(ctx)
		if err != nil {
			return nil, err
		}
		c, err := paramserver.NewClient(e.nc, e.spec.Name, p, 0, 0)
		if err != nil {
			return nil, err
		}
		params := make([]float32, p.Size())
		pctx, moved := context.WithCancel(ctx)
		go func() {
			if next, _, _ := e.st.NextPlacement(pctx, p.Version); next != nil {
				moved()
			}
		}()
		if exact {
			err = c.PullExact(pctx, step, params)
		} else {
			err = c.Pull(pctx, step, params)
		}
		// A newer placement: the watch saw it, or the shards said so first
		// (placement 1 was read just before a resume wrote placement 2).
		again := pctx.Err() != nil && ctx.Err() == nil
		moved()
		if errors.Is(err, &wire.Error{Kind: wire.Superseded}) && ctx.Err() == nil {
			again = true
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
		if !again {
			return params, err
		}
	}
}

// eval scores params of step, records the score and draws the curves.
func (e *evaluator) eval(step int64, params []float32) {
	if r, ok := e.score(step, params); ok {
		r.Step = step
		e.col.WriteEval(r)
	}
	if err := telemetry.Curves(filepath.Join(e.out, "metrics.jsonl"), e.out, e.stepsPerEpoch); err != nil {
		e.log.Warn("drawing the curves", "err", err)
	}
}
