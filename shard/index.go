package shard

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
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
	CRC  uint32 `json:"crc"`
	Size int64  `json:"size"`
	// TgtSize is the target file's size, of aligned files (Size is then
	// the source file's, and CRC the CRC32C of both files' CRC32Cs).
	TgtSize int64       `json:"tgt_size,omitempty"`
	Stats   CorpusStats `json:"stats"`
	Src     []string    `json:"src"`
	Tgt     []string    `json:"tgt"`
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
	case c.Stats.Pairs <= 0 || c.Stats.Pairs+c.Stats.Blank+c.Stats.Malformed != c.Stats.Lines || c.Size < 0 || c.TgtSize < 0:
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
	err = passCorpus(cfg, cfg.CRC, tok, false, c, &passes.count, func(int, pairLoc, []byte, linePair) error { return nil })
	if err != nil {
		return nil, err
	}
	heldSet := map[int32]bool{}
	for _, p := range heldPairs(c.Stats.Pairs, cfg.HeldOut, cfg.Seed) {
		heldSet[p] = true
	}
	srcFreq, tgtFreq := wordCounts{}, wordCounts{}
	err = passCorpus(cfg, c.CRC, tok, tok.each == nil, nil, &passes.count, func(p int, _ pairLoc, line []byte, lp linePair) error {
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

// passCorpus reads the corpus of cfg once (its file, or its aligned
// files), calling pair with each valid pair's number (among the valid
// pairs), place, TSV line and tokens (with words; else their count only,
// where tok can). It checks the corpus's CRC32C against want (when not 0)
// at the end, and fills sum's checksum, sizes and counts (when sum is not
// nil).
func passCorpus(cfg DataConfig, want uint32, tok lineTokens, words bool, sum *CorpusSummary, kind *atomic.Int64,
	pair func(p int, loc pairLoc, line []byte, lp linePair) error) error {
	f, err := openText(cfg.Source)
	if err != nil {
		return err
	}
	defer f.Close()
	var tf *os.File
	if cfg.Target != "" {
		if tf, err = openText(cfg.Target); err != nil {
			return err
		}
		defer tf.Close()
	}
	kind.Add(1)
	h, th := crc32.New(castagnoli), crc32.New(castagnoli)
	n := 0
	var st CorpusStats
	if tf == nil {
		st, err = scanCorpus(io.TeeReader(f, h), tok, words, func(off int64, line []byte, lp linePair) error {
			n++
			return pair(n-1, pairLoc{off: off, n: len(line), tgtOff: -1}, line, lp)
		})
	} else {
		st, err = scanAligned(io.TeeReader(f, h), io.TeeReader(tf, th), cfg.Source, cfg.Target, tok, words, func(loc pairLoc, line []byte, lp linePair) error {
			n++
			return pair(n-1, loc, line, lp)
		})
	}
	if err != nil {
		return fmt.Errorf("data %s: %w", cfg.name(), err)
	}
	size, _ := f.Seek(0, io.SeekCurrent)
	crc, tsize := h.Sum32(), int64(0)
	if tf != nil {
		tsize, _ = tf.Seek(0, io.SeekCurrent)
		crc = crc32.Checksum(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, crc), th.Sum32()), castagnoli)
	}
	passes.bytes.Add(size + tsize)
	if want != 0 && crc != want {
		return fmt.Errorf("data %s: checksum %08x differs from the job's %08x: every role must read the same file", cfg.name(), crc, want)
	}
	if sum != nil {
		sum.CRC, sum.Size, sum.TgtSize, sum.Stats = crc, size, tsize, st
	}
	return nil
}

// openText opens a corpus file, refusing a compressed one: batches read
// its lines at their offsets, which a gzip stream cannot serve.
func openText(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	var magic [2]byte
	if n, _ := f.ReadAt(magic[:], 0); n == 2 && magic == [2]byte{0x1f, 0x8b} {
		f.Close()
		return nil, fmt.Errorf("data %s is gzip-compressed: unpack it first (gunzip -k %s); batches read its lines where they lie, which a compressed stream cannot serve", path, path)
	}
	return f, nil
}

// name is how errors name the corpus: its file, or its two files.
func (cfg DataConfig) name() string {
	if cfg.Target != "" {
		return cfg.Source + " and " + cfg.Target
	}
	return cfg.Source
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
	crc    []uint32 // CRC32C of the (TSV) line
	srcLen []uint32 // source tokens
	// Of aligned files: the target lines (off and n are the source's).
	tgtOff []int64
	tgtN   []uint32
}

func (x *lineIndex) len() int           { return len(x.off) }
func (x *lineIndex) srcLenOf(j int) int { return int(x.srcLen[j]) }

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
	if d.cfg.Target != "" {
		x.tgtOff, x.tgtN = make([]int64, m), make([]uint32, m)
	}
	next := 0
	err := passCorpus(d.cfg, d.sum.CRC, d.tok, false, nil, &passes.index, func(p int, loc pairLoc, line []byte, lp linePair) error {
		if next < m && int(want[pos[next]]) == p {
			j := pos[next]
			x.off[j], x.n[j], x.crc[j], x.srcLen[j] = loc.off, uint32(loc.n), crc32.Checksum(line, castagnoli), uint32(lp.srcLen)
			if x.tgtOff != nil {
				x.tgtOff[j], x.tgtN[j] = loc.tgtOff, uint32(loc.tgtN)
			}
			next++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if next != m {
		return nil, fmt.Errorf("data %s: %d pairs, not the %d its summary counts", d.cfg.name(), next, d.sum.Stats.Pairs)
	}
	return x, nil
}

// readPair reads pair j of index x from the file (or files), checking it
// is the pair that was indexed. buf holds what it reads (returned, to be
// reused); line the pair's TSV line, for aligned files.
func (d *corpusData) readPair(x *lineIndex, j int, buf, line []byte) (Example, []byte, []byte, error) {
	off, n := x.off[j], int(x.n[j])
	buf = slices.Grow(buf[:0], n)[:n]
	if _, err := d.f.ReadAt(buf, off); err != nil {
		return Example{}, buf, line, fmt.Errorf("data %s: reading the line at byte %d: %w", d.cfg.Source, off, err)
	}
	text := buf
	if x.tgtOff != nil {
		tn := int(x.tgtN[j])
		buf = slices.Grow(buf, tn)
		t := buf[n : n+tn]
		if _, err := d.tf.ReadAt(t, x.tgtOff[j]); err != nil {
			return Example{}, buf, line, fmt.Errorf("data %s: reading the line at byte %d: %w", d.cfg.Target, x.tgtOff[j], err)
		}
		line = joinAligned(line[:0], buf[:n], t)
		text = line
	}
	if crc32.Checksum(text, castagnoli) != x.crc[j] {
		return Example{}, buf, line, fmt.Errorf("data %s: the pair at byte %d changed since it was indexed: every role must read the same file, unchanged", d.cfg.name(), off)
	}
	src, tgt, kind := parsePair(text, d.tok.split)
	if kind != lineOK {
		return Example{}, buf, line, fmt.Errorf("data %s: the pair at byte %d is no longer a pair", d.cfg.name(), off)
	}
	return d.EncodePair(Pair{Src: src, Tgt: tgt}), buf, line, nil
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
	f, tf    *os.File // the file; the target file of aligned files
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
		return nil, fmt.Errorf("data %s: the summary is of a corpus with checksum %08x, the job's is %08x", cfg.name(), sum.CRC, cfg.CRC)
	}
	f, err := openSized(cfg.Source, sum.Size)
	if err != nil {
		return nil, err
	}
	var tf *os.File
	if cfg.Target != "" {
		if tf, err = openSized(cfg.Target, sum.TgtSize); err != nil {
			f.Close()
			return nil, err
		}
	}
	train := sum.Stats.Pairs - heldCount(sum.Stats.Pairs, cfg.HeldOut)
	if shards := max(1, cfg.Shards); train < shards {
		f.Close()
		if tf != nil {
			tf.Close()
		}
		return nil, fmt.Errorf("data %s: %d training pairs for %d data shards: data shard %d would be empty", cfg.name(), train, shards, train)
	}
	d := &corpusData{cfg: cfg, tok: tok, sum: sum, src: NewVocab(sum.Src), tgt: NewVocab(sum.Tgt), f: f, tf: tf, indexes: map[int]*lineIndex{}}
	return d, nil
}

// openSized opens the file at path, which its summary says has size bytes.
func openSized(path string, size int64) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != size {
		f.Close()
		if err == nil {
			err = fmt.Errorf("%d bytes, its summary says %d: every role must read the same file", fi.Size(), size)
		}
		return nil, fmt.Errorf("data %s: %w", path, err)
	}
	return f, nil
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
	var buf, line []byte
	for i, j := range pos {
		if ex[i], buf, line, err = d.readPair(x, int(j), buf, line); err != nil {
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
	err := passCorpus(d.cfg, d.sum.CRC, d.tok, false, nil, &passes.held, func(p int, _ pairLoc, line []byte, _ linePair) error {
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
