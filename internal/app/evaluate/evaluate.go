// Package evaluate scores a job's parameters on its held-out data, as the
// coordinator does during training and 'downpour eval' does afterwards:
// held-out loss, BLEU and exact match for Seq2Seq; for the GAN, the
// Parzen-window estimate of the paper and grids of samples; for the
// synthetic load model, its loss at the targets' mean.
package evaluate

import (
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/downpour-ml/downpour/internal/app/telemetry"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/shard"
)

// A Scorer evaluates the parameters after step; false when there is nothing
// to evaluate them on.
type Scorer func(step int64, params []float32) (telemetry.EvalRecord, bool)

// ParzenSamples is how many samples the paper's Parzen-window estimate
// draws.
const ParzenSamples = 10000

// TranslationsShown is how many held-out translations each evaluation
// writes beside their references.
const TranslationsShown = 10

// NewScorer prepares the evaluation of the job's model, writing into the run
// directory out: for Seq2Seq, the first held-out translations of each
// evaluation in translations/step-<N>.txt; for the GAN, a grid of 100
// samples in samples/step-<N>.png (the same noise every time, so the grids
// show one set of samples evolve).
func NewScorer(spec *job.Spec, out string) (Scorer, error) {
	switch spec.Model {
	case "gan":
		return ganScorer(spec, out)
	case job.Synthetic:
		return syntheticScorer(spec), nil
	}
	data, err := spec.OpenData()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(out, "translations"), 0o755); err != nil {
		return nil, err
	}
	return func(step int64, params []float32) (telemetry.EvalRecord, bool) {
		held, err := data.HeldOut()
		if err != nil {
			slog.Warn("reading the held-out pairs", "err", err)
			return telemetry.EvalRecord{}, false
		}
		if len(held) == 0 {
			return telemetry.EvalRecord{}, false
		}
		r := Seq2Seq(spec, data, params, held)
		if err := WriteTranslations(filepath.Join(out, "translations", fmt.Sprintf("step-%d.txt", step)), data, held, r.Hyps, TranslationsShown); err != nil {
			slog.Warn("writing held-out translations", "err", err)
		}
		return telemetry.EvalRecord{EvalLoss: r.Loss, Perplexity: r.Perplexity, BLEU: r.BLEU, ExactMatch: r.ExactMatch, HeldOut: r.Sentences}, true
	}, nil
}

// syntheticScorer scores the load model by its loss at the targets' mean
// (c = 1, the middle of SyntheticScale's range): the expected loss of a
// batch, less the batches' own spread.
func syntheticScorer(spec *job.Spec) Scorer {
	u := make([]float32, spec.Synthetic.Params)
	models.SyntheticDirection(u, spec.Seed)
	g := make([]float32, len(u))
	return func(step int64, params []float32) (telemetry.EvalRecord, bool) {
		return telemetry.EvalRecord{EvalLoss: models.SyntheticGrad(g, params, u, 1)}, true
	}
}

func ganScorer(spec *job.Spec, out string) (Scorer, error) {
	m, err := spec.OpenMNIST()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(out, "samples"), 0o755); err != nil {
		return nil, err
	}
	side := int(math.Round(math.Sqrt(float64(spec.GAN.Pixels))))
	return func(step int64, params []float32) (telemetry.EvalRecord, bool) {
		if side*side == spec.GAN.Pixels {
			grid := models.Sample(spec.GAN, params, 100, rand.New(rand.NewPCG(spec.Seed, 0x9e1d)))
			if err := WriteGrid(filepath.Join(out, "samples", fmt.Sprintf("step-%d.png", step)), grid, 100, side); err != nil {
				slog.Warn("writing a sample grid", "err", err)
			}
		}
		if spec.ParzenFull {
			r := FullParzen(spec, params, m, ParzenSamples)
			return telemetry.EvalRecord{Parzen: r.Mean, ParzenSE: r.StdErr, Sigma: r.Sigma, Samples: ParzenSamples, HeldOut: len(m.Test), Set: "test"}, true
		}
		r, n := parzenMonitor(spec, params, m.Valid)
		return telemetry.EvalRecord{Parzen: r.Mean, ParzenSE: r.StdErr, Sigma: r.Sigma, Samples: n, HeldOut: len(m.Valid) / 10, Set: "validation"}, true
	}, nil
}

// WriteTranslations writes the first n held-out examples' sources,
// references and translations (hyps, by example) to path, replacing it
// atomically.
func WriteTranslations(path string, data shard.Dataset, held []shard.Example, hyps [][]int32, n int) error {
	var b strings.Builder
	for i, ex := range held[:min(n, len(held), len(hyps))] {
		fmt.Fprintf(&b, "source:      %s\nreference:   %s\ntranslation: %s\n\n",
			strings.Join(data.SrcWords(ex.Src), " "), strings.Join(data.TgtWords(ex.Tgt), " "), strings.Join(data.TgtWords(hyps[i]), " "))
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// FullParzen is the Parzen-window estimate as the GAN paper computed it: n
// samples (the paper: 10,000), drawn from noise from the job's seed; sigma
// from 10 values logspaced over [0.1, 1], by the mean log-likelihood of the
// first 1,000 validation images; mean and standard error over the test
// images.
func FullParzen(spec *job.Spec, params []float32, m *shard.MNIST, n int) models.ParzenResult {
	samples := models.Sample(spec.GAN, params, n, rand.New(rand.NewPCG(spec.Seed, 0xe7a1)))
	return models.Parzen(samples, shard.Flatten(m.Valid[:1000]), shard.Flatten(m.Test), spec.GAN.Pixels, models.SigmaGrid())
}

// parzenMonitor is the during-training estimate: 1,000 samples from noise
// drawn from the seed, sigma chosen on 200 validation images, the estimate
// on 1,000 others (a tenth of the validation set). The paper's full
// evaluation uses 10,000 of each.
func parzenMonitor(spec *job.Spec, params []float32, valid [][]float32) (models.ParzenResult, int) {
	const n = 1000
	samples := models.Sample(spec.GAN, params, n, rand.New(rand.NewPCG(spec.Seed, 0x5a3)))
	return models.Parzen(samples, shard.Flatten(valid[:200]), shard.Flatten(valid[200:1200]), spec.GAN.Pixels, models.SigmaGrid()), n
}

// Seq2Seq scores parameters on examples with greedy decoding.
func Seq2Seq(spec *job.Spec, data shard.Dataset, params []float32, examples []shard.Example) models.EvalResult {
	m := models.NewSeq2SeqOn(spec.Seq2Seq, params) // (no gradients, no copy: a 384M model's evaluation holds it once)
	src, tgt := make([][]int32, len(examples)), make([][]int32, len(examples))
	for i, ex := range examples {
		src[i], tgt[i] = ex.Src, ex.Tgt
	}
	return models.Evaluate(m, src, tgt, data.Special(), models.EvalOptions{Batch: max(spec.Batch, 32),
		MaxLen: func(n int) int { return 2*n + 10 }, Words: data.TgtWords})
}
