package paramserver

import "github.com/downpour-ml/downpour/paramserver/placement"

// Placement and Block are package placement's: the shards serve, and the
// client addresses, the blocks of a placement.
type (
	Placement = placement.Placement
	Block     = placement.Block
)
