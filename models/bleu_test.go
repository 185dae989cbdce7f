package models

import (
	"math"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func words(s string) []string { return strings.Fields(s) }

// Two sentences whose n-gram counts were worked out by hand:
//
//	hyp "the cat sat on the mat", ref "the cat sat on a mat":
//	  1-grams 5/6 (the: 2 in hyp, 1 in ref), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3
//	hyp "a b c d", ref "a b c d e": 4/4, 3/3, 2/2, 1/1
//
// corpus 9/10, 6/8, 4/6, 2/4; hyp length 10, reference length 11.
func TestBLEUHandComputed(t *testing.T) {
	var b BLEU
	b.Add(words("the cat sat on the mat"), words("the cat sat on a mat"))
	b.Add(words("a b c d"), words("a b c d e"))
	if b.Match != [4]int{9, 6, 4, 2} || b.Total != [4]int{10, 8, 6, 4} || b.HypLen != 10 || b.RefLen != 11 {
		t.Fatalf("counts %+v", b)
	}
	want := 100 * math.Exp(1-11.0/10) * math.Pow(0.9*0.75*(4.0/6)*0.5, 0.25)
	if math.Abs(b.Score()-want) > 1e-9 {
		t.Fatalf("BLEU %v, want %v", b.Score(), want)
	}
	if !strings.HasPrefix(b.String(), "BLEU = 62.32, 90.0/75.0/66.7/50.0 (BP=0.905, ratio=0.909, hyp_len=10, ref_len=11)") {
		t.Fatalf("report %q", b.String())
	}
}

func TestBLEUEdgeCases(t *testing.T) {
	var perfect BLEU
	perfect.Add(words("a b c d e"), words("a b c d e"))
	if perfect.Score() != 100 {
		t.Fatalf("identical: %v", perfect.Score())
	}
	var no4 BLEU // no matching 4-gram: 0, as multi-bleu.perl
	no4.Add(words("the cat sat on the mat"), words("the cat is on the mat"))
	if no4.Score() != 0 || no4.Match[3] != 0 || no4.Match[2] != 1 {
		t.Fatalf("no 4-gram match: %v %+v", no4.Score(), no4)
	}
	var empty BLEU
	empty.Add(nil, words("a b"))
	if empty.Score() != 0 {
		t.Fatal("an empty hypothesis scores")
	}
	// Clipping: "the the the the" against "the cat": 1-gram matches 1.
	var clip BLEU
	clip.Add(words("the the the the"), words("the cat"))
	if clip.Match[0] != 1 || clip.Total[0] != 4 {
		t.Fatalf("clipping: %+v", clip)
	}
	// Several references: matches clip at the most any reference has; the
	// closest reference length counts, the shorter on a tie.
	var multi BLEU
	multi.Add(words("x x y"), words("x y z w"), words("x x"))
	if multi.Match[0] != 3 || multi.RefLen != 2 {
		t.Fatalf("references: %+v", multi)
	}
	var longer BLEU // longer hypothesis: no brevity penalty
	longer.Add(words("a b c d e f"), words("a b c d e"))
	if want := 100 * math.Pow(5.0/6*4.0/5*3.0/4*2.0/3, 0.25); math.Abs(longer.Score()-want) > 1e-9 {
		t.Fatalf("no penalty: %v want %v", longer.Score(), want)
	}
}

func TestTokenize13a(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"Hello, world!", "Hello , world !"},
		{"It costs $3.50, or 3,000 yen.", "It costs $ 3.50 , or 3,000 yen ."},
		{"A 3-4 win; (so-called) \"great\"", "A 3 - 4 win ; ( so-called ) \" great \""},
		{"a &amp; b &lt;c&gt;", "a & b < c >"},
		{"end.", "end ."},
		{"  spaced   out  ", "spaced out"},
	} {
		if got := strings.Join(Tokenize13a(c.in), " "); got != c.want {
			t.Errorf("Tokenize13a(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	if !slices.Equal(Tokenize13a("x-\ny"), []string{"xy"}) {
		t.Error("hyphenated line break")
	}
}

// The mteval-v13a script's regular expressions, as written there: the
// reference Tokenize13a's scans are held to.
var (
	ref13aPunct   = regexp.MustCompile("([\\{-\\~\\[-\\` -\\&\\(-\\+\\:-\\@\\/])")
	ref13aPeriod1 = regexp.MustCompile(`([^0-9])([\.,])`)
	ref13aPeriod2 = regexp.MustCompile(`([\.,])([^0-9])`)
	ref13aDash    = regexp.MustCompile(`([0-9])(-)`)
)

func tokenize13aRef(line string) []string {
	line = " " + prepare13a(line) + " "
	line = ref13aPunct.ReplaceAllString(line, " $1 ")
	line = ref13aPeriod1.ReplaceAllString(line, "$1 $2 ")
	line = ref13aPeriod2.ReplaceAllString(line, " $1 $2")
	line = ref13aDash.ReplaceAllString(line, "$1 $2 ")
	return strings.Fields(line)
}

// Tokenize13a makes the tokens the script's regular expressions make.
func FuzzTokenize13a(f *testing.F) {
	for _, s := range []string{"", "Hello, world.", "3.14 and 1,000 - 5-6", "a.,b", ".,.,", "x,.9", "&quot;hi&amp;&lt;",
		"e.g. U.S.A.", "\xff.,\xfe9", "é.ü,9", "9-", "--9-9", "<skipped>a-\nb\nc", "{[(a)]}~`^_|\\@/:;"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := Tokenize13a(s), tokenize13aRef(s); !slices.Equal(got, want) {
			t.Fatalf("%q: %q, the expressions make %q", s, got, want)
		}
	})
}

func BenchmarkTokenize13a(b *testing.B) {
	line := "The European Commission , in its 2013 report ( p. 14 ) , said that 1,200.5 million - or 3-4 % - were &quot;lost&quot; ."
	b.Run("scan", func(b *testing.B) {
		for b.Loop() {
			Tokenize13a(line)
		}
	})
	b.Run("regexp", func(b *testing.B) {
		for b.Loop() {
			tokenize13aRef(line)
		}
	})
}
