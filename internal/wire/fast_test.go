package wire

import (
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/vmihailenco/msgpack/v5"
)

func randBlocks(rng *rand.Rand) []Block {
	if rng.IntN(5) == 0 {
		return nil
	}
	bs := make([]Block, rng.IntN(20))
	for i := range bs {
		bs[i].ID = rng.Uint32()
		switch rng.IntN(4) {
		case 0:
			bs[i].Data = nil
		case 1:
			bs[i].Data = make([]byte, 4*rng.IntN(70))
		default:
			bs[i].Data = make([]byte, 4*rng.IntN(20000))
		}
		if rng.IntN(3) == 0 { // sparse: spans covering as many floats as Data holds
			bs[i].Spans = randSpans(rng, len(bs[i].Data)/4)
		}
		for j := range bs[i].Data {
			bs[i].Data[j] = byte(rng.Uint32())
		}
	}
	return bs
}

// randSpans is a valid span list covering n floats in all.
func randSpans(rng *rand.Rand, n int) []byte {
	if n == 0 {
		return EmptySpans
	}
	var b []byte
	off := rng.IntN(100)
	for n > 0 {
		k := 1 + rng.IntN(n)
		b = AppendSpan(b, off, k)
		off += k + rng.IntN(3)
		n -= k
	}
	return b
}

func randString(rng *rand.Rand) string {
	return strings.Repeat("x", []int{0, 1, 31, 32, 255, 256, 70000}[rng.IntN(7)])
}

// checkEncoding checks that got, the hand-written encoding of a message of
// which want is msgpack.Marshal's, is msgpack.Marshal's but for 0 to 3
// bytes of wider key headers per block (so no longer than want by more than
// 3 bytes a block), that msgpack.Unmarshal decodes it as it decodes want,
// and that each block's data starts at a multiple of 4 bytes from the
// message's start.
func checkEncoding[M any](t *testing.T, what string, got, want []byte, blocks func(*M) []Block, views func([]byte) ([]Block, error)) {
	t.Helper()
	var g, w M
	if err := msgpack.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: msgpack cannot decode the encoding: %v", what, err)
	}
	msgpack.Unmarshal(want, &w)
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("%s: msgpack decodes the encoding differently", what)
	}
	bs := blocks(&g)
	if extra := len(got) - len(want); extra < 0 || extra > 3*len(bs) {
		t.Fatalf("%s: %d bytes, msgpack.Marshal's %d, for %d blocks", what, len(got), len(want), len(bs))
	}
	// The fast decoder's blocks view the message: where their data is.
	vs, err := views(got)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if len(vs) != len(bs) {
		t.Fatalf("%s: %d blocks decoded, want %d", what, len(vs), len(bs))
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(got)))
	for i, b := range vs {
		if len(b.Data) == 0 {
			continue
		}
		if off := uintptr(unsafe.Pointer(&b.Data[0])) - base; off%4 != 0 {
			t.Fatalf("%s: block %d's data starts at byte %d", what, i, off)
		}
	}
}

// The hand-written encoders produce msgpack (the same messages as
// msgpack.Marshal, with each block's data aligned), and the hand-written
// decoders agree with msgpack.Unmarshal.
func TestFastCodecMatchesMsgpack(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 2))
	norm := func(bs []Block) []Block { // msgpack decodes a nil bin as an empty one in some versions
		for i := range bs {
			if len(bs[i].Data) == 0 {
				bs[i].Data = nil
			}
		}
		return bs
	}
	for trial := 0; trial < 300; trial++ {
		p := &PushRequest{V: uint8(rng.IntN(3)), Job: randString(rng), Rank: rng.Uint32(), Epoch: rng.Uint64(),
			Step: int64(rng.Uint64()), Pull: trial%3 == 0, Blocks: randBlocks(rng)}
		if p.Pull && len(p.Blocks) > 0 && rng.IntN(2) == 0 {
			p.PullSpans = make([][]byte, len(p.Blocks))
			for i := range p.PullSpans {
				if rng.IntN(3) != 0 {
					p.PullSpans[i] = randSpans(rng, rng.IntN(300))
				}
			}
		}
		want, err := msgpack.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		pushBlocks := func(m *PushRequest) []Block { return m.Blocks }
		pushViews := func(b []byte) ([]Block, error) {
			m, err := decodePushFields(b)
			if err != nil {
				return nil, err
			}
			return m.Blocks, nil
		}
		checkEncoding(t, fmt.Sprintf("push %d", trial), EncodePush(p), want, pushBlocks, pushViews)
		// Aligned from the start of the message, wherever it starts in dst.
		checkEncoding(t, fmt.Sprintf("push %d after 3 bytes", trial), AppendPush([]byte{1, 2, 3}, p)[3:], want, pushBlocks, pushViews)
		var ref PushRequest
		msgpack.Unmarshal(want, &ref)
		got, err := decodePushFields(want)
		if err != nil {
			t.Fatal(err)
		}
		if got.V != ref.V || got.Job != ref.Job || got.Rank != ref.Rank || got.Epoch != ref.Epoch || got.Step != ref.Step || got.Pull != ref.Pull ||
			!reflect.DeepEqual(norm(got.Blocks), norm(ref.Blocks)) || !reflect.DeepEqual(got.PullSpans, ref.PullSpans) || !reflect.DeepEqual(got.PullSpans, p.PullSpans) {
			t.Fatalf("push %d: decodings differ", trial)
		}

		pr := &PullReply{V: Version, Kind: Kind(rng.IntN(NumKinds)), Msg: randString(rng), Clock: int64(rng.Uint64()), Blocks: randBlocks(rng)}
		want, _ = msgpack.Marshal(pr)
		checkEncoding(t, fmt.Sprintf("pull reply %d", trial), EncodePullReply(pr), want, func(m *PullReply) []Block { return m.Blocks },
			func(b []byte) ([]Block, error) {
				m, err := DecodePullReply(b)
				if err != nil && ErrKind(err) != BadLength { // random spans may not match their data
					return nil, err
				}
				return m.Blocks, nil
			})
		var refR PullReply
		msgpack.Unmarshal(want, &refR)
		gotR, err := DecodePullReply(want)
		if err != nil && ErrKind(err) != BadLength {
			t.Fatal(err)
		}
		if err == nil && (gotR.Kind != refR.Kind || gotR.Msg != refR.Msg || gotR.Clock != refR.Clock || !reflect.DeepEqual(norm(gotR.Blocks), norm(refR.Blocks))) {
			t.Fatalf("pull reply %d: decodings differ", trial)
		}
	}
}

// Integers in any msgpack width decode, as other encoders may use compact
// forms; values that do not fit are refused.
func TestFastDecodeCompactInts(t *testing.T) {
	var buf strings.Builder
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	p := &PushRequest{V: Version, Job: "j", Rank: 3, Epoch: 1 << 40, Step: -1 + 1<<33, Blocks: []Block{{ID: 7, Data: make([]byte, 8)}}}
	if err := enc.Encode(p); err != nil {
		t.Fatal(err)
	}
	got, err := DecodePush([]byte(buf.String()))
	if err != nil || got.Rank != 3 || got.Epoch != 1<<40 || got.Step != p.Step || got.Blocks[0].ID != 7 {
		t.Fatalf("compact ints: %+v %v", got, err)
	}
	big, _ := msgpack.Marshal(map[string]any{"v": Version, "j": "j", "r": uint64(math.MaxUint32) + 1})
	if _, err := DecodePush(big); ErrKind(err) != Malformed {
		t.Fatalf("rank overflow: %v", err)
	}
	neg, _ := msgpack.Marshal(map[string]any{"v": Version, "j": "j", "e": -1})
	if _, err := DecodePush(neg); ErrKind(err) != Malformed {
		t.Fatalf("negative epoch: %v", err)
	}
	extra, _ := msgpack.Marshal(map[string]any{"v": Version, "j": "j", "zz": []any{1, "x", map[string]any{"q": 1.5}}})
	if m, err := DecodePush(extra); err != nil || m.Job != "j" {
		t.Fatalf("unknown fields are skipped: %v", err)
	}
}

// Differential fuzzing: wherever both decoders accept an input, they agree.
func FuzzFastDecodeAgrees(f *testing.F) {
	f.Add(EncodePush(&PushRequest{V: Version, Job: "j", Blocks: []Block{{ID: 1, Data: make([]byte, 8)}}}))
	f.Add(EncodePullReply(&PullReply{V: Version, Clock: 3, Blocks: []Block{{ID: 2, Data: make([]byte, 4)}}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, err := DecodePush(data); err == nil {
			var ref PushRequest
			if msgpack.Unmarshal(data, &ref) == nil && (ref.Job != got.Job || ref.Rank != got.Rank || ref.Step != got.Step ||
				ref.Epoch != got.Epoch || len(ref.Blocks) != len(got.Blocks)) {
				t.Fatalf("push: fast %+v, msgpack %+v", got, ref)
			}
		}
		if got, err := DecodePullReply(data); err == nil {
			var ref PullReply
			if msgpack.Unmarshal(data, &ref) == nil && (ref.Kind != got.Kind || ref.Clock != got.Clock || len(ref.Blocks) != len(got.Blocks)) {
				t.Fatalf("pull reply: fast %+v, msgpack %+v", got, ref)
			}
		}
	})
}
