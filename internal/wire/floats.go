package wire

import (
	"encoding/binary"
	"math"
	"unsafe"
)

// littleEndian is true on hosts whose float32 memory layout is the wire's.
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// AppendFloats appends f to dst as little-endian float32 bytes: one memmove
// on little-endian hosts, no per-float work.
func AppendFloats(dst []byte, f []float32) []byte {
	if len(f) == 0 {
		return dst
	}
	if littleEndian {
		return append(dst, unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f))...)
	}
	for _, v := range f {
		dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(v))
	}
	return dst
}

// FloatBytes views f as little-endian bytes without copying on little-endian
// hosts (the view aliases f: do not keep it past f's next change).
func FloatBytes(f []float32) []byte {
	if littleEndian && len(f) > 0 {
		return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f))
	}
	return AppendFloats(nil, f)
}

// CopyFloats copies little-endian float32 bytes b into dst. len(b) must be
// 4*len(dst); it reports false otherwise and copies nothing.
func CopyFloats(dst []float32, b []byte) bool {
	if len(b) != 4*len(dst) {
		return false
	}
	if len(dst) == 0 {
		return true
	}
	if littleEndian {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), len(b)), b)
		return true
	}
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return true
}

// Finite reports whether every little-endian float32 in b is finite (neither
// NaN nor ±Inf: the exponent bits are not all ones). It reads two floats per
// 8-byte load.
func Finite(b []byte) bool {
	const exp, exp2 = 0x7f800000, 0x7f8000007f800000
	for ; len(b) >= 8; b = b[8:] {
		x := binary.LittleEndian.Uint64(b) & exp2
		if uint32(x) == exp || x>>32 == exp {
			return false
		}
	}
	if len(b) >= 4 && binary.LittleEndian.Uint32(b)&exp == exp {
		return false
	}
	return true
}
