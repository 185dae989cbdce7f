//go:build amd64 && !noasm

package gemm

import (
	"fmt"
	"testing"
)

// BenchmarkKernel times the 12x32 AVX-512 kernel alone on one thread, over a
// packed block of B in L2 and a panel of A in L1: the micro-kernel's share of
// the peak, without packing or threads.
func BenchmarkKernel(b *testing.B) {
	for _, p := range paths {
		for _, kc := range []int{128, 192, 256, 384, 512} {
			b.Run(fmt.Sprintf("path=%s/kc=%d", p.name, kc), func(b *testing.B) {
				ap := make([]float32, p.mr*kc)
				bp := make([]float32, p.nc*kc)
				c := make([]float32, p.mr*p.nc)
				for i := range ap {
					ap[i] = 1
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
