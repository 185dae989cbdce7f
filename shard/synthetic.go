// Package shard holds downpour's training data and its deterministic split
// into data shards, one per worker rank (the parameter server's shards,
// paramserver.Shard, are another thing): synthetic tasks generated from a
// seed (synthetic.go), parallel corpora read from files with their
// vocabularies and tokenizers (corpus.go), the Dataset both present to a
// worker (dataset.go), MNIST in idx files (idx.go) and the GAN's images
// dealt into data shards (images.go). Both models' data answer one
// data-shard interface, Batches.
//
// A batch is a pure function of (data, seed, data shard, step), so a rerun
// of a step after a fault sees exactly the same examples (the examples
// show it):
//
//	task, _ := shard.NewSynthetic("reverse", 3, 8)
//	b := task.Batch(seed, dataShard, step, 32)
package shard

import (
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/downpour-ml/downpour/models"
)

// Reserved token ids of the synthetic vocabularies.
const (
	Pad = 0 // padding (unused by fixed-length batches)
	Go  = 1 // start of the decoder input
	EOS = 2 // end of sequence
	// FirstSymbol is the id of the first digit; digit d has id FirstSymbol+d.
	FirstSymbol = 3
	// Digits is the number of distinct symbols of the synthetic tasks.
	Digits = 10
	// SyntheticVocab is the size of the synthetic tasks' vocabularies.
	SyntheticVocab = FirstSymbol + Digits
)

// Tasks lists the synthetic tasks by name.
var Tasks = []string{"copy", "reverse", "sort", "translate"}

// lexicon is the "translate" task's word map between its two made-up
// languages: source word d becomes target word lexicon[d].
var lexicon = [Digits]int32{7, 2, 9, 0, 5, 3, 8, 1, 6, 4}

// Synthetic is a sequence-to-sequence task over the digits 0-9 whose examples
// are generated from a seed: copy, reverse or sort the source sequence, or
// translate it between two made-up languages (each word mapped through a
// fixed lexicon, and each pair of neighbouring words swapped, as an
// adjective-noun order flips). The target is the transformed sequence
// followed by <eos>.
type Synthetic struct {
	Name           string
	MinLen, MaxLen int
}

// NewSynthetic returns the named task with source lengths in [minLen, maxLen].
func NewSynthetic(name string, minLen, maxLen int) (*Synthetic, error) {
	if !slices.Contains(Tasks, name) {
		return nil, fmt.Errorf("unknown synthetic task %q (known: %v)", name, Tasks)
	}
	if minLen < 1 || maxLen < minLen || maxLen > 1000 {
		return nil, fmt.Errorf("synthetic task lengths must satisfy 1 <= min <= max <= 1000 (got %d..%d)", minLen, maxLen)
	}
	return &Synthetic{Name: name, MinLen: minLen, MaxLen: maxLen}, nil
}

// Batch returns the batch of size examples that data shard dataShard sees at
// step step of a job seeded with seed. All examples of a batch have the same
// length (a length bucket), drawn per batch.
func (s *Synthetic) Batch(seed uint64, dataShard int, step int64, size int) *models.SeqBatch {
	rng := rand.New(rand.NewPCG(seed, uint64(dataShard)<<40^uint64(step)))
	n := s.MinLen + rng.IntN(s.MaxLen-s.MinLen+1)
	b := &models.SeqBatch{
		Size: size, SrcLen: n, TgtLen: n + 1,
		Src:    make([]int32, n*size),
		TgtIn:  make([]int32, (n+1)*size),
		TgtOut: make([]int32, (n+1)*size),
	}
	src := make([]int32, n)
	for e := 0; e < size; e++ {
		for t := range src {
			src[t] = int32(FirstSymbol + rng.IntN(Digits))
		}
		tgt := s.transform(src)
		for t := 0; t < n; t++ {
			b.Src[t*size+e] = src[t]
		}
		b.TgtIn[e] = Go
		for t := 0; t < n; t++ {
			b.TgtIn[(t+1)*size+e] = tgt[t]
			b.TgtOut[t*size+e] = tgt[t]
		}
		b.TgtOut[n*size+e] = EOS
	}
	return b
}

func (s *Synthetic) transform(src []int32) []int32 {
	out := slices.Clone(src)
	switch s.Name {
	case "reverse":
		slices.Reverse(out)
	case "sort":
		slices.Sort(out)
	case "translate":
		for i, id := range out {
			out[i] = FirstSymbol + lexicon[id-FirstSymbol]
		}
		for i := 0; i+1 < len(out); i += 2 {
			out[i], out[i+1] = out[i+1], out[i]
		}
	}
	return out
}
