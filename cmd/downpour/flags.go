package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/downpour-ml/downpour/internal/app/cluster"
	"github.com/downpour-ml/downpour/internal/config"
	"github.com/downpour-ml/downpour/internal/job"
)

// optimizerFlags are the flags of the shards' update rule. Flags not given
// keep the chosen optimizer's defaults.
type optimizerFlags struct {
	kind, schedule          string
	lr, decay, floor        float64
	halveAfter, halveEvery  int64
	momentum, momentumFinal float64
	rampStart, rampEnd      int64
	beta1, beta2, eps       float64
}

// defaultLR is each optimizer's learning rate when --lr is not given (sgd's
// suits the demo task).
var defaultLR = map[string]float64{"sgd": 1.5, "momentum": 0.1, "adagrad": 0.2, "adam": 0.003}

func (o *optimizerFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&o.kind, "optimizer", "sgd", "update rule on the shards: sgd, momentum, adagrad or adam")
	fs.Float64Var(&o.lr, "lr", 0, "learning rate (0: the optimizer's own, 1.5 for sgd, 0.1 momentum, 0.2 adagrad, 0.003 adam)")
	fs.StringVar(&o.schedule, "lr-schedule", "constant", "learning-rate schedule: constant, halving (the Seq2Seq paper's) or exp (the GAN code's)")
	fs.Int64Var(&o.halveAfter, "lr-halve-after", 0, "halving: updates before the first halving")
	fs.Int64Var(&o.halveEvery, "lr-halve-every", 1, "halving: updates between halvings")
	fs.Float64Var(&o.decay, "lr-decay", 1.000004, "exp: divide the rate by this after every update")
	fs.Float64Var(&o.floor, "lr-floor", 1e-6, "exp: never below this rate")
	fs.Float64Var(&o.momentum, "momentum", 0.9, "momentum: initial coefficient")
	fs.Float64Var(&o.momentumFinal, "momentum-final", 0.9, "momentum: coefficient after the ramp")
	fs.Int64Var(&o.rampStart, "momentum-ramp-start", 0, "momentum: update at which the linear ramp starts")
	fs.Int64Var(&o.rampEnd, "momentum-ramp-end", 0, "momentum: update at which the ramp reaches --momentum-final")
	fs.Float64Var(&o.beta1, "beta1", 0.9, "adam: first-moment decay")
	fs.Float64Var(&o.beta2, "beta2", 0.999, "adam: second-moment decay")
	fs.Float64Var(&o.eps, "eps", 1e-8, "adagrad, adam: denominator epsilon")
}

// optimizer applies the flags that were given to base (the spec's optimizer,
// from its defaults or a preset). Choosing another --optimizer starts from
// that optimizer's defaults.
func (o *optimizerFlags) optimizer(fs *flag.FlagSet, base job.Optimizer) job.Optimizer {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	opt := base
	if set["optimizer"] && o.kind != base.Kind {
		opt = job.DefaultOptimizer(o.kind, defaultLR[o.kind])
		opt.Schedule = base.Schedule
	}
	if set["lr"] && o.lr != 0 {
		opt.LR = o.lr
	}
	if set["lr-schedule"] {
		opt.Schedule = job.Schedule{}
		if o.schedule != "constant" {
			opt.Schedule.Kind = o.schedule
		}
	}
	switch opt.Schedule.Kind {
	case "halving":
		if set["lr-halve-after"] || set["lr-schedule"] {
			opt.Schedule.HalveAfter = o.halveAfter
		}
		if set["lr-halve-every"] || set["lr-schedule"] {
			opt.Schedule.HalveEvery = o.halveEvery
		}
	case "exp":
		if set["lr-decay"] || set["lr-schedule"] {
			opt.Schedule.Decay = o.decay
		}
		if set["lr-floor"] || set["lr-schedule"] {
			opt.Schedule.Floor = o.floor
		}
	}
	// Settings of other optimizers (a config file's, printed for one) are
	// not this one's.
	unused := unusedOptimizerFlags(opt)
	for _, f := range []struct {
		name     string
		dst, src *float64
	}{
		{"momentum", &opt.Momentum, &o.momentum}, {"momentum-final", &opt.MomentumFinal, &o.momentumFinal},
		{"beta1", &opt.Beta1, &o.beta1}, {"beta2", &opt.Beta2, &o.beta2}, {"eps", &opt.Eps, &o.eps},
	} {
		if set[f.name] && !slices.Contains(unused, f.name) {
			*f.dst = *f.src
		}
	}
	if opt.Kind == "momentum" {
		if set["momentum"] && !set["momentum-final"] {
			opt.MomentumFinal = o.momentum // a constant momentum unless a ramp is asked for
		}
		if set["momentum-ramp-start"] {
			opt.RampStart = o.rampStart
		}
		if set["momentum-ramp-end"] {
			opt.RampEnd = o.rampEnd
		}
	}
	return opt
}

// presetOf finds the preset a command line names, with --preset NAME (or
// -preset=NAME), or else its config file, with "preset: NAME": presets set the
// defaults that the other values then override, so they apply before
// parsing. A gan or synthetic model without a preset means that model's preset.
func presetOf(args []string, entries []config.Entry) string {
	inConfig := func(key string) string {
		for _, e := range entries {
			if e.Key == key {
				return e.Value
			}
		}
		return ""
	}
	if p := flagArg(args, "preset"); p != "" {
		return p
	}
	if p := inConfig("preset"); p != "" {
		return p
	}
	for _, p := range []string{"gan", job.Synthetic} { // a model whose preset it needs
		if m := flagArg(args, "model"); m == p || m == "" && inConfig("model") == p {
			return p
		}
	}
	return ""
}

// flagArg finds the value of flag name in args before they are parsed.
func flagArg(args []string, name string) string {
	for i, a := range args {
		for _, p := range []string{"--" + name, "-" + name} {
			if a == p && i+1 < len(args) {
				return args[i+1]
			}
			if v, ok := strings.CutPrefix(a, p+"="); ok {
				return v
			}
		}
	}
	return ""
}

// jobFlags are the flags that define a job: the spec's fields, its
// optimizer, a preset and a config file.
type jobFlags struct {
	fs      *flag.FlagSet
	spec    *job.Spec
	opt     optimizerFlags
	config  string         // --config path
	entries []config.Entry // its keys
	err     error          // a bad preset or config file, reported by parse
	print   *bool          // --print-config
}

// specFlags binds the job spec's fields to flags, starting from the defaults
// (and the preset that args or their config file name, if any). Bind the
// command's other flags, then call parse and finish.
func specFlags(fs *flag.FlagSet, s *job.Spec, args []string) *jobFlags {
	j := &jobFlags{fs: fs, spec: s, config: flagArg(args, "config")}
	if j.config != "" {
		j.entries, j.err = config.Read(j.config)
	}
	if preset := presetOf(args, j.entries); preset != "" && j.err == nil {
		if apply, ok := job.Presets[preset]; ok {
			apply(s)
		} else {
			j.err = fmt.Errorf("preset %q: use one of %s", preset, strings.Join(configRules.Choices["preset"], ", "))
		}
	}
	fs.String("config", "", "read the job from this YAML file, whose keys are these flags (\"ps-shards: 4\"); flags given beside it override it")
	j.print = fs.Bool("print-config", false, "print the effective job as a YAML config file and exit")
	fs.String("preset", "", "start from a named set of values, which other flags override: paper (Sutskever et al.'s exact settings, for a real corpus and cluster), small, gan, or synthetic (the load model)")
	fs.Float64Var(&s.Epochs, "epochs", s.Epochs, "corpus: train this many epochs (sets --steps)")
	fs.Float64Var(&s.HalveAfterEpochs, "lr-halve-after-epochs", s.HalveAfterEpochs, "corpus: halving schedule, epochs before the first halving")
	fs.Float64Var(&s.HalveEveryEpochs, "lr-halve-every-epochs", s.HalveEveryEpochs, "corpus: halving schedule, epochs between halvings (0: schedule in updates)")
	fs.IntVar(&s.TgtVocab, "tgt-vocab", s.TgtVocab, "corpus: words in the target vocabulary (0: as --vocab)")
	fs.StringVar(&s.Name, "job", s.Name, "job name (letters, digits, '_' and '-')")
	fs.StringVar(&s.Model, "model", s.Model, "model to train: seq2seq; gan (which starts from --preset gan); or synthetic, the load model for measuring the system at scale (--preset synthetic)")
	fs.IntVar(&s.GANK, "gan-k", s.GANK, "gan: discriminator updates per generator update (alternating update)")
	fs.Var(choice{&s.GANUpdate, []string{job.Simultaneous, job.Alternating}}, "gan-update",
		"gan: simultaneous (the authors': D's and G's gradients from one forward pass, applied together) or alternating (--gan-k D updates, then G's through the updated D)")
	fs.IntVar(&s.GAN.Noise, "gan-noise", s.GAN.Noise, "gan: dimensions of the generator's noise input (the paper's: 100)")
	fs.IntVar(&s.GAN.GHidden, "gan-g-hidden", s.GAN.GHidden, "gan: units in each of the generator's two ReLU layers (the paper's: 1200)")
	fs.IntVar(&s.GAN.DUnits, "gan-d-units", s.GAN.DUnits, "gan: maxout units in each of the discriminator's two hidden layers (the paper's: 240)")
	fs.IntVar(&s.GAN.DPieces, "gan-d-pieces", s.GAN.DPieces, "gan: pieces per maxout unit (the paper's: 5)")
	fs.IntVar(&s.Synthetic.Params, "synthetic-params", s.Synthetic.Params, "synthetic: parameters (floats) of the load model")
	fs.IntVar(&s.Synthetic.NumTensors, "synthetic-tensors", s.Synthetic.NumTensors, "synthetic: tensors the parameters are split into")
	fs.Float64Var(&s.Synthetic.StepMs, "step-ms", s.Synthetic.StepMs, "synthetic: milliseconds each step stands for (the worker waits instead of computing)")
	fs.BoolVar(&s.Minimax, "minimax", s.Minimax, "gan: train G on the paper's minimax loss log(1-D(G(z))) instead of the non-saturating -log D(G(z))")
	fs.BoolVar(&s.ParzenFull, "parzen-full", s.ParzenFull, "gan: every evaluation is the paper's full Parzen-window estimate (10,000 samples, sigma on validation, the 10,000 test images; about 10 s) instead of the 1,000-sample monitor on validation images")
	fs.StringVar(&s.MNIST, "mnist", s.MNIST, "gan: directory of MNIST's idx files (default: the GoMNIST Go module, or $DOWNPOUR_MNIST)")
	fs.StringVar(&s.Data, "data", s.Data, "training data: a parallel corpus file (source<TAB>target lines; with --data-target, the source side of two aligned files), synthetic:copy|reverse|sort|translate, or synthetic:wmt")
	fs.StringVar(&s.DataTarget, "data-target", s.DataTarget, "the target side of aligned files, line i the translation of line i of --data (as WMT ships them: --data train.en --data-target train.fr)")
	fs.IntVar(&s.MinLen, "min-len", s.MinLen, "synthetic: shortest source sequence")
	fs.IntVar(&s.MaxLen, "max-len", s.MaxLen, "synthetic: longest source sequence")
	fs.BoolVar(&s.Reverse, "reverse", s.Reverse, "feed source sentences reversed (the paper's trick; --reverse=false for the ablation)")
	fs.IntVar(&s.VocabMax, "vocab", s.VocabMax, "corpus: words per vocabulary (most frequent first; the rest become <unk>)")
	fs.StringVar(&s.Tokenizer, "tokenizer", s.Tokenizer, "corpus: split on spaces, or 13a (mteval's tokenizer)")
	fs.IntVar(&s.HeldOut, "held-out", s.HeldOut, "examples set aside for evaluation")
	fs.Int64Var(&s.EvalEvery, "eval-every", s.EvalEvery, "evaluate held-out loss, BLEU and exact match every N steps (0: only at the end)")
	fs.IntVar(&s.Seq2Seq.Embed, "embed", s.Seq2Seq.Embed, "embedding size")
	fs.IntVar(&s.Seq2Seq.Hidden, "hidden", s.Seq2Seq.Hidden, "LSTM hidden size")
	fs.IntVar(&s.Seq2Seq.Layers, "layers", s.Seq2Seq.Layers, "LSTM layers in the encoder and in the decoder")
	fs.IntVar(&s.Seq2Seq.SoftmaxBlocks, "softmax-blocks", s.Seq2Seq.SoftmaxBlocks, "cut the output softmax into this many blocks of the target vocabulary, each its own weights, combined in block order: a softmax split over processes by whole blocks then computes the same bits (0 or 1: one block)")
	fs.Uint64Var(&s.Seed, "seed", s.Seed, "seed of initialisation and data")
	fs.StringVar(&s.InitFrom, "init-from", s.InitFrom, "start from this checkpoint's parameters (a final.ckpt, gzipped or not, of a model of the same shape; every ps shard reads it) instead of the seed's, with the optimizer's state and schedules new")
	fs.Int64Var(&s.Steps, "steps", s.Steps, "training steps")
	fs.IntVar(&s.Workers, "workers", s.Workers, "workers (model replicas), one rank each (a replica laid out over --stages: one rank a seat)")
	fs.IntVar(&s.Stages, "stages", s.Stages, "seq2seq: lay each replica out over this many stages, the paper's layout (layer l of the encoder and decoder on stage l*stages/layers, the embeddings on stage 0), each its own worker; needs --softmax-slices (0: a replica is one worker)")
	fs.IntVar(&s.SoftmaxSlices, "softmax-slices", s.SoftmaxSlices, "with --stages: split the output softmax over this many workers of each replica, whole --softmax-blocks each (the paper: 4)")
	fs.IntVar(&s.Shards, "ps-shards", s.Shards, "parameter-server shards")
	fs.IntVar(&s.PSReplicas, "ps-replicas", s.PSReplicas, "shards holding each parameter block: a primary and N-1 backups, so that a shard's death is handed over to a backup instead of rolled back (0 or 1: one copy)")
	fs.IntVar(&s.BlockSize, "block-size", s.BlockSize, "floats per parameter block")
	fs.IntVar(&s.Batch, "batch", s.Batch, "examples per worker per step (0: the worker's share of --global-batch)")
	fs.IntVar(&s.GlobalBatch, "global-batch", s.GlobalBatch, "examples per step over all workers, the batch the optimizer sees, split evenly over --workers (0: --batch x --workers)")
	fs.StringVar(&s.Mode, "mode", s.Mode, "consistency mode: sync, ssp or async")
	fs.Int64Var(&s.Staleness, "staleness", s.Staleness, "ssp: how many steps the fastest worker may run ahead of the slowest")
	fs.Int64Var(&s.NFetch, "n-fetch", s.NFetch, "async: pull parameters every N steps")
	fs.Int64Var(&s.NPush, "n-push", s.NPush, "async: push the summed gradients every N steps")
	fs.StringVar(&s.NonFinite, "non-finite", s.NonFinite, "what shards do with a NaN/Inf gradient: refuse the push, or skip its update")
	fs.Int64Var(&s.TaskSteps, "task-steps", s.TaskSteps, "async, ssp: hand the data out as tasks of N steps of one data shard, so that workers may come and go (0: a data shard per rank)")
	fs.Int64Var(&s.TaskTimeout, "task-timeout", s.TaskTimeout, "async, ssp: seconds a worker has for a task before it goes to another")
	fs.IntVar(&s.TaskAttempts, "task-attempts", s.TaskAttempts, "async, ssp: times a task is given out before it counts as failed")
	fs.Int64Var(&s.CheckpointEvery, "checkpoint-every", s.CheckpointEvery, "every shard snapshots its state every N steps (sync), or N data steps done (async and ssp, with tasks); 0: never")
	fs.IntVar(&s.KeepCheckpoints, "keep-checkpoints", s.KeepCheckpoints, "every shard keeps the snapshots of the newest N checkpoints on disk and deletes older ones (0: keep all)")
	fs.Float64Var(&s.ClipNorm, "clip", s.ClipNorm, "rescale the gradient to this global norm when larger (0: never)")
	fs.BoolVar(&s.DenseTransfer, "dense-transfer", s.DenseTransfer, "seq2seq: push and pull the embedding tables whole every step, not only the rows the batches use (same parameters, more traffic: for comparison)")
	fs.Int64Var(&s.LogEvery, "log-every", s.LogEvery, "log every N steps")
	j.opt.bind(fs)
	return j
}

// parse applies the config file, then the command line over it.
func (j *jobFlags) parse(args []string, stderr io.Writer, example string) error {
	if j.err == nil {
		j.err = configRules.Apply(j.fs, j.config, j.entries)
	}
	if j.err != nil {
		fmt.Fprintf(stderr, "downpour %s: %v\n", j.fs.Name(), j.err)
		return errUsage
	}
	return parse(j.fs, args, stderr, example)
}

// finish merges the optimizer flags into the spec and settles its batch
// (job.Spec.SettleBatch, with the batches the flags and config stated);
// call it after parse.
func (j *jobFlags) finish() {
	j.spec.Optimizer = j.opt.optimizer(j.fs, j.spec.Optimizer)
	set := map[string]bool{}
	j.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	j.spec.SettleBatch(job.Stated{Batch: set["batch"], GlobalBatch: set["global-batch"]})
}

// printConfig writes the effective job (after finish) as a config file:
// given back with --config, it makes the same job.
func (j *jobFlags) printConfig(w io.Writer) error {
	o := j.spec.Optimizer
	sched := o.Schedule.Kind
	if sched == "" {
		sched = "constant"
	}
	// The batches as a file states them (job.Spec.FileBatch).
	batch, global := j.spec.FileBatch()
	for name, v := range map[string]int{"batch": batch, "global-batch": global} {
		if err := j.fs.Set(name, strconv.Itoa(v)); err != nil {
			return fmt.Errorf("printing the config: %s: %w", name, err)
		}
	}
	// The optimizer's flags default to "the optimizer's own value": set
	// them to the values in effect, and leave out those of optimizers and
	// schedules not in use, so that a file whose optimizer is changed gets
	// the new one's defaults. A learning rate that is the optimizer's own
	// is printed as 0 (the flag's "the optimizer's own") for the same
	// reason.
	lr := formatFloat(o.LR)
	if o.LR == defaultLR[o.Kind] {
		lr = "0"
	}
	rules := configRules
	rules.Skip = maps.Clone(configRules.Skip)
	for _, k := range unusedOptimizerFlags(o) {
		rules.Skip[k] = true
	}
	if j.spec.Model != "gan" { // the networks' sizes come from the gan preset when the model changes
		for _, k := range []string{"gan-noise", "gan-g-hidden", "gan-d-units", "gan-d-pieces"} {
			rules.Skip[k] = true
		}
	}
	if j.spec.Model != job.Synthetic { // likewise the load model's
		for _, k := range []string{"synthetic-params", "synthetic-tensors", "step-ms"} {
			rules.Skip[k] = true
		}
	}
	for _, kv := range [][2]string{
		{"optimizer", o.Kind}, {"lr", lr}, {"lr-schedule", sched},
		{"lr-halve-after", strconv.FormatInt(o.Schedule.HalveAfter, 10)}, {"lr-halve-every", strconv.FormatInt(o.Schedule.HalveEvery, 10)},
		{"lr-decay", formatFloat(o.Schedule.Decay)}, {"lr-floor", formatFloat(o.Schedule.Floor)},
		{"momentum", formatFloat(o.Momentum)}, {"momentum-final", formatFloat(o.MomentumFinal)},
		{"momentum-ramp-start", strconv.FormatInt(o.RampStart, 10)}, {"momentum-ramp-end", strconv.FormatInt(o.RampEnd, 10)},
		{"beta1", formatFloat(o.Beta1)}, {"beta2", formatFloat(o.Beta2)}, {"eps", formatFloat(o.Eps)},
	} {
		if err := j.fs.Set(kv[0], kv[1]); err != nil {
			return fmt.Errorf("printing the config: %s: %w", kv[0], err)
		}
	}
	return rules.Write(w, j.fs, fmt.Sprintf("downpour %s: run this job with 'downpour %s --config FILE'", j.fs.Name(), j.fs.Name()))
}

// unusedOptimizerFlags are the flags of the optimizers and learning-rate
// schedules that o does not use.
func unusedOptimizerFlags(o job.Optimizer) []string {
	var unused []string
	if o.Kind != "momentum" {
		unused = append(unused, "momentum", "momentum-final", "momentum-ramp-start", "momentum-ramp-end")
	}
	if o.Kind != "adam" {
		unused = append(unused, "beta1", "beta2")
	}
	if o.Kind != "adam" && o.Kind != "adagrad" {
		unused = append(unused, "eps")
	}
	if o.Schedule.Kind != "halving" {
		unused = append(unused, "lr-halve-after", "lr-halve-every")
	}
	if o.Schedule.Kind != "exp" {
		unused = append(unused, "lr-decay", "lr-floor")
	}
	return unused
}

// endpoints are the cluster flags every role has: where the cluster is and
// how to log in (cluster.Endpoints), and how the role logs and serves.
type endpoints struct {
	cluster.Endpoints
	giveUp    time.Duration
	verbose   bool
	logFormat string
	http      string // the roles' dashboard and metrics address ("" for none)
	profile   string // where a role writes its CPU profile ("" for none)
}

func endpointFlags(fs *flag.FlagSet, e *endpoints) {
	fs.StringVar(&e.NATS, "nats", "", "NATS server URL(s), comma-separated (e.g. nats://127.0.0.1:4222)")
	fs.StringVar(&e.Etcd, "etcd", "", "etcd endpoint(s), comma-separated (e.g. http://127.0.0.1:2379)")
	fs.DurationVar(&e.Timeout, "connect-timeout", 5*time.Second, "how long to wait for NATS and etcd to answer")
	fs.DurationVar(&e.giveUp, "give-up", 2*time.Minute, "how long to keep reconnecting to NATS before giving up with an error")
	fs.StringVar(&e.CredsFile, "creds", "", "this role's NATS credentials file (made by 'downpour creds'), where the NATS servers require them")
	fs.StringVar(&e.TLSCA, "tls-ca", "", "connect to NATS and etcd over TLS, trusting only this authority (ca.pem made by 'downpour certs')")
	logFlags(fs, e)
}

// logFlags binds the logging flags.
func logFlags(fs *flag.FlagSet, e *endpoints) {
	fs.BoolVar(&e.verbose, "v", false, "log every role's progress (info level)")
	e.logFormat = "text"
	fs.Var(choice{&e.logFormat, []string{"text", "json"}}, "log-format", "log lines as text (key=value) or json (one object per line)")
}

// choice is a string flag that takes one of a few words.
type choice struct {
	v       *string
	allowed []string
}

func (c choice) String() string {
	if c.v == nil {
		return ""
	}
	return *c.v
}

func (c choice) Set(s string) error {
	if !slices.Contains(c.allowed, s) {
		return fmt.Errorf("use %s", strings.Join(c.allowed, " or "))
	}
	*c.v = s
	return nil
}

func (c choice) Get() any { return c.String() }

// httpFlag binds --http, the address a role serves its dashboard and
// Prometheus metrics on.
func httpFlag(fs *flag.FlagSet, e *endpoints) {
	fs.StringVar(&e.http, "http", "127.0.0.1:0", "serve the dashboard and Prometheus metrics (/metrics) on this address (port 0: any free port; empty: none)")
}

// profileFlag binds --cpuprofile, for the roles that join a cluster (join
// runs the profile).
func profileFlag(fs *flag.FlagSet, e *endpoints) {
	fs.StringVar(&e.profile, "cpuprofile", "", "write this process's CPU profile here when it ends (read it with 'go tool pprof')")
}

func (e *endpoints) require(cmd string, stderr io.Writer) error {
	if e.NATS == "" || e.Etcd == "" {
		fmt.Fprintf(stderr, "downpour %s: needs --nats and --etcd (start a local pair with 'downpour servers')\n", cmd)
		return errUsage
	}
	return nil
}

func (e *endpoints) logger(stderr io.Writer) *slog.Logger {
	level := slog.LevelWarn
	if e.verbose {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if e.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(stderr, opts))
	}
	return slog.New(slog.NewTextHandler(stderr, opts))
}

// startDashboard serves d on e.http (when set) and says where on stdout.
func (e *endpoints) startDashboard(ctx context.Context, d *dashboard, stdout io.Writer, log *slog.Logger) (stop func(), err error) {
	if e.http == "" {
		return func() {}, nil
	}
	url, stop, err := serveDashboard(ctx, e.http, d, log)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(stdout, "dashboard: %s  (Prometheus metrics: %smetrics)\n", url, url)
	return stop, nil
}
