// Package wire defines every message that crosses NATS between downpour's
// roles, in one place and versioned. Payloads are msgpack maps with short
// keys; tensor data travels as raw little-endian float32 bytes in a msgpack
// bin field, never as an array of numbers (that was measured ~50x slower).
// A push of blocks that lie contiguous in the sender's memory may instead
// travel split: its envelope in a NATS header, its floats as the body
// (EncodeEnvelope, DecodeSplitPush).
//
// Subjects are namespaced by job, and the parameter server's by placement
// version v:
//
//	downpour.<job>.p<v>.ps.<shard>.push     PushRequest     -> Reply (PullReply when it asks to Pull)
//	downpour.<job>.p<v>.ps.<shard>.pull     PullRequest     -> PullReply
//	downpour.<job>.p<v>.ps.<shard>.snapshot SnapshotRequest -> Reply
//	downpour.<job>.progress                 Progress        (publish only)
package wire

import (
	"errors"
	"fmt"
	"math"
	"regexp"

	"github.com/vmihailenco/msgpack/v5"
)

// Version is the protocol version every message carries. A receiver refuses
// other versions with BadVersion.
const Version = 1

// Limits on what a decoder accepts, so that no message can make a receiver
// allocate without bound.
const (
	MaxBlocksPerMessage = 1 << 16
	MaxJobName          = 64
)

// Block is one parameter block: its id in the job's placement and its values
// as little-endian float32 bytes. A sparse block (Spans set) carries only
// the parts of the block its spans list (see ParseSpans).
type Block struct {
	ID    uint32 `msgpack:"i"`
	Data  []byte `msgpack:"b"`
	Spans []byte `msgpack:"s,omitempty"`
}

// PushRequest carries a rank's gradient for some of a shard's blocks at one
// step. (Job, Rank, Epoch, Step, block id) identifies a gradient exactly: a
// resend is recognised and not applied twice.
type PushRequest struct {
	V     uint8  `msgpack:"v"`
	Job   string `msgpack:"j"`
	Rank  uint32 `msgpack:"r"`
	Epoch uint64 `msgpack:"e"`
	Step  int64  `msgpack:"s"`
	// Pull asks the shard to answer, once it has taken the push, as it
	// would a PullRequest of the same blocks at MinClock Step+1: a step's
	// push and the next step's pull in one round trip. The answer is then
	// a PullReply (a refusal of the push as well).
	Pull   bool    `msgpack:"p,omitempty"`
	Blocks []Block `msgpack:"k"`
	// PullSpans, only with Pull, is that pull's Spans: a span list per
	// block (nil for a whole block), the parts of each block to pull,
	// which need not be the parts pushed. Without it the pull is of the
	// whole blocks.
	PullSpans [][]byte `msgpack:"q,omitempty"`
}

// ThenPull is the pull a push with Pull set asks for.
func (p *PushRequest) ThenPull() *PullRequest {
	ids := make([]uint32, len(p.Blocks))
	for i, b := range p.Blocks {
		ids[i] = b.ID
	}
	return &PullRequest{V: p.V, Job: p.Job, Rank: p.Rank, Epoch: p.Epoch, MinClock: p.Step + 1, IDs: ids, Spans: p.PullSpans}
}

// PullRequest asks a shard for blocks once it has applied at least MinClock
// steps.
type PullRequest struct {
	V        uint8    `msgpack:"v"`
	Job      string   `msgpack:"j"`
	Rank     uint32   `msgpack:"r"`
	Epoch    uint64   `msgpack:"e"`
	MinClock int64    `msgpack:"c"`
	IDs      []uint32 `msgpack:"i"`
	// Exact (sync): the parameters at exactly MinClock steps, not at
	// least; a shard that no longer holds them refuses with Gone.
	Exact bool `msgpack:"x,omitempty"`
	// Spans, when set, holds a span list per id (nil for a whole block):
	// the parts of each block the puller wants. The reply's blocks carry
	// those parts only, one after another.
	Spans [][]byte `msgpack:"s,omitempty"`
}

// SnapshotRequest asks a shard to snapshot its state at the boundary of
// Step (sync mode) or now (ssp, async).
type SnapshotRequest struct {
	V    uint8  `msgpack:"v"`
	Job  string `msgpack:"j"`
	Step int64  `msgpack:"s"`
}

// Reply answers a push. Kind is OK or says why the push was refused; Clock is
// the shard's clock (steps applied) when it answered.
type Reply struct {
	V     uint8  `msgpack:"v"`
	Kind  Kind   `msgpack:"k"`
	Msg   string `msgpack:"m,omitempty"`
	Clock int64  `msgpack:"c"`
}

// PullReply answers a pull with the blocks asked for, in the order asked.
type PullReply struct {
	V      uint8   `msgpack:"v"`
	Kind   Kind    `msgpack:"k"`
	Msg    string  `msgpack:"m,omitempty"`
	Clock  int64   `msgpack:"c"`
	Blocks []Block `msgpack:"b"`
}

// Progress is what a worker reports at a step it logs; it covers the steps
// since its previous report.
type Progress struct {
	V      uint8   `msgpack:"v"`
	Rank   uint32  `msgpack:"r"`
	Step   int64   `msgpack:"s"`
	Loss   float64 `msgpack:"l"`           // summed loss of the batches since the last report
	Tokens int64   `msgpack:"t"`           // tokens (or examples) the loss is summed over
	Nanos  int64   `msgpack:"n"`           // wall time of those steps
	Aux    float64 `msgpack:"a,omitempty"` // a second loss summed like Loss (the GAN's generator loss)
}

// Err builds the error a Reply or PullReply carries.
func (r *Reply) Err() error     { return kindErr(r.Kind, r.Msg) }
func (r *PullReply) Err() error { return kindErr(r.Kind, r.Msg) }

func kindErr(k Kind, msg string) error {
	if k == OK {
		return nil
	}
	return &Error{Kind: k, Msg: msg}
}

var jobName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidJob reports whether name can be a job name: 1-64 letters, digits, '_'
// or '-' (it becomes a NATS subject token and an etcd key segment).
func ValidJob(name string) error {
	if !jobName.MatchString(name) {
		return fmt.Errorf("job name %q: use 1-64 letters, digits, '_' or '-'", name)
	}
	return nil
}

// The parameter-server subjects name the placement version they belong to:
// a shard serves only its current placement's subjects, so a message sent
// under an older placement (by a worker that has not yet seen the new one,
// or by a zombie) reaches no one and changes nothing, and its sender is told
// that no one answers.

// PushSubject is the subject shard listens on for pushes under placement
// version.
func PushSubject(job string, version int64, shard int) string {
	return fmt.Sprintf("downpour.%s.p%d.ps.%d.push", job, version, shard)
}

// PullSubject is the subject shard listens on for pulls under placement
// version.
func PullSubject(job string, version int64, shard int) string {
	return fmt.Sprintf("downpour.%s.p%d.ps.%d.pull", job, version, shard)
}

// SnapshotSubject is where shard takes snapshot requests under placement
// version.
func SnapshotSubject(job string, version int64, shard int) string {
	return fmt.Sprintf("downpour.%s.p%d.ps.%d.snapshot", job, version, shard)
}

// ProgressSubject is where workers publish Progress.
func ProgressSubject(job string) string { return fmt.Sprintf("downpour.%s.progress", job) }

// Encode marshals a message (pushes and pull replies through their
// hand-written encoders).
func Encode(m any) ([]byte, error) {
	switch m := m.(type) {
	case *PushRequest:
		return EncodePush(m), nil
	case *PullReply:
		return EncodePullReply(m), nil
	}
	return msgpack.Marshal(m)
}

// decode unmarshals data into m and checks its version.
func decode(data []byte, m any, v *uint8) error {
	if err := skim(data); err != nil {
		return &Error{Kind: Malformed, Msg: err.Error()}
	}
	if err := msgpack.Unmarshal(data, m); err != nil {
		return &Error{Kind: Malformed, Msg: err.Error()}
	}
	if *v != Version {
		return &Error{Kind: BadVersion, Msg: fmt.Sprintf("protocol version %d, want %d", *v, Version)}
	}
	return nil
}

func checkBlocks(bs []Block) error {
	if len(bs) > MaxBlocksPerMessage {
		return &Error{Kind: TooLarge, Msg: fmt.Sprintf("%d blocks in one message (limit %d)", len(bs), MaxBlocksPerMessage)}
	}
	for _, b := range bs {
		if len(b.Data)%4 != 0 {
			return &Error{Kind: BadLength, Msg: fmt.Sprintf("block %d: %d bytes is not a whole number of float32", b.ID, len(b.Data))}
		}
		if b.Spans == nil {
			continue
		}
		n, _, err := ParseSpans(b.Spans)
		if err != nil {
			err.(*Error).Msg = fmt.Sprintf("block %d: %s", b.ID, err.(*Error).Msg)
			return err
		}
		if 4*n != len(b.Data) {
			return &Error{Kind: BadLength, Msg: fmt.Sprintf("block %d: %d bytes for spans of %d floats", b.ID, len(b.Data), n)}
		}
	}
	return nil
}

// DecodePush decodes and checks the form of a push. The blocks' data view
// data: copy what must outlive it.
func DecodePush(data []byte) (*PushRequest, error) {
	m, err := decodePushFields(data)
	if err != nil {
		return nil, err
	}
	if m.V != Version {
		return nil, &Error{Kind: BadVersion, Msg: fmt.Sprintf("protocol version %d, want %d", m.V, Version)}
	}
	if err := ValidJob(m.Job); err != nil {
		return nil, &Error{Kind: UnknownJob, Msg: err.Error()}
	}
	if m.Step < 0 {
		return nil, &Error{Kind: Malformed, Msg: fmt.Sprintf("negative step %d", m.Step)}
	}
	if m.Pull && m.Step == math.MaxInt64 {
		return nil, &Error{Kind: Malformed, Msg: "a pull after the last step there can be"}
	}
	if m.PullSpans != nil {
		if !m.Pull {
			return nil, &Error{Kind: Malformed, Msg: "span lists to pull in a push that asks for no pull"}
		}
		if err := checkSpanLists(m.PullSpans, blockIDs(m.Blocks)); err != nil {
			return nil, err
		}
	}
	return m, checkBlocks(m.Blocks)
}

func blockIDs(bs []Block) []uint32 {
	ids := make([]uint32, len(bs))
	for i, b := range bs {
		ids[i] = b.ID
	}
	return ids
}

// checkSpanLists checks a pull's span lists, one per block id (nil for a
// whole block).
func checkSpanLists(spans [][]byte, ids []uint32) error {
	if len(spans) != len(ids) {
		return &Error{Kind: Malformed, Msg: fmt.Sprintf("%d span lists for %d block ids", len(spans), len(ids))}
	}
	for k, sp := range spans {
		if sp == nil {
			continue
		}
		if _, _, err := ParseSpans(sp); err != nil {
			err.(*Error).Msg = fmt.Sprintf("block %d: %s", ids[k], err.(*Error).Msg)
			return err
		}
	}
	return nil
}

// decodePushFields decodes a push's fields without checking their values.
func decodePushFields(data []byte) (*PushRequest, error) {
	var m PushRequest
	err := decodeFast(data, func(r *reader, key string) {
		switch key {
		case "v":
			m.V = uint8(r.uint(8))
		case "j":
			m.Job = string(r.strBytes())
		case "r":
			m.Rank = uint32(r.uint(32))
		case "e":
			m.Epoch = r.uint(64)
		case "s":
			m.Step = r.int()
		case "p":
			m.Pull = r.bool()
		case "k":
			m.Blocks = r.blocks()
		case "q":
			m.PullSpans = r.binList()
		default:
			r.skip()
		}
	})
	if err != nil {
		return nil, err
	}
	return &m, nil
}

// DecodePull decodes and checks the form of a pull.
func DecodePull(data []byte) (*PullRequest, error) {
	var m PullRequest
	if err := decode(data, &m, &m.V); err != nil {
		return nil, err
	}
	if err := ValidJob(m.Job); err != nil {
		return nil, &Error{Kind: UnknownJob, Msg: err.Error()}
	}
	if len(m.IDs) > MaxBlocksPerMessage {
		return nil, &Error{Kind: TooLarge, Msg: fmt.Sprintf("%d block ids in one pull (limit %d)", len(m.IDs), MaxBlocksPerMessage)}
	}
	if m.Spans != nil {
		if err := checkSpanLists(m.Spans, m.IDs); err != nil {
			return nil, err
		}
	}
	return &m, nil
}

// DecodeSnapshotRequest decodes and checks a snapshot request.
func DecodeSnapshotRequest(data []byte) (*SnapshotRequest, error) {
	var m SnapshotRequest
	if err := decode(data, &m, &m.V); err != nil {
		return nil, err
	}
	if err := ValidJob(m.Job); err != nil {
		return nil, &Error{Kind: UnknownJob, Msg: err.Error()}
	}
	return &m, nil
}

// DecodeReply decodes a push reply.
func DecodeReply(data []byte) (*Reply, error) {
	var m Reply
	if err := decode(data, &m, &m.V); err != nil {
		return nil, err
	}
	return &m, nil
}

// DecodePullReply decodes a pull reply. The blocks' data view data.
func DecodePullReply(data []byte) (*PullReply, error) {
	var m PullReply
	err := decodeFast(data, func(r *reader, key string) {
		switch key {
		case "v":
			m.V = uint8(r.uint(8))
		case "k":
			m.Kind = Kind(r.uint(8))
		case "m":
			m.Msg = string(r.strBytes())
		case "c":
			m.Clock = r.int()
		case "b":
			m.Blocks = r.blocks()
		default:
			r.skip()
		}
	})
	if err != nil {
		return nil, err
	}
	if m.V != Version {
		return nil, &Error{Kind: BadVersion, Msg: fmt.Sprintf("protocol version %d, want %d", m.V, Version)}
	}
	return &m, checkBlocks(m.Blocks)
}

// DecodeProgress decodes a progress report.
func DecodeProgress(data []byte) (*Progress, error) {
	var m Progress
	if err := decode(data, &m, &m.V); err != nil {
		return nil, err
	}
	return &m, nil
}

// ErrKind returns the Kind of err, or Internal for an error that is not a
// wire error.
func ErrKind(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	if err == nil {
		return OK
	}
	return Internal
}
