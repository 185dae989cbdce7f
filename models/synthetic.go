package models

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// SyntheticConfig is the load model: a stand-in for a model whose step
// takes a set time on an accelerator, so that the parameter servers, the
// transport and the coordinator can be measured with many workers on few
// cores. Its parameters are Params floats in NumTensors tensors of (nearly)
// equal size. A step computes for StepMs milliseconds (a wait, not work)
// and its gradient is cheap and deterministic: that of the loss
// 0.5*|w - c*u|^2 / Params, for a fixed direction u of the job's seed and a
// scalar c of the batch (SyntheticScale), so that a sync job's parameters
// can be checked bit for bit against a one-process computation.
type SyntheticConfig struct {
	Params     int     `json:"params"`
	NumTensors int     `json:"tensors"`
	StepMs     float64 `json:"step_ms"`
}

// MaxSyntheticParams bounds a synthetic model (4 GiB of float32).
const MaxSyntheticParams = 1 << 30

// Validate reports the first thing wrong with c.
func (c SyntheticConfig) Validate() error {
	switch {
	case c.Params < 1 || c.Params > MaxSyntheticParams:
		return fmt.Errorf("synthetic: params must be in 1..%d (got %d)", MaxSyntheticParams, c.Params)
	case c.NumTensors < 1 || c.NumTensors > c.Params:
		return fmt.Errorf("synthetic: tensors must be in 1..params (got %d for %d params)", c.NumTensors, c.Params)
	case math.IsNaN(c.StepMs) || c.StepMs < 0 || c.StepMs > 3.6e6:
		return errors.New("synthetic: the step time must be in 0..3600000 ms")
	}
	return nil
}

// StepTime is the time a step stands for.
func (c SyntheticConfig) StepTime() time.Duration {
	return time.Duration(c.StepMs * float64(time.Millisecond))
}

// Tensors lists the parameters: syn.0, syn.1, ..., the first
// Params%NumTensors of them one float longer than the rest.
func (c SyntheticConfig) Tensors() []Tensor {
	ts := make([]Tensor, c.NumTensors)
	for i := range ts {
		n := c.Params / c.NumTensors
		if i < c.Params%c.NumTensors {
			n++
		}
		ts[i] = Tensor{Name: fmt.Sprintf("syn.%d", i), Shape: []int{n}}
	}
	return ts
}

// SyntheticDirection fills u with the direction of the job's targets: values
// in [-1, 1) from the seed.
func SyntheticDirection(u []float32, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x5e7d))
	for i := range u {
		u[i] = float32(2*rng.Float64() - 1)
	}
}

// SyntheticScale is the scalar c of the batch at data step data of data
// shard shard: in [0.5, 1.5), so that the targets' mean is u.
func SyntheticScale(seed uint64, shard int, data int64) float32 {
	rng := rand.New(rand.NewPCG(seed^uint64(shard)<<32, uint64(data)))
	return float32(0.5 + rng.Float64())
}

// SyntheticGrad writes into g the gradient of 0.5*|w - c*u|^2 / len(w) at w,
// scaled by len(w) (so that a step of SGD moves each parameter by the same
// fraction of its distance to the target whatever the size): g = w - c*u.
// It returns the loss 0.5*|w - c*u|^2 / len(w).
func SyntheticGrad(g, w, u []float32, c float32) float64 {
	if len(g) != len(w) || len(u) != len(w) {
		panic("models: SyntheticGrad lengths differ")
	}
	var sum float64
	for i, x := range w {
		d := x - float32(c*u[i]) // rounded before the subtraction, never fused
		g[i] = d
		sum += float64(d) * float64(d)
	}
	return 0.5 * sum / float64(max(1, len(w)))
}
