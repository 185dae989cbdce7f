package models

import "github.com/downpour-ml/downpour/internal/vmath"

// Float32 kernels of the activation functions: the LSTM evaluates tens of
// millions of sigmoids and tanhs per step, and math.Exp in float64 would
// dominate the step. They are internal/vmath's, tested against math over
// their whole range there.

func sigmoid32(x float32) float32 { return vmath.Sigmoid(x) }
func tanh32(x float32) float32    { return vmath.Tanh(x) }
