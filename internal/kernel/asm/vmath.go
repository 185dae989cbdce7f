package main

import (
	"fmt"
	"math"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// The vector math of internal/kernel/vmath: exp, sigmoid and tanh in float32,
// lane by lane the same operations, in the same order, as the scalar Go of
// internal/kernel/vmath (Exp, Sigmoid, Tanh), with no fused multiply-add, so every
// path gives the bits of the scalar reference.

// vx is one vector extension as the vector math uses it.
type vx struct {
	name  string
	regs  []VecPhysical
	width int
	// cmp sets mask m to a pred b (an ordered, non-signalling predicate).
	cmp func(pred uint8, a VecPhysical, b Op, m Register)
	// sel sets dst to t where m is set and to f elsewhere.
	sel func(m Register, t Op, f VecPhysical, dst VecPhysical)
	// masks are registers that can hold a comparison.
	masks []Register
}

const (
	ltOQ = 0x11
	leOQ = 0x12
	gtOQ = 0x1e
)

// consts are the vector constants, each a 64-byte run of one 32-bit value.
var consts = map[string]Mem{}

func constant(name string, bits uint32) Mem {
	if m, ok := consts[name]; ok {
		return m
	}
	m := GLOBL("vm"+name, RODATA|NOPTR)
	for i := range 16 {
		DATA(4*i, U32(bits))
	}
	consts[name] = m
	return m
}

func f32(name string, v float32) Mem { return constant(name, math.Float32bits(v)) }

// vmath emits the kernels of internal/kernel/vmath.
func vmath() {
	avx512 := vx{name: "AVX512", regs: zmm, width: 16,
		cmp:   func(pred uint8, a VecPhysical, b Op, m Register) { VCMPPS(U8(pred), b, a, m) },
		sel:   func(m Register, t Op, f VecPhysical, dst VecPhysical) { VBLENDMPS(t, f, m, dst) },
		masks: []Register{K1, K2, K3}}
	avx2 := vx{name: "AVX2", regs: ymm, width: 8,
		cmp:   func(pred uint8, a VecPhysical, b Op, m Register) { VCMPPS(U8(pred), b, a, m) },
		sel:   func(m Register, t Op, f VecPhysical, dst VecPhysical) { VBLENDVPS(m, t, f, dst) },
		masks: []Register{Y13, Y14, Y15}}
	for _, x := range []vx{avx512, avx2} {
		expShift(x)
		cell(x)
		cellBack(x)
		sumSquares(x)
		maxout(x)
		mul(x)
		relu(x)
		reluBack(x)
		adagrad(x)
		adam(x)
		momentum(x)
	}
}

// exp emits r = Exp(in) lane by lane; in is left as it was. It uses the
// registers tmp (5 of them) and the first mask.
func exp(x vx, in, r VecPhysical, tmp []VecPhysical) {
	t, k, n, p, s := tmp[0], tmp[1], tmp[2], tmp[3], tmp[4]
	// k = round half away from zero of in*log2(e): t + copysign(0.5, t), truncated.
	VMULPS(f32("log2e", 1.44269504088896341), in, t)
	VANDPS(constant("sign", 0x80000000), t, n)
	VORPS(f32("half", 0.5), n, n)
	VADDPS(n, t, t)
	VCVTTPS2DQ(t, k)
	VCVTDQ2PS(k, n)
	// r = in - n*c1 - n*c2
	VMULPS(f32("c1", 0.693359375), n, t)
	VSUBPS(t, in, r)
	VMULPS(f32("c2", -2.12194440e-4), n, t)
	VSUBPS(t, r, r)
	// p = Cephes' polynomial in r, then p*r*r + r + 1.
	VMULPS(f32("p0", 1.9875691500e-4), r, p)
	for i, c := range []float32{1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1} {
		VADDPS(f32(fmt.Sprintf("p%d", i+1), c), p, p)
		VMULPS(r, p, p)
	}
	VADDPS(f32("p5", 5.0000001201e-1), p, p)
	VMULPS(r, p, p)
	VMULPS(r, p, p)
	VADDPS(r, p, p)
	VADDPS(f32("one", 1), p, p)
	// Scale by 2^h * 2^(k-h), h = k/2 (truncated), through the exponent bits.
	VPSRLD(U8(31), k, s)
	VPADDD(s, k, s)
	VPSRAD(U8(1), s, s)
	VPSUBD(s, k, k)
	VPADDD(constant("bias", 127), s, s)
	VPSLLD(U8(23), s, s)
	VPADDD(constant("bias", 127), k, k)
	VPSLLD(U8(23), k, k)
	VMULPS(s, p, p)
	VMULPS(k, p, r)
	// Beyond the float32 range: +Inf above, 0 below.
	m := x.masks[0]
	x.cmp(gtOQ, in, f32("hi", 88.72283905206835), m)
	x.sel(m, constant("inf", 0x7f800000), r, r)
	x.cmp(ltOQ, in, f32("lo", -103.972084), m)
	x.sel(m, constant("zero", 0), r, r)
}

// sigmoid emits r = 1/(1+Exp(-in)), tmp as for exp plus one more.
func sigmoid(x vx, in, r VecPhysical, tmp []VecPhysical) {
	neg := tmp[5]
	VXORPS(constant("sign", 0x80000000), in, neg)
	exp(x, neg, r, tmp)
	VADDPS(f32("one", 1), r, r)
	VMOVUPS(f32("one", 1), neg)
	VDIVPS(r, neg, r)
}

// tanh emits r = Tanh(in): in itself where |in| < 0.0004, else
// sign(in) (1-e)/(1+e) with e = Exp(-2|in|); tmp as for exp plus two more.
func tanh(x vx, in, r VecPhysical, tmp []VecPhysical) {
	a, e := tmp[5], tmp[6]
	VANDPS(constant("abs", 0x7fffffff), in, a)
	VMULPS(f32("minus2", -2), a, a)
	exp(x, a, e, tmp)
	VMOVUPS(f32("one", 1), a)
	VSUBPS(e, a, a)
	VADDPS(f32("one", 1), e, e)
	VDIVPS(e, a, r)
	VXORPS(constant("sign", 0x80000000), r, e)
	m := x.masks[1]
	x.cmp(ltOQ, in, constant("zero", 0), m)
	x.sel(m, e, r, r)
	VANDPS(constant("abs", 0x7fffffff), in, a)
	x.cmp(ltOQ, a, f32("small", 0.0004), m)
	x.sel(m, in, r, r)
}

// expShift emits expShiftNN(row, n, shift): row[j] = Exp(row[j]-shift) for
// j < n, n a multiple of the width.
func expShift(x vx) {
	name := "expShift" + x.name
	TEXT(name, NOSPLIT, "func(row *float32, n int, shift float32)")
	Pragma("noescape") // the kernels keep no pointer
	Doc(fmt.Sprintf("%s sets row[j] = Exp(row[j]-shift) for j < n; n must be a positive multiple of %d.", name, x.width))
	row := Mem{Base: Load(Param("row"), GP64())}
	n := Load(Param("n"), GP64())
	shift := x.regs[0]
	sh, err := Param("shift").Resolve()
	if err != nil {
		panic(err)
	}
	VBROADCASTSS(sh.Addr, shift)
	in, r, tmp := x.regs[1], x.regs[2], x.regs[3:8]
	Label(name + "loop")
	VMOVUPS(row, in)
	VSUBPS(shift, in, in)
	exp(x, in, r, tmp)
	VMOVUPS(r, row)
	ADDQ(U32(4*x.width), row.Base)
	SUBQ(U32(x.width), n)
	JNZ(LabelRef(name + "loop"))
	VZEROUPPER()
	RET()
}

// cell emits cellNN(gates, cPrev, cNext, hNext, tc, H, n): the LSTM cell of one
// row, as internal/kernel/vmath's LSTMCell, for the first n of its H units.
func cell(x vx) {
	name := "cell" + x.name
	TEXT(name, NOSPLIT, "func(gates, cPrev, cNext, hNext, tc *float32, H, n int)")
	Pragma("noescape") // the kernels keep no pointer
	Doc(fmt.Sprintf("%s applies the LSTM cell to units 0..n-1 of one row; n must be a positive multiple of %d.", name, x.width))
	gi := Mem{Base: Load(Param("gates"), GP64())}
	cp := Mem{Base: Load(Param("cPrev"), GP64())}
	cn := Mem{Base: Load(Param("cNext"), GP64())}
	hn := Mem{Base: Load(Param("hNext"), GP64())}
	tc := Mem{Base: Load(Param("tc"), GP64())}
	h := Load(Param("H"), GP64())
	SHLQ(U8(2), h) // the gates' rows are H floats apart: i, f, g, o
	n := Load(Param("n"), GP64())
	gf := Mem{Base: gi.Base, Index: h, Scale: 1}
	gg := Mem{Base: gi.Base, Index: h, Scale: 2}
	h3 := GP64()
	LEAQ(Mem{Base: h, Index: h, Scale: 2}, h3)
	gout := Mem{Base: gi.Base, Index: h3, Scale: 1}
	in, r, tmp := x.regs[0], x.regs[1], x.regs[2:9]
	Label(name + "loop")
	for _, gate := range []Mem{gi, gf, gout} {
		VMOVUPS(gate, in)
		sigmoid(x, in, r, tmp)
		VMOVUPS(r, gate)
	}
	VMOVUPS(gg, in)
	tanh(x, in, r, tmp)
	VMOVUPS(r, gg)
	// c = f*cPrev + i*g, its tanh, and h = o*tanh(c).
	a, b := x.regs[9], x.regs[10]
	VMOVUPS(gf, a)
	VMULPS(cp, a, a)
	VMOVUPS(gi, b)
	VMULPS(gg, b, b)
	VADDPS(b, a, in)
	VMOVUPS(in, cn)
	tanh(x, in, r, tmp)
	VMOVUPS(r, tc)
	VMULPS(gout, r, r)
	VMOVUPS(r, hn)
	for _, m := range []Mem{gi, cp, cn, hn, tc} {
		ADDQ(U32(4*x.width), m.Base)
	}
	SUBQ(U32(x.width), n)
	JNZ(LabelRef(name + "loop"))
	VZEROUPPER()
	RET()
}

// cellBack emits cellBackNN(gates, cPrev, tc, dh, dc, dgates, H, n): the
// LSTM cell's backward pass for units 0..n-1 of one row, as internal/kernel/vmath's
// LSTMCellBackward: from the gates' activations and the gradients dh and dc
// of the cell's outputs, the gradients of the gates' pre-activations, and
// dc carried back through the forget gate.
func cellBack(x vx) {
	name := "cellBack" + x.name
	TEXT(name, NOSPLIT, "func(gates, cPrev, tc, dh, dc, dgates *float32, H, n int)")
	Pragma("noescape") // the kernels keep no pointer
	Doc(fmt.Sprintf("%s is the LSTM cell's backward pass over units 0..n-1 of one row; n must be a positive multiple of %d.", name, x.width))
	g := Mem{Base: Load(Param("gates"), GP64())}
	cp := Mem{Base: Load(Param("cPrev"), GP64())}
	tc := Mem{Base: Load(Param("tc"), GP64())}
	dh := Mem{Base: Load(Param("dh"), GP64())}
	dc := Mem{Base: Load(Param("dc"), GP64())}
	d := Mem{Base: Load(Param("dgates"), GP64())}
	h := Load(Param("H"), GP64())
	SHLQ(U8(2), h)
	n := Load(Param("n"), GP64())
	h3 := GP64()
	LEAQ(Mem{Base: h, Index: h, Scale: 2}, h3)
	// gate q of a row is q*H floats on: i, f, g, o.
	at := func(m Mem, q int) Mem {
		switch q {
		case 0:
			return m
		case 1:
			return Mem{Base: m.Base, Index: h, Scale: 1}
		case 2:
			return Mem{Base: m.Base, Index: h, Scale: 2}
		}
		return Mem{Base: m.Base, Index: h3, Scale: 1}
	}
	r := x.regs
	i, f, gg, o, th, dhv, do, dck, t1, t2, one := r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10]
	VMOVUPS(f32("one", 1), one)
	Label(name + "loop")
	VMOVUPS(at(g, 0), i)
	VMOVUPS(at(g, 1), f)
	VMOVUPS(at(g, 2), gg)
	VMOVUPS(at(g, 3), o)
	VMOVUPS(tc, th)
	VMOVUPS(dh, dhv)
	// do = dh*th; dc' = dh*o*(1-th*th) + dc
	VMULPS(th, dhv, do)
	VMULPS(th, th, t1)
	VSUBPS(t1, one, t1)
	VMULPS(o, dhv, t2)
	VMULPS(t1, t2, t2)
	VADDPS(dc, t2, dck)
	// di = dc'*g*i*(1-i)
	VMULPS(gg, dck, t2)
	VMULPS(i, t2, t2)
	VSUBPS(i, one, t1)
	VMULPS(t1, t2, t2)
	VMOVUPS(t2, at(d, 0))
	// df = dc'*cPrev*f*(1-f)
	VMULPS(cp, dck, t2)
	VMULPS(f, t2, t2)
	VSUBPS(f, one, t1)
	VMULPS(t1, t2, t2)
	VMOVUPS(t2, at(d, 1))
	// dg = dc'*i*(1-g*g)
	VMULPS(i, dck, t2)
	VMULPS(gg, gg, t1)
	VSUBPS(t1, one, t1)
	VMULPS(t1, t2, t2)
	VMOVUPS(t2, at(d, 2))
	// do = dh*th*o*(1-o)
	VMULPS(o, do, t2)
	VSUBPS(o, one, t1)
	VMULPS(t1, t2, t2)
	VMOVUPS(t2, at(d, 3))
	// dc = dc'*f
	VMULPS(f, dck, t2)
	VMOVUPS(t2, dc)
	for _, m := range []Mem{g, cp, tc, dh, dc, d} {
		ADDQ(U32(4*x.width), m.Base)
	}
	SUBQ(U32(x.width), n)
	JNZ(LabelRef(name + "loop"))
	VZEROUPPER()
	RET()
}

// sumSquares emits sumSquaresNN(x, n, acc): acc[l] += x[j]^2 in float64 for
// j < n with j%32 == l, each lane in the order of j (4 zmm or 8 ymm
// accumulators of 8 or 4 lanes); the square of a float32 is exact in
// float64, so only the additions round, as in the scalar Go.
func sumSquares(x vx) {
	name := "sumSquares" + x.name
	TEXT(name, NOSPLIT, "func(x *float32, n int, acc *[32]float64)")
	Pragma("noescape") // the kernels keep no pointer
	Doc(fmt.Sprintf("%s adds the squares of x[0:n] into 32 lanes of acc by j%%32; n must be a positive multiple of 32.", name))
	src := Mem{Base: Load(Param("x"), GP64())}
	n := Load(Param("n"), GP64())
	acc := Mem{Base: Load(Param("acc"), GP64())}
	lanes := x.width / 2 // float64 per register
	regs := 32 / lanes   // accumulators
	a, t := x.regs[:regs], x.regs[regs:2*regs]
	for q, r := range a {
		VMOVUPD(acc.Offset(8*lanes*q), r)
	}
	Label(name + "loop")
	for q := range regs {
		VCVTPS2PD(src.Offset(4*lanes*q), t[q])
	}
	for q := range regs {
		VMULPD(t[q], t[q], t[q])
		VADDPD(t[q], a[q], a[q])
	}
	ADDQ(U32(4*32), src.Base)
	SUBQ(U32(32), n)
	JNZ(LabelRef(name + "loop"))
	for q, r := range a {
		VMOVUPD(r, acc.Offset(8*lanes*q))
	}
	VZEROUPPER()
	RET()
}

// maxout emits maxoutNN(x, pieces, idx, y, arg, n): for the n groups of
// pieces floats in x, y[i] = the largest of group i and arg[i] its piece,
// the first one on ties, a NaN piece never winning over piece 0 (a > b, as
// the Go compares). idx holds i*pieces for i < width: the gather's offsets.
func maxout(x vx) {
	name := "maxout" + x.name
	TEXT(name, NOSPLIT, "func(x *float32, pieces int, idx *int32, y *float32, arg *int32, n int)")
	Pragma("noescape") // the kernels keep no pointer
	Doc(fmt.Sprintf("%s keeps the maximum of each of n groups of pieces floats and its piece; n must be a positive multiple of %d.", name, x.width))
	src := Load(Param("x"), GP64())
	pieces := Load(Param("pieces"), GP64())
	idx := Mem{Base: Load(Param("idx"), GP64())}
	y := Mem{Base: Load(Param("y"), GP64())}
	arg := Mem{Base: Load(Param("arg"), GP64())}
	n := Load(Param("n"), GP64())
	stride := GP64() // bytes per width groups
	MOVQ(pieces, stride)
	SHLQ(U8(2), stride)
	shift := uint8(3) // times the width: 8 or 16
	if x.width == 16 {
		shift = 4
	}
	SHLQ(U8(shift), stride)
	r := x.regs
	offs, best, bestArg, v, p, ones := r[0], r[1], r[2], r[3], r[4], r[5]
	VMOVUPS(idx, offs)
	VMOVUPS(constant("int1", 1), ones)
	piece := GP64()
	ptr := GP64()
	// gather sets dst to the floats at ptr + offs (in bytes / 4).
	gather := func(dst VecPhysical) {
		at := Mem{Base: ptr, Index: offs, Scale: 4}
		if x.width == 16 {
			KXNORW(K1, K1, K1)
			VGATHERDPS(at, K1, dst)
			return
		}
		mask := r[6]
		VPCMPEQD(mask, mask, mask)
		VGATHERDPS(mask, at, dst)
	}
	Label(name + "loop")
	MOVQ(src, ptr)
	gather(best)
	VXORPS(bestArg, bestArg, bestArg)
	VXORPS(p, p, p)
	MOVQ(pieces, piece)
	DECQ(piece)
	JZ(LabelRef(name + "store"))
	Label(name + "piece")
	ADDQ(U8(4), ptr)
	VPADDD(ones, p, p)
	gather(v)
	m := x.masks[0]
	x.cmp(gtOQ, v, best, m)
	x.sel(m, v, best, best)
	x.sel(m, p, bestArg, bestArg)
	DECQ(piece)
	JNZ(LabelRef(name + "piece"))
	Label(name + "store")
	VMOVUPS(best, y)
	VMOVUPS(bestArg, arg)
	ADDQ(stride, src)
	ADDQ(U32(4*x.width), y.Base)
	ADDQ(U32(4*x.width), arg.Base)
	SUBQ(U32(x.width), n)
	JNZ(LabelRef(name + "loop"))
	VZEROUPPER()
	RET()
}

// elementwise emits a loop over n floats (a multiple of the width) of dst
// and src, body computing register d from d and s.
func elementwise(x vx, name, doc string, body func(d, s VecPhysical)) {
	TEXT(name, NOSPLIT, "func(dst, src *float32, n int)")
	Pragma("noescape") // the kernels keep no pointer
	Doc(doc)
	dst := Mem{Base: Load(Param("dst"), GP64())}
	src := Mem{Base: Load(Param("src"), GP64())}
	n := Load(Param("n"), GP64())
	Label(name + "loop")
	d, sv := x.regs[0], x.regs[1]
	VMOVUPS(dst, d)
	VMOVUPS(src, sv)
	body(d, sv)
	VMOVUPS(d, dst)
	ADDQ(U32(4*x.width), dst.Base)
	ADDQ(U32(4*x.width), src.Base)
	SUBQ(U32(x.width), n)
	JNZ(LabelRef(name + "loop"))
	VZEROUPPER()
	RET()
}

// mul emits mulNN(dst, src, n): dst[i] *= src[i] (dropout's mask).
func mul(x vx) {
	elementwise(x, "mul"+x.name, fmt.Sprintf("mul%s sets dst[i] *= src[i] for i < n; n must be a positive multiple of %d.", x.name, x.width),
		func(d, s VecPhysical) { VMULPS(s, d, d) })
}

// relu emits reluNN(dst, src, n): dst[i] = src[i] where src[i] > 0, else
// +0 (NaN too): MAXPS returns its second operand unless the first is greater.
func relu(x vx) {
	elementwise(x, "relu"+x.name, fmt.Sprintf("relu%s sets dst[i] = src[i] > 0 ? src[i] : 0 for i < n; n must be a positive multiple of %d.", x.name, x.width),
		func(d, s VecPhysical) {
			VXORPS(d, d, d)
			VMAXPS(d, s, d)
		})
}

// reluBack emits reluBackNN(d, y, n): d[i] = 0 where y[i] <= 0.
func reluBack(x vx) {
	elementwise(x, "reluBack"+x.name, fmt.Sprintf("reluBack%s sets dst[i] = 0 where src[i] <= 0 for i < n; n must be a positive multiple of %d.", x.name, x.width),
		func(d, s VecPhysical) {
			m := x.masks[0]
			x.cmp(leOQ, s, constant("zero", 0), m)
			x.sel(m, constant("zero", 0), d, d)
		})
}

// broadcast loads coefficient i of coef into r.
func broadcast(coef Mem, i int, r VecPhysical) { VBROADCASTSS(coef.Offset(4*i), r) }

// adagrad emits adagradNN(w, g, acc, n, coef): for i < n,
// acc += g*g; w -= lr*g / (sqrt(acc) + eps), coef = [lr, eps].
func adagrad(x vx) {
	name := "adagrad" + x.name
	TEXT(name, NOSPLIT, "func(w, grad, acc *float32, n int, coef *[2]float32)")
	Pragma("noescape") // the kernels keep no pointer
	Doc(fmt.Sprintf("%s is Adagrad's update of n floats; n must be a positive multiple of %d.", name, x.width))
	w := Mem{Base: Load(Param("w"), GP64())}
	g := Mem{Base: Load(Param("grad"), GP64())}
	acc := Mem{Base: Load(Param("acc"), GP64())}
	n := Load(Param("n"), GP64())
	coef := Mem{Base: Load(Param("coef"), GP64())}
	r := x.regs
	lr, eps, gv, a, t, wv := r[0], r[1], r[2], r[3], r[4], r[5]
	broadcast(coef, 0, lr)
	broadcast(coef, 1, eps)
	Label(name + "loop")
	VMOVUPS(g, gv)
	VMULPS(gv, gv, t)
	VADDPS(acc, t, a) // acc + g*g
	VMOVUPS(a, acc)
	VSQRTPS(a, a)
	VADDPS(eps, a, a)
	VMULPS(lr, gv, t)
	VDIVPS(a, t, t)
	VMOVUPS(w, wv)
	VSUBPS(t, wv, wv)
	VMOVUPS(wv, w)
	for _, m := range []Mem{w, g, acc} {
		ADDQ(U32(4*x.width), m.Base)
	}
	SUBQ(U32(x.width), n)
	JNZ(LabelRef(name + "loop"))
	VZEROUPPER()
	RET()
}

// adam emits adamNN(w, g, m, v, n, coef): for i < n,
// m = b1*m + c1*g; v = b2*v + c2*g*g; w -= lr*(m/bc1) / (sqrt(v/bc2) + eps),
// coef = [b1, c1, b2, c2, bc1, bc2, lr, eps].
func adam(x vx) {
	name := "adam" + x.name
	TEXT(name, NOSPLIT, "func(w, grad, m, v *float32, n int, coef *[8]float32)")
	Pragma("noescape") // the kernels keep no pointer
	Doc(fmt.Sprintf("%s is Adam's update of n floats; n must be a positive multiple of %d.", name, x.width))
	w := Mem{Base: Load(Param("w"), GP64())}
	g := Mem{Base: Load(Param("grad"), GP64())}
	mm := Mem{Base: Load(Param("m"), GP64())}
	vm := Mem{Base: Load(Param("v"), GP64())}
	n := Load(Param("n"), GP64())
	coef := Mem{Base: Load(Param("coef"), GP64())}
	r := x.regs
	c := r[:8] // b1, c1, b2, c2, bc1, bc2, lr, eps
	for i, reg := range c {
		broadcast(coef, i, reg)
	}
	b1, c1, b2, c2, bc1, bc2, lr, eps := c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
	gv, mv, vv, t, s := r[8], r[9], r[10], r[11], r[12]
	Label(name + "loop")
	VMOVUPS(g, gv)
	VMULPS(mm, b1, mv)
	VMULPS(gv, c1, t)
	VADDPS(t, mv, mv) // b1*m + c1*g
	VMOVUPS(mv, mm)
	VMULPS(vm, b2, vv)
	VMULPS(gv, c2, t)
	VMULPS(gv, t, t)
	VADDPS(t, vv, vv) // b2*v + (c2*g)*g
	VMOVUPS(vv, vm)
	VDIVPS(bc1, mv, t)
	VMULPS(lr, t, t) // lr*(m/bc1)
	VDIVPS(bc2, vv, s)
	VSQRTPS(s, s)
	VADDPS(eps, s, s)
	VDIVPS(s, t, t)
	VMOVUPS(w, s)
	VSUBPS(t, s, s)
	VMOVUPS(s, w)
	for _, m := range []Mem{w, g, mm, vm} {
		ADDQ(U32(4*x.width), m.Base)
	}
	SUBQ(U32(x.width), n)
	JNZ(LabelRef(name + "loop"))
	VZEROUPPER()
	RET()
}

// momentum emits momentumNN(w, g, inc, n, coef): for i < n,
// inc = m*inc - lr*g; w += inc, coef = [m, lr]: one pass where three BLAS
// calls took three.
func momentum(x vx) {
	name := "momentum" + x.name
	TEXT(name, NOSPLIT, "func(w, grad, inc *float32, n int, coef *[2]float32)")
	Pragma("noescape") // the kernels keep no pointer
	Doc(fmt.Sprintf("%s is the momentum update of n floats; n must be a positive multiple of %d.", name, x.width))
	w := Mem{Base: Load(Param("w"), GP64())}
	g := Mem{Base: Load(Param("grad"), GP64())}
	inc := Mem{Base: Load(Param("inc"), GP64())}
	n := Load(Param("n"), GP64())
	coef := Mem{Base: Load(Param("coef"), GP64())}
	r := x.regs
	m, lr, t, u := r[0], r[1], r[2], r[3]
	broadcast(coef, 0, m)
	broadcast(coef, 1, lr)
	Label(name + "loop")
	VMULPS(inc, m, t)
	VMULPS(g, lr, u)
	VSUBPS(u, t, t) // m*inc - lr*g
	VMOVUPS(t, inc)
	VADDPS(w, t, t)
	VMOVUPS(t, w)
	for _, mm := range []Mem{w, g, inc} {
		ADDQ(U32(4*x.width), mm.Base)
	}
	SUBQ(U32(x.width), n)
	JNZ(LabelRef(name + "loop"))
	VZEROUPPER()
	RET()
}
