package job

import (
	"errors"
	"fmt"
	"math"
)

// Schedule is a learning-rate schedule over the update count t of a block
// (0 for its first update).
type Schedule struct {
	// Kind is "constant" (or empty), "halving" or "exp".
	Kind string `json:"kind,omitempty"`
	// halving (Sutskever et al.: after 5 epochs, halve every half epoch):
	// lr * 0.5^(1 + floor((t-HalveAfter)/HalveEvery)) once t >= HalveAfter.
	HalveAfter int64 `json:"halve_after,omitempty"`
	HalveEvery int64 `json:"halve_every,omitempty"`
	// exp (Goodfellow et al.'s code: divide by 1.000004 after every update,
	// never below 1e-6): max(lr / Decay^t, Floor).
	Decay float64 `json:"decay,omitempty"`
	Floor float64 `json:"floor,omitempty"`
}

// Rate is the learning rate of update t for base rate lr.
func (s Schedule) Rate(lr float64, t int64) float64 {
	switch s.Kind {
	case "halving":
		if t < s.HalveAfter {
			return lr
		}
		return lr * math.Pow(0.5, float64(1+(t-s.HalveAfter)/s.HalveEvery))
	case "exp":
		return math.Max(lr/math.Pow(s.Decay, float64(t)), s.Floor)
	}
	return lr
}

func (s Schedule) validate() error {
	switch s.Kind {
	case "", "constant":
	case "halving":
		if s.HalveAfter < 0 || s.HalveEvery < 1 {
			return fmt.Errorf("halving schedule needs halve-after >= 0 and halve-every >= 1 (got %d, %d)", s.HalveAfter, s.HalveEvery)
		}
	case "exp":
		if !(s.Decay >= 1) || s.Floor < 0 {
			return fmt.Errorf("exp schedule needs decay >= 1 and floor >= 0 (got %v, %v)", s.Decay, s.Floor)
		}
	default:
		return fmt.Errorf("learning-rate schedule %q: use constant, halving or exp", s.Kind)
	}
	return nil
}

// Optimizer is the update rule a shard applies to each of its blocks, with
// its hyperparameters. Its zero value is not valid: fill it from
// DefaultOptimizer.
type Optimizer struct {
	// Kind is "sgd", "momentum", "adagrad" or "adam".
	Kind     string   `json:"kind"`
	LR       float64  `json:"lr"`
	Schedule Schedule `json:"schedule"`
	// momentum: inc = m*inc - lr*g; w += inc (the update of the GAN authors'
	// pylearn2 code), with m ramping linearly from Momentum to MomentumFinal
	// between updates RampStart and RampEnd.
	Momentum      float64 `json:"momentum,omitempty"`
	MomentumFinal float64 `json:"momentum_final,omitempty"`
	RampStart     int64   `json:"ramp_start,omitempty"`
	RampEnd       int64   `json:"ramp_end,omitempty"`
	// adam (Kingma and Ba): Beta1, Beta2, Eps; adagrad (Duchi et al., as in
	// DistBelief): w -= lr*g/(sqrt(sum of g^2)+Eps).
	Beta1 float64 `json:"beta1,omitempty"`
	Beta2 float64 `json:"beta2,omitempty"`
	Eps   float64 `json:"eps,omitempty"`
}

// DefaultOptimizer returns kind with the usual hyperparameters and rate lr.
func DefaultOptimizer(kind string, lr float64) Optimizer {
	o := Optimizer{Kind: kind, LR: lr}
	switch kind {
	case "momentum":
		o.Momentum, o.MomentumFinal = 0.9, 0.9
	case "adagrad":
		o.Eps = 1e-8
	case "adam":
		o.Beta1, o.Beta2, o.Eps = 0.9, 0.999, 1e-8
	}
	return o
}

// Validate reports the first bad hyperparameter.
func (o Optimizer) Validate() error {
	if !(o.LR > 0) || math.IsInf(o.LR, 0) {
		return fmt.Errorf("learning rate must be positive (got %v)", o.LR)
	}
	if err := o.Schedule.validate(); err != nil {
		return err
	}
	switch o.Kind {
	case "sgd":
	case "momentum":
		if o.Momentum < 0 || o.Momentum >= 1 || o.MomentumFinal < 0 || o.MomentumFinal >= 1 {
			return fmt.Errorf("momentum must be in [0, 1) (got %v, %v)", o.Momentum, o.MomentumFinal)
		}
		if o.RampEnd < o.RampStart {
			return errors.New("momentum ramp must end after it starts")
		}
	case "adagrad":
		if !(o.Eps > 0) {
			return fmt.Errorf("adagrad needs eps > 0 (got %v)", o.Eps)
		}
	case "adam":
		if o.Beta1 < 0 || o.Beta1 >= 1 {
			return fmt.Errorf("adam needs beta1 in [0, 1) (got %v)", o.Beta1)
		}
		if o.Beta2 < 0 || o.Beta2 >= 1 {
			return fmt.Errorf("adam needs beta2 in [0, 1) (got %v)", o.Beta2)
		}
		if !(o.Eps > 0) {
			return fmt.Errorf("adam needs eps > 0 (got %v)", o.Eps)
		}
	default:
		return fmt.Errorf("optimizer %q: use sgd, momentum, adagrad or adam", o.Kind)
	}
	return nil
}

// Slots is the number of state vectors the optimizer keeps per parameter
// vector (momentum: 1, adagrad: 1, adam: 2).
func (o Optimizer) Slots() int {
	switch o.Kind {
	case "momentum", "adagrad":
		return 1
	case "adam":
		return 2
	}
	return 0
}

// MomentumAt is the momentum coefficient of update t.
func (o Optimizer) MomentumAt(t int64) float64 {
	switch {
	case t >= o.RampEnd:
		return o.MomentumFinal
	case t <= o.RampStart:
		return o.Momentum
	}
	f := float64(t-o.RampStart) / float64(o.RampEnd-o.RampStart)
	return o.Momentum + f*(o.MomentumFinal-o.Momentum)
}
