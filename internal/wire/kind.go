package wire

import "fmt"

// Kind is the stable reason a message was refused. The list is append-only:
// a Kind's number never changes meaning, because it crosses the wire.
type Kind uint8

const (
	OK           Kind = iota // accepted
	Malformed                // not a decodable message of the expected type
	BadVersion               // a protocol version this receiver does not speak
	UnknownJob               // a job this receiver does not serve
	UnknownBlock             // a block id this shard does not own
	BadLength                // a block's length differs from its placement
	NonFinite                // a gradient holds NaN or Inf
	StaleEpoch               // the sender's epoch is older than its rank's current one
	TooLarge                 // more blocks or bytes than the limits allow
	Internal                 // the receiver failed; the message may be retried
	BadStep                  // a step the receiver's clock does not allow (sync: only the current step)
	BadRank                  // a rank outside the job's ranks
	Expired                  // a held pull waited longer than the shard holds pulls; resend it
	Refused                  // a valid request the receiver cannot honour now (e.g. a snapshot step already passed)
	Superseded               // addressed to a placement the job has replaced: wait for the new one (or, fenced off, stop)
	Gone                     // an exact pull of a step whose parameters the shard no longer holds
	numKinds
)

var kindNames = [...]string{
	OK: "ok", Malformed: "malformed", BadVersion: "bad_version", UnknownJob: "unknown_job",
	UnknownBlock: "unknown_block", BadLength: "bad_length", NonFinite: "non_finite",
	StaleEpoch: "stale_epoch", TooLarge: "too_large", Internal: "internal", BadStep: "bad_step",
	BadRank: "bad_rank", Expired: "expired", Refused: "refused", Superseded: "superseded", Gone: "gone",
}

// NumKinds is the number of defined kinds, for per-kind counters.
const NumKinds = int(numKinds)

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Error is a refusal with a stable Kind; it crosses the wire as (Kind, Msg).
type Error struct {
	Kind Kind
	Msg  string
}

func (e *Error) Error() string { return e.Kind.String() + ": " + e.Msg }

// Is makes errors.Is(err, &Error{Kind: k}) match on the kind alone.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Kind == e.Kind && t.Msg == ""
}
