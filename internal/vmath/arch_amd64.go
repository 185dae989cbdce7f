//go:build !noasm

package vmath

func pick(path string) *kernels {
	switch path {
	case "avx512":
		return &kernels{name: path, width: 16, expShift: expShiftAVX512, cell: cellAVX512, cellBack: cellBackAVX512}
	case "avx2":
		return &kernels{name: path, width: 8, expShift: expShiftAVX2, cell: cellAVX2, cellBack: cellBackAVX2}
	}
	return nil
}

// sumSquaresVec runs the path's sumSquares kernel, called directly so that
// the compiler sees it keeps no pointer (a call through a func value would
// move acc to the heap).
func sumSquaresVec(x *float32, n int, acc *[32]float64) {
	if vector.width == 16 {
		sumSquaresAVX512(x, n, acc)
	} else {
		sumSquaresAVX2(x, n, acc)
	}
}
