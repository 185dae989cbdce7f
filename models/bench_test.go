package models

import (
	"math/rand/v2"
	"runtime"
	"syscall"
	"testing"

	"gonum.org/v1/gonum/blas/gonum"
)

// The Seq2Seq benchmark workloads: one full training step (forward,
// backward, global-norm clip at 5, SGD update) of a Seq2Seq model, reported
// as target tokens per second. testdata/torch_peer.py times the same steps
// with PyTorch.
var (
	w1 = Seq2SeqConfig{SrcVocab: 4000, TgtVocab: 4000, Embed: 256, Hidden: 256, Layers: 2}
	w2 = Seq2SeqConfig{SrcVocab: 16000, TgtVocab: 8000, Embed: 512, Hidden: 512, Layers: 4}
)

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

func benchStep(b *testing.B, cfg Seq2SeqConfig, size, length int) {
	m := NewSeq2Seq[float32](cfg)
	m.Init(1)
	batch := benchBatch(cfg, size, length)
	step := func() {
		m.Loss(batch, true)
		ClipGlobalNorm(m.Grads(), 5)
		w, g := m.Params(), m.Grads() // SGD at 0.7, in the shards' vector kernel
		gonum.Implementation{}.Saxpy(len(w), -0.7, g, 1, w, 1)
	}
	step() // warm up: first allocations
	b.ResetTimer()
	for b.Loop() {
		step()
	}
	b.ReportMetric(float64(size*length*b.N)/b.Elapsed().Seconds(), "tokens/s")
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		b.ReportMetric(float64(ru.Maxrss)/1024, "peak_RSS_MB") // the process's peak: run one workload per process to attribute it
	}
}

// BenchmarkW1: 2 layers, hidden and embedding 256, vocabularies 4000/4000,
// batch 64, lengths 12.
func BenchmarkW1(b *testing.B) { benchStep(b, w1, 64, 12) }

// BenchmarkW2: 4 layers, hidden and embedding 512, vocabularies 16000/8000,
// batch 128, lengths 20: the paper's layout at half width.
func BenchmarkW2(b *testing.B) { benchStep(b, w2, 128, 20) }

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
		ClipGlobalNorm(m.Grads(), 5)
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
