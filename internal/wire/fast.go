package wire

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
)

// The two messages that carry tensors, PushRequest and PullReply, have
// hand-written codecs: the encoder sizes its buffer exactly and copies each
// block once; the decoder returns blocks that view the message instead of
// copying them. Both are tested against the msgpack library (encodings it
// decodes to the same message, equal decodings of anything both accept).
//
// The encoding is msgpack.Marshal's but for one freedom msgpack gives: a
// string may be written with a wider header than it needs. The encoder
// widens the headers of a block's "i" and "b" keys by 0 to 3 bytes so that
// the block's data starts at a multiple of 4 bytes from the message's start.
// A receiver whose message buffer is 4-byte aligned (Go's allocator aligns
// any buffer of 16 bytes or more to 8) can then read the floats in place
// (Floats) instead of copying them out first.

func appendStr(b []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n < 1<<8:
		b = append(b, 0xd9, byte(n))
	case n < 1<<16:
		b = append(b, 0xda)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0xdb)
		b = binary.BigEndian.AppendUint32(b, uint32(n))
	}
	return append(b, s...)
}

func appendBin(b, data []byte) []byte {
	if data == nil {
		return append(b, 0xc0)
	}
	switch n := len(data); {
	case n < 1<<8:
		b = append(b, 0xc4, byte(n))
	case n < 1<<16:
		b = append(b, 0xc5)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0xc6)
		b = binary.BigEndian.AppendUint32(b, uint32(n))
	}
	return append(b, data...)
}

func appendArrayLen(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n < 1<<16:
		b = append(b, 0xdc)
		return binary.BigEndian.AppendUint16(b, uint16(n))
	}
	b = append(b, 0xdd)
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

// binHeader is the length of appendBin's header for data.
func binHeader(data []byte) int {
	switch n := len(data); {
	case data == nil:
		return 1
	case n < 1<<8:
		return 2
	case n < 1<<16:
		return 3
	}
	return 5
}

// appendKey appends the one-letter map key k as a msgpack string whose
// header is wider than it needs by pad bytes (0, 1 or 2).
func appendKey(b []byte, k byte, pad int) []byte {
	switch pad {
	case 0:
		return append(b, 0xa1, k) // fixstr
	case 1:
		return append(b, 0xd9, 1, k) // str8
	}
	return append(b, 0xda, 0, 1, k) // str16
}

// appendBlocks appends bs to b, of which the message starts at b[start:].
func appendBlocks(b []byte, bs []Block, start int) []byte {
	if bs == nil {
		return append(b, 0xc0)
	}
	b = appendArrayLen(b, len(bs))
	for _, blk := range bs {
		if len(blk.Spans) == 0 { // omitempty
			b = append(b, 0x82)
		} else {
			b = append(b, 0x83)
		}
		// Where the data would start with the narrowest keys: past "i"
		// (2), the id (5), "b" (2) and the bin header.
		at := len(b) - start + 2 + 5 + 2 + binHeader(blk.Data)
		pad := 0
		if len(blk.Data) > 0 {
			pad = (4 - at%4) % 4
		}
		b = appendKey(b, 'i', pad/3) // 3 = 1 here + 2 on "b"
		b = append(b, 0xce)
		b = binary.BigEndian.AppendUint32(b, blk.ID)
		b = appendKey(b, 'b', pad-pad/3)
		b = appendBin(b, blk.Data)
		if len(blk.Spans) != 0 {
			b = append(b, 0xa1, 's')
			b = appendBin(b, blk.Spans)
		}
	}
	return b
}

func blocksSize(bs []Block) int {
	n := 5
	for _, blk := range bs {
		n += PerBlock + len(blk.Data)
		if len(blk.Spans) != 0 {
			n += 7 + len(blk.Spans)
		}
	}
	return n
}

// EncodePush encodes p (msgpack, block data aligned), with one allocation.
func EncodePush(p *PushRequest) []byte { return AppendPush(nil, p) }

// AppendPush appends the encoding of p to dst, growing it at most once.
func AppendPush(dst []byte, p *PushRequest) []byte {
	start := len(dst)
	b := slices.Grow(dst, 64+len(p.Job)+blocksSize(p.Blocks)+binListSize(p.PullSpans))
	fields := byte(6)
	if p.Pull {
		fields++
	}
	if len(p.PullSpans) != 0 { // omitempty
		fields++
	}
	b = append(b, 0x80|fields)
	b = append(b, 0xa1, 'v', 0xcc, p.V, 0xa1, 'j')
	b = appendStr(b, p.Job)
	b = append(b, 0xa1, 'r', 0xce)
	b = binary.BigEndian.AppendUint32(b, p.Rank)
	b = append(b, 0xa1, 'e', 0xcf)
	b = binary.BigEndian.AppendUint64(b, p.Epoch)
	b = append(b, 0xa1, 's', 0xd3)
	b = binary.BigEndian.AppendUint64(b, uint64(p.Step))
	if p.Pull {
		b = append(b, 0xa1, 'p', 0xc3)
	}
	b = append(b, 0xa1, 'k')
	b = appendBlocks(b, p.Blocks, start)
	if len(p.PullSpans) != 0 {
		b = append(b, 0xa1, 'q')
		b = appendArrayLen(b, len(p.PullSpans))
		for _, sp := range p.PullSpans {
			b = appendBin(b, sp)
		}
	}
	return b
}

// binListSize bounds the bytes a list of bins takes, with its key.
func binListSize(l [][]byte) int {
	n := 2 + 5
	for _, b := range l {
		n += 5 + len(b)
	}
	return n
}

// EncodePullReply encodes r (msgpack, block data aligned), with one allocation.
func EncodePullReply(r *PullReply) []byte { return AppendPullReply(nil, r) }

// AppendPullReply appends the encoding of r to dst, growing it at most once.
func AppendPullReply(dst []byte, r *PullReply) []byte {
	start := len(dst)
	b := slices.Grow(dst, 64+len(r.Msg)+blocksSize(r.Blocks))
	if r.Msg == "" {
		b = append(b, 0x84)
	} else {
		b = append(b, 0x85)
	}
	b = append(b, 0xa1, 'v', 0xcc, r.V, 0xa1, 'k', 0xcc, byte(r.Kind))
	if r.Msg != "" {
		b = append(b, 0xa1, 'm')
		b = appendStr(b, r.Msg)
	}
	b = append(b, 0xa1, 'c', 0xd3)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Clock))
	b = append(b, 0xa1, 'b')
	return appendBlocks(b, r.Blocks, start)
}

// reader decodes msgpack values from a message that skim has accepted.
type reader struct {
	b   []byte
	pos int
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
}

func (r *reader) byte() byte {
	if r.err != nil || r.pos >= len(r.b) {
		r.fail("truncated")
		return 0
	}
	c := r.b[r.pos]
	r.pos++
	return c
}

func (r *reader) take(n int) []byte {
	if r.err != nil || n < 0 || n > len(r.b)-r.pos {
		r.fail("truncated")
		return nil
	}
	s := r.b[r.pos : r.pos+n : r.pos+n]
	r.pos += n
	return s
}

func (r *reader) be(n int) uint64 {
	s := r.take(n)
	var v uint64
	for _, c := range s {
		v = v<<8 | uint64(c)
	}
	return v
}

// int reads any msgpack integer as an int64 (uint64 values above MaxInt64
// are refused).
func (r *reader) int() int64 {
	c := r.byte()
	switch {
	case c <= 0x7f:
		return int64(c)
	case c >= 0xe0:
		return int64(int8(c))
	case c >= 0xcc && c <= 0xcf:
		v := r.be(1 << (c - 0xcc))
		if v > math.MaxInt64 {
			r.fail("integer %d overflows", v)
		}
		return int64(v)
	case c == 0xd0:
		return int64(int8(r.be(1)))
	case c == 0xd1:
		return int64(int16(r.be(2)))
	case c == 0xd2:
		return int64(int32(r.be(4)))
	case c == 0xd3:
		return int64(r.be(8))
	}
	r.fail("code %#x is not an integer", c)
	return 0
}

// uint reads an integer that must fit in bits unsigned bits.
func (r *reader) uint(bits int) uint64 {
	if c := r.peek(); c == 0xcf {
		r.pos++
		v := r.be(8)
		if bits < 64 && v>>bits != 0 {
			r.fail("integer %d does not fit %d bits", v, bits)
		}
		return v
	}
	v := r.int()
	if v < 0 || bits < 64 && uint64(v)>>bits != 0 {
		r.fail("integer %d does not fit %d unsigned bits", v, bits)
	}
	return uint64(v)
}

func (r *reader) peek() byte {
	if r.err != nil || r.pos >= len(r.b) {
		return 0xc1
	}
	return r.b[r.pos]
}

func (r *reader) bool() bool {
	switch c := r.byte(); c {
	case 0xc2:
		return false
	case 0xc3:
		return true
	default:
		r.fail("code %#x is not a bool", c)
		return false
	}
}

func (r *reader) nilValue() bool {
	if r.peek() == 0xc0 {
		r.pos++
		return true
	}
	return false
}

func (r *reader) strBytes() []byte {
	c := r.byte()
	switch {
	case c >= 0xa0 && c <= 0xbf:
		return r.take(int(c & 0x1f))
	case c == 0xd9, c == 0xc4:
		return r.take(int(r.be(1)))
	case c == 0xda, c == 0xc5:
		return r.take(int(r.be(2)))
	case c == 0xdb, c == 0xc6:
		return r.take(int(r.be(4)))
	case c == 0xc0:
		return nil
	}
	r.fail("code %#x is not a string or bin", c)
	return nil
}

func (r *reader) containerLen(fix, b16, b32 byte, fixMask byte) int {
	c := r.byte()
	switch {
	case c&^fixMask == fix:
		return int(c & fixMask)
	case c == b16:
		return int(r.be(2))
	case c == b32:
		return int(r.be(4))
	case c == 0xc0:
		return 0
	}
	r.fail("code %#x is not the expected container", c)
	return 0
}

func (r *reader) mapLen() int   { return r.containerLen(0x80, 0xde, 0xdf, 0x0f) }
func (r *reader) arrayLen() int { return r.containerLen(0x90, 0xdc, 0xdd, 0x0f) }

// skip steps over one value (skim has bounded its depth).
func (r *reader) skip() {
	c := r.peek()
	switch {
	case c >= 0x80 && c <= 0x8f || c == 0xde || c == 0xdf:
		for range 2 * r.mapLen() {
			r.skip()
		}
	case c >= 0x90 && c <= 0x9f || c == 0xdc || c == 0xdd:
		for range r.arrayLen() {
			r.skip()
		}
	case c >= 0xa0 && c <= 0xbf || c >= 0xc4 && c <= 0xc6 || c >= 0xd9 && c <= 0xdb:
		r.strBytes()
	case c <= 0x7f || c >= 0xe0 || c >= 0xcc && c <= 0xd3:
		r.int()
	case c == 0xc0 || c == 0xc2 || c == 0xc3:
		r.pos++
	case c == 0xca:
		r.take(5)
	case c == 0xcb:
		r.take(9)
	case c >= 0xd4 && c <= 0xd8:
		r.take(2 + 1<<(c-0xd4))
	case c == 0xc7:
		r.pos++
		r.take(int(r.be(1)) + 1)
	case c == 0xc8:
		r.pos++
		r.take(int(r.be(2)) + 1)
	case c == 0xc9:
		r.pos++
		r.take(int(r.be(4)) + 1)
	default:
		r.fail("code %#x", c)
	}
}

// list reads the length of an array of at most MaxBlocksPerMessage
// elements (of what, for the error): false for a nil, or an error.
func (r *reader) list(what string) (int, bool) {
	if r.nilValue() {
		return 0, false
	}
	n := r.arrayLen()
	if r.err != nil {
		return 0, false
	}
	if n > MaxBlocksPerMessage {
		r.err = &Error{Kind: TooLarge, Msg: fmt.Sprintf("%d %s in one message (limit %d)", n, what, MaxBlocksPerMessage)}
		return 0, false
	}
	return n, true
}

func (r *reader) blocks() []Block {
	n, ok := r.list("blocks")
	if !ok {
		return nil
	}
	bs := make([]Block, n)
	for i := range bs {
		for range r.mapLen() {
			switch string(r.strBytes()) {
			case "i":
				bs[i].ID = uint32(r.uint(32))
			case "b":
				bs[i].Data = r.strBytes()
			case "s":
				bs[i].Spans = r.strBytes()
			default:
				r.skip()
			}
		}
	}
	return bs
}

// binList reads an array of bins (nil elements stay nil), as many as a
// message may hold blocks.
func (r *reader) binList() [][]byte {
	n, ok := r.list("span lists")
	if !ok {
		return nil
	}
	l := make([][]byte, n)
	for i := range l {
		l[i] = r.strBytes()
	}
	return l
}

func decodeFast(data []byte, field func(r *reader, key string)) error {
	if err := skim(data); err != nil {
		return &Error{Kind: Malformed, Msg: err.Error()}
	}
	r := &reader{b: data}
	for range r.mapLen() {
		key := r.strBytes()
		if r.err != nil {
			break
		}
		field(r, string(key))
	}
	if e, ok := r.err.(*Error); ok {
		return e
	}
	if r.err != nil {
		return &Error{Kind: Malformed, Msg: r.err.Error()}
	}
	return nil
}
