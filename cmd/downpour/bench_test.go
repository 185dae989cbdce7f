package main

import (
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/kernel/vmath"
	"github.com/downpour-ml/downpour/models"
)

// BenchmarkGANSyncStep is the distributed GAN update as the reproduction
// runs it: `downpour train --preset gan` (2 workers x 50 images, 2 shards,
// sync, the authors' simultaneous update; the embedded NATS and etcd, the
// roles in this process), beside the same update in one process with no
// parameter server (models.GAN.Step on a batch of 100, then the momentum
// update). The job's rate is read from its metrics between the records of
// steps 101 and 600 (logged every 100 from the first), so start-up and the final evaluation do not count.
// Each iteration is one job and one local run; the medians are reported.
func BenchmarkGANSyncStep(b *testing.B) {
	const from, to = 101, 600
	var dist, local []float64
	for b.Loop() {
		dir := filepath.Join(b.TempDir(), "run")
		code, stdout, stderr := runCmd(b, 10*time.Minute, "train", "--preset", "gan", "--steps", "600", "--eval-every", "0",
			"--log-every", "100", "--out", dir)
		if code != 0 {
			b.Fatalf("train: exit %d\n%s%s", code, stdout, stderr)
		}
		var t0, t1 float64
		for _, r := range readMetrics(b, filepath.Join(dir, "metrics.jsonl")) {
			switch r.Step {
			case from:
				t0 = r.Elapsed
			case to:
				t1 = r.Elapsed
			}
		}
		if !(t1 > t0 && t0 > 0) {
			b.Fatalf("no records of steps %d and %d in the metrics", from, to)
		}
		dist = append(dist, float64(to-from)/(t1-t0))
		local = append(local, localGANRate(b, 200))
	}
	d, l := medianOf(dist), medianOf(local)
	b.ReportMetric(d, "updates/s")
	b.ReportMetric(l, "local_updates/s")
	b.ReportMetric(d/l, "ratio")
}

// localGANRate times n updates of the paper's GAN in one process: the
// simultaneous step on a batch of 100 (noise and dropout masks drawn as the
// workers draw them) and SGD with momentum 0.5 and lr 0.1 on every
// parameter, as the shards apply it.
func localGANRate(b *testing.B, n int) float64 {
	const rows = 100
	c := models.PaperGAN
	m := models.NewGAN[float32](c)
	m.Init(1)
	rng := rand.New(rand.NewPCG(1, 1))
	x := make([]float32, rows*c.Pixels)
	for i := range x {
		x[i] = rng.Float32()
	}
	z := make([]float32, rows*c.Noise)
	inc := make([]float32, len(m.Params()))
	step := func() {
		c.Draw(z, rng)
		m.Step(x, z, rows, models.RandomMasks(rng, c, rows), models.RandomMasks(rng, c, rows), false)
		vmath.Momentum(m.Params(), m.Grads(), inc, 0.5, 0.1)
	}
	step()
	start := time.Now()
	for range n {
		step()
	}
	return float64(n) / time.Since(start).Seconds()
}

func medianOf(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
