package gemm

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"gonum.org/v1/gonum/blas"
)

// An element of C is the same float whichever rows and columns of C the
// call computes beside it: a product over a subset of A's rows (a chunk of
// time steps) or of B's columns (a block of the vocabulary) gives the bits
// of the same elements of the whole product, on every assembly path and
// for every transposition. A model split over processes by rows or columns
// relies on it; a split of K (a sum) would not hold, and is not claimed.
// The pure-Go path (gonum's) holds it too.
func TestSubsetsGiveSameBits(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	fill := func(n int) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		return x
	}
	for _, p := range append(slices.Clone(paths), goPath) {
		old := active
		active = p
		for _, sh := range [][3]int{{257, 300, 190}, {2560, 512, 512}, {128, 2048, 512}, {100, 1200, 784}, {7, 33, 5}} {
			for _, tr := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
				m, n, k := sh[0], sh[1], sh[2]
				var beta float32 = 0
				if tr[0] == tr[1] {
					beta = 1 // onto a C that holds values (a bias)
				}
				t.Run(fmt.Sprintf("%s/%dx%dx%d/tA=%v,tB=%v,beta=%v", p.name, m, n, k, tr[0], tr[1], beta), func(t *testing.T) {
					a, b := fill(m*k), fill(k*n)
					lda, ldb := k, n
					ta, tb := blas.NoTrans, blas.NoTrans
					if tr[0] {
						ta, lda = blas.Trans, m // a is k x m
					}
					if tr[1] {
						tb, ldb = blas.Trans, k // b is n x k
					}
					c0v := fill(m * n)
					full := slices.Clone(c0v)
					Implementation{}.Sgemm(ta, tb, m, n, k, 1, a, lda, b, ldb, beta, full, n)
					r0, r1 := m/3, m-m/5
					c0, c1 := n/4, n-n/6
					// Rows r0..r1 of op(A): A's rows, or A's columns when transposed.
					aSub := a[r0*k:]
					if tr[0] {
						aSub = a[r0:]
					}
					rows := slices.Clone(c0v[r0*n : r1*n])
					Implementation{}.Sgemm(ta, tb, r1-r0, n, k, 1, aSub, lda, b, ldb, beta, rows, n)
					if !slices.Equal(rows, full[r0*n:r1*n]) {
						t.Error("a subset of the rows gives other bits")
					}
					bSub := b[c0:]
					if tr[1] {
						bSub = b[c0*k:]
					}
					cols := make([]float32, m*(c1-c0))
					for r := range m {
						copy(cols[r*(c1-c0):], c0v[r*n+c0:r*n+c1])
					}
					Implementation{}.Sgemm(ta, tb, m, c1-c0, k, 1, a, lda, bSub, ldb, beta, cols, c1-c0)
					for r := range m {
						if !slices.Equal(cols[r*(c1-c0):(r+1)*(c1-c0)], full[r*n+c0:r*n+c1]) {
							t.Fatalf("a subset of the columns gives other bits (row %d)", r)
						}
					}
				})
			}
		}
		active = old
	}
}
