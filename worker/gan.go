package worker

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
	"github.com/downpour-ml/downpour/shard"
)

// ganTrainer trains a GAN replica, with one of two updates.
//
// The simultaneous update (the authors'): a step pulls all parameters at the
// step's clock, computes D's and G's gradients from one forward pass (one
// fake batch, one set of dropout masks; models.GAN.Step) and pushes them
// together as the step's update. As the Seq2Seq worker does, the push and
// the next step's pull run in the background while the next step's forward
// pass waits only for the layer it is about to read.
//
// The alternating update: k discriminator updates then one generator
// update, in this order in every mode:
//
//	pull D (its clock: k*step) and G (its clock: step)
//	for j < k: D loss on real images and G's samples; push D's gradient as
//	           D update k*step+j; pull D after it
//	G loss through the updated D; push G's gradient as G update step
//
// D's and G's blocks keep their own clocks on the shards (a block's clock
// counts its own updates), so in sync mode every rank's D update j of a step
// is summed before any rank computes the next D or G gradient.
//
// Noise and dropout masks come from (seed, data shard, data step), so sync
// runs are reproducible (in sync mode a rank reads the data shard of its
// number).
type ganTrainer struct {
	cfg    Config
	spec   *job.Spec
	a      job.Assignment
	d, g   *paramserver.Client // alternating: one client per parameter group
	all    *paramserver.Client // simultaneous: one client for both
	model  *models.GAN[float32]
	data   *shard.Images // the training images, in data shards
	gs     int           // generator parameters (they come first)
	z, x   []float32
	report progressReport // D's loss, G's as aux, over steps
	// simultaneous: the last step's push and this step's pull, in flight
	// (for step xferStep+1) while the forward pass starts.
	inFlight
	xferStep int64
}

func newGANTrainer(cfg Config, spec *job.Spec, a job.Assignment, p *job.Placement) (*ganTrainer, error) {
	gs := spec.GAN.GSize()
	t := &ganTrainer{cfg: cfg, spec: spec, a: a, model: models.NewGAN[float32](spec.GAN), gs: gs}
	var err error
	if spec.Simultaneous() {
		if t.all, err = paramserver.NewClient(cfg.NATS, spec.Name, p, a.Rank, a.Epoch); err != nil {
			return nil, err
		}
		t.all.Observe = observe(spec.Name, cfg.Record)
		t.model.Hooks = t.hooks()
	} else {
		if t.d, err = paramserver.NewClientFor(cfg.NATS, spec.Name, p, a.Rank, a.Epoch, func(b job.Block) bool { return b.Offset >= gs }); err != nil {
			return nil, err
		}
		if t.g, err = paramserver.NewClientFor(cfg.NATS, spec.Name, p, a.Rank, a.Epoch, func(b job.Block) bool { return b.Offset < gs }); err != nil {
			return nil, err
		}
		t.d.Observe, t.g.Observe = observe(spec.Name, cfg.Record), observe(spec.Name, cfg.Record)
	}
	if t.data, err = spec.OpenImages(); err != nil {
		return nil, err
	}
	if n := t.data.Len(spec.Workers - 1); n < spec.Batch {
		return nil, fmt.Errorf("a data shard holds %d images, fewer than a batch of %d", n, spec.Batch)
	}
	return t, nil
}

// GANRand is the source of the noise and the dropout masks of data step
// step of data shard sh.
func GANRand(spec *job.Spec, sh int, step int64) *rand.Rand {
	return rand.New(rand.NewPCG(spec.Seed^0x9a11, uint64(sh)<<40^uint64(step)))
}

// batch fills t.x with the images of update j of data step step of data
// shard sh.
func (t *ganTrainer) batch(sh int, step int64, j int) {
	t.x = t.data.AppendBatch(t.x[:0], t.spec.Seed, sh, step*int64(t.spec.GANK)+int64(j), t.spec.Batch)
}

// close stops a transfer still in flight (when the step loop ends early).
func (t *ganTrainer) close() { t.abort() }

// clock is the generator blocks' slowest clock (one per step; with the
// simultaneous update, every block's).
func (t *ganTrainer) clock(ctx context.Context) (int64, error) {
	if t.all != nil {
		return t.all.Clock(ctx)
	}
	return t.g.Clock(ctx)
}

func (t *ganTrainer) handover(q *job.Placement) error {
	for _, c := range []*paramserver.Client{t.all, t.d, t.g} {
		if c != nil {
			if err := c.Handover(q); err != nil {
				return err
			}
		}
	}
	return nil
}

func (t *ganTrainer) idle(ctx context.Context) error {
	if t.all != nil {
		return t.all.Idle(ctx)
	}
	if err := t.d.Idle(ctx); err != nil {
		return err
	}
	return t.g.Idle(ctx)
}

// noise fills t.z with a batch of the generator's input from rng.
func (t *ganTrainer) noise(rng *rand.Rand) {
	n := t.spec.Batch * t.spec.GAN.Noise
	t.z = slices.Grow(t.z[:0], n)[:n]
	t.spec.GAN.Draw(t.z, rng)
}

// stepSimultaneous runs step s with the authors' update.
func (t *ganTrainer) stepSimultaneous(ctx context.Context, s at) (dLoss, gLoss float64, err error) {
	step, B := s.N, t.spec.Batch
	if t.xfer != nil && t.xferStep+1 != step {
		// Not the step the transfer in flight pulls for (the loop moved
		// elsewhere): let it land, then pull afresh.
		if err := t.settle(); err != nil {
			return 0, 0, fmt.Errorf("step %d: push and pull: %w", t.xferStep, err)
		}
	}
	if t.xfer == nil {
		sctx, cancel := context.WithTimeout(ctx, t.cfg.StepTimeout)
		err := t.all.Pull(sctx, step, t.model.Params())
		cancel()
		if err != nil {
			return 0, 0, fmt.Errorf("step %d: pull: %w", step, err)
		}
	}
	rng := GANRand(t.spec, s.Shard, s.Data)
	t.batch(s.Shard, s.Data, 0)
	t.noise(rng)
	real, fake := models.RandomMasks(rng, t.spec.GAN, B), models.RandomMasks(rng, t.spec.GAN, B)
	dLoss, gLoss = t.model.Step(t.x, t.z, B, real, fake, t.spec.Minimax)
	if err := t.settle(); err != nil {
		return 0, 0, fmt.Errorf("step %d: push and pull: %w", step-1, err)
	}
	if s.Last {
		sctx, cancel := context.WithTimeout(ctx, t.cfg.StepTimeout)
		err := t.all.Push(sctx, step, t.model.Grads())
		cancel()
		if err != nil {
			return 0, 0, fmt.Errorf("step %d: push: %w", step, err)
		}
		return dLoss, gLoss, nil
	}
	xctx, cancel := context.WithTimeout(ctx, t.cfg.StepTimeout)
	t.xfer, t.xstop, t.xferStep = t.all.StartPushPull(xctx, step, t.model.Grads(), t.model.Params()), cancel, step
	return dLoss, gLoss, nil
}

// stepAlternating runs step s with the alternating update.
func (t *ganTrainer) stepAlternating(ctx context.Context, s at) (dLoss, gLoss float64, err error) {
	step := s.N
	sctx, cancel := context.WithTimeout(ctx, t.cfg.StepTimeout)
	defer cancel()
	k, B := int64(t.spec.GANK), t.spec.Batch
	w := t.model.Params()
	if err := t.d.Pull(sctx, k*step, w); err != nil {
		return 0, 0, fmt.Errorf("step %d: pull D: %w", step, err)
	}
	if err := t.g.Pull(sctx, step, w); err != nil {
		return 0, 0, fmt.Errorf("step %d: pull G: %w", step, err)
	}
	rng := GANRand(t.spec, s.Shard, s.Data)
	for j := int64(0); j < k; j++ {
		t.batch(s.Shard, s.Data, int(j))
		t.noise(rng)
		dLoss += t.model.DLoss(t.x, t.z, B, models.RandomMasks(rng, t.spec.GAN, B), models.RandomMasks(rng, t.spec.GAN, B), true)
		if err := t.d.PushPull(sctx, k*step+j, t.model.Grads(), w); err != nil {
			return 0, 0, fmt.Errorf("step %d: push D: %w", step, err)
		}
	}
	gLoss = t.model.GLossAfterD(B, models.RandomMasks(rng, t.spec.GAN, B), t.spec.Minimax, true)
	if err := t.g.Push(sctx, step, t.model.Grads()); err != nil {
		return 0, 0, fmt.Errorf("step %d: push G: %w", step, err)
	}
	return dLoss / float64(k), gLoss, nil
}

func (t *ganTrainer) step(ctx context.Context, s at) error {
	start := time.Now()
	var dLoss, gLoss float64
	var err error
	if t.all != nil {
		dLoss, gLoss, err = t.stepSimultaneous(ctx, s)
	} else {
		dLoss, gLoss, err = t.stepAlternating(ctx, s)
	}
	if err != nil {
		return err
	}
	t.report.step(t.cfg, t.spec, t.a.Rank, s, time.Since(start), dLoss, gLoss, 1)
	return nil
}
