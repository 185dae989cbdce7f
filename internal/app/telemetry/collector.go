// Package telemetry turns the progress that workers publish on NATS into what
// a person watches: a line per logged step on the console, one JSON object
// per logged step in metrics.jsonl, and the same values as TensorBoard
// scalars in an event file beside it.
package telemetry

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/metrics"
	"github.com/downpour-ml/downpour/internal/wire"
)

// Record is one line of metrics.jsonl: a step, averaged over the ranks.
type Record struct {
	Kind         string  `json:"kind"`             // "train"
	Step         int64   `json:"step"`             // the step's number counted from 1 (steps done), as the console and the evaluations count
	Loss         float64 `json:"loss"`             // mean loss per target token (GAN: per step, the discriminator's), all ranks, since the previous record
	GLoss        float64 `json:"g_loss,omitempty"` // GAN: the generator's mean loss per step
	Tokens       int64   `json:"tokens"`           // target tokens since the previous record, all ranks
	Ranks        int     `json:"ranks"`
	StepSeconds  float64 `json:"busy_seconds"`  // slowest rank's wall time since the previous record
	StepsPerSec  float64 `json:"steps_per_sec"` // since the previous record
	TokensPerSec float64 `json:"tokens_per_sec"`
	Elapsed      float64 `json:"elapsed_seconds"`
	Time         string  `json:"time"`
}

// Collector subscribes to a job's progress and writes a Record once every
// rank has reported a step.
type Collector struct {
	job     string
	ranks   int
	steps   int64
	start   time.Time
	unit    string // what the workers' reports count: "tokens" or "examples"
	sub     *nats.Subscription
	console io.Writer

	mu       sync.Mutex // guards everything below
	file     *os.File
	enc      *json.Encoder
	events   *EventWriter
	gan      bool                     // a record had a generator's loss: losses are tagged d_loss and g_loss
	pending  map[int64]*pendingRecord // by the workers' step number
	held     []*pendingRecord         // complete, waiting for earlier steps; in step order
	first    *Record
	last     *Record
	lastTime time.Time
	records  int
	closed   bool
	evals    []EvalRecord
	err      error
}

// A Display shows a job's progress as it comes, in place of the console's
// line per record (a progress bar on a terminal). A console passed to
// NewCollector that is a Display gets the training records this way; other
// lines are written to it as to any console.
type Display interface {
	io.Writer
	Train(r Record, steps int64)
}

// NewCollector starts collecting progress of job (ranks ranks, steps steps),
// appending records to the file at path, writing them as TensorBoard scalars
// to a new event file in path's directory, and printing them to console (nil
// for none).
func NewCollector(nc *nats.Conn, job string, ranks int, steps int64, path, unit string, console io.Writer) (*Collector, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	c := &Collector{job: job, ranks: ranks, steps: steps, start: time.Now(), unit: unit, console: console, file: f,
		enc: json.NewEncoder(f), pending: map[int64]*pendingRecord{}, lastTime: time.Now()}
	if c.events, err = NewEventWriter(filepath.Dir(path), c.start); err != nil {
		f.Close()
		return nil, fmt.Errorf("metrics: %w", err)
	}
	c.sub, err = nc.Subscribe(wire.ProgressSubject(job), c.onProgress)
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		f.Close()
		c.events.Close()
		return nil, fmt.Errorf("metrics: subscribing to progress: %w", err)
	}
	return c, nil
}

func (c *Collector) onProgress(m *nats.Msg) {
	p, err := wire.DecodeProgress(m.Data)
	if err != nil || int(p.Rank) >= c.ranks || math.IsNaN(p.Loss) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	pr := c.pending[p.Step]
	if pr == nil {
		pr = &pendingRecord{r: &Record{Kind: "train", Step: p.Step + 1}, seen: map[uint32]bool{}} // the workers number steps from 0
		c.pending[p.Step] = pr
	}
	if pr.seen[p.Rank] {
		return // a task run again after its worker died reports its steps again: count each rank once
	}
	pr.seen[p.Rank] = true
	r := pr.r
	r.Loss += p.Loss
	r.GLoss += p.Aux
	r.Tokens += p.Tokens
	r.Ranks++
	r.StepSeconds = math.Max(r.StepSeconds, float64(p.Nanos)/1e9)
	if r.Ranks < c.ranks {
		c.release(time.Now(), false)
		return
	}
	delete(c.pending, p.Step)
	pr.completed = time.Now()
	i, _ := slices.BinarySearchFunc(c.held, r.Step, func(h *pendingRecord, step int64) int { return cmp.Compare(h.r.Step, step) })
	c.held = slices.Insert(c.held, i, pr)
	c.release(pr.completed, false)
}

// pendingRecord is a step's record while its ranks report, and once
// complete while it waits for the steps before it.
type pendingRecord struct {
	r         *Record
	seen      map[uint32]bool // the ranks (data shards, with tasks) that reported
	completed time.Time
}

// holdFor bounds how long a complete record waits for an earlier step's
// (whose report may have been lost) before it is written anyway.
var holdFor = 5 * time.Second

// release writes the complete records in step order: each once no earlier
// step is still waiting for reports, or once it has waited holdFor (all of
// them when force). When the data goes out as tasks, data shards reach a
// step at different times, so a later step can complete first.
func (c *Collector) release(now time.Time, force bool) {
	for len(c.held) > 0 {
		h := c.held[0]
		if !force && now.Sub(h.completed) < holdFor && c.earlierPending(h.r.Step) {
			return
		}
		c.held = c.held[1:]
		c.write(h.r, h.completed)
	}
}

// earlierPending reports whether a step before step still waits for
// reports.
func (c *Collector) earlierPending(step int64) bool {
	for _, pr := range c.pending {
		if pr.r.Step < step {
			return true
		}
	}
	return false
}

// write finishes record r, complete at time at, and writes it.
func (c *Collector) write(r *Record, at time.Time) {
	if r.Tokens > 0 {
		r.Loss /= float64(r.Tokens)
		r.GLoss /= float64(r.Tokens)
	}
	if dt := at.Sub(c.lastTime).Seconds(); c.last != nil && r.Step > c.last.Step && dt > 0 {
		r.StepsPerSec = float64(r.Step-c.last.Step) / dt
		r.TokensPerSec = float64(r.Tokens) / dt
	} else if r.StepSeconds > 0 {
		r.StepsPerSec = 1 / r.StepSeconds
		r.TokensPerSec = float64(r.Tokens) / r.StepSeconds
	}
	r.Elapsed = at.Sub(c.start).Seconds()
	r.Time = at.UTC().Format(time.RFC3339Nano)
	if c.first == nil {
		c.first = r
	}
	if c.last == nil || r.Step >= c.last.Step {
		c.last, c.lastTime = r, at
	}
	c.records++
	metrics.JobStep.WithLabelValues(c.job).Set(float64(r.Step))
	metrics.JobLoss.WithLabelValues(c.job).Set(r.Loss)
	metrics.JobStepsPerSec.WithLabelValues(c.job).Set(r.StepsPerSec)
	if err := c.enc.Encode(r); err != nil && c.err == nil {
		c.err = err
	}
	c.gan = c.gan || r.GLoss != 0
	var err error
	if c.gan {
		err = c.events.Scalars(r.Step, at, Scalar{"train/d_loss", r.Loss}, Scalar{"train/g_loss", r.GLoss},
			Scalar{"train/steps_per_sec", r.StepsPerSec})
	} else {
		err = c.events.Scalars(r.Step, at, Scalar{"train/loss", r.Loss}, Scalar{"train/steps_per_sec", r.StepsPerSec},
			Scalar{"train/" + c.unit + "_per_sec", r.TokensPerSec})
	}
	if err != nil && c.err == nil {
		c.err = err
	}
	if d, ok := c.console.(Display); ok {
		d.Train(*r, c.steps)
	} else if c.console != nil {
		if r.GLoss != 0 {
			fmt.Fprintf(c.console, "step %*d/%d  D loss %.4f  G loss %.4f  %.1f steps/s\n",
				len(fmt.Sprint(c.steps)), r.Step, c.steps, r.Loss, r.GLoss, r.StepsPerSec)
		} else {
			fmt.Fprintf(c.console, "step %*d/%d  loss %.4f  %.1f steps/s  %.0f %s/s\n",
				len(fmt.Sprint(c.steps)), r.Step, c.steps, r.Loss, r.StepsPerSec, r.TokensPerSec, c.unit)
		}
	}
}

// EvalRecord is a line of metrics.jsonl holding a held-out evaluation.
type EvalRecord struct {
	Kind       string  `json:"kind"` // "eval"
	Step       int64   `json:"step"`
	EvalLoss   float64 `json:"eval_loss"`
	Perplexity float64 `json:"perplexity"`
	BLEU       float64 `json:"bleu"`
	ExactMatch float64 `json:"exact_match"`
	HeldOut    int     `json:"held_out"`
	// GAN: the Parzen-window log-likelihood of held-out images under samples.
	Parzen   float64 `json:"parzen,omitempty"`
	ParzenSE float64 `json:"parzen_se,omitempty"`
	Sigma    float64 `json:"sigma,omitempty"`
	Samples  int     `json:"samples,omitempty"`
	// Set is the images the estimate is on: "validation" (the
	// during-training monitor) or "test" (the paper's full estimate).
	Set     string  `json:"set,omitempty"`
	Elapsed float64 `json:"elapsed_seconds"`
	Time    string  `json:"time"`
}

// WriteEval appends an evaluation record (and prints it).
func (c *Collector) WriteEval(r EvalRecord) {
	now := time.Now()
	r.Kind, r.Elapsed, r.Time = "eval", now.Sub(c.start).Seconds(), now.UTC().Format(time.RFC3339Nano)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.evals = append(c.evals, r)
	if r.Samples > 0 {
		metrics.JobEval.WithLabelValues(c.job, "parzen").Set(r.Parzen)
	} else {
		metrics.JobEval.WithLabelValues(c.job, "loss").Set(r.EvalLoss)
		metrics.JobEval.WithLabelValues(c.job, "bleu").Set(r.BLEU)
		metrics.JobEval.WithLabelValues(c.job, "exact_match").Set(r.ExactMatch)
	}
	if err := c.enc.Encode(r); err != nil && c.err == nil {
		c.err = err
	}
	if err := c.events.Scalars(r.Step, now, r.scalars()...); err != nil && c.err == nil {
		c.err = err
	}
	switch {
	case c.console == nil:
	case r.Samples > 0:
		fmt.Fprintf(c.console, "eval at step %d: Parzen log-likelihood %.1f ± %.1f (sigma %.3f, %d samples, %d %s images)\n",
			r.Step, r.Parzen, r.ParzenSE, r.Sigma, r.Samples, r.HeldOut, cmp.Or(r.Set, "held-out"))
	case r.HeldOut == 0: // the synthetic model: a loss alone
		fmt.Fprintf(c.console, "eval at step %d: loss %.6f\n", r.Step, r.EvalLoss)
	default:
		fmt.Fprintf(c.console, "eval at step %d: loss %.4f  perplexity %.2f  BLEU %.2f  exact match %.1f%% of %d\n",
			r.Step, r.EvalLoss, r.Perplexity, r.BLEU, 100*r.ExactMatch, r.HeldOut)
	}
}

// scalars are the values of an evaluation as TensorBoard scalars: a GAN's
// Parzen estimate is tagged with the images it is on, since the monitor on
// validation images and the paper's estimate on the test set differ.
func (r *EvalRecord) scalars() []Scalar {
	switch {
	case r.Samples > 0:
		set := "eval/parzen_" + cmp.Or(r.Set, "held_out")
		return []Scalar{{set, r.Parzen}, {set + "_stderr", r.ParzenSE}, {set + "_sigma", r.Sigma}}
	case r.HeldOut == 0:
		return []Scalar{{"eval/loss", r.EvalLoss}}
	}
	return []Scalar{{"eval/loss", r.EvalLoss}, {"eval/perplexity", r.Perplexity}, {"eval/bleu", r.BLEU},
		{"eval/exact_match", r.ExactMatch}}
}

// Evals returns the evaluation records written so far.
func (c *Collector) Evals() []EvalRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]EvalRecord(nil), c.evals...)
}

// Span returns the first and the last record written (nil before any).
func (c *Collector) Span() (first, last *Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.first, c.last
}

// Records is the number of records written so far.
func (c *Collector) Records() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.records
}

// WaitStep waits up to timeout until the record of step (counted from 1),
// or of a later one, has been written,
// and reports whether it was.
func (c *Collector) WaitStep(step int64, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		if !c.closed {
			c.release(time.Now(), false)
		}
		ok := c.last != nil && c.last.Step >= step
		c.mu.Unlock()
		if ok || time.Now().After(deadline) {
			return ok
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Close stops collecting and closes the metrics file.
func (c *Collector) Close() error {
	c.sub.Unsubscribe()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return c.err
	}
	c.release(time.Now(), true)
	c.closed = true
	if err := c.file.Close(); err != nil && c.err == nil {
		c.err = err
	}
	if err := c.events.Close(); err != nil && c.err == nil {
		c.err = err
	}
	return c.err
}
