package models

import (
	"math"
	"slices"
	"strconv"
	"testing"
)

// idWords writes token ids as words, for BLEU.
func idWords(ids []int32) []string {
	var w []string
	for _, id := range ids {
		w = append(w, strconv.Itoa(int(id)))
	}
	return w
}

// Evaluate's numbers agree with the pieces it is made of: the loss is the
// mean teacher-forced loss, exact match and BLEU count greedy outputs.
func TestEvaluateAgreesWithParts(t *testing.T) {
	m := decodeModel(4)
	src := [][]int32{{2, 3}, {4, 5}, {6, 7, 8}, {2, 2}}
	tgt := [][]int32{{3, 4}, {5}, {2, 2, 2}, {6, 6, 6, 6}}
	maxLen := func(n int) int { return 2*n + 2 }
	res := Evaluate(m, src, tgt, sp, EvalOptions{Batch: 3, MaxLen: maxLen, Words: idWords})
	var loss float64
	var tokens, exact int
	var bleu BLEU
	for i := range src {
		loss -= m.LogProb(src[i], tgt[i], sp)
		tokens += len(tgt[i]) + 1
		hyp := m.Greedy(src[i], len(src[i]), 1, sp, maxLen(len(src[i])))[0]
		if slices.Equal(hyp, tgt[i]) {
			exact++
		}
		bleu.Add(idWords(hyp), idWords(tgt[i]))
	}
	if res.Sentences != 4 || math.Abs(res.Loss-loss/float64(tokens)) > 1e-9 ||
		res.ExactMatch != float64(exact)/4 || math.Abs(res.BLEU-bleu.Score()) > 1e-9 {
		t.Fatalf("Evaluate %+v; parts: loss %v, exact %d, BLEU %v", res, loss/float64(tokens), exact, bleu.Score())
	}
	if math.Abs(res.Perplexity-math.Exp(res.Loss)) > 1e-9 {
		t.Fatal("perplexity")
	}
}

// With a beam of 1 per sentence, Evaluate gives greedy's results; given
// text references, BLEU counts against them.
func TestEvaluateBeamAndRefs(t *testing.T) {
	m := decodeModel(6)
	src := [][]int32{{2, 3}, {4, 5, 1}}
	tgt := [][]int32{{3, 4}, {5}}
	o := EvalOptions{Batch: 8, MaxLen: func(n int) int { return 5 }, Words: idWords}
	g := Evaluate(m, src, tgt, sp, o)
	o.Beam = 1
	if b := Evaluate(m, src, tgt, sp, o); b.BLEU != g.BLEU || b.ExactMatch != g.ExactMatch {
		t.Fatalf("beam 1 %+v, greedy %+v", b, g)
	}
	o.Beam, o.Refs = 0, [][]string{{"never"}, {"seen"}}
	if r := Evaluate(m, src, tgt, sp, o); r.Counts.RefLen != 2 || r.Counts.Match[0] != 0 {
		t.Fatalf("text references not used: %+v", r.Counts)
	}
}

// A model on given parameters (NewSeq2SeqOn: no copy, no gradients)
// evaluates exactly as the whole model does.
func TestModelOnParamsEvaluatesTheSame(t *testing.T) {
	m := decodeModel(4)
	on := NewSeq2SeqOn(m.Cfg, m.Params())
	if &on.Params()[0] != &m.Params()[0] || on.Grads() != nil {
		t.Fatal("NewSeq2SeqOn copied the parameters or made gradients")
	}
	src := [][]int32{{2, 3}, {4, 5}, {6, 7, 8}, {2, 2}}
	tgt := [][]int32{{3, 4}, {5}, {2, 2, 2}, {6, 6, 6, 6}}
	opts := EvalOptions{Batch: 3, MaxLen: func(n int) int { return 2*n + 2 }, Words: idWords}
	if a, b := Evaluate(m, src, tgt, sp, opts), Evaluate(on, src, tgt, sp, opts); a.Loss != b.Loss || a.ExactMatch != b.ExactMatch || !slices.EqualFunc(a.Hyps, b.Hyps, slices.Equal) {
		t.Fatalf("on its parameters %+v, whole %+v", b, a)
	}
}
