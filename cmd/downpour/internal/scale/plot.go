package scale

import (
	"bufio"
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// ReadResults reads a results.jsonl file the harness wrote.
func ReadResults(path string) ([]Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rs []Result
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for line := 1; sc.Scan(); line++ {
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		rs = append(rs, r)
	}
	return rs, sc.Err()
}

// Dimension is what a sweep varies: "workers", "shards" or "params".
func Dimension(rs []Result) string {
	vary := func(f func(Result) int) bool {
		return slices.ContainsFunc(rs, func(r Result) bool { return f(r) != f(rs[0]) })
	}
	switch {
	case len(rs) == 0:
		return ""
	case vary(func(r Result) int { return r.Workers }):
		return "workers"
	case vary(func(r Result) int { return r.Shards }):
		return "shards"
	case vary(func(r Result) int { return r.Params }):
		return "params"
	}
	return ""
}

func (r Result) at(dim string) float64 {
	switch dim {
	case "workers":
		return float64(r.Workers)
	case "shards":
		return float64(r.Shards)
	}
	return float64(r.Params)
}

var modeColor = map[string]color.Color{
	"sync":  color.RGBA{R: 31, G: 119, B: 180, A: 255},
	"async": color.RGBA{R: 214, G: 39, B: 40, A: 255},
	"ssp":   color.RGBA{R: 44, G: 160, B: 44, A: 255},
}

// Plot draws the curves of a sweep along its dimension into dir:
// throughput.png (examples a second by mode; along workers, beside linear
// scaling from each mode's smallest job), wait.png (the p50 and p99 of each
// step's wait on the shards) and, along workers, etcd.png (etcd requests a
// step beside what membership needs, Membership).
func Plot(rs []Result, dir string) error {
	dim := Dimension(rs)
	if dim == "" {
		return fmt.Errorf("scale: %d results do not vary in workers, shards or params", len(rs))
	}
	label := map[string]string{"workers": "workers", "shards": "parameter-server shards", "params": "parameters (floats)"}[dim]
	modes := map[string][]Result{}
	for _, r := range rs {
		modes[r.Mode] = append(modes[r.Mode], r)
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for m := range modes {
			if !yield(m) {
				return
			}
		}
	})
	for _, m := range names {
		slices.SortFunc(modes[m], func(a, b Result) int { return int(a.at(dim) - b.at(dim)) })
	}
	var xs []float64 // the sweep's values, each a tick
	for _, r := range rs {
		if x := r.at(dim); !slices.Contains(xs, x) {
			xs = append(xs, x)
		}
	}
	tp := newLogLog(label, "examples / s", xs)
	tp.Title.Text = fmt.Sprintf("throughput (%s)", fixedOf(rs[0], dim))
	wp := newLogLog(label, "wait on the shards per step (ms)", xs)
	wp.Title.Text = fmt.Sprintf("wait on the shards (%s)", fixedOf(rs[0], dim))
	for _, m := range names {
		var xy, p50, p99, ideal plotter.XYs
		for _, r := range modes[m] {
			x := r.at(dim)
			xy = append(xy, plotter.XY{X: x, Y: r.ExamplesPerSec})
			p50 = append(p50, plotter.XY{X: x, Y: max(r.Wait.P50, 0.01)})
			p99 = append(p99, plotter.XY{X: x, Y: max(r.Wait.P99, 0.01)})
			first := modes[m][0]
			ideal = append(ideal, plotter.XY{X: x, Y: first.ExamplesPerSec * x / first.at(dim)})
		}
		if err := addLine(tp, m, xy, modeColor[m], false); err != nil {
			return err
		}
		if dim == "workers" {
			if err := addLine(tp, m+": linear", ideal, modeColor[m], true); err != nil {
				return err
			}
		}
		if err := addLine(wp, m+" p50", p50, modeColor[m], false); err != nil {
			return err
		}
		if err := addLine(wp, m+" p99", p99, modeColor[m], true); err != nil {
			return err
		}
	}
	if err := save(tp, filepath.Join(dir, "throughput.png")); err != nil {
		return err
	}
	if err := save(wp, filepath.Join(dir, "wait.png")); err != nil {
		return err
	}
	if dim != "workers" {
		return nil
	}
	return plotEtcd(modes, names, label, xs, dir)
}

// plotEtcd draws a workers sweep's etcd requests per step, beside what
// membership alone needs (etcd.png).
func plotEtcd(modes map[string][]Result, names []string, label string, xs []float64, dir string) error {
	ep := newLogLog(label, "etcd requests per step", xs)
	ep.Title.Text = "etcd requests per step, all roles"
	for _, m := range names {
		var got, want plotter.XYs
		for _, r := range modes[m] {
			got = append(got, plotter.XY{X: r.at("workers"), Y: r.EtcdPerStep})
			want = append(want, plotter.XY{X: r.at("workers"), Y: Membership(r).PerStep})
		}
		if err := addLine(ep, m, got, modeColor[m], false); err != nil {
			return err
		}
		if err := addLine(ep, m+": membership's", want, modeColor[m], true); err != nil {
			return err
		}
	}
	return save(ep, filepath.Join(dir, "etcd.png"))
}

func fixedOf(r Result, dim string) string {
	switch dim {
	case "workers":
		return fmt.Sprintf("%d shards, %d parameters, %g ms a step", r.Shards, r.Params, r.StepMs)
	case "shards":
		return fmt.Sprintf("%d workers, %d parameters, %g ms a step", r.Workers, r.Params, r.StepMs)
	}
	return fmt.Sprintf("%d workers, %d shards, %g ms a step", r.Workers, r.Shards, r.StepMs)
}

// chart is a log-log plot and the points drawn on it, for placing its
// legend where they are not.
type chart struct {
	*plot.Plot
	pts plotter.XYs
}

// newLogLog is a log-log chart, its ticks at 1, 2 and 5 times the powers
// of ten, or at xs on the x axis when given (the sweep's values).
func newLogLog(x, y string, xs []float64) *chart {
	p := plot.New()
	p.X.Label.Text, p.Y.Label.Text = x, y
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = oneTwoFive{}, oneTwoFive{}
	if len(xs) > 0 {
		var ts plot.ConstantTicks
		for _, v := range xs {
			ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
		}
		p.X.Tick.Marker = ts
	}
	p.Add(plotter.NewGrid())
	return &chart{Plot: p}
}

// oneTwoFive ticks a log axis at 1, 2 and 5 times each power of ten,
// each labelled (LogTicks labels the powers alone, two or three on an
// axis of the harness's sweeps); on an axis of a decade and a half or
// less, at 1, 1.5, 2, 3, 4, 5 and 7 times them.
type oneTwoFive struct{}

func (oneTwoFive) Ticks(lo, hi float64) []plot.Tick {
	steps := []float64{1, 2, 5}
	if math.Log10(hi/lo) <= 1.5 {
		steps = []float64{1, 1.5, 2, 3, 4, 5, 7}
	}
	var ts []plot.Tick
	for e := math.Floor(math.Log10(lo)); math.Pow(10, e) <= hi; e++ {
		for _, m := range steps {
			if v := m * math.Pow(10, e); v >= lo && v <= hi {
				ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', 4, 64)})
			}
		}
	}
	return ts
}

func addLine(c *chart, name string, xy plotter.XYs, col color.Color, dashed bool) error {
	l, pts, err := plotter.NewLinePoints(xy)
	if err != nil {
		return err
	}
	c.pts = append(c.pts, xy...)
	l.Color, pts.Color = col, col
	if dashed {
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		c.Add(l)
		c.Legend.Add(name, l)
		return nil
	}
	c.Add(l, pts)
	c.Legend.Add(name, l, pts)
	return nil
}

// placeLegend puts c's legend in the corner of the plot that holds the
// fewest of its points (on the log axes), so that it hides no curve.
func (c *chart) placeLegend() {
	x0, x1, y0, y1 := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, p := range c.pts {
		x, y := math.Log(p.X), math.Log(p.Y)
		x0, x1, y0, y1 = min(x0, x), max(x1, x), min(y0, y), max(y1, y)
	}
	var n [2][2]int // [top][left]
	for _, p := range c.pts {
		top := math.Log(p.Y) > (y0+y1)/2
		left := math.Log(p.X) < (x0+x1)/2
		n[b2i(top)][b2i(left)]++
	}
	best := [2]int{1, 1} // top left, where ties go
	for _, top := range []int{1, 0} {
		for _, left := range []int{1, 0} {
			if n[top][left] < n[best[0]][best[1]] {
				best = [2]int{top, left}
			}
		}
	}
	c.Legend.Top, c.Legend.Left = best[0] == 1, best[1] == 1
	// Inside the axes, clear of the title and the ticks.
	c.Legend.XOffs, c.Legend.YOffs = -vg.Points(8), vg.Points(8)
	if c.Legend.Left {
		c.Legend.XOffs = vg.Points(8)
	}
	if c.Legend.Top {
		c.Legend.YOffs = -vg.Points(14)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func save(c *chart, path string) (err error) {
	c.placeLegend()
	p := c.Plot
	defer func() { // the plotting library panics on some degenerate axes
		if r := recover(); r != nil {
			err = fmt.Errorf("drawing %s: %v", path, r)
		}
	}()
	tmp := path + ".tmp.png"
	if err := p.Save(16*vg.Centimeter, 11*vg.Centimeter, tmp); err != nil {
		return fmt.Errorf("drawing %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}

// What a job's etcd requests should be when etcd carries membership, data
// assignment and checkpoint records alone. The bounds hold what the
// harness's runs measured (in brackets: 16 workers and 4 shards, 20 ms
// steps, 120 steps) with room for a slow machine's retries; Membership's
// test and TestScale16x4WithFaults hold the runs to them.
const (
	// SetupPerRole bounds the requests a role process makes to join and
	// leave: its connection check, lease grant and revoke, registration,
	// its reads of the spec, the placement and its assignment, and its
	// watches, each opened and cancelled [21.3 at 16 workers and 4 shards,
	// 20 ms steps, 100 steps; 17.5 when a role watched the job's whole
	// prefix with one watch, where it now watches the state and the
	// placement with one each, and is no longer sent every other key's
	// changes].
	SetupPerRole = 24
	// KeepAlivesPerSecond is a role's lease renewals: a 3 s lease is renewed
	// every third of its TTL [0.9].
	KeepAlivesPerSecond = 1.0
	// PerTask bounds a task's requests: the coordinator's hand-out and the
	// worker's report, and the reads and watch events around them [5.2].
	PerTask = 8
	// PerCheckpointShard bounds a checkpoint's requests for each shard: the
	// shard's snapshot record, and the coordinator's checkpoint record and
	// task queue copy shared among the shards [1.3].
	PerCheckpointShard = 3
	// PerPlacementRole bounds what a new placement (after a fault) costs
	// each live role: reading it and its assignment again, and renewing
	// its watches [8].
	PerPlacementRole = 10
)

// MembershipCost is the etcd requests membership needs: in the whole job,
// and per step.
type MembershipCost struct{ Total, PerStep float64 }

// Membership is the most etcd requests the job of r should need: each
// process's setup and its keep-alives while the job runs, each task's,
// each checkpoint's for each shard, and each fault's new placement for
// every role. Nothing in it grows with the steps but the keep-alives, which
// grow with time, and the checkpoints, which come every so many steps.
func Membership(r Result) MembershipCost {
	roles := float64(r.Workers + r.Shards + 1 + len(r.Faults)) // a spare worker for each fault
	for _, f := range r.Faults {
		if f.Role == "ps" {
			roles++ // and the killed shard, started again
		}
	}
	total := roles * (SetupPerRole + KeepAlivesPerSecond*r.Seconds)
	if r.Tasks != nil {
		total += PerTask * float64(r.Tasks.Total)
	}
	if r.CheckpointEvery > 0 {
		checkpoints := float64(r.Steps/r.CheckpointEvery + int64(len(r.Faults))) // steps done again after a rollback
		total += checkpoints * PerCheckpointShard * float64(r.Shards)
	}
	total += float64(len(r.Faults)) * PerPlacementRole * roles
	return MembershipCost{Total: total, PerStep: total / float64(r.Steps)}
}
