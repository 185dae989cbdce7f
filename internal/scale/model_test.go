package scale

import (
	"math"
	"strings"
	"testing"
)

// runsOf makes the results a machine that follows m exactly would measure:
// CPU per step, the wait of the latency, the step time of StepSeconds.
func runsOf(m Model) []Result {
	var rs []Result
	for _, p := range []int{16384, 1 << 20} {
		for _, s := range []int{1, 4, 16} {
			for _, w := range []int{1, 2, 4, 8, 16, 32, 64} {
				r := Result{Workers: w, Shards: s, Params: p, StepMs: 100, Steps: 200, Mode: "sync"}
				step := m.StepSeconds(r)
				r.StepsPerSec = 1 / step
				r.Seconds = step * 200
				cpu := m.cpu(float64(w), float64(s), float64(p)) * 200
				r.CPU = RoleCosts{Worker: cpu / 2, PS: cpu / 4, Coordinator: cpu / 8, Servers: cpu / 8}
				r.Wait.Mean = (m.Latency0 + m.LatencyByte*8*float64(p)) * 1e3
				rs = append(rs, r)
			}
		}
	}
	return rs
}

// Fit reads back the constants of the machine that made the runs, in both
// regimes (runs bound by their critical path and runs bound by the CPU).
func TestFitRecoversTheModel(t *testing.T) {
	want := Model{WorkerCPU: 5e-3, MsgCPU: 40e-6, ByteCPU: 2e-9, Latency0: 2e-3, LatencyByte: 1e-9, Cores: 2, Efficiency: 0.9}
	rs := runsOf(want)
	var bound, free int
	for _, r := range rs {
		if m := want.cpu(float64(r.Workers), float64(r.Shards), float64(r.Params)) / 2; m > r.StepMs/1e3+want.Latency0+want.LatencyByte*8*float64(r.Params) {
			bound++
		} else {
			free++
		}
	}
	if bound < 5 || free < 5 {
		t.Fatalf("the runs do not cover both regimes: %d CPU-bound, %d not", bound, free)
	}
	got, err := Fit(rs, 2)
	if err != nil {
		t.Fatal(err)
	}
	for name, pair := range map[string][2]float64{
		"worker": {got.WorkerCPU, want.WorkerCPU}, "message": {got.MsgCPU, want.MsgCPU}, "byte": {got.ByteCPU, want.ByteCPU},
		"latency": {got.Latency0, want.Latency0}, "latency a byte": {got.LatencyByte, want.LatencyByte}, "efficiency": {got.Efficiency, want.Efficiency},
	} {
		if math.Abs(pair[0]-pair[1]) > 1e-6*pair[1] {
			t.Errorf("%s: fitted %g, want %g", name, pair[0], pair[1])
		}
	}
	for _, c := range got.CheckAll(rs) {
		if math.Abs(c.Error) > 1e-6 {
			t.Fatalf("%d workers, %d shards: error %g", c.Workers, c.Shards, c.Error)
		}
	}
	if _, err := Fit(rs[:2], 2); err == nil {
		t.Fatal("fitted three constants to two runs")
	}
}

// A negative unknown of the unconstrained solution is held at 0 and the
// rest solved again.
func TestNonNegativeLeastSquares(t *testing.T) {
	// b = 2*x0 exactly, but noise pulls the unconstrained x1 below 0.
	rows := [][]float64{{1, 1}, {2, 1}, {3, 1}, {4, 1}}
	b := []float64{2 - 0.5, 4 - 0.5, 6 - 0.5, 8 - 0.5}
	x, err := nonNegativeLeastSquares(rows, b)
	if err != nil {
		t.Fatal(err)
	}
	// x1 = 0, x0 = sum(a*b)/sum(a*a) = (1.5+7+16.5+30)/30.
	if x[1] != 0 || math.Abs(x[0]-55.0/30) > 1e-12 {
		t.Fatalf("x = %v", x)
	}
	x, err = nonNegativeLeastSquares(rows, []float64{3, 5, 7, 9}) // 2*a + 1
	if err != nil || math.Abs(x[0]-2) > 1e-12 || math.Abs(x[1]-1) > 1e-12 {
		t.Fatalf("x = %v, %v", x, err)
	}
}

// A cluster's sync step: the compute and the slowest transfer, every term
// by hand; the shards needed grow with the workers.
func TestPredict(t *testing.T) {
	m := Model{MsgCPU: 30e-6, ByteCPU: 0.3e-9}
	c := Cluster{Workers: 100, Shards: 20, Params: 100e6, ComputeSeconds: 1, LinkBytesPerSec: 1.25e9, NATSServers: 20}
	b := m.Predict(c)
	near := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9*math.Max(1, want) {
			t.Errorf("%s: %g, want %g", name, got, want)
		}
	}
	near("worker link", b.WorkerLink, 0.32) // 400 MB at 1.25 GB/s
	near("shard link", b.ShardLink, 1.6)    // 100 workers' 20 MB
	near("NATS link", b.NATSLink, 1.6)      // on the shards' machines
	near("shard CPU", b.ShardCPU, (30e-6*400+0.3e-9*8*100e6*100/20)/3)
	near("worker CPU", b.WorkerCPU, (30e-6*80+0.3e-9*8*100e6)/3)
	near("step", b.Step, 1+1.6)
	// A worker's own transfer at n shards is 0.32 + (0.0012n + 0.24)/3 s;
	// the shards' links, 32/n s, fall within it at n = 80 (their CPU at
	// 21): the power of two above is 128.
	if b.ShardsToHide != 128 {
		t.Fatalf("shards to hide: %d", b.ShardsToHide)
	}
	// Ten workers: 3.2/n s within 0.4 + 0.0004n at n = 8, which is where
	// 20 shards leave the step to the worker's own transfer.
	c.Workers = 10
	if b := m.Predict(c); b.ShardsToHide != 8 || b.Step != 1+b.WorkerLink+b.WorkerCPU {
		t.Fatalf("10 workers: %+v", b)
	}
	// No links to speak of: the CPU decides; the shards' for ten workers'
	// bytes is within a worker's own from n = 10 on: 16.
	c.LinkBytesPerSec = 1e15
	if b := m.Predict(c); b.ShardsToHide != 16 {
		t.Fatalf("fast links: %+v", b)
	}
}

// The report has the constants, a line a run with its error, the largest
// error and a line a cluster.
func TestWriteReport(t *testing.T) {
	m := Model{WorkerCPU: 5e-3, MsgCPU: 40e-6, ByteCPU: 2e-9, Latency0: 2e-3, LatencyByte: 1e-9, Cores: 2, Efficiency: 0.9}
	rs := runsOf(m)[:3]
	rs[1].StepsPerSec *= 1.25 // the model is 20% slow on it
	var b strings.Builder
	m.WriteReport(&b, rs, []Cluster{{Name: "big", Workers: 100, Shards: 20, Params: 384e6, ComputeSeconds: 1, LinkBytesPerSec: 1.25e9, NATSServers: 20}})
	out := b.String()
	for _, want := range []string{"constants: worker step 5 ms CPU, message 40 us CPU, byte 2 ns CPU", "-20%", "largest error: 20%", "big: 100 workers, 20 shards"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n != 1+1+3+1+1 {
		t.Errorf("%d lines:\n%s", n, out)
	}
}
