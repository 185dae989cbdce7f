package models

import (
	"math"
	"slices"
	"sort"
)

// EvalResult is a model's score on a held-out set.
type EvalResult struct {
	Loss       float64 // mean cross-entropy per target token (teacher forcing)
	Perplexity float64
	BLEU       float64 // corpus BLEU of the translations, 0-100
	ExactMatch float64 // fraction of sentences translated exactly
	Sentences  int
	Counts     BLEU      // the n-gram counts behind BLEU
	Hyps       [][]int32 // each source's translation (nil for an empty source)
}

// EvalOptions tune Evaluate.
type EvalOptions struct {
	Batch  int                  // sentences per batch (of equal source length)
	MaxLen func(srcLen int) int // longest translation
	Words  func([]int32) []string
	// Refs, when set, are the references BLEU counts against (tokenized
	// text, so words outside the vocabulary still count); else Words(tgt).
	Refs [][]string
	// Beam, when above 1, translates each sentence by beam search instead of
	// greedily in batches.
	Beam int
}

// Evaluate scores m on examples (source and target ids without EOS): the
// teacher-forced loss, and translations of at most MaxLen(len(src)) tokens
// against their references, in batches of sentences of equal source length.
// Words turns target ids into the tokens BLEU counts.
func Evaluate[T Float](m *Seq2Seq[T], src, tgt [][]int32, sp Special, o EvalOptions) EvalResult {
	batch, maxLen, words := max(o.Batch, 1), o.MaxLen, o.Words
	byLen := map[int][]int{}
	var lens []int
	for i, s := range src {
		if len(s) == 0 {
			continue
		}
		if byLen[len(s)] == nil {
			lens = append(lens, len(s))
		}
		byLen[len(s)] = append(byLen[len(s)], i)
	}
	sort.Ints(lens)
	res := EvalResult{Hyps: make([][]int32, len(src))}
	var bleu BLEU
	var loss float64
	var tokens, exact int
	for _, l := range lens {
		idx := byLen[l]
		for k := 0; k < len(idx); k += batch {
			ids := idx[k:min(k+batch, len(idx))]
			n := len(ids)
			b := evalBatch(src, tgt, ids, l, sp)
			lsum, cnt := m.Loss(b, false)
			loss += lsum
			tokens += cnt
			var hyps [][]int32
			if o.Beam > 1 {
				for _, i := range ids {
					hyps = append(hyps, m.Beam(src[i], sp, o.Beam, maxLen(l))[0].Tokens)
				}
			} else {
				hyps = m.Greedy(b.Src, l, n, sp, maxLen(l))
			}
			for c, i := range ids {
				res.Hyps[i] = hyps[c]
				if slices.Equal(hyps[c], tgt[i]) {
					exact++
				}
				ref := words(tgt[i])
				if o.Refs != nil {
					ref = o.Refs[i]
				}
				bleu.Add(words(hyps[c]), ref)
				res.Sentences++
			}
		}
	}
	if tokens > 0 {
		res.Loss = loss / float64(tokens)
		res.Perplexity = expFloat(res.Loss)
	}
	if res.Sentences > 0 {
		res.ExactMatch = float64(exact) / float64(res.Sentences)
	}
	res.BLEU, res.Counts = bleu.Score(), bleu
	return res
}

// evalBatch is the time-major batch of the examples ids, whose sources
// are all l long: targets fed after <go> and scored up to <eos>, padding
// masked (-1).
func evalBatch(src, tgt [][]int32, ids []int, l int, sp Special) *SeqBatch {
	n, tl := len(ids), 0
	for _, i := range ids {
		tl = max(tl, len(tgt[i])+1)
	}
	b := &SeqBatch{Size: n, SrcLen: l, TgtLen: tl, Src: make([]int32, l*n), TgtIn: make([]int32, tl*n), TgtOut: make([]int32, tl*n)}
	for c, i := range ids {
		for t, id := range src[i] {
			b.Src[t*n+c] = id
		}
		for t := 0; t < tl; t++ {
			in, out := int32(0), int32(-1)
			if t == 0 {
				in = sp.Go
			} else if t <= len(tgt[i]) {
				in = tgt[i][t-1]
			}
			if t < len(tgt[i]) {
				out = tgt[i][t]
			} else if t == len(tgt[i]) {
				out = sp.EOS
			}
			b.TgtIn[t*n+c], b.TgtOut[t*n+c] = in, out
		}
	}
	return b
}

func expFloat(x float64) float64 {
	if x > 700 {
		x = 700
	}
	return math.Exp(x)
}
