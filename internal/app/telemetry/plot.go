package telemetry

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// ReadMetrics reads a metrics.jsonl file: its training and evaluation
// records, each sorted by step. A step recorded more than once (a job rolled
// back to a checkpoint and ran it again) keeps its last record. A line that
// is not a record is an error naming the line.
func ReadMetrics(path string) ([]Record, []EvalRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	train, evals := map[int64]Record{}, map[int64]EvalRecord{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		var kind struct {
			Kind string `json:"kind"`
		}
		err := json.Unmarshal(sc.Bytes(), &kind)
		switch {
		case err != nil:
		case kind.Kind == "train":
			err = keep(sc.Bytes(), train, func(r Record) int64 { return r.Step })
		case kind.Kind == "eval":
			err = keep(sc.Bytes(), evals, func(r EvalRecord) int64 { return r.Step })
		default:
			err = fmt.Errorf("a record of kind %q, want train or eval", kind.Kind)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return byStep(train), byStep(evals), nil
}

// keep decodes a record into byStep under its step, which must not be
// negative.
func keep[R any](line []byte, byStep map[int64]R, step func(R) int64) error {
	var r R
	if err := json.Unmarshal(line, &r); err != nil {
		return err
	}
	s := step(r)
	if s < 0 {
		return fmt.Errorf("step %d", s)
	}
	byStep[s] = r
	return nil
}

// byStep lists records in the order of their steps.
func byStep[R any](m map[int64]R) []R {
	steps := slices.Sorted(maps.Keys(m))
	out := make([]R, len(steps))
	for i, s := range steps {
		out[i] = m[s]
	}
	return out
}

// PaperParzen is the GAN paper's Parzen-window estimate on the MNIST test
// set (Goodfellow et al. 2014, Table 1: 225 ± 2).
const PaperParzen = 225

// ErrNoRecords is returned by Curves for a metrics file with nothing to plot.
var ErrNoRecords = errors.New("no records to plot")

// Curves draws a run's curves from its metrics file into dir: loss.png (the
// training loss; for a GAN, the discriminator's and the generator's) and,
// once there are evaluations, eval.png (held-out BLEU and exact match; for a
// GAN, the Parzen-window log-likelihood with its standard error). The x axis
// is epochs when stepsPerEpoch > 0, else steps. Each file is replaced
// atomically, so a reader never sees half a picture.
func Curves(metrics, dir string, stepsPerEpoch float64) error {
	// The evaluator and the dashboard both draw into a run directory;
	// their temporary files must not interleave.
	curvesMu.Lock()
	defer curvesMu.Unlock()
	rs, es, err := ReadMetrics(metrics)
	if err != nil {
		return err
	}
	if len(rs) == 0 && len(es) == 0 {
		return fmt.Errorf("%s: %w", metrics, ErrNoRecords)
	}
	ax := axis{label: "step", x: func(step int64) float64 { return float64(step) }}
	if stepsPerEpoch > 0 {
		ax = axis{label: fmt.Sprintf("epoch (%s steps each)", strconv.FormatFloat(stepsPerEpoch, 'f', -1, 64)),
			x: func(step int64) float64 { return float64(step) / stepsPerEpoch }}
	}
	gan := false
	for _, e := range es {
		gan = gan || e.Samples > 0
	}
	for _, r := range rs {
		gan = gan || r.GLoss != 0
	}
	if len(rs) > 0 {
		p, err := lossPlot(ax, rs, es, gan)
		if err != nil {
			return err
		}
		if err := save(p, filepath.Join(dir, "loss.png")); err != nil {
			return err
		}
	}
	if len(es) == 0 {
		return nil
	}
	p := plot.New()
	p.X.Label.Text = ax.label
	if gan {
		err = addParzen(p, ax, es)
	} else {
		err = addBLEU(p, ax, es)
	}
	if err != nil {
		return err
	}
	// Evaluations rise towards the top right (BLEU, exact match, the
	// Parzen estimate and the paper's line): the legend goes along the
	// bottom, where it hides no point.
	return saveLegend(p, filepath.Join(dir, "eval.png"), false)
}

// axis is the curves' x axis: steps, or epochs.
type axis struct {
	label string
	x     func(step int64) float64
}

// lossPlot draws the training losses (D's and G's for a GAN; for Seq2Seq
// the training loss and the held-out loss of the evaluations).
func lossPlot(ax axis, rs []Record, es []EvalRecord, gan bool) (*plot.Plot, error) {
	p := plot.New()
	p.X.Label.Text, p.Y.Label.Text = ax.label, "loss"
	loss, gLoss := make(plotter.XYs, len(rs)), make(plotter.XYs, len(rs))
	for i, r := range rs {
		loss[i] = plotter.XY{X: ax.x(r.Step), Y: r.Loss}
		gLoss[i] = plotter.XY{X: ax.x(r.Step), Y: r.GLoss}
	}
	if gan {
		p.Title.Text = "GAN training losses"
		return p, plotutil.AddLines(p, "D loss", finite(loss), "G loss", finite(gLoss))
	}
	p.Title.Text = "training loss (per target token)"
	if err := plotutil.AddLines(p, "train", finite(loss)); err != nil {
		return nil, err
	}
	if len(es) > 0 {
		held := make(plotter.XYs, len(es))
		for i, e := range es {
			held[i] = plotter.XY{X: ax.x(e.Step), Y: e.EvalLoss}
		}
		// The second colour and glyph: plotutil would start this call's
		// lines at the first, the training loss's.
		l, pts, err := plotter.NewLinePoints(finite(held))
		if err != nil {
			return nil, err
		}
		l.Color, pts.Color, pts.Shape = plotutil.Color(1), plotutil.Color(1), plotutil.Shape(1)
		p.Add(l, pts)
		p.Legend.Add("held out", l, pts)
	}
	return p, nil
}

// addParzen draws the GAN's Parzen estimates with their standard errors,
// and, when they are the paper's estimate on the test images, the paper's
// number as a line.
func addParzen(p *plot.Plot, ax axis, es []EvalRecord) error {
	p.Title.Text = "Parzen-window log-likelihood of held-out images"
	p.Y.Label.Text = "nats"
	test := true
	for _, e := range es {
		test = test && e.Set == "test"
	}
	if test { // the paper's estimate: show the paper's number
		p.Title.Text = "Parzen-window log-likelihood of the MNIST test images"
		lo, hi := ax.x(es[0].Step), ax.x(es[len(es)-1].Step)
		if lo == hi {
			lo = 0
		}
		paper, err := plotter.NewLine(plotter.XYs{{X: lo, Y: PaperParzen}, {X: hi, Y: PaperParzen}})
		if err != nil {
			return err
		}
		paper.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		paper.Color = color.RGBA{B: 220, A: 255}
		p.Add(paper)
		p.Legend.Add(fmt.Sprintf("paper: %d ± 2", PaperParzen), paper)
	}
	var pts plotter.XYs
	var errs plotter.YErrors
	for _, e := range es {
		if pt := (plotter.XYs{{X: ax.x(e.Step), Y: e.Parzen}}); len(finite(pt)) == 1 && !math.IsNaN(e.ParzenSE) && !math.IsInf(e.ParzenSE, 0) {
			pts = append(pts, pt[0])
			errs = append(errs, struct{ Low, High float64 }{e.ParzenSE, e.ParzenSE})
		}
	}
	if err := plotutil.AddLinePoints(p, fmt.Sprintf("Parzen estimate (%d samples)", es[len(es)-1].Samples), pts); err != nil {
		return err
	}
	bars, err := plotter.NewYErrorBars(struct {
		plotter.XYer
		plotter.YErrorer
	}{pts, errs})
	if err != nil {
		return err
	}
	bars.Color = color.Gray{Y: 96}
	p.Add(bars)
	return nil
}

// addBLEU draws Seq2Seq's held-out BLEU and exact match.
func addBLEU(p *plot.Plot, ax axis, es []EvalRecord) error {
	p.Title.Text = "held-out evaluation"
	p.Y.Label.Text = "%"
	bleu, exact := make(plotter.XYs, len(es)), make(plotter.XYs, len(es))
	for i, e := range es {
		bleu[i] = plotter.XY{X: ax.x(e.Step), Y: e.BLEU}
		exact[i] = plotter.XY{X: ax.x(e.Step), Y: 100 * e.ExactMatch}
	}
	return plotutil.AddLinePoints(p, "BLEU", finite(bleu), "exact match", finite(exact))
}

var curvesMu sync.Mutex

// finite keeps the points whose coordinates are finite (a diverged run logs
// NaN losses; they are left out of the picture).
func finite(xys plotter.XYs) plotter.XYs {
	out := xys[:0:0]
	for _, p := range xys {
		if !math.IsNaN(p.X) && !math.IsInf(p.X, 0) && !math.IsNaN(p.Y) && !math.IsInf(p.Y, 0) {
			out = append(out, p)
		}
	}
	return out
}

func save(p *plot.Plot, path string) (err error) {
	return saveLegend(p, path, true)
}

// saveLegend is save with the legend along the top or the bottom edge.
func saveLegend(p *plot.Plot, path string, top bool) (err error) {
	// The plotting library panics on some degenerate axes; a picture is not
	// worth a crash of the run that draws it.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("drawing %s: %v", path, r)
		}
	}()
	p.Legend.Top = top
	tmp := path + ".tmp.png"
	if err := p.Save(16*vg.Centimeter, 10*vg.Centimeter, tmp); err != nil {
		return fmt.Errorf("drawing %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}
