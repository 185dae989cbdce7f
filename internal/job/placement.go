package job

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"

	"github.com/downpour-ml/downpour/models"
)

// Consistency modes: how the shards apply the ranks' pushes.
const (
	Sync  = "sync"  // BSP: step t applied once every rank pushed it, summed in rank order
	SSP   = "ssp"   // stale synchronous: apply on arrival; a pull at clock c waits for the slowest rank to reach c - staleness
	Async = "async" // Downpour: apply on arrival; pulls never wait
)

// Block is one fixed-size piece of a tensor, the unit of placement, push and
// pull. Offset and Len locate it in the model's flat parameter vector.
type Block struct {
	ID     uint32 `json:"id"`
	Tensor int    `json:"tensor"`
	Offset int    `json:"offset"`
	Len    int    `json:"len"`
	// Shard is the block's primary: the shard that takes its pushes and
	// answers its pulls.
	Shard int `json:"shard"`
	// Backups are the other shards holding a copy of the block (a job with
	// PSReplicas R: R-1 of them, fewer while some are down), in the order
	// they take over: when the primary dies, Backups[0] becomes it.
	Backups []int `json:"backups,omitempty"`
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
	Epochs []uint64 `json:"epochs,omitempty"`
	// Copies is how many shards hold each block (the job's PSReplicas):
	// 0 or 1 for one, the primary alone.
	Copies int `json:"copies,omitempty"`
	// Down lists the shards (in order) that have died since the last
	// placement that started from a checkpoint, and whose copies the
	// placement no longer counts: a block whose primary is down has one of
	// its backups as primary (see Handover).
	Down []int `json:"down,omitempty"`
	// Filling lists the shards (in order) that came back after they went
	// down (Rejoin) and are being filled from their chains: each is the
	// last copy of the blocks it holds. It acknowledges updates as every
	// copy does, but is no copy to promote until a placement without it
	// here says it is filled (Filled).
	Filling []int `json:"filling,omitempty"`
	// HandedOver: this placement carries on from the one before it rather
	// than from a checkpoint. Its shards keep the state they hold, no step
	// is redone, and Start and From are the previous placement's.
	HandedOver bool `json:"handed_over,omitempty"`
	// Since (with HandedOver) is the version of the placement whose state
	// this one carries on: the last one that started from a checkpoint.
	Since     int64           `json:"since,omitempty"`
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

// MessageBytes is the size paramserver's client fills messages to (unless a
// block alone needs more), however much more the server's max_payload
// allows: past it, per-message costs no longer show, and a larger message
// would hold several of Place's runs, which then could not go split.
const MessageBytes = 1 << 20

// RunBytes bounds the bytes of the runs of consecutive blocks that Place
// keeps together on one shard: a run fills one message (MessageBytes,
// NATS's default max_payload) with room for its envelope.
const RunBytes = MessageBytes - 64<<10

// RunsPerShard is how many runs Place leaves each shard at least, on
// average, so that bounded loads can still balance them.
const RunsPerShard = 16

// Place cuts each tensor into blocks of at most blockSize elements (a block
// never spans two tensors) and places them with PlaceRuns(DefaultHash,
// DefaultSlack), in runs of as many consecutive blocks of a tensor as fit
// in RunBytes, but short enough to make RunsPerShard runs a shard (a small
// model's blocks go one by one). A run lies contiguous in the flat vector
// and on its shard, so it travels as one message straight from the
// worker's gradient, with no copy into a message first (see paramserver's Client.Push).
func Place(tensors []models.Tensor, blockSize, shards int) *Placement {
	return PlaceCopies(tensors, blockSize, shards, 1)
}

// PlaceCopies is Place with copies shards holding each block (see
// placeRuns): a primary and copies-1 backups, each on a shard of its own.
// copies must be at least 1 and at most shards.
func PlaceCopies(tensors []models.Tensor, blockSize, shards, copies int) *Placement {
	blocks := 0
	for _, t := range tensors {
		blocks += (t.Size() + blockSize - 1) / blockSize
	}
	run := max(1, min(RunBytes/(4*blockSize), blocks/(RunsPerShard*shards)))
	return placeRuns(tensors, blockSize, shards, run, copies, DefaultHash, DefaultSlack)
}

// PlaceWith is PlaceRuns with runs of one block: every block is placed on
// its own.
func PlaceWith(tensors []models.Tensor, blockSize, shards int, hash HashFunc, slack float64) *Placement {
	return PlaceRuns(tensors, blockSize, shards, 1, hash, slack)
}

// PlaceRuns places blocks by rendezvous hashing with bounded loads, in runs
// of up to run consecutive blocks of one tensor that go to one shard
// together: each run, largest first (ties by first block id), goes to the
// shard that scores its first block highest under hash among those that
// still have room, where a shard has room while its elements stay within
// (1+slack) times the mean. So no shard holds more than (1+slack) times its
// share of bytes (unless a single run is larger than that), and a run keeps
// its shard when shards come and go unless loads force a move. The result
// depends only on the arguments.
func PlaceRuns(tensors []models.Tensor, blockSize, shards, run int, hash HashFunc, slack float64) *Placement {
	return placeRuns(tensors, blockSize, shards, run, 1, hash, slack)
}

// placeRuns is PlaceRuns with copies shards holding each run: after its
// primary, each run takes copies-1 backups, the next shards in its hash
// order that hold no copy of it yet and whose backup elements stay within
// (1+slack) times the mean backup load (the least loaded, where none has
// room). So no shard holds two copies of a block, and the backup bytes of
// every shard stay near their mean (W2 with 16Ki-float blocks on 2-8
// shards: within 6%; TestPlaceCopiesBalanced).
func placeRuns(tensors []models.Tensor, blockSize, shards, run, copies int, hash HashFunc, slack float64) *Placement {
	if blockSize < 1 || shards < 1 || run < 1 {
		panic("paramserver: Place needs a positive block size, shard count and run")
	}
	if copies < 1 || copies > shards {
		panic(fmt.Sprintf("paramserver: %d copies of each block need as many shards (got %d)", copies, shards))
	}
	p := &Placement{Version: 1, BlockSize: blockSize, Shards: shards, Tensors: tensors}
	if copies > 1 {
		p.Copies = copies
	}
	type span struct{ first, end, len int } // a run: blocks [first, end), len elements
	var runs []span
	off := 0
	for ti, t := range tensors {
		n := t.Size()
		for o := 0; o < n; o += blockSize {
			if (o/blockSize)%run == 0 {
				runs = append(runs, span{first: len(p.Blocks), end: len(p.Blocks)})
			}
			r := &runs[len(runs)-1]
			p.Blocks = append(p.Blocks, Block{ID: uint32(len(p.Blocks)), Tensor: ti, Offset: off + o, Len: min(blockSize, n-o)})
			r.end++
			r.len += p.Blocks[len(p.Blocks)-1].Len
		}
		off += n
	}
	capacity := int(math.Ceil((1 + slack) * float64(off) / float64(shards)))
	backupCap := int(math.Ceil((1 + slack) * float64((copies-1)*off) / float64(shards)))
	sort.SliceStable(runs, func(a, b int) bool { return runs[a].len > runs[b].len })
	load := make([]int, shards)
	backupLoad := make([]int, shards)
	ranked := make([]int, shards)
	for _, r := range runs {
		id := uint32(r.first)
		for s := range ranked {
			ranked[s] = s
		}
		sort.Slice(ranked, func(x, y int) bool {
			hx, hy := hash(id, ranked[x]), hash(id, ranked[y])
			return hx > hy || hx == hy && ranked[x] < ranked[y]
		})
		shard := -1
		for _, s := range ranked {
			if load[s]+r.len <= capacity {
				shard = s
				break
			}
		}
		if shard < 0 { // no shard has room: the least loaded takes it
			shard = 0
			for s := range load {
				if load[s] < load[shard] {
					shard = s
				}
			}
		}
		load[shard] += r.len
		backups := make([]int, 0, copies-1)
		holds := func(s int) bool { return s == shard || slices.Contains(backups, s) }
		for len(backups) < copies-1 {
			b := -1
			for _, s := range ranked {
				if !holds(s) && backupLoad[s]+r.len <= backupCap {
					b = s
					break
				}
			}
			if b < 0 { // none has room: the least loaded that holds no copy
				for s := range backupLoad {
					if !holds(s) && (b < 0 || backupLoad[s] < backupLoad[b]) {
						b = s
					}
				}
			}
			backupLoad[b] += r.len
			backups = append(backups, b)
		}
		for i := r.first; i < r.end; i++ {
			p.Blocks[i].Shard = shard
			if len(backups) > 0 {
				p.Blocks[i].Backups = backups // shared by the run's blocks: never changed in place
			}
		}
	}
	return p
}

// ErrCopiesLost says that every copy of some block is on a shard that is
// down: the job can only go back to a checkpoint.
var ErrCopiesLost = errors.New("every copy of a block is lost")

// Handover returns the placement that follows p once shard dead has died,
// carrying on from p's state: every block whose primary was dead is served
// by its first backup, dead is dropped from every block's backups, and no
// step goes back (Start and From are p's). It fails with ErrCopiesLost when
// dead held the last copy of a block, and when p keeps no copies.
func (p *Placement) Handover(dead int) (*Placement, error) {
	if dead < 0 || dead >= p.Shards || slices.Contains(p.Down, dead) {
		return nil, fmt.Errorf("shard %d is not a live shard of placement %d", dead, p.Version)
	}
	q := *p
	q.Version, q.HandedOver, q.Since = p.Version+1, true, p.Lineage()
	q.Down = append(slices.Clone(p.Down), dead)
	slices.Sort(q.Down)
	q.Filling = slices.DeleteFunc(slices.Clone(p.Filling), func(s int) bool { return s == dead })
	if len(q.Filling) == 0 {
		q.Filling = nil
	}
	q.Blocks = slices.Clone(p.Blocks)
	lost := 0
	for i := range q.Blocks {
		b := &q.Blocks[i]
		if b.Shard != dead && !slices.Contains(b.Backups, dead) {
			continue
		}
		live := slices.DeleteFunc(slices.Clone(b.Backups), func(s int) bool { return s == dead })
		if b.Shard == dead {
			// The first backup that is filled takes over (one being filled
			// may lack updates).
			k := slices.IndexFunc(live, func(s int) bool { return !slices.Contains(p.Filling, s) })
			if k < 0 {
				lost++
				continue
			}
			b.Shard = live[k]
			live = slices.Delete(live, k, k+1)
		}
		b.Backups = nil
		if len(live) > 0 {
			b.Backups = live
		}
	}
	if lost > 0 {
		return nil, fmt.Errorf("shard %d held the last copy of %d blocks: %w", dead, lost, ErrCopiesLost)
	}
	return &q, nil
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
	if c := max(1, p.Copies); c > shards {
		return nil, fmt.Errorf("cannot keep %d copies of each block on %d shards", c, shards)
	}
	q := PlaceCopies(p.Tensors, p.BlockSize, shards, max(1, p.Copies))
	if start > 0 && len(from) == 0 {
		return nil, fmt.Errorf("a placement starting at step %d needs the snapshot files of that step", start)
	}
	q.Version, q.Start, q.From = p.Version+1, start, from
	return q, nil
}

// OnShard lists the blocks whose primary is shard s, in id order.
func (p *Placement) OnShard(s int) []Block {
	var bs []Block
	for _, b := range p.Blocks {
		if b.Shard == s {
			bs = append(bs, b)
		}
	}
	return bs
}

// Rejoin returns the placement that follows p once shard d, down in p,
// serves again: d is the last copy of each block it held a copy of in the
// lineage's first placement (the copies PlaceCopies gives), and is being
// filled (Filling); nothing else moves, and no step goes back.
func (p *Placement) Rejoin(d int) (*Placement, error) {
	if !slices.Contains(p.Down, d) {
		return nil, fmt.Errorf("shard %d is not down in placement %d", d, p.Version)
	}
	base := PlaceCopies(p.Tensors, p.BlockSize, p.Shards, max(1, p.Copies))
	q := *p
	q.Version, q.HandedOver, q.Since = p.Version+1, true, p.Lineage()
	q.Down = slices.DeleteFunc(slices.Clone(p.Down), func(s int) bool { return s == d })
	if len(q.Down) == 0 {
		q.Down = nil
	}
	q.Filling = append(slices.Clone(p.Filling), d)
	slices.Sort(q.Filling)
	q.Blocks = slices.Clone(p.Blocks)
	held := 0
	for i := range q.Blocks {
		b := &q.Blocks[i]
		if bb := base.Blocks[i]; bb.Shard == d || slices.Contains(bb.Backups, d) {
			b.Backups = append(slices.Clone(b.Backups), d)
			held++
		}
	}
	if held == 0 {
		return nil, fmt.Errorf("shard %d holds no copy of a block in placement %d's lineage", d, p.Version)
	}
	return &q, nil
}

// Filled returns the placement that follows p once shard d, being filled
// in p, holds every update of its blocks: a copy like any other, and again
// the primary of the blocks it was the primary of in the lineage's first
// placement (their primary since steps down to be their first backup), so
// that the shards' load is as it was before d died.
func (p *Placement) Filled(d int) (*Placement, error) {
	if !slices.Contains(p.Filling, d) {
		return nil, fmt.Errorf("shard %d is not being filled in placement %d", d, p.Version)
	}
	base := PlaceCopies(p.Tensors, p.BlockSize, p.Shards, max(1, p.Copies))
	q := *p
	q.Version = p.Version + 1
	q.Filling = slices.DeleteFunc(slices.Clone(p.Filling), func(s int) bool { return s == d })
	if len(q.Filling) == 0 {
		q.Filling = nil
	}
	q.Blocks = slices.Clone(p.Blocks)
	for i := range q.Blocks {
		b := &q.Blocks[i]
		if base.Blocks[i].Shard != d || b.Shard == d {
			continue
		}
		rest := slices.DeleteFunc(append([]int{b.Shard}, b.Backups...), func(s int) bool { return s == d })
		b.Shard, b.Backups = d, rest
	}
	return &q, nil
}

// Lineage is the version of the placement whose state p carries on: its
// own, unless it was handed over from an earlier one. A shard or a worker
// keeps what it holds across placements of one lineage.
func (p *Placement) Lineage() int64 {
	if p.HandedOver {
		return p.Since
	}
	return p.Version
}

// Held lists the blocks shard s holds a copy of, primary or backup, in id
// order.
func (p *Placement) Held(s int) []Block {
	var bs []Block
	for _, b := range p.Blocks {
		if b.Shard == s || slices.Contains(b.Backups, s) {
			bs = append(bs, b)
		}
	}
	return bs
}

// Live reports whether shard s serves placement p (it is not down).
func (p *Placement) Live(s int) bool { return s >= 0 && s < p.Shards && !slices.Contains(p.Down, s) }

// LiveShards is how many shards serve p.
func (p *Placement) LiveShards() int { return p.Shards - len(p.Down) }

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
	if p.Shards < 1 || p.BlockSize < 1 || p.Version < 1 || p.Start < 0 || p.Copies < 0 || p.Copies > p.Shards {
		return nil, fmt.Errorf("placement: version %d from step %d, %d shards, %d copies, block size %d", p.Version, p.Start, p.Shards, p.Copies, p.BlockSize)
	}
	for i, d := range p.Down {
		if d < 0 || d >= p.Shards || i > 0 && d <= p.Down[i-1] {
			return nil, fmt.Errorf("placement: down shards %v are not distinct shards in order", p.Down)
		}
	}
	for i, f := range p.Filling {
		if !p.Live(f) || i > 0 && f <= p.Filling[i-1] || !p.HandedOver {
			return nil, fmt.Errorf("placement: filling shards %v are not distinct live shards in order of a placement handed over", p.Filling)
		}
	}
	if p.HandedOver != (p.Since > 0) || p.Since >= p.Version || !p.HandedOver && len(p.Down) > 0 {
		return nil, fmt.Errorf("placement: version %d handed over %v since %d with %d shards down", p.Version, p.HandedOver, p.Since, len(p.Down))
	}
	if len(p.Down) >= p.Shards {
		return nil, fmt.Errorf("placement: all %d shards are down", p.Shards)
	}
	off := 0
	for i, b := range p.Blocks {
		if b.ID != uint32(i) || b.Offset != off || b.Len < 1 || b.Len > p.BlockSize ||
			!p.Live(b.Shard) || b.Tensor < 0 || b.Tensor >= len(p.Tensors) || len(b.Backups) >= max(1, p.Copies) {
			return nil, fmt.Errorf("placement: block %d is inconsistent: %+v", i, b)
		}
		for k, s := range b.Backups {
			if !p.Live(s) || s == b.Shard || slices.Contains(b.Backups[:k], s) {
				return nil, fmt.Errorf("placement: block %d's copies are not on distinct live shards: %+v", i, b)
			}
		}
		if slices.Contains(p.Filling, b.Shard) {
			return nil, fmt.Errorf("placement: block %d's primary, shard %d, is being filled", i, b.Shard)
		}
		off += b.Len
	}
	if off != p.Size() {
		return nil, fmt.Errorf("placement: blocks cover %d of %d parameters", off, p.Size())
	}
	return &p, nil
}
