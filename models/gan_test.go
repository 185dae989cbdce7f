package models

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

var smallGAN = GANConfig{Noise: 3, GHidden: 5, Pixels: 4, DUnits: 3, DPieces: 2, KeepInput: 0.8, KeepHidden: 0.5, GScale: 0.8, DScale: 0.8}

func mask(rng *rand.Rand, n int, keep float64) []float64 {
	m := make([]float64, n)
	for i := range m {
		if rng.Float64() < keep {
			m[i] = 1 / keep
		}
	}
	return m
}

func ganMasks(rng *rand.Rand, c GANConfig, rows int) DropoutMasks[float64] {
	return DropoutMasks[float64]{In: mask(rng, rows*c.Pixels, c.KeepInput), H1: mask(rng, rows*c.DUnits, c.KeepHidden), H2: mask(rng, rows*c.DUnits, c.KeepHidden)}
}

func TestLinearGradient(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 1))
	ts := []Tensor{{Name: "w", Shape: []int{3, 4}}, {Name: "b", Shape: []int{4}}}
	params := randSlice(rng, TotalSize(ts), 1)
	grads := make([]float64, len(params))
	l := newLinear(3, 4, &view[float64]{buf: params}, &view[float64]{buf: grads})
	x := randSlice(rng, 2*3, 1)
	r := randSlice(rng, 2*4, 1)
	loss := func() float64 { return dot(r, l.Forward(x, 2)) }
	l.Forward(x, 2)
	dx := append([]float64(nil), l.Backward(r, true)...)
	checkGrad(t, "linear params", params, grads, loss)
	checkGrad(t, "linear x", x, dx, loss)
}

func TestMaxoutAndDropoutGradient(t *testing.T) {
	rng := rand.New(rand.NewPCG(22, 2))
	m := &Maxout[float64]{Units: 3, Pieces: 4}
	x := randSlice(rng, 2*12, 1)
	msk := mask(rng, 2*3, 0.5)
	r := randSlice(rng, 2*3, 1)
	loss := func() float64 {
		y := append([]float64(nil), m.Forward(x, 2)...)
		dropout(y, msk)
		return dot(r, y)
	}
	m.Forward(x, 2)
	d := append([]float64(nil), r...)
	dropout(d, msk)
	checkGrad(t, "maxout+dropout", x, m.Backward(d), loss)
	// The maximum is taken per unit over its own pieces.
	y := m.Forward([]float64{1, 5, 2, 0, -1, -3, -2, -9, 7, 7.5, 1, 2}, 1)
	if y[0] != 5 || y[1] != -1 || y[2] != 7.5 {
		t.Fatalf("maxout %v", y)
	}
}

// The whole D and G losses, every parameter, by central differences, with
// fixed dropout masks.
func TestGANLossGradients(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 3))
	m := NewGAN[float64](smallGAN)
	m.Init(5)
	for i := range m.Params() { // biases too, so every ReLU and maxout is exercised
		m.Params()[i] += rng.NormFloat64() * 0.1
	}
	const rows = 3
	x := randSlice(rng, rows*smallGAN.Pixels, 0.5)
	for i := range x {
		x[i] += 0.5
	}
	z := randSlice(rng, rows*smallGAN.Noise, math.Sqrt(3))
	real, fake := ganMasks(rng, smallGAN, rows), ganMasks(rng, smallGAN, rows)
	m.DLoss(x, z, rows, real, fake, true)
	g := append([]float64(nil), m.Grads()...)
	for i := 0; i < smallGAN.GSize(); i++ {
		if g[i] != 0 {
			t.Fatalf("D loss has a gradient for generator parameter %d", i)
		}
	}
	gs := smallGAN.GSize() // D's loss is differentiated with respect to D's parameters only
	checkGrad(t, "D loss", m.Params()[gs:], g[gs:], func() float64 { return m.DLoss(x, z, rows, real, fake, false) })
	for _, minimax := range []bool{false, true} {
		m.GLoss(z, rows, fake, minimax, true)
		g = append([]float64(nil), m.Grads()...)
		for i := smallGAN.GSize(); i < len(g); i++ {
			if g[i] != 0 {
				t.Fatalf("G loss has a gradient for discriminator parameter %d", i)
			}
		}
		checkGrad(t, "G loss", m.Params()[:gs], g[:gs], func() float64 { return m.GLoss(z, rows, fake, minimax, false) })
	}
}

// GLossAfterD reuses the generator pass of the last DLoss: same loss and
// gradients as GLoss on the same noise.
func TestGLossAfterDMatchesGLoss(t *testing.T) {
	rng := rand.New(rand.NewPCG(24, 4))
	m := NewGAN[float64](smallGAN)
	m.Init(9)
	const rows = 2
	x := randSlice(rng, rows*smallGAN.Pixels, 0.5)
	z := randSlice(rng, rows*smallGAN.Noise, 1)
	real, fake, gm := ganMasks(rng, smallGAN, rows), ganMasks(rng, smallGAN, rows), ganMasks(rng, smallGAN, rows)
	m.DLoss(x, z, rows, real, fake, true)
	a := m.GLossAfterD(rows, gm, false, true)
	ga := append([]float64(nil), m.Grads()...)
	b := m.GLoss(z, rows, gm, false, true)
	if a != b || !slices.Equal(ga, m.Grads()) {
		t.Fatalf("GLossAfterD %v, GLoss %v", a, b)
	}
}

func TestGANInit(t *testing.T) {
	m := NewGAN[float32](PaperGAN)
	m.Init(1)
	off := Offsets(PaperGAN.Tensors())
	for i, tn := range PaperGAN.Tensors() {
		scale := float32(PaperGAN.DScale)
		if tn.Name[0] == 'g' {
			scale = float32(PaperGAN.GScale)
		}
		for _, v := range m.Params()[off[i] : off[i]+tn.Size()] {
			if v < -scale || v > scale || len(tn.Shape) == 1 && v != 0 {
				t.Fatalf("%s: %v outside U(-%v, %v)", tn.Name, v, scale, scale)
			}
		}
	}
	m.SetOutputBias([]float64{0.5, 0, 1}, 1e-3)
	b := m.gOut.B
	if b[0] != 0 || math.Abs(float64(b[1])-math.Log(1e-3/(1-1e-3))) > 1e-4 || b[2] != -b[1] {
		t.Fatalf("output bias %v", b[:3])
	}
	if PaperGAN.GSize() != 100*1200+1200+1200*1200+1200+1200*784+784 {
		t.Fatal("generator size")
	}
}

// Step is the authors' simultaneous update: its D half is DLoss's gradient
// and its G half GLoss's through the fake pass's masks, bit for bit, in
// float32 as trained, for both G losses; and both halves pass central
// differences of their own loss.
func TestGANStepIsDLossAndGLoss(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 5))
	cfg := GANConfig{Noise: 7, GHidden: 33, Pixels: 20, DUnits: 9, DPieces: 3, KeepInput: 0.8, KeepHidden: 0.5, GScale: 0.5, DScale: 0.5}
	const rows = 6
	m, ref := NewGAN[float32](cfg), NewGAN[float32](cfg)
	m.Init(3)
	for i := range m.Params() {
		m.Params()[i] += float32(rng.NormFloat64() * 0.1)
	}
	copy(ref.Params(), m.Params())
	x := make([]float32, rows*cfg.Pixels)
	for i := range x {
		x[i] = rng.Float32()
	}
	z := make([]float32, rows*cfg.Noise)
	cfg.Draw(z, rng)
	real, fake := RandomMasks(rng, cfg, rows), RandomMasks(rng, cfg, rows)
	gs := cfg.GSize()
	for _, minimax := range []bool{false, true} {
		dl, gl := m.Step(x, z, rows, real, fake, minimax)
		wantD := ref.DLoss(x, z, rows, real, fake, true)
		dg := slices.Clone(ref.Grads()[gs:])
		wantG := ref.GLoss(z, rows, fake, minimax, true)
		if dl != wantD || gl != wantG {
			t.Fatalf("minimax %v: losses %v %v, want %v %v", minimax, dl, gl, wantD, wantG)
		}
		if !slices.Equal(m.Grads()[gs:], dg) || !slices.Equal(m.Grads()[:gs], ref.Grads()[:gs]) {
			t.Fatalf("minimax %v: Step's gradient differs from DLoss's and GLoss's", minimax)
		}
	}

	f := NewGAN[float64](smallGAN)
	f.Init(5)
	for i := range f.Params() {
		f.Params()[i] += rng.NormFloat64() * 0.1
	}
	const r = 3
	x64 := randSlice(rng, r*smallGAN.Pixels, 0.5)
	for i := range x64 {
		x64[i] += 0.5
	}
	z64 := randSlice(rng, r*smallGAN.Noise, math.Sqrt(3))
	re, fa := ganMasks(rng, smallGAN, r), ganMasks(rng, smallGAN, r)
	gs = smallGAN.GSize()
	for _, minimax := range []bool{false, true} {
		f.Step(x64, z64, r, re, fa, minimax)
		g := slices.Clone(f.Grads())
		checkGrad(t, "Step D", f.Params()[gs:], g[gs:], func() float64 { return f.DLoss(x64, z64, r, re, fa, false) })
		checkGrad(t, "Step G", f.Params()[:gs], g[:gs], func() float64 { return f.GLoss(z64, r, fa, minimax, false) })
	}
}

// Step's hooks see each layer once, in the order of Params, before it is
// read, and GradsFree before any gradient is written; with hooks the bits
// are the same. The other passes (DLoss, Generate) call no hook.
func TestGANStepHooks(t *testing.T) {
	rng := rand.New(rand.NewPCG(26, 6))
	plain, hooked := NewGAN[float32](smallGAN), NewGAN[float32](smallGAN)
	plain.Init(4)
	hooked.Init(4)
	const rows = 3
	x := make([]float32, rows*smallGAN.Pixels)
	for i := range x {
		x[i] = rng.Float32()
	}
	z := make([]float32, rows*smallGAN.Noise)
	smallGAN.Draw(z, rng)
	real, fake := RandomMasks(rng, smallGAN, rows), RandomMasks(rng, smallGAN, rows)
	var rec hookRecorder
	hooked.Hooks = rec.hooks(t, hooked.Grads)
	for round := range 2 {
		rec.reset(hooked.Grads())
		l1, a1 := plain.Step(x, z, rows, real, fake, false)
		l2, a2 := hooked.Step(x, z, rows, real, fake, false)
		if l1 != l2 || a1 != a2 || !slices.Equal(plain.Grads(), hooked.Grads()) {
			t.Fatal("hooks changed the losses or the gradient")
		}
		spans := rec.spans
		if !rec.freed || !slices.Equal(spans, hooked.ReadOrder()) || len(spans) != 6 {
			t.Fatalf("round %d: freed %v, spans %v, read order %v", round, rec.freed, spans, hooked.ReadOrder())
		}
		if !slices.IsSortedFunc(spans, func(a, b [2]int) int { return a[0] - b[0] }) {
			t.Fatalf("spans %v are not in the order of Params", spans)
		}
		checkTiles(t, spans, len(hooked.Params()))
	}
	rec.spans = nil
	hooked.DLoss(x, z, rows, real, fake, true)
	hooked.Generate(z, rows)
	if rec.spans != nil {
		t.Fatalf("hooks called outside Step: %v", rec.spans)
	}
}

// Draw gives the noise the config names: N(0, 1) (values beyond sqrt 3
// occur), or uniform within [-sqrt 3, sqrt 3]; both with mean 0 and
// variance 1. The paper's configuration draws Gaussian noise, as the
// authors' code does.
func TestDraw(t *testing.T) {
	if PaperGAN.NoiseDist != Gaussian {
		t.Fatalf("PaperGAN draws %q noise", PaperGAN.NoiseDist)
	}
	for _, dist := range []string{Gaussian, Uniform, ""} {
		c := PaperGAN
		c.NoiseDist = dist
		z := make([]float32, 200000)
		c.Draw(z, rand.New(rand.NewPCG(7, 7)))
		var sum, sq float64
		beyond := 0
		for _, v := range z {
			sum += float64(v)
			sq += float64(v) * float64(v)
			if math.Abs(float64(v)) > math.Sqrt(3) {
				beyond++
			}
		}
		mean, variance := sum/float64(len(z)), sq/float64(len(z))-sum*sum/float64(len(z)*len(z))
		if math.Abs(mean) > 0.01 || math.Abs(variance-1) > 0.01 {
			t.Errorf("%q: mean %v, variance %v", dist, mean, variance)
		}
		// P(|N(0,1)| > sqrt 3) = 0.0833
		if dist == Gaussian && math.Abs(float64(beyond)/float64(len(z))-0.0833) > 0.003 || dist != Gaussian && beyond != 0 {
			t.Errorf("%q: %d of %d beyond sqrt 3", dist, beyond, len(z))
		}
	}
	c := PaperGAN
	c.NoiseDist = "cauchy"
	if err := c.Validate(); err == nil {
		t.Fatal("unknown noise accepted")
	}
}
