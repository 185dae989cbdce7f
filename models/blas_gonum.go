//go:build !openblas

package models

import (
	"gonum.org/v1/gonum/blas/blas32"

	asm "github.com/downpour-ml/downpour/internal/gemm"
)

// Float32 GEMMs go to internal/gemm: assembly kernels for AVX-512 or AVX2,
// gonum's pure Go elsewhere.
func init() { blas32.Use(asm.Implementation{}) }

// BLAS names the GEMM float32 models run on: "avx512", "avx2" or "go"
// (internal/gemm.Path), or "openblas" in a build with -tags openblas.
var BLAS = asm.Path()
