package models

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"sync"
	"testing"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

var update = flag.Bool("update", false, "rewrite internal/kernel/gemm/testdata/products.txt from the workloads' steps")

// productsFile is the list of the GEMMs the benchmark workloads run, which
// internal/kernel/gemm's BenchmarkSgemm and BenchmarkSgemmStep time (and
// internal/kernel/gemm/testdata/sgemm_openblas.py times with OpenBLAS).
const productsFile = "../internal/kernel/gemm/testdata/products.txt"

// product is one shape of GEMM a step calls: C (m x n) = op(A) op(B) (+ C
// when acc), and how many times one step calls it.
type product struct {
	tA, tB  bool
	acc     bool
	m, n, k int
	calls   int
}

// recorder is a float32 BLAS that notes every Sgemm it is asked for and
// hands it to the implementation it wraps.
type recorder struct {
	blas.Float32
	products []product // in the order of their first call
}

func (r *recorder) Sgemm(tA, tB blas.Transpose, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	if alpha != 1 || beta != 0 && beta != 1 {
		panic(fmt.Sprintf("recorder: alpha %v, beta %v: the list holds alpha 1 and beta 0 or 1", alpha, beta))
	}
	p := product{tA: tA != blas.NoTrans, tB: tB != blas.NoTrans, acc: beta == 1, m: m, n: n, k: k}
	i := 0
	for i < len(r.products) && !r.products[i].same(p) {
		i++
	}
	if i == len(r.products) {
		r.products = append(r.products, p)
	}
	r.products[i].calls++
	r.Float32.Sgemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

func (p product) same(q product) bool {
	p.calls, q.calls = 0, 0
	return p == q
}

// stepProducts records the GEMMs of one step of the workload (a step's
// shapes do not depend on the parameters, nor on whether its buffers have
// grown), once a test process.
var stepProducts = func() func(w workload) []product {
	var mu sync.Mutex // guards done
	done := map[string][]product{}
	return func(w workload) []product {
		mu.Lock()
		defer mu.Unlock()
		if ps, ok := done[w.name]; ok {
			return ps
		}
		step, _ := w.build()
		r := &recorder{Float32: blas32.Implementation()}
		blas32.Use(r)
		defer blas32.Use(r.Float32)
		step()
		done[w.name] = r.products
		return r.products
	}
}()

func writeProducts(buf *bytes.Buffer, name string, ps []product) {
	op := func(t bool) string {
		if t {
			return "T"
		}
		return "N"
	}
	for _, p := range ps {
		beta := 0
		if p.acc {
			beta = 1
		}
		fmt.Fprintf(buf, "%s %d %s%s %d %d %d %d\n", name, p.calls, op(p.tA), op(p.tB), beta, p.m, p.n, p.k)
	}
}

// The GEMM benchmarks time exactly the products the workloads' steps call,
// with their counts: the committed list is what a step of each calls now
// (go test ./models -run TestStepProducts -update writes it again).
func TestStepProducts(t *testing.T) {
	var buf bytes.Buffer
	buf.WriteString(`# The GEMMs one training step of each benchmark workload calls (models'
# BenchmarkW1, W2, G1), in the order of their first call, written by
# go test ./models -run TestStepProducts -update and checked by that test.
# C (m x n) = op(A) (m x k) op(B) (k x n), alpha 1; beta 0 stores C, 1 adds to it.
# workload calls op beta m n k
`)
	for _, w := range workloads {
		writeProducts(&buf, w.name, stepProducts(w))
	}
	if *update {
		if err := os.WriteFile(productsFile, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(productsFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, buf.Bytes()) {
		t.Fatalf("%s is not what the workloads' steps call; run go test ./models -run TestStepProducts -update. The steps call:\n%s", productsFile, buf.Bytes())
	}
}

// The recorded W2 step is the LSTM's and the softmax's products as
// lstm.go and seq2seq.go write them, counted by hand: per layer of the
// encoder and of the decoder (8 in all), the input projection over all 20
// steps and the recurrent product at each of them (the encoder's first
// multiplies its zero initial state too), their backward passes, and the
// output layer over the 2560 target tokens.
func TestW2ProductsByHand(t *testing.T) {
	const B, T, H, E, V, L = 128, 20, 512, 512, 8000, 4
	rows, g := B*T, 4*H
	want := map[product]int{
		{m: rows, n: g, k: E, acc: true}:           2 * L, // input projections (E = H: every layer alike)
		{m: B, n: g, k: H, acc: true}:              2 * L * T,
		{m: rows, n: V, k: H, acc: true}:           1, // logits
		{tA: true, m: H, n: V, k: rows, acc: true}: 1, // dW of the output layer
		{tB: true, m: rows, n: H, k: V}:            1, // d of its input
		{tB: true, m: B, n: H, k: g}:               2 * L * T,
		{tA: true, m: H, n: g, k: rows, acc: true}: 2 * 2 * L, // dWh and dWx
		{tB: true, m: rows, n: E, k: g}:            2 * L,
	}
	got := map[product]int{}
	for _, w := range workloads {
		if w.name != "W2" {
			continue
		}
		for _, p := range stepProducts(w) {
			got[product{tA: p.tA, tB: p.tB, acc: p.acc, m: p.m, n: p.n, k: p.k}] += p.calls
		}
	}
	for p, n := range want {
		if got[p] != n {
			t.Errorf("%+v: %d calls, want %d", p, got[p], n)
		}
	}
	for p, n := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%+v: %d calls, not in the hand count", p, n)
		}
	}
}
