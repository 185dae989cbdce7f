package worker

import (
	"math/rand/v2"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
	"github.com/downpour-ml/downpour/shard"
)

// GANReference is a sync GAN job computed in one process: the job's data
// shards, noise, dropout masks, averaging over workers and optimizer, in the
// order the parameter servers apply them. After every step a sync job's
// parameters equal a GANReference's bit for bit (the tests hold the two to
// it), which makes it the plain computation the distributed path is checked
// against and a quick way to study the recipe's dynamics.
type GANReference struct {
	syncUpdate
	spec  *job.Spec
	data  *shard.Images
	ranks []*models.GAN[float32] // one replica per worker: the alternating update keeps each one's fake batch from D's loss to G's
	gs    int
	x, z  [][]float32 // each worker's batch and noise (a replica reads them again in its backward pass)
}

// NewGANReference starts a reference of a resolved GAN spec at its initial
// parameters; data is its training images (spec.OpenImages).
func NewGANReference(spec *job.Spec, data *shard.Images) *GANReference {
	r := &GANReference{syncUpdate: newSyncUpdate(spec), spec: spec, data: data, gs: spec.GAN.GSize()}
	for range spec.Workers {
		r.ranks = append(r.ranks, models.NewGAN[float32](spec.GAN))
	}
	r.x, r.z = make([][]float32, spec.Workers), make([][]float32, spec.Workers)
	return r
}

// Step runs step n of the job (steps count from 0, as the shards' clocks
// do) and returns D's and G's losses averaged over the workers.
func (r *GANReference) Step(n int64) (dLoss, gLoss float64) {
	if r.spec.Simultaneous() {
		return r.simultaneous(n)
	}
	return r.alternating(n)
}

// draw returns the images and noise of update j of step n of worker k's
// data shard.
func (r *GANReference) draw(k int, n int64, j int, rng *rand.Rand) (x, z []float32) {
	r.x[k] = r.data.AppendBatch(r.x[k][:0], r.spec.Seed, k, n*int64(r.spec.GANK)+int64(j), r.spec.Batch)
	if size := r.spec.Batch * r.spec.GAN.Noise; len(r.z[k]) != size {
		r.z[k] = make([]float32, size)
	}
	r.spec.GAN.Draw(r.z[k], rng)
	return r.x[k], r.z[k]
}

// grads is rank k's gradient.
func (r *GANReference) grads(k int) []float32 { return r.ranks[k].Grads() }

func (r *GANReference) simultaneous(n int64) (dLoss, gLoss float64) {
	B := r.spec.Batch
	for k, m := range r.ranks {
		copy(m.Params(), r.w)
		rng := GANRand(r.spec, k, n)
		x, z := r.draw(k, n, 0, rng)
		real, fake := models.RandomMasks(rng, r.spec.GAN, B), models.RandomMasks(rng, r.spec.GAN, B)
		d, g := m.Step(x, z, B, real, fake, r.spec.Minimax)
		dLoss, gLoss = dLoss+d, gLoss+g
	}
	r.gather(r.grads, 0, len(r.w))
	r.apply(0, len(r.w), n)
	W := float64(len(r.ranks))
	return dLoss / W, gLoss / W
}

func (r *GANReference) alternating(n int64) (dLoss, gLoss float64) {
	B, K := r.spec.Batch, r.spec.GANK
	rngs := make([]*rand.Rand, len(r.ranks))
	for k, m := range r.ranks {
		copy(m.Params(), r.w)
		rngs[k] = GANRand(r.spec, k, n)
	}
	for j := range K {
		for k, m := range r.ranks {
			x, z := r.draw(k, n, j, rngs[k])
			real, fake := models.RandomMasks(rngs[k], r.spec.GAN, B), models.RandomMasks(rngs[k], r.spec.GAN, B)
			dLoss += m.DLoss(x, z, B, real, fake, true)
		}
		r.gather(r.grads, r.gs, len(r.w))
		r.apply(r.gs, len(r.w), int64(K)*n+int64(j))
		for _, m := range r.ranks {
			copy(m.Params()[r.gs:], r.w[r.gs:])
		}
	}
	for k, m := range r.ranks {
		gLoss += m.GLossAfterD(B, models.RandomMasks(rngs[k], r.spec.GAN, B), r.spec.Minimax, true)
	}
	r.gather(r.grads, 0, r.gs)
	r.apply(0, r.gs, n)
	W := float64(len(r.ranks))
	return dLoss / (W * float64(K)), gLoss / W
}

// syncUpdate is a sync job's parameters and update in one process, as the
// shards make it: the ranks' gradients summed in rank order, the sum scaled
// by 1/ranks, and the optimizer applied as update t of the blocks.
type syncUpdate struct {
	opt    job.Optimizer
	ranks  int
	w, sum []float32
	slots  [][]float32
}

// newSyncUpdate starts at the spec's initial parameters (those of the
// checkpoint it starts from, if any: one that cannot be read is a panic, as
// the reference is for tests of jobs that ran).
func newSyncUpdate(spec *job.Spec) syncUpdate {
	ts := spec.Tensors()
	n := models.TotalSize(ts)
	u := syncUpdate{opt: spec.Optimizer, ranks: spec.Workers, w: make([]float32, n), sum: make([]float32, n)}
	init, err := spec.Initializer()
	if err != nil {
		panic(err)
	}
	for i, off := range models.Offsets(ts) {
		init(u.w[off:off+ts[i].Size()], ts[i])
	}
	u.slots = make([][]float32, spec.Optimizer.Slots())
	for i := range u.slots {
		u.slots[i] = make([]float32, n)
	}
	return u
}

// Params is the job's parameters after the steps taken so far (the
// reference's own: callers must not change them).
func (u *syncUpdate) Params() []float32 { return u.w }

// gather sums the ranks' gradients over [lo, hi) in rank order, then scales
// the sum by 1/ranks, as a shard does.
func (u *syncUpdate) gather(grads func(rank int) []float32, lo, hi int) {
	s := u.sum[lo:hi]
	copy(s, grads(0)[lo:hi])
	for k := 1; k < u.ranks; k++ {
		for i, v := range grads(k)[lo:hi] {
			s[i] += v
		}
	}
	inv := 1 / float32(u.ranks)
	for i := range s {
		s[i] *= inv
	}
}

// apply runs the optimizer on [lo, hi) as update t of those parameters'
// blocks.
func (u *syncUpdate) apply(lo, hi int, t int64) {
	slots := make([][]float32, len(u.slots))
	for i, s := range u.slots {
		slots[i] = s[lo:hi]
	}
	paramserver.Apply(u.opt, u.w[lo:hi], u.sum[lo:hi], slots, t)
}

// SyntheticReference is a sync job of the synthetic load model computed in
// one process; a sync job's parameters equal it bit for bit after every step.
type SyntheticReference struct {
	syncUpdate
	spec  *job.Spec
	u     []float32
	grads [][]float32
}

// NewSyntheticReference starts a reference of a synthetic spec at its
// initial parameters.
func NewSyntheticReference(spec *job.Spec) *SyntheticReference {
	r := &SyntheticReference{syncUpdate: newSyncUpdate(spec), spec: spec}
	r.u = make([]float32, len(r.w))
	models.SyntheticDirection(r.u, spec.Seed)
	for range spec.Workers {
		r.grads = append(r.grads, make([]float32, len(r.w)))
	}
	return r
}

// Step runs step n (from 0): rank k's batch is data step n of data shard k.
// It returns the ranks' mean loss.
func (r *SyntheticReference) Step(n int64) float64 {
	var loss float64
	for k, g := range r.grads {
		loss += models.SyntheticGrad(g, r.w, r.u, models.SyntheticScale(r.spec.Seed, k, n))
	}
	r.gather(func(k int) []float32 { return r.grads[k] }, 0, len(r.w))
	r.apply(0, len(r.w), n)
	return loss / float64(len(r.grads))
}
