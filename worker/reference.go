package worker

import (
	"math/rand/v2"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/models"
)

// GANReference is a sync GAN job computed in one process: the job's data
// shards, noise, dropout masks, averaging over workers and optimizer, in the
// order the parameter servers apply them. After every step a sync job's
// parameters equal a GANReference's bit for bit (the tests hold the two to
// it), which makes it the plain computation the distributed path is checked
// against and a quick way to study the recipe's dynamics.
type GANReference struct {
	spec   *job.Spec
	shards [][][]float32
	ranks  []*models.GAN[float32] // one replica per worker: the alternating update keeps each one's fake batch from D's loss to G's
	w, sum []float32
	slots  [][]float32
	gs     int
	x, z   [][]float32 // each worker's batch and noise (a replica reads them again in its backward pass)
}

// NewGANReference starts a reference of a resolved GAN spec at its initial
// parameters; train is MNIST's training images.
func NewGANReference(spec *job.Spec, train [][]float32) *GANReference {
	r := &GANReference{spec: spec, shards: GANDataShards(spec, train), gs: spec.GAN.GSize()}
	for range spec.Workers {
		r.ranks = append(r.ranks, models.NewGAN[float32](spec.GAN))
	}
	r.w = make([]float32, len(r.ranks[0].Params()))
	r.sum = make([]float32, len(r.w))
	r.x, r.z = make([][]float32, spec.Workers), make([][]float32, spec.Workers)
	ts := spec.Tensors()
	for i, off := range models.Offsets(ts) {
		spec.InitTensor(r.w[off:off+ts[i].Size()], ts[i])
	}
	r.slots = make([][]float32, spec.Optimizer.Slots())
	for i := range r.slots {
		r.slots[i] = make([]float32, len(r.w))
	}
	return r
}

// Params is the job's parameters after the steps taken so far (the
// reference's own: callers must not change them).
func (r *GANReference) Params() []float32 { return r.w }

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
	r.x[k] = GANBatch(r.spec, r.shards[k], k, n, j, r.x[k][:0])
	if size := r.spec.Batch * r.spec.GAN.Noise; len(r.z[k]) != size {
		r.z[k] = make([]float32, size)
	}
	r.spec.GAN.Draw(r.z[k], rng)
	return r.x[k], r.z[k]
}

// gather sums the workers' gradients over [lo, hi) in rank order, then
// scales the sum by 1/workers, as a shard does.
func (r *GANReference) gather(lo, hi int) {
	s := r.sum[lo:hi]
	copy(s, r.ranks[0].Grads()[lo:hi])
	for _, m := range r.ranks[1:] {
		for i, v := range m.Grads()[lo:hi] {
			s[i] += v
		}
	}
	inv := 1 / float32(len(r.ranks))
	for i := range s {
		s[i] *= inv
	}
}

// apply runs the optimizer on [lo, hi) as update t of those parameters'
// blocks.
func (r *GANReference) apply(lo, hi int, t int64) {
	slots := make([][]float32, len(r.slots))
	for i, s := range r.slots {
		slots[i] = s[lo:hi]
	}
	r.spec.Optimizer.Apply(r.w[lo:hi], r.sum[lo:hi], slots, t)
}

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
	r.gather(0, len(r.w))
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
		r.gather(r.gs, len(r.w))
		r.apply(r.gs, len(r.w), int64(K)*n+int64(j))
		for _, m := range r.ranks {
			copy(m.Params()[r.gs:], r.w[r.gs:])
		}
	}
	for k, m := range r.ranks {
		gLoss += m.GLossAfterD(B, models.RandomMasks(rngs[k], r.spec.GAN, B), r.spec.Minimax, true)
	}
	r.gather(0, r.gs)
	r.apply(0, r.gs, n)
	W := float64(len(r.ranks))
	return dLoss / (W * float64(K)), gLoss / W
}
