//go:build !openblas

package models

func cellForwardFast(g, cPrev, cNext, hNext, tc []float32, H int) {
	cellForward32(g, cPrev, cNext, hNext, tc, H)
}

// expShift sets row[j] = e^(row[j]-mx) and returns their sum.
func expShift(row []float32, mx float32) float64 {
	var z float64
	for j, v := range row {
		e := exp32(v - mx)
		row[j] = e
		z += float64(e)
	}
	return z
}
