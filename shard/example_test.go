package shard_test

import (
	"fmt"
	"slices"

	"github.com/downpour-ml/downpour/shard"
)

// A synthetic task's batch is a pure function of (seed, data shard, step):
// a step redone after a fault sees the same examples.
func ExampleSynthetic_Batch() {
	task, _ := shard.NewSynthetic("reverse", 3, 8)
	b := task.Batch(1, 0, 7, 32)
	again := task.Batch(1, 0, 7, 32)
	fmt.Println(b.Size, slices.Equal(b.Src, again.Src), slices.Equal(b.TgtOut, again.TgtOut))
	// Output: 32 true true
}

// A GAN's images dealt into two data shards, and the first update's batch
// of shard 1: two images of three pixels.
func ExampleImages() {
	train := [][]float32{{0, 0, 0}, {1, 1, 1}, {2, 2, 2}, {3, 3, 3}, {4, 4, 4}}
	d := shard.DealImages(train, 2, 1)
	fmt.Println(d.Len(0), d.Len(1), len(d.Batch(1, 1, 0, 2)), d.StepsPerEpoch(1, 1, 2))
	// Output: 3 2 6 1
}
