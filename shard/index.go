package shard

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/downpour-ml/downpour/models"
)

// A corpus file is never held in memory whole. Every role reads it as a
// stream, and keeps only what it needs:
//
//   - the job's coordinator counts it once (Summarize): its checksum, its
//     counts, and the two vocabularies, which it stores with the job;
//   - a worker, given that summary, indexes the lines of the data shard it
//     trains on (their byte offsets, lengths, checksums and source
//     lengths: 20 bytes a pair) in one pass, and reads each batch's lines
//     from the file when the batch is made;
//   - the held-out pairs are read when asked for.
//
// Which pairs are held out and which data shard trains on each of the
// others are the permutations SplitHeldOut and NewCorpus draw in memory,
// drawn over pair numbers instead of pairs (4 bytes a pair, while an index
// is made): a file's batches are bit for bit those of the in-memory Corpus
// of its pairs, and a worker's memory is bounded by its data shard, not by
// the corpus.

// CorpusSummary is what a counting pass over a corpus file finds, and what
// every role of a job needs of it: the file's checksum and size, its
// counts, and the vocabularies' words (after the reserved ids).
type CorpusSummary struct {
	CRC   uint32      `json:"crc"`
	Size  int64       `json:"size"`
	Stats CorpusStats `json:"stats"`
	Src   []string    `json:"src"`
	Tgt   []string    `json:"tgt"`
}

// maxSummaryBytes bounds a decoded summary (the paper's vocabularies of
// 240,000 words take about 3 MB).
const maxSummaryBytes = 256 << 20

// Encode is the summary as gzip-compressed JSON.
func (c *CorpusSummary) Encode() []byte {
	var b bytes.Buffer
	z := gzip.NewWriter(&b)
	if err := json.NewEncoder(z).Encode(c); err != nil {
		panic(err) // a summary has no unmarshalable field
	}
	z.Close()
	return b.Bytes()
}

// Digest names the summary: the SHA-256 of its JSON, in hex.
func (c *CorpusSummary) Digest() string {
	b, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

// DecodeCorpusSummary reads an encoded summary.
func DecodeCorpusSummary(b []byte) (*CorpusSummary, error) {
	z, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("corpus summary: %w", err)
	}
	raw, err := io.ReadAll(io.LimitReader(z, maxSummaryBytes+1))
	if err != nil {
		return nil, fmt.Errorf("corpus summary: %w", err)
	}
	if len(raw) > maxSummaryBytes {
		return nil, fmt.Errorf("corpus summary: more than %d bytes", maxSummaryBytes)
	}
	var c CorpusSummary
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("corpus summary: %w", err)
	}
	switch {
	case c.Stats.Pairs <= 0 || c.Stats.Pairs+c.Stats.Blank+c.Stats.Malformed != c.Stats.Lines || c.Size < 0:
		return nil, fmt.Errorf("corpus summary: counts do not add up (%+v)", c.Stats)
	case slices.ContainsFunc(c.Src, reserved) || slices.ContainsFunc(c.Tgt, reserved):
		return nil, errors.New("corpus summary: a vocabulary names a reserved word")
	case !distinct(c.Src) || !distinct(c.Tgt):
		return nil, errors.New("corpus summary: a vocabulary names a word twice, or an empty one")
	}
	return &c, nil
}

// distinct says whether words are non-empty and all different.
func distinct(words []string) bool {
	seen := make(map[string]bool, len(words))
	for _, w := range words {
		if w == "" || seen[w] {
			return false
		}
		seen[w] = true
	}
	return true
}

// reserved says whether w is one of the reserved ids' words.
func reserved(w string) bool { return w == "<pad>" || w == "<go>" || w == "<eos>" || w == "<unk>" }

// Summarize counts the corpus file of cfg in two streaming passes: the
// pairs, then the words of the training pairs (the held-out ones are drawn
// from the count of pairs, as SplitHeldOut draws them).
func Summarize(cfg DataConfig) (*CorpusSummary, error) {
	tok, err := tokenizer(cfg.Tokenizer)
	if err != nil {
		return nil, err
	}
	c := &CorpusSummary{}
	err = passCorpus(cfg.Source, cfg.CRC, tok, false, c, &passes.count, func(int, int64, []byte, linePair) error { return nil })
	if err != nil {
		return nil, err
	}
	heldSet := map[int32]bool{}
	for _, p := range heldPairs(c.Stats.Pairs, cfg.HeldOut, cfg.Seed) {
		heldSet[p] = true
	}
	srcFreq, tgtFreq := wordCounts{}, wordCounts{}
	err = passCorpus(cfg.Source, c.CRC, tok, tok.each == nil, nil, &passes.count, func(p int, _ int64, line []byte, lp linePair) error {
		if heldSet[int32(p)] {
			return nil
		}
		if tok.each == nil {
			for _, w := range lp.src {
				srcFreq.addString(w)
			}
			for _, w := range lp.tgt {
				tgtFreq.addString(w)
			}
			return nil
		}
		src, tgt, _ := splitLine(line)
		tok.each(src, srcFreq.add)
		tok.each(tgt, tgtFreq.add)
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.Src, c.Tgt = vocabWords(srcFreq.counts(), cfg.VocabMax), vocabWords(tgtFreq.counts(), cfg.tgtVocabMax())
	return c, nil
}

// wordCounts counts words, making a string of a word the first time only.
type wordCounts map[string]*int

func (w wordCounts) add(b []byte) {
	if n := w[string(b)]; n != nil {
		*n++
		return
	}
	one := 1
	w[string(b)] = &one
}

func (w wordCounts) addString(s string) {
	if n := w[s]; n != nil {
		*n++
		return
	}
	one := 1
	w[s] = &one
}

func (w wordCounts) counts() map[string]int {
	m := make(map[string]int, len(w))
	for k, n := range w {
		m[k] = *n
	}
	return m
}

func (cfg DataConfig) tgtVocabMax() int {
	if cfg.TgtVocabMax == 0 {
		return cfg.VocabMax
	}
	return cfg.TgtVocabMax
}

// passCorpus reads the corpus file at path once, calling pair with each
// valid pair's number (among the valid pairs), offset, line and tokens
// (with words; else their count only, where tok can count). It
// checks the whole file's CRC32C against want (when not 0) at the end, and
// fills sum's checksum, size and counts (when sum is not nil).
func passCorpus(path string, want uint32, tok lineTokens, words bool, sum *CorpusSummary, kind *atomic.Int64,
	pair func(p int, off int64, line []byte, lp linePair) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	defer f.Close()
	kind.Add(1)
	h := crc32.New(castagnoli)
	n := 0
	st, err := scanCorpus(io.TeeReader(f, h), tok, words, func(off int64, line []byte, lp linePair) error {
		n++
		return pair(n-1, off, line, lp)
	})
	if err != nil {
		return fmt.Errorf("data %s: %w", path, err)
	}
	size, _ := f.Seek(0, io.SeekCurrent)
	passes.bytes.Add(size)
	crc := h.Sum32()
	if want != 0 && crc != want {
		return fmt.Errorf("data %s: checksum %08x differs from the job's %08x: every role must read the same file", path, crc, want)
	}
	if sum != nil {
		sum.CRC, sum.Size, sum.Stats = crc, size, st
	}
	return nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// heldCount is how many of pairs SplitHeldOut sets aside for n asked.
func heldCount(pairs, n int) int {
	switch {
	case n <= 0:
		return 0
	case n >= pairs:
		return pairs / 10
	}
	return n
}

// perm32 is rand.Perm(n) of rng, in 4 bytes an element (the same
// Fisher-Yates swaps).
func perm32(rng *rand.Rand, n int) []int32 {
	p := perm32Identity(n)
	rng.Shuffle(n, func(i, j int) { p[i], p[j] = p[j], p[i] })
	return p
}

// heldPairs are the numbers of the pairs SplitHeldOut holds out of pairs
// pairs (asked for n), in its order.
func heldPairs(pairs, n int, seed uint64) []int32 {
	k := heldCount(pairs, n)
	if k == 0 {
		return nil
	}
	return slices.Clone(perm32(rand.New(rand.NewPCG(seed, 0x4e1d)), pairs)[:k])
}

// shardPairs are the numbers of the pairs data shard s of shards trains
// on, in the order NewCorpus gives that shard the training pairs that
// SplitHeldOut leaves.
func shardPairs(pairs, n int, seed uint64, shards, s int) []int32 {
	k := heldCount(pairs, n)
	train := perm32(rand.New(rand.NewPCG(seed, 0x5eed)), pairs-k) // train position -> shard order
	var mine []int32
	for i := s; i < len(train); i += shards {
		mine = append(mine, train[i])
	}
	train = nil
	if k == 0 {
		return mine // SplitHeldOut keeps the file's order
	}
	order := perm32(rand.New(rand.NewPCG(seed, 0x4e1d)), pairs) // the held first, then the training pairs
	for j, t := range mine {
		mine[j] = order[k+int(t)]
	}
	return mine
}

// lineIndex locates a data shard's pairs in the file, in the shard's order.
type lineIndex struct {
	off    []int64
	n      []uint32 // line length
	crc    []uint32 // CRC32C of the line
	srcLen []uint32 // source tokens
}

func (x *lineIndex) len() int                { return len(x.off) }
func (x *lineIndex) srcLenOf(j int) int      { return int(x.srcLen[j]) }
func (x *lineIndex) line(j int) (int64, int) { return x.off[j], int(x.n[j]) }

// indexShard indexes data shard s in one pass over the file.
func (d *corpusData) indexShard(s int) (*lineIndex, error) {
	want := shardPairs(d.sum.Stats.Pairs, d.cfg.HeldOut, d.cfg.Seed, d.shards(), s)
	m := len(want)
	// pos[i] is the shard position of the i-th wanted pair in file order.
	pos := make([]int32, m)
	for j := range pos {
		pos[j] = int32(j)
	}
	slices.SortFunc(pos, func(a, b int32) int { return int(want[a] - want[b]) })
	x := &lineIndex{off: make([]int64, m), n: make([]uint32, m), crc: make([]uint32, m), srcLen: make([]uint32, m)}
	next := 0
	err := passCorpus(d.cfg.Source, d.sum.CRC, d.tok, false, nil, &passes.index, func(p int, off int64, line []byte, lp linePair) error {
		if next < m && int(want[pos[next]]) == p {
			j := pos[next]
			x.off[j], x.n[j], x.crc[j], x.srcLen[j] = off, uint32(len(line)), crc32.Checksum(line, castagnoli), uint32(lp.srcLen)
			next++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if next != m {
		return nil, fmt.Errorf("data %s: %d pairs, not the %d its summary counts", d.cfg.Source, next, d.sum.Stats.Pairs)
	}
	return x, nil
}

// readPair reads pair j of index x from the file, checking it is the line
// that was indexed.
func (d *corpusData) readPair(x *lineIndex, j int, buf []byte) (Example, []byte, error) {
	off, n := x.line(j)
	buf = slices.Grow(buf[:0], n)[:n]
	if _, err := d.f.ReadAt(buf, off); err != nil {
		return Example{}, buf, fmt.Errorf("data %s: reading the line at byte %d: %w", d.cfg.Source, off, err)
	}
	if crc32.Checksum(buf, castagnoli) != x.crc[j] {
		return Example{}, buf, fmt.Errorf("data %s: the line at byte %d changed since it was indexed: every role must read the same file, unchanged", d.cfg.Source, off)
	}
	src, tgt, kind := parsePair(buf, d.tok.split)
	if kind != lineOK {
		return Example{}, buf, fmt.Errorf("data %s: the line at byte %d is no longer a pair", d.cfg.Source, off)
	}
	return d.EncodePair(Pair{Src: src, Tgt: tgt}), buf, nil
}

// keepIndexes is how many data shards' indexes a dataset keeps: a worker
// trains on one at a time (two while a task changes shards).
const keepIndexes = 2

// index is data shard s's index, made when first asked for; the least
// recently used beyond keepIndexes are dropped.
func (d *corpusData) index(s int) (*lineIndex, error) {
	if s < 0 || s >= d.shards() {
		return nil, fmt.Errorf("data shard %d of %d", s, d.shards())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if i := slices.Index(d.recent, s); i >= 0 {
		d.recent = append(slices.Delete(d.recent, i, i+1), s)
		return d.indexes[s], nil
	}
	x, err := d.indexShard(s)
	if err != nil {
		return nil, err
	}
	d.indexes[s] = x
	d.recent = append(d.recent, s)
	if len(d.recent) > keepIndexes {
		delete(d.indexes, d.recent[0])
		d.recent = d.recent[1:]
	}
	return x, nil
}

func (d *corpusData) shards() int { return max(1, d.cfg.Shards) }

// corpusData serves a corpus file through indexes of its data shards.
type corpusData struct {
	cfg      DataConfig
	tok      lineTokens
	sum      *CorpusSummary
	src, tgt *Vocab
	f        *os.File
	epochs   epochs

	mu      sync.Mutex // guards indexes, recent, held
	indexes map[int]*lineIndex
	recent  []int // the indexed shards, least recently used first
	held    []Example
	heldOK  bool
}

func openCorpus(cfg DataConfig) (*corpusData, error) {
	tok, err := tokenizer(cfg.Tokenizer)
	if err != nil {
		return nil, err
	}
	sum := cfg.Summary
	if sum == nil {
		if sum, err = Summarize(cfg); err != nil {
			return nil, err
		}
	} else if cfg.CRC != 0 && sum.CRC != cfg.CRC {
		return nil, fmt.Errorf("data %s: the summary is of a file with checksum %08x, the job's is %08x", cfg.Source, sum.CRC, cfg.CRC)
	}
	f, err := os.Open(cfg.Source)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != sum.Size {
		f.Close()
		if err == nil {
			err = fmt.Errorf("%d bytes, its summary says %d: every role must read the same file", fi.Size(), sum.Size)
		}
		return nil, fmt.Errorf("data %s: %w", cfg.Source, err)
	}
	train := sum.Stats.Pairs - heldCount(sum.Stats.Pairs, cfg.HeldOut)
	if shards := max(1, cfg.Shards); train < shards {
		f.Close()
		return nil, fmt.Errorf("data %s: %d training pairs for %d data shards: data shard %d would be empty", cfg.Source, train, shards, train)
	}
	d := &corpusData{cfg: cfg, tok: tok, sum: sum, src: NewVocab(sum.Src), tgt: NewVocab(sum.Tgt), f: f, indexes: map[int]*lineIndex{}}
	return d, nil
}

// SummaryOf is the corpus summary of d, nil for data that is no corpus
// file (synthetic tasks, the generated stream).
func SummaryOf(d Dataset) *CorpusSummary {
	if c, ok := d.(*corpusData); ok {
		return c.sum
	}
	return nil
}

func (d *corpusData) Batch(seed uint64, s int, step int64, size int) (*models.SeqBatch, error) {
	x, err := d.index(s)
	if err != nil {
		return nil, err
	}
	pos := d.epochs.batch(seed, s, step, size, x.len(), x.srcLenOf)
	ex := make([]Example, len(pos))
	var buf []byte
	for i, j := range pos {
		if ex[i], buf, err = d.readPair(x, int(j), buf); err != nil {
			return nil, err
		}
	}
	return MakeBatch(ex, VocabGo, VocabEOS), nil
}

func (d *corpusData) StepsPerEpoch(seed uint64, s, size int) (int64, error) {
	x, err := d.index(s)
	if err != nil {
		return 0, err
	}
	return stepsPerEpoch(x.len(), size, x.srcLenOf), nil
}

// HeldOut reads the held-out pairs (in one pass, the first time).
func (d *corpusData) HeldOut() ([]Example, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.heldOK {
		return d.held, nil
	}
	want := heldPairs(d.sum.Stats.Pairs, d.cfg.HeldOut, d.cfg.Seed)
	at := make(map[int32]int, len(want))
	for k, p := range want {
		at[p] = k
	}
	held := make([]Example, len(want))
	err := passCorpus(d.cfg.Source, d.sum.CRC, d.tok, false, nil, &passes.held, func(p int, _ int64, line []byte, _ linePair) error {
		if k, ok := at[int32(p)]; ok {
			src, tgt, _ := parsePair(line, d.tok.split)
			held[k] = d.EncodePair(Pair{Src: src, Tgt: tgt})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	d.held, d.heldOK = held, true
	return held, nil
}
