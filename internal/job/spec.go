// Package job is the job's contract: what every role of a downpour job
// agrees on, and nothing of any role's own. It holds the job's Spec (model,
// data, optimizer, consistency mode, sizes; its JSON form is written once
// by the coordinator) with its presets, checks and batch rule
// (SettleBatch); the Placement of the model's parameter blocks on the
// shards (Place, Reshard) and the consistency modes; and what a shard runs
// by (ShardConfig, Optimizer, Schedule). It imports no role: the
// coordinator, the workers and the parameter servers import it.
package job

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/shard"
)

// Spec is a training job, as the coordinator writes it to etcd.
type Spec struct {
	Name    string               `json:"name"`
	Model   string               `json:"model"` // "seq2seq", "gan" or "synthetic"
	Seq2Seq models.Seq2SeqConfig `json:"seq2seq"`
	// Data is "synthetic:<copy|reverse|sort|translate|wmt>" or the path of a parallel
	// corpus (source<TAB>target lines) that every worker can read; with
	// DataTarget, the source side of two aligned files (line i of one the
	// translation of line i of the other, as WMT ships them).
	Data       string `json:"data"`
	DataTarget string `json:"data_target,omitempty"`
	DataCRC    uint32 `json:"data_crc,omitempty"` // CRC32C of a corpus (of aligned files: of their two CRC32Cs), set by the coordinator
	// CorpusDigest names the corpus's summary (its counts and
	// vocabularies, shard.CorpusSummary), which the coordinator counts
	// once and stores with the job (Corpus); EpochSteps is the steps of
	// an epoch of data shard 0. Both are set by Resolve.
	CorpusDigest string `json:"corpus_digest,omitempty"`
	EpochSteps   int64  `json:"epoch_steps,omitempty"`
	corpus       *shard.CorpusSummary
	MinLen       int    `json:"min_len"`                 // synthetic: shortest source
	MaxLen       int    `json:"max_len"`                 // synthetic: longest source
	Reverse      bool   `json:"reverse_source"`          // feed sources reversed (the paper's trick)
	VocabMax     int    `json:"vocab_max"`               // corpus: words per vocabulary, reserved ids included
	TgtVocab     int    `json:"tgt_vocab_max,omitempty"` // corpus: the same for targets (0: VocabMax)
	Tokenizer    string `json:"tokenizer"`               // corpus: space or 13a
	HeldOut      int    `json:"held_out"`                // examples set aside for evaluation
	EvalEvery    int64  `json:"eval_every"`              // evaluate on the held-out set every N steps (0: only at the end)
	Seed         uint64 `json:"seed"`
	// InitFrom, when set, is a checkpoint file (every shard can read it)
	// whose parameters the job starts from instead of Seed's: a warm start,
	// with the optimizer's state and schedules new. Its tensors must be the
	// model's, by name and shape; InitSHA256 is its hash, set by Resolve,
	// so that no shard starts from another file of the same name. (Not a
	// CRC32C: the CRC of a file made of checksummed parts, as a checkpoint
	// is, does not change with their contents.)
	InitFrom   string `json:"init_from,omitempty"`
	InitSHA256 string `json:"init_sha256,omitempty"`
	Steps      int64  `json:"steps"`
	Workers    int    `json:"workers"`
	// Stages and SoftmaxSlices lay each Seq2Seq replica out over
	// Stages + SoftmaxSlices seats, the paper's layout (models.StagePlan):
	// the LSTM layers on Stages stages, the output softmax's blocks on
	// SoftmaxSlices slices, each seat its own member of the job with its
	// own rank (Ranks: replica x seats + seat). 0 and 0: a replica is one
	// worker.
	Stages        int `json:"stages,omitempty"`
	SoftmaxSlices int `json:"softmax_slices,omitempty"`
	Shards        int `json:"shards"`
	// PSReplicas is how many shards hold each parameter block (a primary
	// and PSReplicas-1 backups, Placement.Copies): a shard's death is then
	// a handover to a backup, not a rollback. 0 or 1: one copy.
	PSReplicas int `json:"ps_replicas,omitempty"`
	BlockSize  int `json:"block_size"` // floats per parameter block
	Batch      int `json:"batch"`      // examples per worker per step
	// GlobalBatch, when set, is the batch the optimizer sees: the examples
	// of one step over all workers, Batch x Workers. A job that states it
	// (the paper presets) keeps the paper's updates per epoch for any
	// number of workers that divides it; SettleBatch sets Batch from it.
	GlobalBatch int     `json:"global_batch,omitempty"`
	ClipNorm    float64 `json:"clip_norm"` // global-norm clip applied by workers; 0 = none
	LogEvery    int64   `json:"log_every"`
	// DenseTransfer makes seq2seq workers push and pull the embedding
	// tables whole, not just the rows their batches use (the parameters
	// come out the same; it is there to compare).
	DenseTransfer bool `json:"dense_transfer,omitempty"`
	// Consistency: "sync", "ssp" (with Staleness) or "async" (workers pull
	// every NFetch steps and push every NPush steps).
	Mode      string `json:"mode"`
	Staleness int64  `json:"staleness,omitempty"`
	NFetch    int64  `json:"n_fetch,omitempty"`
	NPush     int64  `json:"n_push,omitempty"`
	// The update rule the shards apply, and what they do with NaN/Inf.
	Optimizer Optimizer `json:"optimizer"`
	NonFinite string    `json:"non_finite"`
	// Epochs, when positive, sets Steps to that many passes over a corpus
	// (data shard 0's), and HalveAfterEpochs/HalveEveryEpochs set a halving
	// learning-rate schedule in epochs (the paper: 7.5 epochs; halve after
	// 5, every half epoch). Resolve converts them to steps.
	Epochs           float64 `json:"epochs,omitempty"`
	HalveAfterEpochs float64 `json:"halve_after_epochs,omitempty"`
	HalveEveryEpochs float64 `json:"halve_every_epochs,omitempty"`
	// The GAN (Model "gan"): its shape, where MNIST is (empty: the GoMNIST
	// module), D updates per G update, the minimax G loss instead of the
	// non-saturating one, the momentum ramp in epochs, and the generator's
	// output bias from the training pixels' marginals (set by Resolve).
	GAN   models.GANConfig `json:"gan,omitempty"`
	MNIST string           `json:"mnist,omitempty"`
	GANK  int              `json:"gan_k,omitempty"`
	// GANUpdate is how a step updates the GAN: "simultaneous", the
	// authors' (D's and G's gradients from one forward pass of the same
	// parameters, applied together), or "alternating" (GANK D updates, then
	// G's through the updated D; also what "" means, in jobs written before
	// the field).
	GANUpdate       string    `json:"gan_update,omitempty"`
	Minimax         bool      `json:"minimax,omitempty"`
	RampStartEpochs float64   `json:"ramp_start_epochs,omitempty"`
	RampEndEpochs   float64   `json:"ramp_end_epochs,omitempty"`
	GOutBias        []float32 `json:"g_out_bias,omitempty"`
	// ParzenFull makes every evaluation of a GAN the paper's full
	// Parzen-window estimate (10,000 samples, sigma on validation images,
	// the 10,000 test images) instead of the quick monitor on validation.
	ParzenFull bool `json:"parzen_full,omitempty"`
	// Synthetic (Model "synthetic"): the load model's size and step time,
	// for measuring the system at scale (models.SyntheticConfig).
	Synthetic models.SyntheticConfig `json:"synthetic,omitzero"`
	// CheckpointEvery: every shard snapshots its state at each multiple of
	// this many steps (sync), or of this many data steps done (async and
	// ssp, with tasks); 0 for never.
	CheckpointEvery int64 `json:"checkpoint_every,omitempty"`
	// KeepCheckpoints: once a checkpoint is recorded, every shard deletes its
	// snapshots but those of the newest this many checkpoint steps (and any
	// newer ones); 0 keeps them all.
	KeepCheckpoints int `json:"keep_checkpoints,omitempty"`
	// TaskSteps (async, ssp): the data goes to workers as tasks of this many
	// steps of one data shard, from a queue, so that workers may come and
	// go; 0: each rank reads its own data shard, as in sync mode.
	TaskSteps int64 `json:"task_steps,omitempty"`
	// TaskTimeout is how many seconds a worker has for a task before it is
	// given to another; TaskAttempts how many times a task is given out
	// before it counts as failed.
	TaskTimeout  int64 `json:"task_timeout,omitempty"`
	TaskAttempts int   `json:"task_attempts,omitempty"`
}

// UsesTasks reports whether the job hands out its data as tasks.
func (s *Spec) UsesTasks() bool { return s.Mode != Sync && s.TaskSteps > 0 }

// Default is the job `downpour train` runs with no flags: a one-layer LSTM
// encoder-decoder learning to reverse digit sequences.
func Default() Spec {
	return Spec{
		Name:      "demo",
		Model:     "seq2seq",
		Seq2Seq:   models.Seq2SeqConfig{SrcVocab: shard.SyntheticVocab, TgtVocab: shard.SyntheticVocab, Embed: 32, Hidden: 128, Layers: 1},
		Data:      "synthetic:copy",
		MinLen:    3,
		MaxLen:    5,
		Reverse:   true,
		VocabMax:  30000,
		Tokenizer: "space",
		HeldOut:   200,
		EvalEvery: 100,
		Seed:      1,
		Steps:     300,
		Workers:   2,
		Shards:    2,
		BlockSize: 16 << 10,
		Batch:     32,
		ClipNorm:  5,
		LogEvery:  10,
		Mode:      Sync,
		NFetch:    1,
		NPush:     1,
		Optimizer: DefaultOptimizer("sgd", 1.5),
		NonFinite: Refuse,

		KeepCheckpoints: 3,
		TaskSteps:       50,
		TaskTimeout:     600,
		TaskAttempts:    3,
	}
}

// Validate reports the first thing wrong with s, naming the field.
func (s *Spec) Validate() error {
	if err := wire.ValidJob(s.Name); err != nil {
		return err
	}
	switch s.Model {
	case "seq2seq":
		if err := s.validateSeq2Seq(); err != nil {
			return err
		}
	case Synthetic:
		if err := s.Synthetic.Validate(); err != nil {
			return err
		}
		if s.NFetch != 1 || s.NPush != 1 {
			return errors.New("the synthetic model pulls and pushes every step: n-fetch and n-push must be 1")
		}
	case "gan":
		if err := s.validateGAN(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("model %q: use seq2seq, gan or synthetic", s.Model)
	}
	switch {
	case s.Steps < 1:
		return errors.New("steps must be at least 1")
	case s.Workers < 1 || s.Workers > 1024:
		return fmt.Errorf("workers must be in 1..1024 (got %d)", s.Workers)
	case s.Shards < 1 || s.Shards > 1024:
		return fmt.Errorf("ps shards must be in 1..1024 (got %d)", s.Shards)
	case s.PSReplicas < 0 || s.PSReplicas > s.Shards:
		return fmt.Errorf("ps replicas must be in 1..%d, the ps shards: each copy of a block is on a shard of its own (got %d)", s.Shards, s.PSReplicas)
	case s.BlockSize < 1 || s.BlockSize > 2<<20:
		return fmt.Errorf("block size must be in 1..%d floats (got %d)", 2<<20, s.BlockSize)
	case s.GlobalBatch < 0:
		return errors.New("global batch must not be negative (0: batch x workers)")
	case s.GlobalBatch > 0 && s.GlobalBatch%s.Workers != 0:
		return fmt.Errorf("global batch %d does not split evenly over %d workers: use %s workers, or another --global-batch",
			s.GlobalBatch, s.Workers, splits(s.GlobalBatch))
	case s.GlobalBatch > 0 && s.Batch != s.GlobalBatch/s.Workers:
		return fmt.Errorf("batch %d per worker x %d workers is %d examples a step, not the global batch %d: give one of --batch and --global-batch",
			s.Batch, s.Workers, s.Batch*s.Workers, s.GlobalBatch)
	case s.Batch < 1:
		return errors.New("batch must be at least 1")
	case s.NFetch < 1 || s.NPush < 1:
		return fmt.Errorf("n-fetch and n-push must be at least 1 (got %d, %d)", s.NFetch, s.NPush)
	case s.Mode != Async && (s.NFetch != 1 || s.NPush != 1):
		return errors.New("n-fetch and n-push other than 1 need --mode async")
	case s.CheckpointEvery < 0:
		return errors.New("checkpoint every must not be negative")
	case s.KeepCheckpoints < 0:
		return errors.New("keep checkpoints must not be negative (0 keeps them all)")
	case s.CheckpointEvery > 0 && s.Mode != Sync && !s.UsesTasks():
		return fmt.Errorf("a %s job checkpoints only when it hands its data out as tasks (--task-steps above 0)", s.Mode)
	case s.TaskSteps < 0 || s.UsesTasks() && (s.TaskTimeout < 1 || s.TaskAttempts < 1):
		return fmt.Errorf("tasks: steps must not be negative, and a timeout and attempts at least 1 (got %d, %d, %d)", s.TaskSteps, s.TaskTimeout, s.TaskAttempts)
	case s.ClipNorm < 0:
		return errors.New("clip norm must not be negative")
	case s.LogEvery < 1:
		return errors.New("log every must be at least 1")
	}
	if err := s.validateLayout(); err != nil {
		return err
	}
	return s.ShardConfig().Validate()
}

// Synthetic is the load model's name (Spec.Model): models.SyntheticConfig.
const Synthetic = "synthetic"

// The GAN's update rules (Spec.GANUpdate).
const (
	Simultaneous = "simultaneous"
	Alternating  = "alternating"
)

// Simultaneous reports whether a GAN job makes the authors' simultaneous
// update.
func (s *Spec) Simultaneous() bool { return s.GANUpdate == Simultaneous }

// Stated says which of the two batch sizes a user gave explicitly (a flag
// or a config key), over a preset's or the defaults'.
type Stated struct{ Batch, GlobalBatch bool }

// SettleBatch is the batch rule, the one place that decides which of
// Batch (per worker) and GlobalBatch (over all workers) a job runs by:
//
//   - a batch stated on its own (above 0) overrides a preset's global
//     batch, and a global batch stated on its own a preset's batch;
//   - a global batch with no per-worker batch (0) is split evenly over the
//     workers: Batch = GlobalBatch / Workers.
//
// A global batch the workers do not divide, or one that disagrees with a
// batch stated beside it, is left for Validate to report. Flags and config
// files (with what was stated), the coordinator and the workers (Resolve,
// nothing stated) all settle the batch through it; FileBatch is its
// inverse, for a config file.
func (s *Spec) SettleBatch(stated Stated) {
	switch {
	case stated.Batch && !stated.GlobalBatch && s.Batch > 0:
		s.GlobalBatch = 0
	case stated.GlobalBatch && !stated.Batch:
		s.Batch = 0
	}
	if s.GlobalBatch > 0 && s.Batch == 0 && s.Workers > 0 && s.GlobalBatch%s.Workers == 0 {
		s.Batch = s.GlobalBatch / s.Workers
	}
}

// FileBatch is what a config file states for the batch of a settled job:
// a global batch is written with batch 0 (its share), so that a file whose
// workers are changed keeps the global batch.
func (s *Spec) FileBatch() (batch, global int) {
	if s.GlobalBatch > 0 {
		return 0, s.GlobalBatch
	}
	return s.Batch, 0
}

// splits lists the worker counts (up to 1024) that divide a global batch.
func splits(global int) string {
	var ok []string
	for w := 1; w <= min(global, 1024); w++ {
		if global%w == 0 {
			ok = append(ok, strconv.Itoa(w))
		}
	}
	if len(ok) == 1 {
		return ok[0]
	}
	return strings.Join(ok[:len(ok)-1], ", ") + " or " + ok[len(ok)-1]
}

// validateGAN checks a GAN job's settings.
func (s *Spec) validateGAN() error {
	if err := s.GAN.Validate(); err != nil {
		return err
	}
	if s.GANK < 1 {
		return fmt.Errorf("gan-k (D updates per G update) must be at least 1 (got %d)", s.GANK)
	}
	switch s.GANUpdate {
	case "", Alternating:
	case Simultaneous:
		if s.GANK != 1 {
			return fmt.Errorf("gan-k %d: the simultaneous update makes one D and one G update a step; --gan-k needs --gan-update alternating", s.GANK)
		}
	default:
		return fmt.Errorf("gan update %q: use simultaneous or alternating", s.GANUpdate)
	}
	if s.NFetch != 1 || s.NPush != 1 {
		return errors.New("the GAN pulls and pushes every step: n-fetch and n-push must be 1")
	}
	if s.Mode == SSP {
		return errors.New("the GAN trains in sync or async mode (its D and G updates interleave, which bounded staleness cannot express)")
	}
	if s.RampStartEpochs < 0 || s.RampEndEpochs < s.RampStartEpochs {
		return errors.New("the momentum ramp must end after it starts")
	}
	if s.GOutBias != nil && len(s.GOutBias) != s.GAN.Pixels {
		return fmt.Errorf("the generator's output bias has %d values for %d pixels", len(s.GOutBias), s.GAN.Pixels)
	}
	return nil
}

func (s *Spec) validateSeq2Seq() error {
	if err := s.Seq2Seq.Validate(); err != nil {
		return err
	}
	if task, ok := strings.CutPrefix(s.Data, "synthetic:"); ok && task != shard.WMTTask {
		if _, err := shard.NewSynthetic(task, s.MinLen, s.MaxLen); err != nil {
			return err
		}
	} else if s.Data == "" {
		return errors.New("data: give a corpus file, synthetic:<copy|reverse|sort|translate>, or synthetic:wmt")
	}
	if s.DataTarget != "" && (s.Data == "" || strings.HasPrefix(s.Data, "synthetic:")) {
		return fmt.Errorf("data target %s: the target side of aligned files needs their source side as the data (got %q)", s.DataTarget, s.Data)
	}
	if s.Epochs < 0 || s.HalveAfterEpochs < 0 || s.HalveEveryEpochs < 0 {
		return errors.New("epochs must not be negative")
	}
	if s.VocabMax < 5 || s.HeldOut < 0 || s.EvalEvery < 0 || s.TgtVocab != 0 && s.TgtVocab < 5 {
		return fmt.Errorf("vocab max must be at least 5, held out and eval every not negative (got %d, %d, %d)", s.VocabMax, s.HeldOut, s.EvalEvery)
	}
	if s.Tokenizer != "space" && s.Tokenizer != "13a" {
		return fmt.Errorf("tokenizer %q: use space or 13a", s.Tokenizer)
	}
	return nil
}

// DataName is how the job's data is shown: its source, or its two aligned
// files.
func (s *Spec) DataName() string {
	if s.DataTarget != "" {
		return s.Data + " + " + s.DataTarget
	}
	return s.Data
}

// DataConfig is the part of the spec that says how to read the data.
func (s *Spec) DataConfig() shard.DataConfig {
	return shard.DataConfig{Source: s.Data, Target: s.DataTarget, MinLen: s.MinLen, MaxLen: s.MaxLen, Reverse: s.Reverse, VocabMax: s.VocabMax, TgtVocabMax: s.TgtVocab,
		HeldOut: s.HeldOut, Tokenizer: s.Tokenizer, Seed: s.Seed, Shards: s.Workers, CRC: s.DataCRC, Summary: s.corpus}
}

// Corpus is the summary of the job's corpus, when the spec has it: Resolve
// counted it, or the store attached it (AttachCorpus). A spec without it
// opens its data by counting the corpus again (OpenData).
func (s *Spec) Corpus() *shard.CorpusSummary { return s.corpus }

// AttachCorpus gives the spec its corpus's summary as the store holds it
// (shard.CorpusSummary.Encode), which must be the one CorpusDigest names.
func (s *Spec) AttachCorpus(b []byte) error {
	c, err := shard.DecodeCorpusSummary(b)
	if err != nil {
		return fmt.Errorf("job %s: %w", s.Name, err)
	}
	if d := c.Digest(); d != s.CorpusDigest {
		return fmt.Errorf("job %s: the stored corpus summary is %s, the spec names %s", s.Name, d, s.CorpusDigest)
	}
	s.corpus = c
	return nil
}

// OpenData opens the job's data and checks it against the spec's vocabulary
// sizes (every role must see the same data).
func (s *Spec) OpenData() (shard.Dataset, error) {
	d, _, err := shard.Open(s.DataConfig())
	if err != nil {
		return nil, err
	}
	if c := shard.SummaryOf(d); c != nil && s.CorpusDigest != "" && c.Digest() != s.CorpusDigest {
		return nil, fmt.Errorf("data %s: its summary is %s, the job's %s: the corpus or its settings differ from the job's", s.DataName(), c.Digest(), s.CorpusDigest)
	}
	if d.SrcVocab() != s.Seq2Seq.SrcVocab || d.TgtVocab() != s.Seq2Seq.TgtVocab {
		return nil, fmt.Errorf("data %s has vocabularies of %d and %d words, the job %d and %d", s.DataName(),
			d.SrcVocab(), d.TgtVocab(), s.Seq2Seq.SrcVocab, s.Seq2Seq.TgtVocab)
	}
	return d, nil
}

// Resolve reads the data to fix what depends on it: the vocabulary sizes of
// the model and the corpus checksum; and the checkpoint the job starts from,
// if any, which must hold the model's tensors. The coordinator (and train)
// call it before writing the spec.
func (s *Spec) Resolve() error {
	if err := s.resolveData(); err != nil {
		return err
	}
	s.InitSHA256 = ""
	if s.InitFrom == "" {
		return nil
	}
	_, sum, err := s.readInit()
	s.InitSHA256 = sum
	return err
}

func (s *Spec) resolveData() error {
	s.SettleBatch(Stated{})
	switch s.Model {
	case "gan":
		return s.resolveGAN()
	case Synthetic:
		return s.Validate()
	}
	s.DataCRC, s.CorpusDigest, s.EpochSteps, s.corpus = 0, "", 0, nil
	d, crc, err := shard.Open(s.DataConfig())
	if err != nil {
		return err
	}
	s.DataCRC = crc
	s.Seq2Seq.SrcVocab, s.Seq2Seq.TgtVocab = d.SrcVocab(), d.TgtVocab()
	if c := shard.SummaryOf(d); c != nil {
		s.corpus, s.CorpusDigest = c, c.Digest()
		if s.EpochSteps, err = d.StepsPerEpoch(s.Seed, 0, s.Batch); err != nil {
			return err
		}
	}
	if s.Epochs > 0 || s.HalveEveryEpochs > 0 {
		per := s.EpochSteps
		if per == 0 {
			return errors.New("epochs need a corpus: synthetic data has none")
		}
		if s.Epochs > 0 {
			s.Steps = max(1, int64(math.Ceil(s.Epochs*float64(per))))
		}
		if s.HalveEveryEpochs > 0 {
			s.Optimizer.Schedule = Schedule{Kind: "halving",
				HalveAfter: int64(math.Round(s.HalveAfterEpochs * float64(per))),
				HalveEvery: max(1, int64(math.Round(s.HalveEveryEpochs*float64(per))))}
		}
	}
	return s.Validate()
}

// LaidOut reports whether the job's replicas are laid out over seats
// (Stages, SoftmaxSlices).
func (s *Spec) LaidOut() bool { return s.Stages > 0 || s.SoftmaxSlices > 0 }

// Seats is how many members make up one model replica: 1, or Stages +
// SoftmaxSlices.
func (s *Spec) Seats() int {
	if !s.LaidOut() {
		return 1
	}
	return s.Stages + s.SoftmaxSlices
}

// Ranks is how many ranks the job has: a seat of a replica each (Workers
// x Seats). Rank r is seat r mod Seats of replica r / Seats, which reads
// data shard r / Seats.
func (s *Spec) Ranks() int { return s.Workers * s.Seats() }

// Plan is the layout of a replica laid out over seats.
func (s *Spec) Plan() (models.StagePlan, error) { return s.Seq2Seq.Plan(s.Stages, s.SoftmaxSlices) }

// StageChunk is how many time steps a stage hands on at a time: enough
// for 64Ki floats a message (Batch x Hidden floats a time step), so that a
// large model's layers work as a wavefront a time step apart and a small
// one's activations do not go in thousands of tiny messages.
func (s *Spec) StageChunk() int {
	return max(1, 65536/max(1, s.Batch*s.Seq2Seq.Hidden))
}

func (s *Spec) validateLayout() error {
	if !s.LaidOut() {
		return nil
	}
	switch {
	case s.Model != "seq2seq":
		return fmt.Errorf("stages and softmax slices lay out a seq2seq replica, not a %s one", s.Model)
	case s.Stages < 1 || s.SoftmaxSlices < 1:
		return fmt.Errorf("a replica laid out over seats needs at least one stage and one softmax slice (got %d and %d)", s.Stages, s.SoftmaxSlices)
	case s.Mode != Sync && !s.UsesTasks():
		return fmt.Errorf("a replica laid out over seats in %s mode takes its data as tasks (task steps > 0): its seat 0 orders the others to run them", s.Mode)
	case s.Ranks() > 4096:
		return fmt.Errorf("%d workers x %d seats: at most 4096 ranks", s.Workers, s.Seats())
	}
	_, err := s.Plan()
	return err
}

// ShardConfig is the part of the spec every parameter-server shard runs by.
// A pull held for 20 ticks (2 s) is answered Expired and asked again, well
// within the first attempt of a client's request (paramserver.DefaultAttempt).
func (s *Spec) ShardConfig() ShardConfig {
	c := ShardConfig{Mode: s.Mode, Staleness: s.Staleness, Ranks: s.Ranks(),
		Optimizer: s.Optimizer, NonFinite: s.NonFinite, PullTTL: 20, Elastic: s.Mode == SSP && s.UsesTasks()}
	if plan, err := s.Plan(); s.LaidOut() && err == nil {
		c.Seats = plan.Seats()
		c.TensorSeat = make([]int, len(s.Seq2Seq.Tensors()))
		for seat, ts := range plan.SeatTensors(s.Seq2Seq) {
			for _, t := range ts {
				c.TensorSeat[t] = seat
			}
		}
	}
	if s.Mode == Sync {
		// The evaluator reads each evaluation step's parameters exactly,
		// however far training has gone on meanwhile (the last step's
		// parameters are the final ones, not a copy).
		c.Keep, c.KeepBefore = s.EvalEvery, s.Steps
	}
	return c
}

// Unit is what the job's throughput counts (the workers' reports, the
// console's and metrics' rates): examples for the synthetic load model,
// tokens otherwise (the GAN's are its samples, which its console lines do
// not show).
func (s *Spec) Unit() string {
	if s.Model == Synthetic {
		return "examples"
	}
	return "tokens"
}

// Tensors lists the model's parameter tensors.
func (s *Spec) Tensors() []models.Tensor {
	switch s.Model {
	case "gan":
		return s.GAN.Tensors()
	case Synthetic:
		return s.Synthetic.Tensors()
	}
	return s.Seq2Seq.Tensors()
}

// InitTensor fills dst with the initial value of tensor t.
func (s *Spec) InitTensor(dst []float32, t models.Tensor) {
	switch scale, uniform := s.uniformScale(t); {
	case uniform:
		models.InitUniform(dst, s.Seed, t.Name, scale)
	case t.Name == "g.out.b" && s.GOutBias != nil:
		copy(dst, s.GOutBias)
	default: // the GAN's biases
		clear(dst)
	}
}

// StepsPerEpoch is how many steps make one pass over the training data (a
// GAN's images, or data shard 0 of a corpus), or 0 for synthetic data, which
// has no epochs. It opens the data.
func (s *Spec) StepsPerEpoch() (float64, error) {
	if s.Model == "gan" {
		m, err := s.OpenMNIST()
		if err != nil {
			return 0, err
		}
		return float64(len(m.Train)) / float64(s.Batch*s.Workers*max(1, s.GANK)), nil
	}
	if s.Model == Synthetic || strings.HasPrefix(s.Data, "synthetic:") {
		return 0, nil
	}
	if s.EpochSteps > 0 {
		return float64(s.EpochSteps), nil
	}
	d, _, err := shard.Open(s.DataConfig())
	if err != nil {
		return 0, err
	}
	n, err := d.StepsPerEpoch(s.Seed, 0, s.Batch)
	return float64(n), err
}

// Encode is the canonical JSON of s, compared byte for byte to detect a
// second coordinator with a different spec under the same job name.
func (s *Spec) Encode() []byte {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err) // a Spec has no unmarshalable field
	}
	return b
}

// DecodeSpec parses and validates a spec.
func DecodeSpec(b []byte) (*Spec, error) {
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("job spec: %w", err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("job spec: %w", err)
	}
	return &s, nil
}
