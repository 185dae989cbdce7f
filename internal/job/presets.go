package job

import (
	"github.com/downpour-ml/downpour/models"
)

// Presets are named sets of spec values; flags given beside a preset
// override its values.
var Presets = map[string]func(*Spec){
	// paper: Sutskever, Vinyals and Le (2014), for a real corpus on a real
	// cluster: 4 layers of 1000 cells, 1000-d embeddings, vocabularies of
	// 160k and 80k words, a global batch of 128 (split over the workers),
	// SGD at 0.7 halved every half epoch after 5 epochs, 7.5 epochs,
	// gradient clipped at norm 5, U(-0.08, 0.08) initialisation, reversed
	// sources.
	"paper": func(s *Spec) {
		s.Seq2Seq.Layers, s.Seq2Seq.Hidden, s.Seq2Seq.Embed, s.Seq2Seq.InitScale = 4, 1000, 1000, 0.08
		s.VocabMax, s.TgtVocab, s.ClipNorm, s.Reverse = 160000, 80000, 5, true
		s.Batch, s.GlobalBatch = 0, 128
		s.Optimizer = DefaultOptimizer("sgd", 0.7)
		s.Epochs, s.HalveAfterEpochs, s.HalveEveryEpochs = 7.5, 5, 0.5
		s.Tokenizer = "13a"
	},
	// gan: Goodfellow et al.'s MNIST GAN as the authors' code trains it:
	// a global batch of 100 (split over the workers: 500 updates an
	// epoch), their simultaneous update (k = 1), SGD with lr 0.1 divided by
	// 1.000004 after every update (floor 1e-6), momentum 0.5 rising
	// linearly to 0.7 between epochs 1 and 250.
	"gan": func(s *Spec) {
		s.Model, s.GAN, s.GANK, s.GANUpdate, s.ClipNorm = "gan", models.PaperGAN, 1, Simultaneous, 0
		s.Batch, s.GlobalBatch = 0, 100
		s.Optimizer = Optimizer{Kind: "momentum", LR: 0.1, Momentum: 0.5, MomentumFinal: 0.7,
			Schedule: Schedule{Kind: "exp", Decay: 1.000004, Floor: 1e-6}}
		s.RampStartEpochs, s.RampEndEpochs = 1, 250
		s.EvalEvery = 500
	},
	// synthetic: the load model (models.SyntheticConfig) at 1M parameters
	// in 8 tensors, a 100 ms step, SGD at 0.1 on its quadratic loss: for
	// measuring the parameter servers, the transport and the coordinator
	// as the job grows, not for learning anything.
	"synthetic": func(s *Spec) {
		s.Model, s.Synthetic, s.ClipNorm = Synthetic, models.SyntheticConfig{Params: 1 << 20, NumTensors: 8, StepMs: 100}, 0
		s.Batch, s.GlobalBatch = 32, 0
		s.Optimizer = DefaultOptimizer("sgd", 0.1)
		s.EvalEvery = 0
	},
	// small: the paper's recipe at a size a laptop trains in minutes.
	"small": func(s *Spec) {
		s.Seq2Seq.Layers, s.Seq2Seq.Hidden, s.Seq2Seq.Embed = 2, 256, 256
		s.VocabMax, s.Batch, s.ClipNorm, s.Reverse = 8000, 64, 5, true
		s.Optimizer = DefaultOptimizer("sgd", 0.7)
		s.Epochs, s.HalveAfterEpochs, s.HalveEveryEpochs = 7.5, 5, 0.5
	},
}
