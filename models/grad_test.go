package models

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// checkGrad compares analytic gradients with central differences of f with
// respect to every element of x, in float64.
func checkGrad(t *testing.T, name string, x, analytic []float64, f func() float64) {
	t.Helper()
	const eps = 1e-6
	worst := 0.0
	for i := range x {
		orig := x[i]
		x[i] = orig + eps
		fp := f()
		x[i] = orig - eps
		fm := f()
		x[i] = orig
		num := (fp - fm) / (2 * eps)
		den := math.Max(1e-6, math.Abs(num)+math.Abs(analytic[i]))
		rel := math.Abs(num-analytic[i]) / den
		if rel > worst {
			worst = rel
		}
		if rel > 1e-5 && math.Abs(num-analytic[i]) > 1e-8 {
			t.Errorf("%s[%d]: analytic %.10g, numeric %.10g (rel err %.3g)", name, i, analytic[i], num, rel)
			return
		}
	}
	t.Logf("%s: %d elements, worst relative error %.3g", name, len(x), worst)
}

func randSlice(rng *rand.Rand, n int, scale float64) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = (2*rng.Float64() - 1) * scale
	}
	return s
}

func dot(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

func TestLSTMGradient(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const in, hid, steps, batch = 3, 4, 3, 2
	ts := LSTMTensors("l", in, hid)
	params := randSlice(rng, TotalSize(ts), 0.5)
	grads := make([]float64, len(params))
	l := newLSTM(in, hid, &view[float64]{buf: params}, &view[float64]{buf: grads})
	x := randSlice(rng, steps*batch*in, 1)
	h0 := randSlice(rng, batch*hid, 0.5)
	c0 := randSlice(rng, batch*hid, 0.5)
	// A loss that touches every output: random weights on h_1..h_T, h_T, c_T.
	rOut := randSlice(rng, steps*batch*hid, 1)
	rh := randSlice(rng, batch*hid, 1)
	rc := randSlice(rng, batch*hid, 1)
	loss := func() float64 {
		c := l.Forward(nil, x, steps, batch, h0, c0)
		h, cell := c.Final(hid)
		return dot(rOut, c.Out(hid)) + dot(rh, h) + dot(rc, cell)
	}
	c := l.Forward(nil, x, steps, batch, h0, c0)
	clear(grads)
	dx, dh0, dc0 := l.Backward(c, rOut, rh, rc, true)
	checkGrad(t, "params", params, grads, loss)
	checkGrad(t, "x", x, dx, loss)
	checkGrad(t, "h0", h0, dh0, loss)
	checkGrad(t, "c0", c0, dc0, loss)
}

func TestSoftmaxCrossEntropyGradient(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const rows, vocab = 4, 5
	logits := randSlice(rng, rows*vocab, 3)
	labels := []int32{0, 4, -1, 2}
	loss := func() float64 {
		l := append([]float64(nil), logits...)
		v, _ := SoftmaxCrossEntropy(l, vocab, labels, 0.5)
		return 0.5 * v
	}
	g := append([]float64(nil), logits...)
	_, n := SoftmaxCrossEntropy(g, vocab, labels, 0.5)
	if n != 3 {
		t.Fatalf("counted %d rows, want 3 (one is padding)", n)
	}
	checkGrad(t, "logits", logits, g, loss)
}

func TestSoftmaxCrossEntropyValue(t *testing.T) {
	// Uniform logits: loss is log(vocab) per counted row.
	l := make([]float32, 2*4)
	loss, n := SoftmaxCrossEntropy(l, 4, []int32{1, 3}, 1)
	if n != 2 || math.Abs(loss-2*math.Log(4)) > 1e-6 {
		t.Fatalf("loss %v over %d rows, want %v over 2", loss, n, 2*math.Log(4))
	}
	// Huge logits must not overflow.
	l = []float32{1e30, 0, -1e30}
	loss, _ = SoftmaxCrossEntropy(l, 3, []int32{0}, 1)
	if loss != 0 || math.IsNaN(float64(l[1])) {
		t.Fatalf("stable softmax: loss %v, grad %v", loss, l)
	}
}

func smallBatch(rng *rand.Rand, cfg Seq2SeqConfig, size, srcLen, tgtLen int) *SeqBatch {
	b := &SeqBatch{Size: size, SrcLen: srcLen, TgtLen: tgtLen}
	for range size * srcLen {
		b.Src = append(b.Src, int32(rng.IntN(cfg.SrcVocab)))
	}
	for range size * tgtLen {
		b.TgtIn = append(b.TgtIn, int32(rng.IntN(cfg.TgtVocab)))
		b.TgtOut = append(b.TgtOut, int32(rng.IntN(cfg.TgtVocab)))
	}
	b.TgtOut[len(b.TgtOut)-1] = -1 // one padded position
	return b
}

// The gradient of the whole model, its output layer in one chunk of rows
// and in chunks of 1 and 3 time steps (computed again in the backward
// pass, the last chunk first), by central differences.
func TestSeq2SeqGradient(t *testing.T) {
	cfg := Seq2SeqConfig{SrcVocab: 6, TgtVocab: 5, Embed: 3, Hidden: 4, Layers: 2, InitScale: 0.5, SoftmaxBlocks: 2}
	for _, steps := range []int{4, 1, 3} {
		t.Run(fmt.Sprintf("output_steps=%d", steps), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(5, 6))
			m := NewSeq2Seq[float64](cfg)
			m.outBudget = steps * 2 * cfg.TgtVocab
			m.Init(7)
			b := smallBatch(rng, cfg, 2, 3, 4)
			if err := b.Validate(cfg); err != nil {
				t.Fatal(err)
			}
			loss := func() float64 {
				l, _ := m.Loss(b, false)
				return l / float64(b.Size)
			}
			_, n := m.Loss(b, true)
			if n != 7 {
				t.Fatalf("counted %d target tokens, want 7", n)
			}
			if got := cap(m.ws.logits); got > steps*2*cfg.TgtVocab {
				t.Fatalf("logits of %d floats for chunks of %d time steps of %d rows of %d words", got, steps, 2, cfg.TgtVocab)
			}
			g := append([]float64(nil), m.Grads()...)
			checkGrad(t, "seq2seq", m.Params(), g, loss)
		})
	}
}

func TestSeq2SeqFloat32MatchesFloat64(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 9))
	cfg := Seq2SeqConfig{SrcVocab: 12, TgtVocab: 11, Embed: 8, Hidden: 16, Layers: 2}
	m32, m64 := NewSeq2Seq[float32](cfg), NewSeq2Seq[float64](cfg)
	m32.Init(3)
	m64.Init(3)
	b := smallBatch(rng, cfg, 4, 5, 6)
	l32, _ := m32.Loss(b, true)
	l64, _ := m64.Loss(b, true)
	if math.Abs(l32-l64) > 1e-4*math.Abs(l64) {
		t.Fatalf("loss float32 %v, float64 %v", l32, l64)
	}
	for i, g := range m64.Grads() {
		if math.Abs(float64(m32.Grads()[i])-g) > 1e-4+1e-3*math.Abs(g) {
			t.Fatalf("grad[%d]: float32 %v, float64 %v", i, m32.Grads()[i], g)
		}
	}
}

func TestInitIsPerTensor(t *testing.T) {
	cfg := Seq2SeqConfig{SrcVocab: 5, TgtVocab: 5, Embed: 2, Hidden: 3, Layers: 1}
	m := NewSeq2Seq[float32](cfg)
	m.Init(42)
	ts := cfg.Tensors()
	off := Offsets(ts)
	for i, tn := range ts {
		want := make([]float32, tn.Size())
		cfg.InitTensor(want, 42, tn)
		for j, v := range want {
			if m.Params()[off[i]+j] != v {
				t.Fatalf("%s[%d]: model %v, InitTensor %v", tn.Name, j, m.Params()[off[i]+j], v)
			}
			if v < -0.08 || v > 0.08 {
				t.Fatalf("%s[%d] = %v outside U(-0.08, 0.08)", tn.Name, j, v)
			}
		}
	}
}

func TestClipGlobalNorm(t *testing.T) {
	g := []float32{3, 4}
	if n := ClipGlobalNorm(g, nil, 1); n != 5 || math.Abs(float64(g[0])-0.6) > 1e-6 || math.Abs(float64(g[1])-0.8) > 1e-6 {
		t.Fatalf("clip: norm %v, g %v", n, g)
	}
	g = []float32{0.3, 0.4}
	ClipGlobalNorm(g, nil, 5)
	if g[0] != 0.3 || g[1] != 0.4 {
		t.Fatalf("clip changed a small gradient: %v", g)
	}
}

func TestEmbeddingGradient(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 12))
	const vocab, dim = 5, 3
	table := randSlice(rng, vocab*dim, 1)
	ids := []int32{4, 0, 4, 2} // a repeated id accumulates
	r := randSlice(rng, len(ids)*dim, 1)
	loss := func() float64 {
		out := make([]float64, len(ids)*dim)
		Embedding(out, table, dim, ids)
		return dot(r, out)
	}
	g := make([]float64, len(table))
	EmbeddingBackward(g, r, dim, ids)
	checkGrad(t, "embedding", table, g, loss)
}

// hookRecorder records what a model's hooks see: the spans NeedParams is
// called with, and whether GradsFree came. The gradient's first value holds
// a sentinel (as if the last step's push still read the gradients) that
// must survive until GradsFree.
type hookRecorder struct {
	spans [][2]int
	freed bool
}

// reset forgets what the hooks saw and sets the sentinel in grads.
func (r *hookRecorder) reset(grads []float32) {
	r.spans, r.freed = nil, false
	grads[0] = 42
}

// hooks are the recording hooks of a model whose gradients grads returns.
func (r *hookRecorder) hooks(t *testing.T, grads func() []float32) *Hooks {
	return &Hooks{
		NeedParams: func(lo, hi int) {
			if r.freed || grads()[0] != 42 {
				t.Fatal("NeedParams after GradsFree, or gradients written in the forward pass")
			}
			r.spans = append(r.spans, [2]int{lo, hi})
		},
		GradsFree: func() {
			if grads()[0] != 42 {
				t.Fatal("gradients written before GradsFree")
			}
			r.freed = true
		},
	}
}

// checkTiles fails t unless spans, in some order, cover [0, n) each once.
func checkTiles(t *testing.T, spans [][2]int, n int) {
	t.Helper()
	sorted := slices.Clone(spans)
	slices.SortFunc(sorted, func(a, b [2]int) int { return a[0] - b[0] })
	at := 0
	for _, s := range sorted {
		if s[0] != at || s[1] <= s[0] {
			t.Fatalf("spans %v do not tile the parameters", sorted)
		}
		at = s[1]
	}
	if at != n {
		t.Fatalf("spans end at %d of %d", at, n)
	}
}

// The hooks see every parameter exactly once, in the order the forward pass
// reads them, and GradsFree before any gradient is written; a model with
// hooks computes the same loss and gradient bits as one without.
func TestHooks(t *testing.T) {
	cfg := Seq2SeqConfig{Layers: 2, Hidden: 6, Embed: 5, SrcVocab: 9, TgtVocab: 7}
	plain, hooked := NewSeq2Seq[float32](cfg), NewSeq2Seq[float32](cfg)
	plain.Init(4)
	hooked.Init(4)
	var rec hookRecorder
	b := &SeqBatch{Size: 2, SrcLen: 3, TgtLen: 2, Src: []int32{1, 2, 3, 4, 5, 6}, TgtIn: []int32{1, 2, 3, 4}, TgtOut: []int32{2, 3, 4, 5}}
	hooked.Hooks = rec.hooks(t, hooked.Grads)
	rec.reset(hooked.Grads())
	l1, _ := plain.Loss(b, true)
	l2, _ := hooked.Loss(b, true)
	if l1 != l2 || !slices.Equal(plain.Grads(), hooked.Grads()) {
		t.Fatal("hooks changed the loss or the gradient")
	}
	if !rec.freed {
		t.Fatal("GradsFree not called")
	}
	spans := rec.spans
	if !slices.Equal(hooked.ReadOrder(), spans) {
		t.Fatalf("ReadOrder %v, hooks saw %v", hooked.ReadOrder(), spans)
	}
	// Spans tile the parameter vector, each once; the order is the forward
	// pass's: source embedding, encoder layers, target embedding, decoder
	// layers, output layer.
	L := cfg.Layers
	if len(spans) != 2*L+3 {
		t.Fatalf("%d spans", len(spans))
	}
	checkTiles(t, spans, len(hooked.Params()))
	E, V := cfg.Embed, cfg.TgtVocab
	if spans[0] != [2]int{0, cfg.SrcVocab * E} || spans[1+L] != [2]int{cfg.SrcVocab * E, cfg.SrcVocab*E + V*E} ||
		spans[2*L+2][1] != len(hooked.Params()) || spans[1][0] != cfg.SrcVocab*E+V*E {
		t.Fatalf("spans out of forward order: %v", spans)
	}
}

// Ranges names every parameter a step reads and every gradient it can make
// nonzero: poisoning the parameters outside them with NaN changes neither
// the loss nor any gradient bit, and the gradient outside them is zero. The
// ranges are sorted, disjoint and merged, and hold exactly the batch's rows.
func TestSeq2SeqRanges(t *testing.T) {
	cfg := Seq2SeqConfig{Layers: 2, Hidden: 6, Embed: 5, SrcVocab: 30, TgtVocab: 20}
	rng := rand.New(rand.NewPCG(5, 6))
	for trial := range 5 {
		b := smallBatch(rng, cfg, 3, 4, 3)
		if trial == 0 { // adjacent rows merge; the first and last rows
			b.Src = []int32{0, 1, 2, 29, 0, 1, 2, 29, 0, 1, 2, 29}
		}
		clean, poisoned := NewSeq2Seq[float32](cfg), NewSeq2Seq[float32](cfg)
		clean.Init(7)
		poisoned.Init(7)
		ranges := clean.Ranges(b, nil)
		inside := make([]bool, len(clean.Params()))
		end := -1
		for _, r := range ranges {
			if r[0] <= end || r[1] <= r[0] {
				t.Fatalf("ranges %v are not sorted, disjoint and merged", ranges)
			}
			end = r[1]
			for i := r[0]; i < r[1]; i++ {
				inside[i] = true
			}
		}
		for i, in := range inside {
			if !in {
				poisoned.Params()[i] = float32(math.NaN())
			}
		}
		l1, _ := clean.Loss(b, true)
		l2, _ := poisoned.Loss(b, true)
		if l1 != l2 || !slices.Equal(clean.Grads(), poisoned.Grads()) {
			t.Fatalf("trial %d: a parameter outside the ranges was read", trial)
		}
		for i, in := range inside {
			if !in && clean.Grads()[i] != 0 {
				t.Fatalf("trial %d: gradient %d outside the ranges is %v", trial, i, clean.Grads()[i])
			}
		}
		// Exactly the used rows of each table, and everything after them.
		E := cfg.Embed
		want := map[int]bool{}
		for _, id := range b.Src {
			want[int(id)*E] = true
		}
		for _, id := range b.TgtIn {
			want[cfg.SrcVocab*E+int(id)*E] = true
		}
		tables := (cfg.SrcVocab + cfg.TgtVocab) * E
		for row := 0; row < tables; row += E {
			if inside[row] != want[row] {
				t.Fatalf("trial %d: row at %d inside=%v, used=%v", trial, row, inside[row], want[row])
			}
		}
		if ranges[len(ranges)-1][1] != len(clean.Params()) || !inside[tables] {
			t.Fatalf("trial %d: the dense tensors are not whole in %v", trial, ranges)
		}
	}
}
