package models

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// zeroRelease zeroes exactly what it is given, whether it releases pages
// or clears: the elements around it keep their values.
func TestZeroReleaseZeroesExactlyItsSlice(t *testing.T) {
	n := (releaseMin + 3*int(pageSize)) / 4
	for _, c := range []struct{ lo, hi int }{
		{0, n}, {5, n - 7}, {1, 100}, {int(pageSize) / 4, n - int(pageSize)/4}, {3, 3},
	} {
		b := make([]float32, n)
		for i := range b {
			b[i] = float32(i%7 + 1)
		}
		zeroRelease(b[c.lo:c.hi])
		for i, v := range b {
			in := i >= c.lo && i < c.hi
			if in && v != 0 || !in && v != float32(i%7+1) {
				t.Fatalf("[%d, %d) of %d: element %d is %v", c.lo, c.hi, n, i, v)
			}
		}
		// Released pages take writes again.
		if c.hi > c.lo {
			b[(c.lo+c.hi)/2] = 9
			if b[(c.lo+c.hi)/2] != 9 {
				t.Fatal("a released page lost a write")
			}
		}
	}
}

// bigVocab is a model whose source table is past releaseMin, so that its
// gradient and parameters are released rather than cleared.
func bigVocab() Seq2SeqConfig {
	return Seq2SeqConfig{Layers: 1, Hidden: 8, Embed: 64, SrcVocab: releaseMin/(64*4) + 500, TgtVocab: 40, InitScale: 0.1}
}

// A model whose embedding gradients are released between steps computes
// what a fresh model (gradients never written) does, bit for bit, and its
// clip scales exactly as ClipGlobalNorm over the whole vector.
func TestReleasedGradientsGiveTheSameStep(t *testing.T) {
	cfg := bigVocab()
	rng := rand.New(rand.NewPCG(3, 4))
	m := NewSeq2Seq[float32](cfg)
	m.Init(5)
	for step := range 3 {
		b := smallBatch(rng, cfg, 4, 6, 5)
		fresh := NewSeq2Seq[float32](cfg)
		copy(fresh.Params(), m.Params())
		l1, _ := m.Loss(b, true)
		l2, _ := fresh.Loss(b, true)
		if l1 != l2 || !slices.Equal(m.Grads(), fresh.Grads()) {
			t.Fatalf("step %d: the released gradient differs from a fresh model's", step)
		}
		want := slices.Clone(fresh.Grads())
		n1 := ClipGlobalNorm(want, TensorSizes(cfg.Tensors()), 1e-3)
		n2 := m.ClipGrads(1e-3)
		if n1 != n2 || !slices.Equal(m.Grads(), want) {
			t.Fatalf("step %d: clipped by rows, norm %v, differs from the whole vector's (norm %v)", step, n2, n1)
		}
		// The step's parameters move, so the next step reads others.
		for i, g := range m.Grads() {
			m.Params()[i] -= 10 * g
		}
	}
}

// A seat whose tables are released before each step and given only the
// rows the step reads (Ranges) computes the step of the whole model.
func TestReleasedEmbeddingsNeedOnlyTheirRanges(t *testing.T) {
	cfg := bigVocab()
	rng := rand.New(rand.NewPCG(7, 8))
	whole := NewSeq2Seq[float32](cfg)
	whole.Init(9)
	m := NewSeq2Seq[float32](cfg)
	for step := range 3 {
		b := smallBatch(rng, cfg, 4, 6, 5)
		m.ReleaseEmbeddings()
		for _, r := range m.Ranges(b, nil) {
			copy(m.Params()[r[0]:r[1]], whole.Params()[r[0]:r[1]])
		}
		l1, _ := m.Loss(b, true)
		l2, _ := whole.Loss(b, true)
		if l1 != l2 || !slices.Equal(m.Grads(), whole.Grads()) {
			t.Fatalf("step %d: the seat with released tables differs from the whole model", step)
		}
		for i, g := range whole.Grads() {
			whole.Params()[i] -= 10 * g
		}
	}
	m.ReleaseEmbeddings()
	if slices.ContainsFunc(m.Params()[:cfg.SrcVocab*cfg.Embed], func(v float32) bool { return v != 0 }) {
		t.Fatal("a released table is not zero")
	}
}
