package worker

import (
	"strconv"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/metrics"
	"github.com/downpour-ml/downpour/internal/wire"
)

// progressReport sums a rank's steps between its progress reports: a report
// covers every step of its logging interval, not just its last one.
type progressReport struct {
	loss, aux float64 // summed over count
	count     int64   // tokens (Seq2Seq), steps (GAN) or examples (synthetic)
	nanos     int64   // wall time
}

// step records step s of rank, which took took, with its loss and aux
// summed over count things; it sets the worker's metrics and publishes the
// report at every LogEvery-th step of the rank and at its last.
func (p *progressReport) step(cfg Config, spec *job.Spec, rank int, s at, took time.Duration, loss, aux float64, count int64) {
	p.loss += loss
	p.aux += aux
	p.count += count
	p.nanos += took.Nanoseconds()
	r := strconv.Itoa(rank)
	metrics.WorkerSteps.WithLabelValues(spec.Name, r).Inc()
	metrics.StepSeconds.WithLabelValues(spec.Name, r).Observe(took.Seconds())
	if count > 0 {
		metrics.WorkerLoss.WithLabelValues(spec.Name, r).Set(loss / float64(count))
	}
	if rank, at := s.progress(spec, rank); at%spec.LogEvery == 0 || s.Last {
		data, _ := wire.Encode(&wire.Progress{V: wire.Version, Rank: rank, Step: at, Loss: p.loss, Aux: p.aux,
			Tokens: p.count, Nanos: p.nanos})
		*p = progressReport{}
		if err := cfg.NATS.Publish(wire.ProgressSubject(spec.Name), data); err != nil {
			cfg.Log.Warn("progress report failed", "err", err)
		}
	}
}
