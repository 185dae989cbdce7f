package wire

import (
	"testing"
)

func seeds(f *testing.F, msgs ...any) {
	for _, m := range msgs {
		b, err := Encode(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0xde, 0xff, 0xff, 0xff, 0xff})
}

func FuzzDecodePush(f *testing.F) {
	seeds(f, &PushRequest{V: Version, Job: "j", Blocks: []Block{{ID: 1, Data: make([]byte, 8)}}},
		&PushRequest{V: Version, Job: "j", Blocks: []Block{{ID: 1, Data: make([]byte, 12), Spans: AppendSpan(AppendSpan(nil, 2, 1), 5, 2)}}},
		&PushRequest{V: Version, Job: "j", Step: 4, Pull: true, Blocks: []Block{{ID: 1, Data: make([]byte, 8)}}},
		&PushRequest{V: Version, Job: "j", Step: 4, Pull: true, Blocks: []Block{{ID: 1, Data: make([]byte, 4), Spans: AppendSpan(nil, 2, 1)}, {ID: 2, Data: make([]byte, 8)}},
			PullSpans: [][]byte{AppendSpan(nil, 0, 3), nil}})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodePush(data)
		if err == nil && (m.V != Version || ValidJob(m.Job) != nil || m.Step < 0) {
			t.Fatalf("accepted a bad push: %+v", m)
		}
		if err == nil && m.Pull && m.ThenPull().MinClock <= m.Step {
			t.Fatalf("accepted a bad push: %+v", m)
		}
		if err == nil && m.PullSpans != nil {
			if !m.Pull || len(m.PullSpans) != len(m.Blocks) {
				t.Fatalf("accepted bad span lists to pull: %+v", m)
			}
			for _, sp := range m.PullSpans {
				if sp != nil {
					if _, _, err := ParseSpans(sp); err != nil {
						t.Fatalf("accepted a bad span list to pull: %v", err)
					}
				}
			}
		}
		if err == nil {
			checkSpansAccepted(t, m.Blocks)
		}
	})
}

func FuzzDecodePull(f *testing.F) {
	seeds(f, &PullRequest{V: Version, Job: "j", IDs: []uint32{1, 2}},
		&PullRequest{V: Version, Job: "j", IDs: []uint32{1, 2}, Spans: [][]byte{nil, AppendSpan(nil, 3, 4)}})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodePull(data)
		if err == nil && (m.V != Version || len(m.IDs) > MaxBlocksPerMessage || m.Spans != nil && len(m.Spans) != len(m.IDs)) {
			t.Fatalf("accepted a bad pull: %+v", m)
		}
		if err == nil {
			for _, sp := range m.Spans {
				if sp != nil {
					if _, _, err := ParseSpans(sp); err != nil {
						t.Fatalf("accepted a bad span list: %v", err)
					}
				}
			}
		}
	})
}

func FuzzDecodeReplies(f *testing.F) {
	seeds(f, &Reply{V: Version, Kind: StaleEpoch, Msg: "x"}, &PullReply{V: Version, Blocks: []Block{{ID: 3, Data: make([]byte, 4)}}},
		&Progress{V: Version, Rank: 1, Step: 2, Loss: 3}, &SnapshotRequest{V: Version, Job: "j", Step: 4})
	f.Fuzz(func(t *testing.T, data []byte) {
		DecodeReply(data)
		if m, err := DecodePullReply(data); err == nil {
			for _, b := range m.Blocks {
				if len(b.Data)%4 != 0 {
					t.Fatalf("accepted block of %d bytes", len(b.Data))
				}
			}
			checkSpansAccepted(t, m.Blocks)
		}
		DecodeProgress(data)
		if m, err := DecodeSnapshotRequest(data); err == nil && ValidJob(m.Job) != nil {
			t.Fatalf("accepted a bad snapshot request: %+v", m)
		}
	})
}

// checkSpansAccepted fails unless every sparse block a decoder accepted has
// a well-formed span list covering exactly its data.
func checkSpansAccepted(t *testing.T, bs []Block) {
	for _, b := range bs {
		if b.Spans == nil {
			continue
		}
		n, _, err := ParseSpans(b.Spans)
		if err != nil || 4*n != len(b.Data) {
			t.Fatalf("accepted block %d: spans of %d floats (%v) for %d bytes", b.ID, n, err, len(b.Data))
		}
	}
}

func FuzzDecodeSeat(f *testing.F) {
	seeds(f, &SeatMsg{V: Version, Epoch: 2, Step: 3, From: 1, Seq: 4, T0: 1, T1: 3, Data: make([]byte, 16)},
		&SeatMsg{V: Version, Stats: make([]byte, 32), Ys: make([]byte, 8), Has: []byte{0, 1}},
		&SeatMsg{V: Version, Squares: make([]byte, 24), Norm: 2.5, More: true},
		&SeatMsg{V: Version, Epoch: 1, From: 2, Hello: true, Holders: []uint64{1, 2, 1}, Round: 3, Step: 7},
		&SeatMsg{V: Version, Epoch: 1<<32 | 4, Step: 9, Order: true, Shard: 1, At: 40, Last: true, Shape: []uint32{2, 3, 1}, Data: make([]byte, 8)})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeSeat(data)
		if err != nil {
			if ErrKind(err) != Malformed && ErrKind(err) != BadVersion {
				t.Fatalf("a refusal of kind %v: %v", ErrKind(err), err)
			}
			return
		}
		if m.V != Version || m.Step < 0 || m.T1 < m.T0 || len(m.Data)%4 != 0 || len(m.Ys)%4 != 0 ||
			len(m.Stats)%16 != 0 || len(m.Squares)%8 != 0 || !(m.Norm >= 0) || m.Hello && m.Order ||
			!m.Hello && (m.Holders != nil || m.Round != 0) || len(m.Holders) > MaxSeats || m.At < 0 ||
			m.Order != (len(m.Shape) == 3) || m.Shape != nil && !m.Order || m.Order && uint64(m.Shape[0])*uint64(m.Shape[2]) > MaxLabels {
			t.Fatalf("accepted a bad seat message: %+v", m)
		}
		for _, h := range m.Has {
			if h > 1 {
				t.Fatalf("accepted a row flag %d", h)
			}
		}
	})
}

func FuzzDecodeReplication(f *testing.F) {
	seeds(f, &ReplMsg{V: Version, Job: "j", Placement: 2, From: 1, Entries: []Entry{{ID: 3, At: 7, Data: make([]byte, 8)},
		{ID: 4, At: 0, Rank: 1, Epoch: 2, Step: 5, Data: make([]byte, 4), Spans: AppendSpan(nil, 2, 1)}, {ID: 5, At: 1, Skip: true},
		{ID: 6, At: 9, State: true, Parts: 2, Data: make([]byte, 12), Lasts: []int64{3, -1}, Epochs: []uint64{1, 2}},
		{ID: 6, At: 9, State: true, Part: 1, Parts: 2, Data: make([]byte, 12)}}},
		&ReplMsg{V: Version, Job: "j", Placement: 1, Acks: []Ack{{ID: 3, Clock: 8}, {ID: 4, Clock: 2, Gap: true}}})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeRepl(data)
		if err != nil {
			return
		}
		if m.V != Version || ValidJob(m.Job) != nil || m.Placement < 1 || (len(m.Entries) > 0) == (len(m.Acks) > 0) {
			t.Fatalf("accepted a bad replication message: %+v", m)
		}
		for _, e := range m.Entries {
			if e.At < 0 || e.Step < 0 || len(e.Data)%4 != 0 || e.Skip && e.Data != nil || e.State && (e.Skip || e.Spans != nil || len(e.Data) == 0) ||
				!e.State && (e.Lasts != nil || e.Epochs != nil || e.Parts != 0) || e.State && e.Part >= e.Parts {
				t.Fatalf("accepted a bad entry: %+v", e)
			}
			if e.Spans != nil {
				if n, _, err := ParseSpans(e.Spans); err != nil || 4*n != len(e.Data) {
					t.Fatalf("accepted an entry whose spans do not fit its data: %+v", e)
				}
			}
		}
		for _, a := range m.Acks {
			if a.Clock < 0 {
				t.Fatalf("accepted a negative acknowledgement: %+v", a)
			}
		}
	})
}
