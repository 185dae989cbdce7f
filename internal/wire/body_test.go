package wire

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// testFloats is the block lengths of the split-push tests' receiver: block
// id holds id%7+1 floats, and ids from 100 on are not its.
func testFloats(id uint32) (int, bool) { return int(id%7) + 1, id < 100 }

// splitOf is p in split form: its envelope and its blocks' data one after
// another.
func splitOf(p *PushRequest) (string, []byte) {
	var body []byte
	for _, b := range p.Blocks {
		body = append(body, b.Data...)
	}
	return EncodeEnvelope(p), body
}

func TestSplitPushRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := range 50 {
		p := &PushRequest{V: Version, Job: strings.Repeat("j", 1+rng.IntN(MaxJobName)), Rank: rng.Uint32(), Epoch: rng.Uint64(), Step: rng.Int64N(math.MaxInt64), Pull: trial%2 == 1}
		for range rng.IntN(20) {
			id := uint32(rng.IntN(100))
			n, _ := testFloats(id)
			data := make([]byte, 4*n)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			p.Blocks = append(p.Blocks, Block{ID: id, Data: data})
		}
		env, body := splitOf(p)
		if len(env)%4 != 0 {
			t.Fatalf("trial %d: envelope of %d characters: the body would not be aligned", trial, len(env))
		}
		got, err := DecodeSplitPush(env, body, testFloats)
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		if got.V != p.V || got.Job != p.Job || got.Rank != p.Rank || got.Epoch != p.Epoch || got.Step != p.Step || got.Pull != p.Pull || len(got.Blocks) != len(p.Blocks) {
			t.Fatalf("trial %d: decoded %+v, want %+v", trial, got, p)
		}
		for i, b := range got.Blocks {
			if b.ID != p.Blocks[i].ID || !slices.Equal(b.Data, p.Blocks[i].Data) || b.Spans != nil {
				t.Fatalf("trial %d block %d: %+v, want %+v", trial, i, b, p.Blocks[i])
			}
			if cap(b.Data) != len(b.Data) {
				t.Fatalf("trial %d block %d: its data can be appended into the next block's", trial, i)
			}
		}
	}
}

// The envelope holds no data: it takes fewer bytes per block than
// PerBlock, so that whatever Group packs into a message also fits split.
func TestSplitPushFitsWhereGroupSays(t *testing.T) {
	const maxPayload = 1 << 20
	for _, n := range []int{1, 15, 1000, 20000} {
		p := &PushRequest{V: Version, Job: strings.Repeat("j", MaxJobName), Rank: math.MaxUint32, Epoch: math.MaxUint64, Step: math.MaxInt64}
		sizes := make([]int, n)
		for i := range sizes {
			sizes[i] = 4 * ((maxPayload - Headroom - PerBlock*n) / n / 4)
			p.Blocks = append(p.Blocks, Block{ID: math.MaxUint32})
		}
		ends, err := Group(sizes, nil, maxPayload)
		if err != nil {
			t.Fatal(err)
		}
		p.Blocks = p.Blocks[:ends[0]]
		// "NATS/1.0\r\n" + EnvelopeHeader + ": " + value + "\r\n" + "\r\n"
		header := 10 + len(EnvelopeHeader) + 2 + len(EncodeEnvelope(p)) + 4
		body := 0
		for _, s := range sizes[:ends[0]] {
			body += s
		}
		if header+body > maxPayload {
			t.Errorf("%d blocks: a split message of %d header and %d body bytes exceeds %d", ends[0], header, body, maxPayload)
		}
		if header%4 != 0 {
			t.Errorf("%d blocks: a %d-byte header section leaves the body unaligned", ends[0], header)
		}
	}
}

func TestDecodeSplitPushRefuses(t *testing.T) {
	good := &PushRequest{V: Version, Job: "j", Rank: 1, Epoch: 2, Step: 3, Blocks: []Block{{ID: 1, Data: make([]byte, 8)}, {ID: 2, Data: make([]byte, 12)}}}
	env, body := splitOf(good)
	withData := base64.StdEncoding.EncodeToString(EncodePush(good))
	sparse := base64.StdEncoding.EncodeToString(EncodePush(&PushRequest{V: Version, Job: "j", Blocks: []Block{{ID: 1, Data: make([]byte, 4), Spans: AppendSpan(nil, 0, 1)}}}))
	badJob := EncodeEnvelope(&PushRequest{V: Version, Job: "a.b", Blocks: good.Blocks})
	for _, c := range []struct {
		name string
		env  string
		body []byte
		want Kind
	}{
		{"not base64", "!!!!", body, Malformed},
		{"not msgpack", base64.StdEncoding.EncodeToString([]byte{0xc1}), body, Malformed},
		{"envelope with data", withData, body, Malformed},
		{"envelope with spans", sparse, make([]byte, 8), Malformed},
		{"bad job", badJob, body, UnknownJob},
		{"unknown block", EncodeEnvelope(&PushRequest{V: Version, Job: "j", Blocks: []Block{{ID: 100}}}), body, UnknownBlock},
		{"short body", env, body[:len(body)-1], BadLength},
		{"long body", env, append(slices.Clone(body), 0, 0, 0, 0), BadLength},
		{"huge envelope", strings.Repeat("A", base64.StdEncoding.EncodedLen(MaxEnvelope)+4), body, TooLarge},
	} {
		_, err := DecodeSplitPush(c.env, c.body, testFloats)
		var e *Error
		if !errors.As(err, &e) || e.Kind != c.want {
			t.Errorf("%s: error %v, want kind %s", c.name, err, c.want)
		}
	}
}

func FuzzDecodeSplitPush(f *testing.F) {
	env, body := splitOf(&PushRequest{V: Version, Job: "j", Blocks: []Block{{ID: 1, Data: make([]byte, 8)}, {ID: 9, Data: make([]byte, 12)}}})
	f.Add(env, body)
	f.Add(EncodeEnvelope(&PushRequest{V: Version, Job: "j"}), []byte{})
	f.Add("", []byte{1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, env string, body []byte) {
		m, err := DecodeSplitPush(env, body, testFloats)
		if err != nil {
			return
		}
		if m.V != Version || ValidJob(m.Job) != nil || m.Step < 0 {
			t.Fatalf("accepted a bad push: %+v", m)
		}
		at := 0
		for _, b := range m.Blocks {
			n, ok := testFloats(b.ID)
			if !ok || len(b.Data) != 4*n || b.Spans != nil || &b.Data[0] != &body[at] {
				t.Fatalf("accepted block %d: %d bytes at %d", b.ID, len(b.Data), at)
			}
			at += len(b.Data)
		}
		if at != len(body) {
			t.Fatalf("accepted a body of %d bytes for blocks of %d", len(body), at)
		}
	})
}

// FitBlock's largest block is the largest Group packs alone: one float
// more does not fit either way.
func TestFitBlockAgreesWithGroup(t *testing.T) {
	for _, payload := range []int64{1 << 20, 8 << 20, 4096} {
		most := int((payload - Headroom - PerBlock) / 4)
		if err := FitBlock(most, payload); err != nil {
			t.Fatalf("%d: %v", payload, err)
		}
		if _, err := Group([]int{4 * most}, nil, int(payload)); err != nil {
			t.Fatalf("%d: FitBlock's %d floats do not pack: %v", payload, most, err)
		}
		err := FitBlock(most+1, payload)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("at most %d floats", most)) {
			t.Fatalf("%d: %v", payload, err)
		}
		if _, err := Group([]int{4 * (most + 1)}, nil, int(payload)); err == nil {
			t.Fatalf("%d: Group packs a block FitBlock refuses", payload)
		}
	}
}
