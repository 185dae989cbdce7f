package shard

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/models"
)

func TestReadCorpus(t *testing.T) {
	in := "Go.\tVa !\tCC-BY 2.0\n\n   \nno tab here\n\tonly target\nHi there.\tSalut !\r\n"
	pairs, st, err := ReadCorpus(strings.NewReader(in), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st != (CorpusStats{Lines: 6, Pairs: 2, Blank: 2, Malformed: 2}) {
		t.Fatalf("stats %+v", st)
	}
	if !slices.Equal(pairs[0].Src, []string{"Go."}) || !slices.Equal(pairs[0].Tgt, []string{"Va", "!"}) ||
		!slices.Equal(pairs[1].Tgt, []string{"Salut", "!"}) {
		t.Fatalf("pairs %v", pairs)
	}
	pairs, _, _ = ReadCorpus(strings.NewReader("Go.\tVa!\n"), models.Tokenize13a)
	if !slices.Equal(pairs[0].Src, []string{"Go", "."}) || !slices.Equal(pairs[0].Tgt, []string{"Va", "!"}) {
		t.Fatalf("13a tokens %v", pairs)
	}
	for _, c := range []struct{ in, says string }{
		{"a\tb\nbad \xff byte\tx\n", "line 2: not UTF-8"},
		{"\n\nnothing\n", "no source<TAB>target pair in 3 lines"},
		{"", "no source<TAB>target pair in 0 lines"},
		{"a\tb\n" + strings.Repeat("x", MaxLineBytes+1) + "\n", "line 2: longer than"},
	} {
		if _, _, err := ReadCorpus(strings.NewReader(c.in), nil); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%q...: %v, want %q", c.in[:min(len(c.in), 20)], err, c.says)
		}
	}
}

func TestVocab(t *testing.T) {
	v := BuildVocab([][]string{{"b", "a", "c"}, {"a", "b", "a", "d"}}, 6)
	if want := []string{"<pad>", "<go>", "<eos>", "<unk>", "a", "b"}; !slices.Equal(v.Words, want) {
		t.Fatalf("words %v, want %v", v.Words, want)
	}
	if got := v.IDs([]string{"a", "c", "b", "<eos>"}); !slices.Equal(got, []int32{4, VocabUnk, 5, VocabUnk}) {
		t.Fatalf("ids %v", got)
	}
	if got := v.Decode([]int32{5, 4, 99}); !slices.Equal(got, []string{"b", "a", "<unk>"}) {
		t.Fatalf("decode %v", got)
	}
	if BuildVocab([][]string{{"x"}}, 0).Size() != 5 {
		t.Fatal("uncapped vocabulary")
	}
}

func TestEncodeReversesAndMakeBatchPads(t *testing.T) {
	v := NewVocab([]string{"a", "b", "c"}) // a=4 b=5 c=6
	ex := Encode([]Pair{{Src: []string{"a", "b"}, Tgt: []string{"c"}}, {Src: []string{"b", "c"}, Tgt: []string{"a", "b", "c"}}}, v, v, true)
	if !slices.Equal(ex[0].Src, []int32{5, 4}) {
		t.Fatalf("reversed source %v", ex[0].Src)
	}
	b := MakeBatch(ex, VocabGo, VocabEOS)
	// Time-major: column 0 is example 0, column 1 example 1.
	if b.SrcLen != 2 || b.TgtLen != 4 || !slices.Equal(b.Src, []int32{5, 6, 4, 5}) {
		t.Fatalf("source %v (len %d)", b.Src, b.SrcLen)
	}
	if want := []int32{VocabGo, VocabGo, 6, 4, VocabPad, 5, VocabPad, 6}; !slices.Equal(b.TgtIn, want) {
		t.Fatalf("decoder input %v, want %v", b.TgtIn, want)
	}
	if want := []int32{6, 4, VocabEOS, 5, -1, 6, -1, VocabEOS}; !slices.Equal(b.TgtOut, want) {
		t.Fatalf("labels %v, want %v", b.TgtOut, want)
	}
}

// Data shards are disjoint and cover the corpus; an epoch of a shard visits
// each of its examples exactly once, in equal-source-length batches; the
// layout is a function of the seed and differs between epochs.
func TestCorpusShardsAndEpochs(t *testing.T) {
	var ex []Example
	for i := 0; i < 103; i++ {
		src := make([]int32, 1+i%5)
		src[0] = int32(i)
		ex = append(ex, Example{Src: src, Tgt: []int32{int32(i)}})
	}
	c := NewCorpus(ex, 3, 7)
	seen := map[int32]int{}
	for s := 0; s < 3; s++ {
		n := c.StepsPerEpoch(7, s, 4)
		for step := int64(0); step < n; step++ {
			b := c.Batch(7, s, step, 4)
			if b.Size > 4 {
				t.Fatalf("batch of %d", b.Size)
			}
			for i := 0; i < b.Size; i++ {
				seen[b.Src[i]]++ // the first source token names the example
			}
		}
		if !slices.Equal(c.Batch(7, s, 0, 4).Src, c.Batch(7, s, 0, 4).Src) {
			t.Fatal("batches are not deterministic")
		}
		if c.ShardSize(s) < 34 || c.ShardSize(s) > 35 {
			t.Fatalf("shard %d holds %d examples", s, c.ShardSize(s))
		}
	}
	if len(seen) != 103 {
		t.Fatalf("an epoch of all shards saw %d distinct examples, want 103", len(seen))
	}
	for id, k := range seen {
		if k != 1 {
			t.Fatalf("example %d seen %d times in one epoch", id, k)
		}
	}
	// Another epoch is laid out differently.
	n := c.StepsPerEpoch(7, 0, 4)
	same := true
	for step := int64(0); step < n; step++ {
		if !slices.Equal(c.Batch(7, 0, step, 4).Src, c.Batch(7, 0, n+step, 4).Src) {
			same = false
		}
	}
	if same {
		t.Fatal("epochs 0 and 1 have the same batches")
	}
}

// StepsPerEpoch counts without laying an epoch out, and agrees with the
// layout; a cached layout gives the same batches as a fresh one.
func TestCorpusStepsPerEpochAndCache(t *testing.T) {
	var ex []Example
	for i := 0; i < 77; i++ {
		ex = append(ex, Example{Src: make([]int32, 1+i%4), Tgt: []int32{int32(i)}})
	}
	c := NewCorpus(ex, 2, 3)
	for s := 0; s < 2; s++ {
		if n := c.StepsPerEpoch(3, s, 5); n != int64(len(layEpoch(3, s, 7, 5, c.ShardSize(s), c.srcLen(s)))) {
			t.Fatalf("shard %d: %d steps, layout has %d", s, n, len(layEpoch(3, s, 7, 5, c.ShardSize(s), c.srcLen(s))))
		}
	}
	first := c.Batch(3, 1, 12, 5)
	fresh := NewCorpus(ex, 2, 3).Batch(3, 1, 12, 5)
	if !slices.Equal(first.TgtOut, fresh.TgtOut) {
		t.Fatal("cached and fresh layouts differ")
	}
}

func TestOpenRefusesEmptyDataShards(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tiny.tsv")
	os.WriteFile(path, []byte("a\tb\nc\td\n"), 0o644)
	if _, _, err := Open(DataConfig{Source: path, VocabMax: 10, Shards: 3}); err == nil || !strings.Contains(err.Error(), "would be empty") {
		t.Fatalf("got %v", err)
	}
}

func TestSplitHeldOut(t *testing.T) {
	var pairs []Pair
	for i := 0; i < 50; i++ {
		pairs = append(pairs, Pair{Src: []string{string(rune('a' + i%26))}, Tgt: []string{"x"}})
	}
	train, held := SplitHeldOut(pairs, 5, 1)
	if len(train) != 45 || len(held) != 5 {
		t.Fatalf("%d + %d", len(train), len(held))
	}
	t2, h2 := SplitHeldOut(pairs, 5, 1)
	if len(t2) != 45 || !slices.EqualFunc(h2, held, func(a, b Pair) bool { return slices.Equal(a.Src, b.Src) }) {
		t.Fatal("held-out split is not deterministic")
	}
}

func FuzzReadCorpus(f *testing.F) {
	f.Add([]byte("Go.\tVa !\tCC-BY\n\nx\n"))
	f.Add([]byte("a\tb\r\n\xff\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pairs, st, err := ReadCorpus(strings.NewReader(string(data)), models.Tokenize13a)
		if err != nil {
			return
		}
		if len(pairs) != st.Pairs || st.Pairs+st.Blank+st.Malformed != st.Lines {
			t.Fatalf("stats %+v for %d pairs", st, len(pairs))
		}
		for _, p := range pairs {
			if len(p.Src) == 0 || len(p.Tgt) == 0 {
				t.Fatal("empty side accepted")
			}
		}
		// Counting tokens in place (what an index pass does) reads the same
		// pairs with the same source lengths.
		space, _ := tokenizer("space")
		whole, _, _ := ReadCorpus(strings.NewReader(string(data)), nil)
		var lens []int
		cst, err := scanCorpus(strings.NewReader(string(data)), space, false, func(_ int64, _ []byte, p linePair) error {
			lens = append(lens, p.srcLen)
			return nil
		})
		if err != nil || cst.Pairs != len(whole) || len(lens) != len(whole) {
			t.Fatalf("counting: %+v %v, splitting: %d pairs", cst, err, len(whole))
		}
		for i, p := range whole {
			if lens[i] != len(p.Src) {
				t.Fatalf("pair %d: %d source tokens counted, %d made", i, lens[i], len(p.Src))
			}
		}
	})
}

// countFields counts and eachField shows what strings.Fields makes,
// Unicode spaces included.
func FuzzCountFields(f *testing.F) {
	for _, s := range []string{"", " ", "a", " a  b ", "a\u00a0b\u2003c", "\u3000x\x85y", "\xff \xfe", "a\tb\vc\fd\re\nf"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want := strings.Fields(string(b))
		if got := countFields(b); got != len(want) {
			t.Fatalf("%q: %d fields counted, strings.Fields makes %d", b, got, len(want))
		}
		var got []string
		eachField(b, func(f []byte) { got = append(got, string(f)) })
		if !slices.Equal(got, want) {
			t.Fatalf("%q: fields %q, strings.Fields makes %q", b, got, want)
		}
	})
}

// SrcWords undoes SrcIDs: the sentence's words in its order, whether the job
// reverses sources or not, for a corpus and for synthetic data.
func TestSrcWordsUndoesSrcIDs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.tsv")
	os.WriteFile(path, []byte("the cat sat\tle chat\nthe dog ran\tle chien\na cat ran\tun chat\n"), 0o644)
	for _, reverse := range []bool{false, true} {
		for _, c := range []struct {
			cfg      DataConfig
			sentence string
		}{
			{DataConfig{Source: path, VocabMax: 20, Shards: 1, Reverse: reverse}, "the cat ran"},
			{DataConfig{Source: "synthetic:copy", MinLen: 3, MaxLen: 5, Shards: 1, Reverse: reverse}, "3 1 4 1 5"},
		} {
			d, _, err := Open(c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			ids := d.SrcIDs(c.sentence)
			if got := strings.Join(d.SrcWords(ids), " "); got != c.sentence {
				t.Errorf("%s reverse=%v: SrcWords(SrcIDs(%q)) = %q", c.cfg.Source, reverse, c.sentence, got)
			}
			if reverse && len(ids) > 1 && ids[0] == ids[len(ids)-1] {
				t.Fatalf("test sentence is a palindrome")
			}
		}
	}
}
