// Package memstore is the job's store (job.Store) in memory: the records of
// etcdstore, kept in maps in one process, with the same answers, the same
// events in the same order, leases and elections. It is for the roles' unit
// tests: a worker's era change, a shard's placement handover, the
// coordinator's reactions run against it in milliseconds, and a test ends a
// member's lease when it likes (Expire) where etcd would wait for its TTL.
//
// Leases do not expire by themselves: a lease ends when it is closed or
// expired by the test.
package memstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
)

// ErrTimeout is returned when a wait runs past its deadline.
var ErrTimeout = errors.New("timed out")

// Cluster holds the jobs of one in-memory cluster. Its zero value is not
// ready: use New.
type Cluster struct {
	mu      sync.Mutex
	rev     int64
	changed chan struct{} // closed (and replaced) at every change
	jobs    map[string]*state
	leases  map[int64]*lease
	nextID  int64
}

// New is an empty cluster.
func New() *Cluster {
	return &Cluster{changed: make(chan struct{}), jobs: map[string]*state{}, leases: map[int64]*lease{}}
}

// Job is the store of job name.
func (c *Cluster) Job(name string) *Store { return &Store{c: c, name: name} }

// state is one job's records.
type state struct {
	spec         []byte
	corpus       []byte // the corpus summary, encoded
	placement    *job.Placement
	placementRev int64
	status       string
	workers      map[string]int64 // id -> lease
	members      map[string]job.WorkerMember
	shards       map[int]shardSeat
	served       map[[2]int64]int64 // (version, index) -> lease that served it
	assigned     map[string]job.Assignment
	done         map[int]uint64 // rank -> epoch
	tasks        map[string]job.Task
	taskDone     map[string]job.Task
	queue        []byte
	queueAt      map[int64][]byte
	snapshots    map[string]job.SnapshotRecord // by etcdstore's key order
	checkpoint   *job.CheckpointRecord
	checkRev     int64
	rollbacks    map[int64]job.RollbackRecord
	reshard      *job.ReshardRequest
	candidates   []*leadership // oldest first
	log          []entry
}

type shardSeat struct {
	member job.ShardMember
	lease  int64
}

// entry is one change in a job's log: an event a coordinator follows, or
// an assignment withdrawn (what Released sends).
type entry struct {
	rev      int64
	ev       *job.Event
	released *job.Assignment
}

func (c *Cluster) job(name string) *state {
	st := c.jobs[name]
	if st == nil {
		st = &state{workers: map[string]int64{}, members: map[string]job.WorkerMember{}, shards: map[int]shardSeat{}, served: map[[2]int64]int64{},
			assigned: map[string]job.Assignment{}, done: map[int]uint64{}, tasks: map[string]job.Task{},
			taskDone: map[string]job.Task{}, queueAt: map[int64][]byte{}, snapshots: map[string]job.SnapshotRecord{},
			rollbacks: map[int64]job.RollbackRecord{}}
		c.jobs[name] = st
	}
	return st
}

// bump makes a new revision and wakes every waiter; call it with mu held.
func (c *Cluster) bump() int64 {
	c.rev++
	close(c.changed)
	c.changed = make(chan struct{})
	return c.rev
}

// logEvent records ev in the job's log at a new revision (mu held).
func (c *Cluster) logEvent(st *state, ev job.Event) {
	st.log = append(st.log, entry{rev: c.bump(), ev: &ev})
}

// wait waits until cond (called with mu held) holds, ctx ends, or timeout
// (0: none) passes.
func (c *Cluster) wait(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	var expired <-chan time.Time
	if timeout > 0 && timeout < 1<<61 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	for {
		c.mu.Lock()
		ok, ch := cond(), c.changed
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-expired:
			return fmt.Errorf("waiting for %s: %w after %v", what, ErrTimeout, timeout)
		}
	}
}

// lease is a member's (job.Lease).
type lease struct {
	c    *Cluster
	id   int64
	lost chan struct{}
	once sync.Once
}

func (l *lease) Lost() <-chan struct{} { return l.lost }

// Close ends the lease as its holder would: at once.
func (l *lease) Close() { l.c.end(l.id) }

// Expire ends lease l as etcd would once its holder had died: what was
// written under it vanishes, and the coordinator hears of it.
func (c *Cluster) Expire(l job.Lease) { c.end(l.(*lease).id) }

func (c *Cluster) grant() *lease {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextID++
	l := &lease{c: c, id: c.nextID, lost: make(chan struct{})}
	c.leases[l.id] = l
	return l
}

// end ends lease id: its members leave, its candidacies end.
func (c *Cluster) end(id int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.leases[id]
	if l == nil {
		return
	}
	delete(c.leases, id)
	names := make([]string, 0, len(c.jobs))
	for n := range c.jobs {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		st := c.jobs[n]
		for _, w := range sortedKeys(st.workers) {
			if st.workers[w] == id {
				delete(st.workers, w)
				delete(st.members, w)
				c.logEvent(st, job.Event{Kind: job.WorkerDown, Worker: w})
			}
		}
		for _, i := range sortedKeys(st.shards) {
			if seat := st.shards[i]; seat.lease == id {
				delete(st.shards, i)
				c.logEvent(st, job.Event{Kind: job.ShardDown, Shard: i, Placement: seat.member.Placement})
			}
		}
		st.candidates = slices.DeleteFunc(st.candidates, func(ld *leadership) bool { return ld.lease.id == id })
	}
	c.bump()
	l.once.Do(func() { close(l.lost) })
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	ks := make([]K, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// Store is one job's store in a Cluster (job.Store).
type Store struct {
	c    *Cluster
	name string
}

var _ job.Store = (*Store)(nil)

// Name is the job's.
func (s *Store) Name() string { return s.name }

// Grant starts a lease; ttl is not kept (see the package's note).
func (s *Store) Grant(ctx context.Context, ttl int64) (job.Lease, error) {
	return s.c.grant(), nil
}

// alive says whether lease l is (mu held).
func (s *Store) alive(l job.Lease) bool { return s.c.leases[l.(*lease).id] != nil }

// Find waits for the job's spec and placement.
func (s *Store) Find(ctx context.Context, timeout time.Duration) (*job.Spec, *job.Placement, error) {
	var specData []byte
	var p *job.Placement
	err := s.c.wait(ctx, timeout, "job "+s.name, func() bool {
		st := s.c.job(s.name)
		specData, p = st.spec, st.placement
		return specData != nil && p != nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("job %s not found (start its coordinator first): %w", s.name, err)
	}
	spec, err := job.DecodeSpec(specData)
	if err != nil {
		return nil, nil, err
	}
	if spec.CorpusDigest != "" {
		s.c.mu.Lock()
		b := s.c.job(s.name).corpus
		s.c.mu.Unlock()
		if err := spec.AttachCorpus(b); err != nil {
			return nil, nil, err
		}
	}
	return spec, p, nil
}

// Placement is the current placement and the revision that wrote it.
func (s *Store) Placement(ctx context.Context) (*job.Placement, int64, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	st := s.c.job(s.name)
	if st.placement == nil {
		return nil, 0, fmt.Errorf("job %s has no placement", s.name)
	}
	return st.placement, st.placementRev, nil
}

// NextPlacement waits for a placement newer than version (nil once the job
// is done).
func (s *Store) NextPlacement(ctx context.Context, version int64) (*job.Placement, int64, error) {
	var next *job.Placement
	var rev int64
	err := s.c.wait(ctx, 0, "a placement", func() bool {
		st := s.c.job(s.name)
		if st.status == job.StateDone {
			return true
		}
		if st.placement != nil && st.placement.Version > version {
			next, rev = st.placement, st.placementRev
			return true
		}
		return false
	})
	if err != nil {
		return nil, 0, err
	}
	return next, rev, nil
}

// Look reads the whole job.
func (s *Store) Look(ctx context.Context) (*job.Look, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	st := s.c.job(s.name)
	if st.spec == nil {
		return nil, fmt.Errorf("job %s: not in the store (%w)", s.name, job.ErrNoJob)
	}
	spec, err := job.DecodeSpec(st.spec)
	if err != nil {
		return nil, err
	}
	lk := &job.Look{Spec: spec, State: st.status, Placement: st.placement, Checkpoint: st.checkpoint, TaskQueue: st.queue,
		Assigned: map[string]job.Assignment{}, Tasks: map[string]job.Task{}, Done: map[int]bool{}, Shards: map[int]job.ShardSeat{}}
	for _, ld := range st.candidates {
		lk.Candidates = append(lk.Candidates, ld.id)
	}
	for _, v := range sortedKeys(st.rollbacks) {
		lk.Rollbacks = append(lk.Rollbacks, st.rollbacks[v])
	}
	for _, id := range sortedKeys(st.workers) {
		lk.Workers = append(lk.Workers, job.Seat{ID: id, Leased: true})
	}
	for i, seat := range st.shards {
		lk.Shards[i] = job.ShardSeat{Member: seat.member, Seat: job.Seat{ID: strconv.Itoa(i), Leased: true}}
	}
	for id, a := range st.assigned {
		lk.Assigned[id] = a
	}
	for id, t := range st.tasks {
		lk.Tasks[id] = t
	}
	for r := range st.done {
		lk.Done[r] = true
	}
	return lk, nil
}

// RequestReshard asks for the job on shards shards.
func (s *Store) RequestReshard(ctx context.Context, shards int) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	st := s.c.job(s.name)
	req := job.ReshardRequest{Shards: shards}
	st.reshard = &req
	s.c.logEvent(st, job.Event{Kind: job.ReshardRequested, Reshard: req})
	return nil
}

// ReshardAnswer waits for the coordinator's answer.
func (s *Store) ReshardAnswer(ctx context.Context, timeout time.Duration) (job.ReshardRequest, error) {
	var ans job.ReshardRequest
	err := s.c.wait(ctx, timeout, "the reshard's answer", func() bool {
		if r := s.c.job(s.name).reshard; r != nil && r.Status != "" {
			ans = *r
			return true
		}
		return false
	})
	return ans, err
}
