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
// NaN nor ±Inf: the exponent bits are not all ones). It tests four 8-byte
// words per iteration without branching: a float's exponent field XOR all
// ones is zero exactly when it is NaN or Inf, and (t-1)&^t sets a lane's top
// bit exactly when the lane t is zero (t never has that bit set).
func Finite(b []byte) bool {
	const exp, exp2 = 0x7f800000, 0x7f8000007f800000
	const ones, high = 0x0000000100000001, 0x8000000080000000
	var acc uint64
	for ; len(b) >= 32; b = b[32:] {
		t0 := binary.LittleEndian.Uint64(b)&exp2 ^ exp2
		t1 := binary.LittleEndian.Uint64(b[8:])&exp2 ^ exp2
		t2 := binary.LittleEndian.Uint64(b[16:])&exp2 ^ exp2
		t3 := binary.LittleEndian.Uint64(b[24:])&exp2 ^ exp2
		acc |= (t0-ones)&^t0 | (t1-ones)&^t1 | (t2-ones)&^t2 | (t3-ones)&^t3
	}
	if acc&high != 0 {
		return false
	}
	for ; len(b) >= 4; b = b[4:] {
		if binary.LittleEndian.Uint32(b)&exp == exp {
			return false
		}
	}
	return true
}
