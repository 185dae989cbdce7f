package gemm_test

import (
	"fmt"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	"github.com/downpour-ml/downpour/internal/kernel/gemm"
)

// The kernels behind gonum's float32 BLAS: every Sgemm then runs on them.
func ExampleImplementation() {
	blas32.Use(gemm.Implementation{})
	a := []float32{1, 2, 3, 4, 5, 6} // 2x3
	b := []float32{1, 0, 0, 1, 1, 1} // 3x2
	c := make([]float32, 4)
	blas32.Implementation().Sgemm(blas.NoTrans, blas.NoTrans, 2, 2, 3, 1, a, 3, b, 2, 0, c, 2)
	fmt.Println(c)
	// Output: [4 5 10 11]
}
