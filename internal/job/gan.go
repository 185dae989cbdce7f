package job

import (
	"fmt"
	"math"

	"github.com/downpour-ml/downpour/shard"
)

// GOutBiasClip is where the pixel marginals are clipped before their logit
// becomes the generator's output bias: pylearn2's 1e-7, so that an
// always-black border pixel starts near black (logit -16).
const GOutBiasClip = 1e-7

// OutputBias is the generator's initial output bias for images: per pixel,
// the logit of its mean over images, the mean clipped to [clip, 1-clip].
func OutputBias(images [][]float32, clip float64) []float32 {
	mean := make([]float64, len(images[0]))
	for _, img := range images {
		for i, v := range img {
			mean[i] += float64(v)
		}
	}
	bias := make([]float32, len(mean))
	for i := range mean {
		p := math.Min(math.Max(mean[i]/float64(len(images)), clip), 1-clip)
		bias[i] = float32(math.Log(p / (1 - p)))
	}
	return bias
}

// resolveGAN sets the generator's output bias from the training pixels'
// marginals (logit of the mean, clipped as the authors' code does), and the
// momentum ramp and epoch-based lengths in steps.
func (s *Spec) resolveGAN() error {
	if err := s.Validate(); err != nil {
		return err
	}
	m, err := s.OpenMNIST()
	if err != nil {
		return err
	}
	if len(m.Train[0]) != s.GAN.Pixels {
		return fmt.Errorf("MNIST images have %d pixels, the generator %d", len(m.Train[0]), s.GAN.Pixels)
	}
	s.GOutBias = OutputBias(m.Train, GOutBiasClip)
	per := s.GANStepsPerEpoch(len(m.Train))
	if s.Epochs > 0 {
		s.Steps = max(1, int64(math.Ceil(s.Epochs*float64(per))))
	}
	if s.RampEndEpochs > 0 && s.Optimizer.Kind == "momentum" {
		s.Optimizer.RampStart = int64(math.Round(s.RampStartEpochs * float64(per)))
		s.Optimizer.RampEnd = int64(math.Round(s.RampEndEpochs * float64(per)))
	}
	return s.Validate()
}

// OpenMNIST loads the GAN's data.
func (s *Spec) OpenMNIST() (*shard.MNIST, error) {
	dir := s.MNIST
	if dir == "" {
		var err error
		if dir, err = shard.MNISTDir(); err != nil {
			return nil, err
		}
	}
	return shard.LoadMNIST(dir)
}

// OpenImages loads the GAN's training images dealt into the job's data
// shards, one per rank (shard.DealImages, from the job's seed).
func (s *Spec) OpenImages() (*shard.Images, error) {
	m, err := s.OpenMNIST()
	if err != nil {
		return nil, err
	}
	return shard.DealImages(m.Train, s.Workers, s.Seed), nil
}

// GANStepsPerEpoch is the number of steps in which the workers together see
// the training images once.
func (s *Spec) GANStepsPerEpoch(trainImages int) int64 {
	return max(1, int64(trainImages/(s.Batch*s.Workers*max(1, s.GANK))))
}
