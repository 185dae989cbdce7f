package models

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"syscall"
	"testing"

	"gonum.org/v1/gonum/blas/gonum"

	"github.com/downpour-ml/downpour/internal/kernel/vmath"
)

// The benchmark workloads (W1, W2: a Seq2Seq training step; G1: a GAN
// step), each built once here, so that BenchmarkW1, W2 and G1 time them,
// TestStepProducts lists the GEMMs they run (the shapes internal/kernel/gemm's
// benchmarks time), and testdata/torch_peer.py times the same steps with
// PyTorch.
var (
	w1 = Seq2SeqConfig{SrcVocab: 4000, TgtVocab: 4000, Embed: 256, Hidden: 256, Layers: 2}
	w2 = Seq2SeqConfig{SrcVocab: 16000, TgtVocab: 8000, Embed: 512, Hidden: 512, Layers: 4}
)

// workload is one benchmark workload: a function that builds its model and
// returns its training step, and the items (target tokens, samples) a step
// trains on.
type workload struct {
	name  string
	unit  string
	build func() (step func(), items int)
}

var workloads = []workload{
	{"W1", "tokens/s", func() (func(), int) { return seq2seqStep(w1, 64, 12) }},
	{"W2", "tokens/s", func() (func(), int) { return seq2seqStep(w2, 128, 20) }},
	{"G1", "samples/s", ganStep},
}

func benchBatch(cfg Seq2SeqConfig, size, length int) *SeqBatch {
	rng := rand.New(rand.NewPCG(0, 0))
	b := &SeqBatch{Size: size, SrcLen: length, TgtLen: length}
	for range size * length {
		b.Src = append(b.Src, int32(rng.IntN(cfg.SrcVocab)))
		b.TgtIn = append(b.TgtIn, int32(rng.IntN(cfg.TgtVocab)))
		b.TgtOut = append(b.TgtOut, int32(rng.IntN(cfg.TgtVocab)))
	}
	return b
}

// seq2seqStep is one full training step of a Seq2Seq model: forward,
// backward, global-norm clip at 5, SGD at 0.7.
func seq2seqStep(cfg Seq2SeqConfig, size, length int) (func(), int) {
	m := NewSeq2Seq[float32](cfg)
	m.Init(1)
	batch := benchBatch(cfg, size, length)
	return func() {
		m.Loss(batch, true)
		m.ClipGrads(5)
		w, g := m.Params(), m.Grads() // SGD at 0.7, in the shards' vector kernel
		gonum.Implementation{}.Saxpy(len(w), -0.7, g, 1, w, 1)
	}, size * length
}

// ganStep is one training step of the paper's MNIST GAN on a batch of 100:
// a D update, then a G update through the updated D, reusing the generator
// pass, both SGD with momentum 0.5 and lr 0.1, with fresh noise and dropout
// masks.
func ganStep() (func(), int) {
	const rows = 100
	c := PaperGAN
	m := NewGAN[float32](c)
	m.Init(1)
	rng := rand.New(rand.NewPCG(1, 1))
	real := make([]float32, rows*c.Pixels)
	for i := range real {
		real[i] = rng.Float32()
	}
	z := make([]float32, rows*c.Noise)
	masks := func() DropoutMasks[float32] { return RandomMasks(rng, c, rows) }
	vel := make([]float32, len(m.Params()))
	update := func(lo, hi int) { // SGD with momentum 0.5, lr 0.1, in the shards' vector kernel
		vmath.Momentum(m.Params()[lo:hi], m.Grads()[lo:hi], vel[lo:hi], 0.5, 0.1)
	}
	gs, n := c.GSize(), len(m.Params())
	return func() {
		for i := range z {
			z[i] = (2*rng.Float32() - 1) * float32(math.Sqrt(3))
		}
		m.DLoss(real, z, rows, masks(), masks(), true)
		update(gs, n)
		m.GLossAfterD(rows, masks(), false, true)
		update(0, gs)
	}, rows
}

func benchWorkload(b *testing.B, name string) {
	i := slices.IndexFunc(workloads, func(w workload) bool { return w.name == name })
	if i < 0 {
		b.Fatalf("no workload %s", name)
	}
	w := workloads[i]
	step, items := w.build()
	step() // warm up: first allocations
	b.ResetTimer()
	for b.Loop() {
		step()
	}
	b.ReportMetric(float64(items*b.N)/b.Elapsed().Seconds(), w.unit)
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		b.ReportMetric(float64(ru.Maxrss)/1024, "peak_RSS_MB") // the process's peak: run one workload per process to attribute it
	}
}

// BenchmarkW1: 2 layers, hidden and embedding 256, vocabularies 4000/4000,
// batch 64, lengths 12; target tokens/s.
func BenchmarkW1(b *testing.B) { benchWorkload(b, "W1") }

// BenchmarkW2: 4 layers, hidden and embedding 512, vocabularies 16000/8000,
// batch 128, lengths 20: the paper's layout at half width; target tokens/s.
func BenchmarkW2(b *testing.B) { benchWorkload(b, "W2") }

// BenchmarkG1: one D and one G update of the paper's MNIST GAN, batch 100;
// samples/s.
func BenchmarkG1(b *testing.B) { benchWorkload(b, "G1") }

// Once its buffers have grown to the batch's shape, a training step
// allocates nothing of its own (gonum's pure-Go GEMM, the noasm build's,
// allocates transient goroutine state; the assembly GEMM and the OpenBLAS
// build allocate nothing at all), and the live heap does not grow across
// steps.
func TestTrainingStepMemoryIsFlat(t *testing.T) {
	cfg := Seq2SeqConfig{SrcVocab: 50, TgtVocab: 40, Embed: 16, Hidden: 24, Layers: 2}
	m := NewSeq2Seq[float32](cfg)
	m.Init(1)
	long, short := benchBatch(cfg, 8, 9), benchBatch(cfg, 8, 4)
	step := func() {
		m.Loss(short, true)
		m.Loss(long, true)
		m.ClipGrads(5)
	}
	step()
	allocs := testing.AllocsPerRun(20, step)
	t.Logf("%s build: %v allocations per step", BLAS, allocs)
	if BLAS != "go" && allocs != 0 {
		t.Fatalf("%v allocations per step", allocs)
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	for range 10 {
		step()
	}
	before := heap()
	for range 50 {
		step()
	}
	if after := heap(); after > before+256<<10 {
		t.Fatalf("live heap grew from %d to %d bytes over 50 steps", before, after)
	}
}

// BenchmarkSoftmaxBlocks times W2's output layer, forward and backward
// (logits, cross-entropy, weight, bias and input gradients), over 1, 2 and
// 4 vocabulary blocks, side by side: the arithmetic a softmax split into
// slices of whole blocks adds in one process (smaller products, the input
// gradient added block by block). Report: the ratio of each to 1 block.
func BenchmarkSoftmaxBlocks(b *testing.B) {
	rows := 128 * 20
	for _, blocks := range []int{1, 2, 4} {
		b.Run(fmt.Sprint("blocks=", blocks), func(b *testing.B) {
			cfg := w2
			cfg.SoftmaxBlocks = blocks
			m := NewSeq2Seq[float32](cfg)
			m.Init(1)
			rng := rand.New(rand.NewPCG(1, 2))
			in := make([]float32, rows*cfg.Hidden)
			for i := range in {
				in[i] = float32(rng.NormFloat64())
			}
			labels := make([]int32, rows)
			for i := range labels {
				labels[i] = int32(rng.IntN(cfg.TgtVocab))
			}
			for b.Loop() {
				m.softmax(in, 128, labels, 1.0/128)
				m.softmaxBackward(in, 128, labels, 1.0/128)
			}
			b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}
