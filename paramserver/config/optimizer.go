package config

import (
	"errors"
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas/gonum"

	"github.com/downpour-ml/downpour/internal/vmath"
	"github.com/downpour-ml/downpour/internal/wire"
)

// Schedule is a learning-rate schedule over the update count t of a block
// (0 for its first update).
type Schedule struct {
	// Kind is "constant" (or empty), "halving" or "exp".
	Kind string `json:"kind,omitempty"`
	// halving (Sutskever et al.: after 5 epochs, halve every half epoch):
	// lr * 0.5^(1 + floor((t-HalveAfter)/HalveEvery)) once t >= HalveAfter.
	HalveAfter int64 `json:"halve_after,omitempty"`
	HalveEvery int64 `json:"halve_every,omitempty"`
	// exp (Goodfellow et al.'s code: divide by 1.000004 after every update,
	// never below 1e-6): max(lr / Decay^t, Floor).
	Decay float64 `json:"decay,omitempty"`
	Floor float64 `json:"floor,omitempty"`
}

// Rate is the learning rate of update t for base rate lr.
func (s Schedule) Rate(lr float64, t int64) float64 {
	switch s.Kind {
	case "halving":
		if t < s.HalveAfter {
			return lr
		}
		return lr * math.Pow(0.5, float64(1+(t-s.HalveAfter)/s.HalveEvery))
	case "exp":
		return math.Max(lr/math.Pow(s.Decay, float64(t)), s.Floor)
	}
	return lr
}

func (s Schedule) validate() error {
	switch s.Kind {
	case "", "constant":
	case "halving":
		if s.HalveAfter < 0 || s.HalveEvery < 1 {
			return fmt.Errorf("halving schedule needs halve-after >= 0 and halve-every >= 1 (got %d, %d)", s.HalveAfter, s.HalveEvery)
		}
	case "exp":
		if !(s.Decay >= 1) || s.Floor < 0 {
			return fmt.Errorf("exp schedule needs decay >= 1 and floor >= 0 (got %v, %v)", s.Decay, s.Floor)
		}
	default:
		return fmt.Errorf("learning-rate schedule %q: use constant, halving or exp", s.Kind)
	}
	return nil
}

// Optimizer is the update rule a shard applies to each of its blocks, with
// its hyperparameters. Its zero value is not valid: fill it from
// DefaultOptimizer.
type Optimizer struct {
	// Kind is "sgd", "momentum", "adagrad" or "adam".
	Kind     string   `json:"kind"`
	LR       float64  `json:"lr"`
	Schedule Schedule `json:"schedule"`
	// momentum: inc = m*inc - lr*g; w += inc (the update of the GAN authors'
	// pylearn2 code), with m ramping linearly from Momentum to MomentumFinal
	// between updates RampStart and RampEnd.
	Momentum      float64 `json:"momentum,omitempty"`
	MomentumFinal float64 `json:"momentum_final,omitempty"`
	RampStart     int64   `json:"ramp_start,omitempty"`
	RampEnd       int64   `json:"ramp_end,omitempty"`
	// adam (Kingma and Ba): Beta1, Beta2, Eps; adagrad (Duchi et al., as in
	// DistBelief): w -= lr*g/(sqrt(sum of g^2)+Eps).
	Beta1 float64 `json:"beta1,omitempty"`
	Beta2 float64 `json:"beta2,omitempty"`
	Eps   float64 `json:"eps,omitempty"`
}

// DefaultOptimizer returns kind with the usual hyperparameters and rate lr.
func DefaultOptimizer(kind string, lr float64) Optimizer {
	o := Optimizer{Kind: kind, LR: lr}
	switch kind {
	case "momentum":
		o.Momentum, o.MomentumFinal = 0.9, 0.9
	case "adagrad":
		o.Eps = 1e-8
	case "adam":
		o.Beta1, o.Beta2, o.Eps = 0.9, 0.999, 1e-8
	}
	return o
}

// Validate reports the first bad hyperparameter.
func (o Optimizer) Validate() error {
	if !(o.LR > 0) || math.IsInf(o.LR, 0) {
		return fmt.Errorf("learning rate must be positive (got %v)", o.LR)
	}
	if err := o.Schedule.validate(); err != nil {
		return err
	}
	switch o.Kind {
	case "sgd":
	case "momentum":
		if o.Momentum < 0 || o.Momentum >= 1 || o.MomentumFinal < 0 || o.MomentumFinal >= 1 {
			return fmt.Errorf("momentum must be in [0, 1) (got %v, %v)", o.Momentum, o.MomentumFinal)
		}
		if o.RampEnd < o.RampStart {
			return errors.New("momentum ramp must end after it starts")
		}
	case "adagrad":
		if !(o.Eps > 0) {
			return fmt.Errorf("adagrad needs eps > 0 (got %v)", o.Eps)
		}
	case "adam":
		if o.Beta1 < 0 || o.Beta1 >= 1 {
			return fmt.Errorf("adam needs beta1 in [0, 1) (got %v)", o.Beta1)
		}
		if o.Beta2 < 0 || o.Beta2 >= 1 {
			return fmt.Errorf("adam needs beta2 in [0, 1) (got %v)", o.Beta2)
		}
		if !(o.Eps > 0) {
			return fmt.Errorf("adam needs eps > 0 (got %v)", o.Eps)
		}
	default:
		return fmt.Errorf("optimizer %q: use sgd, momentum, adagrad or adam", o.Kind)
	}
	return nil
}

// Slots is the number of state vectors the optimizer keeps per parameter
// vector (momentum: 1, adagrad: 1, adam: 2).
func (o Optimizer) Slots() int {
	switch o.Kind {
	case "momentum", "adagrad":
		return 1
	case "adam":
		return 2
	}
	return 0
}

// MomentumAt is the momentum coefficient of update t.
func (o Optimizer) MomentumAt(t int64) float64 {
	switch {
	case t >= o.RampEnd:
		return o.MomentumFinal
	case t <= o.RampStart:
		return o.Momentum
	}
	f := float64(t-o.RampStart) / float64(o.RampEnd-o.RampStart)
	return o.Momentum + f*(o.MomentumFinal-o.Momentum)
}

// coef holds one update's scalars, computed once per block update.
type coef struct {
	lr, m, b1, c1, b2, c2, bc1, bc2, eps float32
}

func (o Optimizer) coef(t int64) coef {
	c := coef{lr: float32(o.Schedule.Rate(o.LR, t)), eps: float32(o.Eps)}
	switch o.Kind {
	case "momentum":
		c.m = float32(o.MomentumAt(t))
	case "adam":
		c.b1, c.c1 = float32(o.Beta1), float32(1-o.Beta1)
		c.b2, c.c2 = float32(o.Beta2), float32(1-o.Beta2)
		c.bc1 = float32(1 - math.Pow(o.Beta1, float64(t+1)))
		c.bc2 = float32(1 - math.Pow(o.Beta2, float64(t+1)))
	}
	return c
}

// Apply performs update t of w with gradient g, using and updating the
// optimizer's state slots (each len(w)). It works in place and allocates
// nothing; element i depends only on element i, so applying a block in pieces
// (or in parallel) gives bit-identical results.
func (o Optimizer) Apply(w, g []float32, slots [][]float32, t int64) {
	o.apply(o.coef(t), w, g, slots)
}

// applyChunk is how many gradient floats ApplyBytes converts at a time: the
// chunk stays in L1 cache, so reading the gradient from the message costs
// no extra pass over memory.
const applyChunk = 2048

// ApplyBytes is Apply with the gradient given as little-endian float32 bytes
// (len(g) == 4*len(w)), straight from a message. Its results are
// bit-identical to Apply's. Where g can be read in place (wire.Floats: an
// aligned block of a message), it is; else it is converted a chunk at a
// time.
func (o Optimizer) ApplyBytes(w []float32, g []byte, slots [][]float32, t int64) {
	if f, ok := wire.Floats(g); ok && len(f) == len(w) {
		o.Apply(w, f, slots, t)
		return
	}
	o.applyChunked(w, g, slots, t)
}

// applyChunked is ApplyBytes for a gradient that cannot be read in place.
func (o Optimizer) applyChunked(w []float32, g []byte, slots [][]float32, t int64) {
	c := o.coef(t)
	var buf [applyChunk]float32
	var sub [2][]float32
	for off := 0; off < len(w); off += applyChunk {
		end := min(off+applyChunk, len(w))
		wire.CopyFloats(buf[:end-off], g[4*off:4*end])
		for k := range slots {
			sub[k] = slots[k][off:end]
		}
		o.apply(c, w[off:end], buf[:end-off], sub[:len(slots)])
	}
}

func (o Optimizer) apply(c coef, w, g []float32, slots [][]float32) {
	g = g[:len(w)]
	switch o.Kind {
	case "sgd":
		if c.lr != 0 {
			// w + (-lr)*g is w - lr*g exactly (negation and the sum's
			// rounding are symmetric), in SIMD: the update is memory bound,
			// and a shard spends its CPU here.
			native.Saxpy(len(w), -c.lr, g, 1, w, 1)
			return
		}
		for i, gi := range g { // an lr that underflowed: Saxpy would skip -0 - 0*g
			w[i] -= float32(c.lr * gi)
		}
	case "momentum":
		inc := slots[0][:len(w)]
		// inc = m*inc - lr*g; w += inc in one SIMD pass, with the plain
		// loop's roundings (m*inc, lr*g, their difference, the sum).
		vmath.Momentum(w, g, inc, c.m, c.lr)
	case "adagrad":
		// acc += g*g; w -= lr*g / (sqrt(acc) + eps), in SIMD on every path
		// with the plain loop's roundings.
		vmath.Adagrad(w, g, slots[0][:len(w)], c.lr, c.eps)
	case "adam":
		// m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
		// w -= lr*(m/bc1) / (sqrt(v/bc2) + eps), likewise.
		vmath.Adam(w, g, slots[0][:len(w)], slots[1][:len(w)], vmath.AdamCoef{
			B1: c.b1, C1: c.c1, B2: c.b2, C2: c.c2, BC1: c.bc1, BC2: c.bc2, LR: c.lr, Eps: c.eps})
	default:
		panic("paramserver/config: unvalidated optimizer " + o.Kind)
	}
}

// native is gonum's own BLAS, whose float32 kernels on amd64 are SSE
// multiplies and adds, never fused: its results are the plain loop's, bit for
// bit. It is named explicitly so that a faster BLAS installed for the models
// (OpenBLAS fuses multiply-adds) never changes a shard's arithmetic.
var native gonum.Implementation
