package models

import (
	"math"
	"strconv"
	"testing"
)

// Evaluate's numbers agree with the pieces it is made of: the loss is the
// mean teacher-forced loss, exact match and BLEU count greedy outputs.
func TestEvaluateAgreesWithParts(t *testing.T) {
	m := decodeModel(4)
	src := [][]int32{{2, 3}, {4, 5}, {6, 7, 8}, {2, 2}}
	tgt := [][]int32{{3, 4}, {5}, {2, 2, 2}, {6, 6, 6, 6}}
	words := func(ids []int32) []string {
		var w []string
		for _, id := range ids {
			w = append(w, strconv.Itoa(int(id)))
		}
		return w
	}
	maxLen := func(n int) int { return 2*n + 2 }
	res := Evaluate(m, src, tgt, sp, 3, maxLen, words)
	var loss float64
	var tokens, exact int
	var bleu BLEU
	for i := range src {
		loss -= m.LogProb(src[i], tgt[i], sp)
		tokens += len(tgt[i]) + 1
		hyp := m.Greedy(src[i], len(src[i]), 1, sp, maxLen(len(src[i])))[0]
		if equalIDs(hyp, tgt[i]) {
			exact++
		}
		bleu.Add(words(hyp), words(tgt[i]))
	}
	if res.Sentences != 4 || math.Abs(res.Loss-loss/float64(tokens)) > 1e-9 ||
		res.ExactMatch != float64(exact)/4 || math.Abs(res.BLEU-bleu.Score()) > 1e-9 {
		t.Fatalf("Evaluate %+v; parts: loss %v, exact %d, BLEU %v", res, loss/float64(tokens), exact, bleu.Score())
	}
	if math.Abs(res.Perplexity-math.Exp(res.Loss)) > 1e-9 {
		t.Fatal("perplexity")
	}
}
