package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/coordinator"
	"github.com/downpour-ml/downpour/internal/auth"
	"github.com/downpour-ml/downpour/internal/checkpoint"
	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/psnode"
	"github.com/downpour-ml/downpour/internal/telemetry"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
	"github.com/downpour-ml/downpour/shard"
	"github.com/downpour-ml/downpour/worker"
)

// coordinate runs the coordinator of spec and, beside it, what fills the run
// directory out: metrics.jsonl from the workers' progress and from held-out
// evaluations every spec.EvalEvery steps, and the final parameters pulled
// from the shards into checkpoint/final.ckpt (evaluated once more).
//
// Several coordinators of a job may run: one leads (an etcd election), the
// others stand by and the oldest takes over when the leader dies, carrying
// on from the job's state in etcd.
func coordinate(ctx context.Context, cli *clientv3.Client, nc *nats.Conn, spec job.Spec, out string, resume *resumePoint,
	ttl int, console io.Writer, log *slog.Logger) (*telemetry.Collector, error) {
	// The run directory describes its job, for the tools that read it later
	// (and for this coordinator, should it be restarted).
	if err := os.WriteFile(filepath.Join(out, "job.json"), spec.Encode(), 0o644); err != nil {
		return nil, err
	}
	// A coordinator for another job of the same name is refused before it
	// stands by, not when it would take over.
	r, err := cli.Get(ctx, job.KeysFor(spec.Name).Spec())
	if err != nil {
		return nil, fmt.Errorf("reading job %s: %w", spec.Name, err)
	} else if len(r.Kvs) > 0 && !bytes.Equal(r.Kvs[0].Value, spec.Encode()) {
		return nil, fmt.Errorf("job %s: %w (stored: %s)", spec.Name, coordinator.ErrSpecConflict, r.Kvs[0].Value)
	}
	host, _ := os.Hostname()
	id := fmt.Sprintf("%s-%d", host, os.Getpid())
	if leader, err := coordinator.Leader(ctx, cli, spec.Name); err == nil && leader != "" && console != nil {
		fmt.Fprintf(console, "standing by: %s leads job %s\n", leader, spec.Name)
	}
	lead, err := coordinator.Campaign(ctx, cli, spec.Name, id, ttl)
	if err != nil {
		return nil, err
	}
	defer lead.Resign(context.WithoutCancel(ctx)) // a standby takes over at once
	// A leader that finds the job already there takes over a running job.
	r, err = cli.Get(ctx, job.KeysFor(spec.Name).Spec())
	if err != nil {
		return nil, fmt.Errorf("reading job %s: %w", spec.Name, err)
	}
	tookOver := len(r.Kvs) > 0 && resume == nil
	score, err := newScorer(&spec, out)
	if err != nil {
		return nil, err
	}
	col, err := telemetry.NewCollector(nc, spec.Name, spec.Workers, spec.Steps, filepath.Join(out, "metrics.jsonl"), console)
	if err != nil {
		return nil, err
	}
	defer col.Close()
	spe, err := spec.StepsPerEpoch()
	if err != nil {
		return nil, err
	}
	ev := &evaluator{spec: &spec, score: score, col: col, nc: nc, cli: cli, out: out, stepsPerEpoch: spe, log: log}
	// Periodic evaluations, while training runs.
	ectx, stopEval := context.WithCancel(ctx)
	finishing := make(chan struct{}) // closed when the job has done its steps
	var evalDone sync.WaitGroup
	evalDone.Go(func() {
		if spec.EvalEvery == 0 {
			return
		}
		if _, err := job.Wait(ectx, cli, job.KeysFor(spec.Name).Placement(), 5*time.Minute); err != nil {
			return
		}
		step := spec.EvalEvery
		if resume != nil {
			// The first evaluation at or after the checkpoint resumed from:
			// at the checkpoint's own step too, since the stopped run may
			// have stopped before evaluating it.
			step = max(spec.EvalEvery, (resume.from+spec.EvalEvery-1)/spec.EvalEvery*spec.EvalEvery)
		}
		// A coordinator that takes over a running job evaluates from where
		// the job is, not the steps already gone by.
		if tookOver {
			cctx, cancel := context.WithTimeout(ectx, 10*time.Second)
			if clock, err := ev.clock(cctx); err == nil && clock > step {
				step = (clock/spec.EvalEvery + 1) * spec.EvalEvery
			}
			cancel()
		}
		for ; step < spec.Steps; step += spec.EvalEvery {
			params, err := ev.pullBefore(ectx, finishing, step, spec.Mode == paramserver.Sync)
			if errors.Is(err, &wire.Error{Kind: wire.Gone}) {
				// A placement change (or a takeover) lost the shards'
				// copy of this step: evaluate the next one.
				log.Warn("skipping an evaluation: the shards no longer hold its step", "step", step, "err", err)
				continue
			}
			if err != nil {
				if ectx.Err() != nil {
					return
				}
				// This evaluation is lost; the next ones need not be.
				log.Warn("evaluation pull failed", "step", step, "err", err)
				continue
			}
			ev.eval(step, params)
		}
	})
	defer func() { stopEval(); evalDone.Wait() }()
	ckpt := filepath.Join(out, "checkpoint", "final.ckpt")
	err = coordinator.Run(ctx, cli, coordinator.Config{Spec: spec, Log: log, Resume: resume != nil, Leader: lead,
		Snapshot: func(ctx context.Context, p *paramserver.Placement, step int64) error {
			req, err := wire.Encode(&wire.SnapshotRequest{V: wire.Version, Job: spec.Name, Step: step})
			if err != nil {
				return err
			}
			var errs []error
			for s := 0; s < p.Shards; s++ {
				msg, err := nc.Request(wire.SnapshotSubject(spec.Name, p.Version, s), req, 5*time.Second)
				if err == nil {
					var r *wire.Reply
					if r, err = wire.DecodeReply(msg.Data); err == nil {
						err = r.Err()
					}
				}
				if err != nil {
					errs = append(errs, fmt.Errorf("shard %d: %w", s, err))
				}
			}
			return errors.Join(errs...)
		},
		Reached: func(ctx context.Context, p *paramserver.Placement) (int64, error) {
			reached := int64(-1)
			for _, c := range shardClocks(ctx, nc, spec.Name, p, time.Second) {
				reached = max(reached, c)
			}
			if reached < 0 {
				return 0, errors.New("no shard answered")
			}
			return reached, nil
		},
		OnFinish: func(ctx context.Context, p *paramserver.Placement) error {
			// The evaluator may be behind training: its remaining steps
			// are all reached now, so it finishes them (the shards keep
			// each evaluation step's parameters), unless it is stuck.
			close(finishing)
			evalDone.Wait()
			params, err := ev.pull(ctx, spec.Steps, false)
			if err != nil {
				return fmt.Errorf("pulling the final parameters: %w", err)
			}
			if err := os.MkdirAll(filepath.Dir(ckpt), 0o755); err != nil {
				return err
			}
			if err := checkpoint.Write(ckpt, &checkpoint.Meta{Job: spec.Name, Step: spec.Steps, Model: spec.Model,
				Config: spec.Encode(), Tensors: p.Tensors}, params); err != nil {
				return err
			}
			ev.eval(spec.Steps, params)
			return nil
		}})
	if err != nil {
		return nil, err
	}
	if !col.WaitStep(spec.Steps, 5*time.Second) {
		log.Warn("the last step's progress did not arrive")
	}
	return col, col.Close()
}

// evaluator scores pulled parameters on the job's held-out data.
// coordinatorTTL is the lease, in seconds, of a coordinator's leadership: a
// standby takes over this long after the leader dies.
const coordinatorTTL = 5

// embeddedCoordinatorTTL is the leadership lease of the coordinator of
// `downpour train` on its embedded cluster. No standby can reach that
// cluster, so a short lease buys no failover; it only risks the run, since a
// coordinator whose renewals are starved for a few seconds (a machine busy
// with the run's own compute, GC) loses its leadership and the job ends.
// The price: `train --resume` after the process was killed outright waits
// up to this long for the dead run's lease to run out.
const embeddedCoordinatorTTL = 15

// finishEvalWait bounds how long a finished job waits for each of its
// evaluator's pulls (not its scoring) before giving up on the evaluations
// left: the shards have reached every step, so a pull that waits is stuck.
const finishEvalWait = time.Minute

type evaluator struct {
	spec  *job.Spec
	score func(step int64, params []float32) (telemetry.EvalRecord, bool)
	col   *telemetry.Collector
	nc    *nats.Conn
	cli   *clientv3.Client
	// The curves in the run directory are drawn again after each evaluation.
	out           string
	stepsPerEpoch float64
	log           *slog.Logger
}

// newScorer prepares the evaluation of the job's model: held-out loss,
// BLEU and exact match for Seq2Seq; for the GAN, a Parzen-window estimate
// and a grid of 100 samples, samples/step-<N>.png in the run directory out
// (the same noise every time, so the grids show one set of samples evolve).
func newScorer(spec *job.Spec, out string) (func(int64, []float32) (telemetry.EvalRecord, bool), error) {
	if spec.Model == "gan" {
		m, err := spec.OpenMNIST()
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Join(out, "samples"), 0o755); err != nil {
			return nil, err
		}
		side := int(math.Round(math.Sqrt(float64(spec.GAN.Pixels))))
		return func(step int64, params []float32) (telemetry.EvalRecord, bool) {
			if side*side == spec.GAN.Pixels {
				grid := models.Sample(spec.GAN, params, 100, rand.New(rand.NewPCG(spec.Seed, 0x9e1d)))
				if err := writeGrid(filepath.Join(out, "samples", fmt.Sprintf("step-%d.png", step)), grid, 100, side); err != nil {
					slog.Warn("writing a sample grid", "err", err)
				}
			}
			if spec.ParzenFull {
				r := fullParzen(spec, params, m, parzenSamples)
				return telemetry.EvalRecord{Parzen: r.Mean, ParzenSE: r.StdErr, Sigma: r.Sigma, Samples: parzenSamples, HeldOut: len(m.Test), Set: "test"}, true
			}
			r, n := parzenMonitor(spec, params, m.Valid)
			return telemetry.EvalRecord{Parzen: r.Mean, ParzenSE: r.StdErr, Sigma: r.Sigma, Samples: n, HeldOut: len(m.Valid) / 10, Set: "validation"}, true
		}, nil
	}
	data, err := spec.OpenData()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(out, "translations"), 0o755); err != nil {
		return nil, err
	}
	return func(step int64, params []float32) (telemetry.EvalRecord, bool) {
		held := data.HeldOut()
		if len(held) == 0 {
			return telemetry.EvalRecord{}, false
		}
		r := evaluate(spec, data, params, held)
		if err := writeTranslations(filepath.Join(out, "translations", fmt.Sprintf("step-%d.txt", step)), data, held, r.Hyps, translationsShown); err != nil {
			slog.Warn("writing held-out translations", "err", err)
		}
		return telemetry.EvalRecord{EvalLoss: r.Loss, Perplexity: r.Perplexity, BLEU: r.BLEU, ExactMatch: r.ExactMatch, HeldOut: r.Sentences}, true
	}, nil
}

// translationsShown is how many held-out translations each evaluation
// writes beside their references.
const translationsShown = 10

// writeTranslations writes the first n held-out examples' sources,
// references and translations (hyps, by example) to path, replacing it
// atomically.
func writeTranslations(path string, data shard.Dataset, held []shard.Example, hyps [][]int32, n int) error {
	var b strings.Builder
	for i, ex := range held[:min(n, len(held), len(hyps))] {
		fmt.Fprintf(&b, "source:      %s\nreference:   %s\ntranslation: %s\n\n",
			strings.Join(data.SrcWords(ex.Src), " "), strings.Join(data.TgtWords(ex.Tgt), " "), strings.Join(data.TgtWords(hyps[i]), " "))
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// parzenSamples is how many samples the paper's Parzen-window estimate
// draws.
const parzenSamples = 10000

// fullParzen is the Parzen-window estimate as the GAN paper computed it: n
// samples (the paper: 10,000), drawn from noise from the job's seed; sigma
// from 10 values logspaced over [0.1, 1], by the mean log-likelihood of the
// first 1,000 validation images; mean and standard error over the test
// images.
func fullParzen(spec *job.Spec, params []float32, m *shard.MNIST, n int) models.ParzenResult {
	samples := models.Sample(spec.GAN, params, n, rand.New(rand.NewPCG(spec.Seed, 0xe7a1)))
	return models.Parzen(samples, shard.Flatten(m.Valid[:1000]), shard.Flatten(m.Test), spec.GAN.Pixels, models.SigmaGrid())
}

// parzenMonitor is the during-training estimate: 1,000 samples from noise
// drawn from the seed, sigma chosen on 200 validation images, the estimate
// on 1,000 others (a tenth of the validation set). The paper's full
// evaluation uses 10,000 of each.
func parzenMonitor(spec *job.Spec, params []float32, valid [][]float32) (models.ParzenResult, int) {
	const n = 1000
	samples := models.Sample(spec.GAN, params, n, rand.New(rand.NewPCG(spec.Seed, 0x5a3)))
	return models.Parzen(samples, shard.Flatten(valid[:200]), shard.Flatten(valid[200:1200]), spec.GAN.Pixels, models.SigmaGrid()), n
}

// clock is the job's step as the shards tell it.
func (e *evaluator) clock(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	p, _, err := job.ReadPlacement(ctx, e.cli, e.spec.Name)
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
		p, _, err := job.ReadPlacement(ctx, e.cli, e.spec.Name)
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
			if next, _, _ := job.NextPlacement(pctx, e.cli, e.spec.Name, p.Version); next != nil {
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

func (e *evaluator) eval(step int64, params []float32) {
	if r, ok := e.score(step, params); ok {
		r.Step = step
		e.col.WriteEval(r)
	}
	if err := telemetry.Curves(filepath.Join(e.out, "metrics.jsonl"), e.out, e.stepsPerEpoch); err != nil {
		e.log.Warn("drawing the curves", "err", err)
	}
}

// evaluate scores parameters on examples with greedy decoding.
func evaluate(spec *job.Spec, data shard.Dataset, params []float32, examples []shard.Example) models.EvalResult {
	m := models.NewSeq2Seq[float32](spec.Seq2Seq)
	copy(m.Params(), params)
	src, tgt := make([][]int32, len(examples)), make([][]int32, len(examples))
	for i, ex := range examples {
		src[i], tgt[i] = ex.Src, ex.Tgt
	}
	return models.Evaluate(m, src, tgt, data.Special(), models.EvalOptions{Batch: max(spec.Batch, 32),
		MaxLen: func(n int) int { return 2*n + 10 }, Words: data.TgtWords})
}

// runName names a job's default run directory: the job's name, or for a
// GAN job left with the default name ("demo"), "gan".
func runName(spec *job.Spec) string {
	if spec.Name == job.Default().Name && spec.Model == "gan" {
		return "gan"
	}
	return spec.Name
}

// prepareOut makes the run directory: the default runs/<name>-<time> when
// out is empty, else *out, whose parent must exist. It must not hold an
// earlier run.
func prepareOut(outp *string, name string) error {
	if *outp == "" {
		*outp = filepath.Join("runs", name+"-"+time.Now().Format("20060102-150405"))
		if err := os.MkdirAll("runs", 0o755); err != nil {
			return fmt.Errorf("creating the runs directory: %w", err)
		}
	}
	out := *outp
	parent := filepath.Dir(out)
	if st, err := os.Stat(parent); err != nil || !st.IsDir() {
		return fmt.Errorf("run directory parent %s does not exist: create it or choose another --out", parent)
	}
	if ents, err := os.ReadDir(out); err == nil && len(ents) > 0 {
		return fmt.Errorf("run directory %s already holds a run: choose another --out", out)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("creating run directory: %w", err)
	}
	return nil
}

func cmdCoordinator(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	spec := job.Default()
	jf := specFlags(fs, &spec, args)
	var ep endpoints
	endpointFlags(fs, &ep)
	httpFlag(fs, &ep)
	out := fs.String("out", "", "run directory for metrics.jsonl and the final checkpoint (default runs/<job>-<time>)")
	resume := fs.Bool("resume", false, "continue the stopped job --job from its last complete checkpoint, as it was started (its spec is in etcd); --out may hold its earlier run")
	if err := jf.parse(args, stderr, "downpour coordinator --nats nats://127.0.0.1:4222 --etcd http://127.0.0.1:2379 --job demo --workers 2 --ps-shards 2"); err != nil {
		return err
	}
	if *jf.print && !*resume {
		return printJob(jf, &spec, stdout, stderr)
	}
	if err := ep.require("coordinator", stderr); err != nil {
		return err
	}
	if *resume {
		if err := onlyResumeFlags(fs); err != nil {
			fmt.Fprintf(stderr, "downpour coordinator: %v\n", err)
			return errUsage
		}
	} else {
		jf.finish()
		if err := spec.Validate(); err != nil {
			fmt.Fprintf(stderr, "downpour coordinator: %v\n", err)
			return errUsage
		}
		if err := spec.Resolve(); err != nil {
			return err
		}
	}
	log := ep.logger(stderr)
	cli, err := connectEtcd(ctx, ep, auth.Coordinator)
	if err != nil {
		return err
	}
	defer cli.Close()
	var rp *resumePoint
	if *resume {
		s, r, err := findResumable(ctx, cli, spec.Name)
		if err != nil {
			return err
		}
		spec, rp = s, &r
	}
	// A coordinator restarted with the same run directory (a supervisor
	// restarting it) carries on in it; so does one resuming its job.
	sameJob := false
	if *out != "" {
		b, err := os.ReadFile(filepath.Join(*out, "job.json"))
		sameJob = err == nil && bytes.Equal(b, spec.Encode())
	}
	if (rp != nil || sameJob) && *out != "" {
		if err := os.MkdirAll(*out, 0o755); err != nil {
			return err
		}
	} else if err := prepareOut(out, runName(&spec)); err != nil {
		return err
	}
	nc, err := connectNATS(ep, "coordinator", auth.Coordinator)
	if err != nil {
		return err
	}
	defer nc.Close()
	if rp != nil {
		fmt.Fprintf(stdout, "resuming job %s at step %d of %d; run directory %s\n", spec.Name, rp.from, spec.Steps, *out)
	} else {
		fmt.Fprintf(stdout, "coordinating job %s: %d workers, %d shards, %d steps; run directory %s\n", spec.Name, spec.Workers, spec.Shards, spec.Steps, *out)
	}
	wctx, stop := watchNATS(ctx, nc, ep.giveUp, log)
	defer stop()
	spe, _ := spec.StepsPerEpoch()
	stopDash, err := ep.startDashboard(ctx, &dashboard{job: spec.Name, role: "coordinator", cli: cli, nc: nc, runDir: *out, stepsPerEpoch: spe}, stdout, log)
	if err != nil {
		return err
	}
	defer stopDash()
	_, err = coordinate(wctx, cli, nc, spec, *out, rp, coordinatorTTL, stdout, log)
	err = natsCause(wctx, err)
	if errors.Is(err, coordinator.ErrJobDone) {
		// Another coordinator finished it (this one stood by): nothing to do.
		fmt.Fprintf(stdout, "job %s is done\n", spec.Name)
		return nil
	}
	if err == nil {
		fmt.Fprintf(stdout, "job %s done; final checkpoint in %s\n", spec.Name, filepath.Join(*out, "checkpoint", "final.ckpt"))
	}
	return err
}

func cmdPS(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ps", flag.ContinueOnError)
	var ep endpoints
	endpointFlags(fs, &ep)
	httpFlag(fs, &ep)
	name := fs.String("job", "demo", "job to serve")
	shard := fs.Int("shard", -1, "shard index to serve (-1: the lowest free one)")
	dataDir := fs.String("data-dir", "", "directory for the shard's snapshots (needed when the job checkpoints; one job's: another is refused)")
	restore := fs.String("restore", "", "start from this snapshot file instead of the initial parameters")
	ttl := fs.Int64("lease-ttl", 10, "seconds without a heartbeat after which the job gives this shard up")
	wait := fs.Duration("wait", 5*time.Minute, "how long to wait for the job to appear, and for a shard index to claim")
	if err := parse(fs, args, stderr, "downpour ps --nats nats://127.0.0.1:4222 --etcd http://127.0.0.1:2379 --job demo"); err != nil {
		return err
	}
	if err := ep.require("ps", stderr); err != nil {
		return err
	}
	cli, err := connectEtcd(ctx, ep, auth.PS)
	if err != nil {
		return err
	}
	defer cli.Close()
	nc, err := connectNATS(ep, "ps", auth.PS)
	if err != nil {
		return err
	}
	defer nc.Close()
	log := ep.logger(stderr)
	wctx, stop := watchNATS(ctx, nc, ep.giveUp, log)
	defer stop()
	// A shard may only answer requests, not ask other shards for their
	// clocks: its dashboard shows the job without them.
	stopDash, err := ep.startDashboard(ctx, &dashboard{job: *name, role: "ps", cli: cli}, stdout, log)
	if err != nil {
		return err
	}
	defer stopDash()
	return natsCause(wctx, psnode.Run(wctx, psnode.Config{Job: *name, NATS: nc, Etcd: cli, Log: log, Shard: *shard,
		DataDir: *dataDir, Restore: *restore, LeaseTTL: *ttl, WaitTimeout: *wait,
		Ready: func(i int, _ *paramserver.Service) { fmt.Fprintf(stdout, "serving shard %d of job %s\n", i, *name) }}))
}

func cmdWorker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	var ep endpoints
	endpointFlags(fs, &ep)
	httpFlag(fs, &ep)
	name := fs.String("job", "demo", "job to join")
	id := fs.String("id", "", "worker id, unique in the job (default host-pid-time)")
	ttl := fs.Int64("lease-ttl", 10, "seconds without a heartbeat after which the job gives this worker up")
	wait := fs.Duration("wait", 5*time.Minute, "how long to wait for the job to appear, for a rank, and for the shards")
	if err := parse(fs, args, stderr, "downpour worker --nats nats://127.0.0.1:4222 --etcd http://127.0.0.1:2379 --job demo"); err != nil {
		return err
	}
	if err := ep.require("worker", stderr); err != nil {
		return err
	}
	cli, err := connectEtcd(ctx, ep, auth.Worker)
	if err != nil {
		return err
	}
	defer cli.Close()
	nc, err := connectNATS(ep, "worker", auth.Worker)
	if err != nil {
		return err
	}
	defer nc.Close()
	log := ep.logger(stderr)
	wctx, stop := watchNATS(ctx, nc, ep.giveUp, log)
	defer stop()
	stopDash, err := ep.startDashboard(ctx, &dashboard{job: *name, role: "worker", cli: cli, nc: nc}, stdout, log)
	if err != nil {
		return err
	}
	defer stopDash()
	err = worker.Run(wctx, worker.Config{Job: *name, ID: *id, NATS: nc, Etcd: cli, Log: log, LeaseTTL: *ttl, WaitTimeout: *wait})
	if err := natsCause(wctx, err); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "worker finished its steps of job %s\n", *name)
	return nil
}

func cmdServers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("servers", flag.ContinueOnError)
	dir := fs.String("dir", "", "data directory of both servers (default: a new temporary directory)")
	var opts embedded.Options
	fs.IntVar(&opts.NATSPort, "nats-port", 0, "NATS client port (0: a free one)")
	fs.IntVar(&opts.EtcdPort, "etcd-port", 0, "etcd client port (0: a free one)")
	fs.IntVar(&opts.EtcdPeerPort, "etcd-peer-port", 0, "etcd peer port (0: a free one)")
	credsDir := fs.String("creds-dir", "", "require NATS credentials: accept only the jobs' roles made by 'downpour creds --dir' in this directory")
	tlsDir := fs.String("tls-dir", "", "serve NATS and etcd over TLS only, with the certificate made by 'downpour certs --dir' in this directory")
	var ep endpoints
	logFlags(fs, &ep)
	if err := parse(fs, args, stderr, "downpour servers --dir /tmp/downpour-servers --nats-port 4222 --etcd-port 2379"); err != nil {
		return err
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "downpour-servers-")
		if err != nil {
			return err
		}
		*dir = d
	}
	opts.Dir = *dir
	log := ep.logger(stderr)
	if *credsDir != "" {
		users, err := readUsers(*credsDir)
		if err != nil {
			return err
		}
		if len(users) == 0 {
			return fmt.Errorf("%s holds no job's users: make them with 'downpour creds --dir %s'", *credsDir, *credsDir)
		}
		opts.NATSUsers = auth.ServerUsers(users)
	} else {
		log.Warn("NATS accepts any client on loopback: give --creds-dir to require the roles' credentials")
	}
	opts.NATSLog, opts.EtcdGRPC = auth.ServerLog(log), auth.EtcdServerOptions(log)
	var clientTLS *tls.Config
	caFile := filepath.Join(*tlsDir, auth.CAFile)
	if *tlsDir != "" {
		if _, err := auth.ServerTLS(*tlsDir); err != nil { // its files, checked as the roles' files are
			return err
		}
		opts.TLSCert, opts.TLSKey = filepath.Join(*tlsDir, auth.ServerFile), filepath.Join(*tlsDir, auth.ServerKeyFile)
		var err error
		if clientTLS, err = auth.ClientTLS(caFile); err != nil {
			return err
		}
	}
	c, err := embedded.StartWith(ctx, opts)
	if err != nil {
		return err
	}
	defer c.Close()
	if *credsDir != "" {
		// etcd keeps password hashes: it learns them from the roles'
		// files, which the operator who made them holds in this directory.
		creds, err := readCreds(*credsDir)
		if err != nil {
			return err
		}
		if err := auth.SetUpEtcd(ctx, c.EtcdEndpoints, 10*time.Second, filepath.Join(*credsDir, "etcd-root.secret"), creds, clientTLS); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "NATS %s\netcd %s\ndata %s\n", c.NATSURL, c.EtcdEndpoints[0], *dir)
	tlsFlag := ""
	if *tlsDir != "" {
		tlsFlag = " --tls-ca " + caFile
	}
	fmt.Fprintf(stdout, "run roles with: --nats %s --etcd %s%s\n", c.NATSURL, c.EtcdEndpoints[0], tlsFlag)
	<-ctx.Done()
	return nil
}
