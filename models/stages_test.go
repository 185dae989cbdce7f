package models

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// A replica over 1-4 stages and 1-3 softmax slices, each seat in its own
// goroutine on its own copy of the model, the activations and gradients
// passed a chunk of time steps at a time, computes the one-process step
// bit for bit: the loss, and every tensor's clipped gradient on the seat
// that holds it (zero on the others). (On the project's kernels; with -tags
// openblas, whose products by rows are not bits of the whole, to rounding.)
func TestStagedStepGivesOneProcessBits(t *testing.T) {
	same := func(a, b []float32) bool { return slices.Equal(a, b) }
	sameLoss := func(a, b float64) bool { return a == b }
	if BLAS == "openblas" {
		same = func(a, b []float32) bool { return len(a) == len(b) && closeAll(a, b, 1e-4) }
		sameLoss = func(a, b float64) bool { return abs64(a-b) <= 1e-9*abs64(b) }
	}
	cfg := Seq2SeqConfig{SrcVocab: 40, TgtVocab: 31, Embed: 12, Hidden: 20, Layers: 4, SoftmaxBlocks: 3}
	rng := rand.New(rand.NewPCG(31, 32))
	b := smallBatch(rng, cfg, 5, 6, 7)
	// The output layer in one chunk, and in chunks of 2 of the 7 time
	// steps (the last one short), on every seat as in the one process.
	for _, budget := range []int{outBudget, 2 * 5 * 31} {
		t.Run(fmt.Sprintf("output_steps=%d", min(budget/(5*31), b.TgtLen)), func(t *testing.T) {
			stagedStepCases(t, cfg, b, budget, same, sameLoss)
		})
	}
	if _, err := cfg.Plan(5, 1); err == nil {
		t.Fatal("a plan of 5 stages for 4 layers")
	}
	if _, err := cfg.Plan(2, 4); err == nil {
		t.Fatal("a plan of 4 slices for 3 softmax blocks")
	}
}

func stagedStepCases(t *testing.T, cfg Seq2SeqConfig, b *SeqBatch, budget int, same func(a, b []float32) bool, sameLoss func(a, b float64) bool) {
	chunked := func(m *Seq2Seq[float32]) *Seq2Seq[float32] {
		m.outBudget = budget
		return m
	}
	ref := chunked(NewSeq2Seq[float32](cfg))
	ref.Init(9)
	wantLoss, wantTokens := ref.Loss(b, true)
	if n := ref.ClipGrads(0.5); n <= 0.5 {
		t.Fatalf("the gradient's norm %v: a clip at 0.5 does not clip", n)
	}
	offs := Offsets(cfg.Tensors())
	for _, c := range []struct{ stages, slices, chunk int }{
		{1, 1, 7}, {2, 1, 1}, {2, 3, 2}, {3, 2, 3}, {4, 3, 1}, {4, 1, 4},
	} {
		t.Run(fmt.Sprintf("stages=%d,slices=%d,chunk=%d", c.stages, c.slices, c.chunk), func(t *testing.T) {
			plan, err := cfg.Plan(c.stages, c.slices)
			if err != nil {
				t.Fatal(err)
			}
			replicas := make([]*Seq2Seq[float32], plan.Seats())
			for i := range replicas {
				replicas[i] = chunked(NewSeq2Seq[float32](cfg))
				copy(replicas[i].Params(), ref.Params())
			}
			loss, tokens, err := StagedStep(replicas, plan, b, c.chunk, 0.5)
			if err != nil {
				t.Fatal(err)
			}
			if !sameLoss(loss, wantLoss) || tokens != wantTokens {
				t.Fatalf("loss %v over %d tokens, want %v over %d", loss, tokens, wantLoss, wantTokens)
			}
			// Seats that hold only their own tensors compute the same.
			holding := make([]*Seq2Seq[float32], plan.Seats())
			for seat, ts := range plan.SeatTensors(cfg) {
				holding[seat] = chunked(NewSeq2SeqHolding[float32](cfg, ts))
				h := holding[seat]
				want := 0
				for _, ti := range ts {
					n := cfg.Tensors()[ti].Size()
					copy(h.Params()[h.Offsets()[ti]:], ref.Params()[offs[ti]:offs[ti]+n])
					want += n
				}
				if len(h.Params()) != want || len(h.Grads()) != want {
					t.Fatalf("seat %d holds %d floats, its tensors have %d", seat, len(h.Params()), want)
				}
			}
			if loss, tokens, err := StagedStep(holding, plan, b, c.chunk, 0.5); err != nil || !sameLoss(loss, wantLoss) || tokens != wantTokens {
				t.Fatalf("seats holding their tensors: loss %v over %d tokens (%v), want %v over %d", loss, tokens, err, wantLoss, wantTokens)
			}
			for seat, ts := range plan.SeatTensors(cfg) {
				h := holding[seat]
				for _, ti := range ts {
					n := cfg.Tensors()[ti].Size()
					if !same(h.Grads()[h.Offsets()[ti]:h.Offsets()[ti]+n], ref.Grads()[offs[ti]:offs[ti]+n]) {
						t.Fatalf("seat %d holding its tensors: tensor %s differs", seat, cfg.Tensors()[ti].Name)
					}
				}
			}
			if _, _, err := holding[0].SeatStep(plan, 1, b, c.chunk, 0.5, LocalLinks[float32](plan.Seats())[1]); err == nil && plan.Stages > 1 {
				t.Fatal("a model ran the part of a seat whose tensors it does not hold")
			}
			held := make([]int, len(offs)) // each tensor's seat
			for i := range held {
				held[i] = -1
			}
			for seat, ts := range plan.SeatTensors(cfg) {
				for _, ti := range ts {
					if held[ti] >= 0 {
						t.Fatalf("tensor %d on seats %d and %d", ti, held[ti], seat)
					}
					held[ti] = seat
				}
			}
			for ti, seat := range held {
				if seat < 0 {
					t.Fatalf("tensor %d on no seat", ti)
				}
				n := cfg.Tensors()[ti].Size()
				got, want := replicas[seat].Grads()[offs[ti]:offs[ti]+n], ref.Grads()[offs[ti]:offs[ti]+n]
				if !same(got, want) {
					t.Fatalf("tensor %s (seat %d): the gradient differs from the one-process step's", cfg.Tensors()[ti].Name, seat)
				}
				for other, r := range replicas {
					if other != seat && slices.ContainsFunc(r.Grads()[offs[ti]:offs[ti]+n], func(v float32) bool { return v != 0 }) {
						t.Fatalf("seat %d wrote tensor %s, which seat %d holds", other, cfg.Tensors()[ti].Name, seat)
					}
				}
			}
		})
	}
}
