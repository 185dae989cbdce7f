package models

import (
	"math/rand/v2"
	"testing"
)

// The benchmark workloads of ../shared/ref/README.md: one full training step
// (forward, backward, global-norm clip at 5, SGD update) of a Seq2Seq model,
// reported as target tokens per second.
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
		w, g := m.Params(), m.Grads()
		for i := range w {
			w[i] -= 0.7 * g[i]
		}
	}
	step() // warm up: first allocations
	b.ResetTimer()
	for b.Loop() {
		step()
	}
	b.ReportMetric(float64(size*length*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

// BenchmarkW1: 2 layers, hidden and embedding 256, vocabularies 4000/4000,
// batch 64, lengths 12.
func BenchmarkW1(b *testing.B) { benchStep(b, w1, 64, 12) }

// BenchmarkW2: 4 layers, hidden and embedding 512, vocabularies 16000/8000,
// batch 128, lengths 20: the paper's layout at half width.
func BenchmarkW2(b *testing.B) { benchStep(b, w2, 128, 20) }
