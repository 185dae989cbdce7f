package wire

import (
	"encoding/binary"
	"fmt"
)

// MaxDepth bounds how deeply containers may nest in a message.
const MaxDepth = 16

// skim walks the msgpack structure of data without decoding it and refuses
// any message a decoder could be made to over-allocate or over-recurse on: a
// container that promises more elements than bytes remain (every element
// takes at least one byte), a string or bin longer than the message, nesting
// deeper than MaxDepth, a reserved code, or trailing bytes. It is one pass
// over the headers; bin payloads are stepped over in O(1).
//
// It exists because msgpack/v5 preallocates a slice of whatever length a
// message declares: a 20-byte pull claiming 3.7 billion block ids made the
// decoder allocate 15 GB (found by FuzzDecodePull).
func skim(data []byte) error {
	pos := 0
	stack := []int{1} // elements still to read in each open container
	for len(stack) > 0 {
		if stack[len(stack)-1] == 0 {
			stack = stack[:len(stack)-1]
			continue
		}
		stack[len(stack)-1]--
		if pos >= len(data) {
			return fmt.Errorf("truncated at byte %d", pos)
		}
		c := data[pos]
		pos++
		var skip, items int                   // bytes to step over; elements of a new container
		need := func(n int) (uint64, error) { // reads an n-byte big-endian length
			if len(data)-pos < n {
				return 0, fmt.Errorf("truncated length at byte %d", pos)
			}
			var v uint64
			switch n {
			case 1:
				v = uint64(data[pos])
			case 2:
				v = uint64(binary.BigEndian.Uint16(data[pos:]))
			case 4:
				v = uint64(binary.BigEndian.Uint32(data[pos:]))
			}
			pos += n
			return v, nil
		}
		var n uint64
		var err error
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		case c >= 0x80 && c <= 0x8f:
			items = 2 * int(c&0x0f)
		case c >= 0x90 && c <= 0x9f:
			items = int(c & 0x0f)
		case c >= 0xa0 && c <= 0xbf:
			skip = int(c & 0x1f)
		case c == 0xc4 || c == 0xd9:
			n, err = need(1)
			skip = int(n)
		case c == 0xc5 || c == 0xda:
			n, err = need(2)
			skip = int(n)
		case c == 0xc6 || c == 0xdb:
			n, err = need(4)
			skip = int(min(n, uint64(len(data))+1))
		case c == 0xc7:
			n, err = need(1)
			skip = int(n) + 1
		case c == 0xc8:
			n, err = need(2)
			skip = int(n) + 1
		case c == 0xc9:
			n, err = need(4)
			skip = int(min(n, uint64(len(data)))) + 1
		case c == 0xca:
			skip = 4
		case c == 0xcb:
			skip = 8
		case c >= 0xcc && c <= 0xcf:
			skip = 1 << (c - 0xcc)
		case c >= 0xd0 && c <= 0xd3:
			skip = 1 << (c - 0xd0)
		case c >= 0xd4 && c <= 0xd8:
			skip = 1 + 1<<(c-0xd4)
		case c == 0xdc:
			n, err = need(2)
			items = int(n)
		case c == 0xdd:
			n, err = need(4)
			items = int(min(n, uint64(len(data))+1))
		case c == 0xde:
			n, err = need(2)
			items = 2 * int(n)
		case c == 0xdf:
			n, err = need(4)
			items = 2 * int(min(n, uint64(len(data))+1))
		default: // 0xc1 is never used
			return fmt.Errorf("reserved code %#x at byte %d", c, pos-1)
		}
		if err != nil {
			return err
		}
		if skip > len(data)-pos {
			return fmt.Errorf("value at byte %d runs past the end", pos)
		}
		pos += skip
		if items > 0 {
			if items > len(data)-pos {
				return fmt.Errorf("container at byte %d promises %d elements in %d bytes", pos, items, len(data)-pos)
			}
			if len(stack) >= MaxDepth {
				return fmt.Errorf("nesting deeper than %d", MaxDepth)
			}
			stack = append(stack, items)
		}
	}
	if pos != len(data) {
		return fmt.Errorf("%d trailing bytes", len(data)-pos)
	}
	return nil
}
