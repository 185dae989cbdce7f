package models

import (
	"math"
)

// Parzen-window log-likelihood, as Goodfellow et al. evaluated GANs: a
// Gaussian kernel of width sigma on each of the model's samples mu_i gives
//
//	log p(x) = logmeanexp_i(-||x - mu_i||^2 / (2 sigma^2)) - d log(sigma sqrt(2 pi))
//
// The squared distances of a block of test points to all samples come from
// one GEMM (||x||^2 - 2 x.mu + ||mu||^2), so 10,000 x 10,000 points of
// dimension 784 take seconds.

// ParzenLogLik returns log p(x) for every row of xs (n x d) under the
// samples (m x d) with kernel width sigma.
func ParzenLogLik(samples, xs []float32, d int, sigma float64) []float64 {
	m, n := len(samples)/d, len(xs)/d
	out := make([]float64, n)
	sqS := rowSquares(samples, d)
	const block = 256 // test points per GEMM
	dots := make([]float32, block*m)
	for lo := 0; lo < n; lo += block {
		hi := min(lo+block, n)
		rows := hi - lo
		x := xs[lo*d : hi*d]
		matmul(dots[:rows*m], x, false, samples, true, rows, m, d, false)
		sqX := rowSquares(x, d)
		for r := 0; r < rows; r++ {
			row := dots[r*m : (r+1)*m]
			mx := math.Inf(-1)
			for j, v := range row {
				e := -(sqX[r] - 2*float64(v) + sqS[j]) / (2 * sigma * sigma)
				mx = math.Max(mx, e)
			}
			var z float64
			for j, v := range row {
				e := -(sqX[r] - 2*float64(v) + sqS[j]) / (2 * sigma * sigma)
				z += math.Exp(e - mx)
			}
			out[lo+r] = mx + math.Log(z/float64(m)) - float64(d)*math.Log(sigma*math.Sqrt(2*math.Pi))
		}
	}
	return out
}

func rowSquares(x []float32, d int) []float64 {
	out := make([]float64, len(x)/d)
	for i := range out {
		var s float64
		for _, v := range x[i*d : (i+1)*d] {
			s += float64(v) * float64(v)
		}
		out[i] = s
	}
	return out
}

// ParzenResult is a Parzen-window estimate: the mean log-likelihood of the
// test points and its standard error, at the chosen sigma.
type ParzenResult struct {
	Sigma  float64
	Mean   float64
	StdErr float64
}

// SigmaGrid is the authors' search grid: 10 values logspaced over [0.1, 1].
func SigmaGrid() []float64 {
	g := make([]float64, 10)
	for i := range g {
		g[i] = math.Pow(10, -1+float64(i)/9)
	}
	return g
}

// Parzen picks sigma from grid by the best mean log-likelihood of valid,
// then reports the mean and standard error over test.
func Parzen(samples, valid, test []float32, d int, grid []float64) ParzenResult {
	best, bestLL := grid[0], math.Inf(-1)
	for _, s := range grid {
		if ll := mean(ParzenLogLik(samples, valid, d, s)); ll > bestLL {
			best, bestLL = s, ll
		}
	}
	lls := ParzenLogLik(samples, test, d, best)
	mu := mean(lls)
	var v float64
	for _, x := range lls {
		v += (x - mu) * (x - mu)
	}
	se := 0.0
	if len(lls) > 1 {
		se = math.Sqrt(v/float64(len(lls)-1)) / math.Sqrt(float64(len(lls)))
	}
	return ParzenResult{Sigma: best, Mean: mu, StdErr: se}
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}
