//go:build !openblas

package models

import "github.com/downpour-ml/downpour/internal/kernel/vmath"

// The vector kernels of the default build: internal/kernel/vmath's assembly, which
// gives the bits of cellForward32 and of vmath.Exp on every path.

func cellForwardFast(g, cPrev, cNext, hNext, tc []float32, H int) {
	vmath.LSTMCell(g, cPrev, cNext, hNext, tc, H)
}

// expShift sets row[j] = e^(row[j]-mx) and returns their sum.
func expShift(row []float32, mx float32) float64 { return vmath.ExpShift(row, mx) }
