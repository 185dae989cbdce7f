package job

import (
	"math"
	"strings"
	"testing"
)

func TestScheduleRates(t *testing.T) {
	halving := Schedule{Kind: "halving", HalveAfter: 10, HalveEvery: 4}
	for _, c := range []struct {
		s    Schedule
		t    int64
		want float64
	}{
		{Schedule{}, 1000, 0.7},
		{Schedule{Kind: "constant"}, 5, 0.7},
		{halving, 9, 0.7},
		{halving, 10, 0.35}, // the first halving, at epoch 5
		{halving, 13, 0.35},
		{halving, 14, 0.175}, // half an epoch later
		{halving, 22, 0.7 / 16},
		{Schedule{Kind: "exp", Decay: 2, Floor: 0.01}, 3, 0.7 / 8},
		{Schedule{Kind: "exp", Decay: 2, Floor: 0.01}, 7, 0.01}, // floored
		{Schedule{Kind: "exp", Decay: 1.000004, Floor: 1e-6}, 1_000_000, 0.7 / math.Pow(1.000004, 1e6)},
	} {
		if got := c.s.Rate(0.7, c.t); math.Abs(got-c.want) > 1e-15 {
			t.Errorf("%+v at %d: %v, want %v", c.s, c.t, got, c.want)
		}
	}
}

func TestMomentumRamp(t *testing.T) {
	o := Optimizer{Kind: "momentum", Momentum: 0.5, MomentumFinal: 0.7, RampStart: 100, RampEnd: 300}
	for _, c := range []struct {
		t    int64
		want float64
	}{{0, 0.5}, {100, 0.5}, {200, 0.6}, {250, 0.65}, {300, 0.7}, {1e6, 0.7}} {
		if got := o.MomentumAt(c.t); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("momentum at %d: %v, want %v", c.t, got, c.want)
		}
	}
	flat := Optimizer{Kind: "momentum", Momentum: 0.9, MomentumFinal: 0.9}
	if flat.MomentumAt(0) != 0.9 || flat.MomentumAt(50) != 0.9 {
		t.Fatal("a momentum without ramp is not constant")
	}
}

func TestOptimizerValidate(t *testing.T) {
	for _, k := range []string{"sgd", "momentum", "adagrad", "adam"} {
		if err := DefaultOptimizer(k, 0.1).Validate(); err != nil {
			t.Errorf("%s: %v", k, err)
		}
	}
	for _, c := range []struct {
		o    Optimizer
		says string
	}{
		{Optimizer{Kind: "sgd"}, "learning rate"},
		{Optimizer{Kind: "sgd", LR: math.Inf(1)}, "learning rate"},
		{Optimizer{Kind: "nesterov", LR: 1}, "use sgd"},
		{Optimizer{Kind: "momentum", LR: 1, Momentum: 1}, "momentum"},
		{Optimizer{Kind: "momentum", LR: 1, RampStart: 5, RampEnd: 2}, "ramp"},
		{Optimizer{Kind: "adagrad", LR: 1}, "eps"},
		{Optimizer{Kind: "adam", LR: 1, Beta1: 1, Eps: 1}, "beta1 in [0, 1) (got 1)"},
		{Optimizer{Kind: "adam", LR: 1, Beta2: -0.5, Eps: 1}, "beta2 in [0, 1) (got -0.5)"},
		{Optimizer{Kind: "adam", LR: 1}, "adam needs eps > 0 (got 0)"},
		{Optimizer{Kind: "sgd", LR: 1, Schedule: Schedule{Kind: "halving"}}, "halve-every"},
		{Optimizer{Kind: "sgd", LR: 1, Schedule: Schedule{Kind: "exp", Decay: 0.5}}, "decay"},
		{Optimizer{Kind: "sgd", LR: 1, Schedule: Schedule{Kind: "cosine"}}, "schedule"},
	} {
		if err := c.o.Validate(); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%+v: %v, want an error about %q", c.o, err, c.says)
		}
	}
}
