//go:build !noasm

package gemm

import "golang.org/x/sys/cpu"

// The kernels of asm/gen.go; keep the tile shapes in step with it.
var (
	avx512 = &path{name: "avx512", mr: 12, nr: 32, mc: 12 * 340, nc: 32 * 20, kernels: []kernel{
		kernelAVX512x1, kernelAVX512x2, kernelAVX512x3, kernelAVX512x4, kernelAVX512x5, kernelAVX512x6,
		kernelAVX512x7, kernelAVX512x8, kernelAVX512x9, kernelAVX512x10, kernelAVX512x11, kernelAVX512x12}}
	avx2 = &path{name: "avx2", mr: 6, nr: 16, mc: 6 * 680, nc: 16 * 40, kernels: []kernel{
		kernelAVX2x1, kernelAVX2x2, kernelAVX2x3, kernelAVX2x4, kernelAVX2x5, kernelAVX2x6}}
)

// paths are those this CPU runs, fastest first. x/sys/cpu reports a vector
// extension only when the operating system saves its registers.
var paths = func() []*path {
	var ps []*path
	if cpu.X86.HasAVX512F && cpu.X86.HasAVX512DQ {
		ps = append(ps, avx512)
	}
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		ps = append(ps, avx2)
	}
	return ps
}()

// copyPanel copies depth steps of nr floats (16 or 32) into a packed panel.
func copyPanel(nr int, src *float32, lds int, dst *float32, depth int) {
	if nr == 32 {
		copy32(src, lds, dst, depth)
	} else {
		copy16(src, lds, dst, depth)
	}
}

// Assembly says whether this build has the assembly kernels (it does not
// with -tags noasm or off amd64), whatever the CPU.
const Assembly = true
