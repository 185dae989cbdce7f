package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/downpour-ml/downpour/cmd/downpour/internal/scale"
	"github.com/downpour-ml/downpour/internal/app/rundir"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/worker"
)

// cmdScale runs the load harness: one job per combination of the lists
// given, each role a process of this binary, and prints and records what
// each cost.
func cmdScale(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	workers := fs.String("workers", "1,2,4,8,16,32,64", "workers of each job (a comma-separated list: one job each)")
	shards := fs.String("shards", "4", "parameter-server shards (a list)")
	params := fs.String("params", "65536", "synthetic model's parameters (a list)")
	modes := fs.String("mode", "sync,async", "consistency modes (a list)")
	copies := fs.String("ps-replicas", "1", "shards holding each parameter block (a list)")
	steps := fs.Int64("steps", 200, "steps of each job")
	stepMs := fs.Float64("step-ms", 100, "milliseconds each step stands for")
	faults := fs.String("faults", "", "kill -9 while the job runs: role:index@step, comma-separated (for example worker:3@100,ps:1@150; a killed shard starts again, a killed worker's rank goes to a spare)")
	ckpt := fs.Int64("checkpoint-every", 0, "the job's checkpoint interval (a sync job needs one to recover a shard; default 20 with faults)")
	procs := fs.Int("procs", 0, "GOMAXPROCS of each role's process (0: Go's default, every core)")
	profile := fs.Bool("cpuprofile", false, "have every role write its CPU profile beside its log (<run>/<role>.cpu.pprof; 'go tool pprof' merges them)")
	check := fs.Bool("check", true, "check each sync job's final parameters bit for bit against the one-process computation")
	out := fs.String("out", "", "directory of the runs; results.jsonl gathers one line per job, results.md their table, and the curves of a sweep (throughput.png, wait.png, etcd.png) go beside it; a sweep's directory takes more jobs, and its table and curves then cover them all (default runs/scale-<time>)")
	replot := fs.String("plot", "", "only draw the curves and write the table of the sweep in this directory again, from its results.jsonl")
	fit := fs.String("fit", "", "only fit the cost model to the sweeps in these directories (a list; their results.jsonl, measured on this machine), print its error on every run and its predictions for clusters")
	fitLayout := fs.String("fit-layout", "", "only fit the cost model of a replica laid out over seats to these runs of examples/paper-layout.sh (a list of their output directories, measured on this machine), its byte costs from the sweeps of --fit, and print its error on every seat and step and its predictions for clusters")
	if err := parse(fs, args, stderr, "downpour scale --workers 1,4,16,64 --shards 16 --mode sync,async"); err != nil {
		return err
	}
	if *fitLayout != "" {
		if *fit == "" {
			fmt.Fprintln(stderr, "downpour scale: --fit-layout takes its byte costs from the sweeps of --fit")
			return errUsage
		}
		return scale.WriteLayoutFit(stdout, strings.Split(*fit, ","), strings.Split(*fitLayout, ","), float64(runtime.NumCPU()))
	}
	if *replot != "" {
		return replotSweep(*replot)
	}
	if *fit != "" {
		return fitModel(*fit, stdout)
	}
	ws, err1 := intList(*workers)
	ss, err2 := intList(*shards)
	ps, err3 := intList(*params)
	fl, err4 := faultList(*faults)
	rs, err5 := intList(*copies)
	for _, err := range []error{err1, err2, err3, err4, err5} {
		if err != nil {
			fmt.Fprintf(stderr, "downpour scale: %v\n", err)
			return errUsage
		}
	}
	if len(fl) > 0 && *ckpt == 0 {
		*ckpt = 20
	}
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	all, results, err := openSweep(out, stdout)
	if err != nil {
		return err
	}
	defer results.Close()
	fmt.Fprintln(stdout, scaleHeader)
	for _, mode := range strings.Split(*modes, ",") {
		for _, p := range ps {
			for _, s := range ss {
				for _, w := range ws {
					for _, r := range rs {
						dir := fmt.Sprintf("%s-w%d-s%d-p%d", mode, w, s, p)
						if r > 1 {
							dir += fmt.Sprintf("-r%d", r)
						}
						cfg := scale.Config{Binary: bin, Dir: filepath.Join(*out, dir), Workers: w, Shards: s, PSReplicas: r, Mode: mode, Steps: *steps,
							Params: p, StepMs: *stepMs, Faults: fl, CheckpointEvery: *ckpt, Procs: *procs, Profile: *profile}
						res, err := scaleJob(ctx, cfg, *check, results, stdout)
						if err != nil {
							return err
						}
						all = append(all, *res)
					}
				}
			}
		}
	}
	if err := writeTable(all, *out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "table: %s\n", filepath.Join(*out, "results.md"))
	if scale.Dimension(all) == "" {
		return nil
	}
	if err := scale.Plot(all, *out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "curves: %s\n", filepath.Join(*out, "*.png"))
	return nil
}

// replotSweep writes the table and draws the curves of the sweep in dir
// again, from its results.jsonl.
func replotSweep(dir string) error {
	rs, err := scale.ReadResults(filepath.Join(dir, "results.jsonl"))
	if err != nil {
		return err
	}
	if err := writeTable(rs, dir); err != nil {
		return err
	}
	if scale.Dimension(rs) == "" { // nothing to draw a curve along, as the sweep itself found
		return nil
	}
	return scale.Plot(rs, dir)
}

// openSweep opens the sweep's directory *out (made when empty) and its
// results.jsonl: an existing sweep's directory takes the new jobs beside
// its own (returned), and its table and curves then cover both.
func openSweep(out *string, stdout io.Writer) ([]scale.Result, *os.File, error) {
	var all []scale.Result
	if *out != "" {
		if rs, err := scale.ReadResults(filepath.Join(*out, "results.jsonl")); err == nil {
			all = rs
			fmt.Fprintf(stdout, "adding to the sweep in %s (%d jobs)\n", *out, len(rs))
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, nil, err
		}
	}
	if all == nil {
		if err := rundir.Prepare(out, "scale"); err != nil {
			return nil, nil, err
		}
	}
	results, err := os.OpenFile(filepath.Join(*out, "results.jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	return all, results, err
}

// scaleJob runs one job of a sweep, checks it (a sync job bit for bit
// against the one-process computation, with check; every job's counters),
// prints its row and appends its result to results.
func scaleJob(ctx context.Context, cfg scale.Config, check bool, results io.Writer, stdout io.Writer) (*scale.Result, error) {
	what := fmt.Sprintf("%d workers, %d shards, %d params, %s", cfg.Workers, cfg.Shards, cfg.Params, cfg.Mode)
	if _, err := os.Stat(cfg.Dir); err == nil {
		return nil, fmt.Errorf("%s holds that job already: choose another --out", cfg.Dir)
	}
	res, err := scale.Run(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	verdict := ""
	if check && cfg.Mode == "sync" {
		if verdict, err = checkSync(cfg, res); err != nil {
			return nil, err
		}
	}
	if err := res.Reconcile(); err != nil {
		return nil, fmt.Errorf("%s: counters: %w", what, err)
	}
	verdict += "  counters reconcile"
	fmt.Fprintln(stdout, scaleRow(res)+verdict)
	b, _ := json.Marshal(res)
	if _, err := results.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	return res, nil
}

// writeTable writes a sweep's table (scale.WriteTable) to dir/results.md.
func writeTable(rs []scale.Result, dir string) error {
	var b bytes.Buffer
	if err := scale.WriteTable(&b, rs); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.md"), b.Bytes(), 0o644)
}

// The clusters the cost model predicts for: 100 workers and 20 shards on
// 10 GbE, a NATS server on each shard's machine.
var modelClusters = []scale.Cluster{
	// W2 (33M floats), each worker's step the 2.2 s it takes on a core
	// pair of this machine kind.
	{Name: "W2-sized", Workers: 100, Shards: 20, Params: 33e6, ComputeSeconds: 2.2, LinkBytesPerSec: 1.25e9, NATSServers: 20},
	// The same with each block on 2 shards (--ps-replicas 2): the chains
	// carry each step's aggregate, once, not each worker's push.
	{Name: "W2-sized, 2 copies", Workers: 100, Shards: 20, Params: 33e6, ComputeSeconds: 2.2, LinkBytesPerSec: 1.25e9, NATSServers: 20, PSReplicas: 2},
	// The paper's model (384M floats), a step of 128 sentences taken as
	// the second its 8 GPUs needed (6300 words a second, about 50 words a
	// sentence pair).
	{Name: "the paper's", Workers: 100, Shards: 20, Params: 384e6, ComputeSeconds: 1, LinkBytesPerSec: 1.25e9, NATSServers: 20},
}

// fitModel fits the cost model to the sweeps in dirs and reports it.
func fitModel(dirs string, stdout io.Writer) error {
	var rs []scale.Result
	for _, d := range strings.Split(dirs, ",") {
		r, err := scale.ReadResults(filepath.Join(d, "results.jsonl"))
		if err != nil {
			return err
		}
		rs = append(rs, r...)
	}
	m, err := scale.Fit(rs, float64(runtime.NumCPU()))
	if err != nil {
		return err
	}
	m.WriteReport(stdout, rs, modelClusters)
	return nil
}

const scaleHeader = "mode  workers shards   params  steps/s  examples/s  wait p50/p99 ms  push p50/p99 ms  pull p50/p99 ms  push+pull p50/p99 ms  busiest shard  NATS msgs/step  etcd req/step  etcd watch/step  coordinator CPU s, MiB"

func scaleRow(r *scale.Result) string {
	return fmt.Sprintf("%-5s %7d %6d %8d %8.2f %11.0f %7.1f / %-7.1f %7.1f / %-7.1f %7.1f / %-7.1f %10.1f / %-9.1f %13.2f %15.0f %14.2f %16.1f %9.2f, %.0f",
		r.Mode, r.Workers, r.Shards, r.Params, r.StepsPerSec, r.ExamplesPerSec, r.Wait.P50, r.Wait.P99, r.Push.P50, r.Push.P99,
		r.Pull.P50, r.Pull.P99, r.PushPull.P50, r.PushPull.P99, r.ShardBusy, r.NATS.Msgs, r.EtcdPerStep, r.WatchPerStep, r.CPU.Coordinator, r.MaxRSS.Coordinator)
}

// checkSync holds a sync job's final parameters to the one-process
// computation of its spec.
func checkSync(cfg scale.Config, res *scale.Result) (string, error) {
	b, err := os.ReadFile(filepath.Join(cfg.Dir, "run", "job.json"))
	if err != nil {
		return "", err
	}
	spec, err := job.DecodeSpec(b)
	if err != nil {
		return "", err
	}
	ref := worker.NewSyntheticReference(spec)
	for step := range spec.Steps {
		ref.Step(step)
	}
	if !slices.Equal(ref.Params(), res.Final) {
		return "", fmt.Errorf("%d workers, %d shards: the sync job's parameters differ from the one-process computation", cfg.Workers, cfg.Shards)
	}
	return "  bit-identical", nil
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q: want a list of positive numbers", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// faultList parses role:index@step,...
func faultList(s string) ([]scale.Fault, error) {
	if s == "" {
		return nil, nil
	}
	var out []scale.Fault
	for _, f := range strings.Split(s, ",") {
		role, rest, ok1 := strings.Cut(f, ":")
		idx, at, ok2 := strings.Cut(rest, "@")
		i, err1 := strconv.Atoi(idx)
		step, err2 := strconv.ParseInt(at, 10, 64)
		if !ok1 || !ok2 || err1 != nil || err2 != nil || i < 0 || step < 1 || (role != "worker" && role != "ps") {
			return nil, fmt.Errorf("fault %q: want worker:<index>@<step> or ps:<index>@<step>", f)
		}
		out = append(out, scale.Fault{Role: role, Index: i, AtStep: step})
	}
	return out, nil
}
