package memstore

import (
	"context"
	"slices"
	"strconv"
	"strings"

	"github.com/downpour-ml/downpour/internal/job"
)

// The coordinator's calls.

// leadership is a candidate of a job's election (job.Leadership).
type leadership struct {
	c     *Cluster
	id    string
	lease *lease
}

func (l *leadership) Lost() <-chan struct{} { return l.lease.lost }

func (l *leadership) Resign(ctx context.Context) { l.lease.Close() }

// Campaign enters process id in the job's election and waits until it
// leads.
func (s *Store) Campaign(ctx context.Context, id string, ttl int) (job.Leadership, error) {
	ld := &leadership{c: s.c, id: id, lease: s.c.grant()}
	s.c.mu.Lock()
	st := s.c.job(s.name)
	st.candidates = append(st.candidates, ld)
	s.c.bump()
	s.c.mu.Unlock()
	err := s.c.wait(ctx, 0, "the leadership", func() bool {
		cs := s.c.job(s.name).candidates
		return len(cs) > 0 && cs[0] == ld
	})
	if err != nil {
		ld.lease.Close()
		return nil, err
	}
	return ld, nil
}

// Leader is the leading coordinator's id ("" when none).
func (s *Store) Leader(ctx context.Context) (string, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if cs := s.c.job(s.name).candidates; len(cs) > 0 {
		return cs[0].id, nil
	}
	return "", nil
}

// leads says whether l leads the job (mu held; nil l: no election).
func (s *Store) leads(st *state, l job.Leadership) bool {
	if l == nil {
		return true
	}
	ld := l.(*leadership)
	return len(st.candidates) > 0 && st.candidates[0] == ld && s.c.leases[ld.lease.id] != nil
}

// guarded runs write with mu held if l leads.
func (s *Store) guarded(l job.Leadership, write func(st *state)) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	st := s.c.job(s.name)
	if !s.leads(st, l) {
		return job.ErrNotLeader
	}
	write(st)
	s.c.bump()
	return nil
}

// CheckLeader fails with job.ErrNotLeader unless l leads.
func (s *Store) CheckLeader(ctx context.Context, l job.Leadership) error {
	return s.guarded(l, func(*state) {})
}

// Create writes the job unless it exists (with join: never).
func (s *Store) Create(ctx context.Context, l job.Leadership, spec *job.Spec, p *job.Placement, join bool) (bool, []byte, string, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	st := s.c.job(s.name)
	if st.spec != nil || join {
		return false, st.spec, st.status, nil
	}
	st.spec, st.placement, st.status = spec.Encode(), p, job.StateRunning
	if c := spec.Corpus(); c != nil {
		st.corpus = c.Encode()
	}
	st.placementRev = s.c.bump()
	return true, nil, "", nil
}

// StoredSpec is the stored spec's bytes (nil: no such job).
func (s *Store) StoredSpec(ctx context.Context) ([]byte, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.c.job(s.name).spec, nil
}

// Follow returns the job as it is and then its changes, in etcdstore's
// order: the checkpoint, the ranks done, the workers, a reshard request,
// the snapshot records, the task reports.
func (s *Store) Follow(ctx context.Context) (*job.View, <-chan job.Event, error) {
	s.c.mu.Lock()
	st := s.c.job(s.name)
	v := &job.View{Assigned: map[string]job.Assignment{}, Live: map[string]bool{}, Checkpoint: st.checkpoint}
	for id, a := range st.assigned {
		v.Assigned[id] = a
	}
	if st.checkpoint != nil {
		v.Events = append(v.Events, job.Event{Kind: job.CheckpointRecorded, Checkpoint: *st.checkpoint})
	}
	ranks := sortedKeys(st.done)
	slices.SortFunc(ranks, func(a, b int) int { // as keys: "10" before "2"
		return strings.Compare(strconv.Itoa(a), strconv.Itoa(b))
	})
	for _, r := range ranks {
		v.Events = append(v.Events, job.Event{Kind: job.RankReported, Rank: r})
	}
	for _, id := range sortedKeys(st.workers) {
		v.Live[id] = true
		v.Events = append(v.Events, job.Event{Kind: job.WorkerUp, Worker: id, Member: st.members[id]})
	}
	if st.reshard != nil {
		v.Events = append(v.Events, job.Event{Kind: job.ReshardRequested, Reshard: *st.reshard})
	}
	for _, k := range sortedKeys(st.snapshots) {
		v.Events = append(v.Events, job.Event{Kind: job.SnapshotRecorded, Snapshot: st.snapshots[k]})
	}
	for _, id := range sortedKeys(st.taskDone) {
		v.Events = append(v.Events, job.Event{Kind: job.TaskReported, Worker: id, Task: st.taskDone[id]})
	}
	from := len(st.log)
	s.c.mu.Unlock()
	out := tailChan(ctx, s, from, func(e entry) *job.Event { return e.ev })
	return v, out, nil
}

// TaskQueue is the stored task queue (nil: none).
func (s *Store) TaskQueue(ctx context.Context) ([]byte, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.c.job(s.name).queue, nil
}

// TaskQueueAt is the queue of the checkpoint of step (nil: none).
func (s *Store) TaskQueueAt(ctx context.Context, step int64) ([]byte, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.c.job(s.name).queueAt[step], nil
}

// Assign gives worker its rank.
func (s *Store) Assign(ctx context.Context, l job.Leadership, worker string, a job.Assignment) error {
	return s.guarded(l, func(st *state) { st.assigned[worker] = a })
}

// Unassign withdraws worker's rank.
func (s *Store) Unassign(ctx context.Context, l job.Leadership, worker string) error {
	return s.guarded(l, func(st *state) {
		if a, ok := st.assigned[worker]; ok {
			delete(st.assigned, worker)
			st.log = append(st.log, entry{rev: s.c.rev + 1, released: &a})
		}
	})
}

// Place writes placement q, forgets the ranks done (unless q is handed
// over: they stay done) and records rb, unless q (or a later one) is
// already in place.
func (s *Store) Place(ctx context.Context, l job.Leadership, q *job.Placement, rb *job.RollbackRecord) error {
	return s.guarded(l, func(st *state) {
		if st.placement != nil && st.placement.Version >= q.Version {
			return
		}
		st.placement, st.placementRev = q, s.c.rev+1
		if !q.HandedOver {
			clear(st.done)
		}
		if rb != nil {
			st.rollbacks[q.Version] = *rb
		}
	})
}

// GiveTasks gives workers their tasks and stores the queue, at once.
func (s *Store) GiveTasks(ctx context.Context, l job.Leadership, given []job.GivenTask, queue []byte) error {
	if len(given) == 0 && queue == nil {
		return nil
	}
	return s.guarded(l, func(st *state) {
		for _, g := range given {
			st.tasks[g.Worker] = g.Task
		}
		if queue != nil {
			st.queue = queue
		}
	})
}

// SaveTaskQueueAt stores the queue of the checkpoint of step.
func (s *Store) SaveTaskQueueAt(ctx context.Context, l job.Leadership, step int64, queue []byte) error {
	return s.guarded(l, func(st *state) { st.queueAt[step] = queue })
}

// RecordCheckpoint records the last complete checkpoint.
func (s *Store) RecordCheckpoint(ctx context.Context, l job.Leadership, cp job.CheckpointRecord) error {
	return s.guarded(l, func(st *state) {
		st.checkpoint, st.checkRev = &cp, s.c.rev+1
		st.log = append(st.log, entry{rev: s.c.rev + 1, ev: &job.Event{Kind: job.CheckpointRecorded, Checkpoint: cp}})
	})
}

// AnswerReshard writes the answer to a reshard request.
func (s *Store) AnswerReshard(ctx context.Context, l job.Leadership, req job.ReshardRequest) error {
	return s.guarded(l, func(st *state) {
		st.reshard = &req
		st.log = append(st.log, entry{rev: s.c.rev + 1, ev: &job.Event{Kind: job.ReshardRequested, Reshard: req}})
	})
}

// MarkDone marks the job done.
func (s *Store) MarkDone(ctx context.Context, l job.Leadership) error {
	return s.guarded(l, func(st *state) { st.status = job.StateDone })
}
