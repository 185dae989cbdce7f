package models

import (
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
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

var tok13aEntities = strings.NewReplacer("&quot;", `"`, "&amp;", "&", "&lt;", "<", "&gt;", ">")

// Tokenize13a splits a line as the mteval-v13a script does (sacrebleu's
// "13a"): punctuation becomes separate tokens, except periods and commas
// inside numbers and dashes after digits are handled as there. The script's
// regular expressions are each a pattern of one or two characters, which a
// scan matches as the expressions do (leftmost first, a match consumed
// before the next is looked for); the test holds it to the expressions.
func Tokenize13a(line string) []string {
	line = prepare13a(line)
	var b strings.Builder
	b.Grow(2*len(line) + 2)
	// s/([\{-\~\[-\` -\&\(-\+\:-\@\/])/ $1 /g, on " " + line + " "
	b.WriteByte(' ')
	for i := 0; i < len(line); i++ {
		if c := line[i]; c < 0x80 && tok13aPunct[c] {
			b.WriteByte(' ')
			b.WriteByte(c)
			b.WriteByte(' ')
		} else {
			b.WriteByte(c)
		}
	}
	b.WriteByte(' ')
	line = b.String()
	if strings.ContainsAny(line, ".,") {
		line = replacePairs(line, notDigit, periodComma, false) // s/([^0-9])([\.,])/$1 $2 /g
		line = replacePairs(line, periodComma, notDigit, true)  // s/([\.,])([^0-9])/ $1 $2/g
	}
	if strings.Contains(line, "-") {
		line = replacePairs(line, digit, dash, false) // s/([0-9])(-)/$1 $2 /g
	}
	return strings.Fields(line)
}

// prepare13a is the script's first steps, before its expressions: skipped
// markers and line ends out, entities decoded.
func prepare13a(line string) string {
	line = strings.ReplaceAll(line, "<skipped>", "")
	line = strings.ReplaceAll(line, "-\n", "")
	line = strings.ReplaceAll(line, "\n", " ")
	if strings.Contains(line, "&") {
		line = tok13aEntities.Replace(line)
	}
	return line
}

// The character classes of 13a's two-character expressions.
const (
	notDigit    = iota // [^0-9]
	periodComma        // [\.,]
	digit              // [0-9]
	dash               // -
)

func inClass(class int, r rune) bool {
	switch class {
	case notDigit:
		return r < '0' || r > '9'
	case periodComma:
		return r == '.' || r == ','
	case digit:
		return r >= '0' && r <= '9'
	}
	return r == '-'
}

// tok13aPunct are the characters of 13a's first expression, each made a
// token: { | } ~ [ \ ] ^ _ ` space ! " # $ % & ( ) * + : ; < = > ? @ /
var tok13aPunct = func() (t [0x80]bool) {
	for _, r := range [][2]byte{{'{', '~'}, {'[', '`'}, {' ', '&'}, {'(', '+'}, {':', '@'}, {'/', '/'}} {
		for c := r[0]; c <= r[1]; c++ {
			t[c] = true
		}
	}
	return t
}()

// replacePairs replaces each match of the two-character pattern (a)(b) in
// s, leftmost first and not overlapping, as a regular expression's
// ReplaceAllString does, by the two characters with a space between them
// and one after them ("$1 $2 "), or with lead, one before them instead
// (" $1 $2"). Characters are runes; an invalid byte is a character of its
// own (U+FFFD, as the regexp package reads it) and is copied as it was.
func replacePairs(s string, a, b int, lead bool) string {
	var out strings.Builder
	out.Grow(len(s) + len(s)/4)
	for i := 0; i < len(s); {
		r1, w1 := rune(s[i]), 1
		if r1 >= utf8.RuneSelf {
			r1, w1 = utf8.DecodeRuneInString(s[i:])
		}
		if i+w1 < len(s) && inClass(a, r1) {
			r2, w2 := rune(s[i+w1]), 1
			if r2 >= utf8.RuneSelf {
				r2, w2 = utf8.DecodeRuneInString(s[i+w1:])
			}
			if inClass(b, r2) {
				if lead {
					out.WriteByte(' ')
				}
				out.WriteString(s[i : i+w1])
				out.WriteByte(' ')
				out.WriteString(s[i+w1 : i+w1+w2])
				if !lead {
					out.WriteByte(' ')
				}
				i += w1 + w2
				continue
			}
		}
		out.WriteString(s[i : i+w1])
		i += w1
	}
	return out.String()
}
