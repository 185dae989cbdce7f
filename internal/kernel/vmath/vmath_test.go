package vmath

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/downpour-ml/downpour/internal/kernel/gemm"
)

func ulps(got float32, want float64) float64 {
	w := float32(want)
	if got == w {
		return 0
	}
	ulp := math.Nextafter32(w, float32(math.Inf(1))) - w
	if ulp == 0 || math.IsInf(float64(ulp), 0) {
		ulp = w - math.Nextafter32(w, float32(math.Inf(-1)))
	}
	return math.Abs(float64(got)-want) / float64(ulp)
}

func TestExp(t *testing.T) {
	worst := 0.0
	for x := float32(-103); x < 88.7; x += 0.001 {
		want := math.Exp(float64(x))
		u := ulps(Exp(x), want)
		if want < 1.2e-38 { // subnormal results: absolute error instead
			if d := math.Abs(float64(Exp(x)) - want); d > 3e-45 {
				t.Fatalf("Exp(%v) = %v, want %v", x, Exp(x), want)
			}
			continue
		}
		worst = math.Max(worst, u)
		if u > 2 {
			t.Fatalf("Exp(%v) = %v, want %v (%.1f ulp)", x, Exp(x), want, u)
		}
	}
	t.Logf("worst error %.2f ulp", worst)
	if Exp(100) != float32(math.Inf(1)) || Exp(-200) != 0 || Exp(0) != 1 {
		t.Fatal("Exp edge cases")
	}
	if !math.IsNaN(float64(Exp(float32(math.NaN())))) {
		t.Fatal("Exp(NaN) is not NaN")
	}
}

func TestSigmoidTanh(t *testing.T) {
	worstS, worstT := 0.0, 0.0
	for x := float32(-40); x < 40; x += 0.0007 {
		s, th := Sigmoid(x), Tanh(x)
		ws, wt := 1/(1+math.Exp(-float64(x))), math.Tanh(float64(x))
		worstS = math.Max(worstS, math.Abs(float64(s)-ws))
		worstT = math.Max(worstT, math.Abs(float64(th)-wt))
		if math.Abs(float64(s)-ws) > 2e-7 || math.Abs(float64(th)-wt) > 3e-7 {
			t.Fatalf("x=%v: sigmoid %v (want %v), tanh %v (want %v)", x, s, ws, th, wt)
		}
		if Tanh(-x) != -th {
			t.Fatalf("Tanh is not odd at %v", x)
		}
	}
	t.Logf("worst absolute error: sigmoid %.2g, tanh %.2g", worstS, worstT)
	for _, x := range []float32{1e-5, -3e-4, 1e-30} {
		if r := math.Abs(float64(Tanh(x))/math.Tanh(float64(x)) - 1); r > 1e-6 {
			t.Fatalf("Tanh(%v) relative error %g", x, r)
		}
	}
	if Sigmoid(-200) != 0 || Sigmoid(200) != 1 || Tanh(50) != 1 || Tanh(-50) != -1 {
		t.Fatal("saturation")
	}
}

var sink float32

func BenchmarkExp(b *testing.B) {
	x := float32(0)
	for b.Loop() {
		sink += Exp(x)
		x += 1e-4
		if x > 10 {
			x = -10
		}
	}
}

func BenchmarkMathExp(b *testing.B) {
	x := 0.0
	for b.Loop() {
		sink += float32(math.Exp(x))
		x += 1e-4
		if x > 10 {
			x = -10
		}
	}
}

func BenchmarkSigmoidSlice(b *testing.B) {
	xs := make([]float32, 4096)
	for i := range xs {
		xs[i] = float32(i%200)/10 - 10
	}
	b.SetBytes(4 * 4096)
	for b.Loop() {
		for i, x := range xs {
			xs[i] = Sigmoid(x)*20 - 10
		}
	}
}

// paths are the assembly kernels this machine runs, by name.
func paths() map[string]*kernels {
	out := map[string]*kernels{}
	for _, name := range gemm.Paths() {
		if k := pick(name); k != nil {
			out[name] = k
		}
	}
	return out
}

// specials are the inputs where a vector kernel could part from the scalar
// Go: signed zeros, infinities, NaN, the ends of Exp's range, the edge of
// Tanh's small-argument branch, subnormal results, huge values.
var specials = []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
	88.72283, 88.72284, 88.8, -103.97208, -103.97209, -104, 0.0004, -0.0004, 0.00039999, -0.00039999, 1e-30, -1e-30,
	-87.5, -95, -100, 1e20, -1e20, 0.5, -0.5, 1, -1, 44.36, -44.36, 1.5e-45}

// sameBits says whether a and b are the same float32, any NaN matching any
// NaN (the scalar and the vector code may carry different NaN payloads).
func sameBits(a, b float32) bool {
	if a != a && b != b {
		return true
	}
	return math.Float32bits(a) == math.Float32bits(b)
}

// inputs are n values: the specials, then normal values at a mix of scales.
func inputs(rng *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		if i < len(specials) {
			x[i] = specials[i]
			continue
		}
		x[i] = float32(rng.NormFloat64() * []float64{0.001, 1, 5, 30, 100}[i%5])
	}
	rng.Shuffle(len(x), func(i, j int) { x[i], x[j] = x[j], x[i] })
	return x
}

// Each vector path gives the scalar Go's bits, on lengths that leave a
// scalar tail and on the inputs where the branches of Exp and Tanh turn.
func TestVectorMatchesScalar(t *testing.T) {
	ps := paths()
	if len(ps) == 0 {
		t.Log("no vector path on this machine: the scalar Go is all there is")
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for name, k := range ps {
		t.Run(name, func(t *testing.T) {
			defer func(v *kernels) { vector = v }(vector)
			for _, n := range []int{1, 7, 16, 33, 100, 1000} {
				for _, shift := range []float32{0, 3.5, -20} {
					x := inputs(rng, n)
					want, got := slices.Clone(x), slices.Clone(x)
					vector = nil
					zw := ExpShift(want, shift)
					vector = k
					zg := ExpShift(got, shift)
					for j := range x {
						if !sameBits(got[j], want[j]) {
							t.Fatalf("ExpShift n=%d shift=%v: Exp(%v) = %v, scalar %v", n, shift, x[j]-shift, got[j], want[j])
						}
					}
					if !sameBits(float32(zg), float32(zw)) || (zg == zg && zg != zw) {
						t.Fatalf("ExpShift n=%d: sum %v, scalar %v", n, zg, zw)
					}
				}
			}
			for _, H := range []int{1, 7, 16, 33, 64} {
				const B = 3
				g := inputs(rng, B*4*H)
				cPrev := inputs(rng, B*H)
				run := func(v *kernels) (out [4][]float32) {
					vector = v
					gg := slices.Clone(g)
					out = [4][]float32{gg, make([]float32, B*H), make([]float32, B*H), make([]float32, B*H)}
					LSTMCell(gg, cPrev, out[1], out[2], out[3], H)
					return out
				}
				want, got := run(nil), run(k)
				for o := range want {
					for j := range want[o] {
						if !sameBits(got[o][j], want[o][j]) {
							t.Fatalf("LSTMCell H=%d: output %d[%d] = %v, scalar %v", H, o, j, got[o][j], want[o][j])
						}
					}
				}
				// The backward pass from the forward's outputs and random
				// gradients (and from the specials, as activations).
				fwd := want
				for _, acts := range [][]float32{fwd[0], g} {
					dh, dc := inputs(rng, B*H), inputs(rng, B*H)
					back := func(v *kernels) [2][]float32 {
						vector = v
						dg, dcc := make([]float32, B*4*H), slices.Clone(dc)
						LSTMCellBackward(acts, cPrev, fwd[3], dh, dcc, dg, H)
						return [2][]float32{dg, dcc}
					}
					bw, bg := back(nil), back(k)
					for o := range bw {
						for j := range bw[o] {
							if !sameBits(bg[o][j], bw[o][j]) {
								t.Fatalf("LSTMCellBackward H=%d: output %d[%d] = %v, scalar %v", H, o, j, bg[o][j], bw[o][j])
							}
						}
					}
				}
			}
		})
	}
}

// Maxout, Mul, ReLU and ReLUBackward give the scalar Go's bits (and
// pieces) on every path, NaN, ties and signed zeros included.
func TestGANKernelsMatchScalar(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	defer func(v *kernels) { vector = v }(vector)
	for name, k := range paths() {
		for _, n := range []int{1, 15, 16, 17, 48, 200} {
			for _, pieces := range []int{1, 2, 5} {
				x := inputs(rng, n*pieces)
				for i := range x { // ties
					if i%7 == 3 {
						x[i] = x[i-1]
					}
				}
				run := func(v *kernels) ([]float32, []int32) {
					vector = v
					y, arg := make([]float32, n), make([]int32, n)
					Maxout(y, arg, x, pieces)
					return y, arg
				}
				wy, wa := run(nil)
				gy, ga := run(k)
				for i := range wy {
					if !sameBits(gy[i], wy[i]) || ga[i] != wa[i] {
						t.Fatalf("%s Maxout n=%d pieces=%d: group %d: %v (piece %d), scalar %v (piece %d)", name, n, pieces, i, gy[i], ga[i], wy[i], wa[i])
					}
				}
			}
			d, s := inputs(rng, n), inputs(rng, n)
			for _, f := range []struct {
				name string
				fn   func(dst, src []float32)
			}{{"Mul", Mul}, {"ReLU", ReLU}, {"ReLUBackward", ReLUBackward}} {
				want, got := slices.Clone(d), slices.Clone(d)
				vector = nil
				f.fn(want, s)
				vector = k
				f.fn(got, s)
				for i := range want {
					if !sameBits(got[i], want[i]) {
						t.Fatalf("%s %s n=%d: [%d] = %v, scalar %v (inputs %v, %v)", name, f.name, n, i, got[i], want[i], d[i], s[i])
					}
				}
			}
		}
	}
}

// Momentum, Adagrad and Adam give the scalar Go's bits on every path, state included.
func TestOptimizersMatchScalar(t *testing.T) {
	rng := rand.New(rand.NewPCG(10, 10))
	defer func(v *kernels) { vector = v }(vector)
	c := AdamCoef{B1: 0.9, C1: 0.1, B2: 0.999, C2: 1 - 0.999, BC1: 0.19, BC2: 0.001999, LR: 0.001, Eps: 1e-8}
	for name, k := range paths() {
		for _, n := range []int{1, 15, 16, 33, 1000} {
			w, g := inputs(rng, n), inputs(rng, n)
			s1, s2 := inputs(rng, n), inputs(rng, n)
			for i := range s1 { // accumulators and second moments are not negative
				s1[i], s2[i] = float32(math.Abs(float64(s1[i]))), float32(math.Abs(float64(s2[i])))
			}
			run := func(v *kernels) [4][]float32 {
				vector = v
				out := [4][]float32{slices.Clone(w), slices.Clone(s1), slices.Clone(w), slices.Clone(s2)}
				m := slices.Clone(s1)
				Adagrad(out[0], g, out[1], 0.01, 1e-6)
				Adam(out[2], g, m, out[3], c)
				out[1] = append(out[1], m...)
				mw, inc := slices.Clone(w), slices.Clone(s2)
				Momentum(mw, g, inc, 0.9, 0.1)
				out[0] = append(out[0], mw...)
				out[3] = append(out[3], inc...)
				return out
			}
			want, got := run(nil), run(k)
			for o := range want {
				for i := range want[o] {
					if !sameBits(got[o][i], want[o][i]) {
						t.Fatalf("%s n=%d: output %d[%d] = %v, scalar %v", name, n, o, i, got[o][i], want[o][i])
					}
				}
			}
		}
	}
}

// SumSquares gives the same bits on every path, and the sum itself to
// float64 rounding.
func TestSumSquares(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	for _, n := range []int{0, 1, 31, 32, 33, 100, 1000, 4099} {
		x := inputs(rng, n)
		for i, v := range x {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) || math.Abs(float64(v)) > 1e6 {
				x[i] = 1
			}
		}
		defer func(v *kernels) { vector = v }(vector)
		vector = nil
		want := SumSquares(x)
		var exact, abs float64
		for _, v := range x {
			exact += float64(v) * float64(v)
			abs += float64(v) * float64(v)
		}
		if d := math.Abs(want - exact); d > 1e-13*abs {
			t.Fatalf("n=%d: SumSquares %v, sum %v", n, want, exact)
		}
		for name, k := range paths() {
			vector = k
			if got := SumSquares(x); math.Float64bits(got) != math.Float64bits(want) {
				t.Fatalf("%s n=%d: %v, scalar %v", name, n, got, want)
			}
		}
	}
}

// Exp and Tanh over every float32 bit pattern in a stride: the vector
// kernels agree with the scalar Go everywhere, not only on likely values.
func TestVectorMatchesScalarEverywhere(t *testing.T) {
	var x []float32
	for b := uint64(0); b < 1<<32; b += 4099 {
		x = append(x, math.Float32frombits(uint32(b)))
	}
	for _, k := range paths() {
		n := len(x) / k.width * k.width
		got := slices.Clone(x[:n])
		k.expShift(&got[0], n, 0)
		for j, v := range x[:n] {
			if !sameBits(got[j], Exp(v)) {
				t.Fatalf("%s: Exp(%v) = %v, scalar %v", k.name, v, got[j], Exp(v))
			}
		}
	}
}

func BenchmarkExpShift(b *testing.B) {
	row := make([]float32, 8000)
	for name, k := range map[string]*kernels{"go": nil, "vector": vector} {
		b.Run("path="+name, func(b *testing.B) {
			defer func(v *kernels) { vector = v }(vector)
			vector = k
			for b.Loop() {
				for j := range row {
					row[j] = float32(j%200)/10 - 10
				}
				ExpShift(row, 1)
			}
			b.SetBytes(4 * int64(len(row)))
		})
	}
}
