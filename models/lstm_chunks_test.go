package models

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// A layer run chunk by chunk of time steps, as a pipelined stage runs it
// (its input arriving a chunk at a time, the gradient of its outputs a
// chunk at a time, latest first), gives the bits of one Forward and one
// Backward: the outputs, the final state, the input gradient chunk by
// chunk, the initial state's gradient and every parameter gradient. (On
// the project's kernels, whose products by rows are bits of the whole; a
// build with -tags openblas gets the same values to rounding, checked so.)
func TestLSTMByChunksGivesOneShotBits(t *testing.T) {
	same := func(a, b []float32) bool { return slices.Equal(a, b) }
	if BLAS == "openblas" {
		same = func(a, b []float32) bool {
			return len(a) == len(b) && closeAll(a, b, 1e-5)
		}
	}
	const in, H, steps, batch = 13, 24, 11, 5
	rng := rand.New(rand.NewPCG(21, 22))
	fill := func(n int) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(rng.NormFloat64()) * 0.5
		}
		return x
	}
	newLayer := func(params []float32) *LSTM[float32] {
		w := &view[float32]{buf: slices.Clone(params)}
		g := &view[float32]{buf: make([]float32, len(params))}
		return newLSTM(in, H, w, g)
	}
	params := fill(in*4*H + H*4*H + 4*H)
	x, h0, c0 := fill(steps*batch*in), fill(batch*H), fill(batch*H)
	dOut, dhT, dcT := fill(steps*batch*H), fill(batch*H), fill(batch*H)

	whole := newLayer(params)
	c := whole.Forward(nil, x, steps, batch, h0, c0)
	dx, dh0, dc0 := whole.Backward(c, dOut, dhT, dcT, true)
	wantDX, wantDH0, wantDC0 := slices.Clone(dx), slices.Clone(dh0), slices.Clone(dc0)

	for _, chunks := range [][]int{{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {3, 3, 3, 2}, {5, 6}, {10, 1}, {11}} {
		t.Run(fmt.Sprint(chunks), func(t *testing.T) {
			l := newLayer(params)
			k := l.Begin(nil, nil, steps, batch, h0, c0)
			t0 := 0
			for _, n := range chunks { // the input arrives a chunk at a time
				copy(k.X[t0*batch*in:], x[t0*batch*in:(t0+n)*batch*in])
				l.Steps(k, t0, t0+n)
				t0 += n
			}
			if !same(k.HS, c.HS) || !same(k.CS, c.CS) {
				t.Fatal("the states differ from one Forward's")
			}
			l.BackBegin(k, dhT, dcT)
			t1 := steps
			for i := len(chunks) - 1; i >= 0; i-- { // the outputs' gradient, latest first
				n := chunks[i]
				got := l.BackSteps(k, dOut[(t1-n)*batch*H:t1*batch*H], t1-n, t1, true)
				if !same(got, wantDX[(t1-n)*batch*in:t1*batch*in]) {
					t.Fatalf("the input gradient of steps %d-%d differs", t1-n, t1)
				}
				t1 -= n
			}
			gh0, gc0 := l.BackFinish(k)
			if !same(gh0, wantDH0) || !same(gc0, wantDC0) {
				t.Fatal("the initial state's gradient differs")
			}
			if !same(l.DWx, whole.DWx) || !same(l.DWh, whole.DWh) || !same(l.DB, whole.DB) {
				t.Fatal("the parameter gradients differ")
			}
		})
	}
}

// closeAll says whether a and b agree within tol, relative to the larger
// magnitude (or absolute below 1).
func closeAll(a, b []float32, tol float64) bool {
	for i := range a {
		d, m := float64(a[i]-b[i]), max(1, abs64(float64(a[i])), abs64(float64(b[i])))
		if abs64(d) > tol*m {
			return false
		}
	}
	return true
}

func abs64(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
