package gemm

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
)

// product is one GEMM a benchmark workload's training step calls, as
// testdata/products.txt lists it: C (m x n) = op(A) op(B), added to C with
// acc, calls times a step.
type product struct {
	work    string
	calls   int
	aT, bT  bool
	acc     bool
	m, n, k int
}

func (p product) String() string {
	op := func(t bool) string {
		if t {
			return "T"
		}
		return "N"
	}
	s := fmt.Sprintf("%dx%dx%d/op=%s%s", p.m, p.n, p.k, op(p.aT), op(p.bT))
	if p.acc {
		s += "acc"
	}
	return s
}

func (p product) flops() float64 { return 2 * float64(p.m) * float64(p.n) * float64(p.k) }

// readProducts reads testdata/products.txt, which models' TestStepProducts
// writes from the workloads' steps and checks against them.
func readProducts(tb testing.TB) []product {
	f, err := os.Open("testdata/products.txt")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var ps []product
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if text == "" || text[0] == '#' {
			continue
		}
		f := strings.Fields(text)
		if len(f) != 7 || len(f[2]) != 2 {
			tb.Fatalf("products.txt:%d: %q: want workload calls op beta m n k", line, text)
		}
		var n [5]int
		for i, s := range []string{f[1], f[3], f[4], f[5], f[6]} {
			if n[i], err = strconv.Atoi(s); err != nil {
				tb.Fatalf("products.txt:%d: %v", line, err)
			}
		}
		ps = append(ps, product{work: f[0], calls: n[0], aT: f[2][0] == 'T', bT: f[2][1] == 'T', acc: n[1] == 1, m: n[2], n: n[3], k: n[4]})
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return ps
}

// operands holds a product's matrices, filled with random values.
type operands struct {
	p        product
	a, b, c  []float32
	lda, ldb int
	beta     float32
}

func newOperands(p product, rng *rand.Rand) *operands {
	rnd := func(n int) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = rng.Float32() - 0.5
		}
		return x
	}
	o := &operands{p: p, a: rnd(p.m * p.k), b: rnd(p.k * p.n), c: rnd(p.m * p.n), lda: p.k, ldb: p.n}
	if p.aT {
		o.lda = p.m
	}
	if p.bT {
		o.ldb = p.k
	}
	if p.acc {
		o.beta = 1
	}
	return o
}

func (o *operands) run(impl Implementation) {
	p := o.p
	impl.Sgemm(tr(p.aT), tr(p.bT), p.m, p.n, p.k, 1, o.a, o.lda, o.b, o.ldb, o.beta, o.c, p.n)
}

// benchPaths is every path of this machine, the pure-Go one included.
func benchPaths(b *testing.B) map[string]Implementation {
	impls := fast(b)
	impls["go"] = Implementation{path: goPath}
	return impls
}

// BenchmarkSgemm reports GFLOP/s of each product a workload's step calls
// (testdata/products.txt), on each path of this machine.
func BenchmarkSgemm(b *testing.B) {
	impls := benchPaths(b)
	for _, p := range readProducts(b) {
		for _, name := range Paths() {
			b.Run(fmt.Sprintf("work=%s/shape=%v/path=%s", p.work, p, name), func(b *testing.B) {
				o := newOperands(p, rand.New(rand.NewPCG(1, 2)))
				o.run(impls[name])
				b.ResetTimer()
				for b.Loop() {
					o.run(impls[name])
				}
				b.ReportMetric(p.flops()*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}

// BenchmarkSgemmStep runs every GEMM of one step of a workload as many
// times as the step calls it, in the list's order, and reports the step's
// GFLOP/s: each product weighted by its share of the step's work. With
// -short (CI runs every benchmark once that way) it leaves out the pure-Go
// path, 20 s a W2 step, whose products BenchmarkSgemm runs.
func BenchmarkSgemmStep(b *testing.B) {
	impls := benchPaths(b)
	byWork := map[string][]product{}
	var works []string
	for _, p := range readProducts(b) {
		if byWork[p.work] == nil {
			works = append(works, p.work)
		}
		byWork[p.work] = append(byWork[p.work], p)
	}
	for _, w := range works {
		for _, name := range Paths() {
			if name == "go" && testing.Short() {
				continue
			}
			b.Run(fmt.Sprintf("work=%s/path=%s", w, name), func(b *testing.B) {
				rng := rand.New(rand.NewPCG(1, 2))
				var ops []*operands
				var flops float64
				for _, p := range byWork[w] {
					ops = append(ops, newOperands(p, rng))
					flops += float64(p.calls) * p.flops()
				}
				step := func() {
					for _, o := range ops {
						for range o.p.calls {
							o.run(impls[name])
						}
					}
				}
				step()
				b.ResetTimer()
				for b.Loop() {
					step()
				}
				b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
				b.ReportMetric(b.Elapsed().Seconds()*1e3/float64(b.N), "ms/step")
			})
		}
	}
}
