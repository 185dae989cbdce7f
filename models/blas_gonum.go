//go:build !openblas

package models

import (
	"gonum.org/v1/gonum/blas/blas32"

	"github.com/downpour-ml/downpour/internal/kernel/gemm"
)

// Float32 GEMMs go to internal/kernel/gemm: assembly kernels for AVX-512 or AVX2,
// gonum's pure Go elsewhere.
func init() { blas32.Use(gemm.Implementation{}) }

// BLAS names the GEMM float32 models run on: "avx512", "avx2" or "go"
// (internal/kernel/gemm.Path), or "openblas" in a build with -tags openblas.
var BLAS = gemm.Path()
