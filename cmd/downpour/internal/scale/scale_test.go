package scale

import (
	"encoding/json"
	"image/color"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gonum.org/v1/plot/plotter"

	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/internal/wire"
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

// Membership counts setup and keep-alives for every process (a spare
// worker for each fault, and a killed shard again), each task's requests,
// each checkpoint's for each shard, a new placement for every role after a
// fault, and nothing per step.
func TestMembership(t *testing.T) {
	r := Result{Workers: 16, Shards: 4, Steps: 200, Seconds: 30}
	// 21 processes, each 24 to set up and 30 keep-alives.
	if m := Membership(r); m.Total != 21*54 || m.PerStep != 21*54/200.0 {
		t.Fatalf("membership %+v", m)
	}
	r.Tasks = &TaskCounts{Total: 50}
	r.CheckpointEvery = 20
	// 10 checkpoints of 4 shards, 50 tasks.
	if m := Membership(r); m.Total != 21*54+10*4*3+50*8 {
		t.Fatalf("with tasks and checkpoints: %+v", m)
	}
	r.Faults = []FaultNote{{Fault: Fault{Role: "worker"}}}
	// A spare: 22 processes, each reading a new placement; a checkpoint
	// more (the steps done again).
	if m := Membership(r); m.Total != 22*54+11*4*3+50*8+22*10 {
		t.Fatalf("with a worker's fault: %+v", m)
	}
	r.Faults[0].Role = "ps"
	if m := Membership(r); m.Total != 23*54+11*4*3+50*8+23*10 {
		t.Fatalf("with a shard's fault: %+v", m)
	}
	// Twice the steps in the same time: the same requests, half a step's
	// share.
	r.Steps *= 2
	if m := Membership(r); m.Total != 23*54+21*4*3+50*8+23*10 || m.PerStep != m.Total/400 {
		t.Fatalf("twice the steps: %+v", m)
	}
}

// Every model's blocks fit in a message of NATS's default max_payload.
func TestJobArgsBlocksFit(t *testing.T) {
	for _, params := range []int{1000, 1 << 20, 4 << 20, 64 << 20} {
		c := Config{Binary: "x", Dir: "d", Workers: 16, Shards: 4, Steps: 100, Params: params, Tensors: 1}
		if err := c.defaults(); err != nil {
			t.Fatal(err)
		}
		args := c.JobArgs()
		i := slices.Index(args, "--block-size")
		n, _ := strconv.Atoi(args[i+1])
		if err := wire.FitBlock(n, 1<<20); err != nil || n < 1 {
			t.Errorf("%d params: block size %d: %v", params, n, err)
		}
	}
}

// An async job's checkpoint interval is in data steps over every worker.
func TestJobArgsCheckpointInterval(t *testing.T) {
	for mode, want := range map[string]string{"sync": "20", "async": "320", "ssp": "320"} {
		c := Config{Binary: "x", Dir: "d", Workers: 16, Shards: 4, Mode: mode, Steps: 100, Params: 1000, CheckpointEvery: 20}
		if err := c.defaults(); err != nil {
			t.Fatal(err)
		}
		args := c.JobArgs()
		i := slices.Index(args, "--checkpoint-every")
		if i < 0 || args[i+1] != want {
			t.Errorf("%s: %v", mode, args)
		}
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
		"undone":                   func(r *Result) { r.Tasks.Done = 3 },
		"short":                    func(r *Result) { r.Tasks.DataSteps = 19 },
		"twice":                    func(r *Result) { r.Counters[0].Applied = 10 },
		"a copy's updates too few": func(r *Result) { r.Counters[0].Applied, r.Counters[0].Replicated = 12, 2 },
		"none":                     func(r *Result) { r.Counters[0] = ShardCounters{Name: "ps-0"} },
		"silent":                   func(r *Result) { r.Counters = nil },
		"never given":              func(r *Result) { r.Tasks.Total = 5 },
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
	// A shard that keeps copies applied 2 updates as a backup besides its own.
	copies := ok
	copies.Counters = []ShardCounters{{Name: "ps-0", Accepted: 10, Applied: 11, Skipped: 1, Replicated: 2}}
	if err := copies.Reconcile(); err != nil {
		t.Fatalf("a shard with copies: %v", err)
	}
	// Sync: 4 workers' gradients make one update; a skipped step is whole.
	sync := Result{Workers: 4, Steps: 10, Mode: "sync", Counters: []ShardCounters{{Name: "ps-0", Accepted: 80, Applied: 20}}}
	if err := sync.Reconcile(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]ShardCounters{
		"skipped step":  {Accepted: 80, Applied: 19, Skipped: 1},
		"skipped whole": {Accepted: 80, Applied: 19, Skipped: 4},
	} {
		sync.Counters[0] = c
		if err := sync.Reconcile(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, c := range map[string]ShardCounters{
		"lost":          {Accepted: 79, Applied: 20},
		"applied twice": {Accepted: 80, Applied: 21},
		"part skipped":  {Accepted: 78, Applied: 19, Skipped: 1},
		"skip unseen":   {Accepted: 80, Applied: 20, Skipped: 1},
		"async count":   {Accepted: 80, Applied: 80},
	} {
		sync.Counters[0] = c
		if sync.Reconcile() == nil {
			t.Errorf("sync, %s: reconciles", name)
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

// The table has a row a run: its share of linear against the one-worker run
// of its mode, shards and parameters (none without one), the combined
// requests where a run has them (its pushes where not), the timers'
// lateness where measured, and etcd against membership's bound.
func TestWriteTable(t *testing.T) {
	rs := []Result{
		{Mode: "async", Workers: 1, Shards: 16, Params: 65536, StepsPerSec: 9.5, ExamplesPerSec: 300, Steps: 200, Seconds: 25,
			Wait: Quantiles{P50: 3, P99: 9}, Late: Quantiles{P50: 0.2, P99: 1.5, Count: 200}, PushPull: Quantiles{P50: 2.5, P99: 6, Count: 200},
			NATS: Traffic{Msgs: 33}, EtcdPerStep: 3.5, WatchPerStep: 0.8},
		{Mode: "async", Workers: 64, Shards: 16, Params: 65536, StepsPerSec: 7.9, ExamplesPerSec: 16200, Steps: 200, Seconds: 30,
			Wait: Quantiles{P50: 20, P99: 70}, Push: Quantiles{P50: 13, P99: 80, Count: 10}, NATS: Traffic{Msgs: 2097}, EtcdPerStep: 20.4, WatchPerStep: 18.5},
		{Mode: "sync", Workers: 64, Shards: 1, Params: 65536, StepsPerSec: 6.6, ExamplesPerSec: 13560, Steps: 200, Seconds: 30,
			Wait: Quantiles{P50: 46, P99: 127}, Push: Quantiles{P50: 26, P99: 74, Count: 10}, NATS: Traffic{Msgs: 135}, EtcdPerStep: 15.5, WatchPerStep: 3.6},
	}
	var b strings.Builder
	if err := WriteTable(&b, rs); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	want := []string{
		"| async | 1 | 16 | 65536 | 9.50 | 300 | 100% | 3.0 / 9.0 (3.0) | 0.2 / 1.5 | 2.5 / 6.0 | 33 | 3.5 (" + strconv.FormatFloat(Membership(rs[0]).PerStep, 'f', 1, 64) + ") | 0.8 |",
		"| async | 64 | 16 | 65536 | 7.90 | 16200 | 84% | 20.0 / 70.0 (3.5) | - | 13.0 / 80.0 | 2097 | 20.4 (" + strconv.FormatFloat(Membership(rs[1]).PerStep, 'f', 1, 64) + ") | 18.5 |",
		"| sync | 64 | 1 | 65536 | 6.60 | 13560 | - | 46.0 / 127.0 (2.8) | - | 26.0 / 74.0 | 135 | 15.5 (" + strconv.FormatFloat(Membership(rs[2]).PerStep, 'f', 1, 64) + ") | 3.6 |",
	}
	if len(lines) != 2+len(want) || !strings.HasPrefix(lines[0], "| mode | workers |") || strings.Count(lines[0], "|") != strings.Count(lines[1], "|") {
		t.Fatalf("table:\n%s", b.String())
	}
	for i, w := range want {
		if lines[2+i] != w {
			t.Errorf("row %d:\n%s\nwant\n%s", i, lines[2+i], w)
		}
		if strings.Count(lines[2+i], "|") != strings.Count(lines[0], "|") {
			t.Errorf("row %d has %d cells, the header %d", i, strings.Count(lines[2+i], "|"), strings.Count(lines[0], "|"))
		}
	}
}

// A log axis is ticked at 1, 2 and 5 times the powers of ten, or finer on
// a short one, every tick labelled.
func TestOneTwoFiveTicks(t *testing.T) {
	values := func(lo, hi float64) []float64 {
		var vs []float64
		for _, tk := range (oneTwoFive{}).Ticks(lo, hi) {
			if tk.Label == "" {
				t.Errorf("tick %g has no label", tk.Value)
			}
			vs = append(vs, tk.Value)
		}
		return vs
	}
	if got, want := values(300, 12000), []float64{500, 1000, 2000, 5000, 10000}; !slices.Equal(got, want) {
		t.Errorf("300..12000: %v, want %v", got, want)
	}
	if got, want := values(600, 5000), []float64{700, 1000, 1500, 2000, 3000, 4000, 5000}; !slices.Equal(got, want) {
		t.Errorf("600..5000: %v, want %v", got, want)
	}
}

// The legend goes to the corner its chart's points leave empty: top left
// for a rising curve, top right for a falling one, bottom left for a flat
// one at the top.
func TestLegendTakesTheEmptyCorner(t *testing.T) {
	for _, c := range []struct {
		name      string
		ys        []float64
		top, left bool
	}{
		{"rising", []float64{1, 10, 100, 1000}, true, true},
		{"falling", []float64{1000, 100, 10, 1}, true, false},
		{"flat at the top, falling at the end", []float64{1000, 990, 980, 1}, false, true},
	} {
		ch := newLogLog("x", "y", nil)
		var xy plotter.XYs
		for i, y := range c.ys {
			xy = append(xy, plotter.XY{X: float64(int(1) << i), Y: y})
		}
		if err := addLine(ch, "a", xy, color.Black, false); err != nil {
			t.Fatal(err)
		}
		ch.placeLegend()
		if ch.Legend.Top != c.top || ch.Legend.Left != c.left {
			t.Errorf("%s: legend top %v left %v, want %v %v", c.name, ch.Legend.Top, ch.Legend.Left, c.top, c.left)
		}
	}
}
