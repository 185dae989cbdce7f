package models

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"

	"gonum.org/v1/gonum/blas/gonum"

	"github.com/downpour-ml/downpour/internal/kernel/gemm"
)

// trainHash trains a small Seq2Seq (SGD, clipped) and a small GAN (momentum,
// dropout, maxout) for a few steps on this process's kernel path and returns
// a hash of every parameter's bits.
func trainHash() string {
	h := fnv.New64a()
	put := func(w []float32) {
		var b [4]byte
		for _, v := range w {
			u := math.Float32bits(v)
			b[0], b[1], b[2], b[3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
			h.Write(b[:])
		}
	}
	cfg := Seq2SeqConfig{SrcVocab: 300, TgtVocab: 200, Embed: 40, Hidden: 72, Layers: 2}
	s := NewSeq2Seq[float32](cfg)
	s.Init(3)
	batch := benchBatch(cfg, 24, 7)
	for range 4 {
		s.Loss(batch, true)
		s.ClipGrads(0.5)
		gonum.Implementation{}.Saxpy(len(s.Params()), -0.7, s.Grads(), 1, s.Params(), 1)
	}
	put(s.Params())

	c := GANConfig{Noise: 20, GHidden: 100, Pixels: 60, DUnits: 36, DPieces: 5, KeepInput: 0.8, KeepHidden: 0.5, GScale: 0.05, DScale: 0.005}
	g := NewGAN[float32](c)
	g.Init(5)
	rng := rand.New(rand.NewPCG(7, 7))
	const rows = 30
	real := make([]float32, rows*c.Pixels)
	z := make([]float32, rows*c.Noise)
	for range 4 {
		for i := range real {
			real[i] = rng.Float32()
		}
		for i := range z {
			z[i] = 2*rng.Float32() - 1
		}
		g.DLoss(real, z, rows, RandomMasks(rng, c, rows), RandomMasks(rng, c, rows), true)
		w, gr := g.Params(), g.Grads()
		for i := range w {
			w[i] -= 0.1 * gr[i]
		}
		g.GLossAfterD(rows, RandomMasks(rng, c, rows), false, true)
		gonum.Implementation{}.Saxpy(len(w), -0.1, gr, 1, w, 1)
	}
	put(g.Params())
	return fmt.Sprintf("%016x", h.Sum64())
}

// Training gives the same bits on the AVX-512 and the AVX2 paths: the
// GEMMs sum in the same order on both, and the vector math is the scalar
// Go's on every path. The AVX2 run is this test binary again, in a child
// process with DOWNPOUR_GEMM=avx2 (the path is chosen at start-up).
func TestPathsTrainTheSameBits(t *testing.T) {
	if os.Getenv("DOWNPOUR_TRAIN_HASH") == "print" {
		fmt.Printf("hash %s %s\n", BLAS, trainHash())
		return
	}
	if BLAS == "openblas" || !gemm.Assembly || os.Getenv("DOWNPOUR_GEMM") != "" {
		t.Skipf("this build or run chose its GEMM (%s): the test compares the assembly paths itself", BLAS)
	}
	if paths := strings.Join(gemm.Paths(), " "); !strings.Contains(paths, "avx512") || !strings.Contains(paths, "avx2") {
		// Only a CPU with AVX-512 runs both; CI's does and sets
		// DOWNPOUR_GEMM_PATHS=require.
		if os.Getenv("DOWNPOUR_GEMM_PATHS") == "require" {
			t.Fatalf("DOWNPOUR_GEMM_PATHS=require, but this CPU offers %s", paths)
		}
		t.Skipf("this CPU offers %s: no second assembly path to compare", paths)
	}
	want := trainHash()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestPathsTrainTheSameBits$", "-test.count", "1")
	cmd.Env = append(os.Environ(), "DOWNPOUR_TRAIN_HASH=print", "DOWNPOUR_GEMM=avx2")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the avx2 run: %v\n%s", err, out)
	}
	var path, got string
	for _, line := range strings.Split(string(out), "\n") {
		if _, err := fmt.Sscanf(line, "hash %s %s", &path, &got); err == nil {
			break
		}
	}
	if path != "avx2" {
		t.Fatalf("the child ran on %q, want avx2:\n%s", path, out)
	}
	if got != want {
		t.Fatalf("parameters after training: avx2 %s, avx512 %s", got, want)
	}
	// And the pure-Go path does round differently (else this test could
	// not tell the paths apart).
	cmd = exec.Command(os.Args[0], "-test.run", "^TestPathsTrainTheSameBits$", "-test.count", "1")
	cmd.Env = append(os.Environ(), "DOWNPOUR_TRAIN_HASH=print", "DOWNPOUR_GEMM=go")
	out, err = cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hash go ") || strings.Contains(string(out), want) {
		t.Fatalf("the pure-Go run should differ in the last bits: %v\n%s", err, out)
	}
}
