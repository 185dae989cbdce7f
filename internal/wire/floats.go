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

// Floats views b, little-endian float32 bytes, as float32s without copying.
// It can do so only on little-endian hosts, when b starts at a 4-byte boundary
// (as block data does in a message whose buffer is aligned: see fast.go);
// ok is false otherwise, and when len(b) is not a multiple of 4. The view
// aliases b: it is for reading, and only while b is not reused.
func Floats(b []byte) (f []float32, ok bool) {
	if !littleEndian || len(b)%4 != 0 {
		return nil, false
	}
	if len(b) == 0 {
		return []float32{}, true
	}
	if uintptr(unsafe.Pointer(&b[0]))%4 != 0 {
		return nil, false
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4), true
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
// NaN nor ±Inf: the exponent bits are not all ones). It tests eight 8-byte
// words per iteration, three operations a word and no branch: with a word's
// two sign bits cleared, adding 0x00800000 to a lane carries into the lane's
// top bit exactly when the lane's exponent is all ones (the lane is at least
// 0x7f800000), and never carries into the next lane (at most 0x807fffff).
func Finite(b []byte) bool {
	const exp = 0x7f800000
	const mask, carry, high = 0x7fffffff7fffffff, 0x0080000000800000, 0x8000000080000000
	var acc uint64
	for ; len(b) >= 64; b = b[64:] {
		w := b[:64:64]
		acc |= (binary.LittleEndian.Uint64(w[0:])&mask + carry) |
			(binary.LittleEndian.Uint64(w[8:])&mask + carry) |
			(binary.LittleEndian.Uint64(w[16:])&mask + carry) |
			(binary.LittleEndian.Uint64(w[24:])&mask + carry) |
			(binary.LittleEndian.Uint64(w[32:])&mask + carry) |
			(binary.LittleEndian.Uint64(w[40:])&mask + carry) |
			(binary.LittleEndian.Uint64(w[48:])&mask + carry) |
			(binary.LittleEndian.Uint64(w[56:])&mask + carry)
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
