package models

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

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
