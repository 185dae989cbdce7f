package wire

import (
	"encoding/binary"
	"fmt"
)

// A sparse block carries some parts of a parameter block instead of all of
// it: the rows of an embedding table that one batch's tokens use, out of
// tens of thousands. Its spans list those parts as (offset, length) pairs of
// float32 positions within the block, each a little-endian uint32, in
// increasing order and not overlapping; its Data holds the spans' floats one
// after another. A sparse block with nothing to carry lists the one span
// (0, 0), so that it stays distinct from a dense block (whose Spans is nil).
//
// In a push, the floats a sparse block leaves out are zero gradients: the
// shard applies exactly what it would apply for the dense block with zeros
// there. In a pull, the spans name what the puller wants; the reply's block
// carries those floats only.

// Span is one part of a sparse block, in float32 positions within it.
type Span struct{ Off, Len uint32 }

// MaxSpansBytes bounds a block's span list (2^16 spans): no message can
// make a receiver walk an unbounded list.
const MaxSpansBytes = 8 << 16

// AppendSpan appends one span to an encoded span list.
func AppendSpan(dst []byte, off, n int) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(off))
	return binary.LittleEndian.AppendUint32(dst, uint32(n))
}

// EmptySpans is the span list of a sparse block that carries nothing.
var EmptySpans = AppendSpan(nil, 0, 0)

// ParseSpans checks the form of a span list and returns how many floats its
// spans cover and where the last one ends.
func ParseSpans(b []byte) (floats, end int, err error) {
	if len(b) == 0 || len(b)%8 != 0 {
		return 0, 0, &Error{Kind: Malformed, Msg: fmt.Sprintf("a span list of %d bytes is not a whole, non-empty number of spans", len(b))}
	}
	if len(b) > MaxSpansBytes {
		return 0, 0, &Error{Kind: TooLarge, Msg: fmt.Sprintf("%d spans in one block (limit %d)", len(b)/8, MaxSpansBytes/8)}
	}
	for ; len(b) > 0; b = b[8:] {
		off, n := int(binary.LittleEndian.Uint32(b)), int(binary.LittleEndian.Uint32(b[4:]))
		if off < end {
			return 0, 0, &Error{Kind: Malformed, Msg: fmt.Sprintf("span at %d starts before the previous one ends (%d)", off, end)}
		}
		floats += n
		end = off + n
	}
	return floats, end, nil
}

// EachSpan calls f for every span of a list ParseSpans accepted.
func EachSpan(b []byte, f func(off, n int)) {
	for ; len(b) >= 8; b = b[8:] {
		f(int(binary.LittleEndian.Uint32(b)), int(binary.LittleEndian.Uint32(b[4:])))
	}
}
