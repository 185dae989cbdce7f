//go:build !openblas

package models

// BLAS names the BLAS implementation float32 GEMMs use: gonum's pure Go
// (build with -tags openblas for OpenBLAS).
const BLAS = "gonum"
