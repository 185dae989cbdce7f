// Package gemm is the float32 matrix multiply (BLAS sgemm) that downpour's
// models run on: Go assembly micro-kernels for AVX-512 and AVX2+FMA, chosen at
// run time, in the GotoBLAS/BLIS structure (packed panels of A and B sized for
// the caches, a register-blocked micro-kernel, a bounded team of goroutines).
// No cgo: it is in every build, static binaries included.
//
// Install it for gonum's float32 BLAS (package models does this):
//
//	blas32.Use(gemm.Implementation{})
//
// Implementation embeds gonum's pure-Go BLAS and replaces its Sgemm; every
// other routine is gonum's.
//
// Paths. On a CPU with AVX-512 (F and DQ) the kernels are 12x32 tiles of zmm
// registers; with AVX2 and FMA, 6x16 tiles of ymm registers; elsewhere, or in
// a build with the noasm tag, Sgemm is gonum's pure Go. The environment
// variable DOWNPOUR_GEMM (avx512, avx2 or go) forces a path at start-up, for
// example to compare them; Path says which one runs.
//
// Determinism. The K dimension is cut into blocks whose length depends on K
// alone, the same on every path, and each element of C is one chain of fused
// multiply-adds over its block in the order of K, scaled by alpha and added
// to C block after block. Threads split M and N only. So the same inputs give the same bits
// whatever the number of threads or the shapes of the tiles: the AVX-512 and
// AVX2 paths give the same bits as each other (the tests check it). The pure
// Go path rounds differently.
package gemm

//go:generate sh -c "cd ../asm && go run . -out ../gemm/kernel_amd64.s -stubs ../gemm/kernel_amd64.go -pkg gemm"

import (
	"fmt"
	"os"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// Implementation is gonum's BLAS with a fast Sgemm.
type Implementation struct {
	gonum.Implementation
	path *path // nil: the process's path (Path)
}

var _ blas.Float32 = Implementation{}

// kc is the longest block of K: K is cut into ceil(K/kc) blocks of equal
// length (1200 into 4 of 300), a function of K alone, the same on every
// path, so that every path sums in the same order. A 12-row panel of A of
// that length (18 KiB) stays in a 32-48 KiB L1 cache beside the rows of B
// streaming through.
const kc = 384

// path is one way to compute a GEMM: a family of kernels of nr columns and
// 1..mr rows, and the cache blocking that suits them.
type path struct {
	name    string
	mr, nr  int
	mc      int // rows of A packed at once (a multiple of mr): L3
	nc      int // columns of B one thread packs at once (a multiple of nr): L2
	kernels []kernel
}

// kernel computes an r x nr tile of C from r rows of packed A and nr columns
// of B, packed (ldb = nr) or in place, kc steps long (see asm/gen.go).
type kernel func(kc int, a, b *float32, ldb int, c *float32, ldc int, alpha float32, accumulate bool)

// active is the path Implementation{} takes; nil is gonum's pure Go.
var active *path

func init() {
	p, err := choose(os.Getenv("DOWNPOUR_GEMM"))
	if err != nil {
		panic(err)
	}
	active = p
}

// choose returns the path named (the best available when name is empty).
func choose(name string) (*path, error) {
	switch name {
	case "":
		if len(paths) > 0 {
			return paths[0], nil
		}
		return nil, nil
	case "go":
		return nil, nil
	}
	for _, p := range paths {
		if p.name == name {
			return p, nil
		}
	}
	return nil, fmt.Errorf("gemm: DOWNPOUR_GEMM=%q: this CPU and build offer %v", name, Paths())
}

// Path names the path Implementation{} takes: "avx512", "avx2" or "go".
func Path() string { return active.String() }

// Paths lists the paths this CPU and build offer, fastest first.
func Paths() []string {
	var names []string
	for _, p := range paths {
		names = append(names, p.name)
	}
	return append(names, "go")
}

// goPath marks an Implementation bound to gonum's pure Go (in tests).
var goPath = &path{name: "go"}

func (p *path) String() string {
	if p == nil {
		return "go"
	}
	return p.name
}

// Sgemm computes C = alpha * op(A) * op(B) + beta * C on row-major matrices,
// where op(A) is m x k, op(B) is k x n and C is m x n, as gonum's Sgemm does:
// the same arguments, the same panics on misuse. As in the reference BLAS, A
// and B are not read when alpha or k is 0, and C is not read when beta is 0.
func (impl Implementation) Sgemm(tA, tB blas.Transpose, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	p := impl.path
	if p == nil {
		p = active
	}
	if p == nil || p == goPath {
		impl.Implementation.Sgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	aT, bT := check(tA, tB, m, n, k, a, lda, b, ldb, c, ldc)
	if m == 0 || n == 0 {
		return
	}
	if alpha == 0 || k == 0 {
		scale(beta, m, n, c, ldc)
		return
	}
	if beta != 0 && beta != 1 {
		scale(beta, m, n, c, ldc)
	}
	run(p, &problem{aT: aT, bT: bT, m: m, n: n, k: k, alpha: alpha,
		a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc, store: beta == 0})
}

// The panics of misuse, in the order gonum checks.
const (
	errTranspose = "gemm: illegal transpose"
	errM         = "gemm: m < 0"
	errN         = "gemm: n < 0"
	errK         = "gemm: k < 0"
	errLdA       = "gemm: bad leading dimension of A"
	errLdB       = "gemm: bad leading dimension of B"
	errLdC       = "gemm: bad leading dimension of C"
	errShortA    = "gemm: insufficient length of a"
	errShortB    = "gemm: insufficient length of b"
	errShortC    = "gemm: insufficient length of c"
)

// check panics on misuse and says whether A and B are transposed.
func check(tA, tB blas.Transpose, m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) (aT, bT bool) {
	transposed := func(t blas.Transpose) bool {
		switch t {
		case blas.NoTrans:
			return false
		case blas.Trans, blas.ConjTrans:
			return true
		}
		panic(errTranspose)
	}
	aT, bT = transposed(tA), transposed(tB)
	switch {
	case m < 0:
		panic(errM)
	case n < 0:
		panic(errN)
	case k < 0:
		panic(errK)
	}
	// The stored shapes: rows x cols with a leading dimension of at least cols.
	ar, ac := m, k
	if aT {
		ar, ac = k, m
	}
	br, bc := k, n
	if bT {
		br, bc = n, k
	}
	switch {
	case lda < max(1, ac):
		panic(errLdA)
	case ldb < max(1, bc):
		panic(errLdB)
	case ldc < max(1, n):
		panic(errLdC)
	}
	if m == 0 || n == 0 {
		return aT, bT
	}
	switch {
	case len(a) < (ar-1)*lda+ac:
		panic(errShortA)
	case len(b) < (br-1)*ldb+bc:
		panic(errShortB)
	case len(c) < (m-1)*ldc+n:
		panic(errShortC)
	}
	return aT, bT
}

// scale sets C = beta * C; with beta 0 it sets C to zero without reading it.
func scale(beta float32, m, n int, c []float32, ldc int) {
	if beta == 1 {
		return
	}
	for i := range m {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row)
			continue
		}
		for j := range row {
			row[j] *= beta
		}
	}
}
