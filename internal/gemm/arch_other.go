//go:build noasm || !amd64

package gemm

// Without the assembly kernels, Sgemm is gonum's pure Go.
var paths []*path
