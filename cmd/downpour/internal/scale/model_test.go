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
	for _, mode := range []string{"sync", "async"} {
		for _, p := range []int{16384, 1 << 20} {
			for _, s := range []int{1, 4, 16} {
				for _, w := range []int{1, 2, 4, 8, 16, 32, 64} {
					r := Result{Workers: w, Shards: s, Params: p, StepMs: 100, Steps: 200, Mode: mode}
					step := m.StepSeconds(r)
					r.StepsPerSec = 1 / step
					r.Seconds = step * 200
					cpu := func(c Costs) float64 {
						w, s, p := float64(w), float64(s), float64(p)
						return (c.Step*w + c.Msg*Messages(w, s, p) + c.Byte*8*p*w + c.Upkeep*(w+s+1)*step) * 200
					}
					servers := cpu(m.Servers)
					r.CPU = RoleCosts{Worker: cpu(m.Worker), PS: cpu(m.Shard), Coordinator: servers / 4, Servers: servers * 3 / 4}
					r.Wait.Mean = (m.Latency0 + m.LatencyByte*8*float64(p)) * 1e3
					rs = append(rs, r)
				}
			}
		}
	}
	return rs
}

var machine = Model{
	Worker:   Costs{Step: 4e-3, Msg: 10e-6, Byte: 0.5e-9, Upkeep: 0.002},
	Shard:    Costs{Step: 0.5e-3, Msg: 15e-6, Byte: 1e-9, Upkeep: 0.001},
	Servers:  Costs{Step: 0.5e-3, Msg: 15e-6, Byte: 0.5e-9, Upkeep: 0.001},
	Latency0: 2e-3, LatencyByte: 1e-9, Cores: 2, Efficiency: 0.9, SyncN: 2, AsyncN: 4.5}

// Fit reads back the constants of the machine that made the runs, in both
// regimes (runs bound by their critical path and runs bound by the CPU).
func TestFitRecoversTheModel(t *testing.T) {
	want := machine
	rs := runsOf(want)
	var bound, free int
	for _, r := range rs {
		if cpu := want.cpu(float64(r.Workers), messages(r), float64(r.Params)) / 2; cpu > r.StepMs/1e3+want.Latency0+want.LatencyByte*8*float64(r.Params) {
			bound++
		} else {
			free++
		}
	}
	if bound < 10 || free < 10 {
		t.Fatalf("the runs do not cover both regimes: %d CPU-bound, %d not", bound, free)
	}
	got, err := Fit(rs, 2)
	if err != nil {
		t.Fatal(err)
	}
	near := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-6*want {
			t.Errorf("%s: fitted %g, want %g", name, got, want)
		}
	}
	for _, k := range []struct {
		name      string
		got, want Costs
	}{{"worker", got.Worker, want.Worker}, {"shard", got.Shard, want.Shard}, {"servers", got.Servers, want.Servers}} {
		near(k.name+" step", k.got.Step, k.want.Step)
		near(k.name+" message", k.got.Msg, k.want.Msg)
		near(k.name+" byte", k.got.Byte, k.want.Byte)
		near(k.name+" upkeep", k.got.Upkeep, k.want.Upkeep)
	}
	near("latency", got.Latency0, want.Latency0)
	near("latency a byte", got.LatencyByte, want.LatencyByte)
	near("efficiency", got.Efficiency, want.Efficiency)
	near("sync n", got.SyncN, want.SyncN)
	near("async n", got.AsyncN, want.AsyncN)
	for _, c := range got.CheckAll(rs) {
		if math.Abs(c.Error) > 1e-6 {
			t.Fatalf("%d workers, %d shards: error %g", c.Workers, c.Shards, c.Error)
		}
	}
	if _, err := Fit(rs[:3], 2); err == nil {
		t.Fatal("fitted four constants to three runs")
	}
}

// The step time is the soft maximum of the critical path and the CPU's,
// with the upkeep growing with the step.
func TestStepSeconds(t *testing.T) {
	m := Model{Worker: Costs{Step: 0.1, Upkeep: 0.01}, Latency0: 0.02, Cores: 2, Efficiency: 0.5, SyncN: 2, AsyncN: 4}
	r := Result{Workers: 10, Shards: 4, StepMs: 100, Mode: "sync"}
	// lat = 0.12, CPU = (1 + 0.15 T)/1: T^2 = 0.12^2 + (1 + 0.15T)^2.
	tm := m.StepSeconds(r)
	if math.Abs(tm*tm-(0.0144+(1+0.15*tm)*(1+0.15*tm))) > 1e-9 {
		t.Fatalf("sync: %g", tm)
	}
	r.Mode = "async"
	ta := m.StepSeconds(r)
	if math.Abs(math.Pow(ta, 4)-(math.Pow(0.12, 4)+math.Pow(1+0.15*ta, 4))) > 1e-9 || ta >= tm {
		t.Fatalf("async: %g (sync %g)", ta, tm)
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
	m := Model{Worker: Costs{Step: 1e-3, Msg: 10e-6, Byte: 0.1e-9}, Shard: Costs{Msg: 10e-6, Byte: 0.2e-9}, Servers: Costs{Msg: 10e-6, Byte: 0.05e-9}}
	c := Cluster{Workers: 100, Shards: 20, Params: 100e6, ComputeSeconds: 1, LinkBytesPerSec: 1.25e9, NATSServers: 20}
	b := m.Predict(c)
	near := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9*math.Max(1, want) {
			t.Errorf("%s: %g, want %g", name, got, want)
		}
	}
	// 20 MB a shard: 20 messages of at most 1 MiB, 400 in all, more than
	// the window: each a push, a pull and their replies.
	near("worker link", b.WorkerLink, 0.32)                       // 400 MB at 1.25 GB/s
	near("worker CPU", b.WorkerCPU, 1e-3+10e-6*1600+0.1e-9*800e6) // 1600 messages, 800 MB
	near("shard link", b.ShardLink, 1.6)                          // 100 workers' 20 MB
	near("shard CPU", b.ShardCPU, 10e-6*8000+0.2e-9*4e9)          // 8000 messages and 4 GB a shard
	near("NATS link", b.NATSLink, 1.6)
	near("NATS CPU", b.NATSCPU, 10e-6*8000+0.05e-9*4e9)
	near("step", b.Step, 1+1.6)
	// A worker's own transfer at n shards is about 0.32 + 0.097 s;
	// the shards' links, 32/n s, fall within it at n = 77 (their CPU,
	// 17.6/n, at 43): the power of two above is 128.
	if b.ShardsToHide != 128 {
		t.Fatalf("shards to hide: %d", b.ShardsToHide)
	}
	// Ten workers: 3.2/n s within 0.417 at n = 8, where 20 shards leave
	// the step to the worker's own transfer.
	c.Workers = 10
	b = m.Predict(c)
	near("10 workers' step", b.Step, 1+b.WorkerLink+b.WorkerCPU)
	if b.ShardsToHide != 8 {
		t.Fatalf("10 workers: %+v", b)
	}
	// No links to speak of: the CPU decides; the shards' for ten workers'
	// 15,360 messages and bytes, 1.75/n s, is within a worker's 0.096 s
	// from n = 19 on: 32.
	c.LinkBytesPerSec = 1e15
	if b := m.Predict(c); b.ShardsToHide != 32 {
		t.Fatalf("fast links: %+v", b)
	}
}

// The report has the constants, a line a run with its error, the largest
// error and a line a cluster.
func TestWriteReport(t *testing.T) {
	m := machine
	rs := runsOf(m)[:3]
	rs[1].StepsPerSec *= 1.25 // the model is 20% slow on it
	var b strings.Builder
	m.WriteReport(&b, rs, []Cluster{{Name: "big", Workers: 100, Shards: 20, Params: 384e6, ComputeSeconds: 1, LinkBytesPerSec: 1.25e9, NATSServers: 20}})
	out := b.String()
	flat := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{"workers 4 ms 10 us 0.5 ns 0.2% of a core", "shards 0.5 ms 15 us 1 ns 0.1% of a core", "all 5 ms 40 us 2 ns 0.4% of a core",
		"latency 2 ms + 1 ns a byte; 2 cores at 90%; the soft maximum's exponent 2.0 sync, 4.5 async", "-20%", "largest error: 20%", "big: 100 workers, 20 shards"} {
		if !strings.Contains(flat, want) {
			t.Errorf("no %q in\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n != 5+1+1+3+1+1 {
		t.Errorf("%d lines:\n%s", n, out)
	}
}

// The chains of --ps-replicas add, at each of R-1 hops, an entry message
// and its acknowledgement for each of a shard's message groups, with the
// model's 4P bytes: once a step in sync (the aggregate), once a worker's
// push in async. A step with copies costs more CPU and a longer round
// trip by the model, and the prediction's shards carry the chains.
func TestModelCountsReplication(t *testing.T) {
	const w, s, p = 8, 4, 65536
	if got := ReplMessages("sync", w, s, p, 1); got != 0 {
		t.Fatalf("one copy: %v replication messages", got)
	}
	if got := ReplMessages("sync", w, s, p, 2); got != 2*s {
		t.Fatalf("sync, 2 copies: %v messages, want %d (an entry and an ack a shard)", got, 2*s)
	}
	if got := ReplMessages("async", w, s, p, 3); got != 2*s*2*w {
		t.Fatalf("async, 3 copies: %v messages, want %d", got, 2*s*2*w)
	}
	if got, want := ReplBytes("sync", w, p, 2), 4.0*p; got != want {
		t.Fatalf("sync bytes %v, want %v", got, want)
	}
	if got, want := ReplBytes("async", w, p, 2), 4.0*p*w; got != want {
		t.Fatalf("async bytes %v, want %v", got, want)
	}
	m := Model{Worker: Costs{Step: 1e-3, Msg: 30e-6, Byte: 1e-9}, Shard: Costs{Msg: 30e-6, Byte: 1e-9}, Servers: Costs{Msg: 6e-6, Byte: 1e-9},
		Latency0: 2e-3, LatencyByte: 1e-9, Cores: 2, Efficiency: 0.9, SyncN: 2, AsyncN: 6}
	one := Result{Workers: w, Shards: s, Params: p, Mode: "sync", StepMs: 100}
	two := one
	two.PSReplicas = 2
	if a, b := m.StepSeconds(one), m.StepSeconds(two); !(b > a) {
		t.Fatalf("a step with 2 copies %v s, with one %v s: the chains cost nothing", b, a)
	}
	c := Cluster{Workers: 100, Shards: 20, Params: 33e6, ComputeSeconds: 2.2, LinkBytesPerSec: 1.25e9, NATSServers: 20}
	a := m.Predict(c)
	c.PSReplicas = 2
	b := m.Predict(c)
	if !(b.ShardLink > a.ShardLink && b.ShardCPU > a.ShardCPU && b.WorkerLink == a.WorkerLink) {
		t.Fatalf("predicted with 2 copies %+v, with one %+v", b, a)
	}
}
