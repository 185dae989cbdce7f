package scale

import (
	"errors"
	"fmt"
	"io"
	"math"

	"gonum.org/v1/gonum/mat"
)

// Model is the cost model of a step: what the work of a step costs in CPU
// and in time, with its constants read off the harness's runs on one
// machine, and what it predicts for a cluster.
//
// A job step of W workers, S shards and P parameters moves, through NATS,
// M = 4WS messages (each worker's push and pull to each shard, and their
// replies) and D = 8PW bytes (each worker pushes and pulls 4P). Its CPU,
// every process's together (workers, shards, NATS, etcd), is
//
//	K = WorkerCPU*W + MsgCPU*M + ByteCPU*D
//
// and on a machine of Cores cores a step cannot take less than K/Cores.
// Nor can it take less than its critical path: the compute C (the step
// time of the synthetic model) and a worker's round trip to the shards,
//
//	L = Latency0 + LatencyByte*8P,
//
// in sync mode the slowest worker's (the barrier waits for it); in async
// mode each worker's own. So a sync step takes max(C+L, K/Cores) and an
// async job makes min(W/(C+L), W*Cores/K) worker steps a second.
type Model struct {
	WorkerCPU   float64 `json:"worker_cpu_s"`   // CPU seconds a worker step costs besides its messages
	MsgCPU      float64 `json:"msg_cpu_s"`      // per message, over every process it passes
	ByteCPU     float64 `json:"byte_cpu_s"`     // per byte of payload, likewise
	Latency0    float64 `json:"latency0_s"`     // a step's wait on the shards at one worker, no payload
	LatencyByte float64 `json:"latency_byte_s"` // per byte a worker moves in a step
	Cores       float64 `json:"cores"`          // of the machine the runs shared
	Efficiency  float64 `json:"cpu_efficiency"` // the share of Cores the processes got when saturated
}

// cpu is a step's CPU in seconds by the model, and its message and byte
// counts.
func (m Model) cpu(w, s, p float64) float64 {
	return m.WorkerCPU*w + m.MsgCPU*4*w*s + m.ByteCPU*8*p*w
}

// StepSeconds is the model's time of a job step of r's shape and mode on
// the machine it was fitted on (for async jobs, the time of one step of
// each worker: W over the worker steps a second).
func (m Model) StepSeconds(r Result) float64 {
	w, s, p := float64(r.Workers), float64(r.Shards), float64(r.Params)
	lat := r.StepMs/1e3 + m.Latency0 + m.LatencyByte*8*p
	cpu := m.cpu(w, s, p) / (m.Cores * m.Efficiency)
	return math.Max(lat, cpu)
}

// Fit reads the model's constants off measured runs: the CPU constants by
// least squares on each run's CPU per step, the latency ones on the runs
// whose CPU was far from saturated, and the efficiency from the saturated
// ones. Runs need the servers' CPU (Result.CPU.Servers).
func Fit(rs []Result, cores float64) (Model, error) {
	m := Model{Cores: cores, Efficiency: 1}
	var rows [][]float64
	var ks []float64
	for _, r := range rs {
		if r.CPU.Servers == 0 || r.Steps == 0 {
			continue
		}
		w, s, p := float64(r.Workers), float64(r.Shards), float64(r.Params)
		rows = append(rows, []float64{w, 4 * w * s, 8 * p * w})
		ks = append(ks, (r.CPU.Coordinator+r.CPU.PS+r.CPU.Worker+r.CPU.Servers)/float64(r.Steps))
	}
	if len(rows) < 3 {
		return m, errors.New("scale: the model needs at least 3 runs that measured the servers' CPU")
	}
	x, err := nonNegativeLeastSquares(rows, ks)
	if err != nil {
		return m, err
	}
	m.WorkerCPU, m.MsgCPU, m.ByteCPU = x[0], x[1], x[2]
	// Latency: from runs whose CPU used under half the machine, the wait
	// against the bytes a worker moves.
	var lrows [][]float64
	var waits []float64
	for _, r := range rs {
		if r.Seconds > 0 && m.cpu(float64(r.Workers), float64(r.Shards), float64(r.Params))*float64(r.Steps)/r.Seconds < cores/2 {
			lrows = append(lrows, []float64{1, 8 * float64(r.Params)})
			waits = append(waits, r.Wait.Mean/1e3)
		}
	}
	if len(lrows) >= 2 {
		if l, err := nonNegativeLeastSquares(lrows, waits); err == nil {
			m.Latency0, m.LatencyByte = l[0], l[1]
		}
	}
	// Efficiency: in the runs the CPU bounds even at every core (a job
	// step's CPU over the cores longer than its critical path), the share
	// of the cores the processes had.
	var got, n float64
	for _, r := range rs {
		cpu := m.cpu(float64(r.Workers), float64(r.Shards), float64(r.Params))
		if lat := r.StepMs/1e3 + m.Latency0 + m.LatencyByte*8*float64(r.Params); cpu/cores > lat && r.StepsPerSec > 0 {
			got += cpu * r.StepsPerSec / cores
			n++
		}
	}
	if n > 0 {
		m.Efficiency = math.Min(1, got/n)
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
}

// Breakdown is where a predicted sync step's time goes, in seconds.
type Breakdown struct {
	Compute    float64 // the worker's pass
	WorkerLink float64 // its push and pull on its own link (each way at once)
	ShardLink  float64 // the busiest shard's link: every worker's share of its blocks
	NATSLink   float64 // a NATS server's link: its share of the pushes in and the pull replies out
	ShardCPU   float64 // a shard's CPU for its messages and bytes
	WorkerCPU  float64 // a worker's CPU for its messages and bytes
	Step       float64 // the compute and the slowest part of the transfer, which does not overlap a sync step's compute
	// ShardsToHide is how many shards keep the shards' links and CPU
	// within the workers' own transfer time (a power of two; 0: none up
	// to 65536).
	ShardsToHide int
}

// Predict breaks a sync step of c down with this model's CPU costs.
// Messages and bytes cost the CPU of the machines they pass: a worker's and
// a shard's share each of MsgCPU and ByteCPU (a third each; the NATS
// server's third is in its link term, which dominates it).
func (m Model) Predict(c Cluster) Breakdown {
	w, s, p := float64(c.Workers), float64(c.Shards), c.Params
	b := Breakdown{Compute: c.ComputeSeconds}
	b.WorkerLink = 4 * p / c.LinkBytesPerSec
	b.ShardLink = 4 * p * w / s / c.LinkBytesPerSec
	b.NATSLink = 4 * p * w / float64(max(1, c.NATSServers)) / c.LinkBytesPerSec
	b.ShardCPU = (m.MsgCPU*4*w + m.ByteCPU*8*p*w/s) / 3
	b.WorkerCPU = (m.MsgCPU*4*s + m.ByteCPU*8*p) / 3
	b.Step = b.Compute + max(b.WorkerLink+b.WorkerCPU, b.ShardLink, b.ShardCPU, b.NATSLink)
	// The shards keep up with the workers when their links and CPU take no
	// longer than a worker's own transfer: 4PW/(nB) and the CPU's share
	// within 4P/B and the worker's CPU for its 4n messages and 8P bytes.
	for n := 1; n <= 1<<16; n *= 2 {
		ns := float64(n)
		worker := b.WorkerLink + (m.MsgCPU*4*ns+m.ByteCPU*8*p)/3
		if 4*p*w/ns/c.LinkBytesPerSec <= worker && (m.MsgCPU*4*w+m.ByteCPU*8*p*w/ns)/3 <= worker {
			b.ShardsToHide = n
			break
		}
	}
	return b
}

// WriteReport prints the model's constants, its check against the runs and
// its predictions.
func (m Model) WriteReport(w io.Writer, rs []Result, clusters []Cluster) {
	fmt.Fprintf(w, "constants: worker step %.3g ms CPU, message %.3g us CPU, byte %.3g ns CPU; latency %.3g ms + %.3g ns a byte; %g cores at %.0f%%\n",
		m.WorkerCPU*1e3, m.MsgCPU*1e6, m.ByteCPU*1e9, m.Latency0*1e3, m.LatencyByte*1e9, m.Cores, 100*m.Efficiency)
	fmt.Fprintln(w, "mode  workers shards   params  measured steps/s  model  error")
	worst := 0.0
	for _, c := range m.CheckAll(rs) {
		fmt.Fprintf(w, "%-5s %7d %6d %8d %17.2f %6.2f %+6.0f%%\n", c.Mode, c.Workers, c.Shards, c.Params, c.StepsPerSec, c.Predicted, 100*c.Error)
		worst = math.Max(worst, math.Abs(c.Error))
	}
	fmt.Fprintf(w, "largest error: %.0f%%\n", 100*worst)
	for _, c := range clusters {
		b := m.Predict(c)
		fmt.Fprintf(w, "%s: %d workers, %d shards, %.3g parameters, %.3g s compute, %.3g GB/s links, %d NATS servers: step %.3g s = compute %.3g + the slowest of: worker link %.3g and CPU %.3g, shard link %.3g, shard CPU %.3g, NATS link %.3g; shards to keep up with the workers: %d\n",
			c.Name, c.Workers, c.Shards, c.Params, c.ComputeSeconds, c.LinkBytesPerSec/1e9, c.NATSServers, b.Step, b.Compute,
			b.WorkerLink, b.WorkerCPU, b.ShardLink, b.ShardCPU, b.NATSLink, b.ShardsToHide)
	}
}
