package memstore

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
)

// The members' calls: a worker's and a shard's.

// JoinWorker makes worker id a member under l.
func (s *Store) JoinWorker(ctx context.Context, l job.Lease, id string, m job.WorkerMember) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if !s.alive(l) {
		return fmt.Errorf("registering worker: lease %d ended", l.(*lease).id)
	}
	st := s.c.job(s.name)
	st.workers[id] = l.(*lease).id
	st.members[id] = m
	s.c.logEvent(st, job.Event{Kind: job.WorkerUp, Worker: id, Member: m})
	return nil
}

// WaitAssignment waits for worker id's rank, or the job's end (nil).
func (s *Store) WaitAssignment(ctx context.Context, id string) (*job.Assignment, error) {
	var a *job.Assignment
	err := s.c.wait(ctx, 0, "a rank", func() bool {
		st := s.c.job(s.name)
		if got, ok := st.assigned[id]; ok {
			a = &got
			return true
		}
		return st.status == job.StateDone
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for a rank: %w", err)
	}
	return a, nil
}

// Assignment is worker id's rank now (nil: none).
func (s *Store) Assignment(ctx context.Context, id string) (*job.Assignment, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if a, ok := s.c.job(s.name).assigned[id]; ok {
		return &a, nil
	}
	return nil, nil
}

// WaitShards waits for n shards to be members.
func (s *Store) WaitShards(ctx context.Context, n int, timeout time.Duration) error {
	err := s.c.wait(ctx, timeout, strconv.Itoa(n)+" shards", func() bool { return len(s.c.job(s.name).shards) >= n })
	if err != nil {
		return fmt.Errorf("waiting for %d parameter-server shards: %w", n, err)
	}
	return nil
}

// RankDone records rank a.Rank done if the placement is still the one of
// revision rev.
func (s *Store) RankDone(ctx context.Context, a job.Assignment, rev int64) (bool, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	st := s.c.job(s.name)
	if st.placementRev != rev {
		return false, nil
	}
	st.done[a.Rank] = a.Epoch
	s.c.logEvent(st, job.Event{Kind: job.RankReported, Rank: a.Rank})
	return true, nil
}

// NextTask waits for worker id's task other than last.
func (s *Store) NextTask(ctx context.Context, id string, last job.Task) (job.Task, error) {
	var t job.Task
	err := s.c.wait(ctx, 0, "a task", func() bool {
		got, ok := s.c.job(s.name).tasks[id]
		t = got
		return ok && got.ID >= 0 && got != last
	})
	return t, err
}

// TaskDone reports worker id's task t done.
func (s *Store) TaskDone(ctx context.Context, id string, t job.Task) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	st := s.c.job(s.name)
	st.taskDone[id] = t
	s.c.logEvent(st, job.Event{Kind: job.TaskReported, Worker: id, Task: t})
	return nil
}

// ClaimShard takes index want, or the lowest free one, under l.
func (s *Store) ClaimShard(ctx context.Context, l job.Lease, shards, want int) (int, error) {
	if want >= shards {
		return 0, fmt.Errorf("shard %d does not exist: the job has %d shards", want, shards)
	}
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	st := s.c.job(s.name)
	lo, hi := 0, shards
	if want >= 0 {
		lo, hi = want, want+1
	}
	for i := lo; i < hi; i++ {
		if _, taken := st.shards[i]; !taken {
			st.shards[i] = shardSeat{lease: l.(*lease).id}
			s.c.logEvent(st, job.Event{Kind: job.ShardUp, Shard: i})
			return i, nil
		}
	}
	if want >= 0 {
		return 0, fmt.Errorf("shard %d is already served by a live process", want)
	}
	return 0, fmt.Errorf("all %d shards of the job are already served", shards)
}

// Served says whether index i of placement version was ever served.
func (s *Store) Served(ctx context.Context, version int64, i int) (bool, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	_, ok := s.c.job(s.name).served[[2]int64{version, int64(i)}]
	return ok, nil
}

// ServeShard marks index i of placement version served by this process,
// unless it was before.
func (s *Store) ServeShard(ctx context.Context, l job.Lease, version int64, i int) (bool, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	st := s.c.job(s.name)
	key := [2]int64{version, int64(i)}
	if _, ok := st.served[key]; ok {
		return false, nil
	}
	st.served[key] = l.(*lease).id
	st.shards[i] = shardSeat{member: job.ShardMember{Placement: version}, lease: l.(*lease).id}
	s.c.logEvent(st, job.Event{Kind: job.ShardUp, Shard: i, Placement: version})
	return true, nil
}

// ShardFilled records index i filled under placement version, while l
// holds it.
func (s *Store) ShardFilled(ctx context.Context, l job.Lease, version int64, i int) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	st := s.c.job(s.name)
	seat, ok := st.shards[i]
	if !ok || seat.lease != l.(*lease).id {
		return fmt.Errorf("shard %d: recording it filled: %w", i, job.ErrFenced)
	}
	seat.member = job.ShardMember{Placement: version, Filled: true}
	st.shards[i] = seat
	s.c.logEvent(st, job.Event{Kind: job.ShardUp, Shard: i, Placement: version, Filled: true})
	return nil
}

// LeaveShard gives index i up.
func (s *Store) LeaveShard(ctx context.Context, i int) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	st := s.c.job(s.name)
	if seat, ok := st.shards[i]; ok {
		delete(st.shards, i)
		s.c.logEvent(st, job.Event{Kind: job.ShardDown, Shard: i, Placement: seat.member.Placement})
	}
	return nil
}

// snapshotKey orders snapshot records as etcdstore's keys do.
func snapshotKey(rec job.SnapshotRecord) string {
	return fmt.Sprintf("p%d/%d/%d", rec.Placement, rec.Step, rec.Shard)
}

// RecordSnapshot records a shard's snapshot.
func (s *Store) RecordSnapshot(ctx context.Context, rec job.SnapshotRecord) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	st := s.c.job(s.name)
	st.snapshots[snapshotKey(rec)] = rec
	s.c.logEvent(st, job.Event{Kind: job.SnapshotRecorded, Snapshot: rec})
	return nil
}

// Checkpoint is the last complete checkpoint (nil: none).
func (s *Store) Checkpoint(ctx context.Context) (*job.CheckpointRecord, int64, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.c.job(s.name).checkpoint, s.c.rev, nil
}

// NextCheckpoint waits for a checkpoint recorded after revision rev.
func (s *Store) NextCheckpoint(ctx context.Context, rev int64) (*job.CheckpointRecord, int64, error) {
	var cp *job.CheckpointRecord
	var at int64
	err := s.c.wait(ctx, 0, "a checkpoint", func() bool {
		st := s.c.job(s.name)
		cp, at = st.checkpoint, st.checkRev
		return cp != nil && at > rev
	})
	return cp, at, err
}

// Released sends each assignment withdrawn from now on.
func (s *Store) Released(ctx context.Context) <-chan job.Assignment {
	s.c.mu.Lock()
	from := len(s.c.job(s.name).log)
	s.c.mu.Unlock()
	return tailChan(ctx, s, from, func(e entry) *job.Assignment { return e.released })
}

// tailChan sends what pick finds (nil: nothing) in the job's log entries
// from index from on, as they come, until ctx ends.
func tailChan[T any](ctx context.Context, s *Store, from int, pick func(entry) *T) <-chan T {
	out := make(chan T)
	go func() {
		defer close(out)
		s.tail(ctx, from, func(e entry) bool {
			v := pick(e)
			if v == nil {
				return true
			}
			select {
			case out <- *v:
				return true
			case <-ctx.Done():
				return false
			}
		})
	}()
	return out
}

// tail calls f with the job's log entries from index from on, as they come,
// until f returns false or ctx ends.
func (s *Store) tail(ctx context.Context, from int, f func(entry) bool) {
	for {
		s.c.mu.Lock()
		log, ch := s.c.job(s.name).log, s.c.changed
		s.c.mu.Unlock()
		for ; from < len(log); from++ {
			if !f(log[from]) {
				return
			}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}
