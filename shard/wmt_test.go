package shard

import (
	"slices"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/models"
)

// synthetic:wmt is a stream: a batch is a pure function of (seed, data
// shard, step), within the vocabularies, of one WMT-like length, its
// targets the sources' translation (reversed sources read back in order),
// its words Zipf-distributed; the held-out set reads back through the
// dataset's own encoding.
func TestWMTStream(t *testing.T) {
	d, _, err := Open(DataConfig{Source: "synthetic:wmt", VocabMax: 160000, TgtVocabMax: 80000, Reverse: true, HeldOut: 20, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if d.SrcVocab() != 160000 || d.TgtVocab() != 80000 {
		t.Fatalf("vocabularies %d, %d", d.SrcVocab(), d.TgtVocab())
	}
	w := NewWMT(160000, 80000)
	count := map[int32]int{}
	lengths := map[int]bool{}
	for step := range int64(40) {
		b := must(d.Batch(3, 1, step, 16))
		if again := must(d.Batch(3, 1, step, 16)); !slices.Equal(b.Src, again.Src) || !slices.Equal(b.TgtOut, again.TgtOut) {
			t.Fatal("a batch is not a function of its step")
		}
		if other := must(d.Batch(3, 2, step, 16)); slices.Equal(other.Src, b.Src) {
			t.Fatal("two data shards see the same batch")
		}
		if b.SrcLen < 3 || b.SrcLen > 80 || b.TgtLen != b.SrcLen+1 {
			t.Fatalf("lengths %d, %d", b.SrcLen, b.TgtLen)
		}
		lengths[b.SrcLen] = true
		if err := b.Validate(models.Seq2SeqConfig{SrcVocab: d.SrcVocab(), TgtVocab: d.TgtVocab(), Embed: 1, Hidden: 1, Layers: 1}); err != nil {
			t.Fatal(err)
		}
		for e := range b.Size {
			src := make([]int32, b.SrcLen)
			for i := range src {
				src[b.SrcLen-1-i] = b.Src[i*b.Size+e] // fed reversed
				count[b.Src[i*b.Size+e]]++
			}
			tgt := w.translate(src)
			for i, id := range tgt {
				if b.TgtOut[i*b.Size+e] != id || b.TgtIn[(i+1)*b.Size+e] != id {
					t.Fatalf("step %d example %d: the target is not the source's translation", step, e)
				}
			}
			if b.TgtOut[b.SrcLen*b.Size+e] != EOS || b.TgtIn[e] != Go {
				t.Fatal("no <go> or <eos>")
			}
		}
	}
	if len(lengths) < 8 {
		t.Fatalf("40 batches of %d lengths", len(lengths))
	}
	// Zipf: the most frequent word is far more frequent than the 1000th.
	if count[wmtFirstWord] < 20*max(1, count[wmtFirstWord+1000]) {
		t.Fatalf("word counts %d (rank 0) and %d (rank 1000): not Zipf-like", count[wmtFirstWord], count[wmtFirstWord+1000])
	}
	for _, ex := range must(d.HeldOut()) {
		got := d.SrcIDs(strings.Join(d.SrcWords(ex.Src), " "))
		if !slices.Equal(got, ex.Src) || !slices.Equal(wordIDs(d.TgtWords(ex.Tgt), 80000), ex.Tgt) {
			t.Fatal("a held-out pair does not read back through its words")
		}
	}
	if ids := d.SrcIDs("w5 dog w999999"); !slices.Equal(ids, []int32{wmtUnk, wmtUnk, 5}) {
		t.Fatalf("unknown words read as %v", ids)
	}
}

// must is v, or the test's panic.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// The generated corpus written as a file reads back through the file
// reader: every line a pair, the target the source's translation, words
// within the vocabularies, lengths as the stream's; the same seed writes
// the same bytes.
func TestWMTWriteTSV(t *testing.T) {
	w := NewWMT(5000, 3000)
	var a, b strings.Builder
	if err := w.WriteTSV(&a, 500, 9); err != nil {
		t.Fatal(err)
	}
	w.WriteTSV(&b, 500, 9)
	if a.String() != b.String() {
		t.Fatal("the same seed wrote other bytes")
	}
	pairs, st, err := ReadCorpus(strings.NewReader(a.String()), nil)
	if err != nil || st.Lines != 500 || st.Pairs != 500 {
		t.Fatalf("%+v %v", st, err)
	}
	for _, p := range pairs {
		src, tgt := wordIDs(p.Src, 5000), wordIDs(p.Tgt, 3000)
		if len(src) < 3 || len(src) > 80 || slices.Contains(src, wmtUnk) || !slices.Equal(tgt, w.translate(src)) {
			t.Fatalf("pair %v -> %v", p.Src, p.Tgt)
		}
	}
}
