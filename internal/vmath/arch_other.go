//go:build noasm || !amd64

package vmath

func pick(string) *kernels { return nil }
