package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/models"
)

// trainSpec is the job a train command line defines (before Resolve), or the
// usage error it gets.
func trainSpec(t *testing.T, args ...string) (job.Spec, string, error) {
	t.Helper()
	tf := newTrainFlags(args)
	var stderr bytes.Buffer
	if err := tf.jf.parse(args, &stderr, ""); err != nil {
		return job.Spec{}, stderr.String(), err
	}
	tf.jf.finish()
	return tf.spec, "", nil
}

func mustSpec(t *testing.T, args ...string) job.Spec {
	t.Helper()
	s, msg, err := trainSpec(t, args...)
	if err != nil {
		t.Fatalf("%v: %v %s", args, err, msg)
	}
	return s
}

// --print-config writes a file that, given back with --config, makes the
// same job, field for field; printing that job again gives the same text.
func TestPrintConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	for i, args := range [][]string{
		nil,
		{"--preset", "gan"},
		{"--preset", "paper", "--data", "corpus.tsv", "--workers", "8"},
		{"--preset", "small", "--data", "c.tsv", "--lr", "0.25"},
		{"--optimizer", "adam", "--lr", "0.001", "--beta2", "0.98", "--mode", "async", "--n-fetch", "3"},
		{"--optimizer", "momentum", "--momentum", "0.6", "--momentum-final", "0.95", "--momentum-ramp-end", "40"},
		{"--lr-schedule", "halving", "--lr-halve-after", "100", "--lr-halve-every", "7"},
		{"--lr-schedule", "exp", "--lr-decay", "1.01", "--lr-floor", "0.003", "--job", "x-1", "--connect-timeout", "9s"},
		{"--mode", "ssp", "--staleness", "3", "--data", "synthetic:sort", "--v", "--seed", "18446744073709551615"},
		{"--layers", "4", "--stages", "2", "--softmax-slices", "3", "--softmax-blocks", "6"},
		{"--ps-shards", "3", "--ps-replicas", "2"},
	} {
		want := mustSpec(t, args...)
		code, printed, stderr := runCmd(t, 10*time.Second, append([]string{"train", "--print-config"}, args...)...)
		if code != 0 {
			t.Fatalf("%v --print-config: exit %d: %s", args, code, stderr)
		}
		path := filepath.Join(dir, "job.yaml")
		if err := os.WriteFile(path, []byte(printed), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := mustSpec(t, "--config", path); !reflect.DeepEqual(got, want) {
			t.Fatalf("case %d %v: the printed config gives\n%+v\nwant\n%+v\nconfig:\n%s", i, args, got, want, printed)
		}
		_, again, _ := runCmd(t, 10*time.Second, "train", "--print-config", "--config", path)
		if again != printed {
			t.Fatalf("case %d: printing the loaded config changed it:\n%s\nwas\n%s", i, again, printed)
		}
	}
}

// A printed config names only the settings of the optimizer and schedule in
// use, so that changing its optimizer line gives the new optimizer with its
// own defaults (its learning rate too, where the old one's was its default).
func TestPrintConfigChangeOptimizer(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args     []string
		from, to string
		absent   []string
		want     job.Optimizer
	}{
		{nil, "optimizer: sgd", "optimizer: adam", []string{"beta1:", "beta2:", "eps:", "momentum:", "lr-decay:", "lr-halve-after:"},
			job.DefaultOptimizer("adam", 0.003)},
		{[]string{"--optimizer", "adam", "--beta2", "0.98"}, "optimizer: adam", "optimizer: adagrad", []string{"momentum:", "lr-decay:"},
			job.DefaultOptimizer("adagrad", 0.2)},
		{[]string{"--lr", "0.5"}, "optimizer: sgd", "optimizer: momentum", []string{"eps:"},
			job.Optimizer{Kind: "momentum", LR: 0.5, Momentum: 0.9, MomentumFinal: 0.9}},
	} {
		code, printed, stderr := runCmd(t, 10*time.Second, append([]string{"train", "--print-config"}, c.args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", c.args, code, stderr)
		}
		for _, key := range c.absent {
			if strings.Contains(printed, "\n"+key) {
				t.Errorf("%v: the printed config sets %s, which its optimizer does not use:\n%s", c.args, key, printed)
			}
		}
		if !strings.Contains(printed, c.from) {
			t.Fatalf("%v: no %q in\n%s", c.args, c.from, printed)
		}
		path := filepath.Join(dir, "job.yaml")
		if err := os.WriteFile(path, []byte(strings.Replace(printed, c.from, c.to, 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		s := mustSpec(t, "--config", path)
		if !reflect.DeepEqual(s.Optimizer, c.want) {
			t.Errorf("%v with %q: optimizer %+v, want %+v", c.args, c.to, s.Optimizer, c.want)
		}
		if err := s.Optimizer.Validate(); err != nil {
			t.Errorf("%v with %q: %v", c.args, c.to, err)
		}
	}
}

// Flags given beside a config file override it; the file overrides the
// preset it names.
func TestFlagsOverrideConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "job.yaml")
	os.WriteFile(path, []byte("preset: small\nsteps: 50\nlayers: 3\ndata: c.tsv\noptimizer: adam\n"), 0o600)
	s := mustSpec(t, "--config", path, "--steps", "70")
	if s.Steps != 70 || s.Seq2Seq.Layers != 3 || s.Seq2Seq.Hidden != 256 || s.Optimizer.Kind != "adam" || s.Data != "c.tsv" {
		t.Fatalf("steps %d layers %d hidden %d optimizer %s data %s; want 70 (flag), 3 (file), 256 (preset), adam, c.tsv",
			s.Steps, s.Seq2Seq.Layers, s.Seq2Seq.Hidden, s.Optimizer.Kind, s.Data)
	}
	// A preset on the command line wins over the file's.
	if s := mustSpec(t, "--config", path, "--preset", "paper"); s.Seq2Seq.Hidden != 1000 || s.Seq2Seq.Layers != 3 {
		t.Fatalf("hidden %d layers %d: want the paper preset's 1000 and the file's 3", s.Seq2Seq.Hidden, s.Seq2Seq.Layers)
	}
	// A gan model in the file means the gan preset, as --model gan does.
	os.WriteFile(path, []byte("model: gan\n"), 0o600)
	if s := mustSpec(t, "--config", path); s.GAN != models.PaperGAN || s.Batch != 50 || s.GlobalBatch != 100 || s.Optimizer.Kind != "momentum" {
		t.Fatalf("model: gan in a file did not start from the gan preset: %+v", s)
	}
}

// Unknown keys and bad values are usage errors (exit 2) that name the key,
// its line, and what is allowed.
func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		file string
		says []string
	}{
		{"steps: 10\nps_shards: 4\n", []string{"line 2", `unknown key "ps_shards"`, `did you mean "ps-shards"`}},
		{"frobnicate: 1\n", []string{`unknown key "frobnicate"`, "downpour train --help"}},
		{"workers: two\n", []string{"line 1", "workers", `"two" is not an integer`}},
		{"lr: fast\n", []string{"lr", "is not a number"}},
		{"reverse: maybe\n", []string{"reverse", "true or false"}},
		{"connect-timeout: 5\n", []string{"connect-timeout", "a duration"}},
		{"mode: bsp\n", []string{"mode", `"bsp" is not allowed`, "sync, ssp, async"}},
		{"optimizer: lamb\n", []string{"optimizer", "sgd, momentum, adagrad, adam"}},
		{"preset: huge\n", []string{"preset", "gan, paper, small"}},
		{"steps: 1\nsteps: 2\n", []string{"line 2", `"steps" is already set on line 1`}},
		{"workers: [1, 2]\n", []string{"workers", "a single value"}},
		{"optimizer:\n  kind: sgd\n", []string{"optimizer", "a single value"}},
		{"steps:\n", []string{"steps", "no value"}},
		{"- steps\n- 3\n", []string{"a mapping of flag names"}},
		{"steps: 1\n---\nsteps: 2\n", []string{"more than one YAML document"}},
		{"steps: [\n", []string{"not valid YAML"}},
		{"config: other.yaml\n", []string{`unknown key "config"`}},
		{"workers: 0\n", []string{"workers must be in 1..1024 (got 0)"}},
	} {
		path := filepath.Join(dir, "bad.yaml")
		os.WriteFile(path, []byte(c.file), 0o600)
		code, _, stderr := runCmd(t, 10*time.Second, "train", "--config", path, "--out", filepath.Join(dir, "run"))
		if code != 2 {
			t.Errorf("%q: exit %d, want 2 (stderr %q)", c.file, code, stderr)
		}
		for _, s := range c.says {
			if !strings.Contains(stderr, s) {
				t.Errorf("%q: stderr %q does not say %q", c.file, stderr, s)
			}
		}
	}
	code, _, stderr := runCmd(t, 10*time.Second, "train", "--config", filepath.Join(dir, "missing.yaml"))
	if code != 2 || !strings.Contains(stderr, "missing.yaml") {
		t.Errorf("a missing config: exit %d, %q", code, stderr)
	}
	// An empty file, or one of comments, sets nothing.
	for _, empty := range []string{"", "# nothing\n"} {
		os.WriteFile(filepath.Join(dir, "e.yaml"), []byte(empty), 0o600)
		if s := mustSpec(t, "--config", filepath.Join(dir, "e.yaml")); !reflect.DeepEqual(s, mustSpec(t)) {
			t.Errorf("%q changed the job", empty)
		}
	}
}

// The example configs are the papers' settings, stated in the files' own
// words, and valid jobs.
func TestExampleConfigs(t *testing.T) {
	paper := mustSpec(t, "--config", "../../examples/seq2seq-paper.yaml")
	small := mustSpec(t, "--config", "../../examples/seq2seq-small.yaml")
	gan := mustSpec(t, "--config", "../../examples/gan-mnist-paper.yaml")
	for name, s := range map[string]job.Spec{"paper": paper, "small": small, "gan": gan} {
		if err := s.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	sgd07 := job.DefaultOptimizer("sgd", 0.7)
	for _, c := range []struct {
		name string
		s    job.Spec
		ok   bool
	}{
		{"paper", paper, paper.Seq2Seq.Layers == 4 && paper.Seq2Seq.Hidden == 1000 && paper.Seq2Seq.Embed == 1000 &&
			paper.Seq2Seq.InitScale == 0.08 && paper.VocabMax == 160000 && paper.TgtVocab == 80000 && paper.GlobalBatch == 128 && paper.Batch == 16 &&
			paper.Optimizer == sgd07 && paper.Epochs == 7.5 && paper.HalveAfterEpochs == 5 && paper.HalveEveryEpochs == 0.5 &&
			paper.ClipNorm == 5 && paper.Reverse && paper.Tokenizer == "13a"},
		{"small", small, small.Seq2Seq.Layers == 2 && small.Seq2Seq.Hidden == 256 && small.Seq2Seq.Embed == 256 &&
			small.VocabMax == 8000 && small.Batch == 64 && small.Optimizer == sgd07 && small.Epochs == 7.5 && small.ClipNorm == 5 && small.Reverse},
		{"gan", gan, gan.Model == "gan" && gan.GAN == models.PaperGAN && gan.GlobalBatch == 100 && gan.Batch == 50 && gan.GANK == 1 &&
			gan.GANUpdate == job.Simultaneous && gan.Epochs == 250 &&
			gan.Optimizer == job.Optimizer{Kind: "momentum", LR: 0.1, Momentum: 0.5, MomentumFinal: 0.7,
				Schedule: job.Schedule{Kind: "exp", Decay: 1.000004, Floor: 1e-6}} &&
			gan.RampStartEpochs == 1 && gan.RampEndEpochs == 250},
	} {
		if !c.ok {
			t.Errorf("examples: the %s config is not the paper's settings: %+v", c.name, c.s)
		}
	}
}

// Every command has --help with an example (exit 0), and a bad flag prints
// usage on stderr and exits 2.
func TestEveryCommandHelp(t *testing.T) {
	for _, c := range commands {
		code, _, stderr := runCmd(t, 10*time.Second, c.name, "--help")
		_, example, _ := strings.Cut(stderr, "example:\n  ")
		example, _, _ = strings.Cut(example, "\n")
		if code != 0 || !strings.Contains(stderr, "usage: downpour "+c.name) || !strings.Contains(example, "downpour "+c.name+" ") {
			t.Errorf("%s --help: exit %d, %q", c.name, code, stderr)
		}
		code, _, stderr = runCmd(t, 10*time.Second, c.name, "--no-such-flag")
		if code != 2 || !strings.Contains(stderr, "flag provided but not defined") || !strings.Contains(stderr, "usage: downpour "+c.name) {
			t.Errorf("%s --no-such-flag: exit %d, %q", c.name, code, stderr)
		}
	}
}

// A global batch is split over the workers; a per-worker batch given on its
// own replaces a preset's global one; both given must agree; a count of
// workers that does not divide the global batch is refused with the counts
// that do. --print-config keeps the global batch when the workers change.
func TestGlobalBatch(t *testing.T) {
	for _, c := range []struct {
		args          []string
		batch, global int
	}{
		{[]string{"--preset", "gan"}, 50, 100},
		{[]string{"--preset", "gan", "--workers", "4"}, 25, 100},
		{[]string{"--preset", "gan", "--workers", "1"}, 100, 100},
		{[]string{"--preset", "gan", "--batch", "70"}, 70, 0},
		{[]string{"--preset", "gan", "--global-batch", "200", "--workers", "4"}, 50, 200},
		{[]string{"--preset", "gan", "--global-batch", "200", "--batch", "100"}, 100, 200},
		{[]string{"--preset", "paper", "--data", "c.tsv", "--workers", "8"}, 16, 128},
		{[]string{"--global-batch", "96", "--workers", "3"}, 32, 96},
		{[]string{"--batch", "7"}, 7, 0},
	} {
		s := mustSpec(t, c.args...)
		if s.Batch != c.batch || s.GlobalBatch != c.global {
			t.Errorf("%v: batch %d, global batch %d; want %d, %d", c.args, s.Batch, s.GlobalBatch, c.batch, c.global)
		}
		if err := s.Validate(); err != nil && !strings.Contains(err.Error(), "data") {
			t.Errorf("%v: %v", c.args, err)
		}
	}
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"--preset", "gan", "--workers", "3"}, "global batch 100 does not split evenly over 3 workers: use 1, 2, 4, 5, 10, 20, 25, 50 or 100 workers"},
		{[]string{"--preset", "gan", "--workers", "7"}, "over 7 workers"},
		{[]string{"--preset", "gan", "--global-batch", "200", "--batch", "50"}, "batch 50 per worker x 2 workers is 100 examples a step, not the global batch 200"},
		{[]string{"--global-batch", "7", "--workers", "2"}, "use 1 or 7 workers"},
		{[]string{"--global-batch", "-1"}, "global batch must not be negative"},
	} {
		code, _, stderr := runCmd(t, time.Minute, append([]string{"train", "--out", filepath.Join(dir, "x")}, c.args...)...)
		if code != 2 || !strings.Contains(stderr, c.says) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", c.args, code, stderr, c.says)
		}
	}
	code, printed, stderr := runCmd(t, 10*time.Second, "train", "--print-config", "--preset", "gan")
	if code != 0 || !strings.Contains(printed, "\nbatch: 0 ") || !strings.Contains(printed, "\nglobal-batch: 100 ") {
		t.Fatalf("print-config: exit %d %s\n%s", code, stderr, printed)
	}
	path := filepath.Join(dir, "gan.yaml")
	if err := os.WriteFile(path, []byte(strings.Replace(printed, "\nworkers: 2 ", "\nworkers: 4 ", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if s := mustSpec(t, "--config", path); s.Workers != 4 || s.Batch != 25 || s.GlobalBatch != 100 {
		t.Fatalf("printed config with 4 workers: %d workers of %d, global %d", s.Workers, s.Batch, s.GlobalBatch)
	}
}
