package paramserver

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"

	"github.com/downpour-ml/downpour/models"
)

// Block is one fixed-size piece of a tensor, the unit of placement, push and
// pull. Offset and Len locate it in the model's flat parameter vector.
type Block struct {
	ID     uint32 `json:"id"`
	Tensor int    `json:"tensor"`
	Offset int    `json:"offset"`
	Len    int    `json:"len"`
	Shard  int    `json:"shard"`
}

// Placement assigns every block of a model to a shard. It is written to etcd
// by the coordinator and read by shards and workers.
type Placement struct {
	// Version counts placements of the job: 1 for the first, one more for
	// each re-placement. It fences eras: shards and workers talk on the
	// subjects of one version only.
	Version int64 `json:"version"`
	// Start is the step the placement starts from: 0 for the first, else the
	// step of the complete checkpoint that the shards restore from and the
	// workers resume at.
	Start int64 `json:"start"`
	// From names the snapshot files of step Start that the shards restore
	// from (one per shard of the placement they were taken under); empty
	// for the first placement.
	From []string `json:"from,omitempty"`
	// Epochs is, per rank, the oldest epoch the shards accept from the start
	// of this placement: a rank whose holder died is fenced at once, before
	// its next holder pushes.
	Epochs    []uint64        `json:"epochs,omitempty"`
	BlockSize int             `json:"block_size"`
	Shards    int             `json:"shards"`
	Tensors   []models.Tensor `json:"tensors"`
	Blocks    []Block         `json:"blocks"` // by id: Blocks[i].ID == i
}

// HashFunc scores a (block, shard) pair for rendezvous hashing: a block
// prefers the shards that score it highest.
type HashFunc func(block uint32, shard int) uint64

// DefaultHash is a 64-bit mix (splitmix64) of the pair.
func DefaultHash(block uint32, shard int) uint64 {
	x := uint64(block)<<32 | uint64(uint32(shard))
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// DefaultSlack is how far above the mean a shard's bytes may go.
const DefaultSlack = 0.05

// Place cuts each tensor into blocks of at most blockSize elements (a block
// never spans two tensors) and places them with PlaceWith(DefaultHash,
// DefaultSlack).
func Place(tensors []models.Tensor, blockSize, shards int) *Placement {
	return PlaceWith(tensors, blockSize, shards, DefaultHash, DefaultSlack)
}

// PlaceWith places blocks by rendezvous hashing with bounded loads: each
// block, largest first (ties by id), goes to the shard that scores it highest
// under hash among those that still have room, where a shard has room while
// its elements stay within (1+slack) times the mean. So no shard holds more
// than (1+slack) times its share of bytes (unless a single block is larger
// than that), and a block keeps its shard when shards come and go unless
// loads force a move. The result depends only on the arguments.
func PlaceWith(tensors []models.Tensor, blockSize, shards int, hash HashFunc, slack float64) *Placement {
	if blockSize < 1 || shards < 1 {
		panic("paramserver: Place needs a positive block size and shard count")
	}
	p := &Placement{Version: 1, BlockSize: blockSize, Shards: shards, Tensors: tensors}
	off := 0
	for ti, t := range tensors {
		n := t.Size()
		for o := 0; o < n; o += blockSize {
			p.Blocks = append(p.Blocks, Block{ID: uint32(len(p.Blocks)), Tensor: ti, Offset: off + o, Len: min(blockSize, n-o)})
		}
		off += n
	}
	capacity := int(math.Ceil((1 + slack) * float64(off) / float64(shards)))
	order := make([]int, len(p.Blocks))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return p.Blocks[order[a]].Len > p.Blocks[order[b]].Len })
	load := make([]int, shards)
	ranked := make([]int, shards)
	for _, i := range order {
		b := &p.Blocks[i]
		for s := range ranked {
			ranked[s] = s
		}
		sort.Slice(ranked, func(x, y int) bool {
			hx, hy := hash(b.ID, ranked[x]), hash(b.ID, ranked[y])
			return hx > hy || hx == hy && ranked[x] < ranked[y]
		})
		b.Shard = -1
		for _, s := range ranked {
			if load[s]+b.Len <= capacity {
				b.Shard = s
				break
			}
		}
		if b.Shard < 0 { // no shard has room: the least loaded takes it
			b.Shard = 0
			for s := range load {
				if load[s] < load[b.Shard] {
					b.Shard = s
				}
			}
		}
		load[b.Shard] += b.Len
	}
	return p
}

// Reshard returns the next placement of p's blocks (same tensors and block
// size) on shards shards, starting from the checkpoint of step start held in
// the snapshot files from.
func (p *Placement) Reshard(shards int, start int64, from []string) (*Placement, error) {
	if shards < 1 || shards > len(p.Blocks) {
		return nil, fmt.Errorf("cannot place %d blocks on %d shards", len(p.Blocks), shards)
	}
	if start < p.Start {
		return nil, fmt.Errorf("placement %d starts at step %d: a new one cannot start earlier, at %d", p.Version, p.Start, start)
	}
	q := Place(p.Tensors, p.BlockSize, shards)
	if start > 0 && len(from) == 0 {
		return nil, fmt.Errorf("a placement starting at step %d needs the snapshot files of that step", start)
	}
	q.Version, q.Start, q.From = p.Version+1, start, from
	return q, nil
}

// OnShard lists the blocks of shard s in id order.
func (p *Placement) OnShard(s int) []Block {
	var bs []Block
	for _, b := range p.Blocks {
		if b.Shard == s {
			bs = append(bs, b)
		}
	}
	return bs
}

// Size is the length of the flat parameter vector.
func (p *Placement) Size() int { return models.TotalSize(p.Tensors) }

// Encode is the JSON form stored in etcd.
func (p *Placement) Encode() []byte {
	b, err := json.Marshal(p)
	if err != nil {
		panic(err)
	}
	return b
}

// DecodePlacement parses a placement and checks that it is whole: blocks in id
// order, tiling the parameter vector exactly, each on a valid shard.
func DecodePlacement(data []byte) (*Placement, error) {
	var p Placement
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("placement: %w", err)
	}
	if p.Shards < 1 || p.BlockSize < 1 || p.Version < 1 || p.Start < 0 {
		return nil, fmt.Errorf("placement: version %d from step %d, %d shards, block size %d", p.Version, p.Start, p.Shards, p.BlockSize)
	}
	off := 0
	for i, b := range p.Blocks {
		if b.ID != uint32(i) || b.Offset != off || b.Len < 1 || b.Len > p.BlockSize ||
			b.Shard < 0 || b.Shard >= p.Shards || b.Tensor < 0 || b.Tensor >= len(p.Tensors) {
			return nil, fmt.Errorf("placement: block %d is inconsistent: %+v", i, b)
		}
		off += b.Len
	}
	if off != p.Size() {
		return nil, fmt.Errorf("placement: blocks cover %d of %d parameters", off, p.Size())
	}
	return &p, nil
}
