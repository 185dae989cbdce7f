package worker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
)

// seatBatch is a batch of random tokens for cfg.
func seatBatch(rng *rand.Rand, cfg models.Seq2SeqConfig, size, srcLen, tgtLen int) *models.SeqBatch {
	b := &models.SeqBatch{Size: size, SrcLen: srcLen, TgtLen: tgtLen}
	for range size * srcLen {
		b.Src = append(b.Src, int32(rng.IntN(cfg.SrcVocab)))
	}
	for i := range size * tgtLen {
		b.TgtIn = append(b.TgtIn, int32(rng.IntN(cfg.TgtVocab)))
		y := int32(rng.IntN(cfg.TgtVocab))
		if i%5 == 4 {
			y = -1 // padding
		}
		b.TgtOut = append(b.TgtOut, y)
	}
	return b
}

// runSeats runs one step of b on every seat, each in its own goroutine
// over its own link, forming the replica first if it is not.
func runSeats(ms []*models.Seq2Seq[float32], links []*SeatLink, plan models.StagePlan, epoch uint64, step int64, b *models.SeqBatch, chunk int) (loss float64, tokens int, errs []error) {
	errs = make([]error, len(ms))
	var wg sync.WaitGroup
	for seat := range ms {
		wg.Go(func() {
			if !links[seat].Formed() {
				if _, err := links[seat].Ready(context.Background(), epoch, 1); err != nil {
					errs[seat] = err
					return
				}
			}
			links[seat].Begin(links[seat].era, step)
			l, n, err := ms[seat].SeatStep(plan, seat, b, chunk, 0.5, links[seat])
			if seat == plan.Stages-1 {
				loss, tokens = l, n
			}
			errs[seat] = err
		})
	}
	wg.Wait()
	return loss, tokens, errs
}

// A replica's seats, each on its own NATS connection (or all on one), the
// server's messages small enough that activations go in many parts,
// compute two steps bit for bit as the model does in one process: the
// loss, and every tensor's clipped gradient on the seat that holds it.
// (With -tags openblas, whose products by rows are not bits of the whole,
// to rounding, as models' own staged tests.)
func TestSeatsOverNATSGiveOneProcessBits(t *testing.T) {
	same := func(a, b []float32) bool { return slices.Equal(a, b) }
	sameLoss := func(a, b float64) bool { return a == b }
	if models.BLAS == "openblas" {
		same = func(a, b []float32) bool {
			return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Abs(float64(x-y)) <= 1e-4*(1+math.Abs(float64(y))) })
		}
		sameLoss = func(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Abs(b) }
	}
	srv := testenv.NATS(t, 8<<10)
	cfg := models.Seq2SeqConfig{SrcVocab: 50, TgtVocab: 41, Embed: 12, Hidden: 24, Layers: 4, SoftmaxBlocks: 3}
	rng := rand.New(rand.NewPCG(3, 4))
	batches := []*models.SeqBatch{seatBatch(rng, cfg, 6, 7, 9), seatBatch(rng, cfg, 5, 4, 3)}
	ref := models.NewSeq2Seq[float32](cfg)
	ref.Init(11)
	offs := models.Offsets(cfg.Tensors())
	for _, c := range []struct {
		stages, slices, chunk int
		shared                bool
	}{{2, 1, 2, false}, {3, 2, 1, false}, {4, 3, 3, true}} {
		t.Run(fmt.Sprintf("stages=%d,slices=%d,shared=%v", c.stages, c.slices, c.shared), func(t *testing.T) {
			plan, err := cfg.Plan(c.stages, c.slices)
			if err != nil {
				t.Fatal(err)
			}
			one := testenv.Conn(t, srv.ClientURL())
			ms := make([]*models.Seq2Seq[float32], plan.Seats())
			links := make([]*SeatLink, plan.Seats())
			job := fmt.Sprintf("s%d", c.stages)
			for seat := range ms {
				ms[seat] = models.NewSeq2Seq[float32](cfg)
				copy(ms[seat].Params(), ref.Params())
				nc := one
				if !c.shared {
					nc = testenv.Conn(t, srv.ClientURL())
				}
				if links[seat], err = NewSeatLink(nc, job, 1, seat, plan.Seats(), 10*time.Second); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { links[seat].Close() })
			}
			for step, b := range batches {
				wantLoss, wantTokens := ref.Loss(b, true)
				ref.ClipGrads(0.5)
				loss, tokens, errs := runSeats(ms, links, plan, 2, int64(step), b, c.chunk)
				if err := errors.Join(errs...); err != nil {
					t.Fatal(err)
				}
				if !sameLoss(loss, wantLoss) || tokens != wantTokens {
					t.Fatalf("step %d: loss %v over %d tokens, want %v over %d", step, loss, tokens, wantLoss, wantTokens)
				}
				for seat, ts := range plan.SeatTensors(cfg) {
					for _, ti := range ts {
						n := cfg.Tensors()[ti].Size()
						if !same(ms[seat].Grads()[offs[ti]:offs[ti]+n], ref.Grads()[offs[ti]:offs[ti]+n]) {
							t.Fatalf("step %d: tensor %s (seat %d) differs from the one-process gradient", step, cfg.Tensors()[ti].Name, seat)
						}
					}
				}
			}
			var sent int64
			for _, l := range links {
				st := l.Stats()
				sent += st.SentBytes
				if st.Errors != 0 {
					t.Fatalf("%+v", st)
				}
			}
			if sent == 0 {
				t.Fatal("the seats sent nothing")
			}
		})
	}
}

// What a seat cannot use ends its step with a clear error and a count, and
// crashes nothing: bytes that do not decode (wire.Malformed), a message out
// of the pair's order (ErrSeatLost), an activation of the wrong shape
// (models.ErrSeatMessage), a sender that never sends (ErrSeatTimeout). A
// message of an earlier era is dropped as stray.
func TestSeatLinkRefusesWhatItCannotUse(t *testing.T) {
	srv := testenv.NATS(t, 0)
	cfg := models.Seq2SeqConfig{SrcVocab: 20, TgtVocab: 17, Embed: 6, Hidden: 8, Layers: 2}
	plan, err := cfg.Plan(2, 1)
	if err != nil {
		t.Fatal(err)
	}
	b := seatBatch(rand.New(rand.NewPCG(1, 1)), cfg, 3, 4, 5)
	rogue := testenv.Conn(t, srv.ClientURL())
	m := models.NewSeq2Seq[float32](cfg)
	m.Init(1)
	l, err := NewSeatLink(testenv.Conn(t, srv.ClientURL()), "j", 0, 1, plan.Seats(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	chunk := func(epoch uint64, step int64, seq uint32, floats int) []byte {
		p, err := wire.Encode(&wire.SeatMsg{V: wire.Version, Epoch: epoch, Step: step, Seq: seq, T0: 0, T1: 2, Data: make([]byte, 4*floats)})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	B, H := b.Size, cfg.Hidden
	for i, c := range []struct {
		name   string
		msgs   [][]byte
		want   func(error) bool
		errors int64 // counted
		stray  int64
	}{
		{"garbage", [][]byte{{0x81, 0xa1}}, func(err error) bool { return wire.ErrKind(err) == wire.Malformed }, 1, 0},
		{"out of order", [][]byte{chunk(1, 1, 1, 2*B*H)}, func(err error) bool { return errors.Is(err, ErrSeatLost) }, 1, 0},
		{"stray, then mis-shaped", [][]byte{chunk(0, 9, 0, 2*B*H), chunk(1, 2, 0, B*H)}, func(err error) bool { return errors.Is(err, models.ErrSeatMessage) }, 0, 1},
		{"silent", nil, func(err error) bool { return errors.Is(err, ErrSeatTimeout) }, 0, 0},
	} {
		before := l.Stats()
		l.Begin(1, int64(i))
		for _, p := range c.msgs {
			if err := rogue.Publish(wire.SeatSubject("j", 0, 1), p); err != nil {
				t.Fatal(err)
			}
		}
		if err := rogue.Flush(); err != nil {
			t.Fatal(err)
		}
		_, _, err := m.SeatStep(plan, 1, b, 2, 0, l)
		if !c.want(err) {
			t.Fatalf("%s: %v", c.name, err)
		}
		after := l.Stats()
		if after.Errors-before.Errors != c.errors || after.Stray-before.Stray != c.stray {
			t.Fatalf("%s: %d errors and %d stray messages counted, want %d and %d", c.name, after.Errors-before.Errors, after.Stray-before.Stray, c.errors, c.stray)
		}
	}
}

// A seat whose connection to NATS reconnects while it waits may have lost
// what was sent to it meanwhile: its Recv fails at once as lost (counted),
// not at the timeout; so does a wait in the next step, whose messages may
// have gone in the gap, though a message that did arrive is still taken;
// two steps on, a wait is a wait again.
func TestSeatLinkFailsFastWhenItsConnectionReconnects(t *testing.T) {
	srv := testenv.NATS(t, 0)
	nc := testenv.Conn(t, srv.ClientURL(), nats.ReconnectWait(10*time.Millisecond), nats.MaxReconnects(-1))
	peer := testenv.Conn(t, srv.ClientURL())
	l, err := NewSeatLink(nc, "j", 0, 1, 2, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	other, err := NewSeatLink(peer, "j", 0, 0, 2, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	l.Begin(1, 0)
	other.Begin(1, 0)
	go func() {
		time.Sleep(300 * time.Millisecond)
		nc.ForceReconnect()
	}()
	start := time.Now()
	_, err = l.Recv(0)
	if !errors.Is(err, ErrSeatLost) || !strings.Contains(err.Error(), "reconnected") || time.Since(start) > 5*time.Second {
		t.Fatalf("after a reconnect, Recv returned %v after %v", err, time.Since(start))
	}
	for nc.Status() != nats.CONNECTED {
		time.Sleep(10 * time.Millisecond)
	}
	if err := nc.Flush(); err != nil { // (the subscription is back on the server)
		t.Fatal(err)
	}
	// The next step: what arrives is taken, what does not fails at once.
	l.Begin(1, 1)
	other.Begin(1, 1)
	before := l.Stats().RecvBytes
	if err := other.Send(1, models.SeatMsg[float32]{Data: []float32{1, 2}, T0: 0, T1: 1}); err != nil {
		t.Fatal(err)
	}
	for l.Stats().RecvBytes == before {
		time.Sleep(5 * time.Millisecond)
	}
	if m, err := l.Recv(0); err != nil || len(m.Data) != 2 {
		t.Fatalf("a message that arrived after the reconnect: %v, %v", m, err)
	}
	if _, err := l.Recv(0); !errors.Is(err, ErrSeatLost) {
		t.Fatalf("the step after a reconnect, waiting: %v", err)
	}
	// Two steps on, a silent peer is a timeout again.
	l.timeout = 200 * time.Millisecond
	l.Begin(1, 2)
	if _, err := l.Recv(0); !errors.Is(err, ErrSeatTimeout) {
		t.Fatalf("two steps after the reconnect: %v", err)
	}
	if got := l.Stats().Errors; got != 2 {
		t.Fatalf("%d errors counted, want the 2 reconnect failures", got)
	}
}

// formAll forms the replica of links (seat i holding epoch holders[i])
// under placement version, each seat in its own goroutine, and returns
// each seat's Formation.
func formAll(t *testing.T, links []*SeatLink, version uint64, holders []uint64) []Formation {
	t.Helper()
	fs := make([]Formation, len(links))
	errs := make([]error, len(links))
	var wg sync.WaitGroup
	for i, l := range links {
		wg.Go(func() { fs[i], errs[i] = l.Ready(context.Background(), version, holders[i]) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("seat %d: %v", i, err)
		}
	}
	for i, f := range fs {
		if f != fs[0] {
			t.Fatalf("seat %d formed %+v, seat 0 %+v", i, f, fs[0])
		}
	}
	return fs
}

// A replica that loses a seat (async, ssp): the seats waiting on it fail
// at once with ErrSeatRejoined when its new holder says hello (not at
// the timeout), form again around it in a later era that every seat
// agrees on, with the steps begun carried over; orders and messages of
// the old era are stray; a seat that hears another holder has its seat
// is fenced off; an order from a seat other than 0 is refused.
func TestSeatLinkFormsAgainAroundANewHolder(t *testing.T) {
	srv := testenv.NATS(t, 4096) // an order's labels go in several parts
	const seats = 3
	links := make([]*SeatLink, seats)
	conns := make([]*nats.Conn, seats)
	for i := range links {
		conns[i] = testenv.Conn(t, srv.ClientURL())
		l, err := NewSeatLink(conns[i], "j", 0, i, seats, 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		links[i] = l
	}
	f0 := formAll(t, links, 7, []uint64{1, 1, 1})[0]
	if f0.Era != 7<<32|3 || f0.Begun != 0 {
		t.Fatalf("formed %+v, want era 7<<32|3 and no step begun", f0)
	}
	// Seat 0 orders step 4, with its batch's shape and labels (in parts);
	// the others take it, and not twice.
	want := SeatOrder{N: 4, Shard: 1, At: 9, Last: true, Size: 30, SrcLen: 7, TgtLen: 100}
	for i := range want.Size * want.TgtLen {
		want.Labels = append(want.Labels, int32(i%50-1))
	}
	if err := links[0].SendOrder(want); err != nil {
		t.Fatal(err)
	}
	if err := links[1].SendOrder(SeatOrder{N: 4}); err == nil {
		t.Fatal("seat 1 sent an order")
	}
	if err := links[0].SendOrder(SeatOrder{N: 4, Size: 2, TgtLen: 2, Labels: []int32{1}}); err == nil {
		t.Fatal("an order whose labels do not fit its shape was sent")
	}
	for _, l := range links[1:] {
		o, err := l.NextOrder(context.Background())
		if err != nil || !reflect.DeepEqual(o, want) {
			t.Fatalf("seat %d's order: %+v, %v", l.seat, o, err)
		}
	}
	for _, l := range links {
		l.Begin(f0.Era, 4)
	}
	// Seat 2 dies mid-step; seats 0 and 1 wait for it.
	links[2].Close()
	errs := make(chan error, 2)
	start := time.Now()
	for _, l := range links[:2] {
		go func() { _, err := l.Recv(2); errs <- err }()
	}
	time.Sleep(200 * time.Millisecond)
	// Its new holder (epoch 2) says hello: the waits end at once.
	fresh, err := NewSeatLink(testenv.Conn(t, srv.ClientURL()), "j", 0, 2, seats, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	newcomer := make(chan Formation, 1)
	go func() {
		f, err := fresh.Ready(context.Background(), 7, 2)
		if err != nil {
			t.Error(err)
		}
		newcomer <- f
	}()
	for range 2 {
		if err := <-errs; !errors.Is(err, ErrSeatRejoined) {
			t.Fatalf("a wait on the dead seat ended with %v", err)
		}
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("the waits ended after %v", d)
	}
	if links[0].Formed() || links[1].Formed() {
		t.Fatal("still formed after a seat rejoined")
	}
	// The survivors form again with it.
	fs := formAll(t, links[:2], 7, []uint64{1, 1})
	f1 := <-newcomer
	if fs[0] != f1 || f1.Era != 7<<32|4 || f1.Begun != 5 {
		t.Fatalf("formed again %+v and %+v, want era 7<<32|4 and 5 steps begun", fs[0], f1)
	}
	// raw sends m to seat to, as conn.
	raw := func(conn *nats.Conn, to int, m *wire.SeatMsg) {
		p, err := wire.Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := conn.Publish(wire.SeatSubject("j", 0, to), p); err != nil {
			t.Fatal(err)
		}
		if err := conn.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	// An order of the old era is stray.
	before := links[1].Stats().Stray
	raw(conns[0], 1, &wire.SeatMsg{V: wire.Version, Epoch: f0.Era, Step: 5, From: 0, Order: true, Shape: []uint32{0, 0, 0}})
	if err := links[0].SendOrder(SeatOrder{N: 5, At: 10, Size: 1, SrcLen: 1, TgtLen: 1, Labels: []int32{3}}); err != nil {
		t.Fatal(err)
	}
	if o, err := links[1].NextOrder(context.Background()); err != nil || o.N != 5 || o.At != 10 {
		t.Fatalf("the new era's order: %+v, %v", o, err)
	}
	if got := links[1].Stats().Stray - before; got != 1 {
		t.Fatalf("%d stray messages, want the old era's order", got)
	}
	// A seat that hears another holder has its seat is fenced off.
	raw(conns[0], 1, &wire.SeatMsg{V: wire.Version, Epoch: 7, From: 0, Hello: true, Holders: []uint64{1, 9, 2}, Round: 99})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := links[1].NextOrder(ctx); !errors.Is(err, ErrSeatFenced) {
		t.Fatalf("a replaced seat waiting for an order: %v", err)
	}
	if _, err := links[1].Ready(ctx, 7, 1); !errors.Is(err, ErrSeatFenced) {
		t.Fatalf("a replaced seat forming the replica: %v", err)
	}
	// An order from seat 1 is refused, counted.
	errsBefore := fresh.Stats().Errors
	raw(conns[1], 2, &wire.SeatMsg{V: wire.Version, Epoch: f1.Era, Step: 6, From: 1, Order: true, Shape: []uint32{0, 0, 0}})
	for fresh.Stats().Errors == errsBefore {
		time.Sleep(5 * time.Millisecond)
	}
}
