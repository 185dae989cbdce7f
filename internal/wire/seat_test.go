package wire

import (
	"bytes"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

// A seat message cut into parts to fit a payload limit comes back whole
// when the parts' Data are appended: every part fits, only the last has
// More clear, and the first carries every other field.
func TestSplitSeatRoundTrips(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 4*1000)
	for i := range data {
		data[i] = byte(rng.IntN(256))
	}
	m := &SeatMsg{V: Version, Epoch: 7, Step: 12, From: 3, Seq: 9, T0: 2, T1: 5, Data: data,
		Stats: AppendFloat64s(nil, []float64{1, 2, 3, 4}), Ys: FloatBytes([]float32{1.5}), Has: []byte{1},
		Squares: AppendFloat64s(nil, []float64{0.25}), Norm: 3}
	for _, limit := range []int{200, 513, 1 << 20} {
		parts, err := SplitSeat(m, limit)
		if err != nil {
			t.Fatal(err)
		}
		var got *SeatMsg
		for i, b := range parts {
			if len(b) > limit {
				t.Fatalf("limit %d: part %d has %d bytes", limit, i, len(b))
			}
			p, err := DecodeSeat(b)
			if err != nil {
				t.Fatal(err)
			}
			if p.More != (i < len(parts)-1) || p.Seq != m.Seq || p.Step != m.Step || p.Epoch != m.Epoch || p.From != m.From {
				t.Fatalf("limit %d: part %d of %d: %+v", limit, i, len(parts), p)
			}
			if got == nil {
				got = p
			} else {
				got.Data = append(got.Data, p.Data...)
			}
		}
		got.More = false
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("limit %d: %d parts give %+v", limit, len(parts), got)
		}
		if limit == 200 && len(parts) < 20 {
			t.Fatalf("4000 bytes of data in %d parts of at most 200 bytes", len(parts))
		}
	}
	if _, err := SplitSeat(&SeatMsg{V: Version, Stats: make([]byte, 4096)}, 1000); ErrKind(err) != TooLarge {
		t.Fatalf("fields larger than a message: %v, want kind TooLarge", err)
	}
	negZero := math.Copysign(0, -1)
	if got := Float64s(AppendFloat64s(nil, []float64{math.Inf(-1), negZero, 1e-300})); !reflect.DeepEqual(got, []float64{math.Inf(-1), negZero, 1e-300}) || !math.Signbit(got[1]) {
		t.Fatalf("float64s do not round-trip: %v", got)
	}
}

// DecodeSeat refuses, as Malformed or BadVersion, what no exchange between
// seats can hold.
func TestDecodeSeatRefuses(t *testing.T) {
	for name, c := range map[string]struct {
		m    SeatMsg
		kind Kind
	}{
		"version":       {SeatMsg{V: 9}, BadVersion},
		"step":          {SeatMsg{V: Version, Step: -1}, Malformed},
		"time steps":    {SeatMsg{V: Version, T0: 3, T1: 2}, Malformed},
		"data":          {SeatMsg{V: Version, Data: make([]byte, 6)}, Malformed},
		"targets":       {SeatMsg{V: Version, Ys: make([]byte, 3)}, Malformed},
		"statistics":    {SeatMsg{V: Version, Stats: make([]byte, 8)}, Malformed},
		"squares":       {SeatMsg{V: Version, Squares: make([]byte, 12)}, Malformed},
		"flags":         {SeatMsg{V: Version, Has: []byte{0, 2}}, Malformed},
		"norm":          {SeatMsg{V: Version, Norm: math.NaN()}, Malformed},
		"norm negative": {SeatMsg{V: Version, Norm: -1}, Malformed},
		"hello order":   {SeatMsg{V: Version, Hello: true, Order: true}, Malformed},
		"holders":       {SeatMsg{V: Version, Holders: []uint64{1, 1}}, Malformed},
		"round":         {SeatMsg{V: Version, Round: 2}, Malformed},
		"seats":         {SeatMsg{V: Version, Hello: true, Holders: make([]uint64, MaxSeats+1)}, Malformed},
		"data step":     {SeatMsg{V: Version, Order: true, At: -1, Shape: []uint32{1, 1, 1}}, Malformed},
		"order shape":   {SeatMsg{V: Version, Order: true}, Malformed},
		"shape":         {SeatMsg{V: Version, Shape: []uint32{1, 1, 1}}, Malformed},
		"labels":        {SeatMsg{V: Version, Order: true, Shape: []uint32{1 << 13, 1, 1 << 12}}, Malformed},
	} {
		b, err := Encode(&c.m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeSeat(b); ErrKind(err) != c.kind {
			t.Errorf("%s: %v, want kind %v", name, err, c.kind)
		}
	}
	if _, err := DecodeSeat(bytes.Repeat([]byte{0xff}, 10)); ErrKind(err) != Malformed {
		t.Fatalf("garbage: %v", err)
	}
}
