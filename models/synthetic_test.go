package models

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// SyntheticGrad is len(w) times the gradient of the loss it returns, by
// central differences; its loss is 0 at the target c*u.
func TestSyntheticGradByFiniteDifferences(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 1))
	const n = 37
	w, u, g := make([]float32, n), make([]float32, n), make([]float32, n)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	SyntheticDirection(u, 3)
	c := SyntheticScale(3, 2, 5)
	SyntheticGrad(g, w, u, c)
	loss := func() float64 { return SyntheticGrad(make([]float32, n), w, u, c) }
	for i := range w {
		const h = 1e-2 // the loss is quadratic: central differences are exact but for rounding
		x := w[i]
		w[i] = x + h
		up := loss()
		w[i] = x - h
		down := loss()
		w[i] = x
		fd := (up - down) / (2 * h) * n
		if math.Abs(fd-float64(g[i])) > 1e-3*(1+math.Abs(fd)) {
			t.Fatalf("parameter %d: gradient %v, finite differences %v", i, g[i], fd)
		}
	}
	for i := range w {
		w[i] = c * u[i]
	}
	if l := SyntheticGrad(g, w, u, c); l != 0 {
		t.Fatalf("loss %v at the target", l)
	}
}

// The batches' scales lie in [0.5, 1.5), differ by data shard and step, and
// repeat for the same ones; the direction is the seed's.
func TestSyntheticDataIsDeterministic(t *testing.T) {
	seen := map[float32]bool{}
	for sh := range 4 {
		for step := range int64(50) {
			c := SyntheticScale(9, sh, step)
			if c < 0.5 || c >= 1.5 || c != SyntheticScale(9, sh, step) {
				t.Fatalf("scale %v of shard %d step %d", c, sh, step)
			}
			seen[c] = true
		}
	}
	if len(seen) < 195 {
		t.Fatalf("only %d distinct scales of 200 batches", len(seen))
	}
	a, b := make([]float32, 100), make([]float32, 100)
	SyntheticDirection(a, 1)
	SyntheticDirection(b, 1)
	for i := range a {
		if a[i] != b[i] || a[i] < -1 || a[i] >= 1 {
			t.Fatalf("direction %d: %v, %v", i, a[i], b[i])
		}
	}
}

// The tensors split the parameters as evenly as can be, the longer first.
func TestSyntheticTensors(t *testing.T) {
	c := SyntheticConfig{Params: 10, NumTensors: 4, StepMs: 2.5}
	var sizes []int
	for i, ts := range c.Tensors() {
		sizes = append(sizes, ts.Size())
		if ts.Name != "syn."+string(rune('0'+i)) {
			t.Fatalf("tensor %d named %s", i, ts.Name)
		}
	}
	if len(sizes) != 4 || sizes[0] != 3 || sizes[1] != 3 || sizes[2] != 2 || sizes[3] != 2 || TotalSize(c.Tensors()) != 10 {
		t.Fatalf("sizes %v", sizes)
	}
	if c.StepTime() != 2500*time.Microsecond {
		t.Fatalf("step time %v", c.StepTime())
	}
}

func TestSyntheticValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  SyntheticConfig
		want string
	}{
		{SyntheticConfig{Params: 0, NumTensors: 1}, "params"},
		{SyntheticConfig{Params: 4, NumTensors: 5}, "tensors"},
		{SyntheticConfig{Params: 4, NumTensors: 0}, "tensors"},
		{SyntheticConfig{Params: 4, NumTensors: 1, StepMs: -1}, "step time"},
		{SyntheticConfig{Params: 4, NumTensors: 1, StepMs: math.NaN()}, "step time"},
	} {
		if err := c.cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error naming %s", c.cfg, err, c.want)
		}
	}
	if err := (SyntheticConfig{Params: 4, NumTensors: 4, StepMs: 0}).Validate(); err != nil {
		t.Fatal(err)
	}
}
