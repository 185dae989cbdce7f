package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/scale"
	"github.com/downpour-ml/downpour/worker"
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
				b, err := os.ReadFile(filepath.Join(cfg.Dir, "run", "job.json"))
				if err != nil {
					t.Fatal(err)
				}
				spec, err := job.DecodeSpec(b)
				if err != nil {
					t.Fatal(err)
				}
				ref := worker.NewSyntheticReference(spec)
				for step := range spec.Steps {
					ref.Step(step)
				}
				if !slices.Equal(ref.Params(), res.Final) {
					t.Fatal("the sync job's parameters after the fault differ from the one-process computation")
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
