package job

import (
	"fmt"
)

// Non-finite gradient policies (Shard.NonFinite).
const (
	Refuse = "refuse" // refuse the whole push
	Skip   = "skip"   // accept the push but drop its non-finite blocks' updates
)

// ShardConfig is what a shard's state machine needs to know of its job:
// its consistency mode, ranks and staleness, and its optimizer.
type ShardConfig struct {
	Mode      string    `json:"mode"`
	Staleness int64     `json:"staleness,omitempty"`
	Ranks     int       `json:"ranks"`
	Optimizer Optimizer `json:"optimizer"`
	NonFinite string    `json:"non_finite,omitempty"` // Refuse (default) or Skip
	// PullTTL is how many ticks a pull may wait before it is answered with
	// Expired (its sender resends); 0 means it waits as long as it takes.
	PullTTL int64 `json:"pull_ttl,omitempty"`
	// Elastic (ssp): ranks come and go (workers take data as tasks), so
	// only active ranks bound the staleness: a rank is active from its
	// first push under its epoch until it says it is idle (a push with no
	// blocks) or is fenced off (Idle, or a newer epoch).
	Elastic bool `json:"elastic,omitempty"`
	// Keep (sync): each block keeps a copy of its parameters at every
	// clock that is a positive multiple of Keep and below KeepBefore (0: no
	// bound), the latest such copy only, so that an exact pull of that step
	// (an evaluation's) is answered with that step's parameters after the
	// block has moved on.
	Keep       int64 `json:"keep,omitempty"`
	KeepBefore int64 `json:"keep_before,omitempty"`
	// Seats, above 1: each model replica is Seats ranks (rank r is seat r
	// mod Seats of replica r / Seats), and tensor t's blocks are pushed by
	// seat TensorSeat[t] of every replica alone. In sync mode a block's
	// step then waits for the Ranks/Seats replicas' pushes, and its update
	// is their mean, in replica order: the sum a job of as many one-rank
	// replicas makes. In async and ssp each push applies as it comes, and
	// a rank's clock counts only the blocks its seat pushes.
	Seats      int   `json:"seats,omitempty"`
	TensorSeat []int `json:"tensor_seat,omitempty"`
}

// Replicas is how many model replicas push each block.
func (c ShardConfig) Replicas() int { return c.Ranks / max(1, c.Seats) }

// Pushes reports whether rank pushes the blocks of tensor t.
func (c ShardConfig) Pushes(rank, t int) bool {
	return c.Seats <= 1 || t < len(c.TensorSeat) && rank%c.Seats == c.TensorSeat[t]
}

// Validate reports the first thing wrong with c.
func (c ShardConfig) Validate() error {
	switch c.Mode {
	case Sync, Async:
	case SSP:
		if c.Staleness < 0 {
			return fmt.Errorf("staleness must not be negative (got %d)", c.Staleness)
		}
	default:
		return fmt.Errorf("mode %q: use sync, ssp or async", c.Mode)
	}
	if c.Ranks < 1 {
		return fmt.Errorf("a job needs at least one rank (got %d)", c.Ranks)
	}
	if c.Keep < 0 || c.KeepBefore < 0 {
		return fmt.Errorf("keep and keep_before must not be negative (got %d, %d)", c.Keep, c.KeepBefore)
	}
	if c.Keep > 0 && c.Mode != Sync {
		return fmt.Errorf("keep is for sync mode: a %s shard has no step boundaries", c.Mode)
	}
	if c.Seats < 0 || c.Seats > 1 && (c.Ranks%c.Seats != 0 || len(c.TensorSeat) == 0) {
		return fmt.Errorf("seats: %d seats a replica over %d ranks with %d tensors placed: ranks must be a multiple of seats, and each tensor on a seat", c.Seats, c.Ranks, len(c.TensorSeat))
	}
	for t, seat := range c.TensorSeat {
		if seat < 0 || seat >= c.Seats {
			return fmt.Errorf("seats: tensor %d on seat %d of %d", t, seat, c.Seats)
		}
	}
	if c.NonFinite != "" && c.NonFinite != Refuse && c.NonFinite != Skip {
		return fmt.Errorf("non-finite policy %q: use refuse or skip", c.NonFinite)
	}
	return c.Optimizer.Validate()
}
