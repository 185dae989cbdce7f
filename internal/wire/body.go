package wire

import (
	"encoding/base64"
	"fmt"
)

// A dense push whose blocks lie one after another in the sender's memory
// may travel split: its envelope (the PushRequest with every block's data
// left empty) in the NATS header EnvelopeHeader, and the blocks' data, in
// the envelope's block order, as the message body. The sender then hands
// NATS its gradient as it lies, with no copy into a message first; the
// receiver cuts the body by the lengths it knows for the blocks.
//
// The header's value is the envelope's msgpack in padded base64: always a
// multiple of 4 characters, and EnvelopeHeader is 12, so the header section
// NATS puts before the body ("NATS/1.0\r\n", the header line, "\r\n") is a
// multiple of 4 bytes long, and the body's floats stay aligned for the
// receiver to read in place.
const EnvelopeHeader = "Downpour-Env"

// EncodeEnvelope encodes p's envelope (p without its blocks' data) as the
// value of EnvelopeHeader.
func EncodeEnvelope(p *PushRequest) string {
	env := *p
	env.Blocks = make([]Block, len(p.Blocks))
	for i, b := range p.Blocks {
		env.Blocks[i] = Block{ID: b.ID}
	}
	return base64.StdEncoding.EncodeToString(EncodePush(&env))
}

// DecodeSplitPush decodes and checks a split push: the envelope env (the
// value of EnvelopeHeader) and the body, whose data it cuts into the
// envelope's blocks, block id taking 4*floats(id) bytes. floats reports
// false for a block the receiver does not own. The blocks' data view body.
func DecodeSplitPush(env string, body []byte, floats func(id uint32) (int, bool)) (*PushRequest, error) {
	if len(env) > base64.StdEncoding.EncodedLen(MaxEnvelope) {
		return nil, &Error{Kind: TooLarge, Msg: fmt.Sprintf("a %d-byte envelope (limit %d)", len(env), base64.StdEncoding.EncodedLen(MaxEnvelope))}
	}
	raw, err := base64.StdEncoding.DecodeString(env)
	if err != nil {
		return nil, &Error{Kind: Malformed, Msg: "envelope: " + err.Error()}
	}
	p, err := DecodePush(raw)
	if err != nil {
		return nil, err
	}
	at := 0
	for i := range p.Blocks {
		b := &p.Blocks[i]
		if len(b.Data) != 0 || b.Spans != nil {
			return nil, &Error{Kind: Malformed, Msg: fmt.Sprintf("block %d: a split push's envelope carries data or spans", b.ID)}
		}
		n, ok := floats(b.ID)
		if !ok {
			return nil, &Error{Kind: UnknownBlock, Msg: fmt.Sprintf("block %d is not on this shard", b.ID)}
		}
		if len(body)-at < 4*n {
			return nil, &Error{Kind: BadLength, Msg: fmt.Sprintf("block %d: the body ends %d bytes into its %d", b.ID, len(body)-at, 4*n)}
		}
		b.Data = body[at : at+4*n : at+4*n]
		at += 4 * n
	}
	if at != len(body) {
		return nil, &Error{Kind: BadLength, Msg: fmt.Sprintf("a body of %d bytes for blocks of %d", len(body), at)}
	}
	return p, nil
}

// MaxEnvelope bounds an envelope's bytes: its fields, and every block a
// message may hold.
const MaxEnvelope = Headroom + PerBlock*MaxBlocksPerMessage
