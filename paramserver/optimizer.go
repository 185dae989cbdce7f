package paramserver

import (
	"math"

	"gonum.org/v1/gonum/blas/gonum"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/kernel/vmath"
	"github.com/downpour-ml/downpour/internal/wire"
)

// The optimizer's update arithmetic: a shard applies update t of its job's
// optimizer (job.Optimizer, the settings every role agrees on) to a block.

// coef holds one update's scalars, computed once per block update.
type coef struct {
	lr, m, b1, c1, b2, c2, bc1, bc2, eps float32
}

func coefOf(o job.Optimizer, t int64) coef {
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

// Apply performs update t of optimizer o on w with gradient g, using and
// updating the optimizer's state slots (each len(w)). It works in place and
// allocates nothing; element i depends only on element i, so applying a
// block in pieces (or in parallel) gives bit-identical results.
func Apply(o job.Optimizer, w, g []float32, slots [][]float32, t int64) {
	apply(o, coefOf(o, t), w, g, slots)
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
func ApplyBytes(o job.Optimizer, w []float32, g []byte, slots [][]float32, t int64) {
	if f, ok := wire.Floats(g); ok && len(f) == len(w) {
		Apply(o, w, f, slots, t)
		return
	}
	applyChunked(o, w, g, slots, t)
}

// applyChunked is ApplyBytes for a gradient that cannot be read in place.
func applyChunked(o job.Optimizer, w []float32, g []byte, slots [][]float32, t int64) {
	c := coefOf(o, t)
	var buf [applyChunk]float32
	var sub [2][]float32
	for off := 0; off < len(w); off += applyChunk {
		end := min(off+applyChunk, len(w))
		wire.CopyFloats(buf[:end-off], g[4*off:4*end])
		for k := range slots {
			sub[k] = slots[k][off:end]
		}
		apply(o, c, w[off:end], buf[:end-off], sub[:len(slots)])
	}
}

func apply(o job.Optimizer, c coef, w, g []float32, slots [][]float32) {
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
		panic("paramserver: unvalidated optimizer " + o.Kind)
	}
}

// native is gonum's own BLAS, whose float32 kernels on amd64 are SSE
// multiplies and adds, never fused: its results are the plain loop's, bit for
// bit. It is named explicitly so that a faster BLAS installed for the models
// (OpenBLAS fuses multiply-adds) never changes a shard's arithmetic.
var native gonum.Implementation
