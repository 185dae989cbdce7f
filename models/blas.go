package models

import (
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
	"gonum.org/v1/gonum/blas/blas64"
)

// Float is the element type of a model: float32 to train, float64 to check
// gradients by finite differences.
type Float interface{ ~float32 | ~float64 }

func trans(t bool) blas.Transpose {
	if t {
		return blas.Trans
	}
	return blas.NoTrans
}

// blasGemm computes c = alpha*op(a)*op(b) + beta*c on row-major matrices, where
// op(a) is m x k and op(b) is k x n. It goes through blas32 or blas64, so a
// faster implementation installed with blas32.Use is picked up.
func blasGemm[T Float](tA, tB bool, m, n, k int, alpha T, a []T, lda int, b []T, ldb int, beta T, c []T, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	switch a := any(a).(type) {
	case []float32:
		blas32.Implementation().Sgemm(trans(tA), trans(tB), m, n, k, float32(alpha), a, lda,
			any(b).([]float32), ldb, float32(beta), any(c).([]float32), ldc)
	case []float64:
		blas64.Implementation().Dgemm(trans(tA), trans(tB), m, n, k, float64(alpha), a, lda,
			any(b).([]float64), ldb, float64(beta), any(c).([]float64), ldc)
	default:
		panic("models: unsupported element type")
	}
}

// matmul sets (or, with acc, adds to) c (m x n) the product op(a)*op(b).
func matmul[T Float](c []T, a []T, tA bool, b []T, tB bool, m, n, k int, acc bool) {
	lda, ldb := k, n
	if tA {
		lda = m
	}
	if tB {
		ldb = k
	}
	var beta T
	if acc {
		beta = 1
	}
	blasGemm(tA, tB, m, n, k, 1, a, lda, b, ldb, beta, c, n)
}
