package gemm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// sameBits fails unless x and y hold the same float32 bits.
func sameBits(t *testing.T, what string, x, y []float32) {
	t.Helper()
	for i := range x {
		if math.Float32bits(x[i]) != math.Float32bits(y[i]) {
			t.Fatalf("%s: element %d: %v (%#x) vs %v (%#x)", what, i, x[i], math.Float32bits(x[i]), y[i], math.Float32bits(y[i]))
		}
	}
}

// bigShapes are large enough for several blocks of K, several units and
// edges in every direction on both paths, with and without B read in place.
var bigShapes = []shape{
	{m: 100, n: 1200, k: 1200, alpha: 1, beta: 0},
	{bT: true, m: 130, n: 75, k: 900, alpha: 0.5, beta: 1},
	{aT: true, m: 301, n: 97, k: 800, lda: 3, alpha: 1, beta: -1.5},
	{aT: true, bT: true, m: 45, n: 301, k: 390, ldc: 4, alpha: 2, beta: 0},
	{m: 257, n: 513, k: 769, ldb: 9, alpha: 1, beta: 1},
	{m: 17, n: 2000, k: 64, alpha: 1, beta: 0},
	{m: 9000, n: 3, k: 5, alpha: 1, beta: 0}, // rows split, more than one block of mc
}

// The number of threads changes no bit of the result.
func TestThreadsGiveSameBits(t *testing.T) {
	for _, p := range paths {
		for i, s := range bigShapes {
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			a, lda, b, ldb, c, ldc := s.operands(rng)
			var first []float32
			for _, threads := range []int{1, 2, 3, 7} {
				got := slices.Clone(c)
				if s.beta != 0 { // as Sgemm does before it runs the product
					scale(s.beta, s.m, s.n, got, ldc)
				}
				runThreads(p, &problem{aT: s.aT, bT: s.bT, m: s.m, n: s.n, k: s.k, alpha: s.alpha,
					a: a, lda: lda, b: b, ldb: ldb, c: got, ldc: ldc, store: s.beta == 0}, threads)
				if first == nil {
					first = got
					continue
				}
				sameBits(t, fmt.Sprintf("%s %v: %d threads vs 1", p.name, s, threads), got, first)
			}
		}
	}
}

// NaN and Inf in A or B reach exactly the elements of C they touch; a NaN
// in C is overwritten when beta is 0 and kept otherwise.
func TestNaNPropagates(t *testing.T) {
	nan := float32(math.NaN())
	for name, impl := range fast(t) {
		const m, n, k = 30, 70, 50
		a := make([]float32, m*k)
		b := make([]float32, k*n)
		for i := range a {
			a[i] = 1
		}
		for i := range b {
			b[i] = 1
		}
		a[7*k+3] = nan                    // row 7 of C
		b[11*n+40] = float32(math.Inf(1)) // column 40 of C
		for _, beta := range []float32{0, 1} {
			c := make([]float32, m*n)
			c[20*n+5] = nan
			impl.Sgemm(blas.NoTrans, blas.NoTrans, m, n, k, 1, a, k, b, n, beta, c, n)
			for i := range m {
				for j := range n {
					v := c[i*n+j]
					switch {
					case i == 7 || (i == 20 && j == 5 && beta != 0):
						if !math.IsNaN(float64(v)) {
							t.Fatalf("%s beta=%v: C[%d][%d] = %v, want NaN", name, beta, i, j, v)
						}
					case j == 40:
						if !math.IsInf(float64(v), 1) {
							t.Fatalf("%s beta=%v: C[%d][%d] = %v, want +Inf", name, beta, i, j, v)
						}
					default:
						if v != k {
							t.Fatalf("%s beta=%v: C[%d][%d] = %v, want %d", name, beta, i, j, v, k)
						}
					}
				}
			}
		}
	}
}

// Misuse panics exactly where gonum's Sgemm panics, and good calls do not.
func TestPanicsLikeGonum(t *testing.T) {
	panics := func(f func()) (p bool) {
		defer func() { p = recover() != nil }()
		f()
		return false
	}
	buf := make([]float32, 64)
	type call struct {
		tA, tB               blas.Transpose
		m, n, k              int
		la, lda, lb, ldb, lc int
		ldc                  int
	}
	var calls []call
	for _, tA := range []blas.Transpose{blas.NoTrans, blas.Trans, blas.ConjTrans, 'x'} {
		for _, dims := range [][3]int{{2, 3, 4}, {-1, 3, 4}, {2, -1, 4}, {2, 3, -1}, {0, 3, 4}, {2, 0, 0}} {
			for _, ld := range []int{0, 1, 3, 4} {
				for _, short := range []int{0, 1} {
					calls = append(calls, call{tA, blas.Trans, dims[0], dims[1], dims[2], 16 - short, ld, 16, 4, 12 - short, 3},
						call{blas.NoTrans, tA, dims[0], dims[1], dims[2], 16, 4, 16 - short, ld, 12, max(ld, 1)})
				}
			}
		}
	}
	for _, impl := range fast(t) {
		for _, c := range calls {
			f := func(s blas.Float32Level3) func() {
				return func() {
					s.Sgemm(c.tA, c.tB, c.m, c.n, c.k, 1, buf[:c.la], c.lda, buf[:c.lb], c.ldb, 0, slices.Clone(buf[:c.lc]), c.ldc)
				}
			}
			if got, want := panics(f(impl)), panics(f(gonum.Implementation{})); got != want {
				t.Fatalf("%+v: panics %v, gonum %v", c, got, want)
			}
		}
	}
}

// Calls from many goroutines at once share the helpers and each gets its
// own right answer (run with -race).
func TestConcurrentCalls(t *testing.T) {
	for _, impl := range fast(t) {
		var wg sync.WaitGroup
		for g := range 6 {
			wg.Go(func() {
				for i, s := range []shape{{m: 60, n: 200, k: 500, alpha: 1}, {bT: true, m: 40, n: 300, k: 390, alpha: 1, beta: 1}} {
					checkShape(t, impl, s, uint64(10*g+i))
				}
			})
		}
		wg.Wait()
	}
}

// FuzzSgemm checks shapes, transposes, leading dimensions, alpha, beta and
// values chosen by the fuzzer against the float64 reference on every path.
func FuzzSgemm(f *testing.F) {
	f.Add(uint8(3), uint8(5), uint16(7), uint8(0), uint8(1), uint8(2), uint8(0), int8(2), int8(0), uint64(1))
	f.Add(uint8(13), uint8(33), uint16(400), uint8(3), uint8(0), uint8(0), uint8(3), int8(-1), int8(3), uint64(2))
	f.Fuzz(func(t *testing.T, m, n uint8, k uint16, trans, lda, ldb, ldc uint8, alpha, beta int8, seed uint64) {
		s := shape{aT: trans&1 != 0, bT: trans&2 != 0, m: int(m % 80), n: int(n % 80), k: int(k % 800),
			lda: int(lda % 4), ldb: int(ldb % 4), ldc: int(ldc % 4), alpha: float32(alpha) / 4, beta: float32(beta) / 4}
		for _, impl := range fast(t) {
			checkShape(t, impl, s, seed)
		}
	})
}
