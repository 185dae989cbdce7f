package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/downpour-ml/downpour/shard"
)

// cmdCorpus writes the generated WMT-like corpus (synthetic:wmt) as a
// corpus file: the corpus at a real one's scale (the paper's 12M pairs),
// to train through the file reader as a user's WMT'14 file would.
func cmdCorpus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("corpus", flag.ContinueOnError)
	pairs := fs.Int64("pairs", 100000, "sentence pairs to write (the paper's WMT'14 subset: 12000000)")
	vocab := fs.Int("vocab", 160000, "source words, the four reserved ids included")
	tgtVocab := fs.Int("tgt-vocab", 80000, "target words, the four reserved ids included")
	seed := fs.Uint64("seed", 1, "the corpus's seed: the same seed writes the same bytes")
	out := fs.String("out", "", "the file to write (required)")
	if err := parse(fs, args, stderr, "downpour corpus --pairs 12000000 --out wmt-12m.tsv"); err != nil {
		return err
	}
	if *out == "" || *pairs < 1 || *vocab <= 4 || *tgtVocab <= 4 {
		fmt.Fprintln(stderr, "downpour corpus: needs --out, --pairs of at least 1 and vocabularies of more than 4 words")
		return errUsage
	}
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	err = shard.NewWMT(*vocab, *tgtVocab).WriteTSV(ctxWriter{ctx, f}, *pairs, *seed) // it buffers
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(*out)
		return err
	}
	st, _ := os.Stat(*out)
	fmt.Fprintf(stdout, "%d pairs, %d bytes in %s\n", *pairs, st.Size(), *out)
	return nil
}

// ctxWriter stops writing when ctx ends (Ctrl-C).
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(b)
}
