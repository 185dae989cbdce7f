package scale

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/internal/testenv"
)

func sweep() []Result {
	var rs []Result
	for _, mode := range []string{"sync", "async"} {
		for _, w := range []int{1, 4, 16} {
			rs = append(rs, Result{Workers: w, Shards: 4, Mode: mode, Params: 1000, StepMs: 100, Steps: 100, Seconds: 12,
				ExamplesPerSec: 300 * float64(w), Wait: Quantiles{P50: 5, P99: 9}, EtcdPerStep: float64(w)})
		}
	}
	return rs
}

// A sweep's dimension is the one its results vary in.
func TestDimension(t *testing.T) {
	rs := sweep()
	if d := Dimension(rs); d != "workers" {
		t.Fatalf("dimension %q", d)
	}
	for i := range rs {
		rs[i].Workers, rs[i].Shards = 4, 1<<i
	}
	if d := Dimension(rs); d != "shards" {
		t.Fatalf("dimension %q", d)
	}
	if d := Dimension(rs[:1]); d != "" {
		t.Fatalf("one result: dimension %q", d)
	}
}

// Membership counts setup and keep-alives for every process (a spare for
// each fault) and each task's requests, and nothing per step.
func TestMembership(t *testing.T) {
	r := Result{Workers: 16, Shards: 4, Steps: 200, Seconds: 30}
	roles := 21.0
	if m := Membership(r); m.Total != roles*(SetupPerRole+30*KeepAlivesPerSecond) || m.PerStep != m.Total/200 {
		t.Fatalf("membership %+v", m)
	}
	r.Faults = []FaultNote{{}}
	r.Tasks = &TaskCounts{Total: 50}
	if m := Membership(r); m.Total != (roles+1)*(SetupPerRole+30*KeepAlivesPerSecond)+50*PerTask {
		t.Fatalf("with a fault and tasks: %+v", m)
	}
	r.Steps *= 2 // the same job, twice the steps in the same time: half a step's share
	if m := Membership(r); m.PerStep*2*200 != m.Total {
		t.Fatalf("per step %v of %v", m.PerStep, m.Total)
	}
}

// Reconcile finds a task left undone, a data step short, a gradient applied
// twice or never, and a job whose shards said nothing.
func TestReconcile(t *testing.T) {
	ok := Result{Workers: 2, Steps: 10, Tasks: &TaskCounts{Total: 4, Done: 4, DataSteps: 20},
		Counters: []ShardCounters{{Name: "ps-0", Accepted: 10, Applied: 9, Skipped: 1}}}
	if err := ok.Reconcile(); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(r *Result){
		"undone":      func(r *Result) { r.Tasks.Done = 3 },
		"short":       func(r *Result) { r.Tasks.DataSteps = 19 },
		"twice":       func(r *Result) { r.Counters[0].Applied = 10 },
		"none":        func(r *Result) { r.Counters[0] = ShardCounters{Name: "ps-0"} },
		"silent":      func(r *Result) { r.Counters = nil },
		"never given": func(r *Result) { r.Tasks.Total = 5 },
	} {
		r := ok
		tc := *ok.Tasks
		r.Tasks = &tc
		r.Counters = append([]ShardCounters(nil), ok.Counters...)
		f(&r)
		if r.Reconcile() == nil {
			t.Errorf("%s: reconciles", name)
		}
	}
}

// A sweep's results read back from results.jsonl draw three curves along
// workers (two along shards); a bad line is an error naming it.
func TestPlotAndReadResults(t *testing.T) {
	dir := t.TempDir()
	var lines []string
	for _, r := range sweep() {
		b, _ := json.Marshal(r)
		lines = append(lines, string(b))
	}
	path := filepath.Join(dir, "results.jsonl")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rs, err := ReadResults(path)
	if err != nil || len(rs) != 6 || rs[5].Mode != "async" || rs[5].Workers != 16 {
		t.Fatalf("%d results, %v", len(rs), err)
	}
	if err := Plot(rs, dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"throughput.png", "wait.png", "etcd.png"} {
		img := testenv.PNG(t, filepath.Join(dir, name))
		if b := img.Bounds(); b.Dx() < 400 || b.Dy() < 250 {
			t.Fatalf("%s: %v", name, b)
		}
	}
	if err := os.WriteFile(path, []byte(lines[0]+"\n{\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadResults(path); err == nil || !strings.Contains(err.Error(), ":2:") {
		t.Fatalf("a bad second line: %v", err)
	}
	if err := Plot(rs[:1], dir); err == nil {
		t.Fatal("one result plotted as a sweep")
	}
}
