//go:build amd64 && !noasm

package gemm

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
)

// BenchmarkKernel times each path's widest kernel (12x32 on AVX-512, 6x16 on
// AVX2) alone on one thread, over a packed block of B in L2 and a panel of A
// in L1: the micro-kernel's share of the peak, without packing or threads.
func BenchmarkKernel(b *testing.B) {
	for _, p := range paths {
		for _, kc := range []int{128, 192, 256, 384, 512} {
			b.Run(fmt.Sprintf("path=%s/kc=%d", p.name, kc), func(b *testing.B) {
				// Every buffer written: an allocation never written is the
				// kernel's one shared zero page, always in cache.
				rng := rand.New(rand.NewPCG(3, 4))
				ap, bp, c := make([]float32, p.mr*kc), make([]float32, p.nc*kc), make([]float32, p.mr*p.nc)
				for _, x := range [][]float32{ap, bp, c} {
					for i := range x {
						x[i] = rng.Float32() - 0.5
					}
				}
				kern := p.kernels[p.mr-1]
				for b.Loop() {
					for jr := 0; jr < p.nc; jr += p.nr {
						kern(kc, &ap[0], &bp[jr*kc], p.nr, &c[jr], p.nc, 1, true)
					}
				}
				b.ReportMetric(2*float64(p.mr*p.nc*kc)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}

// BenchmarkSgemmPeak is the ceiling: FMAs on registers alone, no memory, on
// every core (GOMAXPROCS goroutines), reported in GFLOP/s like the GEMMs.
func BenchmarkSgemmPeak(b *testing.B) {
	for _, p := range paths {
		b.Run("path="+p.name, func(b *testing.B) {
			const rounds = 1 << 20
			chains, width := 24, 16
			f := peakAVX512
			if p == avx2 {
				chains, width, f = 12, 8, peakAVX2
			}
			b.SetParallelism(1)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					f(rounds)
				}
			})
			b.ReportMetric(2*float64(chains*width)*rounds*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

// The AVX-512 and AVX2 paths give the same bits: each element is the same
// chain of fused multiply-adds over blocks of K of the same length.
func TestPathsGiveSameBits(t *testing.T) {
	if len(paths) < 2 {
		// Only a CPU with AVX-512 runs both paths. CI sets
		// DOWNPOUR_GEMM_PATHS=require: there this test must run.
		if os.Getenv("DOWNPOUR_GEMM_PATHS") == "require" {
			t.Fatalf("DOWNPOUR_GEMM_PATHS=require, but this CPU offers only %v", Paths())
		}
		t.Skipf("this CPU offers only %v: no second path to compare", Paths())
	}
	for i, s := range append(shapes(), bigShapes...) {
		var outs [][]float32
		for _, p := range paths {
			outs = append(outs, checkShape(t, Implementation{path: p}, s, uint64(i)))
		}
		sameBits(t, fmt.Sprintf("%v: %s vs %s", s, paths[0].name, paths[1].name), outs[0], outs[1])
	}
}

func TestTransposeInto(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	for _, rows := range []int{1, 3, 4, 5, 8, 11, 12, 16, 32} {
		for _, depth := range []int{1, 7, 8, 9, 16, 300} {
			lds, ldd := depth+3, rows+2
			src := make([]float32, rows*lds)
			for i := range src {
				src[i] = rng.Float32()
			}
			dst := make([]float32, depth*ldd)
			want := slices.Clone(dst)
			for i := range rows {
				for p := range depth {
					want[p*ldd+i] = src[i*lds+p]
				}
			}
			transposeInto(dst, ldd, src, lds, rows, depth)
			sameBits(t, fmt.Sprintf("rows %d depth %d", rows, depth), dst, want)
		}
	}
}
