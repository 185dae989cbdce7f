package paramserver

import (
	"encoding/json"
	"fmt"
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
	Version   int64           `json:"version"`
	BlockSize int             `json:"block_size"`
	Shards    int             `json:"shards"`
	Tensors   []models.Tensor `json:"tensors"`
	Blocks    []Block         `json:"blocks"` // by id: Blocks[i].ID == i
}

// Place cuts each tensor into blocks of at most blockSize elements (a block
// never spans two tensors) and assigns blocks to shards by bytes: largest
// block first, each to the shard holding the fewest bytes so far, ties to the
// lowest shard. The result depends only on its arguments.
func Place(tensors []models.Tensor, blockSize, shards int) *Placement {
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
	order := make([]int, len(p.Blocks))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return p.Blocks[order[a]].Len > p.Blocks[order[b]].Len })
	load := make([]int, shards)
	for _, i := range order {
		best := 0
		for s := 1; s < shards; s++ {
			if load[s] < load[best] {
				best = s
			}
		}
		p.Blocks[i].Shard = best
		load[best] += p.Blocks[i].Len
	}
	return p
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
	if p.Shards < 1 || p.BlockSize < 1 {
		return nil, fmt.Errorf("placement: %d shards, block size %d", p.Shards, p.BlockSize)
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
