// Command asm generates the micro-kernels of package gemm with avo
// (github.com/mmcloughlin/avo). From internal/gemm:
//
//	go generate
//
// which runs, in this directory,
//
//	go run . -out ../kernel_amd64.s -stubs ../kernel_amd64.go -pkg gemm
//
// The generated files are committed; CI regenerates them and fails on any
// difference.
//
// Every kernel computes one tile of C, mr rows by nr columns, from a packed
// micro-panel of A (kc steps of mr values: a[p*mr+i] = op(A)[i][p]) and one
// of B (kc steps of nr values: b[p*nr+j] = op(B)[p][j]):
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

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// The register tiles: AVX-512 has 32 zmm registers, 12x32 uses 24 of them for
// accumulators, 2 for a row of B and 2 for broadcasts of A. AVX2 has 16 ymm
// registers: 6x16 uses 12, 2 and 2. Keep in step with arch_amd64.go.
const (
	mr512, nr512 = 12, 32
	mr256, nr256 = 6, 16
)

// unroll is how many steps of p one pass of the main loop takes.
const unroll = 4

var (
	zmm = []VecPhysical{Z0, Z1, Z2, Z3, Z4, Z5, Z6, Z7, Z8, Z9, Z10, Z11, Z12, Z13, Z14, Z15,
		Z16, Z17, Z18, Z19, Z20, Z21, Z22, Z23, Z24, Z25, Z26, Z27, Z28, Z29, Z30, Z31}
	ymm = []VecPhysical{Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7, Y8, Y9, Y10, Y11, Y12, Y13, Y14, Y15}
)

// isa describes one vector extension: its registers and width in floats.
type isa struct {
	name  string
	regs  []VecPhysical
	width int // floats per register
	mr    int // rows of the largest tile
	nr    int // columns of every tile
}

func main() {
	ConstraintExpr("!noasm")
	avx512 := isa{name: "AVX512", regs: zmm, width: 16, mr: mr512, nr: nr512}
	avx2 := isa{name: "AVX2", regs: ymm, width: 8, mr: mr256, nr: nr256}
	for _, x := range []isa{avx512, avx2} {
		for mr := 1; mr <= x.mr; mr++ {
			kernel(x, mr)
		}
	}
	Generate()
}

// kernel emits the mr-row kernel of x.
func kernel(x isa, mr int) {
	nv := x.nr / x.width // vectors per row of the tile
	TEXT(fmt.Sprintf("kernel%sx%d", x.name, mr), NOSPLIT, "func(kc int, a, b, c *float32, ldc int, alpha float32, accumulate bool)")
	Doc(fmt.Sprintf("kernel%sx%d computes a %dx%d tile of C; kc must be at least 1.", x.name, mr, mr, x.nr))

	// Registers: accumulators first, then the row of B, then two for
	// broadcasts of A (alternated so that the next broadcast need not wait).
	acc := make([][]VecPhysical, mr)
	for i := range acc {
		acc[i] = x.regs[i*nv : (i+1)*nv]
	}
	top := len(x.regs)
	brow := x.regs[top-nv-2 : top-2]
	bcast := x.regs[top-2:]

	kc := Load(Param("kc"), GP64())
	a := Mem{Base: Load(Param("a"), GP64())}
	b := Mem{Base: Load(Param("b"), GP64())}

	Comment("Zero the accumulators.")
	for i := range acc {
		for _, r := range acc[i] {
			VXORPS(r, r, r)
		}
	}

	// step emits the FMAs of one value of p, u steps past a and b.
	step := func(u int) {
		for v := range nv {
			VMOVUPS(b.Offset(4*(u*x.nr+v*x.width)), brow[v])
		}
		for i := range mr {
			r := bcast[i%2]
			VBROADCASTSS(a.Offset(4*(u*mr+i)), r)
			for v := range nv {
				VFMADD231PS(brow[v], r, acc[i][v])
			}
		}
	}

	n := GP64()
	MOVQ(kc, n)
	SHRQ(U8(2), n)
	JZ(LabelRef(fmt.Sprintf("tail%sx%d", x.name, mr)))
	Label(fmt.Sprintf("loop%sx%d", x.name, mr))
	for u := range unroll {
		step(u)
	}
	ADDQ(U32(4*unroll*mr), a.Base)
	ADDQ(U32(4*unroll*x.nr), b.Base)
	DECQ(n)
	JNZ(LabelRef(fmt.Sprintf("loop%sx%d", x.name, mr)))

	Label(fmt.Sprintf("tail%sx%d", x.name, mr))
	ANDQ(U8(unroll-1), kc)
	JZ(LabelRef(fmt.Sprintf("update%sx%d", x.name, mr)))
	Label(fmt.Sprintf("one%sx%d", x.name, mr))
	step(0)
	ADDQ(U32(4*mr), a.Base)
	ADDQ(U32(4*x.nr), b.Base)
	DECQ(kc)
	JNZ(LabelRef(fmt.Sprintf("one%sx%d", x.name, mr)))

	Label(fmt.Sprintf("update%sx%d", x.name, mr))
	Comment("Scale by alpha, then store into C or add to it.")
	alpha := bcast[0]
	alphaAddr, err := Param("alpha").Resolve()
	if err != nil {
		panic(err)
	}
	VBROADCASTSS(alphaAddr.Addr, alpha)
	for i := range acc {
		for _, r := range acc[i] {
			VMULPS(alpha, r, r)
		}
	}
	c := Mem{Base: Load(Param("c"), GP64())}
	ldc := Load(Param("ldc"), GP64())
	SHLQ(U8(2), ldc)
	accumulate := Load(Param("accumulate"), GP8())
	CMPB(accumulate, U8(0))
	JE(LabelRef(fmt.Sprintf("store%sx%d", x.name, mr)))
	rows := func(add bool) {
		for i := range acc {
			for v, r := range acc[i] {
				if add {
					VADDPS(c.Offset(4*v*x.width), r, r)
				}
				VMOVUPS(r, c.Offset(4*v*x.width))
			}
			if i < mr-1 {
				ADDQ(ldc, c.Base)
			}
		}
		VZEROUPPER()
		RET()
	}
	rows(true)
	Label(fmt.Sprintf("store%sx%d", x.name, mr))
	rows(false)
}
