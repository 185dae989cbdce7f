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

// gemm emits the kernels of internal/kernel/gemm.
func gemm() {
	avx512 := isa{name: "AVX512", regs: zmm, width: 16, mr: mr512, nr: nr512}
	avx2 := isa{name: "AVX2", regs: ymm, width: 8, mr: mr256, nr: nr256}
	for _, x := range []isa{avx512, avx2} {
		for mr := 1; mr <= x.mr; mr++ {
			kernel(x, mr)
		}
	}
	peak(avx512)
	peak(avx2)
	transpose(8)
	transpose(4)
	copyPanel(nr512)
	copyPanel(nr256)
}

// copyPanel emits copyNN: depth steps of nr floats, step p from src +
// p*lds to dst + p*nr, in 32-byte moves. Packing calls it for the rows of B
// (not transposed), where a Go copy per step spent more in the call than in
// the move.
func copyPanel(nr int) {
	name := fmt.Sprintf("copy%d", nr)
	TEXT(name, NOSPLIT, "func(src *float32, lds int, dst *float32, depth int)")
	Pragma("noescape") // the kernels keep no pointer
	Doc(fmt.Sprintf("%s sets dst[p*%d+j] = src[p*lds+j] for j < %d, p < depth; depth must be at least 1.", name, nr, nr))
	src := Mem{Base: Load(Param("src"), GP64())}
	lds := Load(Param("lds"), GP64())
	SHLQ(U8(2), lds)
	dst := Mem{Base: Load(Param("dst"), GP64())}
	n := Load(Param("depth"), GP64())
	Label(name + "loop")
	for v := range nr / 8 {
		VMOVUPS(src.Offset(32*v), ymm[v])
	}
	for v := range nr / 8 {
		VMOVUPS(ymm[v], dst.Offset(32*v))
	}
	ADDQ(lds, src.Base)
	ADDQ(U32(4*nr), dst.Base)
	DECQ(n)
	JNZ(LabelRef(name + "loop"))
	VZEROUPPER()
	RET()
}

// isa describes one vector extension: its registers and width in floats.
type isa struct {
	name  string
	regs  []VecPhysical
	width int // floats per register
	mr    int // rows of the largest tile
	nr    int // columns of every tile
}

// peak emits a loop of fused multiply-adds on registers alone, as many
// independent chains as the largest tile has accumulators: the most a kernel
// of x can compute, against which the GEMM's speed is measured.
func peak(x isa) {
	TEXT("peak"+x.name, NOSPLIT, "func(n int)")
	Doc(fmt.Sprintf("peak%s runs n rounds of %d independent FMAs on %d-float registers.", x.name, x.mr*x.nr/x.width, x.width))
	n := Load(Param("n"), GP64())
	chains := x.mr * x.nr / x.width
	acc := x.regs[:chains]
	for _, r := range acc {
		VXORPS(r, r, r)
	}
	Label("peak" + x.name + "loop")
	for _, r := range acc {
		VFMADD231PS(x.regs[len(x.regs)-1], x.regs[len(x.regs)-2], r)
	}
	DECQ(n)
	JNZ(LabelRef("peak" + x.name + "loop"))
	VZEROUPPER()
	RET()
}

// kernel emits the mr-row kernel of x.
func kernel(x isa, mr int) {
	nv := x.nr / x.width // vectors per row of the tile
	TEXT(fmt.Sprintf("kernel%sx%d", x.name, mr), NOSPLIT, "func(kc int, a, b *float32, ldb int, c *float32, ldc int, alpha float32, accumulate bool)")
	Pragma("noescape") // the kernels keep no pointer
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
	// Step p of B is at b + p*ldb floats: ldb is nr in a packed panel, or
	// the leading dimension of B read in place. Steps 0-3 of an unrolled
	// pass are at b, b+s1, b+2*s1 and b+s3 (bytes).
	s1 := Load(Param("ldb"), GP64())
	SHLQ(U8(2), s1)
	s3 := GP64()
	LEAQ(Mem{Base: s1, Index: s1, Scale: 2}, s3)
	bstep := func(u int) Mem {
		switch u {
		case 0:
			return b
		case 1:
			return Mem{Base: b.Base, Index: s1, Scale: 1}
		case 2:
			return Mem{Base: b.Base, Index: s1, Scale: 2}
		}
		return Mem{Base: b.Base, Index: s3, Scale: 1}
	}

	Comment("Zero the accumulators.")
	for i := range acc {
		for _, r := range acc[i] {
			VXORPS(r, r, r)
		}
	}

	// step emits the FMAs of one value of p, u steps past a and b.
	step := func(u int) {
		for v := range nv {
			VMOVUPS(bstep(u).Offset(4*v*x.width), brow[v])
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
	LEAQ(Mem{Base: b.Base, Index: s1, Scale: 4}, b.Base)
	DECQ(n)
	JNZ(LabelRef(fmt.Sprintf("loop%sx%d", x.name, mr)))

	Label(fmt.Sprintf("tail%sx%d", x.name, mr))
	ANDQ(U8(unroll-1), kc)
	JZ(LabelRef(fmt.Sprintf("update%sx%d", x.name, mr)))
	Label(fmt.Sprintf("one%sx%d", x.name, mr))
	step(0)
	ADDQ(U32(4*mr), a.Base)
	ADDQ(s1, b.Base)
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

// transpose emits transposeRx8: r rows of 8 floats (row i at src + i*lds)
// become 8 rows of r floats (row p at dst + p*ldd), r = 8 or 4, with AVX
// shuffles. Packing calls it where a panel is the transpose of its source:
// the rows of A (not transposed) and the rows of B (transposed).
func transpose(r int) {
	name := fmt.Sprintf("transpose%dx8", r)
	TEXT(name, NOSPLIT, "func(src *float32, lds int, dst *float32, ldd int)")
	Pragma("noescape") // the kernels keep no pointer
	Doc(fmt.Sprintf("%s writes dst[p*ldd+i] = src[i*lds+p] for i < %d, p < 8.", name, r))
	src := Load(Param("src"), GP64())
	lds := Load(Param("lds"), GP64())
	dst := Load(Param("dst"), GP64())
	ldd := Load(Param("ldd"), GP64())
	SHLQ(U8(2), lds)
	SHLQ(U8(2), ldd)
	R, t, o := ymm[0:8], ymm[8:12], ymm[12:16]

	// quad transposes the 4x4 blocks in each 128-bit lane of R[0:4]: o[q]
	// gets column q of rows 0-3 of each lane (the unpack-and-shuffle 4x4).
	quad := func(R []VecPhysical) {
		VUNPCKLPS(R[1], R[0], t[0])
		VUNPCKHPS(R[1], R[0], t[1])
		VUNPCKLPS(R[3], R[2], t[2])
		VUNPCKHPS(R[3], R[2], t[3])
		VSHUFPS(U8(0x44), t[2], t[0], o[0])
		VSHUFPS(U8(0xEE), t[2], t[0], o[1])
		VSHUFPS(U8(0x44), t[3], t[1], o[2])
		VSHUFPS(U8(0xEE), t[3], t[1], o[3])
	}
	row := Mem{Base: src}
	out := Mem{Base: dst}
	if r == 4 {
		// Row i whole in R[i]: lane 0 holds columns 0-3, lane 1 columns 4-7.
		for i := range 4 {
			VMOVUPS(row, R[i])
			if i < 3 {
				ADDQ(lds, src)
			}
		}
		quad(R)
		for q := range 4 { // columns q and q+4 are output rows q and q+4
			VMOVUPS(o[q].AsX(), out)
			ADDQ(ldd, dst)
		}
		for q := range 4 {
			VEXTRACTF128(U8(1), o[q], out)
			if q < 3 {
				ADDQ(ldd, dst)
			}
		}
		VZEROUPPER()
		RET()
		return
	}
	// R[i] = row i columns 0-3 | row i+4 columns 0-3, R[i+4] the same for
	// columns 4-7, so that each lane transposes rows 0-3 or rows 4-7.
	hi := Mem{Base: GP64()}
	MOVQ(src, hi.Base)
	tmp := GP64()
	MOVQ(lds, tmp)
	SHLQ(U8(2), tmp)
	ADDQ(tmp, hi.Base)
	for i := range 4 {
		VMOVUPS(row, R[i].AsX())
		VINSERTF128(U8(1), hi, R[i], R[i])
		VMOVUPS(row.Offset(16), R[i+4].AsX())
		VINSERTF128(U8(1), hi.Offset(16), R[i+4], R[i+4])
		if i < 3 {
			ADDQ(lds, src)
			ADDQ(lds, hi.Base)
		}
	}
	for half := range 2 {
		quad(R[4*half : 4*half+4])
		for q := range 4 {
			VMOVUPS(o[q], out)
			if half == 0 || q < 3 {
				ADDQ(ldd, dst)
			}
		}
	}
	VZEROUPPER()
	RET()
}
