package shard

import (
	"slices"
	"testing"
)

// Dealt images partition the training set over the data shards; each
// epoch of a data shard shows each of its images once, in an order drawn
// from (seed, shard, epoch); the same (seed, shard, step) is the same
// batch wherever it is drawn.
func TestImagesDealAndBatch(t *testing.T) {
	train := make([][]float32, 103)
	for i := range train {
		train[i] = []float32{float32(i), -float32(i)}
	}
	d := DealImages(train, 3, 7)
	seen := map[float32]int{}
	for s := range 3 {
		if n := d.Len(s); n < 34 || n > 35 {
			t.Fatalf("shard %d holds %d images of 103 over 3", s, n)
		}
		for _, im := range d.shards[s] {
			seen[im[0]]++
		}
	}
	if len(seen) != 103 {
		t.Fatalf("the shards hold %d distinct images of 103", len(seen))
	}
	const size = 5
	per := d.StepsPerEpoch(7, 1, size)
	if per != int64(d.Len(1)/size) {
		t.Fatalf("%d steps an epoch for %d images in batches of %d", per, d.Len(1), size)
	}
	var epochs [2][]float32
	for e := range int64(2) {
		count := map[float32]int{}
		for step := e * per; step < (e+1)*per; step++ {
			x := d.Batch(7, 1, step, size)
			if len(x) != size*2 {
				t.Fatalf("a batch of %d floats, want %d", len(x), size*2)
			}
			for i := 0; i < len(x); i += 2 {
				if x[i+1] != -x[i] {
					t.Fatalf("image %v torn", x[i:i+2])
				}
				count[x[i]]++
				epochs[e] = append(epochs[e], x[i])
			}
		}
		for id, n := range count {
			if n != 1 {
				t.Fatalf("epoch %d showed image %v %d times", e, id, n)
			}
		}
	}
	if slices.Equal(epochs[0], epochs[1]) {
		t.Fatal("two epochs in the same order")
	}
	if !slices.Equal(d.Batch(7, 1, 3, size), d.Batch(7, 1, 3, size)) || slices.Equal(d.Batch(7, 1, 3, size), d.Batch(8, 1, 3, size)) {
		t.Fatal("a batch is not a function of (seed, shard, step)")
	}
	buf := make([]float32, 0, 4)
	if got := d.AppendBatch(buf[:0], 7, 2, 5, size); !slices.Equal(got, d.Batch(7, 2, 5, size)) {
		t.Fatal("AppendBatch onto a reused buffer differs from Batch")
	}
	if d2 := DealImages(train, 3, 7); !slices.Equal(d2.Batch(7, 2, 9, size), d.Batch(7, 2, 9, size)) {
		t.Fatal("dealing again dealt otherwise")
	}
}
