package paramserver

import (
	"gonum.org/v1/gonum/blas/gonum"

	"github.com/downpour-ml/downpour/paramserver/config"
	"github.com/downpour-ml/downpour/paramserver/placement"
)

// Consistency modes (placement.Sync, SSP and Async).
const (
	Sync  = placement.Sync
	SSP   = placement.SSP
	Async = placement.Async
)

// Non-finite gradient policies (config.Refuse and Skip).
const (
	Refuse = config.Refuse
	Skip   = config.Skip
)

// What a shard runs by is package config's: the job's mode and ranks
// (ShardConfig), and the optimizer that updates its blocks.
type (
	ShardConfig = config.Shard
	Optimizer   = config.Optimizer
	Schedule    = config.Schedule
)

// DefaultOptimizer is config.DefaultOptimizer: an optimizer of the given
// kind and learning rate with that kind's usual other settings.
func DefaultOptimizer(kind string, lr float64) Optimizer { return config.DefaultOptimizer(kind, lr) }

// native is gonum's own BLAS (see config's note on its float32 kernels),
// for the sums a sync step takes over its ranks' gradients.
var native gonum.Implementation
