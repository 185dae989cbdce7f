package wire

import (
	"slices"
	"testing"
)

func spans(pairs ...int) []byte {
	var b []byte
	for i := 0; i < len(pairs); i += 2 {
		b = AppendSpan(b, pairs[i], pairs[i+1])
	}
	return b
}

func TestParseSpans(t *testing.T) {
	for _, c := range []struct {
		name       string
		b          []byte
		floats     int
		end        int
		kind       Kind
		wantVisits [][2]int
	}{
		{name: "one", b: spans(3, 4), floats: 4, end: 7, wantVisits: [][2]int{{3, 4}}},
		{name: "empty block", b: EmptySpans, floats: 0, end: 0, wantVisits: [][2]int{{0, 0}}},
		{name: "adjacent", b: spans(0, 2, 2, 3, 9, 1), floats: 6, end: 10, wantVisits: [][2]int{{0, 2}, {2, 3}, {9, 1}}},
		{name: "zero-length inside", b: spans(1, 1, 4, 0, 4, 2), floats: 3, end: 6, wantVisits: [][2]int{{1, 1}, {4, 0}, {4, 2}}},
		{name: "largest offsets", b: spans(1<<32-2, 1), floats: 1, end: 1<<32 - 1, wantVisits: [][2]int{{1<<32 - 2, 1}}},
		{name: "no spans", b: []byte{}, kind: Malformed},
		{name: "nil", b: nil, kind: Malformed},
		{name: "half a span", b: spans(1, 2)[:4], kind: Malformed},
		{name: "overlap", b: spans(0, 4, 3, 1), kind: Malformed},
		{name: "out of order", b: spans(5, 1, 2, 1), kind: Malformed},
		{name: "too many", b: make([]byte, MaxSpansBytes+8), kind: TooLarge},
	} {
		floats, end, err := ParseSpans(c.b)
		if ErrKind(err) != c.kind {
			t.Errorf("%s: err %v, want kind %v", c.name, err, c.kind)
			continue
		}
		if err != nil {
			continue
		}
		if floats != c.floats || end != c.end {
			t.Errorf("%s: %d floats ending at %d, want %d at %d", c.name, floats, end, c.floats, c.end)
		}
		var visits [][2]int
		EachSpan(c.b, func(off, n int) { visits = append(visits, [2]int{off, n}) })
		if !slices.Equal(visits, c.wantVisits) {
			t.Errorf("%s: visited %v, want %v", c.name, visits, c.wantVisits)
		}
	}
}

// Decoders refuse sparse blocks whose spans are malformed or do not cover
// their data, and pulls whose span lists do not match their ids.
func TestDecodersCheckSpans(t *testing.T) {
	push := func(b Block) []byte {
		return EncodePush(&PushRequest{V: Version, Job: "j", Blocks: []Block{{ID: 1, Data: make([]byte, 4)}, b}})
	}
	for _, c := range []struct {
		name string
		b    Block
		kind Kind
	}{
		{"matching", Block{ID: 2, Data: make([]byte, 12), Spans: spans(0, 1, 5, 2)}, OK},
		{"empty", Block{ID: 2, Data: nil, Spans: EmptySpans}, OK},
		{"short data", Block{ID: 2, Data: make([]byte, 8), Spans: spans(0, 1, 5, 2)}, BadLength},
		{"long data", Block{ID: 2, Data: make([]byte, 16), Spans: spans(0, 1, 5, 2)}, BadLength},
		{"overlap", Block{ID: 2, Data: make([]byte, 12), Spans: spans(0, 2, 1, 1)}, Malformed},
		{"odd list", Block{ID: 2, Data: make([]byte, 4), Spans: spans(0, 1)[:5]}, Malformed},
	} {
		if _, err := DecodePush(push(c.b)); ErrKind(err) != c.kind {
			t.Errorf("push %s: %v, want %v", c.name, err, c.kind)
		}
		reply := EncodePullReply(&PullReply{V: Version, Blocks: []Block{c.b}})
		if _, err := DecodePullReply(reply); ErrKind(err) != c.kind {
			t.Errorf("pull reply %s: %v, want %v", c.name, err, c.kind)
		}
	}
	for _, c := range []struct {
		name  string
		spans [][]byte
		kind  Kind
	}{
		{"dense", nil, OK},
		{"one sparse", [][]byte{nil, spans(2, 2)}, OK},
		{"too few lists", [][]byte{spans(2, 2)}, Malformed},
		{"too many lists", [][]byte{nil, nil, nil}, Malformed},
		{"bad list", [][]byte{nil, spans(2, 2, 1, 1)}, Malformed},
	} {
		data, err := Encode(&PullRequest{V: Version, Job: "j", IDs: []uint32{1, 2}, Spans: c.spans})
		if err != nil {
			t.Fatal(err)
		}
		m, err := DecodePull(data)
		if ErrKind(err) != c.kind {
			t.Errorf("pull %s: %v, want %v", c.name, err, c.kind)
		}
		if err == nil && !slices.EqualFunc(m.Spans, c.spans, slices.Equal) {
			t.Errorf("pull %s: spans %v, want %v", c.name, m.Spans, c.spans)
		}
	}
}
