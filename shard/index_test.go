package shard

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// testCorpusFile writes a corpus of n pairs with what real files hold:
// blank and malformed lines, CRLF ends, a third column, punctuation, words
// rare enough to fall out of a small vocabulary, and no newline at the end.
func testCorpusFile(t testing.TB, n int) string {
	rng := rand.New(rand.NewPCG(5, 6))
	var b strings.Builder
	word := func() string { return fmt.Sprintf("w%d", int(rng.ExpFloat64()*8)) }
	for i := range n {
		switch i % 17 {
		case 3:
			b.WriteString("\n")
		case 5:
			b.WriteString("no tab on this line\n")
		case 8:
			b.WriteString("   \t only target\n")
		}
		src, tgt := make([]string, 1+rng.IntN(6)), make([]string, 1+rng.IntN(7))
		for k := range src {
			src[k] = word()
		}
		for k := range tgt {
			tgt[k] = word()
		}
		if i%4 == 0 {
			src[len(src)-1] += "."
		}
		fmt.Fprintf(&b, "%s\t%s", strings.Join(src, " "), strings.Join(tgt, " "))
		switch {
		case i == n-1:
		case i%7 == 0:
			b.WriteString("\tCC-BY 2.0\r\n")
		default:
			b.WriteString("\n")
		}
	}
	path := filepath.Join(t.TempDir(), "corpus.tsv")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// A corpus file served through indexes gives the batches, the epochs, the
// held-out set and the vocabularies of the in-memory corpus of its pairs
// (ReadCorpus, SplitHeldOut, BuildVocab, Encode, NewCorpus), byte for byte,
// for every data shard, with and without held-out pairs (and with more
// asked for than the file has), for both tokenizers, reversed or not.
func TestIndexedCorpusIsTheInMemoryCorpus(t *testing.T) {
	path := testCorpusFile(t, 601)
	raw, _ := os.ReadFile(path)
	for _, c := range []struct {
		held, shards int
		tok          string
		reverse      bool
	}{
		{0, 1, "space", false}, {7, 3, "space", true}, {5000, 2, "13a", true}, {20, 4, "13a", false},
	} {
		t.Run(fmt.Sprintf("held%d-shards%d-%s-rev%v", c.held, c.shards, c.tok, c.reverse), func(t *testing.T) {
			cfg := DataConfig{Source: path, VocabMax: 12, TgtVocabMax: 9, HeldOut: c.held, Tokenizer: c.tok, Seed: 11, Shards: c.shards, Reverse: c.reverse}
			tok, _ := tokenizer(c.tok)
			pairs, st, err := ReadCorpus(strings.NewReader(string(raw)), tok.split)
			if err != nil {
				t.Fatal(err)
			}
			train, held := SplitHeldOut(pairs, c.held, cfg.Seed)
			var srcs, tgts [][]string
			for _, p := range train {
				srcs, tgts = append(srcs, p.Src), append(tgts, p.Tgt)
			}
			sv, tv := BuildVocab(srcs, cfg.VocabMax), BuildVocab(tgts, cfg.TgtVocabMax)
			ref := NewCorpus(Encode(train, sv, tv, c.reverse), c.shards, cfg.Seed)

			d, crc, err := Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			sum := SummaryOf(d)
			if sum.Stats != st || sum.Size != int64(len(raw)) || crc != sum.CRC || crc == 0 {
				t.Fatalf("summary %+v of %d bytes, crc %08x; ReadCorpus counts %+v", sum.Stats, len(raw), crc, st)
			}
			if !slices.Equal(d.(*corpusData).src.Words, sv.Words) || !slices.Equal(d.(*corpusData).tgt.Words, tv.Words) {
				t.Fatalf("vocabularies differ:\n%v\n%v", d.(*corpusData).src.Words, sv.Words)
			}
			gotHeld := must(d.HeldOut())
			if want := Encode(held, sv, tv, c.reverse); len(gotHeld) != len(want) || !slices.EqualFunc(gotHeld, want, sameExample) {
				t.Fatalf("held out: %d examples, want %d (or different ones)", len(gotHeld), len(want))
			}
			for s := range c.shards {
				n := ref.StepsPerEpoch(cfg.Seed, s, 8)
				if got := must(d.StepsPerEpoch(cfg.Seed, s, 8)); got != n {
					t.Fatalf("shard %d: %d steps an epoch, want %d", s, got, n)
				}
				for step := range 2*n + 1 {
					got, want := must(d.Batch(cfg.Seed, s, step, 8)), ref.Batch(cfg.Seed, s, step, 8)
					if got.Size != want.Size || got.SrcLen != want.SrcLen || got.TgtLen != want.TgtLen ||
						!slices.Equal(got.Src, want.Src) || !slices.Equal(got.TgtIn, want.TgtIn) || !slices.Equal(got.TgtOut, want.TgtOut) {
						t.Fatalf("shard %d step %d: batch differs from the in-memory corpus's", s, step)
					}
				}
			}
			// Given the summary, a worker's dataset counts nothing again and
			// serves the same batches.
			cfg.Summary, cfg.CRC = sum, crc
			w, _, err := Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			s := c.shards - 1
			if got, want := must(w.Batch(cfg.Seed, s, 3, 8)), ref.Batch(cfg.Seed, s, 3, 8); !slices.Equal(got.TgtOut, want.TgtOut) {
				t.Fatal("a dataset opened with the summary serves other batches")
			}
		})
	}
}

func sameExample(a, b Example) bool { return slices.Equal(a.Src, b.Src) && slices.Equal(a.Tgt, b.Tgt) }

// perm32 is rand.Perm in 4 bytes an element: the same permutation.
func TestPerm32IsPerm(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 1000, 65537} {
		want := rand.New(rand.NewPCG(3, 0x5eed)).Perm(n)
		got := perm32(rand.New(rand.NewPCG(3, 0x5eed)), n)
		for i := range want {
			if int(got[i]) != want[i] {
				t.Fatalf("n=%d: element %d is %d, rand.Perm's %d", n, i, got[i], want[i])
			}
		}
	}
}

// A dataset holds the indexes of the data shards it serves, at most
// keepIndexes of them, each of its shard's pairs only.
func TestIndexesHoldTheirShardsOnly(t *testing.T) {
	path := testCorpusFile(t, 300)
	d, _, err := Open(DataConfig{Source: path, VocabMax: 50, Shards: 4, HeldOut: 10, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	cd := d.(*corpusData)
	if len(cd.indexes) != 0 {
		t.Fatalf("opening indexed %d shards", len(cd.indexes))
	}
	total := 0
	for _, s := range []int{2, 0, 3, 1} {
		must(d.Batch(2, s, 0, 4))
		total += cd.indexes[s].len()
		if len(cd.indexes) > keepIndexes {
			t.Fatalf("%d indexes kept", len(cd.indexes))
		}
	}
	if pairs := cd.sum.Stats.Pairs; total != pairs-10 {
		t.Fatalf("the shards index %d pairs, want %d (%d less the held out)", total, pairs-10, pairs)
	}
	if _, ok := cd.indexes[1]; !ok || len(cd.recent) != keepIndexes || cd.recent[0] != 3 {
		t.Fatalf("kept %v, want the last used (3, 1)", cd.recent)
	}
	if _, err := d.Batch(2, 4, 0, 4); err == nil {
		t.Fatal("data shard 4 of 4 served")
	}
}

// A file that is not the one the job counted is refused: another size
// at Open, another checksum at the end of a pass, a line changed in place
// when its batch is read, a line that is no longer a pair.
func TestIndexedCorpusRefusesAnotherFile(t *testing.T) {
	path := testCorpusFile(t, 200)
	cfg := DataConfig{Source: path, VocabMax: 50, Shards: 2, Seed: 2}
	d, crc, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sum := SummaryOf(d)
	raw, _ := os.ReadFile(path)

	if _, _, err := Open(DataConfig{Source: path, VocabMax: 50, Shards: 2, CRC: crc ^ 1}); err == nil || !strings.Contains(err.Error(), "differs from the job's") {
		t.Fatalf("another checksum: %v", err)
	}
	os.WriteFile(path, append(raw, "x\ty\n"...), 0o644)
	if _, _, err := Open(DataConfig{Source: path, VocabMax: 50, Shards: 2, CRC: crc, Summary: sum}); err == nil || !strings.Contains(err.Error(), "its summary says") {
		t.Fatalf("another size: %v", err)
	}
	// The same size, one byte changed: the pass that indexes a shard
	// finds another checksum.
	changed := slices.Clone(raw)
	changed[1] ^= 1
	os.WriteFile(path, changed, 0o644)
	cfg.CRC, cfg.Summary = crc, sum
	w, _, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Batch(2, 0, 0, 4); err == nil || !strings.Contains(err.Error(), "differs from the job's") {
		t.Fatalf("a changed file indexed: %v", err)
	}
	// Changed after indexing: each line read is checked.
	os.WriteFile(path, raw, 0o644)
	if _, err := w.Batch(2, 0, 0, 4); err != nil {
		t.Fatal(err)
	}
	x := w.(*corpusData).indexes[0]
	for j := range x.len() {
		must(w.Batch(2, 0, int64(j), 1)) // every line of the shard reads back
	}
	off := x.off[0]
	changed = slices.Clone(raw)
	changed[off] ^= 1
	os.WriteFile(path, changed, 0o644)
	var failed error
	for j := range x.len() {
		if _, err := w.Batch(2, 0, int64(j), 1); err != nil {
			failed = err
		}
	}
	if failed == nil || !strings.Contains(failed.Error(), "changed since it was indexed") {
		t.Fatalf("a line changed in place: %v", failed)
	}
}

// Summarize refuses what ReadCorpus refuses, naming the line.
func TestSummarizeRefusesWhatReadCorpusRefuses(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ in, says string }{
		{"a\tb\nbad \xff byte\tx\n", "line 2: not UTF-8"},
		{"\n\nnothing\n", "no source<TAB>target pair in 3 lines"},
		{"a\tb\n" + strings.Repeat("x", MaxLineBytes+1) + "\n", "line 2: longer than"},
	} {
		path := filepath.Join(dir, "bad.tsv")
		os.WriteFile(path, []byte(c.in), 0o644)
		if _, err := Summarize(DataConfig{Source: path, VocabMax: 10}); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%q: %v, want %q", c.in[:min(20, len(c.in))], err, c.says)
		}
	}
}

// A summary reads back as written; bad ones are refused.
func TestCorpusSummaryRoundTrip(t *testing.T) {
	c := &CorpusSummary{CRC: 7, Size: 100, Stats: CorpusStats{Lines: 5, Pairs: 3, Blank: 1, Malformed: 1}, Src: []string{"a", "b"}, Tgt: []string{"c"}}
	got, err := DecodeCorpusSummary(c.Encode())
	if err != nil || got.CRC != 7 || got.Size != 100 || got.Stats != c.Stats || !slices.Equal(got.Src, c.Src) || !slices.Equal(got.Tgt, c.Tgt) {
		t.Fatalf("%+v, %v", got, err)
	}
	for _, bad := range []*CorpusSummary{
		{Stats: CorpusStats{Lines: 5, Pairs: 3}},
		{Stats: CorpusStats{Lines: 1, Pairs: 1}, Src: []string{"<unk>"}},
		{Stats: CorpusStats{Lines: 1, Pairs: 1}, Tgt: []string{"a", "b", "a"}},
		{Stats: CorpusStats{Lines: 1, Pairs: 1}, Src: []string{""}},
		{Stats: CorpusStats{}},
	} {
		if _, err := DecodeCorpusSummary(bad.Encode()); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if _, err := DecodeCorpusSummary([]byte("not gzip")); err == nil {
		t.Error("garbage accepted")
	}
}

func FuzzDecodeCorpusSummary(f *testing.F) {
	f.Add((&CorpusSummary{Stats: CorpusStats{Lines: 2, Pairs: 2}, Src: []string{"x"}}).Encode())
	f.Add([]byte{0x1f, 0x8b, 8, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCorpusSummary(b)
		if err != nil {
			return
		}
		if c.Stats.Pairs <= 0 {
			t.Fatalf("accepted %+v", c.Stats)
		}
		if again, err := DecodeCorpusSummary(c.Encode()); err != nil || again.Stats != c.Stats || !slices.Equal(again.Src, c.Src) {
			t.Fatal("does not read back")
		}
	})
}
