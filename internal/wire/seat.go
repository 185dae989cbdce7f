package wire

import (
	"encoding/binary"
	"fmt"
	"math"
)

// A model replica laid out over seats (models.StagePlan: stages running the
// LSTM layers, slices running the softmax's vocabulary blocks) passes
// SeatMsgs between its seats during a step: activations and gradients a
// chunk of time steps at a time, the softmax's per-row statistics, the
// running input gradient, the clip's sums of squares and norm. A seat
// listens on one subject (SeatSubject); the sender, the replica's era and
// the step say which exchange a message belongs to, and Seq its place in
// the pair's order, so that a lost or stray message is seen as such.
//
// A message whose Data does not fit the server's max_payload goes as
// several parts of the same Seq: the first carries every field and the
// start of Data, each with More set is followed by one carrying more of
// Data (SplitSeat, and the receiver appends).

// SeatMsg is one message (or part of one) between two seats.
type SeatMsg struct {
	V     uint8  `msgpack:"v"`
	Epoch uint64 `msgpack:"e"` // the replica's era: messages of another are stray
	Step  int64  `msgpack:"s"`
	From  uint16 `msgpack:"f"` // the sender's seat
	Seq   uint32 `msgpack:"q"` // the message's place among the pair's in the step
	More  bool   `msgpack:"m,omitempty"`
	// Hello says only that the sender listens (SeatLink.Ready): no seat
	// sends a step's messages before every other seat of its replica does,
	// since NATS drops what is sent to a subject no one listens to.
	Hello bool `msgpack:"hi,omitempty"`
	// A hello also says who the sender believes holds each seat of the
	// replica (Holders: each seat's rank holder's epoch, its own exact),
	// which of its attempts to form the replica it is (Round), and, in
	// Step, how many of the replica's steps it has begun (0: none). The
	// replica's era follows from the placement's version (Epoch) and the
	// holders: a seat given to a new holder starts a new era.
	Holders []uint64 `msgpack:"hv,omitempty"`
	Round   uint64   `msgpack:"r,omitempty"`
	// Order (from seat 0, the replica's reader: it takes the replica's
	// tasks in async and ssp, and reads its batches in every mode) tells
	// the other seats to run step Step: the batch of data step At of data
	// shard Shard, of Shape (size, source length, target length), whose
	// labels are Data (int32s, time-major; negative: padding); Last marks
	// a task's last step.
	Order bool     `msgpack:"o,omitempty"`
	Shard uint32   `msgpack:"ds,omitempty"`
	At    int64    `msgpack:"at,omitempty"`
	Last  bool     `msgpack:"l,omitempty"`
	Shape []uint32 `msgpack:"sh,omitempty"`
	T0    uint32   `msgpack:"t0,omitempty"` // time steps [T0, T1) of Data
	T1    uint32   `msgpack:"t1,omitempty"`
	// Data holds float32s, Ys float32s, Stats float64 pairs (max, sum),
	// Squares float64s, all little-endian; Has a byte (0 or 1) per row.
	Data    []byte  `msgpack:"d,omitempty"`
	Stats   []byte  `msgpack:"x,omitempty"`
	Ys      []byte  `msgpack:"y,omitempty"`
	Has     []byte  `msgpack:"h,omitempty"`
	Squares []byte  `msgpack:"sq,omitempty"`
	Norm    float64 `msgpack:"n,omitempty"`
}

// MaxSeats bounds the seats of a replica a message may name.
const MaxSeats = 4096

// MaxLabels bounds the labels of a batch an order carries (batch size x
// target length).
const MaxLabels = 1 << 24

// SeatSubject is where seat of job's replica listens.
func SeatSubject(job string, replica, seat int) string {
	return fmt.Sprintf("downpour.%s.seat.%d.%d", job, replica, seat)
}

// DecodeSeat decodes a message between seats and checks what a receiver
// cannot check against its step: the version, whole floats, rows of one
// byte 0 or 1, time steps in order, a non-negative step.
func DecodeSeat(data []byte) (*SeatMsg, error) {
	var m SeatMsg
	if err := decode(data, &m, &m.V); err != nil {
		return nil, err
	}
	bad := func(format string, args ...any) (*SeatMsg, error) {
		return nil, &Error{Kind: Malformed, Msg: fmt.Sprintf(format, args...)}
	}
	switch {
	case m.Step < 0:
		return bad("step %d", m.Step)
	case m.T1 < m.T0:
		return bad("time steps [%d, %d)", m.T0, m.T1)
	case len(m.Data)%4 != 0 || len(m.Ys)%4 != 0:
		return bad("%d data and %d target bytes: not whole float32s", len(m.Data), len(m.Ys))
	case len(m.Stats)%16 != 0 || len(m.Squares)%8 != 0:
		return bad("%d statistics and %d square bytes: not whole float64s", len(m.Stats), len(m.Squares))
	case math.IsNaN(m.Norm) || m.Norm < 0:
		return bad("norm %v", m.Norm)
	case m.Hello && m.Order:
		return bad("a hello that is also an order")
	case !m.Hello && (m.Holders != nil || m.Round != 0):
		return bad("holders or a round in a message that is not a hello")
	case len(m.Holders) > MaxSeats:
		return bad("%d holders: at most %d seats", len(m.Holders), MaxSeats)
	case m.At < 0:
		return bad("data step %d", m.At)
	case m.Order && len(m.Shape) != 3 || !m.Order && m.Shape != nil:
		return bad("an order's batch shape of %d numbers", len(m.Shape))
	case m.Order && uint64(m.Shape[0])*uint64(m.Shape[2]) > MaxLabels:
		return bad("a batch of %d x %d labels: at most %d", m.Shape[0], m.Shape[2], MaxLabels)
	}
	for _, h := range m.Has {
		if h > 1 {
			return bad("a row's target flag is %d", h)
		}
	}
	return &m, nil
}

// SplitSeat cuts m into parts whose encodings fit in maxPayload bytes,
// cutting only Data (at whole floats): every part but the last has More
// set, and the first carries every other field.
func SplitSeat(m *SeatMsg, maxPayload int) ([][]byte, error) {
	head := *m
	head.Data = nil
	b, err := Encode(&head)
	if err != nil {
		return nil, err
	}
	const slack = 16 // the data field's key and bin header
	room := (maxPayload - len(b) - slack) / 4 * 4
	if room < 4 && len(m.Data) > 0 || len(b)+slack > maxPayload {
		return nil, &Error{Kind: TooLarge, Msg: fmt.Sprintf("a seat message's fields take %d bytes of the server's %d-byte messages", len(b), maxPayload)}
	}
	var out [][]byte
	data, part := m.Data, head
	for first := true; first || len(data) > 0; first = false {
		n := min(len(data), room)
		part.Data, part.More = data[:n], n < len(data)
		if b, err = Encode(&part); err != nil {
			return nil, err
		}
		out = append(out, b)
		data = data[n:]
		part = SeatMsg{V: m.V, Epoch: m.Epoch, Step: m.Step, From: m.From, Seq: m.Seq, Order: m.Order, Shape: m.Shape}
	}
	return out, nil
}

// AppendFloat64s appends f's little-endian bytes to dst.
func AppendFloat64s(dst []byte, f []float64) []byte {
	for _, v := range f {
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(v))
	}
	return dst
}

// Float64s reads b (a multiple of 8 bytes) as little-endian float64s.
func Float64s(b []byte) []float64 {
	out := make([]float64, len(b)/8)
	for i := range out {
		out[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return out
}
