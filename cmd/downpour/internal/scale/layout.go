package scale

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/models"
)

// The cost of a Seq2Seq replica laid out over seats (stages and softmax
// slices, models.StagePlan): what each seat computes and moves in a step,
// counted from the model's shape and the batch (StepWork); what that costs
// on the machine the runs were measured on, with two compute rates read off
// them (LayoutModel); and what a cluster's step would take, each seat on a
// machine of its own (PredictLayout).

// SeatWork is what one seat does in one training step.
type SeatWork struct {
	// LSTM and Output are floating-point operations: its LSTM layers'
	// products, forward and backward (24·B·T·H·(in+H) a layer and side),
	// and its softmax blocks' (2·H·width a row, three times, and once
	// more for the rows of every chunk but the last, computed again in the
	// backward pass).
	LSTM, Output float64
	// LSTMForward and OutputForward are the forward passes' shares.
	LSTMForward, OutputForward float64
	// Sent is the bytes it sends to the replica's other seats: a stage its
	// top layer's outputs up and its input's gradient down; the top stage
	// the decoder's outputs and the combined statistics to every slice; a
	// slice its statistics and the running input gradient.
	Sent float64
	// PS is the bytes it pushes and pulls: its tensors whole, and of the
	// embedding tables the rows the batch uses.
	PS float64
}

// StepWork is the work of each seat of plan in a training step on b.
func StepWork(cfg models.Seq2SeqConfig, plan models.StagePlan, b *models.SeqBatch) []SeatWork {
	B, H, E := float64(b.Size), float64(cfg.Hidden), float64(cfg.Embed)
	ls, lt := float64(b.SrcLen), float64(b.TgtLen)
	rows := B * lt
	w := make([]SeatWork, plan.Seats())
	for l, s := range plan.LayerStage {
		in := H
		if l == 0 {
			in = E
		}
		f := 8 * B * (ls + lt) * H * (in + H) // the encoder's and the decoder's layer l, forward
		w[s].LSTM += 3 * f
		w[s].LSTMForward += f
	}
	recomputed := rows - float64(lastChunk(b.TgtLen*b.Size, cfg.OutputRows(b.Size)))
	blocks := cfg.OutBlocks()
	top := plan.Stages - 1
	for k, r := range plan.SliceBlocks {
		seat := plan.Stages + k
		width := float64(blocks[r[1]-1][1] - blocks[r[0]][0])
		w[seat].Output = 2 * H * width * (3*rows + recomputed)
		w[seat].OutputForward = 2 * H * width * rows
		nb := float64(r[1] - r[0])
		w[seat].Sent = rows*nb*16 + rows*5 + rows*H*4 // stats, target logits and flags, the running sum
		w[top].Sent += rows*H*4 + rows*16             // the decoder's outputs and the combined stats
	}
	for s := range plan.Stages {
		if s < top {
			w[s].Sent += B * (ls + lt) * H * 4 // up
		}
		if s > 0 {
			w[s].Sent += B * (ls + lt) * H * 4 // down
		}
	}
	ts := cfg.Tensors()
	for seat, tensors := range plan.SeatTensors(cfg) {
		for _, t := range tensors {
			n := float64(ts[t].Size())
			switch t {
			case 0:
				n = float64(distinct(b.Src)) * E
			case 1:
				n = float64(distinct(b.TgtIn)) * E
			}
			w[seat].PS += 2 * 4 * n
		}
	}
	return w
}

// lastChunk is the rows of the output layer's last chunk.
func lastChunk(rows, chunk int) int {
	if rows == 0 {
		return 0
	}
	return rows - (rows-1)/chunk*chunk
}

func distinct(ids []int32) int {
	seen := map[int32]bool{}
	for _, id := range ids {
		seen[id] = true
	}
	return len(seen)
}

// LayoutModel is what a laid-out replica's step costs on the machine its
// runs were measured on: CPU seconds for each operation of the LSTM layers
// and of the output layer (each includes what its kind of seat spends
// around its products: the gates, the exponentials, the collector), and,
// from the harness's fitted Model, the CPU of a byte through NATS.
type LayoutModel struct {
	LSTM, Output float64 // CPU seconds an operation
	// SeatByte is a seat's own CPU a byte it sends or pushes and pulls;
	// SentByte the whole machine's a byte between seats (sender, server,
	// receiver), PSByte a byte to or from the shards (worker, server,
	// shard).
	SeatByte, SentByte, PSByte float64
	Cores                      float64
}

// NewLayoutModel takes its byte costs from m.
func NewLayoutModel(m Model) LayoutModel {
	return LayoutModel{SeatByte: m.Worker.Byte, SentByte: 2*m.Worker.Byte + m.Servers.Byte, PSByte: m.Total().Byte, Cores: m.Cores}
}

// SeatCPU is the seat's own CPU seconds for its work w.
func (lm LayoutModel) SeatCPU(w SeatWork) float64 {
	return lm.LSTM*w.LSTM + lm.Output*w.Output + lm.SeatByte*(w.Sent+w.PS)
}

// CPU is the machine's CPU seconds for a seat's work w: the seat's, and
// the servers' and shards' for its bytes.
func (lm LayoutModel) CPU(w SeatWork) float64 {
	return lm.LSTM*w.LSTM + lm.Output*w.Output + lm.SentByte*w.Sent + lm.PSByte*w.PS
}

// StepSeconds is a step's time on the machine of the runs, where every
// seat and shard shares its cores: their CPU over the cores.
func (lm LayoutModel) StepSeconds(ws []SeatWork) float64 {
	var cpu float64
	for _, w := range ws {
		cpu += lm.CPU(w)
	}
	return cpu / lm.Cores
}

// LayoutStep is a measured step of a laid-out replica: its work and time.
type LayoutStep struct {
	Step    int64
	Work    []SeatWork
	Seconds float64
}

// LayoutRun is a run of a laid-out replica with each seat its own process
// (examples/paper-layout.sh): its steps, and each seat's CPU over the run.
type LayoutRun struct {
	Name  string
	Plan  models.StagePlan
	Steps []LayoutStep // the second on: the first's time is the seats' start
	Work  [][]SeatWork // every step's, the first's too
	CPU   []float64    // each seat's CPU seconds, measured
}

// FitLayout reads the two compute rates off each kind of seat's measured
// CPU: the stages' CPU, less their bytes', over their LSTM operations, and
// the slices' over their output-layer operations. The steps' times are
// left for the check.
func FitLayout(base LayoutModel, runs []LayoutRun) (LayoutModel, error) {
	var lstmCPU, lstmOps, outCPU, outOps float64
	for _, r := range runs {
		for seat, cpu := range r.CPU {
			for _, ws := range r.Work {
				w := ws[seat]
				cpu -= base.SeatByte * (w.Sent + w.PS)
				if seat < r.Plan.Stages {
					lstmOps += w.LSTM
				} else {
					outOps += w.Output
				}
			}
			if seat < r.Plan.Stages {
				lstmCPU += cpu
			} else {
				outCPU += cpu
			}
		}
	}
	if lstmOps == 0 || outOps == 0 || lstmCPU <= 0 || outCPU <= 0 {
		return base, fmt.Errorf("fitting the layout's rates: %.3g CPU s over %.3g LSTM operations, %.3g over %.3g output-layer ones", lstmCPU, lstmOps, outCPU, outOps)
	}
	m := base
	m.LSTM, m.Output = lstmCPU/lstmOps, outCPU/outOps
	return m, nil
}

// LayoutCluster is a job whose replicas are laid out over seats, on a
// cluster: every seat and every shard on a machine of its own of Cores
// cores of the runs' machine's speed (the products spread over them at
// ParallelEfficiency), a NATS server beside each shard, links of
// LinkBytesPerSec each way, Latency a message.
type LayoutCluster struct {
	Name               string
	Cfg                models.Seq2SeqConfig
	Plan               models.StagePlan
	Batch              *models.SeqBatch // a typical batch
	Replicas, Shards   int
	Cores              float64
	ParallelEfficiency float64
	LinkBytesPerSec    float64
	Latency            float64 // seconds a message
	Chunk              int     // time steps a stage hands on at a time
}

// LayoutBreakdown is where a predicted sync step's time goes, in seconds.
type LayoutBreakdown struct {
	// Compute is the busiest seat's computation: the step of an ideal
	// pipeline, with every seat busy all the time.
	Compute float64
	// Forward and Backward are the stages' wavefronts (the chunks filling
	// the pipeline), Slices what the slices' passes and the running sum's
	// hops add to them (the slices overlap both wavefronts but for their
	// first and last chunks), Hops the activations' transfers on the path.
	Forward, Slices, Backward, Hops float64
	// Transfer is the slowest of a seat's push and pull on its link, a
	// shard's link, a shard's CPU and its NATS server's, counted whole: a
	// seat's transfer overlaps its next step, but the first stage's next
	// step starts with the parameters it pulls, and the shards serve every
	// seat's requests as they come (an upper bound)
	// (a shard's NATS server on its machine, on cores of its own).
	Transfer, SeatLink, ShardLink, ShardCPU, NATSCPU float64
	Step                                             float64
}

// PredictLayout breaks a sync step of c down.
func (lm LayoutModel) PredictLayout(m Model, c LayoutCluster) LayoutBreakdown {
	ws := StepWork(c.Cfg, c.Plan, c.Batch)
	speed := c.Cores * c.ParallelEfficiency
	sec := func(ops, rate float64) float64 { return ops * rate / speed }
	S, K := c.Plan.Stages, c.Plan.Slices
	var b LayoutBreakdown
	var fwdSum, fwdMax, bwdSum, bwdMax float64
	for s := range S {
		f := sec(ws[s].LSTMForward, lm.LSTM)
		bw := sec(ws[s].LSTM-ws[s].LSTMForward, lm.LSTM)
		fwdSum, bwdSum = fwdSum+f, bwdSum+bw
		fwdMax, bwdMax = math.Max(fwdMax, f), math.Max(bwdMax, bw)
	}
	n := math.Ceil(float64(c.Batch.SrcLen)/float64(c.Chunk)) + math.Ceil(float64(c.Batch.TgtLen)/float64(c.Chunk))
	wave := func(sum, mx float64) float64 { return sum/n + (n-1)/n*mx }
	b.Forward, b.Backward = wave(fwdSum, fwdMax), wave(bwdSum, bwdMax)
	H, B := float64(c.Cfg.Hidden), float64(c.Batch.Size)
	chunkBytes := B * H * 4 * float64(c.Chunk)
	rows := B * float64(c.Batch.TgtLen)
	var sliceFwd, sliceBwd float64
	for k := range K {
		w := ws[S+k]
		sliceFwd = math.Max(sliceFwd, sec(w.OutputForward, lm.Output))
		sliceBwd = math.Max(sliceBwd, sec(w.Output-w.OutputForward, lm.Output))
	}
	// The slices work a chunk of the output layer's rows at a time: their
	// logits as the decoder's outputs arrive (the decoder's part of the
	// forward wavefront hides all but the last chunk's), and, last chunk
	// first, their gradients, the chunk's running sum passed slice to
	// slice to the top stage, whose backward wavefront starts on the last
	// chunk and overlaps the slices' work on the others.
	outChunk := float64(c.Cfg.OutputRows(c.Batch.Size))
	chunks := math.Ceil(rows / outChunk)
	decoder := b.Forward * float64(c.Batch.TgtLen) / float64(c.Batch.SrcLen+c.Batch.TgtLen)
	running := math.Min(outChunk, rows) * H * 4 / c.LinkBytesPerSec // a chunk's sum, one hop
	b.Slices = math.Max(sliceFwd/chunks, sliceFwd-decoder) + sliceBwd/chunks + float64(K)*(running+c.Latency) +
		math.Max(0, sliceBwd*(chunks-1)/chunks-b.Backward)
	// Up and down the stages a chunk at a time, the decoder's outputs to
	// every slice over the top stage's link, the statistics both ways.
	b.Hops = 2*float64(S-1)*(chunkBytes/c.LinkBytesPerSec+c.Latency) +
		float64(K)*rows*H*4/c.LinkBytesPerSec + 2*c.Latency
	for _, w := range ws {
		b.Compute = math.Max(b.Compute, sec(w.LSTM, lm.LSTM)+sec(w.Output, lm.Output))
		b.SeatLink = math.Max(b.SeatLink, w.PS/2/c.LinkBytesPerSec)
	}
	r, sh := float64(c.Replicas), float64(c.Shards)
	var ps, msgs float64
	for _, w := range ws {
		ps += w.PS * r
		// Its push in messages of at most job.MessageBytes, each bringing
		// its pull back, and their replies.
		msgs += 2 * r * math.Max(1, math.Ceil(w.PS/2/job.MessageBytes))
	}
	b.ShardLink = ps / 2 / sh / c.LinkBytesPerSec // each way at once; its NATS server's the same
	b.ShardCPU = (m.Shard.Msg*msgs + m.Shard.Byte*ps) / sh
	b.NATSCPU = (m.Servers.Msg*msgs + m.Servers.Byte*ps) / sh
	b.Transfer = max(b.SeatLink, b.ShardLink, b.ShardCPU, b.NATSCPU)
	b.Step = b.Forward + b.Slices + b.Backward + b.Hops + b.Transfer + 2*c.Latency // and the clip's round trip
	return b
}

// WriteLayoutReport prints the rates, each seat's CPU and each measured
// step against the model, and the predictions.
func (lm LayoutModel) WriteLayoutReport(w io.Writer, m Model, runs []LayoutRun, clusters []LayoutCluster) {
	fmt.Fprintf(w, "CPU: %.3g ns an LSTM operation (%.3g GFLOP a CPU second), %.3g ns an output-layer operation (%.3g GFLOP a CPU second); %.3g ns a byte between seats, %.3g ns a byte to or from the shards; %g cores\n",
		lm.LSTM*1e9, 1e-9/lm.LSTM, lm.Output*1e9, 1e-9/lm.Output, lm.SentByte*1e9, lm.PSByte*1e9, lm.Cores)
	fmt.Fprintln(w, "run                  seat  measured CPU s  model  error")
	worst := 0.0
	for _, r := range runs {
		for seat, cpu := range r.CPU {
			var p float64
			for _, ws := range r.Work {
				p += lm.SeatCPU(ws[seat])
			}
			e := p/cpu - 1
			worst = math.Max(worst, math.Abs(e))
			fmt.Fprintf(w, "%-20s %4d %15.1f %6.1f %+5.0f%%\n", r.Name, seat, cpu, p, 100*e)
		}
	}
	fmt.Fprintf(w, "largest error: %.0f%%\n", 100*worst)
	fmt.Fprintln(w, "run                  step  measured s  model s  error")
	worst = 0
	for _, r := range runs {
		for _, s := range r.Steps {
			p := lm.StepSeconds(s.Work)
			e := p/s.Seconds - 1
			worst = math.Max(worst, math.Abs(e))
			fmt.Fprintf(w, "%-20s %4d %11.1f %8.1f %+5.0f%%\n", r.Name, s.Step, s.Seconds, p, 100*e)
		}
	}
	fmt.Fprintf(w, "largest error: %.0f%%\n", 100*worst)
	for _, c := range clusters {
		b := lm.PredictLayout(m, c)
		fmt.Fprintf(w, "%s: %d replicas x %d stages + %d slices, %d shards, %g cores a machine, %.3g GB/s links: step %.3g s = forward %.3g + slices %.3g + backward %.3g + hops %.3g + transfer %.3g (the slowest of: seat link %.3g, shard link %.3g, shard CPU %.3g, NATS CPU %.3g); the busiest seat computes %.3g s: step / compute %.2f\n",
			c.Name, c.Replicas, c.Plan.Stages, c.Plan.Slices, c.Shards, c.Cores, c.LinkBytesPerSec/1e9,
			b.Step, b.Forward, b.Slices, b.Backward, b.Hops, b.Transfer, b.SeatLink, b.ShardLink, b.ShardCPU, b.NATSCPU, b.Compute, b.Step/b.Compute)
	}
}

// LoadLayoutRun reads the output directory of examples/paper-layout.sh:
// the job (run/job.json), its steps (run/metrics.jsonl: each step's time is
// the collector's busy seconds) and each seat's CPU (roles.txt). Each
// step's work comes from the batch it trained on, made again from the
// job's data; a step whose batch's target tokens differ from what the run
// recorded is refused (the wrong data).
func LoadLayoutRun(name, dir string) (LayoutRun, error) {
	r := LayoutRun{Name: name}
	spec, err := runSpec(dir)
	if err != nil {
		return r, err
	}
	if r.Plan, err = spec.Plan(); err != nil {
		return r, err
	}
	data, err := spec.OpenData()
	if err != nil {
		return r, err
	}
	f, err := os.Open(filepath.Join(dir, "run", "metrics.jsonl"))
	if err != nil {
		return r, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m struct {
			Kind   string  `json:"kind"`
			Step   int64   `json:"step"`
			Tokens int     `json:"tokens"`
			Busy   float64 `json:"busy_seconds"`
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return r, fmt.Errorf("%s: %w", dir, err)
		}
		if m.Kind != "train" {
			continue
		}
		b, err := data.Batch(spec.Seed, 0, m.Step-1, spec.Batch)
		if err != nil {
			return r, err
		}
		if n := tokens(b); n != m.Tokens {
			return r, fmt.Errorf("%s: step %d trained on %d target tokens; the data's batch has %d", dir, m.Step, m.Tokens, n)
		}
		w := StepWork(spec.Seq2Seq, r.Plan, b)
		r.Work = append(r.Work, w)
		if m.Step > 1 {
			r.Steps = append(r.Steps, LayoutStep{Step: m.Step, Work: w, Seconds: m.Busy})
		}
	}
	if err := sc.Err(); err != nil {
		return r, err
	}
	if int64(len(r.Work)) != spec.Steps {
		return r, fmt.Errorf("%s: %d steps recorded of the job's %d", dir, len(r.Work), spec.Steps)
	}
	roles, err := os.ReadFile(filepath.Join(dir, "roles.txt"))
	if err != nil {
		return r, err
	}
	r.CPU = make([]float64, r.Plan.Seats())
	found := 0
	for _, line := range strings.Split(string(roles), "\n") {
		f := strings.Fields(line)
		if len(f) != 6 || f[5] == "-" || f[0] == "role" { // not a seat, or the header
			continue
		}
		seat, err1 := strconv.Atoi(f[5])
		cpu, err2 := strconv.ParseFloat(f[2], 64)
		if err1 != nil || err2 != nil || seat < 0 || seat >= len(r.CPU) {
			return r, fmt.Errorf("%s/roles.txt: %q: not a seat's line", dir, line)
		}
		r.CPU[seat] = cpu
		found++
	}
	if found != len(r.CPU) {
		return r, fmt.Errorf("%s/roles.txt: %d seats' CPU of %d", dir, found, len(r.CPU))
	}
	return r, nil
}

// runSpec is the job of a run of examples/paper-layout.sh in dir.
func runSpec(dir string) (*job.Spec, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "run", "job.json"))
	if err != nil {
		return nil, err
	}
	return job.DecodeSpec(raw)
}

func tokens(b *models.SeqBatch) int {
	n := 0
	for _, y := range b.TgtOut {
		if y >= 0 {
			n++
		}
	}
	return n
}

// LayoutClusters are the clusters the layout's model predicts for, of the
// job of run: GNMT's (Wu et al. 2016, section 3.1: about 12 replicas, each
// the paper's model over 8 devices, sharing parameters through servers),
// 12 replicas in the paper's layout (4 stages, 4 slices) and 20 shards on
// 10 GbE, every seat and shard on a machine of its own, for the run's
// first batch; on machines of this one's 2 cores, and of 16 (their
// products spread at an assumed 75%).
func LayoutClusters(run string) ([]LayoutCluster, error) {
	spec, err := runSpec(run)
	if err != nil {
		return nil, err
	}
	plan, err := spec.Seq2Seq.Plan(4, 4) // the paper's 8 devices
	if err != nil {
		return nil, err
	}
	data, err := spec.OpenData()
	if err != nil {
		return nil, err
	}
	b, err := data.Batch(spec.Seed, 0, 0, spec.Batch)
	if err != nil {
		return nil, err
	}
	c := LayoutCluster{Cfg: spec.Seq2Seq, Plan: plan, Batch: b, Replicas: 12, Shards: 20,
		LinkBytesPerSec: 1.25e9, Latency: 100e-6, Chunk: spec.StageChunk()}
	small, big := c, c
	small.Name, small.Cores, small.ParallelEfficiency = "GNMT-like on 2-core machines", 2, 1
	big.Name, big.Cores, big.ParallelEfficiency = "GNMT-like on 16-core machines", 16, 0.75
	return []LayoutCluster{small, big}, nil
}

// WriteLayoutFit fits the layout's model (its byte costs from the sweeps,
// its rates from the runs of examples/paper-layout.sh, each named by its
// directory's name), and writes its report: the rates, each seat's CPU
// and each step against the runs, and the clusters' predictions.
func WriteLayoutFit(w io.Writer, sweeps, runs []string, cores float64) error {
	var rs []Result
	for _, d := range sweeps {
		r, err := ReadResults(filepath.Join(d, "results.jsonl"))
		if err != nil {
			return err
		}
		rs = append(rs, r...)
	}
	m, err := Fit(rs, cores)
	if err != nil {
		return err
	}
	var lrs []LayoutRun
	for _, d := range runs {
		r, err := LoadLayoutRun(filepath.Base(d), d)
		if err != nil {
			return err
		}
		lrs = append(lrs, r)
	}
	if len(lrs) == 0 {
		return fmt.Errorf("fitting the layout: no runs")
	}
	lm, err := FitLayout(NewLayoutModel(m), lrs)
	if err != nil {
		return err
	}
	clusters, err := LayoutClusters(runs[0])
	if err != nil {
		return err
	}
	for _, c := range clusters[:1] {
		fmt.Fprintf(w, "a batch of the clusters' job: %d sentences, %d source and %d target time steps\n", c.Batch.Size, c.Batch.SrcLen, c.Batch.TgtLen)
	}
	lm.WriteLayoutReport(w, m, lrs, clusters)
	return nil
}
