package wire

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/vmihailenco/msgpack/v5"
)

func TestFloatBytesMatchEncodingBinary(t *testing.T) {
	f := []float32{0, 1, -1, float32(math.Pi), float32(math.Inf(1)), 1e-45, -3.4e38}
	var want []byte
	for _, v := range f {
		want = binary.LittleEndian.AppendUint32(want, math.Float32bits(v))
	}
	if got := AppendFloats(nil, f); !slices.Equal(got, want) {
		t.Fatalf("AppendFloats = %x, want %x", got, want)
	}
	if got := FloatBytes(f); !slices.Equal(got, want) {
		t.Fatalf("FloatBytes = %x, want %x", got, want)
	}
	back := make([]float32, len(f))
	if !CopyFloats(back, want) || !slices.Equal(back, f) {
		t.Fatalf("CopyFloats = %v, want %v", back, f)
	}
	if CopyFloats(back, want[:5]) {
		t.Fatal("CopyFloats accepted a length that is not 4*len(dst)")
	}
}

func TestPushRoundTrip(t *testing.T) {
	in := &PushRequest{V: Version, Job: "j-1", Rank: 3, Epoch: 9, Step: 77,
		Blocks: []Block{{ID: 4, Data: AppendFloats(nil, []float32{1, 2})}, {ID: 5, Data: nil}}}
	data, err := Encode(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodePush(data)
	if err != nil {
		t.Fatal(err)
	}
	if out.Job != in.Job || out.Rank != 3 || out.Epoch != 9 || out.Step != 77 || len(out.Blocks) != 2 ||
		out.Blocks[0].ID != 4 || !slices.Equal(out.Blocks[0].Data, in.Blocks[0].Data) {
		t.Fatalf("round trip: %+v", out)
	}
}

// The tensor bytes must travel as a msgpack bin (0xc4-0xc6), not an array.
func TestBlockDataIsBin(t *testing.T) {
	data, _ := Encode(&Block{ID: 1, Data: make([]byte, 300)})
	var raw map[string]msgpack.RawMessage
	if err := msgpack.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	if c := raw["b"][0]; c != 0xc5 {
		t.Fatalf("block data encoded with msgpack code %#x, want bin16 0xc5", c)
	}
}

func TestDecodeRefusals(t *testing.T) {
	enc := func(m any) []byte { b, _ := Encode(m); return b }
	cases := []struct {
		name string
		data []byte
		want Kind
	}{
		{"garbage", []byte{0xc1, 0x00}, Malformed},
		{"empty", nil, Malformed},
		{"wrong type", enc("hello"), Malformed},
		{"version", enc(&PushRequest{V: 2, Job: "a"}), BadVersion},
		{"bad job", enc(&PushRequest{V: Version, Job: "a.b"}), UnknownJob},
		{"negative step", enc(&PushRequest{V: Version, Job: "a", Step: -1}), Malformed},
		{"odd length", enc(&PushRequest{V: Version, Job: "a", Blocks: []Block{{ID: 1, Data: []byte{1, 2, 3}}}}), BadLength},
		{"too many", enc(&PushRequest{V: Version, Job: "a", Blocks: make([]Block, MaxBlocksPerMessage+1)}), TooLarge},
		{"pull after the last step", enc(&PushRequest{V: Version, Job: "a", Step: math.MaxInt64, Pull: true}), Malformed},
		{"span lists to pull without a pull", enc(&PushRequest{V: Version, Job: "a", Blocks: []Block{{ID: 1}}, PullSpans: [][]byte{nil}}), Malformed},
		{"span lists to pull, too few", enc(&PushRequest{V: Version, Job: "a", Pull: true, Blocks: []Block{{ID: 1}, {ID: 2}}, PullSpans: [][]byte{nil}}), Malformed},
		{"span list to pull, odd length", enc(&PushRequest{V: Version, Job: "a", Pull: true, Blocks: []Block{{ID: 1}}, PullSpans: [][]byte{{1, 2, 3}}}), Malformed},
		{"span lists to pull, too many", append(enc(&PushRequest{V: Version, Job: "a"})[:0:0], 0x81, 0xa1, 'q', 0xdd, 0, 1, 0, 1), Malformed},
		{"pull not a bool", append(enc(&PushRequest{V: Version, Job: "a"})[:0:0], 0x81, 0xa1, 'p', 0x01), Malformed},
	}
	for _, c := range cases {
		_, err := DecodePush(c.data)
		if ErrKind(err) != c.want || !errors.Is(err, &Error{Kind: c.want}) {
			t.Errorf("%s: got %v, want kind %v", c.name, err, c.want)
		}
	}
	if _, err := DecodePull(enc(&PullRequest{V: Version, Job: "a", IDs: make([]uint32, MaxBlocksPerMessage+1)})); ErrKind(err) != TooLarge {
		t.Errorf("oversize pull: %v", err)
	}
}

func TestValidJob(t *testing.T) {
	for _, ok := range []string{"a", "job-1", "A_b", strings.Repeat("x", 64)} {
		if ValidJob(ok) != nil {
			t.Errorf("ValidJob(%q) refused", ok)
		}
	}
	for _, bad := range []string{"", "a.b", "a b", "a*", ">", strings.Repeat("x", 65), "é"} {
		if ValidJob(bad) == nil {
			t.Errorf("ValidJob(%q) accepted", bad)
		}
	}
}

// Every run Group makes must fit, and the runs must cover the blocks in order.
func TestGroupFits(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	const maxPayload = 1 << 20
	for trial := 0; trial < 40; trial++ {
		sizes := make([]int, rng.IntN(50))
		for i := range sizes {
			sizes[i] = 4 * rng.IntN(100000)
		}
		ends, err := Group(sizes, nil, maxPayload)
		if err != nil {
			t.Fatal(err)
		}
		start := 0
		for _, end := range ends {
			if end <= start {
				t.Fatalf("empty or backward run %d..%d", start, end)
			}
			msg := &PushRequest{V: Version, Job: strings.Repeat("j", MaxJobName), Rank: math.MaxUint32,
				Epoch: math.MaxUint64, Step: math.MaxInt64}
			for i := start; i < end; i++ {
				msg.Blocks = append(msg.Blocks, Block{ID: math.MaxUint32, Data: make([]byte, sizes[i])})
			}
			data, _ := Encode(msg)
			if len(data) > maxPayload {
				t.Fatalf("run of %d blocks encodes to %d bytes > %d", end-start, len(data), maxPayload)
			}
			start = end
		}
		if start != len(sizes) {
			t.Fatalf("runs cover %d of %d blocks", start, len(sizes))
		}
	}
	if _, err := Group([]int{maxPayload}, nil, maxPayload); err == nil {
		t.Fatal("Group accepted a block larger than a message")
	}
}

// Group never cuts a run that fits in one message, cuts only where the
// next block or run does not fit, and otherwise packs as Group does.
func TestGroupKeepsRunsWhole(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	const maxPayload = 1 << 20
	budget := maxPayload - Headroom
	for trial := 0; trial < 200; trial++ {
		sizes, run := make([]int, rng.IntN(60)), make([]bool, 0)
		for i := range sizes {
			sizes[i] = 4 * rng.IntN(1+[]int{1000, 60000, 250000}[rng.IntN(3)])
			run = append(run, i == 0 || rng.IntN(4) == 0)
		}
		ends, err := Group(sizes, run, maxPayload)
		if err != nil {
			t.Fatal(err)
		}
		msg := make([]int, len(sizes)) // each block's message
		start := 0
		for m, end := range ends {
			used := 0
			for i := start; i < end; i++ {
				msg[i] = m
				used += sizes[i] + PerBlock
			}
			if end <= start || used > budget {
				t.Fatalf("trial %d: message %d holds blocks %d..%d, %d bytes", trial, m, start, end, used)
			}
			start = end
		}
		if start != len(sizes) {
			t.Fatalf("trial %d: messages cover %d of %d blocks", trial, start, len(sizes))
		}
		for i := 0; i < len(sizes); {
			j, whole := i+1, sizes[i]+PerBlock
			for ; j < len(sizes) && !run[j]; j++ {
				whole += sizes[j] + PerBlock
			}
			if whole <= budget && msg[j-1] != msg[i] {
				t.Fatalf("trial %d: run %d..%d of %d bytes is cut across messages %d..%d", trial, i, j, whole, msg[i], msg[j-1])
			}
			i = j
		}
		// A cut before block i is needed: block i, or the run it starts
		// (as much of it as fits a message), would not have fitted.
		for k, end := range ends[:max(0, len(ends)-1)] {
			used := 0
			for i := range end {
				if msg[i] == k {
					used += sizes[i] + PerBlock
				}
			}
			need := sizes[end] + PerBlock
			if run[end] {
				for j := end + 1; j < len(sizes) && !run[j] && need <= budget; j++ {
					need += sizes[j] + PerBlock
				}
			}
			if used+need <= budget {
				t.Fatalf("trial %d: message %d ends at block %d with %d bytes, yet the next %d would fit", trial, k, end, used, need)
			}
		}
	}
}

// skim accepts every message we encode and refuses what could make a decoder
// over-allocate or over-recurse.
func TestSkim(t *testing.T) {
	good := []any{
		&PushRequest{V: Version, Job: "j", Blocks: []Block{{ID: 1, Data: make([]byte, 70000)}}},
		&PullRequest{V: Version, Job: "j", IDs: make([]uint32, 70000)},
		&PullReply{V: Version, Blocks: []Block{{ID: 1, Data: make([]byte, 300)}}},
		&Reply{V: Version, Kind: StaleEpoch, Msg: strings.Repeat("x", 40)},
		&Progress{V: Version, Loss: 1.5, Step: -5, Nanos: math.MaxInt64},
		map[string]any{"a": []any{nil, true, false, int8(-3), uint64(1 << 60), float32(1), "s", []byte{1}}},
	}
	for _, m := range good {
		b, err := Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := skim(b); err != nil {
			t.Errorf("%T refused: %v", m, err)
		}
	}
	deep := []byte{}
	for range MaxDepth + 1 {
		deep = append(deep, 0x91)
	}
	deep = append(deep, 0xc0)
	for _, bad := range [][]byte{
		{},                                // empty
		{0xc1},                            // reserved
		{0xdd, 0xff, 0xff, 0xff, 0xff, 0}, // array of 4G elements in 1 byte
		{0xdf, 0, 1, 0, 0, 1, 2},          // map of 65536 pairs
		{0xc6, 0x7f, 0xff, 0xff, 0xff, 1}, // bin of 2 GB
		{0xc0, 0xc0},                      // trailing byte
		{0x92, 0xc0},                      // truncated array
		{0xcb, 0, 0},                      // truncated float64
		deep,
	} {
		if err := skim(bad); err == nil {
			t.Errorf("skim accepted % x", bad)
		}
	}
}

func TestFinite(t *testing.T) {
	for n := 0; n < 40; n++ { // two 64-byte rounds and every tail
		f := make([]float32, n)
		for i := range f {
			f[i] = float32(i) - 3.5
		}
		if !Finite(AppendFloats(nil, f)) {
			t.Fatalf("finite floats of length %d refused", n)
		}
		for i := range f {
			for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)),
				math.Float32frombits(0x7f800001), math.Float32frombits(0xffffffff)} {
				g := slices.Clone(f)
				g[i] = bad
				if Finite(AppendFloats(nil, g)) {
					t.Fatalf("%v at %d of %d accepted", bad, i, n)
				}
			}
		}
	}
	// Extremes that are finite: the largest float, the smallest subnormal, -0.
	if !Finite(AppendFloats(nil, slices.Repeat([]float32{math.MaxFloat32, -math.MaxFloat32, math.SmallestNonzeroFloat32, float32(math.Copysign(0, -1))}, 9))) {
		t.Fatal("finite extremes refused")
	}
	if !Finite([]byte{1, 2, 3}) {
		t.Fatal("a trailing partial float is not a float")
	}
}

// Finite agrees with the obvious per-float check on random bytes, where
// about one word in a few hundred is NaN or Inf.
func TestFiniteMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 6))
	slow := func(b []byte) bool {
		for i := 0; i+4 <= len(b); i += 4 {
			v := float64(math.Float32frombits(binary.LittleEndian.Uint32(b[i:])))
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return false
			}
		}
		return true
	}
	for trial := 0; trial < 5000; trial++ {
		b := make([]byte, rng.IntN(300))
		for i := range b {
			b[i] = byte(rng.Uint32())
			if i%4 == 3 && rng.IntN(8) != 0 {
				b[i] &= 0x7e // mostly finite exponents
			}
		}
		if Finite(b) != slow(b) {
			t.Fatalf("Finite(% x) = %v", b, Finite(b))
		}
	}
}

// BenchmarkFinite checks a 1 MiB block of finite floats (the whole of it is
// read: a push is refused only after this returns).
func BenchmarkFinite(b *testing.B) {
	f := make([]float32, 1<<18)
	for i := range f {
		f[i] = float32(i) - 1e5
	}
	data := AppendFloats(nil, f)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if !Finite(data) {
			b.Fatal("refused")
		}
	}
}

// Floats views aligned float bytes in place, holding what CopyFloats would
// copy out, and refuses what it cannot view: an odd address, a partial
// float.
func TestFloats(t *testing.T) {
	// An address that is 0, or 1, past a multiple of 4 (a small buffer may
	// sit at any address).
	at := func(mod, n int) []byte {
		b := make([]byte, n+8)
		skip := (mod - int(uintptr(unsafe.Pointer(&b[0]))%4) + 4) % 4
		return b[skip : skip+n]
	}
	want := []float32{1.5, -2, float32(math.Inf(1)), 3e-40}
	data := AppendFloats(at(0, 4*len(want))[:0], want)
	f, ok := Floats(data)
	if !ok || !slices.Equal(f, want) {
		t.Fatalf("Floats = %v, %v; want %v", f, ok, want)
	}
	if &f[0] != (*float32)(unsafe.Pointer(&data[0])) {
		t.Fatal("Floats copied")
	}
	odd := append(at(1, len(data))[:0], data...)
	if _, ok := Floats(odd); ok {
		t.Fatal("bytes at an odd address viewed in place")
	}
	if _, ok := Floats(data[:7]); ok {
		t.Fatal("a partial float viewed")
	}
	if f, ok := Floats(data[:0]); !ok || len(f) != 0 {
		t.Fatal("no bytes: want an empty view")
	}
}

// A push may ask to pull other parts of its blocks than it pushes: the
// span lists it carries to pull (PullSpans) become its pull's Spans, sent
// whole or split.
func TestPushAsksToPullParts(t *testing.T) {
	p := &PushRequest{V: Version, Job: "j", Rank: 2, Epoch: 3, Step: 7, Pull: true,
		Blocks:    []Block{{ID: 4, Data: make([]byte, 4), Spans: AppendSpan(nil, 1, 1)}, {ID: 9, Data: make([]byte, 8)}},
		PullSpans: [][]byte{AppendSpan(AppendSpan(nil, 0, 2), 5, 1), nil}}
	got, err := DecodePush(EncodePush(p))
	if err != nil {
		t.Fatal(err)
	}
	want := &PullRequest{V: Version, Job: "j", Rank: 2, Epoch: 3, MinClock: 8, IDs: []uint32{4, 9}, Spans: p.PullSpans}
	if pr := got.ThenPull(); !reflect.DeepEqual(pr, want) {
		t.Fatalf("its pull is %+v, want %+v", pr, want)
	}
	// Split: the envelope keeps the span lists; the body holds the data.
	dense := &PushRequest{V: Version, Job: "j", Step: 7, Pull: true, Blocks: []Block{{ID: 4}, {ID: 9}}, PullSpans: [][]byte{nil, AppendSpan(nil, 1, 1)}}
	split, err := DecodeSplitPush(EncodeEnvelope(dense), make([]byte, 12), func(id uint32) (int, bool) { return int(id) / 4, true })
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(split.ThenPull().Spans, dense.PullSpans) || len(split.Blocks[0].Data) != 4 || len(split.Blocks[1].Data) != 8 {
		t.Fatalf("split push with span lists to pull: %+v", split)
	}
	// Without span lists to pull, the pull is of the whole blocks, even of
	// a sparse push's.
	p.PullSpans = nil
	if got, err = DecodePush(EncodePush(p)); err != nil || got.ThenPull().Spans != nil {
		t.Fatalf("a sparse push asking for whole blocks: %+v, %v", got, err)
	}
}

// A replication message round-trips, and each malformed form is refused
// with its kind.
func TestReplMsgRefuses(t *testing.T) {
	good := &ReplMsg{V: Version, Job: "j", Placement: 2, From: 1, Entries: []Entry{{ID: 3, At: 7, Data: make([]byte, 8)},
		{ID: 4, At: 2, Rank: 1, Epoch: 3, Step: 5, Data: []byte{1, 2, 3, 4}, Spans: AppendSpan(nil, 2, 1)}}}
	b, _ := Encode(good)
	m, err := DecodeRepl(b)
	if err != nil || len(m.Entries) != 2 || m.Entries[1].Step != 5 || m.Entries[1].Epoch != 3 || string(m.Entries[1].Data) != "\x01\x02\x03\x04" {
		t.Fatalf("round trip: %+v, %v", m, err)
	}
	for name, c := range map[string]struct {
		m    ReplMsg
		kind Kind
	}{
		"version":             {ReplMsg{V: 9, Job: "j", Placement: 1, Acks: []Ack{{}}}, BadVersion},
		"job":                 {ReplMsg{V: Version, Job: "a b", Placement: 1, Acks: []Ack{{}}}, UnknownJob},
		"placement":           {ReplMsg{V: Version, Job: "j", Acks: []Ack{{}}}, Malformed},
		"both":                {ReplMsg{V: Version, Job: "j", Placement: 1, Acks: []Ack{{}}, Entries: []Entry{{}}}, Malformed},
		"neither":             {ReplMsg{V: Version, Job: "j", Placement: 1}, Malformed},
		"negative ack":        {ReplMsg{V: Version, Job: "j", Placement: 1, Acks: []Ack{{Clock: -1}}}, Malformed},
		"negative at":         {ReplMsg{V: Version, Job: "j", Placement: 1, Entries: []Entry{{At: -1}}}, Malformed},
		"odd bytes":           {ReplMsg{V: Version, Job: "j", Placement: 1, Entries: []Entry{{Data: make([]byte, 5)}}}, BadLength},
		"spans":               {ReplMsg{V: Version, Job: "j", Placement: 1, Entries: []Entry{{Data: make([]byte, 8), Spans: AppendSpan(nil, 0, 1)}}}, BadLength},
		"skip and data":       {ReplMsg{V: Version, Job: "j", Placement: 1, Entries: []Entry{{Skip: true, Data: make([]byte, 4)}}}, Malformed},
		"empty state":         {ReplMsg{V: Version, Job: "j", Placement: 1, Entries: []Entry{{State: true, Parts: 1}}}, Malformed},
		"part past the parts": {ReplMsg{V: Version, Job: "j", Placement: 1, Entries: []Entry{{State: true, Part: 2, Parts: 2, Data: make([]byte, 4)}}}, Malformed},
		"sparse state":        {ReplMsg{V: Version, Job: "j", Placement: 1, Entries: []Entry{{State: true, Parts: 1, Data: make([]byte, 4), Spans: AppendSpan(nil, 0, 1)}}}, Malformed},
		"update lasts":        {ReplMsg{V: Version, Job: "j", Placement: 1, Entries: []Entry{{Data: make([]byte, 4), Lasts: []int64{1}}}}, Malformed},
	} {
		b, _ := Encode(&c.m)
		if _, err := DecodeRepl(b); ErrKind(err) != c.kind {
			t.Errorf("%s: %v, want %v", name, err, c.kind)
		}
	}
	if ReplSubject("demo", 3, 1) != "downpour.demo.p3.ps.1.repl" {
		t.Fatal(ReplSubject("demo", 3, 1))
	}
}
