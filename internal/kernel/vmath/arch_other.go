//go:build noasm || !amd64

package vmath

func pick(string) *kernels { return nil }

func sumSquaresVec(*float32, int, *[32]float64) { panic("vmath: no assembly") }

func maxoutVec(*float32, int, *[16]int32, *float32, *int32, int)       { panic("vmath: no assembly") }
func elementwiseVec(int, *float32, *float32, int)                      { panic("vmath: no assembly") }
func adagradVec(*float32, *float32, *float32, int, *[2]float32)        { panic("vmath: no assembly") }
func adamVec(*float32, *float32, *float32, *float32, int, *[8]float32) { panic("vmath: no assembly") }
func momentumVec(*float32, *float32, *float32, int, *[2]float32)       { panic("vmath: no assembly") }
