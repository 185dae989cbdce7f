package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/downpour-ml/downpour/internal/app/telemetry"
	"github.com/downpour-ml/downpour/internal/checkpoint"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
	"github.com/downpour-ml/downpour/shard"
	"github.com/downpour-ml/downpour/worker"
)

// syncBuffer is a bytes.Buffer safe for concurrent writes: a command's
// roles log from their own goroutines, some of which may still be winding
// down when the command prints its error (os.Stderr takes that; a plain
// buffer does not).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runCmd runs a command line in-process with a deadline and returns its exit
// code and output.
func runCmd(t testing.TB, timeout time.Duration, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var o, e syncBuffer
	code = run(ctx, args, &o, &e)
	if ctx.Err() != nil {
		t.Fatalf("%v did not finish within %v:\n%s%s", args, timeout, o.String(), e.String())
	}
	return code, o.String(), e.String()
}

// readMetrics returns the training and the evaluation records of a
// metrics.jsonl file.
func readMetrics(t testing.TB, path string) []telemetry.Record {
	rs, _ := readAllMetrics(t, path)
	return rs
}

func readAllMetrics(t testing.TB, path string) ([]telemetry.Record, []telemetry.EvalRecord) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rs []telemetry.Record
	var es []telemetry.EvalRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var kind struct{ Kind string }
		json.Unmarshal(sc.Bytes(), &kind)
		var err error
		switch kind.Kind {
		case "train":
			var r telemetry.Record
			err = json.Unmarshal(sc.Bytes(), &r)
			rs = append(rs, r)
		case "eval":
			var r telemetry.EvalRecord
			err = json.Unmarshal(sc.Bytes(), &r)
			es = append(es, r)
		default:
			t.Fatalf("metrics.jsonl line %q has no known kind", sc.Text())
		}
		if err != nil {
			t.Fatalf("metrics.jsonl line %q: %v", sc.Text(), err)
		}
	}
	return rs, es
}

// trainRun trains in-process and returns the final checkpoint's parameters.
func trainRun(t *testing.T, out string, args ...string) ([]float32, *checkpoint.Meta) {
	t.Helper()
	code, stdout, stderr := runCmd(t, 3*time.Minute, append([]string{"train", "--out", out}, args...)...)
	if code != 0 {
		t.Fatalf("train %v: exit %d\n%s%s", args, code, stdout, stderr)
	}
	m, p, err := checkpoint.Read(filepath.Join(out, "checkpoint", "final.ckpt"))
	if err != nil {
		t.Fatal(err)
	}
	return p, m
}

// The run directory holds one metrics record per logged step, in order, with
// the fields a person reads, and a final checkpoint of the whole model.
func TestTrainWritesRunDirectory(t *testing.T) {
	out := filepath.Join(t.TempDir(), "run")
	params, meta := trainRun(t, out, "--steps", "25", "--log-every", "5", "--job", "rundir")
	rs := readMetrics(t, filepath.Join(out, "metrics.jsonl"))
	var steps []int64
	for _, r := range rs {
		steps = append(steps, r.Step)
		if r.Ranks != 2 || r.Tokens <= 0 || !(r.Loss > 0) || r.StepsPerSec <= 0 || r.Time == "" {
			t.Errorf("record %+v is missing a field", r)
		}
	}
	if want := []int64{1, 6, 11, 16, 21, 25}; !slices.Equal(steps, want) {
		t.Fatalf("logged steps %v, want %v", steps, want)
	}
	if meta.Step != 25 || meta.Job != "rundir" {
		t.Fatalf("checkpoint meta %+v", meta)
	}
	if want := models.TotalSize(meta.Tensors); len(params) != want || want == 0 {
		t.Fatalf("checkpoint holds %d parameters, tensors %d", len(params), want)
	}
	// The job's spec, and the curves drawn at the (final) evaluation.
	b, err := os.ReadFile(filepath.Join(out, "job.json"))
	if err != nil {
		t.Fatal(err)
	}
	if spec, err := job.DecodeSpec(b); err != nil || spec.Name != "rundir" || spec.Steps != 25 {
		t.Fatalf("job.json: %v", err)
	}
	for _, f := range []string{"loss.png", "eval.png"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() < 1000 {
			t.Fatalf("%s: %v", f, err)
		}
	}
	os.Remove(filepath.Join(out, "loss.png"))
	if code, stdout, stderr := runCmd(t, time.Minute, "plot", "--run", out); code != 0 || !strings.Contains(stdout, "curves in") {
		t.Fatalf("plot: exit %d, %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "loss.png")); err != nil {
		t.Fatal("plot did not draw loss.png again")
	}
	if code, _, stderr := runCmd(t, time.Minute, "plot", "--run", filepath.Join(out, "nosuch")); code != 1 || !strings.Contains(stderr, "no such file") {
		t.Fatalf("plot of no run: exit %d, %s", code, stderr)
	}
}

// Invariant 1: a sync run's parameters are bit-identical whatever the number
// of shards and the block size; a different seed gives different ones.
func TestTrainSyncDeterministicAcrossShardCounts(t *testing.T) {
	dir := t.TempDir()
	base := []string{"--steps", "12", "--hidden", "32", "--embed", "16", "--log-every", "4"}
	ref, _ := trainRun(t, filepath.Join(dir, "a"), append(base, "--ps-shards", "1")...)
	for i, extra := range [][]string{
		{"--ps-shards", "3"},
		{"--ps-shards", "4", "--block-size", "1000"},
		{"--ps-shards", "2"},
	} {
		got, _ := trainRun(t, filepath.Join(dir, fmt.Sprint(i)), append(base, extra...)...)
		if !slices.Equal(got, ref) {
			t.Fatalf("%v: final parameters differ from the 1-shard run", extra)
		}
	}
	other, _ := trainRun(t, filepath.Join(dir, "seed"), append(base, "--seed", "2")...)
	if slices.Equal(other, ref) {
		t.Fatal("a different seed gave the same parameters")
	}
}

// Workers move only the embedding rows their batches use (the push, this
// batch's; the pull, the next one's): with a vocabulary far larger than a
// batch, the parameters still come out bit-identical to moving the tables
// whole, with one worker or two.
func TestTrainSparseTransferMatchesDense(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(3, 1))
	var b strings.Builder
	for range 400 {
		for i := range 6 {
			fmt.Fprintf(&b, "s%d%s", rng.IntN(300), map[bool]string{true: "\t", false: " "}[i == 5])
		}
		for i := range 6 {
			fmt.Fprintf(&b, "t%d%s", rng.IntN(200), map[bool]string{true: "\n", false: " "}[i == 5])
		}
	}
	corpus := filepath.Join(dir, "corpus.tsv")
	if err := os.WriteFile(corpus, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"--data", corpus, "--vocab", "400", "--batch", "4", "--steps", "10", "--hidden", "16",
		"--embed", "8", "--layers", "1", "--log-every", "5", "--held-out", "10", "--block-size", "256"}
	for _, extra := range [][]string{
		{"--ps-shards", "1"},
		{"--workers", "2", "--ps-shards", "2", "--optimizer", "adam", "--lr", "0.01"},
	} {
		args := append(slices.Clone(base), extra...)
		sparse, _ := trainRun(t, filepath.Join(dir, fmt.Sprint("sparse", len(extra))), args...)
		dense, _ := trainRun(t, filepath.Join(dir, fmt.Sprint("dense", len(extra))), append(args, "--dense-transfer")...)
		if !slices.Equal(sparse, dense) {
			t.Fatalf("%v: sparse and dense transfers end with different parameters", extra)
		}
	}
}

// The default job learns: the last logged loss is below half the first, and
// the held-out evaluations (every 100 steps and at the end) improve to most
// sentences copied exactly. A healthy run warns of nothing: no WARN or
// ERROR line from any role or embedded server.
func TestTrainDefaultLearns(t *testing.T) {
	out := filepath.Join(t.TempDir(), "run")
	code, stdout, stderr := runCmd(t, 3*time.Minute, "train", "--out", out)
	if code != 0 {
		t.Fatalf("train: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, line := range strings.Split(stdout+stderr, "\n") {
		if strings.Contains(line, "WARN") || strings.Contains(line, "ERROR") {
			t.Errorf("a healthy run printed %q", line)
		}
	}
	rs, es := readAllMetrics(t, filepath.Join(out, "metrics.jsonl"))
	first, last := rs[0], rs[len(rs)-1]
	t.Logf("loss %.4f -> %.4f over %d records", first.Loss, last.Loss, len(rs))
	if last.Step != 300 || !(last.Loss < first.Loss/2) {
		t.Fatalf("step %d: loss %.4f -> %.4f, want the last below half the first", last.Step, first.Loss, last.Loss)
	}
	var steps []int64
	for _, e := range es {
		steps = append(steps, e.Step)
		t.Logf("eval at %d: loss %.3f BLEU %.1f exact %.3f", e.Step, e.EvalLoss, e.BLEU, e.ExactMatch)
	}
	if !slices.Equal(steps, []int64{100, 200, 300}) {
		t.Fatalf("evaluations at %v", steps)
	}
	end := es[len(es)-1]
	if end.HeldOut != 200 || end.ExactMatch < 0.8 || end.BLEU < 80 || !(end.EvalLoss < es[0].EvalLoss) {
		t.Fatalf("final evaluation %+v", end)
	}
	// downpour eval on the checkpoint reproduces the final evaluation.
	code, o, e := runCmd(t, time.Minute, "eval", "--checkpoint", out)
	if want := fmt.Sprintf("exact match %.2f%%", 100*end.ExactMatch); code != 0 || !strings.Contains(o, want) ||
		!strings.Contains(o, fmt.Sprintf("BLEU = %.2f", end.BLEU)) {
		t.Fatalf("eval: exit %d, %q %q; want %q", code, o, e, want)
	}
	// downpour translate answers each line with digits (the task copies).
	// A word the model does not know is named on stderr, with its line.
	stdin = strings.NewReader("3 1 4 1 5\n\n2 x 7 1 y\n")
	defer func() { stdin = os.Stdin }()
	code, o, e = runCmd(t, time.Minute, "translate", "--checkpoint", filepath.Join(out, "checkpoint", "final.ckpt"), "--beam", "3")
	lines := strings.Split(strings.TrimSuffix(o, "\n"), "\n")
	if code != 0 || len(lines) != 3 || lines[1] != "" || !strings.Contains(o, "3 1 4") ||
		!strings.Contains(e, `line 3: not in the model's source vocabulary: "x", "y"`) || strings.Contains(e, "line 1") {
		t.Fatalf("translate: exit %d, %q %q", code, o, e)
	}
	if code, _, e := runCmd(t, time.Minute, "eval", "--checkpoint", filepath.Join(out, "nope")); code != 1 || !strings.Contains(e, "nope") {
		t.Fatalf("eval of a missing checkpoint: exit %d, %q", code, e)
	}
}

func TestBadUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"train", "--no-such-flag"}, 2, "flag provided but not defined"},
		{[]string{"train", "--steps", "0"}, 2, "steps must be at least 1"},
		{[]string{"train", "--mode", "bogus"}, 2, "mode"},
		{[]string{"train", "--job", "a.b"}, 2, "job name"},
		{[]string{"train", "--nats", "nats://127.0.0.1:4222"}, 2, "both --nats and --etcd"},
		{[]string{"train", "extra"}, 2, "unexpected argument"},
		{[]string{"worker"}, 2, "needs --nats and --etcd"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{nil, 2, "usage: downpour"},
		{[]string{"train", "--out", "/nonexistent-parent/run"}, 1, "parent /nonexistent-parent does not exist"},
		{[]string{"train", "--help"}, 0, "example:"},
		{[]string{"translate"}, 2, "needs --checkpoint"},
		{[]string{"eval", "--checkpoint", "x", "--beam", "0"}, 2, "needs --checkpoint"},
		{[]string{"train", "--tokenizer", "moses"}, 2, "tokenizer"},
		{[]string{"train", "--model", "transformer"}, 2, "model \"transformer\""},
		{[]string{"train", "--log-format", "xml"}, 2, "use text or json"},
		{[]string{"ps", "--log-format", "yaml"}, 2, "use text or json"},
	} {
		code, _, stderr := runCmd(t, 10*time.Second, c.args...)
		if code != c.code || !strings.Contains(stderr, c.says) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d saying %q", c.args, code, stderr, c.code, c.says)
		}
		if strings.Contains(stderr, "panic") || strings.Contains(stderr, "goroutine ") {
			t.Errorf("%v panicked: %s", c.args, stderr)
		}
	}
}

// An endpoint that does not answer is a one-line error within the connect
// timeout, not a hang.
func TestUnreachableEndpoints(t *testing.T) {
	dead := deadPort(t)
	for _, args := range [][]string{
		{"worker", "--nats", "nats://127.0.0.1:" + dead, "--etcd", "http://127.0.0.1:" + dead, "--connect-timeout", "1s"},
		{"ps", "--nats", "nats://127.0.0.1:" + dead, "--etcd", "http://127.0.0.1:" + dead, "--connect-timeout", "1s"},
		{"train", "--nats", "nats://127.0.0.1:" + dead, "--etcd", "http://127.0.0.1:" + dead, "--connect-timeout", "1s", "--out", filepath.Join(t.TempDir(), "r")},
	} {
		start := time.Now()
		code, _, stderr := runCmd(t, 30*time.Second, args...)
		if code != 1 || !strings.Contains(stderr, "did not answer") && !strings.Contains(stderr, "cannot reach") {
			t.Errorf("%s: exit %d, stderr %q", args[0], code, stderr)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Errorf("%s: took %v to give up", args[0], d)
		}
	}
}

func deadPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	return port
}

func TestServersPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
	code, _, stderr := runCmd(t, 10*time.Second, "servers", "--dir", t.TempDir(), "--nats-port", port)
	if code != 1 || !strings.Contains(stderr, "port "+port+" is in use") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// Cancelling a training run (what SIGINT and SIGTERM do) stops every role,
// both servers and every goroutine, promptly.
func TestTrainCancelStopsEverything(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	out := filepath.Join(t.TempDir(), "run")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	var o, e syncBuffer
	go func() {
		done <- run(ctx, []string{"train", "--out", out, "--steps", "100000", "--log-every", "1"}, &o, &e)
	}()
	deadline := time.Now().Add(time.Minute)
	for {
		if b, _ := os.ReadFile(filepath.Join(out, "metrics.jsonl")); bytes.Count(b, []byte("\n")) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("training did not start within a minute")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case code := <-done:
		if code != 130 {
			t.Fatalf("exit %d after cancel, want 130; stderr: %s", code, e.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("training did not stop within 20s of cancel")
	}
}

// Every consistency mode and optimizer trains through the shards to the end.
func TestTrainModesAndOptimizers(t *testing.T) {
	dir := t.TempDir()
	for i, args := range [][]string{
		{"--mode", "ssp", "--staleness", "1"},
		{"--mode", "async", "--n-fetch", "2", "--n-push", "3"},
		{"--optimizer", "adam"},
		{"--optimizer", "momentum", "--momentum", "0.5", "--momentum-final", "0.7", "--momentum-ramp-end", "10", "--lr-schedule", "exp", "--lr-decay", "1.01"},
		{"--optimizer", "adagrad", "--lr-schedule", "halving", "--lr-halve-after", "10", "--lr-halve-every", "5"},
	} {
		out := filepath.Join(dir, fmt.Sprint(i))
		params, meta := trainRun(t, out, append([]string{"--steps", "20", "--hidden", "32", "--log-every", "5"}, args...)...)
		if meta.Step != 20 || len(params) == 0 {
			t.Fatalf("%v: checkpoint %+v", args, meta)
		}
		if rs := readMetrics(t, filepath.Join(out, "metrics.jsonl")); len(rs) != 5 || rs[len(rs)-1].Step != 20 {
			t.Fatalf("%v: %d records", args, len(rs))
		}
	}
}

// With --keep-checkpoints N, a finished run leaves on each shard the
// snapshots of a run of its last checkpoint steps, at least N of them and
// always the last step's: which checkpoint the coordinator had recorded
// last when the job ended is a race (the pruning itself is tested in
// paramserver/node), so the test asserts what holds whatever it was. With 0,
// all of them stay. The snapshot directories are marked with the job's name.
func TestTrainKeepsTheNewestCheckpoints(t *testing.T) {
	dir := t.TempDir()
	const steps, every = 30, 2
	base := []string{"--hidden", "16", "--embed", "8", "--ps-shards", "2", "--steps", fmt.Sprint(steps), "--checkpoint-every", fmt.Sprint(every), "--job", "kept"}
	var all []int64
	for step := int64(every); step <= steps; step += every {
		all = append(all, step)
	}
	for _, keep := range []int{1, 2, 0} {
		out := filepath.Join(dir, fmt.Sprint("keep-", keep))
		trainRun(t, out, append(base, "--keep-checkpoints", fmt.Sprint(keep))...)
		for s := 0; s < 2; s++ {
			snaps := filepath.Join(out, fmt.Sprintf("ps-%d", s), "snapshots")
			es, err := os.ReadDir(snaps)
			if err != nil {
				t.Fatal(err)
			}
			var got []int64
			for _, e := range es {
				if v, shard, step, temp, ok := paramserver.ParseSnapshotFile(e.Name()); ok && !temp && v == 1 && shard == s {
					got = append(got, step)
				} else if e.Name() != "job" {
					t.Errorf("keep %d: %s holds %s", keep, snaps, e.Name())
				}
			}
			slices.Sort(got)
			t.Logf("keep %d: shard %d holds the snapshots of steps %v", keep, s, got)
			switch {
			case keep == 0 && !slices.Equal(got, all):
				t.Errorf("keep 0: shard %d holds the snapshots of steps %v, want all of %v", s, got, all)
			case keep > 0 && (len(got) < keep || !slices.Equal(got, all[len(all)-len(got):])):
				t.Errorf("keep %d: shard %d holds the snapshots of steps %v, want the last %d or more of %v", keep, s, got, keep, all)
			}
			if b, _ := os.ReadFile(filepath.Join(snaps, "job")); string(b) != "kept\n" {
				t.Errorf("%s is marked %q, want the job's name", snaps, b)
			}
		}
	}
	if code, _, stderr := runCmd(t, time.Minute, "train", "--out", filepath.Join(dir, "bad"), "--keep-checkpoints", "-1"); code != 2 || !strings.Contains(stderr, "keep checkpoints") {
		t.Fatalf("--keep-checkpoints -1: exit %d\n%s", code, stderr)
	}
}

// Shard snapshots taken every K steps in a sync run hold exactly the
// parameters a run of K steps ends with.
func TestTrainShardSnapshotsMatchShorterRun(t *testing.T) {
	dir := t.TempDir()
	base := []string{"--hidden", "32", "--embed", "16", "--optimizer", "adam", "--ps-shards", "2"}
	trainRun(t, filepath.Join(dir, "long"), append(base, "--steps", "12", "--checkpoint-every", "5")...)
	short, meta := trainRun(t, filepath.Join(dir, "short"), append(base, "--steps", "10")...)
	p := job.Place(meta.Tensors, job.Default().BlockSize, 2)
	got := make([]float32, len(short))
	for s := 0; s < 2; s++ {
		for _, step := range []int{5, 10} {
			path := filepath.Join(dir, "long", fmt.Sprintf("ps-%d", s), "snapshots", paramserver.SnapshotFile(1, s, int64(step)))
			snap, err := paramserver.ReadSnapshot(path)
			if err != nil {
				t.Fatal(err)
			}
			if snap.Step != int64(step) || snap.Shard != s {
				t.Fatalf("%s: step %d shard %d", path, snap.Step, snap.Shard)
			}
			if step != 10 {
				continue
			}
			for _, bs := range snap.Blocks {
				b := p.Blocks[bs.ID]
				copy(got[b.Offset:b.Offset+b.Len], bs.W)
			}
		}
	}
	if !slices.Equal(got, short) {
		t.Fatal("the step-10 snapshots differ from a 10-step run's final parameters")
	}
}

// A parallel corpus file trains too: its vocabularies size the model, and
// evaluation on its held-out pairs reports BLEU.
func TestTrainOnCorpusFile(t *testing.T) {
	dir := t.TempDir()
	corpus := filepath.Join(dir, "toy.tsv")
	var b strings.Builder
	words := []string{"zero", "one", "two", "three", "four"}
	for i := 0; i < 400; i++ {
		a, c := i%5, (i/5)%5
		fmt.Fprintf(&b, "%s %s\t%d %d\tattribution\n", words[a], words[c], c, a)
	}
	b.WriteString("\nmalformed line\n")
	os.WriteFile(corpus, []byte(b.String()), 0o644)
	out := filepath.Join(dir, "run")
	before := shard.PassCounts()
	params, meta := trainRun(t, out, "--data", corpus, "--steps", "30", "--held-out", "20", "--eval-every", "0", "--optimizer", "adam", "--workers", "3")
	// The corpus is counted once, by the coordinator (two passes), which
	// stores the summary with the job; each worker indexes its own data
	// shard only, and the coordinator data shard 0 (its epoch's steps); the
	// held-out pairs are read once, for the evaluation.
	after := shard.PassCounts()
	if got := (shard.Passes{Count: after.Count - before.Count, Index: after.Index - before.Index, Held: after.Held - before.Held}); got != (shard.Passes{Count: 2, Index: 3 + 1, Held: 1}) {
		t.Fatalf("passes over the corpus: %+v, want 2 counting, 4 indexing, 1 held out", got)
	}
	// Of replicas laid out over seats, seat 0 alone reads (it sends the
	// other seats each batch's shape and labels): 2 replicas of 3 seats
	// index 2 data shards, not 6.
	before = shard.PassCounts()
	trainRun(t, filepath.Join(dir, "seats"), "--data", corpus, "--steps", "10", "--held-out", "20", "--eval-every", "0", "--workers", "2",
		"--layers", "2", "--stages", "2", "--softmax-slices", "1")
	after = shard.PassCounts()
	if got := (shard.Passes{Count: after.Count - before.Count, Index: after.Index - before.Index, Held: after.Held - before.Held}); got != (shard.Passes{Count: 2, Index: 2 + 1, Held: 1}) {
		t.Fatalf("passes over the corpus by replicas laid out over seats: %+v, want 2 counting, 3 indexing, 1 held out", got)
	}
	var cfg struct {
		Seq2Seq models.Seq2SeqConfig `json:"seq2seq"`
		DataCRC uint32               `json:"data_crc"`
	}
	if err := json.Unmarshal(meta.Config, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Seq2Seq.SrcVocab != 4+5 || cfg.Seq2Seq.TgtVocab != 4+5 || cfg.DataCRC == 0 {
		t.Fatalf("model config %+v", cfg)
	}
	_, es := readAllMetrics(t, filepath.Join(out, "metrics.jsonl"))
	if len(es) != 1 || es[0].HeldOut != 20 || es[0].Step != 30 {
		t.Fatalf("evaluations %+v", es)
	}
	// The same pairs as two aligned files (as WMT ships them) train the
	// same model, bit for bit.
	var en, fr strings.Builder
	for _, l := range strings.Split(b.String(), "\n") {
		cols := strings.SplitN(l, "\t", 3)
		en.WriteString(cols[0] + "\n")
		if len(cols) > 1 {
			fr.WriteString(cols[1])
		}
		fr.WriteString("\n")
	}
	os.WriteFile(filepath.Join(dir, "toy.en"), []byte(en.String()), 0o644)
	os.WriteFile(filepath.Join(dir, "toy.fr"), []byte(fr.String()), 0o644)
	aligned, _ := trainRun(t, filepath.Join(dir, "aligned"), "--data", filepath.Join(dir, "toy.en"), "--data-target", filepath.Join(dir, "toy.fr"),
		"--steps", "30", "--held-out", "20", "--eval-every", "0", "--optimizer", "adam", "--workers", "3")
	if !slices.Equal(aligned, params) {
		t.Fatal("aligned files trained another model than the TSV of their pairs")
	}
	code, _, stderr := runCmd(t, time.Minute, "train", "--data", filepath.Join(dir, "missing.tsv"), "--out", filepath.Join(dir, "r2"))
	if code != 1 || !strings.Contains(stderr, "missing.tsv") {
		t.Fatalf("missing corpus: exit %d, %q", code, stderr)
	}
}

// A preset sets defaults that flags override; epochs turn into steps and the
// halving schedule into updates, from the corpus's batches per epoch.
func TestPresetAndEpochs(t *testing.T) {
	dir := t.TempDir()
	corpus := filepath.Join(dir, "toy.tsv")
	var b strings.Builder
	for i := 0; i < 200; i++ {
		fmt.Fprintf(&b, "w%d w%d\tv%d\n", i%7, i%3, i%5)
	}
	os.WriteFile(corpus, []byte(b.String()), 0o644)
	out := filepath.Join(dir, "run")
	_, meta := trainRun(t, out, "--preset", "small", "--data", corpus, "--layers", "1", "--hidden", "16", "--embed", "8",
		"--batch", "10", "--held-out", "0", "--epochs", "1.5")
	spec, err := job.DecodeSpec(meta.Config)
	if err != nil {
		t.Fatal(err)
	}
	// 200 pairs over 2 data shards: 100 per shard, all of source length 2:
	// 10 batches of 10 per epoch.
	if spec.Seq2Seq.Layers != 1 || spec.Optimizer.LR != 0.7 || spec.Steps != 15 ||
		spec.Optimizer.Schedule != (job.Schedule{Kind: "halving", HalveAfter: 50, HalveEvery: 5}) || !spec.Reverse {
		t.Fatalf("spec %+v", spec)
	}
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"--preset", "bogus"}, "preset \"bogus\""},
		{[]string{"--epochs", "2"}, "epochs need a corpus"},
	} {
		code, _, stderr := runCmd(t, time.Minute, append([]string{"train", "--out", filepath.Join(dir, fmt.Sprint(len(c.says)))}, c.args...)...)
		if code == 0 || !strings.Contains(stderr, c.says) {
			t.Errorf("%v: exit %d, %q", c.args, code, stderr)
		}
	}
}

// The GAN trains through the shards: D and G losses in the metrics, a
// Parzen-window estimate at the end, and, in sync mode, parameters that do
// not depend on the number of shards.
//
// The networks are narrower than the paper's (--gan-* flags), so that the
// test stays quick under the race detector; TestGANSyncMatchesOneProcess
// and TestDefaultRunDirectory train the paper's.
func TestTrainGAN(t *testing.T) {
	dir := t.TempDir()
	small := models.GANConfig{Noise: 10, GHidden: 64, Pixels: 784, DUnits: 32, DPieces: 3}
	base := []string{"--model", "gan", "--steps", "3", "--log-every", "1", "--eval-every", "0",
		"--gan-noise", "10", "--gan-g-hidden", "64", "--gan-d-units", "32", "--gan-d-pieces", "3"}
	a, meta := trainRun(t, filepath.Join(dir, "a"), append(base, "--ps-shards", "1")...)
	if len(a) != models.TotalSize(small.Tensors()) || meta.Model != "gan" {
		t.Fatalf("checkpoint of %d parameters (want %d), model %q", len(a), models.TotalSize(small.Tensors()), meta.Model)
	}
	rs, es := readAllMetrics(t, filepath.Join(dir, "a", "metrics.jsonl"))
	if len(rs) != 3 || !(rs[0].Loss > 0) || !(rs[0].GLoss > 0) {
		t.Fatalf("records %+v", rs)
	}
	if len(es) != 1 || es[0].Samples != 1000 || es[0].Parzen == 0 || es[0].Sigma < 0.1 {
		t.Fatalf("evaluation %+v", es)
	}
	if f, err := os.Open(filepath.Join(dir, "a", "samples", "step-3.png")); err != nil {
		t.Fatalf("no sample grid for the final evaluation: %v", err)
	} else if im, err := png.Decode(f); err != nil || im.Bounds().Dx() != 10*29+1 {
		t.Fatalf("sample grid: %v", err)
	} else {
		f.Close()
	}
	b, _ := trainRun(t, filepath.Join(dir, "b"), append(base, "--ps-shards", "3")...)
	if !slices.Equal(a, b) {
		t.Fatal("GAN parameters differ between 1 and 3 shards")
	}
	code, out, stderr := runCmd(t, 5*time.Minute, "eval", "--checkpoint", filepath.Join(dir, "a"), "--samples", "300")
	if code != 0 || !strings.Contains(out, "Parzen-window log-likelihood on the 10000 MNIST test images") || !strings.Contains(out, "300 samples") {
		t.Fatalf("eval of a GAN: exit %d, %q %q", code, out, stderr)
	}
	grid, idx := filepath.Join(dir, "grid.png"), filepath.Join(dir, "s.idx")
	if code, _, stderr := runCmd(t, time.Minute, "sample", "--checkpoint", filepath.Join(dir, "a"), "--n", "10", "--out", grid, "--idx", idx); code != 0 {
		t.Fatalf("sample: exit %d, %q", code, stderr)
	}
	f, err := os.Open(grid)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(f)
	f.Close()
	if err != nil || img.Bounds().Dx() != 4*29+1 || img.Bounds().Dy() != 3*29+1 {
		t.Fatalf("grid: %v %v", err, img.Bounds())
	}
	x, err := shard.ReadIDX(idx)
	if err != nil || !slices.Equal(x.Dims, []int{10, 28, 28}) {
		t.Fatalf("idx samples: %v %v", err, x)
	}
	stdin = strings.NewReader("1 2\n")
	defer func() { stdin = os.Stdin }()
	if code, _, stderr := runCmd(t, time.Minute, "translate", "--checkpoint", filepath.Join(dir, "a")); code != 1 || !strings.Contains(stderr, "not of a seq2seq") {
		t.Fatalf("translate with a GAN: exit %d, %q", code, stderr)
	}
	// The alternating update, k = 2 with the minimax loss, trains too, and
	// its sync runs do not depend on the number of shards either; the
	// simultaneous update is refused k = 2.
	alt := slices.Concat(base, []string{"--gan-update", "alternating", "--gan-k", "2", "--minimax", "--steps", "2"})
	k1, _ := trainRun(t, filepath.Join(dir, "k2-1"), slices.Concat(alt, []string{"--ps-shards", "1"})...)
	k3, _ := trainRun(t, filepath.Join(dir, "k2-3"), slices.Concat(alt, []string{"--ps-shards", "3"})...)
	if !slices.Equal(k1, k3) {
		t.Fatal("alternating GAN parameters differ between 1 and 3 shards")
	}
	if code, _, stderr := runCmd(t, time.Minute, "train", "--model", "gan", "--gan-k", "2", "--out", filepath.Join(dir, "k")); code != 2 || !strings.Contains(stderr, "--gan-update alternating") {
		t.Fatalf("k = 2 with the simultaneous update: exit %d, %q", code, stderr)
	}
	code, _, stderr = runCmd(t, time.Minute, "train", "--model", "gan", "--mode", "ssp", "--out", filepath.Join(dir, "c"))
	if code != 2 || !strings.Contains(stderr, "sync or async") {
		t.Fatalf("GAN in ssp mode: exit %d, %q", code, stderr)
	}
	code, _, stderr = runCmd(t, time.Minute, "train", "--model", "gan", "--gan-d-pieces", "0", "--out", filepath.Join(dir, "d"))
	if code != 2 || !strings.Contains(stderr, "every size must be positive") || !strings.Contains(stderr, "240 x 0 pieces") {
		t.Fatalf("GAN with 0 maxout pieces: exit %d, %q", code, stderr)
	}
}

// A run stopped after some checkpoints resumes from the last complete one
// and ends with parameters bit-identical to the run that never stopped; its
// metrics and evaluations continue in the same run directory. Resuming a run
// that has nothing to resume from, or changing the job while resuming, is
// refused.
func TestTrainResume(t *testing.T) {
	dir := t.TempDir()
	// 300 steps: the stop below must come well before the run ends, and with
	// the assembly kernels 120 steps took under a second.
	base := []string{"--hidden", "32", "--embed", "16", "--optimizer", "adam", "--steps", "300", "--checkpoint-every", "10",
		"--eval-every", "40", "--log-every", "10"}
	out := filepath.Join(dir, "stopped")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	var o, e syncBuffer
	go func() { done <- run(ctx, append([]string{"train", "--out", out}, base...), &o, &e) }()
	// Stop once both shards have snapshotted step 50 (so the coordinator has
	// recorded a complete checkpoint at 40 or 50).
	deadline := time.Now().Add(2 * time.Minute)
	for {
		n := 0
		for s := 0; s < 2; s++ {
			if _, err := os.Stat(filepath.Join(out, fmt.Sprint("ps-", s), "snapshots", paramserver.SnapshotFile(1, s, 50))); err == nil {
				n++
			}
		}
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no snapshots of step 50 within 2 minutes:\n%s%s", o.String(), e.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	if code := <-done; code != 130 {
		t.Fatalf("stopped run: exit %d\n%s", code, e.String())
	}
	if _, err := os.Stat(filepath.Join(out, "checkpoint", "final.ckpt")); err == nil {
		t.Fatal("the stopped run wrote a final checkpoint")
	}
	// A stopped run's latest complete set of shard snapshots can be scored
	// and used; a torn file is passed over.
	torn := filepath.Join(out, "ps-0", "snapshots", paramserver.SnapshotFile(1, 0, 9999))
	os.WriteFile(torn, []byte("DPSS"), 0o644)
	if code, stdout, stderr := runCmd(t, time.Minute, "eval", "--checkpoint", out); code != 0 || !strings.Contains(stderr, "using its shard snapshots of step ") ||
		!strings.Contains(stdout, "exact match") {
		t.Fatalf("eval of a stopped run: exit %d\n%s%s", code, stdout, stderr)
	}
	os.Remove(torn)
	if code, _, stderr := runCmd(t, time.Minute, "train", "--resume", out, "--steps", "200"); code != 2 || !strings.Contains(stderr, "--steps") {
		t.Fatalf("resume with another --steps: exit %d, %s", code, stderr)
	}
	code, stdout, stderr := runCmd(t, 3*time.Minute, "train", "--resume", out)
	if code != 0 || !strings.Contains(stdout, "resuming job demo at step ") {
		t.Fatalf("resume: exit %d\n%s%s", code, stdout, stderr)
	}
	_, got, err := checkpoint.Read(filepath.Join(out, "checkpoint", "final.ckpt"))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := trainRun(t, filepath.Join(dir, "straight"), base...)
	if !slices.Equal(got, want) {
		t.Fatal("the resumed run's parameters differ from the run that never stopped")
	}
	// The evaluations at 40 and 80 come from before or after the stop; the
	// last step's comes at the end. Each is of exactly its step's
	// parameters, however far training had gone when it was taken: it
	// scores what the run that never stopped scored at that step.
	byStep := func(path string) map[int64]telemetry.EvalRecord {
		_, evals := readAllMetrics(t, path)
		m := map[int64]telemetry.EvalRecord{}
		for _, ev := range evals {
			m[ev.Step] = ev // a step evaluated twice keeps its last record
		}
		return m
	}
	resumed, straight := byStep(filepath.Join(out, "metrics.jsonl")), byStep(filepath.Join(dir, "straight", "metrics.jsonl"))
	// An evaluator that falls more than the kept checkpoints behind (under
	// -race) finds a step's snapshots pruned and skips it: compare the steps
	// both runs evaluated, the last step always among them.
	common := 0
	for step := range resumed {
		if _, ok := straight[step]; ok {
			common++
		}
	}
	_, last := resumed[300]
	if _, ok := straight[300]; !ok || !last || common < 2 {
		t.Fatalf("evaluations at %v and %v, want the last step's and another in both runs\nresumed run:\n%s%s", slices.Sorted(maps.Keys(resumed)), slices.Sorted(maps.Keys(straight)), stdout, stderr)
	}
	for _, step := range slices.Sorted(maps.Keys(resumed)) {
		r := resumed[step]
		s, ok := straight[step]
		if !ok {
			continue
		}
		if r.EvalLoss != s.EvalLoss || r.BLEU != s.BLEU || r.ExactMatch != s.ExactMatch || r.HeldOut != s.HeldOut {
			t.Fatalf("evaluation at step %d: resumed %+v, straight %+v", step, r, s)
		}
	}
	// A finished run has nothing to resume; nor has a run without checkpoints.
	if code, _, stderr := runCmd(t, time.Minute, "train", "--resume", out); code == 0 || !strings.Contains(stderr, "already finished") {
		t.Fatalf("resume of a finished run: exit %d, %s", code, stderr)
	}
	plain := filepath.Join(dir, "plain")
	pctx, pcancel := context.WithCancel(context.Background())
	go func() {
		done <- run(pctx, []string{"train", "--out", plain, "--hidden", "16", "--steps", "100000", "--log-every", "1"}, io.Discard, io.Discard)
	}()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if b, _ := os.ReadFile(filepath.Join(plain, "metrics.jsonl")); bytes.Count(b, []byte("\n")) >= 2 {
			break
		}
	}
	pcancel()
	<-done
	if code, _, stderr := runCmd(t, time.Minute, "train", "--resume", plain); code == 0 || !strings.Contains(stderr, "no complete checkpoint") {
		t.Fatalf("resume of a run without checkpoints: exit %d, %s", code, stderr)
	}
	if code, _, stderr := runCmd(t, time.Minute, "train", "--resume", filepath.Join(dir, "nosuch")); code == 0 || !strings.Contains(stderr, "no run directory") {
		t.Fatalf("resume of no run: exit %d, %s", code, stderr)
	}
}

// Nothing waits forever: a worker for a job that never appears gives up
// after --wait, and one whose NATS server goes away says so, keeps
// reconnecting, and gives up after --give-up; both exit non-zero.
func TestWorkerGivesUp(t *testing.T) {
	etcd := testenv.EtcdServer(t)
	ns := testenv.NATS(t, 0)
	ep := []string{"--nats", ns.ClientURL(), "--etcd", etcd.Clients[0].Addr().String()}
	ep[3] = "http://" + ep[3]
	start := time.Now()
	code, _, stderr := runCmd(t, time.Minute, append([]string{"worker", "--job", "nosuch", "--wait", "1s"}, ep...)...)
	if code != 1 || !strings.Contains(stderr, "job nosuch not found") || time.Since(start) > 20*time.Second {
		t.Fatalf("unknown job: exit %d after %v, %s", code, time.Since(start), stderr)
	}
	done := make(chan int, 1)
	var e syncBuffer
	// The first worker's watch, cancelled as it gave up, leaves the server
	// on its own time: count from none.
	for deadline := time.Now().Add(30 * time.Second); etcdWatchers() != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("etcd still holds %v watches", etcdWatchers())
		}
	}
	go func() {
		done <- run(context.Background(), append([]string{"worker", "--job", "nosuch", "--wait", "1m", "--give-up", "1s"}, ep...), io.Discard, &e)
	}()
	// Connected, and waiting for the job: watching etcd for its spec (the
	// embedded etcd's watchers, a gauge of this process's), then NATS goes
	// away.
	for deadline := time.Now().Add(30 * time.Second); etcdWatchers() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the worker was not waiting for its job within 30 s")
		}
	}
	ns.Shutdown()
	select {
	case code := <-done:
		if code != 1 || !strings.Contains(e.String(), "lost NATS; reconnecting") || !strings.Contains(e.String(), "NATS unreachable for 1s: giving up") {
			t.Fatalf("NATS gone: exit %d, %s", code, e.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not give up within 30s of NATS going away")
	}
}

// etcdWatchers is how many watches the etcd servers embedded in this
// process hold open.
func etcdWatchers() float64 {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() == "etcd_debugging_mvcc_watcher_total" {
			for _, m := range mf.GetMetric() {
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

// The distributed GAN update is a plain computation: a sync run of 2
// workers x 50 images and 2 shards ends with the parameters, bit for bit, of
// worker.GANReference, the same job in this process (per step, each rank's
// gradients on its batch, noise and masks, averaged as the shards average
// them, the job's optimizer applied at each block's clock): the authors'
// simultaneous update, and the alternating one with two D updates a step.
func TestGANSyncMatchesOneProcess(t *testing.T) {
	for _, c := range []struct {
		args []string
		k    int
	}{
		{nil, 1},
		{[]string{"--gan-update", "alternating", "--gan-k", "2"}, 2},
	} {
		if raceBuild && c.k > 1 {
			continue // the race pass has TestTrainGAN's alternating runs; this one is arithmetic
		}
		args := append([]string{"--preset", "gan", "--steps", "3", "--ps-shards", "2", "--eval-every", "0", "--log-every", "1"}, c.args...)
		got, meta := trainRun(t, filepath.Join(t.TempDir(), "run"), args...)
		spec, err := job.DecodeSpec(meta.Config)
		if err != nil {
			t.Fatal(err)
		}
		if spec.Workers != 2 || spec.Batch != 50 || spec.GANK != c.k || spec.Simultaneous() != (c.k == 1) {
			t.Fatalf("%v ran %d workers x %d, update %q, k %d", c.args, spec.Workers, spec.Batch, spec.GANUpdate, spec.GANK)
		}
		m, err := spec.OpenMNIST()
		if err != nil {
			t.Fatal(err)
		}
		ref := worker.NewGANReference(spec, shard.DealImages(m.Train, spec.Workers, spec.Seed))
		for step := range spec.Steps {
			ref.Step(step)
		}
		w, diff := ref.Params(), 0
		for i := range w {
			if i >= len(got) || w[i] != got[i] {
				diff++
			}
		}
		if diff > 0 || len(w) != len(got) {
			t.Fatalf("%v: %d of %d parameters differ from the one-process reference", c.args, diff, len(w))
		}
	}
}

// Without --out, a run's directory is runs/<job>-<time> in the working
// directory, named "gan" for a GAN job that keeps the default job name.
func TestDefaultRunDirectory(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, c := range []struct {
		args []string
		glob string
	}{
		{[]string{"--steps", "2"}, "runs/demo-*"},
		{[]string{"--model", "gan", "--steps", "2", "--eval-every", "0"}, "runs/gan-*"},
		{[]string{"--job", "mine", "--steps", "2"}, "runs/mine-*"},
	} {
		code, stdout, stderr := runCmd(t, 3*time.Minute, append([]string{"train", "--http", ""}, c.args...)...)
		if code != 0 {
			t.Fatalf("train %v: exit %d\n%s%s", c.args, code, stdout, stderr)
		}
		if m, _ := filepath.Glob(filepath.Join(c.glob, "checkpoint", "final.ckpt")); len(m) != 1 {
			t.Errorf("train %v: %d run directories %s with a final checkpoint", c.args, len(m), c.glob)
		}
	}
}

// The GAN reproduction's committed checkpoint (gzipped, as committed) scores
// what README.md's results table states for it under 'downpour eval': the
// paper's full Parzen estimate, its mean and standard error to the 0.1 the
// table rounds them to (eval is deterministic: the same checkpoint scores
// the same on every GEMM path to far better than that), on 10,000 samples
// and the 10,000 test images, with sigma one of the paper's 10 values
// logspaced in [0.1, 1].
func TestCommittedGANCheckpoint(t *testing.T) {
	if os.Getenv("DOWNPOUR_LONG") == "" {
		t.Skip("scores 10,000 samples on 10,000 test images: set DOWNPOUR_LONG=1 (CI does)")
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	stated := regexp.MustCompile(`Parzen log-likelihood \*\*([0-9.]+) ± ([0-9.]+)\*\*`).FindSubmatch(readme)
	if stated == nil {
		t.Fatal("README.md's results table states no Parzen log-likelihood for the committed GAN checkpoint")
	}
	code, o, e := runCmd(t, 5*time.Minute, "eval", "--checkpoint", filepath.Join("..", "..", "docs", "gan-mnist-paper.ckpt.gz"))
	got := regexp.MustCompile(`Parzen-window log-likelihood on the 10000 MNIST test images: ([0-9.-]+) ± ([0-9.]+) \(sigma ([0-9.]+), 10000 samples\)`).FindStringSubmatch(o)
	if code != 0 || got == nil {
		t.Fatalf("eval: exit %d, %q %q", code, o, e)
	}
	num := func(s []byte) float64 { f, _ := strconv.ParseFloat(string(s), 64); return f }
	for i, what := range []string{"mean", "standard error"} {
		if want, have := num(stated[i+1]), num([]byte(got[i+1])); math.Abs(want-have) > 0.05 {
			t.Errorf("%s %v, README.md states %v", what, have, want)
		}
	}
	sigma, onGrid := num([]byte(got[3])), false
	for i := range 10 {
		onGrid = onGrid || math.Abs(sigma-math.Pow(10, -1+float64(i)/9)) < 5e-5
	}
	if !onGrid {
		t.Errorf("sigma %v is none of the 10 values logspaced in [0.1, 1]", sigma)
	}
}
