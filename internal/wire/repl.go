package wire

import (
	"fmt"
)

// The copies of a parameter block (job.Placement with Copies above 1: its
// primary, then its backups in order) form a chain. The primary applies an
// update (a sync step's aggregated gradient, or one async push) and sends
// it down the chain as an Entry; each copy applies it at the same clock and
// passes it on; the last copy acknowledges, and each copy acknowledges up
// the chain once every copy after it has. A ReplMsg carries entries down
// or acknowledgements up, never both:
//
//	downpour.<job>.p<v>.ps.<shard>.repl   ReplMsg (published; no reply)
//
// A shard refuses a ReplMsg of another placement version: a primary the
// job has replaced (fenced off, a zombie) can get no update acknowledged.

// Entry is one update of one block, as the primary applied it: at clock
// At, the gradient Data (sparse when Spans is set; for a sync step, the
// replicas' mean), or nothing when Skip (a non-finite gradient the policy
// skipped: the clock moves, the parameters do not). Rank, Epoch and Step
// name the push it came from (ssp and async), so that a copy drops a
// resend of it as the primary does.
//
// A State entry carries part of the block's whole state at clock At
// instead of an update, for a copy that joins the chain (or a next copy
// that may lack updates the acknowledgements no longer hold): Part 0 its
// parameters, with, in ssp and async, each rank's last step applied
// (Lasts) and each rank's epoch (Epochs); Part k its optimizer's slot k-1;
// Parts is how many parts the state has. Each is little-endian float32s,
// one block long.
type Entry struct {
	ID     uint32   `msgpack:"i"`
	At     int64    `msgpack:"a"`
	Skip   bool     `msgpack:"k,omitempty"`
	Rank   uint32   `msgpack:"r,omitempty"`
	Epoch  uint64   `msgpack:"e,omitempty"`
	Step   int64    `msgpack:"s,omitempty"`
	Data   []byte   `msgpack:"b,omitempty"`
	Spans  []byte   `msgpack:"p,omitempty"`
	State  bool     `msgpack:"st,omitempty"`
	Part   uint8    `msgpack:"pt,omitempty"`
	Parts  uint8    `msgpack:"ps,omitempty"`
	Lasts  []int64  `msgpack:"l,omitempty"`
	Epochs []uint64 `msgpack:"ep,omitempty"`
}

// MaxRanks bounds the ranks a state entry may name.
const MaxRanks = 1 << 16

// Ack says that every copy of block ID from the sender down the chain has
// applied Clock updates. Gap: the sender got entries beyond its clock
// (one was lost on the way): resend from Clock.
type Ack struct {
	ID    uint32 `msgpack:"i"`
	Clock int64  `msgpack:"c"`
	Gap   bool   `msgpack:"g,omitempty"`
}

// ReplMsg is a batch of entries for one shard from the copy before it in
// their blocks' chains, or of acknowledgements from the copy after it.
type ReplMsg struct {
	V         uint8   `msgpack:"v"`
	Job       string  `msgpack:"j"`
	Placement int64   `msgpack:"pv"`
	From      uint32  `msgpack:"f"`
	Entries   []Entry `msgpack:"n,omitempty"`
	Acks      []Ack   `msgpack:"a,omitempty"`
}

// ReplSubject is where shard of job's placement version listens for its
// chains' entries and acknowledgements.
func ReplSubject(job string, version int64, shard int) string {
	return fmt.Sprintf("downpour.%s.p%d.ps.%d.repl", job, version, shard)
}

// DecodeRepl decodes a replication message and checks its form: the
// version and job, entries or acknowledgements (not both, not neither,
// within MaxBlocksPerMessage), whole floats matching their spans,
// non-negative clocks and steps.
func DecodeRepl(data []byte) (*ReplMsg, error) {
	var m ReplMsg
	if err := decode(data, &m, &m.V); err != nil {
		return nil, err
	}
	if err := ValidJob(m.Job); err != nil {
		return nil, &Error{Kind: UnknownJob, Msg: err.Error()}
	}
	bad := func(format string, args ...any) (*ReplMsg, error) {
		return nil, &Error{Kind: Malformed, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case m.Placement < 1:
		return bad("placement version %d", m.Placement)
	case len(m.Entries) > 0 && len(m.Acks) > 0:
		return bad("entries and acknowledgements in one message")
	case len(m.Entries) == 0 && len(m.Acks) == 0:
		return bad("neither entries nor acknowledgements")
	case len(m.Entries) > MaxBlocksPerMessage || len(m.Acks) > MaxBlocksPerMessage:
		return nil, &Error{Kind: TooLarge, Msg: fmt.Sprintf("%d entries and %d acknowledgements in one message (limit %d)", len(m.Entries), len(m.Acks), MaxBlocksPerMessage)}
	}
	for _, e := range m.Entries {
		switch {
		case e.At < 0 || e.Step < 0:
			return bad("block %d: clock %d, step %d", e.ID, e.At, e.Step)
		case e.Skip && (e.Data != nil || e.Spans != nil):
			return bad("block %d: a skipped update that carries a gradient", e.ID)
		case e.State && (e.Skip || e.Spans != nil || len(e.Data) == 0):
			return bad("block %d: a state entry that is skipped, sparse or empty", e.ID)
		case !e.State && (e.Lasts != nil || e.Epochs != nil || e.Part != 0 || e.Parts != 0):
			return bad("block %d: ranks' steps, epochs or a state's part in an update", e.ID)
		case e.State && (e.Part >= e.Parts || e.Part > 0 && (e.Lasts != nil || e.Epochs != nil)):
			return bad("block %d: state part %d of %d", e.ID, e.Part, e.Parts)
		case len(e.Lasts) > MaxRanks || len(e.Epochs) > MaxRanks:
			return nil, &Error{Kind: TooLarge, Msg: fmt.Sprintf("block %d: %d ranks' steps and %d epochs (limit %d)", e.ID, len(e.Lasts), len(e.Epochs), MaxRanks)}
		case len(e.Data)%4 != 0:
			return nil, &Error{Kind: BadLength, Msg: fmt.Sprintf("block %d: %d bytes is not a whole number of float32", e.ID, len(e.Data))}
		}
		if e.Spans != nil {
			n, _, err := ParseSpans(e.Spans)
			if err != nil {
				return nil, err
			}
			if 4*n != len(e.Data) {
				return nil, &Error{Kind: BadLength, Msg: fmt.Sprintf("block %d: %d bytes for spans of %d floats", e.ID, len(e.Data), n)}
			}
		}
	}
	for _, a := range m.Acks {
		if a.Clock < 0 {
			return bad("block %d: acknowledged clock %d", a.ID, a.Clock)
		}
	}
	return &m, nil
}
