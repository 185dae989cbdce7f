package shard

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
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
	var st CorpusStats
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), MaxLineBytes)
	for sc.Scan() {
		st.Lines++
		line := sc.Bytes()
		if !utf8.Valid(line) {
			return nil, st, fmt.Errorf("line %d: not UTF-8 text", st.Lines)
		}
		text := strings.TrimRight(string(line), "\r")
		if strings.TrimSpace(text) == "" {
			st.Blank++
			continue
		}
		f := strings.SplitN(text, "\t", 3)
		if len(f) < 2 {
			st.Malformed++
			continue
		}
		src, tgt := tokenize(f[0]), tokenize(f[1])
		if len(src) == 0 || len(tgt) == 0 {
			st.Malformed++
			continue
		}
		pairs = append(pairs, Pair{Src: src, Tgt: tgt})
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, st, fmt.Errorf("line %d: longer than %d bytes", st.Lines+1, MaxLineBytes)
		}
		return nil, st, err
	}
	st.Pairs = len(pairs)
	if len(pairs) == 0 {
		return nil, st, fmt.Errorf("no source<TAB>target pair in %d lines", st.Lines)
	}
	return pairs, st, nil
}

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
	words := make([]string, 0, len(freq))
	for w := range freq {
		words = append(words, w)
	}
	sort.Slice(words, func(i, j int) bool {
		if freq[words[i]] != freq[words[j]] {
			return freq[words[i]] > freq[words[j]]
		}
		return words[i] < words[j]
	})
	if max > 4 && len(words) > max-4 {
		words = words[:max-4]
	}
	return NewVocab(words)
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
// (examples, seed, shards, shard, step, batch size).
type Corpus struct {
	examples []Example
	shards   [][]int // example indices of each data shard
	goID     int32
	eos      int32

	mu    sync.Mutex // guards cache
	cache map[int]epochLayout
}

// epochLayout is one epoch of one data shard, kept while the shard trains
// through it (laying it out shuffles the whole shard).
type epochLayout struct {
	epoch   int64
	size    int
	batches [][]int
}

// NewCorpus splits examples into shards data shards by a permutation drawn
// from seed.
func NewCorpus(examples []Example, shards int, seed uint64) *Corpus {
	c := &Corpus{examples: examples, shards: make([][]int, shards), goID: VocabGo, eos: VocabEOS, cache: map[int]epochLayout{}}
	perm := rand.New(rand.NewPCG(seed, 0x5eed)).Perm(len(examples))
	for i, ex := range perm {
		c.shards[i%shards] = append(c.shards[i%shards], ex)
	}
	return c
}

// ShardSize is the number of examples of data shard s.
func (c *Corpus) ShardSize(s int) int { return len(c.shards[s]) }

// epochBatches lays out one epoch of data shard s: its examples shuffled,
// grouped by source length, cut into batches of at most size, the batches
// shuffled.
func (c *Corpus) epochBatches(seed uint64, s int, epoch int64, size int) [][]int {
	rng := rand.New(rand.NewPCG(seed, uint64(s)<<40^uint64(epoch)))
	idx := append([]int(nil), c.shards[s]...)
	rng.Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
	buckets := map[int][]int{}
	var lens []int
	for _, i := range idx {
		l := len(c.examples[i].Src)
		if buckets[l] == nil {
			lens = append(lens, l)
		}
		buckets[l] = append(buckets[l], i)
	}
	sort.Ints(lens)
	var batches [][]int
	for _, l := range lens {
		b := buckets[l]
		for k := 0; k < len(b); k += size {
			batches = append(batches, b[k:min(k+size, len(b))])
		}
	}
	rng.Shuffle(len(batches), func(i, j int) { batches[i], batches[j] = batches[j], batches[i] })
	return batches
}

// StepsPerEpoch is the number of batches in one epoch of data shard s: the
// same in every epoch (each source length's examples make
// ceil(count/size) batches).
func (c *Corpus) StepsPerEpoch(seed uint64, s, size int) int64 {
	count := map[int]int{}
	for _, i := range c.shards[s] {
		count[len(c.examples[i].Src)]++
	}
	var n int64
	for _, k := range count {
		n += int64((k + size - 1) / size)
	}
	return n
}

// Batch returns the batch data shard s trains on at step. The shard must
// hold at least one example.
func (c *Corpus) Batch(seed uint64, s int, step int64, size int) *models.SeqBatch {
	n := c.StepsPerEpoch(seed, s, size)
	epoch := step / n
	c.mu.Lock()
	l, ok := c.cache[s]
	if !ok || l.epoch != epoch || l.size != size {
		l = epochLayout{epoch: epoch, size: size, batches: c.epochBatches(seed, s, epoch, size)}
		c.cache[s] = l
	}
	c.mu.Unlock()
	ids := l.batches[step%n]
	ex := make([]Example, len(ids))
	for i, id := range ids {
		ex[i] = c.examples[id]
	}
	return MakeBatch(ex, c.goID, c.eos)
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
