package models

import "math"

// Float32 kernels of the activation functions: the LSTM evaluates tens of
// millions of sigmoids and tanhs per step, and math.Exp in float64 would
// dominate the step. They are tested against math over their whole range.

// exp32 is e^x in float32 to within 2 ulp: x = n ln2 + r with |r| <= ln2/2,
// e^r by Cephes' degree-6 polynomial, then scaled by 2^n through the exponent
// bits. Inputs beyond the float32 range saturate to 0 or +Inf.
func exp32(x float32) float32 {
	const (
		hi   = 88.72283905206835
		lo   = -103.972084
		log2 = 1.44269504088896341
		c1   = 0.693359375
		c2   = -2.12194440e-4
	)
	if x > hi {
		return float32(math.Inf(1))
	}
	if x < lo {
		return 0
	}
	t := x * log2
	var k int32 // round to nearest
	if t >= 0 {
		k = int32(t + 0.5)
	} else {
		k = int32(t - 0.5)
	}
	n := float32(k)
	r := x - n*c1 - n*c2
	p := float32(1.9875691500e-4)
	p = p*r + 1.3981999507e-3
	p = p*r + 8.3334519073e-3
	p = p*r + 4.1665795894e-2
	p = p*r + 1.6666665459e-1
	p = p*r + 5.0000001201e-1
	p = p*r*r + r + 1
	// Scale by 2^n in two halves so that subnormal results come out right.
	h := k / 2
	return p * math.Float32frombits(uint32(h+127)<<23) * math.Float32frombits(uint32(k-h+127)<<23)
}

// sigmoid32 is 1/(1+e^-x).
func sigmoid32(x float32) float32 { return 1 / (1 + exp32(-x)) }

// tanh32 is tanh(x) = sign(x) (1-e^-2|x|)/(1+e^-2|x|), odd by construction.
func tanh32(x float32) float32 {
	a := x
	if a < 0 {
		a = -a
	}
	if a < 0.0004 { // tanh(x) = x - x^3/3 + ..., exact to float32 here
		return x
	}
	e := exp32(-2 * a)
	t := (1 - e) / (1 + e)
	if x < 0 {
		return -t
	}
	return t
}
