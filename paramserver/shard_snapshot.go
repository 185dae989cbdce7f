package paramserver

import (
	"errors"
	"fmt"

	"github.com/downpour-ml/downpour/internal/job"
)

// ErrSnapshotPending is returned when a snapshot is requested while another
// is still being taken.
var ErrSnapshotPending = errors.New("a snapshot is already pending")

// RequestSnapshot asks for a snapshot of the shard. In sync mode it is taken
// at the boundary of step (when every block has applied exactly step steps),
// which must not have passed for any block; in ssp and async modes it is
// taken now, labelled step (there is no step boundary to wait for: the
// coordinator labels a checkpoint of an async job by the data steps done). Taken snapshots come out of Snapshots.
func (s *Shard) RequestSnapshot(step int64) error {
	if s.cfg.Mode != job.Sync {
		snap := s.snapshotNow()
		snap.Step = step // the label the coordinator checkpoints under
		s.snaps = append(s.snaps, snap)
		return nil
	}
	if s.snapAt >= 0 {
		return fmt.Errorf("%w (step %d)", ErrSnapshotPending, s.snapAt)
	}
	for _, b := range s.blocks {
		if b.clock > step {
			return fmt.Errorf("block %d is already at step %d, past the requested snapshot step %d", b.ID, b.clock, step)
		}
	}
	s.snapAt, s.snapped = step, 0
	for _, b := range s.blocks {
		s.snapBlock(b)
	}
	if len(s.blocks) == 0 {
		s.finishSnapshot()
	}
	return nil
}

// keepBlock copies b's parameters if its clock is a step to keep.
func (s *Shard) keepBlock(b *block) {
	k := s.cfg.Keep
	if k <= 0 || b.clock == 0 || b.clock%k != 0 || (s.cfg.KeepBefore > 0 && b.clock >= s.cfg.KeepBefore) {
		return
	}
	if b.kept == nil {
		b.kept = make([]float32, b.Len)
	}
	copy(b.kept, b.w)
	b.keptAt = b.clock
}

// snapBlock copies b's state if it stands at the pending snapshot step.
func (s *Shard) snapBlock(b *block) {
	if s.snapAt < 0 || b.clock != s.snapAt || b.snap != nil {
		return
	}
	b.snap = b.state()
	s.snapped++
	if s.snapped == len(s.blocks) {
		s.finishSnapshot()
	}
}

func (s *Shard) finishSnapshot() {
	snap := &Snapshot{Step: s.snapAt, Mode: s.cfg.Mode, Epochs: append([]uint64(nil), s.epochs...),
		RankClocks: append([]int64(nil), s.rankClock...)}
	for _, b := range s.blocks {
		snap.Blocks = append(snap.Blocks, *b.snap)
		b.snap = nil
	}
	s.snaps = append(s.snaps, snap)
	s.snapAt = -1
}

func (s *Shard) snapshotNow() *Snapshot {
	snap := &Snapshot{Step: s.Clock(), Mode: s.cfg.Mode, Epochs: append([]uint64(nil), s.epochs...),
		RankClocks: append([]int64(nil), s.rankClock...)}
	for _, b := range s.blocks {
		snap.Blocks = append(snap.Blocks, *b.state())
	}
	return snap
}

// Snapshots returns the snapshots taken since the last call.
func (s *Shard) Snapshots() []*Snapshot {
	r := s.snaps
	s.snaps = nil
	return r
}

func (b *block) state() *BlockState {
	st := &BlockState{ID: b.ID, Clock: b.clock, W: append([]float32(nil), b.w...)}
	for _, sl := range b.slots {
		st.Slots = append(st.Slots, append([]float32(nil), sl...))
	}
	if b.last != nil {
		st.Last = append([]int64(nil), b.last...)
	}
	return st
}
