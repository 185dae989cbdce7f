package shard

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// alignedFiles writes the pairs of the TSV corpus at path as two aligned
// files, line for line: a line's source and target (its third column
// dropped), with its CRLF end or its missing last newline on both sides,
// a line without a tab as a source line beside an empty target line.
func alignedFiles(t testing.TB, path string) (src, tgt string) {
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s, g strings.Builder
	lines := strings.Split(string(raw), "\n")
	for i, l := range lines {
		end := "\n"
		if strings.HasSuffix(l, "\r") {
			l, end = strings.TrimSuffix(l, "\r"), "\r\n"
		}
		if i == len(lines)-1 {
			end = ""
		}
		cols := strings.SplitN(l, "\t", 3)
		s.WriteString(cols[0] + end)
		if len(cols) > 1 {
			g.WriteString(cols[1])
		}
		g.WriteString(end)
	}
	dir := t.TempDir()
	src, tgt = filepath.Join(dir, "train.en"), filepath.Join(dir, "train.fr")
	if err := os.WriteFile(src, []byte(s.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tgt, []byte(g.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return src, tgt
}

// A corpus as two aligned files (DataConfig.Target) is the TSV file of the
// same pairs: the same counts, vocabularies, held-out set, epochs and
// batches, byte for byte, for every data shard; a worker given the summary
// indexes its data shard (32 bytes a pair) and serves the same batches.
func TestAlignedFilesAreTheirTSV(t *testing.T) {
	path := testCorpusFile(t, 601)
	src, tgt := alignedFiles(t, path)
	for _, c := range []struct {
		held, shards int
		tok          string
	}{{0, 1, "space"}, {7, 3, "13a"}, {20, 2, "space"}} {
		tsvCfg := DataConfig{Source: path, VocabMax: 12, TgtVocabMax: 9, HeldOut: c.held, Tokenizer: c.tok, Seed: 11, Shards: c.shards, Reverse: true}
		alCfg := tsvCfg
		alCfg.Source, alCfg.Target = src, tgt
		ref, _, err := Open(tsvCfg)
		if err != nil {
			t.Fatal(err)
		}
		d, crc, err := Open(alCfg)
		if err != nil {
			t.Fatal(err)
		}
		rs, ds := SummaryOf(ref), SummaryOf(d)
		si, _ := os.Stat(src)
		ti, _ := os.Stat(tgt)
		if ds.Stats != rs.Stats || !slices.Equal(ds.Src, rs.Src) || !slices.Equal(ds.Tgt, rs.Tgt) || ds.CRC != crc || crc == rs.CRC ||
			ds.Size != si.Size() || ds.TgtSize != ti.Size() {
			t.Fatalf("%+v: aligned summary %+v (%d and %d bytes), the TSV's %+v", c, ds.Stats, ds.Size, ds.TgtSize, rs.Stats)
		}
		if !slices.EqualFunc(must(d.HeldOut()), must(ref.HeldOut()), sameExample) {
			t.Fatalf("%+v: held-out pairs differ", c)
		}
		alCfg.Summary, alCfg.CRC = ds, crc
		w, _, err := Open(alCfg)
		if err != nil {
			t.Fatal(err)
		}
		for s := range c.shards {
			n := must(ref.StepsPerEpoch(11, s, 8))
			if got := must(w.StepsPerEpoch(11, s, 8)); got != n {
				t.Fatalf("%+v shard %d: %d steps an epoch, want %d", c, s, got, n)
			}
			for step := range 2*n + 1 {
				got, want := must(w.Batch(11, s, step, 8)), must(ref.Batch(11, s, step, 8))
				if got.Size != want.Size || got.SrcLen != want.SrcLen || got.TgtLen != want.TgtLen ||
					!slices.Equal(got.Src, want.Src) || !slices.Equal(got.TgtIn, want.TgtIn) || !slices.Equal(got.TgtOut, want.TgtOut) {
					t.Fatalf("%+v shard %d step %d: the aligned files' batch differs from the TSV's", c, s, step)
				}
			}
		}
	}
}

// Aligned files that do not align, or hold what no corpus may, are refused
// with the file and line (a gzipped file, with how to unpack it); a target file changed after indexing is caught
// when a batch reads the changed line.
func TestAlignedFilesRefuse(t *testing.T) {
	path := testCorpusFile(t, 100)
	src, tgt := alignedFiles(t, path)
	raw, _ := os.ReadFile(tgt)
	cfg := DataConfig{Source: src, Target: tgt, VocabMax: 12, Seed: 3}
	lines := strings.Split(string(raw), "\n")
	for name, c := range map[string]struct {
		tgt  string
		want string
	}{
		"a line fewer": {strings.Join(lines[:len(lines)-1], "\n") + "\n", fmt.Sprintf("train.fr has %d lines, %s more", len(lines)-1, src)},
		"a line more":  {string(raw) + "\nextra\n", fmt.Sprintf("train.en has %d lines, %s more", len(lines), tgt)},
		"not UTF-8":    {strings.Join(lines[:4], "\n") + "\n\xff\xfe\n" + strings.Join(lines[4:], "\n"), "train.fr line 5: not UTF-8"},
		"too long":     {strings.Repeat("x", MaxLineBytes+1) + "\n", "train.fr line 1: longer than"},
	} {
		os.WriteFile(tgt, []byte(c.tgt), 0o644)
		if _, _, err := Open(cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, c.want)
		}
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(raw)
	zw.Close()
	os.WriteFile(tgt, z.Bytes(), 0o644)
	if _, _, err := Open(cfg); err == nil || !strings.Contains(err.Error(), "gzip-compressed: unpack it first") {
		t.Errorf("a gzipped target file: %v", err)
	}
	os.WriteFile(tgt, raw, 0o644)
	d, crc, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Summary, cfg.CRC = SummaryOf(d), crc
	w, _, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	must(w.Batch(3, 0, 0, 4))
	x := w.(*corpusData).indexes[0]
	changed := slices.Clone(raw)
	changed[x.tgtOff[0]] ^= 1
	os.WriteFile(tgt, changed, 0o644)
	var failed error
	for j := range x.len() {
		if _, err := w.Batch(3, 0, int64(j), 1); err != nil {
			failed = err
		}
	}
	if failed == nil || !strings.Contains(failed.Error(), "changed since it was indexed") {
		t.Fatalf("a target line changed in place: %v", failed)
	}
	os.WriteFile(tgt, append(raw, '\n'), 0o644)
	if _, _, err := Open(cfg); err == nil || !strings.Contains(err.Error(), "summary says") {
		t.Fatalf("a target file of another size: %v", err)
	}
}

// Aligned files, cut from the fuzzer's bytes at the first NUL, never crash
// the scanner; what it accepts is consistent: each pair's line is its two
// lines (where it says they lie) joined, and it reads the same pairs as
// the TSV of those joined lines.
func FuzzScanAligned(f *testing.F) {
	f.Add([]byte("Go.\r\n\nx\tz\n\x00Va !\n\ny\n"))
	f.Add([]byte("a\nb\x00c\n"))
	f.Add([]byte("a\xff\nb\x00c\nd\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		src, tgt, _ := bytes.Cut(data, []byte{0})
		space, _ := tokenizer("space")
		var tsv []byte
		n := 0
		st, err := scanAligned(bytes.NewReader(src), bytes.NewReader(tgt), "src", "tgt", space, false, func(loc pairLoc, line []byte, p linePair) error {
			if loc.off < 0 || loc.off+int64(loc.n) > int64(len(src)) || loc.tgtOff < 0 || loc.tgtOff+int64(loc.tgtN) > int64(len(tgt)) {
				t.Fatalf("pair %d at %+v, outside the files", n, loc)
			}
			if want := joinAligned(nil, src[loc.off:loc.off+int64(loc.n)], tgt[loc.tgtOff:loc.tgtOff+int64(loc.tgtN)]); !bytes.Equal(line, want) {
				t.Fatalf("pair %d: line %q, its two lines make %q", n, line, want)
			}
			tsv = append(append(tsv, line...), '\n')
			n++
			return nil
		})
		if err != nil {
			return
		}
		if n != st.Pairs || st.Pairs+st.Blank+st.Malformed != st.Lines {
			t.Fatalf("stats %+v for %d pairs", st, n)
		}
		cst, err := scanCorpus(bytes.NewReader(tsv), space, false, func(int64, []byte, linePair) error { return nil })
		if err != nil || cst.Pairs != n {
			t.Fatalf("the TSV of the accepted pairs: %+v, %v; want %d pairs", cst, err, n)
		}
	})
}
