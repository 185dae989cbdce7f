package models

import (
	"math"
	"math/rand/v2"
	"testing"
)

// The GEMM path agrees with the definition computed point by point.
func TestParzenMatchesDefinition(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 1))
	const d, m, n = 7, 300, 270 // n crosses the GEMM block boundary
	samples, xs := make([]float32, m*d), make([]float32, n*d)
	for i := range samples {
		samples[i] = rng.Float32()
	}
	for i := range xs {
		xs[i] = rng.Float32()
	}
	for _, sigma := range []float64{0.05, 0.2, 1} {
		got := ParzenLogLik(samples, xs, d, sigma)
		for i := 0; i < n; i += 17 {
			var terms []float64
			for j := 0; j < m; j++ {
				var s float64
				for k := 0; k < d; k++ {
					diff := float64(xs[i*d+k]) - float64(samples[j*d+k])
					s += diff * diff
				}
				terms = append(terms, -s/(2*sigma*sigma))
			}
			mx := math.Inf(-1)
			for _, e := range terms {
				mx = math.Max(mx, e)
			}
			var z float64
			for _, e := range terms {
				z += math.Exp(e - mx)
			}
			want := mx + math.Log(z/m) - d*math.Log(sigma*math.Sqrt(2*math.Pi))
			if math.Abs(got[i]-want) > 1e-3*math.Max(1, math.Abs(want)) {
				t.Fatalf("sigma %v, point %d: %v, want %v", sigma, i, got[i], want)
			}
		}
	}
}

// With samples from the test distribution itself, a 1-d standard normal's
// estimate approaches its true mean log-likelihood, -0.5 log(2 pi e); the
// chosen sigma comes from the grid.
func TestParzenOnAKnownDensity(t *testing.T) {
	rng := rand.New(rand.NewPCG(32, 2))
	draw := func(n int) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		return x
	}
	r := Parzen(draw(4000), draw(500), draw(2000), 1, SigmaGrid())
	want := -0.5 * math.Log(2*math.Pi*math.E)
	if math.Abs(r.Mean-want) > 0.05 || r.StdErr <= 0 || r.StdErr > 0.05 {
		t.Fatalf("%+v, true mean log-likelihood %v", r, want)
	}
	if r.Sigma < 0.1 || r.Sigma > 1 {
		t.Fatalf("sigma %v off the grid", r.Sigma)
	}
	g := SigmaGrid()
	if math.Abs(g[0]-0.1) > 1e-12 || math.Abs(g[9]-1) > 1e-12 || len(g) != 10 {
		t.Fatalf("grid %v", g)
	}
}

// BenchmarkParzen10k is the authors' evaluation at full size: 10,000
// samples, sigma chosen on 1,000 validation points, 10,000 test points, 784
// dimensions.
func BenchmarkParzen10k(b *testing.B) {
	rng := rand.New(rand.NewPCG(33, 3))
	pts := func(n int) []float32 {
		x := make([]float32, n*784)
		for i := range x {
			x[i] = rng.Float32()
		}
		return x
	}
	samples, valid, test := pts(10000), pts(1000), pts(10000)
	for b.Loop() {
		Parzen(samples, valid, test, 784, SigmaGrid())
	}
}
