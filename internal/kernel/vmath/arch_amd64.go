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

func maxoutVec(x *float32, pieces int, idx *[16]int32, y *float32, arg *int32, n int) {
	if vector.width == 16 {
		maxoutAVX512(x, pieces, &idx[0], y, arg, n)
	} else {
		maxoutAVX2(x, pieces, &idx[0], y, arg, n)
	}
}

func elementwiseVec(k int, dst, src *float32, n int) {
	wide := vector.width == 16
	switch {
	case k == vectorMul && wide:
		mulAVX512(dst, src, n)
	case k == vectorMul:
		mulAVX2(dst, src, n)
	case k == vectorReLU && wide:
		reluAVX512(dst, src, n)
	case k == vectorReLU:
		reluAVX2(dst, src, n)
	case wide:
		reluBackAVX512(dst, src, n)
	default:
		reluBackAVX2(dst, src, n)
	}
}

func adagradVec(w, g, acc *float32, n int, coef *[2]float32) {
	if vector.width == 16 {
		adagradAVX512(w, g, acc, n, coef)
	} else {
		adagradAVX2(w, g, acc, n, coef)
	}
}

func adamVec(w, g, m, v *float32, n int, coef *[8]float32) {
	if vector.width == 16 {
		adamAVX512(w, g, m, v, n, coef)
	} else {
		adamAVX2(w, g, m, v, n, coef)
	}
}

func momentumVec(w, g, inc *float32, n int, coef *[2]float32) {
	if vector.width == 16 {
		momentumAVX512(w, g, inc, n, coef)
	} else {
		momentumAVX2(w, g, inc, n, coef)
	}
}
