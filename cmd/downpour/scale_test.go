package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/cmd/downpour/internal/scale"
	"github.com/downpour-ml/downpour/internal/testenv"
)

// The load harness's path at a size CI runs: 16 workers and 4 shards, each
// a process, one kill -9 mid-run. Sync: a worker is killed, a spare takes
// its rank, the job rolls back to its last checkpoint and ends bit-identical
// to the one-process computation. Async (tasks): a shard is killed and
// started again, the job and its task queue roll back, and every counter
// reconciles. Both: etcd carries no more than membership needs.
func TestScale16x4WithFaults(t *testing.T) {
	bin := downpourBinary(t)
	for _, c := range []struct {
		mode  string
		fault scale.Fault
	}{
		{"sync", scale.Fault{Role: "worker", Index: 5, AtStep: 40}},
		{"async", scale.Fault{Role: "ps", Index: 1, AtStep: 40}},
	} {
		t.Run(c.mode, func(t *testing.T) {
			cfg := scale.Config{Binary: bin, Dir: filepath.Join(t.TempDir(), c.mode), Workers: 16, Shards: 4, Mode: c.mode,
				Steps: 120, Params: 20000, StepMs: 20, CheckpointEvery: 20, Faults: []scale.Fault{c.fault}, Timeout: 3 * time.Minute}
			res, err := scale.Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Faults) != 1 || res.Faults[0].Step < c.fault.AtStep || res.Faults[0].Step >= cfg.Steps {
				t.Fatalf("faults %+v: not injected mid-run", res.Faults)
			}
			if c.mode == "sync" {
				if _, err := checkSync(cfg, res); err != nil {
					t.Fatal(err)
				}
			} else if res.Tasks == nil || res.Tasks.Total == 0 {
				t.Fatal("the async job handed out no tasks")
			}
			if err := res.Reconcile(); err != nil {
				t.Fatal(err)
			}
			if m := scale.Membership(*res); res.EtcdPerStep > m.PerStep {
				t.Fatalf("etcd: %.1f requests a step, membership needs %.1f at most: %v", res.EtcdPerStep, m.PerStep, res.Etcd)
			}
			if res.StepsPerSec <= 0 || res.Wait.Count == 0 || res.Push.Count == 0 || res.Pull.Count == 0 || res.NATS.Msgs <= 0 ||
				res.CPU.PS <= 0 || res.MaxRSS.Coordinator <= 0 {
				t.Fatalf("a measure is missing: %+v", res)
			}
			t.Logf("%s, %v at step %d: %.1f steps/s, wait p50 %.1f ms p99 %.1f ms, etcd %.1f a step (membership's bound %.1f), tasks %+v",
				c.mode, c.fault, res.Faults[0].Step, res.StepsPerSec, res.Wait.P50, res.Wait.P99, res.EtcdPerStep, scale.Membership(*res).PerStep, res.Tasks)
		})
	}
}

// Bad lists and faults are usage errors, said before anything starts.
func TestScaleFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--workers", "0"}, {"--shards", "x"}, {"--params", ""}, {"--faults", "worker:1"}, {"--faults", "disk:0@5"}, {"--faults", "ps:-1@5"},
	} {
		code, _, stderr := runCmd(t, time.Minute, append([]string{"scale", "--out", filepath.Join(t.TempDir(), "s")}, args...)...)
		if code != 2 || !strings.Contains(stderr, "downpour scale:") {
			t.Errorf("%v: exit %d, %s", args, code, stderr)
		}
	}
	fl, err := faultList("worker:3@100,ps:1@150")
	if err != nil || !slices.Equal(fl, []scale.Fault{{Role: "worker", Index: 3, AtStep: 100}, {Role: "ps", Index: 1, AtStep: 150}}) {
		t.Fatalf("faults %+v, %v", fl, err)
	}
}

// --fit reads the sweeps of several directories, fits the cost model and
// prints its error on each run and its predictions; a missing sweep is an
// error naming it.
func TestScaleFit(t *testing.T) {
	var dirs []string
	for i, shards := range []int{1, 4} {
		dir := filepath.Join(t.TempDir(), fmt.Sprint(i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		var lines []string
		for k, w := range []int{1, 4, 16} {
			r := scale.Result{Workers: w, Shards: shards << k, Params: 65536 << i, Mode: "sync", StepMs: 100, Steps: 100, StepsPerSec: 9 - float64(w)/4, Seconds: 12}
			r.CPU = scale.RoleCosts{Worker: 0.5 * float64(w), PS: 0.1 * float64(w*shards), Servers: 0.2 * float64(w)}
			r.Wait.Mean = 3 + float64(i)
			b, _ := json.Marshal(r)
			lines = append(lines, string(b))
		}
		if err := os.WriteFile(filepath.Join(dir, "results.jsonl"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, dir)
	}
	code, stdout, stderr := runCmd(t, time.Minute, "scale", "--fit", strings.Join(dirs, ","))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"largest error:", "W2-sized: 100 workers, 20 shards", "the paper's: 100 workers, 20 shards, 3.84e+08 parameters"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("no %q in\n%s", want, stdout)
		}
	}
	if n := strings.Count(stdout, "\nsync "); n != 6 {
		t.Errorf("%d runs checked, want 6:\n%s", n, stdout)
	}
	if code, _, stderr := runCmd(t, time.Minute, "scale", "--fit", filepath.Join(t.TempDir(), "none")); code == 0 || !strings.Contains(stderr, "results.jsonl") {
		t.Errorf("a missing sweep: exit %d, %s", code, stderr)
	}
}

// --plot draws a sweep's curves and writes its table again from its
// results.jsonl.
func TestScalePlotWritesTable(t *testing.T) {
	dir := t.TempDir()
	var lines []string
	for _, w := range []int{1, 4, 16} {
		r := scale.Result{Workers: w, Shards: 4, Params: 65536, Mode: "async", StepMs: 100, Steps: 100, StepsPerSec: 9, ExamplesPerSec: 288 * float64(w), Seconds: 12,
			Wait: scale.Quantiles{P50: 3, P99: 6}, EtcdPerStep: 4}
		b, _ := json.Marshal(r)
		lines = append(lines, string(b))
	}
	if err := os.WriteFile(filepath.Join(dir, "results.jsonl"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCmd(t, time.Minute, "scale", "--plot", dir); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	b, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	if rows := strings.Split(strings.TrimSpace(string(b)), "\n"); len(rows) != 5 || !strings.HasPrefix(rows[4], "| async | 16 | 4 | 65536 | 9.00 | 4608 | 100% |") {
		t.Fatalf("table:\n%s", b)
	}
	for _, png := range []string{"throughput.png", "wait.png", "etcd.png"} {
		if _, err := os.Stat(filepath.Join(dir, png)); err != nil {
			t.Error(err)
		}
	}
}

// --out naming a sweep's directory adds the new jobs to it: its results,
// table and curves then hold the old jobs and the new, and a job it holds
// already is refused rather than overwritten. (The first run also checks
// --cpuprofile.)
func TestScaleAddsToASweep(t *testing.T) {
	bin := downpourBinary(t)
	dir := filepath.Join(t.TempDir(), "sweep")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	old := scale.Result{Workers: 2, Shards: 1, Params: 4096, Mode: "async", StepMs: 5, Steps: 20, StepsPerSec: 150, ExamplesPerSec: 9600, Seconds: 3,
		Wait: scale.Quantiles{P50: 1, P99: 2}, EtcdPerStep: 2}
	b, _ := json.Marshal(old)
	if err := os.WriteFile(filepath.Join(dir, "results.jsonl"), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"scale", "--out", dir, "--workers", "1", "--shards", "1", "--mode", "async", "--params", "4096", "--steps", "20", "--step-ms", "5"}
	if out, err := exec.Command(bin, append(args, "--cpuprofile")...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// --cpuprofile: every role wrote its profile (gzipped protobuf) as it
	// ended.
	for _, role := range []string{"coordinator", "ps-0", "worker-0"} {
		b, err := os.ReadFile(filepath.Join(dir, "async-w1-s1-p4096", role+".cpu.pprof"))
		if err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("%s's profile: %v, %d bytes", role, err, len(b))
		}
	}
	rs, err := scale.ReadResults(filepath.Join(dir, "results.jsonl"))
	if err != nil || len(rs) != 2 || rs[0].Workers != 2 || rs[1].Workers != 1 || rs[1].StepsPerSec <= 0 {
		t.Fatalf("results %+v, %v", rs, err)
	}
	table, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil || strings.Count(string(table), "\n| async |") != 2 {
		t.Fatalf("table %s, %v", table, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "throughput.png")); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "holds that job already") {
		t.Fatalf("the same job again: %v, %s", err, out)
	}
	if rs, _ := scale.ReadResults(filepath.Join(dir, "results.jsonl")); len(rs) != 2 {
		t.Fatalf("%d results after a refused job", len(rs))
	}
}

// A job whose blocks do not fit in the NATS server's messages is refused
// when the coordinator starts, saying the block size that fits (the load
// harness met it at 4M parameters: every worker died at its first push and
// the coordinator waited for workers that could not start).
func TestCoordinatorRefusesBlocksThatDoNotFit(t *testing.T) {
	c := testenv.Servers(t)
	code, _, stderr := runCmd(t, time.Minute, "coordinator", "--nats", c.NATSURL, "--etcd", c.EtcdEndpoints[0], "--out", filepath.Join(t.TempDir(), "run"),
		"--job", "big", "--preset", "synthetic", "--synthetic-params", "1048576", "--synthetic-tensors", "1", "--block-size", "524288", "--workers", "1", "--ps-shards", "1")
	if code == 0 || !strings.Contains(stderr, "do not fit in the NATS server's 1048576-byte messages") || !strings.Contains(stderr, "at most 262011 floats") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}
