package shard

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/downpour-ml/downpour/models"
)

// Pair is one sentence pair, tokenized.
type Pair struct {
	Src, Tgt []string
}

// CorpusStats counts what a corpus file held.
type CorpusStats struct {
	Lines     int // lines read
	Pairs     int // valid pairs
	Blank     int // empty or whitespace-only lines
	Malformed int // lines without a tab-separated source and target
}

// MaxLineBytes bounds one line of a corpus file.
const MaxLineBytes = 1 << 20

// ReadCorpus reads a parallel corpus: UTF-8 text, one pair per line,
// "source<TAB>target[<TAB>anything]" (the format of the Tatoeba/manythings
// files). Blank and malformed lines are counted, not fatal; a line that is
// not UTF-8, longer than MaxLineBytes, or a file with no valid pair is an
// error naming the line. tokenize splits a sentence (strings.Fields when nil).
func ReadCorpus(r io.Reader, tokenize func(string) []string) ([]Pair, CorpusStats, error) {
	if tokenize == nil {
		tokenize = strings.Fields
	}
	var pairs []Pair
	st, err := scanCorpus(r, lineTokens{split: tokenize}, true, func(_ int64, _ []byte, p linePair) error {
		pairs = append(pairs, Pair{Src: p.src, Tgt: p.tgt})
		return nil
	})
	if err != nil {
		return nil, st, err
	}
	return pairs, st, nil
}

// lineTokens is a tokenizer: split makes a sentence's tokens; count and
// each, when set, count them or show each in place without making them
// (they must count and show what split makes).
type lineTokens struct {
	split func(string) []string
	count func([]byte) int
	each  func(b []byte, token func([]byte))
}

// linePair is a valid pair as scanCorpus reads it: its tokens (with words)
// and the number of its source tokens.
type linePair struct {
	src, tgt []string
	srcLen   int
}

// scanCorpus reads a parallel corpus line by line, as ReadCorpus describes,
// and calls pair for each valid pair, in order, with the byte offset of its
// line and the line (without its end: "\n" or "\r\n"; the bytes are the
// scanner's, valid only during the call). With words, the pair's tokens
// are made; without, only counted, where tok can.
func scanCorpus(r io.Reader, tok lineTokens, words bool, pair func(off int64, line []byte, p linePair) error) (CorpusStats, error) {
	var st CorpusStats
	sc := newLineScanner(r)
	for sc.Scan() {
		st.Lines++
		line := sc.Bytes()
		p, kind := classify(&st, line, tok, words)
		if kind == lineNotUTF8 {
			return st, fmt.Errorf("line %d: not UTF-8 text", st.Lines)
		}
		if kind == lineOK {
			if err := pair(sc.off, line, p); err != nil {
				return st, err
			}
		}
	}
	if err := sc.err("", st.Lines+1); err != nil {
		return st, err
	}
	if st.Pairs == 0 {
		return st, fmt.Errorf("no source<TAB>target pair in %d lines", st.Lines)
	}
	return st, nil
}

// classify reads one corpus line as scanCorpus does, counting it in st:
// a valid pair's tokens (with words; else their count only, where tok
// can), or what is wrong with it.
func classify(st *CorpusStats, line []byte, tok lineTokens, words bool) (linePair, int) {
	src, tgt, kind := splitLine(line)
	var p linePair
	if kind == lineOK {
		if tok.count != nil && !words {
			p.srcLen = tok.count(src)
			if p.srcLen == 0 || tok.count(tgt) == 0 {
				kind = lineMalformed
			}
		} else {
			p.src, p.tgt = tok.split(string(src)), tok.split(string(tgt))
			p.srcLen = len(p.src)
			if len(p.src) == 0 || len(p.tgt) == 0 {
				kind = lineMalformed
			}
		}
	}
	switch kind {
	case lineBlank:
		st.Blank++
	case lineMalformed:
		st.Malformed++
	case lineOK:
		st.Pairs++
	}
	return p, kind
}

// What a corpus line is.
const (
	lineOK = iota
	lineBlank
	lineMalformed
	lineNotUTF8
)

// splitLine cuts a corpus line, "source<TAB>target[<TAB>anything]", into
// its source and target (not yet known to hold tokens).
func splitLine(line []byte) (src, tgt []byte, kind int) {
	if !utf8.Valid(line) {
		return nil, nil, lineNotUTF8
	}
	text := bytes.TrimRight(line, "\r")
	if len(bytes.TrimSpace(text)) == 0 {
		return nil, nil, lineBlank
	}
	i := bytes.IndexByte(text, '\t')
	if i < 0 {
		return nil, nil, lineMalformed
	}
	src, tgt = text[:i], text[i+1:]
	if j := bytes.IndexByte(tgt, '\t'); j >= 0 {
		tgt = tgt[:j]
	}
	return src, tgt, lineOK
}

// parsePair reads one line of a corpus into its tokens.
func parsePair(line []byte, tokenize func(string) []string) (src, tgt []string, kind int) {
	s, t, kind := splitLine(line)
	if kind != lineOK {
		return nil, nil, kind
	}
	src, tgt = tokenize(string(s)), tokenize(string(t))
	if len(src) == 0 || len(tgt) == 0 {
		return nil, nil, lineMalformed
	}
	return src, tgt, lineOK
}

// countFields is len(strings.Fields(string(b))), counted in place.
func countFields(b []byte) int {
	n, in := 0, false
	for i := 0; i < len(b); {
		c := b[i]
		var space bool
		if c < utf8.RuneSelf {
			space = asciiSpace[c]
			i++
		} else {
			r, size := utf8.DecodeRune(b[i:])
			space = unicode.IsSpace(r)
			i += size
		}
		if !space && !in {
			n++
		}
		in = !space
	}
	return n
}

// eachField calls field with each of the fields strings.Fields would make
// of b, in place.
func eachField(b []byte, field func([]byte)) {
	start := -1
	for i := 0; i < len(b); {
		c := b[i]
		var space bool
		size := 1
		if c < utf8.RuneSelf {
			space = asciiSpace[c]
		} else {
			var r rune
			r, size = utf8.DecodeRune(b[i:])
			space = unicode.IsSpace(r)
		}
		switch {
		case space && start >= 0:
			field(b[start:i])
			start = -1
		case !space && start < 0:
			start = i
		}
		i += size
	}
	if start >= 0 {
		field(b[start:])
	}
}

// asciiSpace are the ASCII bytes unicode.IsSpace holds to be space.
var asciiSpace = [utf8.RuneSelf]bool{'\t': true, '\n': true, '\v': true, '\f': true, '\r': true, ' ': true}

// Reserved ids of a corpus vocabulary.
const (
	VocabPad = 0
	VocabGo  = 1
	VocabEOS = 2
	VocabUnk = 3
)

// Vocab maps words to ids: <pad>, <go>, <eos>, <unk>, then the words of the
// training data by falling frequency (ties in byte order), capped.
type Vocab struct {
	Words []string
	index map[string]int32
}

// BuildVocab keeps the max most frequent words of sentences (max counts the
// four reserved ids).
func BuildVocab(sentences [][]string, max int) *Vocab {
	freq := map[string]int{}
	for _, s := range sentences {
		for _, w := range s {
			freq[w]++
		}
	}
	return NewVocab(vocabWords(freq, max))
}

// vocabWords are the max-4 most frequent words of freq (all of them when
// max is at most 4), by falling frequency, ties in byte order.
func vocabWords(freq map[string]int, max int) []string {
	type wc struct {
		w string
		n int
	}
	all := make([]wc, 0, len(freq))
	for w, n := range freq {
		all = append(all, wc{w, n})
	}
	slices.SortFunc(all, func(a, b wc) int {
		if a.n != b.n {
			return b.n - a.n
		}
		return strings.Compare(a.w, b.w)
	})
	if max > 4 && len(all) > max-4 {
		all = all[:max-4]
	}
	words := make([]string, len(all))
	for i, x := range all {
		words[i] = x.w
	}
	return words
}

// NewVocab is the vocabulary of words (after the reserved ids), in order.
func NewVocab(words []string) *Vocab {
	v := &Vocab{Words: append([]string{"<pad>", "<go>", "<eos>", "<unk>"}, words...), index: map[string]int32{}}
	for i, w := range v.Words {
		v.index[w] = int32(i)
	}
	return v
}

// Size is the number of ids.
func (v *Vocab) Size() int { return len(v.Words) }

// IDs encodes words; words outside the vocabulary become <unk>.
func (v *Vocab) IDs(words []string) []int32 {
	ids := make([]int32, len(words))
	for i, w := range words {
		id, ok := v.index[w]
		if !ok || id < VocabUnk {
			id = VocabUnk
		}
		ids[i] = id
	}
	return ids
}

// Decode turns ids back into words.
func (v *Vocab) Decode(ids []int32) []string {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if id >= 0 && int(id) < len(v.Words) {
			out = append(out, v.Words[id])
		} else {
			out = append(out, "<unk>")
		}
	}
	return out
}

// Example is an encoded pair.
type Example struct {
	Src, Tgt []int32
}

// Encode turns pairs into examples, the source reversed when reverse is set
// (Sutskever et al.'s trick: it shortens the distance between the first
// source and first target words).
func Encode(pairs []Pair, src, tgt *Vocab, reverse bool) []Example {
	ex := make([]Example, len(pairs))
	for i, p := range pairs {
		ex[i] = Example{Src: src.IDs(p.Src), Tgt: tgt.IDs(p.Tgt)}
		if reverse {
			for a, b := 0, len(ex[i].Src)-1; a < b; a, b = a+1, b-1 {
				ex[i].Src[a], ex[i].Src[b] = ex[i].Src[b], ex[i].Src[a]
			}
		}
	}
	return ex
}

// MakeBatch builds a batch of examples that all have the same source length:
// targets are padded (labels -1, decoder inputs <pad>) to the longest.
func MakeBatch(ex []Example, goID, eos int32) *models.SeqBatch {
	n, srcLen := len(ex), len(ex[0].Src)
	tl := 0
	for _, e := range ex {
		if len(e.Src) != srcLen {
			panic("shard: MakeBatch needs equal source lengths")
		}
		tl = max(tl, len(e.Tgt)+1)
	}
	b := &models.SeqBatch{Size: n, SrcLen: srcLen, TgtLen: tl,
		Src: make([]int32, srcLen*n), TgtIn: make([]int32, tl*n), TgtOut: make([]int32, tl*n)}
	for i, e := range ex {
		for t, id := range e.Src {
			b.Src[t*n+i] = id
		}
		for t := 0; t < tl; t++ {
			in, out := int32(VocabPad), int32(-1)
			switch {
			case t == 0:
				in = goID
			case t <= len(e.Tgt):
				in = e.Tgt[t-1]
			}
			switch {
			case t < len(e.Tgt):
				out = e.Tgt[t]
			case t == len(e.Tgt):
				out = eos
			}
			b.TgtIn[t*n+i], b.TgtOut[t*n+i] = in, out
		}
	}
	return b
}

// Corpus serves length-bucketed batches of training examples, split
// deterministically into data shards and shuffled per epoch from the job's
// seed: the batch a data shard trains on at a step is a pure function of
// (examples, seed, shards, shard, step, batch size). It holds the examples
// in memory; a corpus file is served from an index of its lines instead
// (Open), batch for batch the same.
type Corpus struct {
	examples []Example
	shards   [][]int // example indices of each data shard
	goID     int32
	eos      int32
	epochs   epochs
}

// NewCorpus splits examples into shards data shards by a permutation drawn
// from seed: example perm[i] goes to data shard i mod shards, in the order
// of i.
func NewCorpus(examples []Example, shards int, seed uint64) *Corpus {
	c := &Corpus{examples: examples, shards: make([][]int, shards), goID: VocabGo, eos: VocabEOS}
	perm := rand.New(rand.NewPCG(seed, 0x5eed)).Perm(len(examples))
	for i, ex := range perm {
		c.shards[i%shards] = append(c.shards[i%shards], ex)
	}
	return c
}

// ShardSize is the number of examples of data shard s.
func (c *Corpus) ShardSize(s int) int { return len(c.shards[s]) }

func (c *Corpus) srcLen(s int) func(int) int {
	return func(j int) int { return len(c.examples[c.shards[s][j]].Src) }
}

// StepsPerEpoch is the number of batches in one epoch of data shard s: the
// same in every epoch (each source length's examples make
// ceil(count/size) batches).
func (c *Corpus) StepsPerEpoch(seed uint64, s, size int) int64 {
	return stepsPerEpoch(len(c.shards[s]), size, c.srcLen(s))
}

// Batch returns the batch data shard s trains on at step. The shard must
// hold at least one example.
func (c *Corpus) Batch(seed uint64, s int, step int64, size int) *models.SeqBatch {
	pos := c.epochs.batch(seed, s, step, size, len(c.shards[s]), c.srcLen(s))
	ex := make([]Example, len(pos))
	for i, j := range pos {
		ex[i] = c.examples[c.shards[s][int(j)]]
	}
	return MakeBatch(ex, c.goID, c.eos)
}

// epochs lays out the epochs of data shards and keeps each shard's current
// one while the shard trains through it (laying one out shuffles the whole
// shard). A data shard's examples are known to it by their positions in
// the shard (0 to m-1) and their source lengths.
type epochs struct {
	mu    sync.Mutex
	cache map[int]epochLayout
	steps map[[2]int]int64 // steps an epoch, by data shard and batch size
}

// epochLayout is one epoch of one data shard: its examples' positions in
// 4 bytes each (an eighth of WMT's 12M pairs: 6 MB).
type epochLayout struct {
	epoch   int64
	size    int
	batches [][]int32
}

// batch is the positions of the examples of the batch data shard s (of m
// examples, srcLen giving each one's source length) trains on at step.
func (e *epochs) batch(seed uint64, s int, step int64, size, m int, srcLen func(int) int) []int32 {
	e.mu.Lock()
	defer e.mu.Unlock()
	n, ok := e.steps[[2]int{s, size}]
	if !ok {
		// Counted once: a data shard of WMT's size has millions of pairs,
		// and every step asks for a batch (two, with the next one's).
		n = stepsPerEpoch(m, size, srcLen)
		if e.steps == nil {
			e.steps = map[[2]int]int64{}
		}
		e.steps[[2]int{s, size}] = n
	}
	epoch := step / n
	l, ok := e.cache[s]
	if !ok || l.epoch != epoch || l.size != size {
		l = epochLayout{epoch: epoch, size: size, batches: layEpoch(seed, s, epoch, size, m, srcLen)}
		if e.cache == nil {
			e.cache = map[int]epochLayout{}
		}
		e.cache[s] = l
	}
	return l.batches[step%n]
}

// layEpoch lays out one epoch of data shard s: its examples' positions
// shuffled, grouped by source length, cut into batches of at most size,
// the batches shuffled.
func layEpoch(seed uint64, s int, epoch int64, size, m int, srcLen func(int) int) [][]int32 {
	rng := rand.New(rand.NewPCG(seed, uint64(s)<<40^uint64(epoch)))
	idx := perm32Identity(m)
	rng.Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
	// Group by source length, keeping the shuffled order within a length,
	// in one array: count each length, then place.
	count := map[int]int{}
	for _, j := range idx {
		count[srcLen(int(j))]++
	}
	lens := make([]int, 0, len(count))
	for l := range count {
		lens = append(lens, l)
	}
	sort.Ints(lens)
	start, at := map[int]int{}, 0
	for _, l := range lens {
		start[l], at = at, at+count[l]
	}
	grouped := make([]int32, m)
	for _, j := range idx {
		l := srcLen(int(j))
		grouped[start[l]] = j
		start[l]++
	}
	idx = nil
	var batches [][]int32
	at = 0
	for _, l := range lens {
		b := grouped[at : at+count[l]]
		at += count[l]
		for k := 0; k < len(b); k += size {
			batches = append(batches, b[k:min(k+size, len(b)):min(k+size, len(b))])
		}
	}
	rng.Shuffle(len(batches), func(i, j int) { batches[i], batches[j] = batches[j], batches[i] })
	return batches
}

// perm32Identity is 0, 1, ..., m-1.
func perm32Identity(m int) []int32 {
	p := make([]int32, m)
	for i := range p {
		p[i] = int32(i)
	}
	return p
}

// stepsPerEpoch is the number of batches of at most size in an epoch of
// m examples: ceil(count/size) for each source length's count.
func stepsPerEpoch(m, size int, srcLen func(int) int) int64 {
	count := map[int]int{}
	for j := range m {
		count[srcLen(j)]++
	}
	var n int64
	for _, k := range count {
		n += int64((k + size - 1) / size)
	}
	return n
}

// SplitHeldOut sets n pairs aside for evaluation, chosen by a permutation
// drawn from seed, and returns the rest for training.
func SplitHeldOut(pairs []Pair, n int, seed uint64) (train, held []Pair) {
	if n <= 0 {
		return pairs, nil
	}
	if n >= len(pairs) {
		n = len(pairs) / 10
	}
	perm := rand.New(rand.NewPCG(seed, 0x4e1d)).Perm(len(pairs))
	for k, i := range perm {
		if k < n {
			held = append(held, pairs[i])
		} else {
			train = append(train, pairs[i])
		}
	}
	return train, held
}
