package paramserver

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/downpour-ml/downpour/internal/wire"
)

// BlockState is one block's part of a snapshot.
type BlockState struct {
	ID    uint32
	Clock int64
	W     []float32
	Slots [][]float32 // optimizer state
	Last  []int64     // ssp/async: last step applied per rank
}

// Snapshot is a shard's whole state at one moment: parameters, optimizer
// state and clocks. Gradients stored for a step not yet applied are not part
// of it: restoring from a sync snapshot at step t means every rank pushes
// step t again.
type Snapshot struct {
	Job        string
	Shard      int
	Placement  int64 // placement version
	Step       int64
	Mode       string
	Epochs     []uint64
	RankClocks []int64
	Blocks     []BlockState
}

// SnapshotVersion is the format version written.
const SnapshotVersion = 1

const snapMagic = "DPSS"

// ErrCorruptSnapshot marks a file that is not a whole, valid snapshot.
var ErrCorruptSnapshot = errors.New("corrupt shard snapshot")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type snapHeader struct {
	Job        string   `json:"job"`
	Shard      int      `json:"shard"`
	Placement  int64    `json:"placement"`
	Step       int64    `json:"step"`
	Mode       string   `json:"mode"`
	Epochs     []uint64 `json:"epochs"`
	RankClocks []int64  `json:"rank_clocks"`
	Blocks     int      `json:"blocks"`
}

// Encode serialises the snapshot:
//
//	"DPSS" | version u16 | 0 u16
//	| header length u32 | header JSON | CRC32C u32
//	| blocks length u64 | blocks | CRC32C u32
//
// where each block is id u32 | clock i64 | len u32 | slots u8 | ranks u16 |
// w | slots | last (floats little-endian float32, last i64).
func (s *Snapshot) Encode() []byte {
	h, _ := json.Marshal(snapHeader{Job: s.Job, Shard: s.Shard, Placement: s.Placement, Step: s.Step, Mode: s.Mode,
		Epochs: s.Epochs, RankClocks: s.RankClocks, Blocks: len(s.Blocks)})
	var b []byte
	b = append(b, snapMagic...)
	b = binary.LittleEndian.AppendUint16(b, SnapshotVersion)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(h)))
	b = append(b, h...)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(h, castagnoli))
	lenAt := len(b)
	b = binary.LittleEndian.AppendUint64(b, 0)
	start := len(b)
	for _, bs := range s.Blocks {
		b = binary.LittleEndian.AppendUint32(b, bs.ID)
		b = binary.LittleEndian.AppendUint64(b, uint64(bs.Clock))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(bs.W)))
		b = append(b, byte(len(bs.Slots)))
		b = binary.LittleEndian.AppendUint16(b, uint16(len(bs.Last)))
		b = wire.AppendFloats(b, bs.W)
		for _, sl := range bs.Slots {
			b = wire.AppendFloats(b, sl)
		}
		for _, l := range bs.Last {
			b = binary.LittleEndian.AppendUint64(b, uint64(l))
		}
	}
	binary.LittleEndian.PutUint64(b[lenAt:], uint64(len(b)-start))
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

func corruptSnap(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorruptSnapshot, fmt.Sprintf(format, args...))
}

// DecodeSnapshot parses a snapshot, checking its form and both checksums.
func DecodeSnapshot(b []byte) (*Snapshot, error) {
	if len(b) < 12 || string(b[:4]) != snapMagic {
		return nil, corruptSnap("not a shard snapshot (bad magic)")
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != SnapshotVersion {
		return nil, fmt.Errorf("shard snapshot format version %d: this build reads version %d", v, SnapshotVersion)
	}
	if binary.LittleEndian.Uint16(b[6:]) != 0 {
		return nil, corruptSnap("reserved field is not zero")
	}
	hl := uint64(binary.LittleEndian.Uint32(b[8:]))
	if hl > 1<<20 || uint64(len(b)) < 12+hl+12 {
		return nil, corruptSnap("truncated header")
	}
	h, rest := b[12:12+hl], b[12+hl:]
	if crc32.Checksum(h, castagnoli) != binary.LittleEndian.Uint32(rest) {
		return nil, corruptSnap("header checksum mismatch")
	}
	dl := binary.LittleEndian.Uint64(rest[4:])
	rest = rest[12:]
	if dl+4 != uint64(len(rest)) {
		return nil, corruptSnap("block section length %d does not match the file", dl)
	}
	data := rest[:dl]
	if crc32.Checksum(data, castagnoli) != binary.LittleEndian.Uint32(rest[dl:]) {
		return nil, corruptSnap("block section checksum mismatch")
	}
	var hd snapHeader
	if err := json.Unmarshal(h, &hd); err != nil {
		return nil, corruptSnap("header: %v", err)
	}
	if hd.Blocks < 0 || hd.Blocks > len(data)/19 {
		return nil, corruptSnap("%d blocks cannot fit in %d bytes", hd.Blocks, len(data))
	}
	s := &Snapshot{Job: hd.Job, Shard: hd.Shard, Placement: hd.Placement, Step: hd.Step, Mode: hd.Mode,
		Epochs: hd.Epochs, RankClocks: hd.RankClocks}
	for range hd.Blocks {
		if len(data) < 19 {
			return nil, corruptSnap("truncated block")
		}
		bs := BlockState{ID: binary.LittleEndian.Uint32(data), Clock: int64(binary.LittleEndian.Uint64(data[4:]))}
		n, slots, ranks := uint64(binary.LittleEndian.Uint32(data[12:])), uint64(data[16]), uint64(binary.LittleEndian.Uint16(data[17:]))
		data = data[19:]
		if need := 4*n*(1+slots) + 8*ranks; need > uint64(len(data)) {
			return nil, corruptSnap("block %d needs %d bytes, %d left", bs.ID, need, len(data))
		}
		floats := func() []float32 {
			f := make([]float32, n)
			wire.CopyFloats(f, data[:4*n])
			data = data[4*n:]
			return f
		}
		bs.W = floats()
		for range slots {
			bs.Slots = append(bs.Slots, floats())
		}
		for range ranks {
			bs.Last = append(bs.Last, int64(binary.LittleEndian.Uint64(data)))
			data = data[8:]
		}
		s.Blocks = append(s.Blocks, bs)
	}
	if len(data) != 0 {
		return nil, corruptSnap("%d bytes after the last block", len(data))
	}
	return s, nil
}

// WriteSnapshot stores s at path atomically (temporary file, fsync, rename,
// fsync of the directory).
func WriteSnapshot(path string, s *Snapshot) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(s.Encode())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// ReadSnapshot loads and checks the snapshot at path.
func ReadSnapshot(path string) (*Snapshot, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	s, err := DecodeSnapshot(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// SnapshotFile names the file of shard's snapshot at step under placement
// version: p<version>-shard-<shard>-step-<step>.dpss. A step can be
// snapshotted under several placements (after a re-placement rolls the job
// back), so the version is part of the name.
func SnapshotFile(version int64, shard int, step int64) string {
	return fmt.Sprintf("p%d-shard-%d-step-%d.dpss", version, shard, step)
}

// ParseSnapshotFile reads the placement version, shard and step from a
// file name SnapshotFile gives, or from that of a temporary file
// WriteSnapshot made for one (temp is then true). Any other name, even one
// that merely starts like a snapshot's, is not one (ok false).
func ParseSnapshotFile(name string) (version int64, shard int, step int64, temp, ok bool) {
	if _, err := fmt.Sscanf(name, "p%d-shard-%d-step-%d.dpss", &version, &shard, &step); err != nil || version < 0 || shard < 0 || step < 0 {
		return 0, 0, 0, false, false
	}
	rest, found := strings.CutPrefix(name, SnapshotFile(version, shard, step))
	switch {
	case !found: // a sign, leading zeros or spaces the scan let through
		return 0, 0, 0, false, false
	case rest == "":
		return version, shard, step, false, true
	case strings.HasPrefix(rest, ".tmp") && !strings.ContainsAny(rest, "/"+string(filepath.Separator)):
		return version, shard, step, true, true
	}
	return 0, 0, 0, false, false
}

// Gather assembles the snapshot of a shard that owns blocks from snapshots of
// one step taken under another placement (the snapshots of every shard of
// that placement, in any order): each block's state comes from the snapshot
// that holds it. Every block must be found exactly once, and the snapshots
// must agree on the step, the mode and the number of ranks. A rank's clock
// is the smallest the snapshots record (in sync mode they agree), its epoch
// the newest: a shard learns a rank's epoch from its pushes, and one that
// holds no block the rank pushes (a seat of a replica pushes only its own
// tensors) has not heard of it; raising an epoch only fences off older
// holders.
func Gather(snaps []*Snapshot, blocks []job.Block) (*Snapshot, error) {
	if len(snaps) == 0 {
		return nil, errors.New("gather: no snapshots")
	}
	first := snaps[0]
	out := &Snapshot{Job: first.Job, Step: first.Step, Mode: first.Mode, Epochs: slices.Clone(first.Epochs),
		RankClocks: slices.Clone(first.RankClocks), Blocks: make([]BlockState, len(blocks))}
	where := map[uint32]*BlockState{}
	for _, sn := range snaps {
		if sn.Job != first.Job || sn.Step != first.Step || sn.Mode != first.Mode || len(sn.Epochs) != len(first.Epochs) ||
			len(sn.RankClocks) != len(first.RankClocks) {
			return nil, fmt.Errorf("gather: snapshot of shard %d (job %q, step %d, %s, epochs %v) does not match that of shard %d (job %q, step %d, %s, epochs %v)",
				sn.Shard, sn.Job, sn.Step, sn.Mode, sn.Epochs, first.Shard, first.Job, first.Step, first.Mode, first.Epochs)
		}
		for r, c := range sn.RankClocks {
			out.RankClocks[r] = min(out.RankClocks[r], c)
		}
		for r, e := range sn.Epochs {
			out.Epochs[r] = max(out.Epochs[r], e)
		}
		for i := range sn.Blocks {
			b := &sn.Blocks[i]
			if where[b.ID] != nil {
				return nil, fmt.Errorf("gather: block %d is in two snapshots", b.ID)
			}
			where[b.ID] = b
		}
	}
	for i, b := range blocks {
		bs := where[b.ID]
		if bs == nil {
			return nil, fmt.Errorf("gather: no snapshot of step %d holds block %d", first.Step, b.ID)
		}
		out.Blocks[i] = *bs
	}
	return out, nil
}

// RestoreShard makes a shard whose state is snap. The snapshot must hold
// exactly blocks (same ids, same lengths), with state for cfg's optimizer and
// ranks.
func RestoreShard(cfg job.ShardConfig, blocks []job.Block, snap *Snapshot) (*Shard, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if snap.Mode != cfg.Mode || len(snap.Epochs) != cfg.Ranks || len(snap.RankClocks) != cfg.Ranks {
		return nil, fmt.Errorf("snapshot of a %s job with %d ranks cannot restore a %s job with %d ranks", snap.Mode, len(snap.Epochs), cfg.Mode, cfg.Ranks)
	}
	if len(snap.Blocks) != len(blocks) {
		return nil, fmt.Errorf("snapshot holds %d blocks, the shard owns %d", len(snap.Blocks), len(blocks))
	}
	for i, b := range blocks {
		bs := &snap.Blocks[i]
		wantLast := 0
		if cfg.Mode != job.Sync {
			wantLast = cfg.Ranks
		}
		if bs.ID != b.ID || len(bs.W) != b.Len || len(bs.Slots) != cfg.Optimizer.Slots() || len(bs.Last) != wantLast || bs.Clock < 0 {
			return nil, fmt.Errorf("snapshot block %d (len %d) does not match placement block %d (len %d) for this job", bs.ID, len(bs.W), b.ID, b.Len)
		}
	}
	s := NewShard(cfg, blocks, func(b job.Block, dst []float32) {})
	for i, blk := range s.blocks {
		bs := &snap.Blocks[i]
		copy(blk.w, bs.W)
		for k := range blk.slots {
			copy(blk.slots[k], bs.Slots[k])
		}
		copy(blk.last, bs.Last)
		blk.clock = bs.Clock
		s.keepBlock(blk)
	}
	copy(s.epochs, snap.Epochs)
	copy(s.rankClock, snap.RankClocks)
	return s, nil
}

// Equal reports whether two snapshots hold bit-identical state.
func (s *Snapshot) Equal(o *Snapshot) bool {
	if s.Step != o.Step || s.Mode != o.Mode || len(s.Blocks) != len(o.Blocks) ||
		!slices.Equal(s.Epochs, o.Epochs) || !slices.Equal(s.RankClocks, o.RankClocks) {
		return false
	}
	for i := range s.Blocks {
		a, b := &s.Blocks[i], &o.Blocks[i]
		if a.ID != b.ID || a.Clock != b.Clock || !floatBits(a.W, b.W) || len(a.Slots) != len(b.Slots) || !slices.Equal(a.Last, b.Last) {
			return false
		}
		for k := range a.Slots {
			if !floatBits(a.Slots[k], b.Slots[k]) {
				return false
			}
		}
	}
	return true
}

// floatBits compares float slices bit for bit (NaN equals the same NaN).
func floatBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}
