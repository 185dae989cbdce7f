package shard

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// A corpus may also come as two aligned files, as WMT and most parallel
// corpora ship (train.en and train.fr: line i of one is the translation of
// line i of the other; DataConfig.Target names the second). Every pass
// reads both in step and makes of each pair of lines the line a TSV file
// would hold, "source<TAB>target", tabs within a line read as spaces (both
// tokenizers split on them): from there the pair is a TSV line, counted,
// tokenized, indexed and checked as one (scanCorpus). So a pair of aligned
// files and the TSV of the same pairs give the same summary, vocabularies
// and batches.

// pairLoc is where a pair's text lies: a TSV's line (n bytes at off), or
// the source line (n bytes at off) and target line (tgtN bytes at tgtOff)
// of aligned files.
type pairLoc struct {
	off    int64
	n      int
	tgtOff int64
	tgtN   int
}

// joinAligned appends to dst the TSV line of a source and a target line
// (their "\r" ends trimmed, their tabs made spaces).
func joinAligned(dst, src, tgt []byte) []byte {
	dst = appendUntabbed(dst, bytes.TrimRight(src, "\r"))
	dst = append(dst, '\t')
	return appendUntabbed(dst, bytes.TrimRight(tgt, "\r"))
}

func appendUntabbed(dst, b []byte) []byte {
	at := len(dst)
	dst = append(dst, b...)
	for i := at; i < len(dst); i++ {
		if dst[i] == '\t' {
			dst[i] = ' '
		}
	}
	return dst
}

// lineScanner scans r's lines (without their ends), telling each line's
// byte offset.
type lineScanner struct {
	*bufio.Scanner
	read, off int64
}

func newLineScanner(r io.Reader) *lineScanner {
	s := &lineScanner{Scanner: bufio.NewScanner(r)}
	s.Buffer(make([]byte, 64<<10), MaxLineBytes)
	s.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		adv, tok, err := bufio.ScanLines(data, atEOF)
		if tok != nil {
			s.off = s.read
		}
		s.read += int64(adv)
		return adv, tok, err
	})
	return s
}

// err is the scanner's error, saying which line of file (when named) it
// met.
func (s *lineScanner) err(file string, line int) error {
	err := s.Err()
	where := fmt.Sprintf("line %d", line)
	if file != "" {
		where = file + " " + where
	}
	if errors.Is(err, bufio.ErrTooLong) {
		return fmt.Errorf("%s: longer than %d bytes", where, MaxLineBytes)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	return nil
}

// scanAligned reads aligned source and target files (named srcName and
// tgtName in errors) in step, as scanCorpus reads a TSV file, and calls
// pair with each valid pair's place and TSV line (valid only during the
// call). Files of different line counts, and a line that is not UTF-8 or
// longer than MaxLineBytes, are errors naming the file and line.
func scanAligned(src, tgt io.Reader, srcName, tgtName string, tok lineTokens, words bool, pair func(loc pairLoc, line []byte, p linePair) error) (CorpusStats, error) {
	var st CorpusStats
	ss, ts := newLineScanner(src), newLineScanner(tgt)
	var line []byte
	for {
		okS, okT := ss.Scan(), ts.Scan()
		if err := ss.err(srcName, st.Lines+1); err != nil {
			return st, err
		}
		if err := ts.err(tgtName, st.Lines+1); err != nil {
			return st, err
		}
		if !okS && !okT {
			break
		}
		st.Lines++
		if okS != okT {
			short, long := tgtName, srcName
			if !okS {
				short, long = srcName, tgtName
			}
			return st, fmt.Errorf("%s has %d lines, %s more: aligned files must have a line each per pair", short, st.Lines-1, long)
		}
		s, t := ss.Bytes(), ts.Bytes()
		if !utf8.Valid(s) {
			return st, fmt.Errorf("%s line %d: not UTF-8 text", srcName, st.Lines)
		}
		if !utf8.Valid(t) {
			return st, fmt.Errorf("%s line %d: not UTF-8 text", tgtName, st.Lines)
		}
		line = joinAligned(line[:0], s, t)
		p, kind := classify(&st, line, tok, words)
		if kind == lineOK {
			loc := pairLoc{off: ss.off, n: len(s), tgtOff: ts.off, tgtN: len(t)}
			if err := pair(loc, line, p); err != nil {
				return st, err
			}
		}
	}
	if st.Pairs == 0 {
		return st, fmt.Errorf("no pair of a source and a target line in %d lines of %s and %s", st.Lines, srcName, tgtName)
	}
	return st, nil
}
