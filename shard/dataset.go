package shard

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/downpour-ml/downpour/models"
)

// Dataset is what training and evaluation need of a job's data: batches per
// data shard and step, a held-out set, and the vocabularies.
type Dataset interface {
	// Batch is the batch data shard s trains on at step.
	Batch(seed uint64, s int, step int64, size int) (*models.SeqBatch, error)
	// StepsPerEpoch is the number of steps in an epoch of data shard s (0:
	// the data has no epochs).
	StepsPerEpoch(seed uint64, s, size int) (int64, error)
	// HeldOut is the evaluation set (never trained on).
	HeldOut() ([]Example, error)
	// SrcVocab and TgtVocab are the vocabulary sizes.
	SrcVocab() int
	TgtVocab() int
	// SrcIDs encodes a source sentence as the model reads it (reversed when
	// the job reverses sources).
	SrcIDs(sentence string) []int32
	// TgtWords decodes target ids.
	TgtWords(ids []int32) []string
	// SrcWords decodes source ids as the model reads them (SrcIDs's
	// output) back into the sentence's order.
	SrcWords(ids []int32) []string
	// Tokenize splits a sentence as the data's tokenizer does.
	Tokenize(sentence string) []string
	// EncodePair encodes a tokenized pair as the model reads it.
	EncodePair(p Pair) Example
	// Special are the decoder's start and end ids.
	Special() models.Special
}

// DataConfig says where a job's data comes from and how to prepare it.
type DataConfig struct {
	// Source is "synthetic:<task>" or the path of a parallel corpus: a
	// TSV file, or with Target, the source side of aligned files.
	Source string
	// Target is the target side of aligned files ("" for a TSV file).
	Target      string
	MinLen      int    // synthetic: shortest source
	MaxLen      int    // synthetic: longest source
	Reverse     bool   // feed sources reversed (the paper's default)
	VocabMax    int    // corpus: words per vocabulary, the four reserved ids included
	TgtVocabMax int    // corpus: the same for the target side (0: VocabMax)
	HeldOut     int    // examples set aside for evaluation
	Tokenizer   string // corpus: "space" (default) or "13a"
	Seed        uint64
	Shards      int    // data shards (one per rank)
	CRC         uint32 // corpus: CRC32C of the file, when known; a different file is refused
	// Summary is the corpus's, when the job has it (its coordinator
	// counted it): Open does not count it again.
	Summary *CorpusSummary
}

// Open prepares the data of cfg. For a corpus it returns the file's CRC32C
// too (0 for synthetic data).
func Open(cfg DataConfig) (Dataset, uint32, error) {
	if task, ok := strings.CutPrefix(cfg.Source, "synthetic:"); ok {
		if task == WMTTask {
			return &wmtData{w: NewWMT(cfg.VocabMax, cfg.TgtVocabMax), cfg: cfg}, 0, nil
		}
		s, err := NewSynthetic(task, cfg.MinLen, cfg.MaxLen)
		if err != nil {
			return nil, 0, err
		}
		return &synthData{s: s, cfg: cfg}, 0, nil
	}
	d, err := openCorpus(cfg)
	if err != nil {
		return nil, 0, err
	}
	return d, d.sum.CRC, nil
}

// tokenizer is the tokenizer of that name.
func tokenizer(name string) (lineTokens, error) {
	switch name {
	case "", "space":
		return lineTokens{split: strings.Fields, count: countFields, each: eachField}, nil
	case "13a":
		return lineTokens{split: models.Tokenize13a}, nil
	}
	return lineTokens{}, fmt.Errorf("tokenizer %q: use space or 13a", name)
}

func (d *corpusData) SrcVocab() int                     { return d.src.Size() }
func (d *corpusData) TgtVocab() int                     { return d.tgt.Size() }
func (d *corpusData) TgtWords(ids []int32) []string     { return d.tgt.Decode(ids) }
func (d *corpusData) Special() models.Special           { return models.Special{Go: VocabGo, EOS: VocabEOS} }
func (d *corpusData) Tokenize(sentence string) []string { return d.tok.split(sentence) }
func (d *corpusData) EncodePair(p Pair) Example {
	return Encode([]Pair{p}, d.src, d.tgt, d.cfg.Reverse)[0]
}
func (d *corpusData) SrcWords(ids []int32) []string {
	return d.src.Decode(unreverse(ids, d.cfg.Reverse))
}

// unreverse returns ids in sentence order: reversed when reverse.
func unreverse(ids []int32, reverse bool) []int32 {
	if !reverse {
		return ids
	}
	out := slices.Clone(ids)
	slices.Reverse(out)
	return out
}

func (d *corpusData) SrcIDs(sentence string) []int32 {
	ids := d.src.IDs(d.tok.split(sentence))
	if d.cfg.Reverse {
		for a, b := 0, len(ids)-1; a < b; a, b = a+1, b-1 {
			ids[a], ids[b] = ids[b], ids[a]
		}
	}
	return ids
}

// synthData serves a synthetic task. Its held-out examples come from a
// stream of their own, which no data shard draws from.
type synthData struct {
	s   *Synthetic
	cfg DataConfig
}

// heldOutShard is the data-shard number of the synthetic held-out stream.
const heldOutShard = 1 << 20

func (d *synthData) Batch(seed uint64, s int, step int64, size int) (*models.SeqBatch, error) {
	b := d.s.Batch(seed, s, step, size)
	if d.cfg.Reverse {
		reverseBatchSources(b)
	}
	return b, nil
}

func reverseBatchSources(b *models.SeqBatch) {
	n := b.Size
	for a, c := 0, b.SrcLen-1; a < c; a, c = a+1, c-1 {
		for e := 0; e < n; e++ {
			b.Src[a*n+e], b.Src[c*n+e] = b.Src[c*n+e], b.Src[a*n+e]
		}
	}
}

func (d *synthData) HeldOut() ([]Example, error) {
	var out []Example
	rng := rand.New(rand.NewPCG(d.cfg.Seed, heldOutShard))
	for range max(d.cfg.HeldOut, 0) {
		n := d.s.MinLen + rng.IntN(d.s.MaxLen-d.s.MinLen+1)
		src := make([]int32, n)
		for i := range src {
			src[i] = int32(FirstSymbol + rng.IntN(Digits))
		}
		tgt := d.s.transform(src)
		if d.cfg.Reverse {
			for a, b := 0, len(src)-1; a < b; a, b = a+1, b-1 {
				src[a], src[b] = src[b], src[a]
			}
		}
		out = append(out, Example{Src: src, Tgt: tgt})
	}
	return out, nil
}

func (d *synthData) StepsPerEpoch(uint64, int, int) (int64, error) { return 0, nil }
func (d *synthData) SrcVocab() int                                 { return SyntheticVocab }
func (d *synthData) TgtVocab() int                                 { return SyntheticVocab }
func (d *synthData) Special() models.Special                       { return models.Special{Go: Go, EOS: EOS} }

func (d *synthData) Tokenize(sentence string) []string { return strings.Fields(sentence) }

// EncodePair reads digits (anything else is skipped).
func (d *synthData) EncodePair(p Pair) Example {
	return Example{Src: d.SrcIDs(strings.Join(p.Src, " ")), Tgt: digitIDs(p.Tgt)}
}

func digitIDs(words []string) []int32 {
	var ids []int32
	for _, f := range words {
		if v, err := strconv.Atoi(f); err == nil && v >= 0 && v < Digits {
			ids = append(ids, int32(FirstSymbol+v))
		}
	}
	return ids
}

// SrcIDs reads digits separated by spaces ("3 1 4"); anything else is
// skipped.
func (d *synthData) SrcIDs(sentence string) []int32 {
	ids := digitIDs(strings.Fields(sentence))
	if d.cfg.Reverse {
		for a, b := 0, len(ids)-1; a < b; a, b = a+1, b-1 {
			ids[a], ids[b] = ids[b], ids[a]
		}
	}
	return ids
}

func (d *synthData) SrcWords(ids []int32) []string {
	return d.TgtWords(unreverse(ids, d.cfg.Reverse)) // one alphabet of symbols
}

func (d *synthData) TgtWords(ids []int32) []string {
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if id >= FirstSymbol && id < SyntheticVocab {
			out = append(out, strconv.Itoa(int(id-FirstSymbol)))
		} else {
			out = append(out, "<"+strconv.Itoa(int(id))+">")
		}
	}
	return out
}
