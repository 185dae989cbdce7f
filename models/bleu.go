package models

import (
	"fmt"
	"math"
	"regexp"
	"strings"
)

// BLEU accumulates corpus BLEU as multi-bleu.perl computes it: clipped
// n-gram matches (n = 1..4) and hypothesis n-gram counts summed over the
// corpus, the reference length closest to each hypothesis's (the shorter on
// a tie) summed over the corpus, and the brevity penalty; the score is 0 when
// any n-gram precision is 0. Tokens are whatever the caller split on (the
// script splits on whitespace).
type BLEU struct {
	Match, Total [4]int
	HypLen       int
	RefLen       int
}

// Add scores one hypothesis against its references.
func (b *BLEU) Add(hyp []string, refs ...[]string) {
	b.HypLen += len(hyp)
	closest := -1
	for _, r := range refs {
		d, cd := absInt(len(r)-len(hyp)), absInt(closest-len(hyp))
		if closest < 0 || d < cd || d == cd && len(r) < closest {
			closest = len(r)
		}
	}
	if closest > 0 {
		b.RefLen += closest
	}
	for n := 1; n <= 4; n++ {
		if len(hyp) < n {
			continue
		}
		b.Total[n-1] += len(hyp) - n + 1
		counts := ngrams(hyp, n)
		maxRef := map[string]int{}
		for _, r := range refs {
			for g, c := range ngrams(r, n) {
				maxRef[g] = max(maxRef[g], c)
			}
		}
		for g, c := range counts {
			b.Match[n-1] += min(c, maxRef[g])
		}
	}
}

func absInt(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

func ngrams(toks []string, n int) map[string]int {
	m := map[string]int{}
	for i := 0; i+n <= len(toks); i++ {
		m[strings.Join(toks[i:i+n], "\x00")]++
	}
	return m
}

// Score is the corpus BLEU, 0-100.
func (b *BLEU) Score() float64 {
	if b.HypLen == 0 {
		return 0
	}
	logSum := 0.0
	for n := 0; n < 4; n++ {
		if b.Match[n] == 0 || b.Total[n] == 0 {
			return 0
		}
		logSum += math.Log(float64(b.Match[n]) / float64(b.Total[n]))
	}
	bp := 1.0
	if b.HypLen < b.RefLen {
		bp = math.Exp(1 - float64(b.RefLen)/float64(b.HypLen))
	}
	return 100 * bp * math.Exp(logSum/4)
}

// String reports the score as multi-bleu.perl does.
func (b *BLEU) String() string {
	p := func(n int) float64 {
		if b.Total[n] == 0 {
			return 0
		}
		return 100 * float64(b.Match[n]) / float64(b.Total[n])
	}
	ratio := 0.0
	if b.RefLen > 0 {
		ratio = float64(b.HypLen) / float64(b.RefLen)
	}
	bp := 1.0
	if b.HypLen < b.RefLen && b.HypLen > 0 {
		bp = math.Exp(1 - float64(b.RefLen)/float64(b.HypLen))
	}
	return fmt.Sprintf("BLEU = %.2f, %.1f/%.1f/%.1f/%.1f (BP=%.3f, ratio=%.3f, hyp_len=%d, ref_len=%d)",
		b.Score(), p(0), p(1), p(2), p(3), bp, ratio, b.HypLen, b.RefLen)
}

var (
	tok13aPunct    = regexp.MustCompile("([\\{-\\~\\[-\\` -\\&\\(-\\+\\:-\\@\\/])")
	tok13aPeriod1  = regexp.MustCompile(`([^0-9])([\.,])`)
	tok13aPeriod2  = regexp.MustCompile(`([\.,])([^0-9])`)
	tok13aDash     = regexp.MustCompile(`([0-9])(-)`)
	tok13aEntities = strings.NewReplacer("&quot;", `"`, "&amp;", "&", "&lt;", "<", "&gt;", ">")
)

// Tokenize13a splits a line as the mteval-v13a script does (sacrebleu's
// "13a"): punctuation becomes separate tokens, except periods and commas
// inside numbers and dashes after digits are handled as there.
func Tokenize13a(line string) []string {
	line = strings.ReplaceAll(line, "<skipped>", "")
	line = strings.ReplaceAll(line, "-\n", "")
	line = strings.ReplaceAll(line, "\n", " ")
	if strings.Contains(line, "&") {
		line = tok13aEntities.Replace(line)
	}
	line = " " + line + " "
	line = tok13aPunct.ReplaceAllString(line, " $1 ")
	line = tok13aPeriod1.ReplaceAllString(line, "$1 $2 ")
	line = tok13aPeriod2.ReplaceAllString(line, " $1 $2")
	line = tok13aDash.ReplaceAllString(line, "$1 $2 ")
	return strings.Fields(line)
}
