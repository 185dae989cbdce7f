// Package scale is the load harness: it runs one job with many workers and
// shards on one machine, every role a process of the downpour binary with
// its own NATS connection and etcd client (as on a cluster), against NATS
// and etcd embedded in the harness's process, and measures what the job
// cost: throughput, each step's wait on the shards (the sync barrier),
// push and pull times by shard, each process's CPU and peak memory, the
// NATS messages and bytes, and the etcd requests by kind.
//
// The synthetic load model (models.SyntheticConfig) stands for an
// accelerator's step with a wait, so that 64 workers fit on 2 cores and the
// numbers measure downpour rather than the CPU; its sync results are checked
// bit for bit against worker.SyntheticReference.
package scale

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/downpour-ml/downpour/coordinator"
	"github.com/downpour-ml/downpour/internal/app/telemetry"
	"github.com/downpour-ml/downpour/internal/checkpoint"
	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/internal/latency"
)

// Config is one measured job.
type Config struct {
	Binary  string // the downpour binary the roles run as
	Dir     string // where the run goes: each role's log, the workers' stats, the coordinator's run directory
	Job     string // the job's name
	Workers int
	Shards  int
	Mode    string // sync, ssp or async
	Steps   int64
	Params  int // the synthetic model's parameters
	// PSReplicas is the shards holding each block (--ps-replicas; 0 or 1:
	// one).
	PSReplicas int
	Tensors    int     // ... in this many tensors (0: 8, or fewer for a small model)
	StepMs     float64 // its step time
	LR         float64 // SGD's rate (0: 0.1 in sync mode, 0.1/workers otherwise)
	// Extra are more flags for the coordinator's job (for example a real
	// model: --model seq2seq ...), after the harness's own.
	Extra []string
	// Faults are killed (kill -9) while the job runs.
	Faults []Fault
	// CheckpointEvery is passed on to the job (faults need it in sync mode).
	CheckpointEvery int64
	// Procs, when positive, is the GOMAXPROCS of every role's process
	// (many processes sharing few cores waste CPU spinning for work with
	// more).
	Procs int
	// Profile, when set, has every role write its CPU profile to
	// <Dir>/<role>.cpu.pprof (go tool pprof reads them, one or merged).
	Profile bool
	Timeout time.Duration // the whole job (0: 10 minutes)
	Log     io.Writer     // progress lines (nil: none)
}

// Fault is a kill -9 of a role's process once the job reaches a step.
type Fault struct {
	Role   string // "worker" or "ps"
	Index  int    // which one, in start order
	AtStep int64  // the step the job's metrics have passed
}

// Result is what a job cost.
type Result struct {
	Workers int `json:"workers"`
	Shards  int `json:"shards"`
	// PSReplicas is the copies of each block (omitted: one).
	PSReplicas int     `json:"ps_replicas,omitempty"`
	Mode       string  `json:"mode"`
	Params     int     `json:"params"`
	StepMs     float64 `json:"step_ms"`
	Steps      int64   `json:"steps"`
	Batch      int     `json:"batch"` // examples per worker per step
	// CheckpointEvery is the job's checkpoint interval in its steps (an
	// async job's counts the data steps of every worker: workers times
	// this).
	CheckpointEvery int64 `json:"checkpoint_every,omitempty"`
	// Throughput while every worker ran, a tenth of the steps in: the
	// job's steps a second (the workers' steps over the workers: in sync
	// mode the barrier's rate) and its examples a second.
	StepsPerSec    float64 `json:"steps_per_sec"`
	ExamplesPerSec float64 `json:"examples_per_sec"`
	Seconds        float64 `json:"seconds"` // the whole job, start to done
	// Wait is each step's time waiting on the shards (for the parameters
	// the step needs and for the last push to be read); Push, Pull and
	// PushPull (a push that brought the next step's parameters back) each
	// request's time, over every shard, and PushByShard the median of the
	// requests that pushed, by shard.
	Wait     Quantiles `json:"wait"`
	Push     Quantiles `json:"push"`
	Pull     Quantiles `json:"pull"`
	PushPull Quantiles `json:"pushpull"`
	// Late is how late the workers' timers woke them at the end of each
	// step's compute: the machine's scheduling, which a step's wait (in
	// sync mode, the barrier's, which waits for the latest worker) carries.
	Late        Quantiles  `json:"timer_late"`
	PushByShard []float64  `json:"push_p50_ms_by_shard"`
	CPU         RoleCosts  `json:"cpu_seconds"`   // by role: summed over its processes
	MaxRSS      RoleCosts  `json:"max_rss_mib"`   // by role: the largest process's peak
	ShardBusy   float64    `json:"shard_busy"`    // the busiest shard's CPU over the run's time (1: a core)
	NATS        Traffic    `json:"nats"`          // per step
	Etcd        EtcdCounts `json:"etcd"`          // requests by kind, in the whole job
	EtcdPerStep float64    `json:"etcd_per_step"` // all kinds, per step
	// WatchPerStep is the watch responses etcd sent a step, over every
	// watcher: what the job's keys changing costs its watchers.
	WatchPerStep float64     `json:"etcd_watch_per_step"`
	Faults       []FaultNote `json:"faults,omitempty"`
	// Tasks is the job's task queue at its end (async and ssp jobs hand
	// their data out as tasks); Shards each surviving shard process's
	// counters of block gradients.
	Tasks    *TaskCounts     `json:"tasks,omitempty"`
	Counters []ShardCounters `json:"shard_counters,omitempty"`
	Final    []float32       `json:"-"` // the final parameters
}

// TaskCounts is a task queue's end.
type TaskCounts struct {
	Total     int   `json:"total"`
	Done      int   `json:"done"`
	Requeued  int   `json:"requeued"`   // given out again after a worker died
	DataSteps int64 `json:"data_steps"` // data steps the done tasks cover
}

// ShardCounters is what a shard process said of its block gradients when
// the job ended.
type ShardCounters struct {
	Name                                   string `json:"name"`
	Accepted, Applied, Skipped, Duplicates int64
	// Replicated is the updates it applied as a backup copy (--ps-replicas),
	// counted in Applied too, and pushed to another shard.
	Replicated int64 `json:",omitempty"`
}

// Reconcile checks that a job's counters add up: every task done and every
// data step of every data shard covered once; on every shard that saw the
// job end, each accepted block gradient applied (or skipped as non-finite)
// exactly once. In sync mode a shard applies one update a block and step,
// the mean of every rank's gradient, so it accepts workers times as many
// gradients as it applies updates, and a step with a non-finite gradient
// is skipped whole (its workers' gradients accepted, no update). Updates a
// shard applied as a backup copy were accepted elsewhere: they are left
// out.
func (r *Result) Reconcile() error {
	if t := r.Tasks; t != nil {
		if t.Done != t.Total || t.DataSteps != int64(r.Workers)*r.Steps {
			return fmt.Errorf("tasks: %d of %d done, %d data steps (want %d)", t.Done, t.Total, t.DataSteps, int64(r.Workers)*r.Steps)
		}
	}
	if len(r.Counters) == 0 {
		return errors.New("no shard reported its counters")
	}
	for _, c := range r.Counters {
		c.Applied -= c.Replicated
		ok := c.Accepted > 0 && c.Accepted == c.Applied+c.Skipped
		if r.Mode == "sync" {
			// Each skipped step holds between one and every rank's
			// gradients non-finite.
			w := int64(r.Workers)
			rest := c.Accepted - w*c.Applied
			ok = c.Accepted > 0 && rest >= 0 && rest%w == 0 && rest/w <= c.Skipped && (rest == 0) == (c.Skipped == 0)
		}
		if !ok {
			return fmt.Errorf("%s: %d block gradients accepted, %d updates applied, %d skipped (%s mode, %d workers)",
				c.Name, c.Accepted, c.Applied, c.Skipped, r.Mode, r.Workers)
		}
	}
	return nil
}

// Quantiles summarizes a histogram in milliseconds.
type Quantiles struct {
	P50   float64 `json:"p50_ms"`
	P99   float64 `json:"p99_ms"`
	Mean  float64 `json:"mean_ms"`
	Max   float64 `json:"max_ms"`
	Count uint64  `json:"count"`
}

func quantiles(h *latency.Histogram) Quantiles {
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	return Quantiles{P50: ms(h.Quantile(0.5)), P99: ms(h.Quantile(0.99)), Mean: ms(h.Mean()), Max: ms(h.Max()), Count: h.Count()}
}

// RoleCosts is a cost by role.
type RoleCosts struct {
	Coordinator float64 `json:"coordinator"`
	PS          float64 `json:"ps"`
	Worker      float64 `json:"worker"`
	// Servers is the NATS server's and etcd's (the harness's own process,
	// which embeds them), for CPU only.
	Servers float64 `json:"servers,omitempty"`
}

// Traffic is what went through the NATS server.
type Traffic struct {
	Msgs  float64 `json:"msgs"`  // messages into the server
	Bytes float64 `json:"bytes"` // their bytes
}

// EtcdCounts is etcd's requests (and stream messages) by gRPC method.
type EtcdCounts map[string]float64

// FaultNote says what a fault hit and when.
type FaultNote struct {
	Fault
	Step int64   `json:"step"` // the job's step when it was killed
	PID  int     `json:"pid"`
	At   float64 `json:"at_seconds"`
}

func (c *Config) defaults() error {
	if c.Binary == "" || c.Dir == "" || c.Workers < 1 || c.Shards < 1 || c.Steps < 1 || c.Params < 1 {
		return errors.New("scale: a binary, a directory, workers, shards, steps and params are needed")
	}
	if c.Job == "" {
		c.Job = "scale"
	}
	if c.Mode == "" {
		c.Mode = "sync"
	}
	if c.Tensors == 0 {
		c.Tensors = min(8, c.Params)
	}
	if c.LR == 0 {
		c.LR = 0.1
		if c.Mode != "sync" {
			// Async updates land one by one on parameters up to a round of
			// pushes old: a rate of 0.1 each diverges at a few workers.
			c.LR = 0.1 / float64(c.Workers)
		}
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Minute
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return nil
}

// JobArgs are the coordinator's flags for the job.
func (c *Config) JobArgs() []string {
	// Blocks small enough that every shard holds some of every size of
	// model (at least two blocks a shard), and that fit in a message of
	// NATS's default max_payload (1 MiB): 512 KiB at most.
	block := max(1, min(1<<17, c.Params/(2*c.Shards)))
	args := []string{"--job", c.Job, "--model", "synthetic", "--workers", strconv.Itoa(c.Workers), "--ps-shards", strconv.Itoa(c.Shards),
		"--mode", c.Mode, "--steps", strconv.FormatInt(c.Steps, 10), "--synthetic-params", strconv.Itoa(c.Params),
		"--synthetic-tensors", strconv.Itoa(c.Tensors), "--step-ms", strconv.FormatFloat(c.StepMs, 'g', -1, 64),
		"--block-size", strconv.Itoa(block), "--lr", strconv.FormatFloat(c.LR, 'g', -1, 64),
		"--log-every", strconv.FormatInt(max(1, c.Steps/20), 10), "--eval-every", "0"}
	if c.PSReplicas > 1 {
		args = append(args, "--ps-replicas", strconv.Itoa(c.PSReplicas))
	}
	if every := c.CheckpointEvery; every > 0 {
		if c.Mode != "sync" {
			// An async job counts its checkpoint interval in data steps
			// done, over every worker: as many job steps apart as in sync
			// mode is workers times as many data steps.
			every *= int64(c.Workers)
		}
		args = append(args, "--checkpoint-every", strconv.FormatInt(every, 10))
	}
	return append(args, c.Extra...)
}

// role is a running process of the job.
type role struct {
	kind string // coordinator, ps or worker
	name string
	args []string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error
	cpu  time.Duration // user and system, once it has exited
	rss  int64         // peak resident bytes, once it has exited
}

// Run runs the job of cfg to its end and measures it.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	c, err := embedded.StartWith(ctx, embedded.Options{Dir: filepath.Join(cfg.Dir, "servers")})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	h := &harness{cfg: cfg, c: c}
	defer h.stopAll()
	return h.run(ctx)
}

type harness struct {
	cfg   Config
	c     *embedded.Cluster
	mu    sync.Mutex
	roles []*role
}

func (h *harness) run(ctx context.Context) (*Result, error) {
	cfg := h.cfg
	ep := []string{"--nats", h.c.NATSURL, "--etcd", h.c.EtcdEndpoints[0]}
	etcd0, watch0 := etcdCounts()
	nats0, self0 := natsIn(h.c.NATS), selfCPU()
	start := time.Now()
	var shards, workers []*role
	for i := range cfg.Shards {
		r, err := h.start("ps", fmt.Sprint("ps-", i), append([]string{"ps", "-v", "--job", cfg.Job, "--shard", strconv.Itoa(i), "--lease-ttl", "3",
			"--data-dir", filepath.Join(cfg.Dir, fmt.Sprint("ps-", i))}, ep...))
		if err != nil {
			return nil, err
		}
		shards = append(shards, r)
	}
	for i := range cfg.Workers + len(cfg.Faults) { // a spare for each fault
		r, err := h.start("worker", fmt.Sprint("worker-", i), append([]string{"worker", "--job", cfg.Job, "--lease-ttl", "3",
			"--stats", filepath.Join(cfg.Dir, fmt.Sprintf("worker-%d.stats.json", i))}, ep...))
		if err != nil {
			return nil, err
		}
		workers = append(workers, r)
	}
	out := filepath.Join(cfg.Dir, "run")
	coord, err := h.start("coordinator", "coordinator", append(append([]string{"coordinator", "--out", out}, cfg.JobArgs()...), ep...))
	if err != nil {
		return nil, err
	}
	metricsPath := filepath.Join(out, "metrics.jsonl")
	var notes []FaultNote
	for _, f := range cfg.Faults {
		note, err := h.inject(ctx, f, metricsPath, shards, workers, start)
		if err != nil {
			return nil, err
		}
		notes = append(notes, note)
		fmt.Fprintf(cfg.Log, "fault: kill -9 %s %d (pid %d) at step %d\n", f.Role, f.Index, note.PID, note.Step)
	}
	if err := h.wait(ctx, coord); err != nil {
		return nil, err
	}
	seconds := time.Since(start).Seconds()
	// Every other role ends once the job is done (the faults' victims are
	// dead already).
	for _, r := range h.all() {
		if err := h.wait(ctx, r); err != nil && !slices.ContainsFunc(notes, func(n FaultNote) bool { return n.PID == pidOf(r) }) {
			return nil, err
		}
	}
	res := &Result{Workers: cfg.Workers, Shards: cfg.Shards, PSReplicas: cfg.PSReplicas, Mode: cfg.Mode, Params: cfg.Params, StepMs: cfg.StepMs, Steps: cfg.Steps, CheckpointEvery: cfg.CheckpointEvery,
		Seconds: seconds, Faults: notes}
	res.CPU.Servers = (selfCPU() - self0).Seconds()
	if err := h.measure(res, metricsPath, nats0, etcd0, watch0); err != nil {
		return nil, err
	}
	if err := h.counters(ctx, res); err != nil {
		return nil, err
	}
	_, params, err := checkpoint.Read(filepath.Join(out, "checkpoint", "final.ckpt"))
	if err != nil {
		return nil, err
	}
	res.Final = params
	return res, nil
}

// measure fills res from the job's metrics, the workers' stats, the
// processes' usage and the servers' counters.
func (h *harness) measure(res *Result, metricsPath string, nats0 Traffic, etcd0 EtcdCounts, watch0 float64) error {
	b, err := os.ReadFile(filepath.Join(filepath.Dir(metricsPath), "job.json"))
	if err != nil {
		return err
	}
	spec, err := job.DecodeSpec(b)
	if err != nil {
		return err
	}
	res.Batch = spec.Batch
	var sum latency.Summary
	var ends [][]int64
	for _, r := range h.all() {
		switch r.kind {
		case "worker":
			res.CPU.Worker += r.cpu.Seconds()
			res.MaxRSS.Worker = max(res.MaxRSS.Worker, float64(r.rss)/(1<<20))
			path := r.args[slices.Index(r.args, "--stats")+1]
			s, err := latency.ReadFile(path)
			if errors.Is(err, os.ErrNotExist) {
				continue // a fault's victim
			}
			if err != nil {
				return err
			}
			sum.Merge(s)
			ends = append(ends, s.Ends)
		case "ps":
			res.CPU.PS += r.cpu.Seconds()
			res.MaxRSS.PS = max(res.MaxRSS.PS, float64(r.rss)/(1<<20))
			res.ShardBusy = max(res.ShardBusy, r.cpu.Seconds()/res.Seconds)
		case "coordinator":
			res.CPU.Coordinator += r.cpu.Seconds()
			res.MaxRSS.Coordinator = max(res.MaxRSS.Coordinator, float64(r.rss)/(1<<20))
		}
	}
	if sum.Wait == nil {
		return errors.New("scale: no worker wrote its stats")
	}
	res.Wait, res.Push, res.Pull = quantiles(sum.Wait), quantiles(sum.Op("push")), quantiles(sum.Op("pull"))
	res.PushPull = quantiles(sum.Op("pushpull"))
	if sum.Late != nil {
		res.Late = quantiles(sum.Late)
	}
	res.PushByShard = make([]float64, res.Shards)
	byShard := make([]latency.Histogram, res.Shards)
	for _, kh := range sum.Requests {
		if (kh.Op == "push" || kh.Op == "pushpull") && kh.Shard >= 0 && kh.Shard < res.Shards && kh.Hist != nil {
			byShard[kh.Shard].Merge(kh.Hist)
		}
	}
	for i := range byShard {
		res.PushByShard[i] = float64(byShard[i].Quantile(0.5)) / 1e6
	}
	// The workers' steps a second while all of them ran, a tenth of their
	// steps in; the job's steps are that over the workers (in sync mode,
	// the rate of the barrier).
	rate := latency.Rate(ends, 0.1)
	if rate == 0 {
		return errors.New("scale: the workers' steps give no time to measure")
	}
	res.StepsPerSec, res.ExamplesPerSec = rate/float64(res.Workers), rate*float64(res.Batch)
	n := natsIn(h.c.NATS)
	res.NATS = Traffic{Msgs: (n.Msgs - nats0.Msgs) / float64(res.Steps), Bytes: (n.Bytes - nats0.Bytes) / float64(res.Steps)}
	res.Etcd = EtcdCounts{}
	etcd1, watch1 := etcdCounts()
	for k, v := range etcd1 {
		if d := v - etcd0[k]; d > 0 {
			res.Etcd[k] = d
			res.EtcdPerStep += d / float64(res.Steps)
		}
	}
	res.WatchPerStep = (watch1 - watch0) / float64(res.Steps)
	return nil
}

// natsIn is what the NATS server has received so far.
func natsIn(s *server.Server) Traffic {
	v, err := s.Varz(nil)
	if err != nil {
		return Traffic{}
	}
	return Traffic{Msgs: float64(v.InMsgs), Bytes: float64(v.InBytes)}
}

// etcdCounts is the embedded etcd's requests (unary calls and stream
// messages received) by method, and the watch responses it has sent, from
// one read of its gRPC server's metrics.
func etcdCounts() (requests EtcdCounts, watchSent float64) {
	requests = EtcdCounts{}
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return requests, 0
	}
	for _, mf := range mfs {
		name := mf.GetName()
		if name != "grpc_server_msg_received_total" && name != "grpc_server_msg_sent_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				switch {
				case l.GetName() != "grpc_method":
				case name == "grpc_server_msg_received_total":
					requests[l.GetValue()] += m.GetCounter().GetValue()
				case l.GetValue() == "Watch":
					watchSent += m.GetCounter().GetValue()
				}
			}
		}
	}
	return requests, watchSent
}

// start starts a role's process, its output into <dir>/<name>.log.
func (h *harness) start(kind, name string, args []string) (*role, error) {
	if h.cfg.Profile {
		args = append(slices.Clip(args), "--cpuprofile", filepath.Join(h.cfg.Dir, name+".cpu.pprof"))
	}
	log, err := os.Create(filepath.Join(h.cfg.Dir, name+".log"))
	if err != nil {
		return nil, err
	}
	r := &role{kind: kind, name: name, args: args, cmd: exec.Command(h.cfg.Binary, args...), log: log, done: make(chan struct{})}
	r.cmd.Stdout, r.cmd.Stderr = log, log
	if h.cfg.Procs > 0 {
		r.cmd.Env = append(os.Environ(), fmt.Sprintf("GOMAXPROCS=%d", h.cfg.Procs))
	}
	if err := r.cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	exited := make(chan struct{})
	var peak atomic.Int64
	go func() {
		// The peak resident memory, read while it runs: a child's rusage
		// counts the harness's own memory at the fork as the child's.
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			peak.Store(max(peak.Load(), peakRSS(r.cmd.Process.Pid)))
			select {
			case <-exited:
				return
			case <-tick.C:
			}
		}
	}()
	go func() {
		r.err = r.cmd.Wait()
		close(exited)
		if st := r.cmd.ProcessState; st != nil {
			r.cpu = st.UserTime() + st.SystemTime()
		}
		r.rss = peak.Load()
		log.Close()
		close(r.done)
	}()
	h.mu.Lock()
	h.roles = append(h.roles, r)
	h.mu.Unlock()
	return r, nil
}

func (h *harness) all() []*role {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.roles)
}

func pidOf(r *role) int { return r.cmd.Process.Pid }

// wait waits for r to exit, and says how it failed if it did.
func (h *harness) wait(ctx context.Context, r *role) error {
	select {
	case <-r.done:
	case <-ctx.Done():
		return fmt.Errorf("scale: %s did not finish: %w (its log: %s)", r.name, ctx.Err(), r.log.Name())
	}
	if r.err != nil {
		return fmt.Errorf("scale: %s: %v (its log: %s)", r.name, r.err, r.log.Name())
	}
	return nil
}

// stopAll kills what is still running.
func (h *harness) stopAll() {
	for _, r := range h.all() {
		select {
		case <-r.done:
		default:
			r.cmd.Process.Kill()
			<-r.done
		}
	}
}

// inject waits for the job to pass f.AtStep, then kills f's process with
// SIGKILL. A killed shard is started again, as a supervisor would; a killed
// worker's rank goes to a spare.
func (h *harness) inject(ctx context.Context, f Fault, metricsPath string, shards, workers []*role, start time.Time) (FaultNote, error) {
	var victim *role
	switch {
	case f.Role == "ps" && f.Index >= 0 && f.Index < len(shards):
		victim = shards[f.Index]
	case f.Role == "worker" && f.Index >= 0 && f.Index < len(workers):
		victim = workers[f.Index]
	default:
		return FaultNote{}, fmt.Errorf("scale: no %s %d to kill", f.Role, f.Index)
	}
	var step int64
	for step < f.AtStep {
		select {
		case <-ctx.Done():
			return FaultNote{}, fmt.Errorf("scale: the job did not reach step %d: %w", f.AtStep, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if recs, _, err := telemetry.ReadMetrics(metricsPath); err == nil && len(recs) > 0 {
			step = recs[len(recs)-1].Step
		}
	}
	note := FaultNote{Fault: f, Step: step, PID: pidOf(victim), At: time.Since(start).Seconds()}
	victim.cmd.Process.Kill()
	<-victim.done
	if f.Role == "ps" {
		r, err := h.start("ps", victim.name+"-restarted", victim.args)
		if err != nil {
			return note, err
		}
		shards[f.Index] = r
	}
	return note, nil
}

// peakRSS is a process's peak resident memory so far in bytes (VmHWM), or 0
// when it cannot be read.
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// counters reads the task queue from etcd and each shard's counters from
// its log's "job done" line.
func (h *harness) counters(ctx context.Context, res *Result) error {
	cli, err := etcdstore.Connect(ctx, h.c.EtcdEndpoints, 5*time.Second)
	if err != nil {
		return err
	}
	defer cli.Close()
	b, err := etcdstore.New(cli, h.cfg.Job).TaskQueue(ctx)
	if err != nil {
		return err
	}
	if b != nil {
		q, err := coordinator.DecodeTasks(b)
		if err != nil {
			return err
		}
		t := &TaskCounts{Total: len(q.List), Done: q.Count()[job.TaskDone], DataSteps: q.DoneSteps()}
		for _, tk := range q.List {
			t.Requeued += max(0, tk.Attempts-1)
		}
		res.Tasks = t
	}
	for _, ro := range h.all() {
		if ro.kind != "ps" {
			continue
		}
		b, err := os.ReadFile(ro.log.Name())
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.Contains(line, `msg="job done"`) {
				continue
			}
			c := ShardCounters{Name: ro.name}
			for _, kv := range strings.Fields(line) {
				k, v, _ := strings.Cut(kv, "=")
				n, _ := strconv.ParseInt(v, 10, 64)
				switch k {
				case "accepted":
					c.Accepted = n
				case "applied":
					c.Applied = n
				case "skipped":
					c.Skipped = n
				case "duplicates":
					c.Duplicates = n
				case "replicated":
					c.Replicated = n
				}
			}
			res.Counters = append(res.Counters, c)
		}
	}
	return nil
}

// selfCPU is this process's CPU time so far, user and system.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
