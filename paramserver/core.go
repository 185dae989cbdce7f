package paramserver

import (
	"fmt"

	"github.com/downpour-ml/downpour/internal/wire"
)

// Core is the state of one parameter-server shard in sync mode (BSP), as a
// pure state machine: pushes go in, the clock and parameters come out. It does
// no IO and takes no locks; the Service that drives it serialises calls.
//
// Invariants:
//   - the clock is the number of steps applied; only pushes for step == clock
//     are stored, earlier ones are acknowledged duplicates, later ones refused;
//   - step t is applied once every rank has pushed every block of the shard
//     for t, as the sum over ranks in rank order (so arrival order does not
//     matter), scaled by lr/ranks;
//   - a (rank, step, block) gradient is stored at most once: a resend never
//     changes a parameter;
//   - a push whose epoch is older than the rank's current epoch changes
//     nothing; a push is checked whole before any of it is stored.
type Core struct {
	ranks  int
	eta    float32 // lr / ranks
	clock  int64
	ids    []uint32       // owned block ids, ascending
	pos    map[uint32]int // block id -> index into ids
	w      [][]float32    // parameters per owned block
	epochs []uint64       // current epoch per rank
	// The current step's gradients: g[block][rank], stored when got[block][rank].
	g       [][][]float32
	got     [][]bool
	missing int       // (block, rank) pairs not yet received for step clock
	sum     []float32 // scratch for the rank-ordered sum
}

// NewCore makes the shard that owns blocks for a job of ranks ranks, with
// learning rate lr, initialising each block's parameters with init.
func NewCore(ranks int, lr float64, blocks []Block, init func(b Block, dst []float32)) *Core {
	c := &Core{
		ranks:  ranks,
		eta:    float32(lr) / float32(ranks),
		pos:    make(map[uint32]int, len(blocks)),
		epochs: make([]uint64, ranks),
	}
	maxLen := 0
	for i, b := range blocks {
		c.ids = append(c.ids, b.ID)
		c.pos[b.ID] = i
		w := make([]float32, b.Len)
		init(b, w)
		c.w = append(c.w, w)
		g := make([][]float32, ranks)
		for r := range g {
			g[r] = make([]float32, b.Len)
		}
		c.g = append(c.g, g)
		c.got = append(c.got, make([]bool, ranks))
		maxLen = max(maxLen, b.Len)
	}
	c.sum = make([]float32, maxLen)
	c.missing = len(blocks) * ranks
	return c
}

// Clock is the number of steps applied.
func (c *Core) Clock() int64 { return c.clock }

// Blocks lists the owned block ids in ascending order.
func (c *Core) Blocks() []uint32 { return c.ids }

// Params returns the parameters of block id (the live slice: callers must not
// keep it across calls that change the core).
func (c *Core) Params(id uint32) ([]float32, bool) {
	i, ok := c.pos[id]
	if !ok {
		return nil, false
	}
	return c.w[i], true
}

func refuse(k wire.Kind, format string, args ...any) error {
	return &wire.Error{Kind: k, Msg: fmt.Sprintf(format, args...)}
}

// Push offers a gradient. It returns whether the push completed a step (the
// clock advanced), or an error with a wire.Kind when the push is refused; a
// refused push changes nothing.
func (c *Core) Push(p *wire.PushRequest) (applied bool, err error) {
	if int64(p.Rank) >= int64(c.ranks) {
		return false, refuse(wire.BadRank, "rank %d outside 0..%d", p.Rank, c.ranks-1)
	}
	if p.Epoch < c.epochs[p.Rank] {
		return false, refuse(wire.StaleEpoch, "rank %d epoch %d is older than current epoch %d", p.Rank, p.Epoch, c.epochs[p.Rank])
	}
	if p.Step < c.clock {
		return false, nil // a resend of an applied step: acknowledged, not applied again
	}
	if p.Step > c.clock {
		return false, refuse(wire.BadStep, "step %d is ahead of the shard's clock %d", p.Step, c.clock)
	}
	for _, b := range p.Blocks {
		i, ok := c.pos[b.ID]
		if !ok {
			return false, refuse(wire.UnknownBlock, "block %d is not on this shard", b.ID)
		}
		if len(b.Data) != 4*len(c.w[i]) {
			return false, refuse(wire.BadLength, "block %d: %d bytes, want %d", b.ID, len(b.Data), 4*len(c.w[i]))
		}
		if !wire.Finite(b.Data) {
			return false, refuse(wire.NonFinite, "block %d from rank %d holds NaN or Inf", b.ID, p.Rank)
		}
	}
	c.epochs[p.Rank] = p.Epoch
	for _, b := range p.Blocks {
		i := c.pos[b.ID]
		if c.got[i][p.Rank] {
			continue // duplicate
		}
		wire.CopyFloats(c.g[i][p.Rank], b.Data)
		c.got[i][p.Rank] = true
		c.missing--
	}
	if c.missing > 0 {
		return false, nil
	}
	c.apply()
	return true, nil
}

// apply adds the current step's gradients into the parameters and advances
// the clock.
func (c *Core) apply() {
	for i, w := range c.w {
		sum := c.sum[:len(w)]
		copy(sum, c.g[i][0])
		for r := 1; r < c.ranks; r++ {
			for j, v := range c.g[i][r] {
				sum[j] += v
			}
		}
		for j, v := range sum {
			w[j] -= c.eta * v
		}
		clear(c.got[i])
	}
	c.missing = len(c.w) * c.ranks
	c.clock++
}

// Read returns the parameters of the blocks ids, in order, as wire blocks whose
// data views the live parameters: encode them before the core changes.
func (c *Core) Read(ids []uint32) ([]wire.Block, error) {
	out := make([]wire.Block, len(ids))
	for k, id := range ids {
		i, ok := c.pos[id]
		if !ok {
			return nil, refuse(wire.UnknownBlock, "block %d is not on this shard", id)
		}
		out[k] = wire.Block{ID: id, Data: wire.FloatBytes(c.w[i])}
	}
	return out, nil
}
