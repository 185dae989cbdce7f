package gemm

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// benchShapes are the products the models run, m x k by k x n (with the
// transposes of their backward passes), among them the W2 workload's (models'
// BenchmarkW2).
var benchShapes = []struct {
	name    string
	aT, bT  bool
	m, n, k int
}{
	{"W2gates", false, false, 2560, 2048, 1024},
	{"W2gatesdX", false, true, 2560, 1024, 2048},
	{"W2gatesdW", true, false, 1024, 2048, 2560},
	{"W2softmax", false, false, 2560, 8000, 512},
	{"W2softmaxdX", false, true, 2560, 512, 8000},
	{"W2softmaxdW", true, false, 512, 8000, 2560},
	{"W2recurrent", false, false, 128, 2048, 512},
	{"G1", false, false, 100, 1200, 1200},
	{"G1dX", false, true, 100, 1200, 1200},
	{"G1dW", true, false, 1200, 1200, 100},
	{"G1D", false, false, 200, 1200, 784},
	{"cube1024", false, false, 1024, 1024, 1024},
}

// BenchmarkSgemm reports GFLOP/s of each shape on each path of this machine.
func BenchmarkSgemm(b *testing.B) {
	impls := fast(b)
	impls["go"] = Implementation{path: goPath}
	for _, s := range benchShapes {
		for _, name := range Paths() {
			impl := impls[name]
			b.Run(fmt.Sprintf("shape=%s/path=%s", s.name, name), func(b *testing.B) {
				rng := rand.New(rand.NewPCG(1, 2))
				rnd := func(n int) []float32 {
					x := make([]float32, n)
					for i := range x {
						x[i] = rng.Float32() - 0.5
					}
					return x
				}
				a, bb, c := rnd(s.m*s.k), rnd(s.k*s.n), rnd(s.m*s.n)
				lda, ldb := s.k, s.n
				if s.aT {
					lda = s.m
				}
				if s.bT {
					ldb = s.k
				}
				call := func() {
					impl.Sgemm(tr(s.aT), tr(s.bT), s.m, s.n, s.k, 1, a, lda, bb, ldb, 0, c, s.n)
				}
				call()
				b.ResetTimer()
				for b.Loop() {
					call()
				}
				b.ReportMetric(2*float64(s.m)*float64(s.n)*float64(s.k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}
