package paramserver

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"unsafe"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/downpour-ml/downpour/internal/wire"
)

// bytesAt returns n bytes at an address that is mod (0-3) past a multiple
// of 4 (the allocator alone does not say: a small buffer may sit at any
// address).
func bytesAt(mod, n int) []byte {
	b := make([]byte, n+8)
	skip := (mod - int(uintptr(unsafe.Pointer(&b[0]))%4) + 4) % 4
	return b[skip : skip+n]
}

// ApplyBytes is bit-identical to Apply, for every optimizer and lengths
// around the chunk, both where it reads the gradient in place (aligned
// bytes) and where it converts it in cache-sized chunks (bytes at an odd
// address).
func TestApplyBytesMatchesApply(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	for _, o := range rampedOptimizers() {
		for _, n := range []int{1, applyChunk - 1, applyChunk, 3*applyChunk + 5} {
			for _, shift := range []int{0, 1} {
				w1, g := grads(rng, n), grads(rng, n)
				w2 := slices.Clone(w1)
				s1, s2 := make([][]float32, o.Slots()), make([][]float32, o.Slots())
				for k := range s1 {
					s1[k], s2[k] = make([]float32, n), make([]float32, n)
				}
				gb := wire.AppendFloats(bytesAt(shift, 4*n)[:0], g)
				if _, inPlace := wire.Floats(gb); inPlace != (shift == 0) {
					t.Fatalf("n=%d, shift %d: read in place %v", n, shift, inPlace)
				}
				for step := int64(0); step < 3; step++ {
					Apply(o, w1, g, s1, step)
					ApplyBytes(o, w2, gb, s2, step)
				}
				if !floatBits(w1, w2) {
					t.Fatalf("%s, n=%d, shift %d: ApplyBytes differs from Apply", o.Kind, n, shift)
				}
				for k := range s1 {
					if !floatBits(s1[k], s2[k]) {
						t.Fatalf("%s, n=%d, shift %d: optimizer state differs", o.Kind, n, shift)
					}
				}
			}
		}
	}
}

// The SIMD paths of sgd and momentum (and their fallbacks where lr or the
// momentum is zero) give the plain loop's bits exactly, signed zeros
// included, at lengths that leave SIMD remainders.
func TestApplyMatchesPlainLoop(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 3, 4, 7, 16, 1001} {
		for _, lr := range []float64{0, 0.1, 3e-3} {
			for _, m := range []float64{0, 0.9} {
				w, g, inc := grads(rng, n), grads(rng, n), grads(rng, n)
				for i := 0; i < n; i += 3 { // signed zeros, where a sum's sign depends on its order
					w[i], g[i] = float32(math.Copysign(0, float64(w[i]))), float32(math.Copysign(0, float64(g[i])))
					inc[i] = float32(math.Copysign(0, float64(inc[i])))
				}
				// sgd
				want, got := slices.Clone(w), slices.Clone(w)
				for i := range want {
					want[i] = want[i] - float32(float32(lr)*g[i])
				}
				Apply(job.Optimizer{Kind: "sgd", LR: lr}, got, g, nil, 0)
				if !floatBits(got, want) {
					t.Fatalf("sgd n=%d lr=%v: differs from the plain loop", n, lr)
				}
				// momentum
				o := job.Optimizer{Kind: "momentum", LR: lr, Momentum: m, MomentumFinal: m}
				wantW, wantInc := slices.Clone(w), slices.Clone(inc)
				for i := range wantW {
					v := float32(float32(m)*wantInc[i]) - float32(float32(lr)*g[i])
					wantInc[i] = v
					wantW[i] = wantW[i] + v
				}
				gotW, gotInc := slices.Clone(w), slices.Clone(inc)
				Apply(o, gotW, g, [][]float32{gotInc}, 0)
				if !floatBits(gotW, wantW) || !floatBits(gotInc, wantInc) {
					t.Fatalf("momentum n=%d lr=%v m=%v: differs from the plain loop", n, lr, m)
				}
			}
		}
	}
}

// rampedOptimizers is every kind of optimizer, each with a schedule or a
// momentum ramp, so that every coefficient varies with the step.
func rampedOptimizers() []job.Optimizer {
	sgd := job.DefaultOptimizer("sgd", 0.3)
	sgd.Schedule = job.Schedule{Kind: "halving", HalveAfter: 1, HalveEvery: 1}
	mom := job.DefaultOptimizer("momentum", 0.05)
	mom.Momentum, mom.MomentumFinal, mom.RampStart, mom.RampEnd = 0.5, 0.9, 0, 2
	ada := job.DefaultOptimizer("adagrad", 0.1)
	ada.Schedule = job.Schedule{Kind: "exp", Decay: 1.2, Floor: 0.05}
	adam := job.DefaultOptimizer("adam", 0.01)
	adam.Schedule = job.Schedule{Kind: "halving", HalveAfter: 2, HalveEvery: 1}
	return []job.Optimizer{sgd, mom, ada, adam}
}
