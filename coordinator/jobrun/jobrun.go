// Package jobrun runs a job's coordinator together with what fills the
// job's run directory: job.json, metrics.jsonl from the workers' progress
// and from held-out evaluations every spec.EvalEvery steps, the curves, and
// the final parameters pulled from the shards into checkpoint/final.ckpt
// (evaluated once more). 'downpour coordinator' and 'downpour train' both
// run a job through it.
package jobrun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/coordinator"
	"github.com/downpour-ml/downpour/internal/app/evaluate"
	"github.com/downpour-ml/downpour/internal/app/telemetry"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/paramserver"
)

// Config is a coordinator's job and where it runs.
type Config struct {
	Store job.Store // the job's
	NATS  *nats.Conn
	Spec  job.Spec
	// Out is the run directory; it must exist.
	Out string
	// Resume, when set, continues a stopped job from its last complete
	// checkpoint (FindResumable).
	Resume *ResumePoint
	// LeaseTTL is the lease, in seconds, of the coordinator's leadership: a
	// standby takes over this long after the leader dies.
	LeaseTTL int
	// Console, when set, is where progress and standing by are printed.
	Console io.Writer
	Log     *slog.Logger
}

// snapshotTimeout bounds each shard's answer to a checkpoint's snapshot
// request.
const snapshotTimeout = 5 * time.Second

// Coordinate runs the coordinator of cfg.Spec and, beside it, the job's
// evaluations and run directory, until the job is done (the collector of
// its progress is returned, closed) or fails.
//
// Several coordinators of a job may run: one leads (an etcd election), the
// others stand by and the oldest takes over when the leader dies, carrying
// on from the job's state in etcd.
func Coordinate(ctx context.Context, cfg Config) (*telemetry.Collector, error) {
	spec, st, nc, log := cfg.Spec, cfg.Store, cfg.NATS, cfg.Log
	// A block that does not fit in a message would end every worker at its
	// first push, and the job would wait for workers that cannot start:
	// refuse it before it starts.
	largest := 0
	for _, b := range job.Place(spec.Tensors(), spec.BlockSize, 1).Blocks {
		largest = max(largest, b.Len)
	}
	if err := wire.FitBlock(largest, nc.MaxPayload()); err != nil {
		return nil, fmt.Errorf("job %s: %w", spec.Name, err)
	}
	lead, tookOver, err := campaign(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer lead.Resign(context.WithoutCancel(ctx)) // a standby takes over at once
	score, err := evaluate.NewScorer(&spec, cfg.Out)
	if err != nil {
		return nil, err
	}
	col, err := telemetry.NewCollector(nc, spec.Name, spec.Workers, spec.Steps, filepath.Join(cfg.Out, "metrics.jsonl"), spec.Unit(), cfg.Console)
	if err != nil {
		return nil, err
	}
	defer col.Close()
	spe, err := spec.StepsPerEpoch()
	if err != nil {
		return nil, err
	}
	ev := &evaluator{spec: &spec, score: score, col: col, nc: nc, st: st, out: cfg.Out, stepsPerEpoch: spe, log: log}
	// Periodic evaluations, while training runs.
	ectx, stopEval := context.WithCancel(ctx)
	finishing := make(chan struct{}) // closed when the job has done its steps
	var evalDone sync.WaitGroup
	evalDone.Go(func() { ev.run(ectx, finishing, cfg.Resume, tookOver) })
	defer func() { stopEval(); evalDone.Wait() }()
	err = coordinator.Run(ctx, st, coordinator.Config{Spec: spec, Log: log, Resume: cfg.Resume != nil, Leader: lead,
		Snapshot: func(ctx context.Context, p *job.Placement, step int64) error {
			c, err := paramserver.NewClient(nc, spec.Name, p, 0, 0)
			if err != nil {
				return err
			}
			return c.Snapshot(ctx, step, snapshotTimeout)
		},
		Reached: func(ctx context.Context, p *job.Placement) (int64, error) {
			c, err := paramserver.NewClient(nc, spec.Name, p, 0, 0)
			if err != nil {
				return 0, err
			}
			reached := int64(-1)
			for _, c := range c.Clocks(ctx, time.Second) {
				reached = max(reached, c)
			}
			if reached < 0 {
				return 0, errors.New("no shard answered")
			}
			return reached, nil
		},
		OnFinish: func(ctx context.Context, p *job.Placement) error {
			// The evaluator may be behind training: its remaining steps
			// are all reached now, so it finishes them (the shards keep
			// each evaluation step's parameters), unless it is stuck.
			close(finishing)
			evalDone.Wait()
			return ev.final(ctx, p)
		}})
	if err != nil {
		return nil, err
	}
	if !col.WaitStep(spec.Steps, 5*time.Second) {
		log.Warn("the last step's progress did not arrive")
	}
	return col, col.Close()
}

// campaign writes job.json into the run directory, refuses a job of the
// same name but another spec, and waits to lead the job (printing, when a
// leader is there, that it stands by). tookOver says whether the job was
// already running when this coordinator came to lead it.
func campaign(ctx context.Context, cfg Config) (lead job.Leadership, tookOver bool, err error) {
	spec, st := cfg.Spec, cfg.Store
	// The run directory describes its job, for the tools that read it later
	// (and for this coordinator, should it be restarted).
	if err := os.WriteFile(filepath.Join(cfg.Out, "job.json"), spec.Encode(), 0o644); err != nil {
		return nil, false, err
	}
	// A coordinator for another job of the same name is refused before it
	// stands by, not when it would take over.
	stored, err := st.StoredSpec(ctx)
	if err != nil {
		return nil, false, err
	} else if stored != nil && !bytes.Equal(stored, spec.Encode()) {
		return nil, false, fmt.Errorf("job %s: %w (stored: %s)", spec.Name, coordinator.ErrSpecConflict, stored)
	}
	host, _ := os.Hostname()
	id := fmt.Sprintf("%s-%d", host, os.Getpid())
	if leader, err := st.Leader(ctx); err == nil && leader != "" && cfg.Console != nil {
		fmt.Fprintf(cfg.Console, "standing by: %s leads job %s\n", leader, spec.Name)
	}
	lead, err = st.Campaign(ctx, id, cfg.LeaseTTL)
	if err != nil {
		return nil, false, err
	}
	// A leader that finds the job already there takes over a running job.
	stored, err = st.StoredSpec(ctx)
	if err != nil {
		lead.Resign(context.WithoutCancel(ctx))
		return nil, false, err
	}
	return lead, stored != nil && cfg.Resume == nil, nil
}
