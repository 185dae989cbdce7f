// Command asm generates the assembly of downpour's CPU kernels with avo
// (github.com/mmcloughlin/avo): the GEMM micro-kernels of internal/kernel/gemm and
// the vector math of internal/kernel/vmath. The package named by -pkg says which.
// From either package:
//
//	go generate
//
// which runs, in this directory,
//
//	go run . -out ../gemm/kernel_amd64.s -stubs ../gemm/kernel_amd64.go -pkg gemm
//	go run . -out ../vmath/vmath_amd64.s -stubs ../vmath/vmath_amd64.go -pkg vmath
//
// The generated files are committed; CI regenerates them and fails on any
// difference.
//
// GEMM kernels (gemm.go).
//
// Every kernel computes one tile of C, mr rows by nr columns, from a packed
// micro-panel of A (kc steps of mr values: a[p*mr+i] = op(A)[i][p]) and kc
// steps of nr values of B, packed or in place (b[p*ldb+j] = op(B)[p][j]):
//
//	acc[i][j] = sum over p, in order, of a[p*mr+i]*b[p*nr+j]   (one FMA per p)
//	c[i*ldc+j] = alpha*acc[i][j]                   (accumulate false)
//	c[i*ldc+j] = c[i*ldc+j] + alpha*acc[i][j]      (accumulate true)
//
// Each accumulator is one chain of fused multiply-adds in the order of p,
// started from zero, and alpha is applied by a multiply and then an add
// (never fused), so the bits of a result depend on neither the tile shape
// nor the vector width: the AVX-512 and AVX2 kernels give the same bits.
package main

import (
	"fmt"
	"os"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/reg"
)

func main() {
	ConstraintExpr("!noasm")
	switch pkg() {
	case "gemm":
		gemm()
	case "vmath":
		vmath()
	default:
		fmt.Fprintln(os.Stderr, "asm: -pkg gemm or -pkg vmath")
		os.Exit(2)
	}
	Generate()
}

// pkg returns the value of -pkg, read before avo parses the flags.
func pkg() string {
	for i, a := range os.Args[1:] {
		if (a == "-pkg" || a == "--pkg") && i+2 < len(os.Args) {
			return os.Args[i+2]
		}
	}
	return ""
}

var (
	zmm = []VecPhysical{Z0, Z1, Z2, Z3, Z4, Z5, Z6, Z7, Z8, Z9, Z10, Z11, Z12, Z13, Z14, Z15,
		Z16, Z17, Z18, Z19, Z20, Z21, Z22, Z23, Z24, Z25, Z26, Z27, Z28, Z29, Z30, Z31}
	ymm = []VecPhysical{Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7, Y8, Y9, Y10, Y11, Y12, Y13, Y14, Y15}
)
