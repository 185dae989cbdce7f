package models

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func decodeModel(seed uint64) *Seq2Seq[float64] {
	cfg := Seq2SeqConfig{SrcVocab: 9, TgtVocab: 7, Embed: 5, Hidden: 8, Layers: 2, InitScale: 1.5}
	m := NewSeq2Seq[float64](cfg)
	m.Init(seed)
	return m
}

var sp = Special{Go: 0, EOS: 1}

// Decoding runs one step at a time what training runs over whole sequences:
// the score beam search gives a hypothesis equals the log-probability the
// training forward pass gives it.
func TestBeamScoresMatchTrainingForward(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	for seed := uint64(0); seed < 20; seed++ {
		m := decodeModel(seed)
		src := []int32{int32(rng.IntN(9)), int32(rng.IntN(9)), int32(rng.IntN(9))}
		hs := m.Beam(src, sp, 3, 6)
		if len(hs) == 0 {
			t.Fatal("no hypotheses")
		}
		for _, h := range hs {
			if !h.Ended {
				continue
			}
			if want := m.LogProb(src, h.Tokens, sp); math.Abs(h.LogProb-want) > 1e-9 {
				t.Fatalf("seed %d: beam score %v, forward log-prob %v for %v", seed, h.LogProb, want, h.Tokens)
			}
		}
		for i := 1; i < len(hs); i++ {
			if hs[i].LogProb > hs[i-1].LogProb {
				t.Fatal("hypotheses not sorted")
			}
		}
	}
}

// Beam 1 is greedy search; a wider beam never finds a worse sentence than
// greedy; and a beam wider than the whole search space (maxLen 3: at most two
// tokens then EOS, 36 sentences) finds exactly the best sentence an
// exhaustive search finds.
func TestBeamAgainstGreedyAndExhaustive(t *testing.T) {
	for seed := uint64(0); seed < 30; seed++ {
		m := decodeModel(seed)
		src := []int32{2, 5, 3, 8}
		g := m.Greedy(src, len(src), 1, sp, 4)[0]
		b1 := m.Beam(src, sp, 1, 4)[0]
		if !slices.Equal(g, b1.Tokens) {
			t.Fatalf("seed %d: greedy %v, beam 1 %v", seed, g, b1.Tokens)
		}
		b4 := m.Beam(src, sp, 4, 4)[0]
		if b1.Ended && b4.Ended && b4.LogProb < b1.LogProb-1e-12 {
			t.Fatalf("seed %d: beam 4 (%v) worse than greedy (%v)", seed, b4.LogProb, b1.LogProb)
		}
		// Exhaustive: every sentence of up to 2 non-EOS tokens (6 symbols).
		best, bestLP := []int32(nil), math.Inf(-1)
		var walk func(prefix []int32)
		walk = func(prefix []int32) {
			if lp := m.LogProb(src, prefix, sp); lp > bestLP {
				best, bestLP = slices.Clone(prefix), lp
			}
			if len(prefix) == 2 {
				return
			}
			for tok := int32(0); tok < 7; tok++ {
				if tok != sp.EOS {
					walk(append(prefix, tok))
				}
			}
		}
		walk(nil)
		wide := m.Beam(src, sp, 400, 3)
		if !wide[0].Ended || !slices.Equal(wide[0].Tokens, best) || math.Abs(wide[0].LogProb-bestLP) > 1e-9 {
			t.Fatalf("seed %d: wide beam best %v (%v), exhaustive %v (%v)", seed, wide[0].Tokens, wide[0].LogProb, best, bestLP)
		}
	}
}

// Greedy decoding of a batch equals decoding each sentence alone.
func TestGreedyBatchEqualsSingles(t *testing.T) {
	m := decodeModel(3)
	srcs := [][]int32{{1, 2, 3}, {4, 5, 6}, {7, 8, 0}}
	var batch []int32
	for tpos := 0; tpos < 3; tpos++ {
		for _, s := range srcs {
			batch = append(batch, s[tpos])
		}
	}
	out := m.Greedy(batch, 3, 3, sp, 8)
	for i, s := range srcs {
		if one := m.Greedy(s, 3, 1, sp, 8)[0]; !slices.Equal(one, out[i]) {
			t.Fatalf("sentence %d: batch %v, alone %v", i, out[i], one)
		}
	}
}

func TestTopK(t *testing.T) {
	xs := []float64{3, 9, -1, 9, 4, 7}
	if got := topK(xs, 3); !slices.Equal(got, []int{1, 3, 5}) {
		t.Fatalf("topK = %v", got)
	}
	if got := topK(xs, 10); len(got) != 6 || got[5] != 2 {
		t.Fatalf("topK beyond length = %v", got)
	}
}
