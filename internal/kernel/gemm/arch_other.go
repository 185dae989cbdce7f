//go:build noasm || !amd64

package gemm

// Without the assembly kernels, Sgemm is gonum's pure Go.
var paths []*path

// The transposes of the assembly, never called without kernels.
func transpose8x8(src *float32, lds int, dst *float32, ldd int)        { panic("gemm: no assembly") }
func transpose4x8(src *float32, lds int, dst *float32, ldd int)        { panic("gemm: no assembly") }
func copyPanel(nr int, src *float32, lds int, dst *float32, depth int) { panic("gemm: no assembly") }

// Assembly says whether this build has the assembly kernels (it does not
// with -tags noasm or off amd64), whatever the CPU.
const Assembly = false
