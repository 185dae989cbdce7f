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
