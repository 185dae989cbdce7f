package models

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
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

func TestExp32(t *testing.T) {
	worst := 0.0
	for x := float32(-103); x < 88.7; x += 0.001 {
		want := math.Exp(float64(x))
		u := ulps(exp32(x), want)
		if want < 1.2e-38 { // subnormal results: absolute error instead
			if d := math.Abs(float64(exp32(x)) - want); d > 3e-45 {
				t.Fatalf("exp32(%v) = %v, want %v", x, exp32(x), want)
			}
			continue
		}
		worst = math.Max(worst, u)
		if u > 2 {
			t.Fatalf("exp32(%v) = %v, want %v (%.1f ulp)", x, exp32(x), want, u)
		}
	}
	t.Logf("worst error %.2f ulp", worst)
	if exp32(100) != float32(math.Inf(1)) || exp32(-200) != 0 || exp32(0) != 1 {
		t.Fatal("exp32 edge cases")
	}
	if !math.IsNaN(float64(exp32(float32(math.NaN())))) {
		t.Fatal("exp32(NaN) is not NaN")
	}
}

func TestSigmoidTanh32(t *testing.T) {
	worstS, worstT := 0.0, 0.0
	for x := float32(-40); x < 40; x += 0.0007 {
		s, th := sigmoid32(x), tanh32(x)
		ws, wt := 1/(1+math.Exp(-float64(x))), math.Tanh(float64(x))
		worstS = math.Max(worstS, math.Abs(float64(s)-ws))
		worstT = math.Max(worstT, math.Abs(float64(th)-wt))
		if math.Abs(float64(s)-ws) > 2e-7 || math.Abs(float64(th)-wt) > 3e-7 {
			t.Fatalf("x=%v: sigmoid %v (want %v), tanh %v (want %v)", x, s, ws, th, wt)
		}
		if tanh32(-x) != -th {
			t.Fatalf("tanh32 is not odd at %v", x)
		}
	}
	t.Logf("worst absolute error: sigmoid %.2g, tanh %.2g", worstS, worstT)
	for _, x := range []float32{1e-5, -3e-4, 1e-30} {
		if r := math.Abs(float64(tanh32(x))/math.Tanh(float64(x)) - 1); r > 1e-6 {
			t.Fatalf("tanh32(%v) relative error %g", x, r)
		}
	}
	if sigmoid32(-200) != 0 || sigmoid32(200) != 1 || tanh32(50) != 1 || tanh32(-50) != -1 {
		t.Fatal("saturation")
	}
}

var sink float32

func BenchmarkExp32(b *testing.B) {
	x := float32(0)
	for b.Loop() {
		sink += exp32(x)
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

func BenchmarkSigmoid32Slice(b *testing.B) {
	xs := make([]float32, 4096)
	for i := range xs {
		xs[i] = float32(i%200)/10 - 10
	}
	b.SetBytes(4 * 4096)
	for b.Loop() {
		for i, x := range xs {
			xs[i] = sigmoid32(x)*20 - 10
		}
	}
}

// The float32 fast paths agree with the float64 reference paths.
func TestFloat32KernelsMatchReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 11))
	const H, B = 7, 3
	g := make([]float32, B*4*H)
	for i := range g {
		g[i] = float32(rng.NormFloat64() * 3)
	}
	cPrev := make([]float32, B*H)
	for i := range cPrev {
		cPrev[i] = float32(rng.NormFloat64())
	}
	g2 := slices.Clone(g)
	out := [3][]float32{make([]float32, B*H), make([]float32, B*H), make([]float32, B*H)}
	ref := [3][]float32{make([]float32, B*H), make([]float32, B*H), make([]float32, B*H)}
	g3 := slices.Clone(g)
	fast := [3][]float32{make([]float32, B*H), make([]float32, B*H), make([]float32, B*H)}
	cellForwardFast(g3, cPrev, fast[0], fast[1], fast[2], H)
	cellForward32(g, cPrev, out[0], out[1], out[2], H)
	cellForward(g2, cPrev, ref[0], ref[1], ref[2], H)
	for i := range g {
		if math.Abs(float64(g3[i]-g2[i])) > 3e-7 {
			t.Fatalf("fast gate %d: %v vs %v", i, g3[i], g2[i])
		}
	}
	for k := range fast {
		for i := range fast[k] {
			if math.Abs(float64(fast[k][i]-ref[k][i])) > 1e-6 {
				t.Fatalf("fast output %d[%d]: %v vs %v", k, i, fast[k][i], ref[k][i])
			}
		}
	}
	for i := range g {
		if math.Abs(float64(g[i]-g2[i])) > 3e-7 {
			t.Fatalf("gate %d: %v vs %v", i, g[i], g2[i])
		}
	}
	for k := range out {
		for i := range out[k] {
			if math.Abs(float64(out[k][i]-ref[k][i])) > 1e-6 {
				t.Fatalf("output %d[%d]: %v vs %v", k, i, out[k][i], ref[k][i])
			}
		}
	}
	const rows, V = 5, 300
	l32 := make([]float32, rows*V)
	l64 := make([]float64, rows*V)
	for i := range l32 {
		l32[i] = float32(rng.NormFloat64() * 20)
		l64[i] = float64(l32[i])
	}
	labels := []int32{0, 299, -1, 17, 150}
	a, n1 := SoftmaxCrossEntropy(l32, V, labels, 0.25)
	b, n2 := SoftmaxCrossEntropy(l64, V, labels, 0.25)
	if n1 != n2 || math.Abs(a-b) > 1e-5*math.Abs(b) {
		t.Fatalf("loss %v (%d) vs %v (%d)", a, n1, b, n2)
	}
	for i := range l32 {
		if math.Abs(float64(l32[i])-l64[i]) > 1e-7 {
			t.Fatalf("gradient %d: %v vs %v", i, l32[i], l64[i])
		}
	}
	// A label whose logit is far below the rest: finite loss.
	far := []float32{0, -200}
	if l, _ := SoftmaxCrossEntropy(far, 2, []int32{1}, 1); math.IsInf(l, 0) || math.Abs(l-200) > 1e-3 {
		t.Fatalf("far label: loss %v, want 200", l)
	}
}
