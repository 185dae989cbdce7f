//go:build noasm || !amd64

package vmath

func pick(string) *kernels { return nil }

func sumSquaresVec(*float32, int, *[32]float64) { panic("vmath: no assembly") }
