package shard

import (
	"bufio"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"

	"github.com/downpour-ml/downpour/models"
)

// WMT is "synthetic:wmt": a generated parallel corpus with the shape of
// WMT'14 English-French as the paper used it, for running the paper's
// model at its size where the real corpus is not at hand. It is streamed:
// a batch is made from (seed, data shard, step) when asked for, so a worker
// holds no corpus at all, however long the job.
//
//   - Vocabularies of the job's sizes (--vocab, --tgt-vocab: the paper's
//     160,000 and 80,000), the reserved ids 0-3 included.
//   - Words drawn by a Zipf law (P(rank k) proportional to (k + 10)^-1.1,
//     over the whole vocabulary), as words in text are.
//   - Sentence lengths like WMT's: log-normal around 25 words (from 3 to 80),
//     one length a batch (the paper's batches hold sentences of about one
//     length).
//   - A translation that can be learnt: each source word has a target word
//     (a fixed hash of its id, so several source words share one), and
//     each pair of neighbouring words is swapped, as an adjective-noun
//     order flips; the target has the source's length, then <eos>.
type WMT struct {
	SrcVocab, TgtVocab int
}

// WMTTask is the generated corpus's name: data synthetic:wmt.
const WMTTask = "wmt"

// The reserved ids of a generated corpus, as a file corpus's.
const (
	wmtUnk       = 3
	wmtFirstWord = 4
)

// NewWMT returns the generated corpus of these vocabulary sizes (0: the
// paper's).
func NewWMT(srcVocab, tgtVocab int) *WMT {
	if srcVocab <= wmtFirstWord {
		srcVocab = 160000
	}
	if tgtVocab <= wmtFirstWord {
		tgtVocab = 80000
	}
	return &WMT{SrcVocab: srcVocab, TgtVocab: tgtVocab}
}

// sentence draws a source sentence of n words.
func (w *WMT) sentence(z *rand.Zipf, n int) []int32 {
	src := make([]int32, n)
	for i := range src {
		src[i] = int32(wmtFirstWord + z.Uint64())
	}
	return src
}

func (w *WMT) zipf(rng *rand.Rand) *rand.Zipf {
	return rand.NewZipf(rng, 1.1, 10, uint64(w.SrcVocab-wmtFirstWord-1))
}

// length draws a sentence length.
func wmtLength(rng *rand.Rand) int {
	n := int(math.Round(math.Exp(math.Log(25) + 0.45*rng.NormFloat64())))
	return min(max(n, 3), 80)
}

// translate is the target of src: each word through the lexicon, then
// neighbouring pairs swapped.
func (w *WMT) translate(src []int32) []int32 {
	out := make([]int32, len(src))
	span := uint64(w.TgtVocab - wmtFirstWord)
	for i, id := range src {
		h := uint64(id) * 0x9e3779b97f4a7c15
		h ^= h >> 29
		out[i] = int32(wmtFirstWord + h%span)
	}
	for i := 0; i+1 < len(out); i += 2 {
		out[i], out[i+1] = out[i+1], out[i]
	}
	return out
}

// Batch returns the batch of size pairs that data shard dataShard sees at
// step of a job seeded with seed (sources in reading order).
func (w *WMT) Batch(seed uint64, dataShard int, step int64, size int) *models.SeqBatch {
	rng := rand.New(rand.NewPCG(seed^0x574d54, uint64(dataShard)<<40^uint64(step)))
	z := w.zipf(rng)
	n := wmtLength(rng)
	b := &models.SeqBatch{Size: size, SrcLen: n, TgtLen: n + 1,
		Src: make([]int32, n*size), TgtIn: make([]int32, (n+1)*size), TgtOut: make([]int32, (n+1)*size)}
	for e := range size {
		src := w.sentence(z, n)
		tgt := w.translate(src)
		b.TgtIn[e] = Go
		for t := range n {
			b.Src[t*size+e] = src[t]
			b.TgtIn[(t+1)*size+e] = tgt[t]
			b.TgtOut[t*size+e] = tgt[t]
		}
		b.TgtOut[n*size+e] = EOS
	}
	return b
}

// WriteTSV writes pairs pairs of the generated corpus as a corpus file
// (source<TAB>target lines, words written w<id>), drawn from seed: the
// corpus at a real corpus's scale, read through the file reader as a
// user's WMT'14 file would be.
func (w *WMT) WriteTSV(out io.Writer, pairs int64, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed^0x574d54, 0xf11e))
	z := w.zipf(rng)
	bw := bufio.NewWriterSize(out, 1<<20)
	var line []byte
	for range pairs {
		src := w.sentence(z, wmtLength(rng))
		line = appendWords(line[:0], src)
		line = append(line, '\t')
		line = append(appendWords(line, w.translate(src)), '\n')
		if _, err := bw.Write(line); err != nil {
			return err
		}
	}
	return bw.Flush()
}

func appendWords(b []byte, ids []int32) []byte {
	for i, id := range ids {
		if i > 0 {
			b = append(b, ' ')
		}
		b = strconv.AppendInt(append(b, 'w'), int64(id), 10)
	}
	return b
}

// wmtData is a generated corpus as a job's Dataset.
type wmtData struct {
	w   *WMT
	cfg DataConfig
}

func (d *wmtData) Batch(seed uint64, s int, step int64, size int) (*models.SeqBatch, error) {
	b := d.w.Batch(seed, s, step, size)
	if d.cfg.Reverse {
		reverseBatchSources(b)
	}
	return b, nil
}

// HeldOut is drawn from a stream of its own, never trained on.
func (d *wmtData) HeldOut() ([]Example, error) {
	rng := rand.New(rand.NewPCG(d.cfg.Seed^0x574d54, heldOutShard))
	z := d.w.zipf(rng)
	var out []Example
	for range max(d.cfg.HeldOut, 0) {
		src := d.w.sentence(z, wmtLength(rng))
		tgt := d.w.translate(src)
		out = append(out, Example{Src: unreverse(src, d.cfg.Reverse), Tgt: tgt})
	}
	return out, nil
}

// StepsPerEpoch is 0: the stream has no end (state --steps, not --epochs).
func (d *wmtData) StepsPerEpoch(uint64, int, int) (int64, error) { return 0, nil }
func (d *wmtData) SrcVocab() int                                 { return d.w.SrcVocab }
func (d *wmtData) TgtVocab() int                                 { return d.w.TgtVocab }
func (d *wmtData) Special() models.Special                       { return models.Special{Go: Go, EOS: EOS} }
func (d *wmtData) Tokenize(sentence string) []string             { return strings.Fields(sentence) }

// A generated corpus's words are written w<id> ("w17 w4023 w5").
func wordIDs(words []string, vocab int) []int32 {
	ids := make([]int32, 0, len(words))
	for _, f := range words {
		id, err := strconv.Atoi(strings.TrimPrefix(f, "w"))
		if err != nil || !strings.HasPrefix(f, "w") || id < wmtFirstWord || id >= vocab {
			id = wmtUnk
		}
		ids = append(ids, int32(id))
	}
	return ids
}

func (d *wmtData) EncodePair(p Pair) Example {
	return Example{Src: unreverse(wordIDs(p.Src, d.w.SrcVocab), d.cfg.Reverse), Tgt: wordIDs(p.Tgt, d.w.TgtVocab)}
}

func (d *wmtData) SrcIDs(sentence string) []int32 {
	return unreverse(wordIDs(strings.Fields(sentence), d.w.SrcVocab), d.cfg.Reverse)
}

func (d *wmtData) SrcWords(ids []int32) []string { return words(unreverse(ids, d.cfg.Reverse)) }
func (d *wmtData) TgtWords(ids []int32) []string { return words(ids) }

func words(ids []int32) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		if id >= wmtFirstWord {
			out[i] = "w" + strconv.Itoa(int(id))
		} else {
			out[i] = "<" + strconv.Itoa(int(id)) + ">"
		}
	}
	return out
}
