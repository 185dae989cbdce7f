//go:build openblas

package models

// #cgo LDFLAGS: -lopenblas
import "C"

import (
	"gonum.org/v1/gonum/blas/blas32"
	"gonum.org/v1/netlib/blas/netlib"
)

// The fast build (go build -tags openblas, with Debian's libopenblas-dev):
// float32 GEMMs go to OpenBLAS through gonum's BLAS interface.
func init() { blas32.Use(netlib.Implementation{}) }

// BLAS names the BLAS implementation float32 GEMMs use.
const BLAS = "openblas"
