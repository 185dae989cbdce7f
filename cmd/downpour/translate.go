package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/downpour-ml/downpour/internal/app/evaluate"
	"github.com/downpour-ml/downpour/internal/checkpoint"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
	"github.com/downpour-ml/downpour/shard"
)

// stdin is what translate reads (a variable for tests).
var stdin io.Reader = os.Stdin

// readCheckpoint reads a final checkpoint (a file, or a run directory
// holding checkpoint/final.ckpt) and its job spec. A run directory without a
// final checkpoint (a run still going, or stopped) gives the parameters of
// its latest complete set of shard snapshots instead.
func readCheckpoint(path string, note io.Writer) ([]float32, *job.Spec, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		final := filepath.Join(path, "checkpoint", "final.ckpt")
		if _, err := os.Stat(final); err != nil {
			return latestSnapshots(path, note)
		}
		path = final
	}
	meta, params, err := checkpoint.Read(path)
	if err != nil {
		return nil, nil, err
	}
	spec, err := job.DecodeSpec(meta.Config)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(params) != models.TotalSize(spec.Tensors()) {
		return nil, nil, fmt.Errorf("%s: %d parameters, but its %s model has %d", path, len(params), spec.Model, models.TotalSize(spec.Tensors()))
	}
	return params, spec, nil
}

// latestSnapshots assembles the parameters of run directory dir from the
// latest step of which its shards' snapshot files (ps-*/snapshots/*.dpss)
// hold every block exactly once, under one placement.
func latestSnapshots(dir string, note io.Writer) ([]float32, *job.Spec, error) {
	b, err := os.ReadFile(filepath.Join(dir, "job.json"))
	if err != nil {
		return nil, nil, fmt.Errorf("%s has neither a final checkpoint nor a job.json: %w", dir, err)
	}
	spec, err := job.DecodeSpec(b)
	if err != nil {
		return nil, nil, err
	}
	// Group the files by the placement and step their names give, and read
	// only the groups it takes, latest first.
	files, _ := filepath.Glob(filepath.Join(dir, "ps-*", "snapshots", "*.dpss"))
	type key struct{ placement, step int64 }
	sets := map[key][]string{}
	for _, f := range files {
		if v, _, step, temp, ok := paramserver.ParseSnapshotFile(filepath.Base(f)); ok && !temp {
			sets[key{v, step}] = append(sets[key{v, step}], f)
		}
	}
	keys := make([]key, 0, len(sets))
	for k := range sets {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].step > keys[j].step || keys[i].step == keys[j].step && keys[i].placement > keys[j].placement
	})
	p := job.Place(spec.Tensors(), spec.BlockSize, 1) // every block, whatever the shards
	for _, k := range keys {
		var snaps []*paramserver.Snapshot
		for _, f := range sets[k] {
			if snap, err := paramserver.ReadSnapshot(f); err == nil && snap.Job == spec.Name {
				snaps = append(snaps, snap) // torn, corrupt or another job's files are left out
			}
		}
		snap, err := paramserver.Gather(snaps, p.Blocks)
		if err != nil {
			continue // incomplete: a shard had not written it yet, or a file is bad
		}
		params := make([]float32, p.Size())
		for i, b := range p.Blocks {
			copy(params[b.Offset:b.Offset+b.Len], snap.Blocks[i].W)
		}
		fmt.Fprintf(note, "%s has no final checkpoint: using its shard snapshots of step %d (placement %d)\n", dir, k.step, k.placement)
		return params, spec, nil
	}
	return nil, nil, fmt.Errorf("%s has no final checkpoint and no complete set of shard snapshots", dir)
}

// loadCheckpoint reads a Seq2Seq checkpoint, its job spec and its data.
func loadCheckpoint(path string, note io.Writer) (*models.Seq2Seq[float32], *job.Spec, shard.Dataset, error) {
	params, spec, err := readCheckpoint(path, note)
	if err != nil {
		return nil, nil, nil, err
	}
	if spec.Model != "seq2seq" {
		return nil, nil, nil, fmt.Errorf("%s is a checkpoint of a %s, not of a seq2seq model", path, spec.Model)
	}
	data, err := spec.OpenData()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("the checkpoint's vocabularies come from its training data: %w", err)
	}
	m := models.NewSeq2Seq[float32](spec.Seq2Seq)
	copy(m.Params(), params)
	return m, spec, data, nil
}

func cmdTranslate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("translate", flag.ContinueOnError)
	ckpt := fs.String("checkpoint", "", "a run directory or a final.ckpt file")
	beam := fs.Int("beam", 2, "beam width (1: greedy)")
	maxLen := fs.Int("max-len", 0, "longest translation in tokens (default twice the source plus 10)")
	if err := parse(fs, args, stderr, "echo '3 1 4 1 5' | downpour translate --checkpoint runs/demo-20261128-210316 --beam 2"); err != nil {
		return err
	}
	if *ckpt == "" || *beam < 1 {
		fmt.Fprintln(stderr, "downpour translate: needs --checkpoint, and --beam at least 1")
		return errUsage
	}
	m, _, data, err := loadCheckpoint(*ckpt, stderr)
	if err != nil {
		return err
	}
	return translateLines(ctx, m, data, stdin, stdout, stderr, *beam, *maxLen)
}

// translateLines translates each line of in to a line of out, and says on
// note which words of a line the model does not know (a corpus model reads
// them as <unk>; a synthetic task's skips them).
func translateLines(ctx context.Context, m *models.Seq2Seq[float32], data shard.Dataset, in io.Reader, out, note io.Writer, beam, maxLen int) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), shard.MaxLineBytes)
	w := bufio.NewWriter(out)
	defer w.Flush()
	for line := 1; sc.Scan(); line++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if unknown := unknownWords(data, sc.Text()); len(unknown) > 0 {
			w.Flush() // the translations so far come first
			fmt.Fprintf(note, "downpour translate: line %d: not in the model's source vocabulary: %s\n", line, strings.Join(unknown, ", "))
		}
		ids := data.SrcIDs(sc.Text())
		if len(ids) == 0 {
			fmt.Fprintln(w)
			continue
		}
		limit := maxLen
		if limit <= 0 {
			limit = 2*len(ids) + 10
		}
		hyps := m.Beam(ids, data.Special(), beam, limit)
		fmt.Fprintln(w, strings.Join(data.TgtWords(hyps[0].Tokens), " "))
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		return fmt.Errorf("an input line is longer than %d bytes", shard.MaxLineBytes)
	}
	return sc.Err()
}

// unknownWords lists, quoted, the words of sentence that data's source
// vocabulary does not hold.
func unknownWords(data shard.Dataset, sentence string) []string {
	var unknown []string
	for _, tok := range data.Tokenize(sentence) {
		if words := data.SrcWords(data.SrcIDs(tok)); len(words) != 1 || words[0] != tok {
			unknown = append(unknown, strconv.Quote(tok))
		}
	}
	return unknown
}

func cmdEval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("eval", flag.ContinueOnError)
	ckpt := fs.String("checkpoint", "", "a run directory or a final.ckpt file")
	dataPath := fs.String("data", "", "pairs to score (source<TAB>target lines; default: the job's held-out set)")
	beam := fs.Int("beam", 1, "beam width (1: greedy)")
	samples := fs.Int("samples", evaluate.ParzenSamples, "GAN: samples for the Parzen window (the paper: 10000)")
	if err := parse(fs, args, stderr, "downpour eval --checkpoint runs/demo-20261128-210316 --data test.tsv --beam 2"); err != nil {
		return err
	}
	if *ckpt == "" || *beam < 1 || *samples < 1 {
		fmt.Fprintln(stderr, "downpour eval: needs --checkpoint, and --beam and --samples at least 1")
		return errUsage
	}
	if params, spec, err := readCheckpoint(*ckpt, stderr); err == nil && spec.Model == "gan" {
		return evalGAN(stdout, spec, params, *samples)
	}
	m, spec, data, err := loadCheckpoint(*ckpt, io.Discard) // readCheckpoint above said where the parameters come from
	if err != nil {
		return err
	}
	var examples []shard.Example
	var refs [][]string
	if *dataPath == "" {
		if examples, err = data.HeldOut(); err != nil {
			return err
		}
	} else {
		f, err := os.Open(*dataPath)
		if err != nil {
			return err
		}
		pairs, st, err := shard.ReadCorpus(f, data.Tokenize)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", *dataPath, err)
		}
		if st.Blank+st.Malformed > 0 {
			fmt.Fprintf(stderr, "%s: skipped %d blank and %d malformed lines\n", *dataPath, st.Blank, st.Malformed)
		}
		for _, p := range pairs {
			examples = append(examples, data.EncodePair(p))
			refs = append(refs, p.Tgt)
		}
	}
	if len(examples) == 0 {
		return errors.New("nothing to evaluate: the job held out no examples; give --data")
	}
	src, tgt := make([][]int32, len(examples)), make([][]int32, len(examples))
	for i, ex := range examples {
		src[i], tgt[i] = ex.Src, ex.Tgt
	}
	r := models.Evaluate(m, src, tgt, data.Special(), models.EvalOptions{Batch: max(spec.Batch, 32),
		MaxLen: func(n int) int { return 2*n + 10 }, Words: data.TgtWords, Refs: refs, Beam: *beam})
	fmt.Fprintf(stdout, "sentences %d\nloss %.4f per token, perplexity %.3f\nexact match %.2f%%\n%s\n",
		r.Sentences, r.Loss, r.Perplexity, 100*r.ExactMatch, r.Counts.String())
	return nil
}

// evalGAN prints the Parzen-window estimate exactly as the GAN paper
// computed it (evaluate.FullParzen) with n samples.
func evalGAN(stdout io.Writer, spec *job.Spec, params []float32, n int) error {
	m, err := spec.OpenMNIST()
	if err != nil {
		return err
	}
	r := evaluate.FullParzen(spec, params, m, n)
	fmt.Fprintf(stdout, "Parzen-window log-likelihood on the %d MNIST test images: %.1f ± %.1f (sigma %.4f, %d samples)\n",
		len(m.Test), r.Mean, r.StdErr, r.Sigma, n)
	return nil
}
