package config

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/downpour-ml/downpour/internal/wire"
)

func TestScheduleRates(t *testing.T) {
	halving := Schedule{Kind: "halving", HalveAfter: 10, HalveEvery: 4}
	for _, c := range []struct {
		s    Schedule
		t    int64
		want float64
	}{
		{Schedule{}, 1000, 0.7},
		{Schedule{Kind: "constant"}, 5, 0.7},
		{halving, 9, 0.7},
		{halving, 10, 0.35}, // the first halving, at epoch 5
		{halving, 13, 0.35},
		{halving, 14, 0.175}, // half an epoch later
		{halving, 22, 0.7 / 16},
		{Schedule{Kind: "exp", Decay: 2, Floor: 0.01}, 3, 0.7 / 8},
		{Schedule{Kind: "exp", Decay: 2, Floor: 0.01}, 7, 0.01}, // floored
		{Schedule{Kind: "exp", Decay: 1.000004, Floor: 1e-6}, 1_000_000, 0.7 / math.Pow(1.000004, 1e6)},
	} {
		if got := c.s.Rate(0.7, c.t); math.Abs(got-c.want) > 1e-15 {
			t.Errorf("%+v at %d: %v, want %v", c.s, c.t, got, c.want)
		}
	}
}

func TestMomentumRamp(t *testing.T) {
	o := Optimizer{Kind: "momentum", Momentum: 0.5, MomentumFinal: 0.7, RampStart: 100, RampEnd: 300}
	for _, c := range []struct {
		t    int64
		want float64
	}{{0, 0.5}, {100, 0.5}, {200, 0.6}, {250, 0.65}, {300, 0.7}, {1e6, 0.7}} {
		if got := o.MomentumAt(c.t); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("momentum at %d: %v, want %v", c.t, got, c.want)
		}
	}
	flat := Optimizer{Kind: "momentum", Momentum: 0.9, MomentumFinal: 0.9}
	if flat.MomentumAt(0) != 0.9 || flat.MomentumAt(50) != 0.9 {
		t.Fatal("a momentum without ramp is not constant")
	}
}

func TestOptimizerValidate(t *testing.T) {
	for _, k := range []string{"sgd", "momentum", "adagrad", "adam"} {
		if err := DefaultOptimizer(k, 0.1).Validate(); err != nil {
			t.Errorf("%s: %v", k, err)
		}
	}
	for _, c := range []struct {
		o    Optimizer
		says string
	}{
		{Optimizer{Kind: "sgd"}, "learning rate"},
		{Optimizer{Kind: "sgd", LR: math.Inf(1)}, "learning rate"},
		{Optimizer{Kind: "nesterov", LR: 1}, "use sgd"},
		{Optimizer{Kind: "momentum", LR: 1, Momentum: 1}, "momentum"},
		{Optimizer{Kind: "momentum", LR: 1, RampStart: 5, RampEnd: 2}, "ramp"},
		{Optimizer{Kind: "adagrad", LR: 1}, "eps"},
		{Optimizer{Kind: "adam", LR: 1, Beta1: 1, Eps: 1}, "beta1 in [0, 1) (got 1)"},
		{Optimizer{Kind: "adam", LR: 1, Beta2: -0.5, Eps: 1}, "beta2 in [0, 1) (got -0.5)"},
		{Optimizer{Kind: "adam", LR: 1}, "adam needs eps > 0 (got 0)"},
		{Optimizer{Kind: "sgd", LR: 1, Schedule: Schedule{Kind: "halving"}}, "halve-every"},
		{Optimizer{Kind: "sgd", LR: 1, Schedule: Schedule{Kind: "exp", Decay: 0.5}}, "decay"},
		{Optimizer{Kind: "sgd", LR: 1, Schedule: Schedule{Kind: "cosine"}}, "schedule"},
	} {
		if err := c.o.Validate(); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%+v: %v, want an error about %q", c.o, err, c.says)
		}
	}
}

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
	for _, o := range testOptimizers() {
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
					o.Apply(w1, g, s1, step)
					o.ApplyBytes(w2, gb, s2, step)
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
				Optimizer{Kind: "sgd", LR: lr}.Apply(got, g, nil, 0)
				if !floatBits(got, want) {
					t.Fatalf("sgd n=%d lr=%v: differs from the plain loop", n, lr)
				}
				// momentum
				o := Optimizer{Kind: "momentum", LR: lr, Momentum: m, MomentumFinal: m}
				wantW, wantInc := slices.Clone(w), slices.Clone(inc)
				for i := range wantW {
					v := float32(float32(m)*wantInc[i]) - float32(float32(lr)*g[i])
					wantInc[i] = v
					wantW[i] = wantW[i] + v
				}
				gotW, gotInc := slices.Clone(w), slices.Clone(inc)
				o.Apply(gotW, g, [][]float32{gotInc}, 0)
				if !floatBits(gotW, wantW) || !floatBits(gotInc, wantInc) {
					t.Fatalf("momentum n=%d lr=%v m=%v: differs from the plain loop", n, lr, m)
				}
			}
		}
	}
}

// testOptimizers is every kind of optimizer, each with a schedule or a
// momentum ramp, so that every coefficient varies with the step.
func testOptimizers() []Optimizer {
	sgd := DefaultOptimizer("sgd", 0.3)
	sgd.Schedule = Schedule{Kind: "halving", HalveAfter: 1, HalveEvery: 1}
	mom := DefaultOptimizer("momentum", 0.05)
	mom.Momentum, mom.MomentumFinal, mom.RampStart, mom.RampEnd = 0.5, 0.9, 0, 2
	ada := DefaultOptimizer("adagrad", 0.1)
	ada.Schedule = Schedule{Kind: "exp", Decay: 1.2, Floor: 0.05}
	adam := DefaultOptimizer("adam", 0.01)
	adam.Schedule = Schedule{Kind: "halving", HalveAfter: 2, HalveEvery: 1}
	return []Optimizer{sgd, mom, ada, adam}
}

// grads returns n standard normal values.
func grads(rng *rand.Rand, n int) []float32 {
	g := make([]float32, n)
	for i := range g {
		g[i] = float32(rng.NormFloat64())
	}
	return g
}

// floatBits reports whether a and b hold the same bits, NaNs and signed
// zeros included.
func floatBits(a, b []float32) bool {
	return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) })
}
