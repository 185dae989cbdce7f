package models

import (
	"gonum.org/v1/gonum/blas/gonum"

	"github.com/downpour-ml/downpour/internal/kernel/vmath"
)

// Float32 kernels of the activation functions: the LSTM evaluates tens of
// millions of sigmoids and tanhs per step, and math.Exp in float64 would
// dominate the step. They are internal/kernel/vmath's, tested against math over
// their whole range there.

func sigmoid32(x float32) float32 { return vmath.Sigmoid(x) }
func tanh32(x float32) float32    { return vmath.Tanh(x) }

// cellBackwardFast is the LSTM cell's backward pass in float32, in every
// build: internal/kernel/vmath's, which gives the bits of the generic loop in
// LSTM.Backward.
func cellBackwardFast(g, cPrev, tc, dh, dc, dg []float32, H int) {
	vmath.LSTMCellBackward(g, cPrev, tc, dh, dc, dg, H)
}

// addTo sets dst[i] += src[i]; float32 goes through gonum's SIMD axpy with
// alpha 1 (a multiply by 1 is exact, and it never fuses), so the bits are
// the loop's.
func addTo[T Float](dst, src []T) {
	if d, ok := any(dst).([]float32); ok {
		gonum.Implementation{}.Saxpy(len(d), 1, any(src).([]float32), 1, d, 1)
		return
	}
	for i, v := range src[:len(dst)] {
		dst[i] += v
	}
}
