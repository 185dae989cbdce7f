package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/downpour-ml/downpour/internal/app/telemetry"
)

// isTerminal reports whether w is a terminal: train then shows a progress
// bar instead of a line per logged step.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progressBar is a job's progress on a terminal: steps done of the total, a
// bar, the ETA, the loss and the throughput, redrawn in place. It is a
// telemetry.Display, so the collector feeds it the training records, and an
// io.Writer, whose lines (evaluations, messages) print above the bar.
type progressBar struct {
	out  io.Writer
	p    *mpb.Progress
	bar  *mpb.Bar
	unit string // what the throughput counts: tokens or examples

	mu   sync.Mutex // guards info and last
	info string
	last int64 // the bar's position

	closed sync.Once
}

// newProgressBar draws a bar of total steps, starting at from, on out
// (forced to redraw as a terminal would: tests draw it into a buffer); its
// throughput counts unit.
func newProgressBar(out io.Writer, total, from int64, unit string) *progressBar {
	b := &progressBar{out: out, unit: unit, p: mpb.New(mpb.WithOutput(out), mpb.WithAutoRefresh(), mpb.WithWidth(100))}
	b.bar = b.p.New(total, mpb.BarStyle().Lbound("[").Filler("=").Tip(">").Padding(" ").Rbound("]"),
		mpb.PrependDecorators(
			decor.Name("step "),
			decor.CountersNoUnit("%d/%d", decor.WCSyncWidth),
		),
		mpb.AppendDecorators(
			decor.OnComplete(decor.EwmaETA(decor.ET_STYLE_GO, 30, decor.WCSyncWidth), "done"),
			decor.Any(func(decor.Statistics) string {
				b.mu.Lock()
				defer b.mu.Unlock()
				return b.info
			}),
		),
	)
	b.bar.SetCurrent(from)
	b.last = from
	return b
}

// Train moves the bar to the record's step and shows its loss and rate.
func (b *progressBar) Train(r telemetry.Record, _ int64) {
	b.mu.Lock()
	n := r.Step - b.last
	b.last = r.Step
	if r.GLoss != 0 {
		b.info = fmt.Sprintf("  D loss %.4f  G loss %.4f  %.1f steps/s", r.Loss, r.GLoss, r.StepsPerSec)
	} else {
		b.info = fmt.Sprintf("  loss %.4f  %.1f steps/s  %.0f %s/s", r.Loss, r.StepsPerSec, r.TokensPerSec, b.unit)
	}
	b.mu.Unlock()
	if r.StepsPerSec > 0 && n > 0 {
		// The ETA's moving average is fed the time the n steps took.
		b.bar.EwmaSetCurrent(r.Step, time.Duration(float64(n)/r.StepsPerSec*float64(time.Second)))
	} else {
		b.bar.SetCurrent(r.Step)
	}
}

// Write prints p above the bar; once the bar is complete (the last step's
// evaluation and the final messages come after it), below it.
func (b *progressBar) Write(p []byte) (int, error) {
	if b.bar.Completed() {
		b.Close()
	} else if n, err := b.p.Write(p); err == nil {
		return n, nil
	}
	return b.out.Write(p)
}

// Close leaves the bar where it is (complete or not) and stops redrawing.
func (b *progressBar) Close() {
	b.closed.Do(func() {
		if !b.bar.Completed() {
			b.bar.Abort(false)
		}
		b.p.Wait()
	})
}
