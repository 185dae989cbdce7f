package shard

import (
	"math/rand/v2"
)

// Batches is the data-shard interface of every model's data: the batch
// data shard s trains on at step (B: a Seq2Seq batch, or a GAN's images),
// and how many steps of batches of size make one epoch of data shard s (0
// for endless synthetic data). Each batch is a function of (seed, s,
// step): any worker that trains step of data shard s trains on the same
// batch.
type Batches[B any] interface {
	Batch(seed uint64, s int, step int64, size int) B
	StepsPerEpoch(seed uint64, s, size int) int64
}

var _ Batches[[]float32] = (*Images)(nil)

// Images are a GAN's training images dealt into data shards, one per rank.
type Images struct {
	shards [][][]float32
}

// DealImages deals the training images into n data shards: a shuffle drawn
// from seed, dealt out in turn.
func DealImages(train [][]float32, n int, seed uint64) *Images {
	shards := make([][][]float32, n)
	perm := rand.New(rand.NewPCG(seed, 0x6a4)).Perm(len(train))
	for i, idx := range perm {
		shards[i%n] = append(shards[i%n], train[idx])
	}
	return &Images{shards: shards}
}

// Len is the number of images of data shard s.
func (d *Images) Len(s int) int { return len(d.shards[s]) }

// Batch is the images of update step of data shard s, size of them one
// after the other: each epoch of the data shard is a shuffle drawn from
// (seed, s, epoch). A GAN that makes k updates of D a step trains on
// updates step*k+j.
func (d *Images) Batch(seed uint64, s int, step int64, size int) []float32 {
	return d.AppendBatch(nil, seed, s, step, size)
}

// AppendBatch is Batch appended to x (a trainer reuses its buffer, x[:0]).
func (d *Images) AppendBatch(x []float32, seed uint64, s int, step int64, size int) []float32 {
	images := d.shards[s]
	per := int64(len(images) / size)
	epoch, pos := step/per, int(step%per)
	perm := rand.New(rand.NewPCG(seed, uint64(s)<<40^uint64(epoch))).Perm(len(images))
	for _, i := range perm[pos*size : (pos+1)*size] {
		x = append(x, images[i]...)
	}
	return x
}

// StepsPerEpoch is the number of updates of size images in one epoch of
// data shard s.
func (d *Images) StepsPerEpoch(seed uint64, s, size int) int64 { return int64(len(d.shards[s]) / size) }
