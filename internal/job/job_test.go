package job

import (
	"math"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/models"
)

func TestSpecValidate(t *testing.T) {
	d := Default()
	if err := d.Validate(); err != nil {
		t.Fatalf("default spec: %v", err)
	}
	// ssp with tasks is elastic: its shards bound the staleness by the
	// active ranks only.
	for _, c := range []struct {
		mode           string
		taskSteps      int64
		tasks, elastic bool
	}{{"sync", 50, false, false}, {"async", 50, true, false}, {"ssp", 50, true, true}, {"ssp", 0, false, false}} {
		s := Default()
		s.Mode, s.TaskSteps = c.mode, c.taskSteps
		if s.UsesTasks() != c.tasks || s.ShardConfig().Elastic != c.elastic {
			t.Errorf("%s with task steps %d: tasks %v, elastic %v", c.mode, c.taskSteps, s.UsesTasks(), s.ShardConfig().Elastic)
		}
	}
	for _, c := range []struct {
		mut  func(*Spec)
		says string
	}{
		{func(s *Spec) { s.Name = "" }, "job name"},
		{func(s *Spec) { s.Model = "gan" }, "gan: every size must be positive"},
		{func(s *Spec) { s.Model = "rbm" }, "model \"rbm\""},
		{func(s *Spec) { s.Seq2Seq.Hidden = 0 }, "positive"},
		{func(s *Spec) { s.Data = "synthetic:nope" }, "unknown synthetic task"},
		{func(s *Spec) { s.Data = "" }, "data"},
		{func(s *Spec) { s.Tokenizer = "moses" }, "tokenizer"},
		{func(s *Spec) { s.VocabMax = 2 }, "vocab max"},
		{func(s *Spec) { s.Steps = 0 }, "steps"},
		{func(s *Spec) { s.Workers = 0 }, "workers"},
		{func(s *Spec) { s.Shards = 2000 }, "ps shards"},
		{func(s *Spec) { s.BlockSize = 0 }, "block size"},
		{func(s *Spec) { s.Mode = "bogus" }, "mode"},
		{func(s *Spec) { s.Mode, s.Staleness = "ssp", -1 }, "staleness"},
		{func(s *Spec) { s.NFetch = 2 }, "need --mode async"},
		{func(s *Spec) { s.Mode, s.NPush = "async", 0 }, "n-push"},
		{func(s *Spec) { s.Optimizer.LR = -1 }, "learning rate"},
		{func(s *Spec) { s.Optimizer.Kind = "rmsprop" }, "optimizer"},
		{func(s *Spec) { s.NonFinite = "ignore" }, "non-finite"},
		{func(s *Spec) { s.CheckpointEvery = -1 }, "checkpoint"},
		{func(s *Spec) { s.Mode, s.TaskSteps, s.CheckpointEvery = "ssp", 0, 10 }, "checkpoints only when it hands its data out as tasks"},
		{func(s *Spec) { s.LogEvery = 0 }, "log every"},
		{func(s *Spec) { s.Stages = 2 }, "at least one stage and one softmax slice"},
		{func(s *Spec) { s.Stages, s.SoftmaxSlices, s.Mode, s.TaskSteps = 2, 1, "async", 0 }, "takes its data as tasks"},
		{func(s *Spec) { s.Stages, s.SoftmaxSlices = s.Seq2Seq.Layers+1, 1 }, "stages must be in"},
		{func(s *Spec) { s.Stages, s.SoftmaxSlices = 1, 2 }, "raise --softmax-blocks"},
		{func(s *Spec) { s.Model, s.Stages, s.SoftmaxSlices = "gan", 1, 1 }, ""},
	} {
		s := Default()
		c.mut(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("got %v, want an error saying %q", err, c.says)
		}
		if _, err := DecodeSpec(s.Encode()); err == nil {
			t.Errorf("DecodeSpec accepted an invalid spec (%s)", c.says)
		}
	}
	got, err := DecodeSpec(d.Encode())
	if err != nil || string(got.Encode()) != string(d.Encode()) {
		t.Fatalf("spec round trip: %v", err)
	}
	// A replica laid out over 2 stages and 3 slices is 5 ranks; its shards
	// know which seat pushes each tensor.
	laid := Default()
	laid.Seq2Seq.Layers, laid.Seq2Seq.SoftmaxBlocks, laid.Stages, laid.SoftmaxSlices = 4, 3, 2, 3
	if err := laid.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{Async, SSP} { // with tasks, the default
		seated := laid
		seated.Mode = mode
		if err := seated.Validate(); err != nil {
			t.Fatalf("%s with seats and tasks: %v", mode, err)
		}
	}
	sc := laid.ShardConfig()
	if laid.Seats() != 5 || laid.Ranks() != 5*laid.Workers || sc.Ranks != laid.Ranks() || sc.Seats != 5 || sc.Replicas() != laid.Workers {
		t.Fatalf("seats %d, ranks %d, shard config %+v", laid.Seats(), laid.Ranks(), sc)
	}
	names := laid.Seq2Seq.Tensors()
	want := map[string]int{"src_emb": 0, "tgt_emb": 0, "enc.l0.wx": 0, "enc.l3.b": 1, "dec.l1.wh": 0, "dec.l2.wx": 1, "out.w.0": 2, "out.b.2": 4}
	for ti, seat := range sc.TensorSeat {
		if w, ok := want[names[ti].Name]; ok {
			if w != seat {
				t.Errorf("tensor %s on seat %d, want %d", names[ti].Name, seat, w)
			}
			delete(want, names[ti].Name)
		}
	}
	if len(want) != 0 {
		t.Errorf("no tensors %v", want)
	}
	if !sc.Pushes(5, 2) || sc.Pushes(6, 2) || sc.Pushes(5, len(names)-1) || !sc.Pushes(9, len(names)-1) {
		t.Error("Pushes does not follow the seats")
	}
}

func TestPaperPreset(t *testing.T) {
	s := Default()
	Presets["paper"](&s)
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "batch 0 per worker") {
		t.Fatalf("a global batch not yet split: %v", err)
	}
	s.SettleBatch(Stated{})
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if s.Seq2Seq.Layers != 4 || s.Seq2Seq.Hidden != 1000 || s.Seq2Seq.Embed != 1000 || s.VocabMax != 160000 || s.TgtVocab != 80000 ||
		s.GlobalBatch != 128 || s.Batch != 64 || s.Optimizer.Kind != "sgd" || s.Optimizer.LR != 0.7 || s.Epochs != 7.5 ||
		s.HalveAfterEpochs != 5 || s.HalveEveryEpochs != 0.5 || s.ClipNorm != 5 || !s.Reverse || s.Seq2Seq.InitScale != 0.08 {
		t.Fatalf("paper preset %+v", s)
	}
}

// The gan preset is the authors' recipe (github.com/goodfeli/adversarial,
// mnist.yaml): their simultaneous update on a global batch of 100, N(0, 1)
// noise, and the generator's output bias at the logit of the training
// pixels' means clipped at 1e-7, so an always-black corner pixel starts at
// logit(1e-7) = -16.1. With uniform noise and a 1e-3 clip (logit -6.9) the
// recipe collapsed (worker's TestGANRecipeDoesNotCollapse).
func TestGANPreset(t *testing.T) {
	s := Default()
	Presets["gan"](&s)
	if err := s.Resolve(); err != nil {
		t.Fatal(err)
	}
	if s.GAN.NoiseDist != models.Gaussian || !s.Simultaneous() || s.GANK != 1 || s.GlobalBatch != 100 || s.Batch != 50 ||
		s.Optimizer.Kind != "momentum" || s.Optimizer.LR != 0.1 || s.Optimizer.Momentum != 0.5 || s.Optimizer.MomentumFinal != 0.7 ||
		s.Optimizer.Schedule.Decay != 1.000004 || s.Optimizer.Schedule.Floor != 1e-6 {
		t.Fatalf("gan preset %+v", s)
	}
	// 50,000 training images at 100 an update: epoch 1 ends at update 500,
	// epoch 250 at 125,000.
	if s.Optimizer.RampStart != 500 || s.Optimizer.RampEnd != 125000 {
		t.Fatalf("momentum ramp over updates %d..%d", s.Optimizer.RampStart, s.Optimizer.RampEnd)
	}
	if want := float32(math.Log(1e-7 / (1 - 1e-7))); s.GOutBias[0] != want || s.GOutBias[783] != want {
		t.Fatalf("corner pixels' output bias %v, %v; want %v", s.GOutBias[0], s.GOutBias[783], want)
	}
	// A pixel at the digits' centre is bright often enough to be inside the
	// clip: its bias is the plain logit of its mean.
	m, err := s.OpenMNIST()
	if err != nil {
		t.Fatal(err)
	}
	var mean float64
	for _, img := range m.Train {
		mean += float64(img[14*28+14])
	}
	mean /= float64(len(m.Train))
	if want := float32(math.Log(mean / (1 - mean))); s.GOutBias[14*28+14] != want || mean < 0.1 {
		t.Fatalf("centre pixel (mean %.3f): bias %v, want %v", mean, s.GOutBias[14*28+14], want)
	}
}

// The batch rule: which of a preset's, a flag's or a file's batch sizes a
// job runs by, and what a config file writes back for it.
func TestSettleBatch(t *testing.T) {
	for _, c := range []struct {
		name                  string
		batch, global, wkrs   int
		stated                Stated
		wantBatch, wantGlobal int
		fileBatch, fileGlobal int
	}{
		{"preset global, nothing stated: split", 0, 128, 2, Stated{}, 64, 128, 0, 128},
		{"batch stated over a preset's global", 32, 128, 2, Stated{Batch: true}, 32, 0, 32, 0},
		{"batch 0 stated keeps the global", 0, 128, 4, Stated{Batch: true}, 32, 128, 0, 128},
		{"global stated over a preset's batch", 32, 96, 3, Stated{GlobalBatch: true}, 32, 96, 0, 96},
		{"global stated, other workers", 32, 96, 4, Stated{GlobalBatch: true}, 24, 96, 0, 96},
		{"both stated: left for Validate", 10, 96, 4, Stated{Batch: true, GlobalBatch: true}, 10, 96, 0, 96},
		{"indivisible global: left for Validate", 0, 100, 3, Stated{}, 0, 100, 0, 100},
		{"per-worker batch only", 16, 0, 8, Stated{}, 16, 0, 16, 0},
	} {
		s := Spec{Batch: c.batch, GlobalBatch: c.global, Workers: c.wkrs}
		s.SettleBatch(c.stated)
		if s.Batch != c.wantBatch || s.GlobalBatch != c.wantGlobal {
			t.Errorf("%s: batch %d, global %d; want %d, %d", c.name, s.Batch, s.GlobalBatch, c.wantBatch, c.wantGlobal)
		}
		if b, g := s.FileBatch(); b != c.fileBatch || g != c.fileGlobal {
			t.Errorf("%s: a file states batch %d, global %d; want %d, %d", c.name, b, g, c.fileBatch, c.fileGlobal)
		}
		// What a file states settles to the same job.
		b, g := s.FileBatch()
		r := Spec{Batch: b, GlobalBatch: g, Workers: c.wkrs}
		r.SettleBatch(Stated{Batch: true, GlobalBatch: g > 0})
		if c.wantGlobal%max(c.wkrs, 1) == 0 && (r.Batch != s.Batch || r.GlobalBatch != s.GlobalBatch) && !(c.stated.Batch && c.stated.GlobalBatch) {
			t.Errorf("%s: the file's batches settle to %d, %d, not %d, %d", c.name, r.Batch, r.GlobalBatch, s.Batch, s.GlobalBatch)
		}
	}
}

// A spec read from the store is valid or refused with an error, whatever
// its bytes; a valid one reads back the same after encoding.
func FuzzDecodeSpec(f *testing.F) {
	d := Default()
	f.Add(d.Encode())
	f.Add([]byte(`{"name":"x","model":"gan"}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeSpec(b)
		if err != nil {
			return
		}
		again, err := DecodeSpec(s.Encode())
		if err != nil || string(again.Encode()) != string(s.Encode()) {
			t.Fatalf("a valid spec does not read back: %v", err)
		}
	})
}
