package models

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/downpour-ml/downpour/internal/kernel/vmath"
)

// GANConfig is the shape of the generative adversarial net of Goodfellow et
// al. (2014) on MNIST: a generator noise -> hidden ReLU -> hidden ReLU ->
// pixels sigmoid, and a discriminator pixels -> dropout -> maxout -> dropout
// -> maxout -> dropout -> one sigmoid unit.
type GANConfig struct {
	Noise      int     `json:"noise"`       // 100
	GHidden    int     `json:"g_hidden"`    // 1200
	Pixels     int     `json:"pixels"`      // 784
	DUnits     int     `json:"d_units"`     // 240
	DPieces    int     `json:"d_pieces"`    // 5
	KeepInput  float64 `json:"keep_input"`  // dropout keep probability on D's input: 0.8
	KeepHidden float64 `json:"keep_hidden"` // on D's hidden layers: 0.5
	GScale     float64 `json:"g_scale"`     // G weights U(-0.05, 0.05)
	DScale     float64 `json:"d_scale"`     // D weights U(-0.005, 0.005)
	// NoiseDist is the distribution of the generator's input: "gaussian",
	// N(0, 1) as the authors' code draws it, or "uniform" on [-sqrt 3,
	// sqrt 3] (also what "" means, in jobs written before the field); both
	// have zero mean and unit variance.
	NoiseDist string `json:"noise_dist,omitempty"`
}

// PaperGAN is the configuration of the paper's MNIST networks.
var PaperGAN = GANConfig{Noise: 100, GHidden: 1200, Pixels: 784, DUnits: 240, DPieces: 5,
	KeepInput: 0.8, KeepHidden: 0.5, GScale: 0.05, DScale: 0.005, NoiseDist: Gaussian}

// The generator's noise distributions (GANConfig.NoiseDist).
const (
	Gaussian = "gaussian"
	Uniform  = "uniform"
)

// Validate reports whether the shape is usable.
func (c GANConfig) Validate() error {
	if c.Noise < 1 || c.GHidden < 1 || c.Pixels < 1 || c.DUnits < 1 || c.DPieces < 1 {
		return fmt.Errorf("gan: every size must be positive (noise %d, generator hidden %d, pixels %d, discriminator units %d x %d pieces)", c.Noise, c.GHidden, c.Pixels, c.DUnits, c.DPieces)
	}
	if !(c.KeepInput > 0 && c.KeepInput <= 1 && c.KeepHidden > 0 && c.KeepHidden <= 1) {
		return fmt.Errorf("gan: keep probabilities must be in (0, 1] (got %v, %v)", c.KeepInput, c.KeepHidden)
	}
	if c.NoiseDist != "" && c.NoiseDist != Gaussian && c.NoiseDist != Uniform {
		return fmt.Errorf("gan: noise %q: use gaussian or uniform", c.NoiseDist)
	}
	return nil
}

// Tensors lists the GAN's tensors: the generator's (prefix "g.") then the
// discriminator's ("d."), two parameter groups in one flat vector.
func (c GANConfig) Tensors() []Tensor {
	mu := c.DUnits * c.DPieces
	return []Tensor{
		{Name: "g.l1.w", Shape: []int{c.Noise, c.GHidden}}, {Name: "g.l1.b", Shape: []int{c.GHidden}},
		{Name: "g.l2.w", Shape: []int{c.GHidden, c.GHidden}}, {Name: "g.l2.b", Shape: []int{c.GHidden}},
		{Name: "g.out.w", Shape: []int{c.GHidden, c.Pixels}}, {Name: "g.out.b", Shape: []int{c.Pixels}},
		{Name: "d.l1.w", Shape: []int{c.Pixels, mu}}, {Name: "d.l1.b", Shape: []int{mu}},
		{Name: "d.l2.w", Shape: []int{c.DUnits, mu}}, {Name: "d.l2.b", Shape: []int{mu}},
		{Name: "d.out.w", Shape: []int{c.DUnits, 1}}, {Name: "d.out.b", Shape: []int{1}},
	}
}

// Draw fills z with the generator's input, from rng: N(0, 1), or uniform
// on [-sqrt 3, sqrt 3] (NoiseDist).
func (c GANConfig) Draw(z []float32, rng *rand.Rand) {
	if c.NoiseDist == Gaussian {
		for i := range z {
			z[i] = float32(rng.NormFloat64())
		}
		return
	}
	for i := range z {
		z[i] = float32((2*rng.Float64() - 1) * math.Sqrt(3))
	}
}

// Sample draws n images (n x Pixels) from the generator with parameters
// params, the noise drawn from rng.
func Sample(c GANConfig, params []float32, n int, rng *rand.Rand) []float32 {
	g := NewGAN[float32](c)
	copy(g.Params(), params)
	z := make([]float32, n*c.Noise)
	c.Draw(z, rng)
	return g.Generate(z, n)
}

// GSize is the number of generator parameters: they come first.
func (c GANConfig) GSize() int { return TotalSize(c.Tensors()[:6]) }

// Linear is a dense layer y = x W + b, W in x out.
type Linear[T Float] struct {
	In, Out int
	W, B    []T
	DW, DB  []T
	x       []T // the input of the last forward pass
	y, dx   []T
	rows    int
}

func newLinear[T Float](in, out int, w, g *view[T]) *Linear[T] {
	return &Linear[T]{In: in, Out: out, W: w.take(in * out), B: w.take(out), DW: g.take(in * out), DB: g.take(out)}
}

// Forward computes y for x (rows x In), keeping x for Backward.
func (l *Linear[T]) Forward(x []T, rows int) []T {
	l.x, l.rows = x, rows
	l.y = grow(l.y, rows*l.Out)
	for r := 0; r < rows; r++ {
		copy(l.y[r*l.Out:(r+1)*l.Out], l.B)
	}
	matmul(l.y, x, false, l.W, false, rows, l.Out, l.In, true)
	return l.y
}

// Backward takes dy and returns dx; with params, it adds the parameter
// gradients into DW and DB.
func (l *Linear[T]) Backward(dy []T, params bool) []T { return l.backward(dy, params, true) }

// backward is Backward that computes dx only with input (else it returns
// nil): a first layer whose input is data has no use for it.
func (l *Linear[T]) backward(dy []T, params, input bool) []T {
	if params {
		matmul(l.DW, l.x, true, dy, false, l.In, l.Out, l.rows, true)
		addColSums(l.DB, dy)
	}
	if !input {
		return nil
	}
	l.dx = grow(l.dx, l.rows*l.In)
	matmul(l.dx, dy, false, l.W, true, l.rows, l.In, l.Out, false)
	return l.dx
}

// Maxout groups its input (rows x units*pieces, unit-major: the pieces of
// unit u are columns u*pieces .. u*pieces+pieces-1) and keeps each group's
// maximum.
type Maxout[T Float] struct {
	Units, Pieces int
	arg           []int32 // which piece won, rows x units
	y, dx         []T
}

func (m *Maxout[T]) Forward(x []T, rows int) []T {
	m.y = grow(m.y, rows*m.Units)
	if cap(m.arg) < rows*m.Units {
		m.arg = make([]int32, rows*m.Units)
	}
	m.arg = m.arg[:rows*m.Units]
	if y, ok := any(m.y).([]float32); ok {
		vmath.Maxout(y, m.arg, any(x).([]float32)[:len(y)*m.Pieces], m.Pieces)
		return m.y
	}
	for i := range m.y {
		g := x[i*m.Pieces : (i+1)*m.Pieces]
		best := 0
		for p := 1; p < m.Pieces; p++ {
			if g[p] > g[best] {
				best = p
			}
		}
		m.y[i], m.arg[i] = g[best], int32(best)
	}
	return m.y
}

func (m *Maxout[T]) Backward(dy []T) []T {
	m.dx = grow(m.dx, len(dy)*m.Pieces)
	clear(m.dx)
	for i, d := range dy {
		m.dx[i*m.Pieces+int(m.arg[i])] = d
	}
	return m.dx
}

// dropout multiplies x by mask in place (mask holds 0 or 1/keep: inverted
// dropout, so nothing changes at evaluation, where mask is nil).
func dropout[T Float](x, mask []T) {
	if mask == nil {
		return
	}
	if x32, ok := any(x).([]float32); ok {
		vmath.Mul(x32, any(mask).([]float32))
		return
	}
	for i := range x {
		x[i] *= mask[i]
	}
}

// DropoutMasks are the discriminator's three dropout masks for one pass:
// input (rows x Pixels) and the two hidden layers (rows x Units); nil masks
// mean no dropout.
type DropoutMasks[T Float] struct {
	In, H1, H2 []T
}

// RandomMasks draws the discriminator's dropout masks for rows examples:
// each entry is 0, or 1/keep with probability keep.
func RandomMasks(rng *rand.Rand, c GANConfig, rows int) DropoutMasks[float32] {
	mk := func(n int, keep float64) []float32 {
		m := make([]float32, n)
		for i := range m {
			if rng.Float64() < keep {
				m[i] = float32(1 / keep)
			}
		}
		return m
	}
	return DropoutMasks[float32]{In: mk(rows*c.Pixels, c.KeepInput), H1: mk(rows*c.DUnits, c.KeepHidden), H2: mk(rows*c.DUnits, c.KeepHidden)}
}

// GAN is a generator and a discriminator sharing one flat parameter vector.
type GAN[T Float] struct {
	Cfg          GANConfig
	params       []T
	grads        []T
	g1, g2, gOut *Linear[T]
	d1, d2, dOut *Linear[T]
	m1, m2       *Maxout[T]
	// step buffers
	h1, h2, img, dImgPre, dIn, a1, a2 []T
	dLogit, gLogit                    []T
	// Hooks, when set, let Step overlap moving parameters and gradients
	// with the computation: it reads the layers in the order of Params
	// (generator, then discriminator), one span per layer.
	Hooks  *Hooks
	spans  [][2]int // each layer's weights and bias, in Params order
	needed int      // spans NeedParams was called for in this step
}

// NewGAN allocates a GAN of shape cfg with zero parameters.
func NewGAN[T Float](cfg GANConfig) *GAN[T] {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	n := TotalSize(cfg.Tensors())
	m := &GAN[T]{Cfg: cfg, params: make([]T, n), grads: make([]T, n)}
	w, g := &view[T]{buf: m.params}, &view[T]{buf: m.grads}
	mu := cfg.DUnits * cfg.DPieces
	m.g1 = newLinear(cfg.Noise, cfg.GHidden, w, g)
	m.g2 = newLinear(cfg.GHidden, cfg.GHidden, w, g)
	m.gOut = newLinear(cfg.GHidden, cfg.Pixels, w, g)
	m.d1 = newLinear(cfg.Pixels, mu, w, g)
	m.d2 = newLinear(cfg.DUnits, mu, w, g)
	m.dOut = newLinear(cfg.DUnits, 1, w, g)
	m.m1 = &Maxout[T]{Units: cfg.DUnits, Pieces: cfg.DPieces}
	m.m2 = &Maxout[T]{Units: cfg.DUnits, Pieces: cfg.DPieces}
	ts, off := cfg.Tensors(), Offsets(cfg.Tensors())
	for i := 0; i < len(ts); i += 2 { // weights, then bias: one span per layer
		m.spans = append(m.spans, [2]int{off[i], off[i+1] + ts[i+1].Size()})
	}
	m.needed = len(m.spans)
	return m
}

// need calls the NeedParams hook for layer i (0-2 the generator's, 3-5 the
// discriminator's) the first time a step reads it.
func (m *GAN[T]) need(i int) {
	if i < m.needed {
		return
	}
	if m.Hooks != nil && m.Hooks.NeedParams != nil {
		for ; m.needed <= i; m.needed++ {
			m.Hooks.NeedParams(m.spans[m.needed][0], m.spans[m.needed][1])
		}
	}
	m.needed = max(m.needed, i+1)
}

// ReadOrder is the spans of Params in the order Step reads them: each
// layer's weights and bias, generator first (the order of Params).
func (m *GAN[T]) ReadOrder() [][2]int { return slices.Clone(m.spans) }

// Params is the flat parameter vector (generator first, GSize elements).
func (m *GAN[T]) Params() []T { return m.params }

// Grads is the flat gradient vector, laid out like Params.
func (m *GAN[T]) Grads() []T { return m.grads }

// Init sets weights U(-scale, scale) per network, from seed and tensor name;
// biases start at 0 (set the generator's output bias from the data with
// SetOutputBias).
func (m *GAN[T]) Init(seed uint64) {
	ts := m.Cfg.Tensors()
	for i, off := range Offsets(ts) {
		dst := m.params[off : off+ts[i].Size()]
		switch {
		case len(ts[i].Shape) == 1:
			clear(dst)
		case ts[i].Name[0] == 'g':
			InitUniform(dst, seed, ts[i].Name, m.Cfg.GScale)
		default:
			InitUniform(dst, seed, ts[i].Name, m.Cfg.DScale)
		}
	}
}

// SetOutputBias sets the generator's output bias to the logit of the mean
// pixel intensities (clipped to [eps, 1-eps]), as the authors' code does.
func (m *GAN[T]) SetOutputBias(mean []float64, eps float64) {
	for i, p := range mean {
		p = math.Min(math.Max(p, eps), 1-eps)
		m.gOut.B[i] = T(math.Log(p / (1 - p)))
	}
}

// Generate maps noise z (rows x Noise) to images (rows x Pixels, in (0, 1)).
// The result lives in the GAN's buffers until the next pass.
func (m *GAN[T]) Generate(z []T, rows int) []T {
	m.need(0)
	h := m.g1.Forward(z, rows)
	m.h1 = grow(m.h1, len(h))
	relu(m.h1, h)
	m.need(1)
	h = m.g2.Forward(m.h1, rows)
	m.h2 = grow(m.h2, len(h))
	relu(m.h2, h)
	m.need(2)
	o := m.gOut.Forward(m.h2, rows)
	m.img = grow(m.img, len(o))
	for i, v := range o {
		m.img[i] = T(sigmoid(float64(v)))
	}
	return m.img
}

// generatorBackward takes the gradient with respect to the images of the
// last Generate and adds the generator's parameter gradients.
func (m *GAN[T]) generatorBackward(dImg []T) {
	m.dImgPre = grow(m.dImgPre, len(dImg))
	for i, d := range dImg {
		s := m.img[i]
		m.dImgPre[i] = d * s * (1 - s)
	}
	dh := m.gOut.Backward(m.dImgPre, true)
	reluBackward(dh, m.h2)
	dh = m.g2.Backward(dh, true)
	reluBackward(dh, m.h1)
	m.g1.Backward(dh, true)
}

// discriminate returns D's logits (rows) for images x under masks, keeping
// what its backward pass needs. x is not changed.
func (m *GAN[T]) discriminate(x []T, rows int, masks DropoutMasks[T]) []T {
	m.dIn = grow(m.dIn, len(x))
	copy(m.dIn, x)
	dropout(m.dIn, masks.In)
	m.need(3)
	a := m.m1.Forward(m.d1.Forward(m.dIn, rows), rows)
	m.a1 = grow(m.a1, len(a))
	copy(m.a1, a)
	dropout(m.a1, masks.H1)
	m.need(4)
	a = m.m2.Forward(m.d2.Forward(m.a1, rows), rows)
	m.a2 = grow(m.a2, len(a))
	copy(m.a2, a)
	dropout(m.a2, masks.H2)
	m.need(5)
	return m.dOut.Forward(m.a2, rows)
}

// discriminatorBackward takes the gradient with respect to D's logits and
// returns the gradient with respect to its input images; with params, it
// adds D's parameter gradients.
func (m *GAN[T]) discriminatorBackward(dLogit []T, masks DropoutMasks[T], params bool) []T {
	return m.discriminatorBackwardTo(dLogit, masks, params, true)
}

// discriminatorBackwardTo is discriminatorBackward that computes the
// gradient with respect to the images only with input (else it returns nil).
func (m *GAN[T]) discriminatorBackwardTo(dLogit []T, masks DropoutMasks[T], params, input bool) []T {
	d := m.dOut.Backward(dLogit, params)
	dropout(d, masks.H2)
	d = m.d2.Backward(m.m2.Backward(d), params)
	dropout(d, masks.H1)
	d = m.d1.backward(m.m1.Backward(d), params, input)
	if input {
		dropout(d, masks.In)
	}
	return d
}

func relu[T Float](dst, x []T) {
	if d32, ok := any(dst).([]float32); ok {
		vmath.ReLU(d32[:len(x)], any(x).([]float32))
		return
	}
	for i, v := range x {
		if v > 0 {
			dst[i] = v
		} else {
			dst[i] = 0
		}
	}
}

// reluBackward zeroes d where the ReLU's output y was 0.
func reluBackward[T Float](d, y []T) {
	if d32, ok := any(d).([]float32); ok {
		vmath.ReLUBackward(d32[:len(y)], any(y).([]float32))
		return
	}
	for i, v := range y {
		if v <= 0 {
			d[i] = 0
		}
	}
}

// softplus is log(1+e^x), stable.
func softplus(x float64) float64 {
	if x > 0 {
		return x + math.Log1p(math.Exp(-x))
	}
	return math.Log1p(math.Exp(x))
}

// DLoss is the discriminator's loss on a batch of real images x and noise z
// (rows each): 0.5 (BCE(1, D(x)) + BCE(0, D(G(z)))), averaged over the batch,
// with the given dropout masks for the real and the fake pass. With
// backward, Grads holds its gradient with respect to D's parameters (and
// zero for G's).
func (m *GAN[T]) DLoss(x, z []T, rows int, real, fake DropoutMasks[T], backward bool) float64 {
	if backward {
		clear(m.grads)
	}
	scale := 0.5 / float64(rows)
	var loss float64
	fakeImg := m.Generate(z, rows) // discriminate copies its input: this stays valid
	for pass, in := range [][]T{x, fakeImg} {
		masks, target := real, 1.0
		if pass == 1 {
			masks, target = fake, 0
		}
		a := m.discriminate(in, rows, masks)
		d := make([]T, rows)
		for i, v := range a {
			s := sigmoid(float64(v))
			if target == 1 {
				loss += scale * softplus(-float64(v))
				d[i] = T(scale * (s - 1))
			} else {
				loss += scale * softplus(float64(v))
				d[i] = T(scale * s)
			}
		}
		if backward {
			m.discriminatorBackwardTo(d, masks, true, false) // D's loss needs no gradient for the images
		}
	}
	return loss
}

// GLoss is the generator's loss on noise z (rows) through D with masks:
// BCE(1, D(G(z))) averaged over the batch (the non-saturating loss), or with
// minimax, the paper's -BCE(0, D(G(z))) = log(1 - D(G(z))). With backward,
// Grads holds its gradient with respect to G's parameters (and zero for
// D's).
func (m *GAN[T]) GLoss(z []T, rows int, masks DropoutMasks[T], minimax, backward bool) float64 {
	m.Generate(z, rows)
	return m.GLossAfterD(rows, masks, minimax, backward)
}

// GLossAfterD is GLoss on the images the last DLoss generated (its
// generator pass is reused, as one training step does: D's update, then G's
// through the updated D). G's parameters must not have changed since.
func (m *GAN[T]) GLossAfterD(rows int, masks DropoutMasks[T], minimax, backward bool) float64 {
	if backward {
		clear(m.grads)
	}
	a := m.discriminate(m.img, rows, masks)
	scale := 1 / float64(rows)
	var loss float64
	d := make([]T, rows)
	for i, v := range a {
		s := sigmoid(float64(v))
		if minimax {
			loss -= scale * softplus(float64(v))
			d[i] = T(-scale * s)
		} else {
			loss += scale * softplus(-float64(v))
			d[i] = T(scale * (s - 1))
		}
	}
	if backward {
		m.generatorBackward(m.discriminatorBackward(d, masks, false))
	}
	return loss
}

// Step computes one update of the authors' training (AdversaryCost2 in
// Goodfellow et al.'s code): D's loss, 0.5 (BCE(1, D(x)) + BCE(0, D(G(z)))),
// and G's, BCE(1, D(G(z))) (or with minimax log(1 - D(G(z)))), on real
// images x and noise z (rows each), from the same parameters and the same
// forward pass: one fake batch, and D's fake pass with its dropout masks
// shared by both losses. Grads then holds D's loss's gradient with respect
// to D's parameters and G's loss's with respect to G's, to be applied
// together, and the losses are returned. The bits are those of DLoss (with
// real and fake) for D's part and GLoss (with fake) for G's; Step just does
// the generator and the fake discriminator pass once.
func (m *GAN[T]) Step(x, z []T, rows int, real, fake DropoutMasks[T], minimax bool) (dLoss, gLoss float64) {
	m.needed = 0
	defer func() { m.needed = len(m.spans) }()
	m.Generate(z, rows)
	m.dLogit = grow(m.dLogit, rows)
	m.gLogit = grow(m.gLogit, rows)
	dScale, gScale := 0.5/float64(rows), 1/float64(rows)
	for i, v := range m.discriminate(x, rows, real) {
		dLoss += dScale * softplus(-float64(v))
		m.dLogit[i] = T(dScale * (sigmoid(float64(v)) - 1))
	}
	if m.Hooks != nil && m.Hooks.GradsFree != nil {
		m.Hooks.GradsFree()
	}
	clear(m.grads)
	m.discriminatorBackwardTo(m.dLogit, real, true, false)
	for i, v := range m.discriminate(m.img, rows, fake) {
		s := sigmoid(float64(v))
		dLoss += dScale * softplus(float64(v))
		m.dLogit[i] = T(dScale * s)
		if minimax {
			gLoss -= gScale * softplus(float64(v))
			m.gLogit[i] = T(-gScale * s)
		} else {
			gLoss += gScale * softplus(-float64(v))
			m.gLogit[i] = T(gScale * (s - 1))
		}
	}
	m.discriminatorBackwardTo(m.dLogit, fake, true, false)
	m.generatorBackward(m.discriminatorBackward(m.gLogit, fake, false))
	return dLoss, gLoss
}
