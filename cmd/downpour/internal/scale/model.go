package scale

import (
	"errors"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/downpour-ml/downpour/internal/job"

	"gonum.org/v1/gonum/mat"

	"github.com/downpour-ml/downpour/paramserver"
)

// Model is the cost model of a step: what the work of a step costs in CPU
// and in time, with its constants read off the harness's runs on one
// machine, and what it predicts for a cluster.
//
// A job step of W workers, S shards and P parameters moves, through NATS,
// M messages (Messages: each worker's pushes and pulls to each shard, and
// their replies; a run's measured count where it has one) and D = 8PW
// bytes (each worker pushes and pulls 4P). The CPU of
// each kind of process (the workers, the shards, and the servers: NATS,
// etcd and the coordinator) is
//
//	K = Step*W + Msg*M + Byte*D + Upkeep*(W+S+1)*T
//
// with constants of its own (Costs); the last term is every process's own
// upkeep, its timers, keep-alives and runtime, for the step's time T. A
// step's critical path is the compute C (the synthetic model's step time)
// and a worker's round trip to the shards,
//
//	L = Latency0 + LatencyByte*8P.
//
// A step takes at least C+L and at least K/(Cores*Efficiency), the CPU of
// every process spread over the cores they get; how much of one hides
// behind the other depends on the mode, so the step time is a soft maximum
// of the two,
//
//	T = ((C+L)^n + (K/(Cores*Efficiency))^n)^(1/n),
//
// with n fitted for each mode: a sync job's messages come in a burst at the
// barrier, all workers at once, and queue behind one another (a small n);
// an async job's are spread over the step and hide behind the compute
// until the CPU is nearly full (a larger n). In async mode T is the time of
// one step of each worker: the job makes W/T worker steps a second.
type Model struct {
	Worker  Costs `json:"worker"`
	Shard   Costs `json:"shard"`
	Servers Costs `json:"servers"` // NATS, etcd and the coordinator
	// Latency0 and LatencyByte are a step's wait on the shards at low load:
	// with no payload, and for each byte a worker moves.
	Latency0    float64 `json:"latency0_s"`
	LatencyByte float64 `json:"latency_byte_s"`
	Cores       float64 `json:"cores"`          // of the machine the runs shared
	Efficiency  float64 `json:"cpu_efficiency"` // the share of Cores the processes get
	SyncN       float64 `json:"sync_n"`         // the soft maximum's exponent in sync mode
	AsyncN      float64 `json:"async_n"`        // in async (and ssp) mode
}

// Costs is what a kind of process spends, in CPU seconds: a worker step's
// share besides its messages, a message's and a byte's share, and a
// process's upkeep a second (a fraction of a core).
type Costs struct {
	Step   float64 `json:"step_s"`
	Msg    float64 `json:"msg_s"`
	Byte   float64 `json:"byte_s"`
	Upkeep float64 `json:"upkeep"`
}

func (c Costs) plus(d Costs) Costs {
	return Costs{c.Step + d.Step, c.Msg + d.Msg, c.Byte + d.Byte, c.Upkeep + d.Upkeep}
}

// Total is every kind's costs together.
func (m Model) Total() Costs { return m.Worker.plus(m.Shard).plus(m.Servers) }

// cpu is a step's CPU in seconds by the model, for w workers' steps, msgs
// messages and bytes moved, but for the processes' upkeep.
func (m Model) cpu(w, msgs, bytes float64) float64 {
	t := m.Total()
	return t.Step*w + t.Msg*msgs + t.Byte*bytes
}

// Messages is what a job step of w workers, s shards and p floats sends
// through NATS as paramserver.Client sends it: each shard's part in
// messages of at most job.MessageBytes; where a step's messages fit
// in the client's window (paramserver.DefaultWindow), each a push that
// brings its pull back, and its reply (2 a message), else a push, a pull
// and their replies (4).
func Messages(w, s, p float64) float64 {
	groups := s * max(1, math.Ceil(4*p/s/job.MessageBytes))
	if groups <= paramserver.DefaultWindow {
		return 2 * w * groups
	}
	return 4 * w * groups
}

// ReplMessages is what the shards' chains (--ps-replicas r) add to a job
// step of w workers, s shards and p floats: at each of the r-1 hops, an
// entry message down the chain for each of a shard's message groups and
// its acknowledgement up; once a step in sync mode (the chain carries the
// step's aggregate), once a worker's push otherwise.
func ReplMessages(mode string, w, s, p, r float64) float64 {
	if r <= 1 {
		return 0
	}
	n := 2 * s * max(1, math.Ceil(4*p/s/job.MessageBytes)) * (r - 1)
	if mode != "sync" {
		n *= w
	}
	return n
}

// ReplBytes is the bytes the chains add to a step: the model's 4p at each
// of the r-1 hops, once (sync) or once a worker's push (async, ssp).
func ReplBytes(mode string, w, p, r float64) float64 {
	if r <= 1 {
		return 0
	}
	if mode != "sync" {
		return 4 * p * w * (r - 1)
	}
	return 4 * p * (r - 1)
}

// replicas is r's copies of each block (1: none kept).
func replicas(r Result) float64 { return float64(max(1, r.PSReplicas)) }

// messages is r's messages a step: as measured (the chains' included), or
// by Messages and ReplMessages.
func messages(r Result) float64 {
	if r.NATS.Msgs > 0 {
		return r.NATS.Msgs
	}
	w, s, p := float64(r.Workers), float64(r.Shards), float64(r.Params)
	return Messages(w, s, p) + ReplMessages(r.Mode, w, s, p, replicas(r))
}

// bytesMoved is the bytes a step of r moves: each worker's push and pull
// (8p), and what the chains add.
func bytesMoved(r Result) float64 {
	w, p := float64(r.Workers), float64(r.Params)
	return 8*p*w + ReplBytes(r.Mode, w, p, replicas(r))
}

// StepSeconds is the model's time of a job step of r's shape and mode on
// the machine it was fitted on (for async jobs, the time of one step of
// each worker: W over the worker steps a second).
func (m Model) StepSeconds(r Result) float64 {
	n := m.SyncN
	if r.Mode != "sync" {
		n = m.AsyncN
	}
	return m.stepSeconds(r, n, m.Efficiency)
}

func (m Model) stepSeconds(r Result, n, eff float64) float64 {
	w, s, p := float64(r.Workers), float64(r.Shards), float64(r.Params)
	// A chain adds a hop to the round trip for each backup: the update
	// down and its acknowledgement up, before the pull is answered.
	hops := replicas(r) - 1
	lat := r.StepMs/1e3 + m.Latency0 + m.LatencyByte*8*p + hops*(m.Latency0+m.LatencyByte*4*p)
	a, b := m.cpu(w, messages(r), bytesMoved(r)), m.Total().Upkeep*(w+s+1)
	ce := m.Cores * eff
	// T = f(T) by iteration: the upkeep's share of the cores, b/ce, is
	// well under 1 (else no step ends), so f contracts.
	t := lat
	for range 100 {
		next := math.Pow(math.Pow(lat, n)+math.Pow((a+b*t)/ce, n), 1/n)
		if math.Abs(next-t) <= 1e-12*t {
			return next
		}
		t = next
	}
	return t
}

// Fit reads the model's constants off measured runs: each kind of
// process's CPU constants by non-negative least squares on its CPU per step
// (the runs need the servers' CPU, Result.CPU.Servers), the latency on the
// runs that kept the CPU under a quarter busy, and the efficiency and the
// two exponents as those that make the largest error over the runs
// smallest.
func Fit(rs []Result, cores float64) (Model, error) {
	m := Model{Cores: cores, Efficiency: 1, SyncN: 1, AsyncN: 1}
	var rows [][]float64
	var ks [3][]float64 // CPU per step: workers', shards', servers'
	var used []Result
	for _, r := range rs {
		if r.CPU.Servers == 0 || r.Steps == 0 || r.Seconds <= 0 || r.StepsPerSec <= 0 {
			continue
		}
		w, s, n := float64(r.Workers), float64(r.Shards), float64(r.Steps)
		rows = append(rows, []float64{w, messages(r), bytesMoved(r), (w + s + 1) * r.Seconds / n})
		ks[0] = append(ks[0], r.CPU.Worker/n)
		ks[1] = append(ks[1], r.CPU.PS/n)
		ks[2] = append(ks[2], (r.CPU.Servers+r.CPU.Coordinator)/n)
		used = append(used, r)
	}
	if len(rows) < 4 {
		return m, errors.New("scale: the model needs at least 4 runs that measured the servers' CPU")
	}
	for i, c := range []*Costs{&m.Worker, &m.Shard, &m.Servers} {
		x, err := nonNegativeLeastSquares(rows, ks[i])
		if err != nil {
			return m, fmt.Errorf("%w (the runs must vary the workers, the shards and the parameters apart: fit a sweep of each together)", err)
		}
		*c = Costs{Step: x[0], Msg: x[1], Byte: x[2], Upkeep: x[3]}
	}
	// Latency: the wait of the runs that kept the CPU under a quarter busy
	// (against the bytes a worker moves when they vary).
	var lrows [][]float64
	var waits []float64
	for _, r := range used {
		if (r.CPU.Worker+r.CPU.PS+r.CPU.Servers+r.CPU.Coordinator)/r.Seconds < cores/4 {
			lrows = append(lrows, []float64{1, 8 * float64(r.Params)})
			waits = append(waits, r.Wait.Mean/1e3)
		}
	}
	if slices.ContainsFunc(lrows, func(row []float64) bool { return row[1] != lrows[0][1] }) {
		if l, err := nonNegativeLeastSquares(lrows, waits); err == nil {
			m.Latency0, m.LatencyByte = l[0], l[1]
		}
	} else if len(waits) > 0 {
		for _, w := range waits {
			m.Latency0 += w / float64(len(waits))
		}
	}
	// The efficiency and exponents by search: for each efficiency, each
	// mode's exponent with the smallest largest error; then the efficiency
	// whose worse mode is best.
	best := math.Inf(1)
	for e := 50; e <= 100; e++ {
		eff := float64(e) / 100
		var ns [2]float64
		var worst [2]float64
		for mi, sync := range []bool{true, false} {
			worst[mi] = math.Inf(1)
			for k := 10; k <= 80; k++ {
				n := float64(k) / 10
				w := 0.0
				for _, r := range used {
					if (r.Mode == "sync") == sync {
						w = math.Max(w, math.Abs(1/m.stepSeconds(r, n, eff)-r.StepsPerSec)/r.StepsPerSec)
					}
				}
				if w < worst[mi] {
					worst[mi], ns[mi] = w, n
				}
			}
		}
		if w := math.Max(worst[0], worst[1]); w < best {
			best, m.Efficiency, m.SyncN, m.AsyncN = w, eff, ns[0], ns[1]
		}
	}
	return m, nil
}

// nonNegativeLeastSquares solves min |Ax - b| over x >= 0 for a few
// unknowns: the unconstrained solution, with any negative unknown fixed at
// 0 and the rest solved again.
func nonNegativeLeastSquares(rows [][]float64, b []float64) ([]float64, error) {
	n := len(rows[0])
	free := make([]bool, n)
	for i := range free {
		free[i] = true
	}
	for {
		var cols []int
		for j, f := range free {
			if f {
				cols = append(cols, j)
			}
		}
		if len(cols) == 0 {
			return make([]float64, n), nil
		}
		// Each column scaled to unit length: the unknowns' sizes differ by
		// many orders (a message against a byte), which alone would make
		// the system look singular.
		a := mat.NewDense(len(rows), len(cols), nil)
		scale := make([]float64, len(cols))
		for k, j := range cols {
			for _, row := range rows {
				scale[k] += row[j] * row[j]
			}
			scale[k] = math.Sqrt(scale[k])
			if scale[k] == 0 {
				scale[k] = 1
			}
			for i, row := range rows {
				a.Set(i, k, row[j]/scale[k])
			}
		}
		var qr mat.QR
		qr.Factorize(a)
		var sol mat.Dense
		if err := qr.SolveTo(&sol, false, mat.NewDense(len(b), 1, b)); err != nil {
			return nil, fmt.Errorf("scale: fitting the model: %w", err)
		}
		x := make([]float64, n)
		neg := false
		for k, j := range cols {
			x[j] = sol.At(k, 0) / scale[k]
			if x[j] < 0 {
				free[j], neg = false, true
			}
		}
		if !neg {
			return x, nil
		}
	}
}

// Check compares the model with each run: measured and predicted steps a
// second, and the error relative to the measurement.
type Check struct {
	Result
	Predicted float64 `json:"predicted_steps_per_sec"`
	Error     float64 `json:"error"` // (predicted - measured) / measured
}

// CheckAll is the model against every run.
func (m Model) CheckAll(rs []Result) []Check {
	var cs []Check
	for _, r := range rs {
		pred := 1 / m.StepSeconds(r)
		cs = append(cs, Check{Result: r, Predicted: pred, Error: (pred - r.StepsPerSec) / r.StepsPerSec})
	}
	return cs
}

// Cluster is a job on a cluster: each worker and each shard on a machine of
// its own, NATSServers NATS servers sharing the traffic (on the shards'
// machines when there are as many: a shard's traffic then crosses its
// machine's link once), every machine on a full-duplex link of
// LinkBytesPerSec each way.
type Cluster struct {
	Name            string
	Workers, Shards int
	Params          float64 // floats
	ComputeSeconds  float64 // a worker's forward and backward pass
	LinkBytesPerSec float64
	NATSServers     int
	PSReplicas      int // copies of each block (0 or 1: one)
}

// Breakdown is where a predicted sync step's time goes, in seconds.
type Breakdown struct {
	Compute    float64 // the worker's pass
	WorkerLink float64 // its push and pull on its own link (each way at once)
	WorkerCPU  float64 // its CPU for its messages and bytes
	ShardLink  float64 // a shard's link: every worker's share of its blocks
	ShardCPU   float64 // a shard's CPU for its messages and bytes
	NATSLink   float64 // a NATS server's link: its share of the pushes in and the pull replies out
	NATSCPU    float64 // a NATS server's CPU for its share of the messages and bytes
	// Step is the compute and the slowest part of the transfer, which a
	// sync step's compute does not overlap.
	Step float64
	// ShardsToHide is how many shards (and NATS servers, one beside each)
	// keep the shards' and the servers' links and CPU within a worker's
	// own transfer time (a power of two; 0: none up to 65536).
	ShardsToHide int
}

// Predict breaks a sync step of c down with this model's CPU costs, each
// kind of process's on its own machines.
func (m Model) Predict(c Cluster) Breakdown {
	w, p, bw := float64(c.Workers), c.Params, c.LinkBytesPerSec
	b := Breakdown{Compute: c.ComputeSeconds, WorkerLink: 4 * p / bw}
	// At s shards and n NATS servers: a worker's transfer, and the
	// slowest of the shards' and the servers' parts.
	r := float64(max(1, c.PSReplicas))
	parts := func(s, n float64) (worker, shard, nats float64, bb Breakdown) {
		bb = b
		msgs := Messages(w, s, p)
		// The chains: each shard sends its part of the step's aggregate
		// (and takes its predecessors' parts) at each of the r-1 hops.
		rmsgs, rbytes := ReplMessages("sync", w, s, p, r), ReplBytes("sync", w, p, r)
		bb.WorkerCPU = m.Worker.Step + m.Worker.Msg*msgs/w + m.Worker.Byte*8*p
		bb.ShardLink = (4*p*w + rbytes) / s / bw
		bb.ShardCPU = (m.Shard.Step*w + m.Shard.Msg*(msgs+rmsgs) + m.Shard.Byte*(8*p*w+2*rbytes)) / s
		bb.NATSLink = (4*p*w + rbytes) / n / bw
		bb.NATSCPU = (m.Servers.Msg*(msgs+rmsgs) + m.Servers.Byte*(8*p*w+2*rbytes)) / n
		return bb.WorkerLink + bb.WorkerCPU, max(bb.ShardLink, bb.ShardCPU), max(bb.NATSLink, bb.NATSCPU), bb
	}
	worker, shard, nats, bb := parts(float64(c.Shards), float64(max(1, c.NATSServers)))
	b = bb
	b.Step = b.Compute + max(worker, shard, nats)
	for n := 1; n <= 1<<16; n *= 2 {
		if worker, shard, nats, _ := parts(float64(n), float64(n)); shard <= worker && nats <= worker {
			b.ShardsToHide = n
			break
		}
	}
	return b
}

// WriteReport prints the model's constants, its check against the runs and
// its predictions.
func (m Model) WriteReport(w io.Writer, rs []Result, clusters []Cluster) {
	fmt.Fprintln(w, "CPU        a worker step  a message  a byte  upkeep (a process)")
	for _, k := range []struct {
		name string
		c    Costs
	}{{"workers", m.Worker}, {"shards", m.Shard}, {"servers", m.Servers}, {"all", m.Total()}} {
		fmt.Fprintf(w, "%-10s %10.3g ms %7.3g us %5.3g ns %8.3g%% of a core\n", k.name, k.c.Step*1e3, k.c.Msg*1e6, k.c.Byte*1e9, 100*k.c.Upkeep)
	}
	fmt.Fprintf(w, "latency %.3g ms + %.3g ns a byte; %g cores at %.0f%%; the soft maximum's exponent %.1f sync, %.1f async\n",
		m.Latency0*1e3, m.LatencyByte*1e9, m.Cores, 100*m.Efficiency, m.SyncN, m.AsyncN)
	fmt.Fprintln(w, "mode  workers shards   params  measured steps/s  model  error")
	worst := 0.0
	for _, c := range m.CheckAll(rs) {
		fmt.Fprintf(w, "%-5s %7d %6d %8d %17.2f %6.2f %+6.0f%%\n", c.Mode, c.Workers, c.Shards, c.Params, c.StepsPerSec, c.Predicted, 100*c.Error)
		worst = math.Max(worst, math.Abs(c.Error))
	}
	fmt.Fprintf(w, "largest error: %.0f%%\n", 100*worst)
	for _, c := range clusters {
		b := m.Predict(c)
		fmt.Fprintf(w, "%s: %d workers, %d shards, %.3g parameters, %.3g s compute, %.3g GB/s links, %d NATS servers: step %.3g s = compute %.3g + the slowest of: worker link %.3g and CPU %.3g, shard link %.3g, shard CPU %.3g, NATS link %.3g, NATS CPU %.3g; shards (and NATS servers) to keep up with the workers: %d\n",
			c.Name, c.Workers, c.Shards, c.Params, c.ComputeSeconds, c.LinkBytesPerSec/1e9, c.NATSServers, b.Step, b.Compute,
			b.WorkerLink, b.WorkerCPU, b.ShardLink, b.ShardCPU, b.NATSLink, b.NATSCPU, b.ShardsToHide)
	}
}
