package models

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"

	"gonum.org/v1/gonum/blas/gonum"

	"github.com/downpour-ml/downpour/internal/kernel/vmath"
)

// Tensor names one parameter tensor of a model and its shape. A model's
// parameters are the concatenation of its tensors in order.
type Tensor struct {
	Name  string `json:"name"`
	Shape []int  `json:"shape"`
}

// Size is the number of elements of t.
func (t Tensor) Size() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// TotalSize is the number of elements of all tensors.
func TotalSize(ts []Tensor) int {
	n := 0
	for _, t := range ts {
		n += t.Size()
	}
	return n
}

// Offsets returns the offset of each tensor in the flat parameter vector.
func Offsets(ts []Tensor) []int {
	off := make([]int, len(ts))
	n := 0
	for i, t := range ts {
		off[i] = n
		n += t.Size()
	}
	return off
}

// InitUniform fills dst, the whole of tensor name, with values drawn uniformly
// from [-scale, scale] by a generator seeded from (seed, name). The values of
// a tensor therefore do not depend on which process initialises it or on how
// the parameter vector is cut into blocks.
func InitUniform[T Float](dst []T, seed uint64, name string, scale float64) {
	fillUniform(NewUniformStream(seed, name, scale), dst)
}

// A UniformStream gives the values InitUniform gives a tensor a part at a
// time, in order of offset, holding none of them: a shard that owns a few
// blocks of a large tensor makes them without making the tensor.
type UniformStream struct {
	rng   *rand.Rand
	pos   int
	scale float64
}

// NewUniformStream starts tensor name's values for seed.
func NewUniformStream(seed uint64, name string, scale float64) *UniformStream {
	h := fnv.New64a()
	h.Write([]byte(name))
	return &UniformStream{rng: rand.New(rand.NewPCG(seed, h.Sum64())), scale: scale}
}

// Pos is the offset of the stream's next value.
func (u *UniformStream) Pos() int { return u.pos }

// Fill sets dst to the tensor's values from offset at on. at must not be
// before the end of the last Fill (it panics otherwise).
func (u *UniformStream) Fill(dst []float32, at int) {
	if at < u.pos {
		panic(fmt.Sprintf("models: a uniform stream at %d cannot go back to %d", u.pos, at))
	}
	for ; u.pos < at; u.pos++ {
		u.rng.Float64()
	}
	fillUniform(u, dst)
}

func fillUniform[T Float](u *UniformStream, dst []T) {
	for i := range dst {
		dst[i] = T((2*u.rng.Float64() - 1) * u.scale)
	}
	u.pos += len(dst)
}

// view carves consecutive tensors out of a flat slice: the next tensor at
// each take, of those held (held nil: all); a tensor not held is nil.
type view[T Float] struct {
	buf  []T
	off  int
	held []bool
	next int // the tensor the next take is of
}

func (v *view[T]) take(n int) []T {
	t := v.next
	v.next++
	if v.held != nil && !v.held[t] || v.buf == nil {
		return nil
	}
	s := v.buf[v.off : v.off+n : v.off+n]
	v.off += n
	return s
}

// GlobalNorm is the Euclidean norm of g, a gradient laid out as tensors
// of the given sizes (nil: one tensor): each tensor's sum of squares in
// float64 (TensorSquares; for float32, in vmath.SumSquares' order, which
// SIMD follows on every path), added from the first tensor on (NormOf). A
// replica split over processes by whole tensors, each summing its own,
// combines the sums to the same bits.
func GlobalNorm[T Float](g []T, sizes []int) float64 {
	if sizes == nil {
		return math.Sqrt(sumSquares(g))
	}
	var s float64
	off := 0
	for _, n := range sizes {
		s += sumSquares(g[off : off+n])
		off += n
	}
	return math.Sqrt(s)
}

// sumSquares is the sum of the squares of g in float64 (for float32, in
// vmath.SumSquares' order).
func sumSquares[T Float](g []T) float64 {
	if g32, ok := any(g).([]float32); ok {
		return vmath.SumSquares(g32)
	}
	var s float64
	for _, v := range g {
		s += float64(v) * float64(v)
	}
	return s
}

// TensorSquares is each tensor's sum of squares (sizes: the tensors' sizes,
// which add up to len(g); nil: one tensor).
func TensorSquares[T Float](g []T, sizes []int) []float64 {
	if sizes == nil {
		sizes = []int{len(g)}
	}
	out := make([]float64, len(sizes))
	off := 0
	for i, n := range sizes {
		out[i] = sumSquares(g[off : off+n])
		off += n
	}
	return out
}

// NormOf is the norm of tensors' sums of squares, added in order.
func NormOf(squares []float64) float64 {
	var s float64
	for _, q := range squares {
		s += q
	}
	return math.Sqrt(s)
}

// ClipGlobalNorm rescales g (laid out as tensors of sizes; nil: one) to
// norm max when its norm exceeds max (the rule of Sutskever et al.: max =
// 5). It returns the norm before clipping.
func ClipGlobalNorm[T Float](g []T, sizes []int, max float64) float64 {
	return clipTo(g, GlobalNorm(g, sizes), max)
}

// clipTo rescales g, whose norm is n, to norm max when n exceeds it; it
// returns n.
func clipTo[T Float](g []T, n, max float64) float64 {
	if max > 0 && n > max {
		s := T(max / n)
		if g32, ok := any(g).([]float32); ok { // one rounding per element either way
			gonum.Implementation{}.Sscal(len(g32), float32(s), g32, 1)
			return n
		}
		for i := range g {
			g[i] *= s
		}
	}
	return n
}

// TensorSizes are the sizes of tensors ts.
func TensorSizes(ts []Tensor) []int {
	out := make([]int, len(ts))
	for i, t := range ts {
		out[i] = t.Size()
	}
	return out
}

func mustLen[T Float](name string, s []T, n int) {
	if len(s) != n {
		panic(fmt.Sprintf("models: %s has length %d, want %d", name, len(s), n))
	}
}
