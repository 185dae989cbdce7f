package gemm

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/blas"
)

// ref is the obvious triple loop in float64, with the reference BLAS's
// rules: A and B unread when alpha or k is 0, C unread when beta is 0.
func ref(aT, bT bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) []float64 {
	out := make([]float64, len(c))
	for i := range c {
		out[i] = float64(c[i])
	}
	for i := range m {
		for j := range n {
			var s float64
			if alpha != 0 {
				for p := range k {
					av, bv := at(a, aT, i, p, lda), at(b, bT, p, j, ldb)
					s += float64(av) * float64(bv)
				}
			}
			cv := 0.0
			if beta != 0 {
				cv = float64(beta) * float64(c[i*ldc+j])
			}
			if alpha != 0 && k > 0 {
				cv += float64(alpha) * s
			}
			out[i*ldc+j] = cv
		}
	}
	return out
}

// at is op(X)[i][j] of a row-major X.
func at(x []float32, trans bool, i, j, ld int) float32 {
	if trans {
		return x[j*ld+i]
	}
	return x[i*ld+j]
}

// abssum is the float64 sum of |alpha*a*b| + |beta*c| of one element: the
// scale of the rounding error of a float32 dot product of length k.
func abssum(aT, bT bool, i, j, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) float64 {
	var s float64
	for p := range k {
		av, bv := at(a, aT, i, p, lda), at(b, bT, p, j, ldb)
		s += math.Abs(float64(av) * float64(bv))
	}
	s *= math.Abs(float64(alpha))
	if beta != 0 {
		s += math.Abs(float64(beta) * float64(c[i*ldc+j]))
	}
	return s
}

type shape struct {
	aT, bT      bool
	m, n, k     int
	lda, ldb    int // extra beyond the packed leading dimension
	ldc         int
	alpha, beta float32
}

func (s shape) String() string {
	return fmt.Sprintf("%v%v/%dx%dx%d/ld+%d,%d,%d/alpha=%v,beta=%v", t(s.aT), t(s.bT), s.m, s.n, s.k, s.lda, s.ldb, s.ldc, s.alpha, s.beta)
}

func t(tr bool) string {
	if tr {
		return "T"
	}
	return "N"
}

// operands makes random A, B and C for s, the unused padding filled with NaN
// so that a read out of bounds shows.
func (s shape) operands(rng *rand.Rand) (a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	ar, ac := s.m, s.k
	if s.aT {
		ar, ac = s.k, s.m
	}
	br, bc := s.k, s.n
	if s.bT {
		br, bc = s.n, s.k
	}
	lda, ldb, ldc = max(1, ac)+s.lda, max(1, bc)+s.ldb, max(1, s.n)+s.ldc
	fill := func(rows, cols, ld int) []float32 {
		x := make([]float32, max(0, rows*ld))
		for i := range x {
			if i%ld < cols {
				x[i] = float32(rng.NormFloat64())
			} else {
				x[i] = float32(math.NaN())
			}
		}
		return x
	}
	return fill(ar, ac, lda), lda, fill(br, bc, ldb), ldb, fill(s.m, s.n, ldc), ldc
}

func tr(t bool) blas.Transpose {
	if t {
		return blas.Trans
	}
	return blas.NoTrans
}

// checkShape runs s on impl and compares with the float64 reference: each
// element within a few float32 roundings of its dot product, scaled by K.
func checkShape(t *testing.T, impl Implementation, s shape, seed uint64) []float32 {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 0))
	a, lda, b, ldb, c, ldc := s.operands(rng)
	want := ref(s.aT, s.bT, s.m, s.n, s.k, s.alpha, a, lda, b, ldb, s.beta, c, ldc)
	orig := append([]float32(nil), c...)
	impl.Sgemm(tr(s.aT), tr(s.bT), s.m, s.n, s.k, s.alpha, a, lda, b, ldb, s.beta, c, ldc)
	const eps = 1.0 / (1 << 24)
	for i := range s.m {
		for j := range ldc {
			x := i*ldc + j
			if j >= s.n { // padding: untouched
				if math.Float32bits(c[x]) != math.Float32bits(orig[x]) {
					t.Fatalf("%v: C[%d][%d] beyond n changed: %v", s, i, j, c[x])
				}
				continue
			}
			tol := 2 * float64(s.k+2) * eps * abssum(s.aT, s.bT, i, j, s.k, s.alpha, a, lda, b, ldb, s.beta, orig, ldc)
			if d := math.Abs(float64(c[x]) - want[x]); !(d <= tol) {
				t.Fatalf("%v: C[%d][%d] = %v, want %v (tolerance %g)", s, i, j, c[x], want[x], tol)
			}
		}
	}
	return c
}

// shapes covers the edge cases and every transpose case: sizes around the
// tile sizes of both paths (6, 12, 16, 32) and the blocks (kc = 384), 1x1,
// K of 0 and 1, padded leading dimensions, alpha 0 and beta 0, 1 and other.
func shapes() []shape {
	var ss []shape
	dims := [][3]int{{1, 1, 1}, {1, 1, 0}, {3, 5, 0}, {0, 4, 3}, {4, 0, 3}, {1, 7, 1}, {7, 1, 5},
		{5, 17, 3}, {13, 33, 9}, {12, 32, 4}, {6, 16, 8}, {25, 65, 385}, {37, 31, 768}, {100, 120, 130}, {29, 100, 1}}
	for _, d := range dims {
		for _, aT := range []bool{false, true} {
			for _, bT := range []bool{false, true} {
				ss = append(ss, shape{aT: aT, bT: bT, m: d[0], n: d[1], k: d[2], alpha: 1, beta: 0})
			}
		}
	}
	for _, ab := range [][2]float32{{1, 1}, {-0.5, 2.5}, {0, 0.5}, {0, 1}, {2, 0}, {0, 0}} {
		ss = append(ss, shape{aT: true, m: 19, n: 45, k: 50, lda: 3, ldb: 1, ldc: 5, alpha: ab[0], beta: ab[1]})
		ss = append(ss, shape{bT: true, m: 50, n: 33, k: 400, lda: 1, ldb: 2, ldc: 0, alpha: ab[0], beta: ab[1]})
	}
	return ss
}

// fast are the paths with kernels on this machine, by name.
func fast(t testing.TB) map[string]Implementation {
	out := map[string]Implementation{}
	for _, p := range paths {
		out[p.name] = Implementation{path: p}
	}
	return out
}

func TestSgemmAgainstReference(t *testing.T) {
	for name, impl := range fast(t) {
		t.Run(name, func(t *testing.T) {
			for i, s := range shapes() {
				checkShape(t, impl, s, uint64(i))
			}
		})
	}
	t.Run("go", func(t *testing.T) {
		for i, s := range shapes() {
			if s.alpha == 0 {
				continue // gonum reads A and B with alpha 0 (NaN*0); the reference does not
			}
			checkShape(t, Implementation{path: goPath}, s, uint64(i))
		}
	})
}
