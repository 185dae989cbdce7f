package worker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
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
// over its own link.
func runSeats(ms []*models.Seq2Seq[float32], links []*SeatLink, plan models.StagePlan, epoch uint64, step int64, b *models.SeqBatch, chunk int) (loss float64, tokens int, errs []error) {
	errs = make([]error, len(ms))
	var wg sync.WaitGroup
	for seat := range ms {
		links[seat].Begin(epoch, step)
	}
	for seat := range ms {
		wg.Go(func() {
			if err := links[seat].Ready(context.Background(), epoch); err != nil {
				errs[seat] = err
				return
			}
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
