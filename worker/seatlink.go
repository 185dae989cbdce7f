package worker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/downpour-ml/downpour/internal/metrics"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
)

// SeatLink is one seat's link to the other seats of its model replica over
// NATS (models.SeatLink): it listens on its seat's subject and sends to
// the others', each message tagged with the replica's era, the step, the
// sender and its place in the pair's order (wire.SeatMsg). Within a step
// (Begin), Recv(from) returns from's next message of that step in order;
// a message of another era or an earlier step is dropped as stray, one
// that skips a place in the order, or will not decode, makes the pair's
// next Recv fail (its kind counted in downpour_seat_errors_total). Nothing
// a peer sends can crash the seat: at worst its step fails.
type SeatLink struct {
	nc          *nats.Conn
	job         string
	replica     int
	seat        int
	seats       int
	timeout     time.Duration
	maxPayload  int
	sub         *nats.Subscription
	errCounters map[string]prometheus.Counter
	bytesOut    prometheus.Counter

	mu      sync.Mutex
	epoch   uint64
	step    int64
	pending [][]*wire.SeatMsg // per sender: whole messages, in order
	partial []*wire.SeatMsg   // per sender: a message whose parts still arrive
	bad     []error           // per sender: what went wrong with its messages
	sent    []uint32          // per receiver: messages sent in this step
	got     []uint32          // per sender: messages taken in this step
	arrived chan struct{}     // closed and replaced when a message arrives
	stats   SeatStats
	// The connection's reconnects when the step before this one began,
	// and when this one did: a reconnect since the first may have lost
	// messages of this step (the server drops what a client misses).
	reconnectsBefore, reconnectsAtBegin uint64

	// The replica's formation (Ready): the placement's version it is
	// formed under, this seat's holder's epoch and attempt, who holds
	// each seat as far as this seat has heard, each seat's last hello,
	// and each seat's hello when the formation completed.
	version   uint64
	mine      uint64
	round     uint64
	holders   []uint64
	heard     []seatHello
	formedAt  [][2]uint64
	formed    bool
	era       uint64
	fenced    error
	begun     int64           // how many of the replica's steps this seat has begun
	orders    []*wire.SeatMsg // from seat 0, not yet taken
	orderPart *wire.SeatMsg   // an order whose parts still arrive
	ordered   int64           // the last order taken in this era's step numbers; -1: none
}

// seatHello is the last hello heard from a seat: its holder's epoch and
// attempt (key), its view of the holders, and the steps it had begun.
type seatHello struct {
	key     [2]uint64
	holders []uint64
	begun   int64
}

// SeatStats is what a seat's link has moved and waited for.
type SeatStats struct {
	SentBytes, RecvBytes int64
	Waited               time.Duration // in Recv, for messages not yet arrived
	Stray, Errors        int64
}

// NewSeatLink listens as seat of job's replica (of seats seats).
// timeout bounds each Recv's wait (a seat that has died is seen as one
// that does not answer).
func NewSeatLink(nc *nats.Conn, job string, replica, seat, seats int, timeout time.Duration) (*SeatLink, error) {
	if seat < 0 || seat >= seats {
		return nil, fmt.Errorf("seat %d of %d", seat, seats)
	}
	l := &SeatLink{nc: nc, job: job, replica: replica, seat: seat, seats: seats, timeout: timeout,
		maxPayload: int(nc.MaxPayload()), errCounters: map[string]prometheus.Counter{},
		bytesOut: metrics.SeatBytes.WithLabelValues(job, strconv.Itoa(replica), strconv.Itoa(seat)),
		pending:  make([][]*wire.SeatMsg, seats), partial: make([]*wire.SeatMsg, seats),
		bad: make([]error, seats), sent: make([]uint32, seats), got: make([]uint32, seats),
		arrived: make(chan struct{}), step: -1, holders: make([]uint64, seats), heard: make([]seatHello, seats),
		formedAt: make([][2]uint64, seats), ordered: -1}
	sub, err := nc.Subscribe(wire.SeatSubject(job, replica, seat), l.receive)
	if err != nil {
		return nil, err
	}
	// A step's activations can be many messages at once: hold them all
	// rather than drop any (the link's own queues are the backlog).
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		sub.Unsubscribe()
		return nil, err
	}
	if err := nc.Flush(); err != nil {
		sub.Unsubscribe()
		return nil, err
	}
	// The server refuses a subscription beyond the identity's permissions
	// before it answers the flush: say so now, not at the first timeout.
	if err := nc.LastError(); err != nil && strings.Contains(err.Error(), sub.Subject) {
		sub.Unsubscribe()
		return nil, fmt.Errorf("listening as seat %d of replica %d: %w", seat, replica, err)
	}
	l.sub = sub
	return l, nil
}

// Close stops listening.
func (l *SeatLink) Close() error { return l.sub.Unsubscribe() }

// Begin starts step of the replica's era epoch: messages of earlier steps
// or eras still queued are dropped, and each pair's order starts again.
// On a link whose formation (Ready) has broken since, every wait of the
// step fails with ErrSeatRejoined.
func (l *SeatLink) Begin(epoch uint64, step int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.epoch, l.step = epoch, step
	l.begun = max(l.begun, step+1)
	l.reconnectsBefore, l.reconnectsAtBegin = l.reconnectsAtBegin, l.nc.Stats().Reconnects
	for from := range l.seats {
		q := l.pending[from]
		for len(q) > 0 && l.stray(q[0]) {
			q = q[1:]
			l.stats.Stray++
		}
		l.pending[from] = q
		if p := l.partial[from]; p != nil && l.stray(p) {
			l.partial[from] = nil
		}
		l.bad[from], l.sent[from], l.got[from] = nil, 0, 0
		if l.round > 0 && !l.formed {
			l.bad[from] = fmt.Errorf("%w: before step %d", ErrSeatRejoined, step)
		}
	}
}

// order takes a part of seat 0's order. l.mu is held.
func (l *SeatLink) order(m *wire.SeatMsg) {
	if m.From != 0 {
		l.fail(-1, "bad_sender", fmt.Errorf("an order from seat %d: only seat 0 orders", m.From))
		return
	}
	if p := l.orderPart; p != nil {
		l.orderPart = nil
		if m.Step != p.Step || m.Epoch != p.Epoch || m.Seq != p.Seq {
			l.fail(-1, "lost", fmt.Errorf("%w: a part of seat 0's order of step %d is missing", ErrSeatLost, p.Step))
			return
		}
		p.Data = append(p.Data, m.Data...)
		p.More = m.More
		m = p
	}
	if m.More {
		l.orderPart = m
		return
	}
	switch {
	case m.Epoch < l.era:
		l.stats.Stray++
	case uint64(len(m.Data)) != 4*uint64(m.Shape[0])*uint64(m.Shape[2]):
		l.fail(-1, "malformed", fmt.Errorf("%w: seat 0's order of step %d: %d label bytes for a batch of %d x %d", ErrSeatLost, m.Step, len(m.Data), m.Shape[0], m.Shape[2]))
	case len(l.orders) >= maxOrders:
		l.fail(-1, "lost", fmt.Errorf("%w: more than %d orders not taken", ErrSeatLost, maxOrders))
	default:
		l.orders = append(l.orders, m)
	}
}

// maxOrders bounds the orders a seat holds not yet taken: seat 0 orders
// a step only once the last is done, so more are a peer gone wrong.
const maxOrders = 64

// SeatOrder is seat 0's order to the replica's other seats to run a step:
// the replica's step N (its push number), the batch of data step At of
// data shard Shard, and whether it is its task's last (async and ssp,
// where seat 0 takes the replica's tasks). Seat 0 is the replica's only
// reader: the order carries what the others need of the batch, its shape
// and its labels (the slices' targets, the top stage's loss).
type SeatOrder struct {
	N     int64
	Shard int
	At    int64
	Last  bool
	// Size, SrcLen, TgtLen are the batch's shape, Labels its TgtOut.
	Size, SrcLen, TgtLen int
	Labels               []int32
}

// SendOrder sends o to every other seat of the formed replica (seat 0
// only).
func (l *SeatLink) SendOrder(o SeatOrder) error {
	l.mu.Lock()
	formed, era := l.formed, l.era
	l.mu.Unlock()
	if l.seat != 0 {
		return fmt.Errorf("seat %d: only seat 0 orders the replica's steps", l.seat)
	}
	if !formed {
		return fmt.Errorf("%w: ordering step %d", ErrSeatRejoined, o.N)
	}
	if o.Size < 0 || o.SrcLen < 0 || o.TgtLen < 0 || len(o.Labels) != o.Size*o.TgtLen {
		return fmt.Errorf("ordering step %d: %d labels for a batch of %d x %d", o.N, len(o.Labels), o.Size, o.TgtLen)
	}
	labels := make([]byte, 0, 4*len(o.Labels))
	for _, y := range o.Labels {
		labels = binary.LittleEndian.AppendUint32(labels, uint32(y))
	}
	parts, err := wire.SplitSeat(&wire.SeatMsg{V: wire.Version, Epoch: era, Step: o.N, Order: true, Shard: uint32(o.Shard), At: o.At, Last: o.Last,
		Shape: []uint32{uint32(o.Size), uint32(o.SrcLen), uint32(o.TgtLen)}, Data: labels}, l.maxPayload)
	if err != nil {
		return err
	}
	for to := 1; to < l.seats; to++ {
		if err := l.publish(to, parts); err != nil {
			return err
		}
	}
	return nil
}

// publish sends a message's parts to seat to, and counts their bytes.
func (l *SeatLink) publish(to int, parts [][]byte) error {
	subj := wire.SeatSubject(l.job, l.replica, to)
	n := 0
	for _, p := range parts {
		if err := l.nc.Publish(subj, p); err != nil {
			return err
		}
		n += len(p)
	}
	l.bytesOut.Add(float64(n))
	l.mu.Lock()
	l.stats.SentBytes += int64(n)
	l.mu.Unlock()
	return nil
}

// NextOrder waits for seat 0's next order of the formed era: one for a
// later step than the last taken (an order of an earlier era, or for a
// step already taken, is stray). It fails with ErrSeatRejoined when the
// formation breaks first, and waits without a limit otherwise (seat 0
// may wait for a task), but for ctx.
func (l *SeatLink) NextOrder(ctx context.Context) (SeatOrder, error) {
	stop := context.AfterFunc(ctx, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.wake()
	})
	defer stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if err := ctx.Err(); err != nil {
			return SeatOrder{}, err
		}
		if l.fenced != nil {
			return SeatOrder{}, l.fenced
		}
		if !l.formed {
			return SeatOrder{}, fmt.Errorf("%w: waiting for an order", ErrSeatRejoined)
		}
		for len(l.orders) > 0 {
			m := l.orders[0]
			l.orders = l.orders[1:]
			switch {
			case m.Epoch < l.era || m.Epoch == l.era && m.Step <= l.ordered:
				l.stats.Stray++
				continue
			case m.Epoch > l.era:
				// Seat 0 formed an era this seat has not: it is behind.
				l.formed = false
				return SeatOrder{}, fmt.Errorf("%w: an order of era %d in era %d", ErrSeatRejoined, m.Epoch, l.era)
			}
			l.ordered = m.Step
			o := SeatOrder{N: m.Step, Shard: int(m.Shard), At: m.At, Last: m.Last,
				Size: int(m.Shape[0]), SrcLen: int(m.Shape[1]), TgtLen: int(m.Shape[2]), Labels: make([]int32, len(m.Data)/4)}
			for i := range o.Labels {
				o.Labels[i] = int32(binary.LittleEndian.Uint32(m.Data[4*i:]))
			}
			return o, nil
		}
		arrived := l.arrived
		l.mu.Unlock()
		<-arrived
		l.mu.Lock()
	}
}

// Formation is a replica's seats formed for an era (SeatLink.Ready).
type Formation struct {
	// Era tags every message of the formation: the placement's version
	// and the seats' holders. Messages of an earlier era are stray.
	Era uint64
	// Begun is how many of the replica's steps its seats have begun (the
	// most any seat has): seat 0 numbers the steps it orders from there.
	Begun int64
}

// Ready forms the replica under placement version, this seat held by the
// holder of epoch holder: it waits until every other seat listens and
// agrees on who holds each seat, telling them that this one does. It
// says hello to each, with what it knows, until each has answered with
// the same view, then once more (a peer that had not heard it all yet
// has it then), so that every seat completes with the same Formation.
//
// A formed seat that hears a seat's new holder, or a seat forming again
// (it lost its step), fails its waits at once with ErrSeatRejoined and
// must form again (Formed reports false): so a replica that loses a seat
// re-forms around its new holder as soon as it says hello. A hello that
// says another holder has this very seat fences this one off
// (ErrSeatFenced).
func (l *SeatLink) Ready(ctx context.Context, version, holder uint64) (Formation, error) {
	l.mu.Lock()
	switch {
	case version < l.version:
		l.mu.Unlock()
		return Formation{}, fmt.Errorf("forming the replica under placement %d, after %d", version, l.version)
	case version > l.version:
		l.version = version
		clear(l.holders)
		clear(l.heard)
	}
	if l.fenced != nil {
		l.mu.Unlock()
		return Formation{}, l.fenced
	}
	l.mine = holder
	l.holders[l.seat] = max(l.holders[l.seat], holder)
	l.round++
	l.formed = false
	l.mu.Unlock()
	say := func(hello []byte) error {
		for to := range l.seats {
			if to != l.seat {
				if err := l.nc.Publish(wire.SeatSubject(l.job, l.replica, to), hello); err != nil {
					return err
				}
			}
		}
		return l.nc.Flush()
	}
	deadline := time.Now().Add(l.timeout)
	for {
		l.mu.Lock()
		if l.fenced != nil {
			l.mu.Unlock()
			return Formation{}, l.fenced
		}
		hello, err := wire.Encode(&wire.SeatMsg{V: wire.Version, Epoch: version, From: uint16(l.seat), Hello: true,
			Holders: slices.Clone(l.holders), Round: l.round, Step: l.begun})
		if err != nil {
			l.mu.Unlock()
			return Formation{}, err
		}
		agree, begun := 0, l.begun
		for j, h := range l.heard {
			if j != l.seat && h.key[0] == l.holders[j] && h.key[0] > 0 && slices.Equal(h.holders, l.holders) {
				agree++
				begun = max(begun, h.begun)
			}
		}
		done := agree == l.seats-1
		var f Formation
		if done {
			var sum uint64
			for _, h := range l.holders {
				sum += h
			}
			l.era = version<<32 | sum&0xffffffff
			l.formed = true
			for j, h := range l.heard {
				l.formedAt[j] = h.key
			}
			l.ordered = -1
			l.orders = slices.DeleteFunc(l.orders, func(m *wire.SeatMsg) bool { return m.Epoch < l.era })
			f = Formation{Era: l.era, Begun: begun}
		}
		l.mu.Unlock()
		if err := say(hello); err != nil {
			return Formation{}, err
		}
		if done {
			return f, nil
		}
		if time.Now().After(deadline) {
			return Formation{}, fmt.Errorf("%w: %d of the replica's %d other seats agree after %v", ErrSeatTimeout, agree, l.seats-1, l.timeout)
		}
		select {
		case <-ctx.Done():
			return Formation{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Formed reports whether the replica is formed: false before Ready and
// after a seat's new holder or new attempt was heard.
func (l *SeatLink) Formed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.formed
}

// ErrSeatRejoined is the error of a wait that a seat's new holder, or a
// seat's new attempt to form the replica, interrupted: the step is
// dropped, and the seat forms the replica again (Ready).
var ErrSeatRejoined = errors.New("a seat of the replica rejoined: the replica forms again")

// ErrSeatFenced is the error of a seat whose holder has been replaced (a
// worker frozen past its lease, say): it is fenced off (ErrFenced).
var ErrSeatFenced = fmt.Errorf("%w: another holder has this seat of the replica", ErrFenced)

// hello takes a seat's hello. l.mu is held.
func (l *SeatLink) hello(m *wire.SeatMsg) {
	from := int(m.From)
	if len(m.Holders) != l.seats {
		l.fail(-1, "malformed", fmt.Errorf("%w: a hello from seat %d names %d holders of %d seats", ErrSeatLost, from, len(m.Holders), l.seats))
		return
	}
	if m.Epoch != l.version {
		return // of an earlier placement; or a later one, whose seats say it again until this one is there
	}
	key := [2]uint64{m.Holders[from], m.Round}
	if h := l.heard[from]; key[0] < h.key[0] || key[0] == h.key[0] && key[1] < h.key[1] {
		return // a former holder's, or an earlier attempt's
	}
	if l.mine > 0 && m.Holders[l.seat] > l.mine {
		l.fenced = fmt.Errorf("%w: seat %d says epoch %d holds it, this is epoch %d", ErrSeatFenced, from, m.Holders[l.seat], l.mine)
		l.formed = false
		l.fail(-1, "fenced", l.fenced)
		return
	}
	l.heard[from] = seatHello{key: key, holders: m.Holders, begun: m.Step}
	changed := false
	for j, h := range m.Holders {
		if j != l.seat && h > l.holders[j] {
			l.holders[j], changed = h, true
		}
	}
	if f := l.formedAt[from]; l.formed && (changed || key != f) {
		l.formed = false
		l.fail(-1, "rejoined", fmt.Errorf("%w: seat %d (holder epoch %d, attempt %d)", ErrSeatRejoined, from, key[0], key[1]))
	}
}

// stray says whether m belongs to an earlier step or era. l.mu is held.
func (l *SeatLink) stray(m *wire.SeatMsg) bool {
	return m.Epoch < l.epoch || m.Epoch == l.epoch && m.Step < l.step
}

// Stats returns what the link has moved and waited for so far.
func (l *SeatLink) Stats() SeatStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// receive takes one NATS message: a part of a seat's message.
func (l *SeatLink) receive(msg *nats.Msg) {
	m, err := wire.DecodeSeat(msg.Data)
	l.mu.Lock()
	defer l.mu.Unlock()
	defer l.wake()
	l.stats.RecvBytes += int64(len(msg.Data))
	if err != nil {
		// Which pair it came from is unknown: every Recv of the step fails.
		l.fail(-1, wire.ErrKind(err).String(), err)
		return
	}
	from := int(m.From)
	if from >= l.seats || from == l.seat {
		l.fail(-1, "bad_sender", fmt.Errorf("a message from seat %d of %d", from, l.seats))
		return
	}
	if m.Hello {
		l.hello(m)
		return
	}
	if m.Order {
		l.order(m)
		return
	}
	if l.stray(m) {
		l.stats.Stray++
		return
	}
	if p := l.partial[from]; p != nil {
		if m.Seq != p.Seq || m.Step != p.Step || m.Epoch != p.Epoch {
			l.fail(from, "lost", fmt.Errorf("%w: seat %d: a part of message %d is missing", ErrSeatLost, from, p.Seq))
			l.partial[from] = nil
			return
		}
		p.Data = append(p.Data, m.Data...)
		p.More = m.More
		m = p
	}
	if m.More {
		l.partial[from] = m
		return
	}
	l.partial[from] = nil
	l.pending[from] = append(l.pending[from], m)
}

// fail records err against sender from (-1: every sender) and counts it.
// l.mu is held.
func (l *SeatLink) fail(from int, kind string, err error) {
	c, ok := l.errCounters[kind]
	if !ok {
		c = metrics.SeatErrors.WithLabelValues(l.job, kind)
		l.errCounters[kind] = c
	}
	c.Inc()
	l.stats.Errors++
	for f := range l.seats {
		if (from < 0 || f == from) && l.bad[f] == nil {
			l.bad[f] = err
		}
	}
}

// wake tells waiting Recvs that something arrived. l.mu is held.
func (l *SeatLink) wake() {
	close(l.arrived)
	l.arrived = make(chan struct{})
}

// reconnectCheck is how often a waiting Recv looks whether its connection
// has reconnected.
const reconnectCheck = 250 * time.Millisecond

// ErrSeatTimeout is the error of a Recv whose message did not come in time:
// its sender has died, been cut off, or is much slower than the timeout.
var ErrSeatTimeout = errors.New("no message from the seat in time")

// ErrSeatLost is the error of a Recv whose pair's messages came out of
// order: one was lost (or a part of one), or the sender runs another step.
var ErrSeatLost = errors.New("a seat's message was lost or out of order")

// Send sends m to seat to, in parts that fit the server's messages.
func (l *SeatLink) Send(to int, m models.SeatMsg[float32]) error {
	l.mu.Lock()
	seq := l.sent[to]
	l.sent[to]++
	w := &wire.SeatMsg{V: wire.Version, Epoch: l.epoch, Step: l.step, From: uint16(l.seat), Seq: seq,
		T0: uint32(m.T0), T1: uint32(m.T1), Data: wire.FloatBytes(m.Data), Ys: wire.FloatBytes(m.Ys),
		Squares: wire.AppendFloat64s(nil, m.Squares), Norm: m.Norm}
	l.mu.Unlock()
	if m.Stats != nil {
		w.Stats = make([]byte, 0, 16*len(m.Stats))
		for _, s := range m.Stats {
			w.Stats = wire.AppendFloat64s(w.Stats, []float64{s.Max, s.Sum})
		}
	}
	if m.Has != nil {
		w.Has = make([]byte, len(m.Has))
		for i, h := range m.Has {
			if h {
				w.Has[i] = 1
			}
		}
	}
	parts, err := wire.SplitSeat(w, l.maxPayload)
	if err != nil {
		return err
	}
	return l.publish(to, parts)
}

// Recv returns seat from's next message of the step.
func (l *SeatLink) Recv(from int) (models.SeatMsg[float32], error) {
	deadline := time.Now().Add(l.timeout)
	var waitStart time.Time
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if err := l.bad[from]; err != nil {
			return models.SeatMsg[float32]{}, err
		}
		if q := l.pending[from]; len(q) > 0 {
			m := q[0]
			l.pending[from] = q[1:]
			if !waitStart.IsZero() {
				l.stats.Waited += time.Since(waitStart)
			}
			// (Strays never queue: receive drops them as they arrive, and
			// Begin those left from the step before.)
			if m.Epoch != l.epoch || m.Step != l.step || m.Seq != l.got[from] {
				err := fmt.Errorf("%w: seat %d sent message %d of era %d step %d where message %d of era %d step %d was due", ErrSeatLost, from, m.Seq, m.Epoch, m.Step, l.got[from], l.epoch, l.step)
				l.fail(from, "out_of_order", err)
				return models.SeatMsg[float32]{}, err
			}
			l.got[from]++
			return toModel(m), nil
		}
		if waitStart.IsZero() {
			waitStart = time.Now()
		}
		if n := l.nc.Stats().Reconnects; n > l.reconnectsBefore {
			// The connection to NATS went and came back in this step or
			// the one before: what was sent to this seat meanwhile is
			// lost, and a wait for it would end only at the timeout
			// (minutes). The seat cannot tell a lost message from one not
			// yet sent, so it fails the step now: in a sync job that
			// costs a rollback (seconds), where a lost message would cost
			// the timeout; a step whose messages have all arrived is not
			// failed.
			err := fmt.Errorf("%w: seat %d: the connection to NATS reconnected (%d times) since step %d began", ErrSeatLost, from, n-l.reconnectsBefore, l.step-1)
			l.fail(from, "reconnect", err)
			return models.SeatMsg[float32]{}, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return models.SeatMsg[float32]{}, fmt.Errorf("%w: seat %d, after %v (step %d)", ErrSeatTimeout, from, l.timeout, l.step)
		}
		arrived := l.arrived
		l.mu.Unlock()
		t := time.NewTimer(min(left, reconnectCheck))
		select {
		case <-arrived:
		case <-t.C:
		}
		t.Stop()
		l.mu.Lock()
	}
}

// toModel turns a decoded message into the model's.
func toModel(m *wire.SeatMsg) models.SeatMsg[float32] {
	out := models.SeatMsg[float32]{T0: int(m.T0), T1: int(m.T1), Norm: m.Norm}
	var ok bool
	if m.Data != nil {
		if out.Data, ok = wire.Floats(m.Data); !ok {
			out.Data = make([]float32, len(m.Data)/4)
			wire.CopyFloats(out.Data, m.Data)
		}
	}
	if m.Ys != nil {
		out.Ys = make([]float32, len(m.Ys)/4)
		wire.CopyFloats(out.Ys, m.Ys)
	}
	if m.Stats != nil {
		f := wire.Float64s(m.Stats)
		out.Stats = make([]models.SoftmaxStats, len(f)/2)
		for i := range out.Stats {
			out.Stats[i] = models.SoftmaxStats{Max: f[2*i], Sum: f[2*i+1]}
		}
	}
	if m.Has != nil {
		out.Has = make([]bool, len(m.Has))
		for i, h := range m.Has {
			out.Has[i] = h == 1
		}
	}
	if m.Squares != nil {
		out.Squares = wire.Float64s(m.Squares)
	}
	return out
}

// SeatContext ends l's waits when ctx ends: a Recv in progress returns
// once it next wakes, and none waits past ctx.
func (l *SeatLink) SeatContext(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for f := range l.seats {
			if l.bad[f] == nil {
				l.bad[f] = ctx.Err()
			}
		}
		l.wake()
	})
}
