package job

import (
	"context"
	"errors"
	"time"
)

// The store is the job's shared state: everything a role reads from or
// writes to another role goes through it, and through nothing else. Its
// implementations are package etcdstore (etcd, for every real run) and
// package memstore (in memory, for the roles' unit tests); both keep the
// same records and give the same answers.
//
// An implementation retries what fails for a moment (an etcd election, a
// request that timed out, a lost connection) itself, with backoff, within
// a bound, for every call: a role never sees an election as an error. The
// calls that write are idempotent, or made so (a write checks the revision
// it expects), so that a retried write whose first try took effect changes
// nothing more.
//
// A Rev is a revision of the store: it orders its writes. A placement is
// returned with the revision that wrote it, so that a rank's report that
// it is done counts only under the placement it ran under.

// ErrNotLeader is returned by a coordinator's write when the coordinator no
// longer leads its job (another was elected while it was cut off or
// frozen): a deposed leader changes nothing.
var ErrNotLeader = errors.New("no longer the job's leader")

// ErrNoJob says that the store holds no job of that name.
var ErrNoJob = errors.New("no such job")

// Store is the job's state as every role sees it: one job of one cluster.
type Store interface {
	// Name is the job's.
	Name() string
	// Find waits, up to timeout, for the job to exist, and returns its
	// spec, with its corpus summary attached (Spec.Corpus), and its
	// placement (which the coordinator writes together).
	Find(ctx context.Context, timeout time.Duration) (*Spec, *Placement, error)
	// Placement is the job's current placement and the revision that
	// wrote it.
	Placement(ctx context.Context) (*Placement, int64, error)
	// NextPlacement waits until the job's placement is newer than version
	// and returns it, with its revision; or nil once the job is done. Only
	// ctx bounds the wait.
	NextPlacement(ctx context.Context, version int64) (*Placement, int64, error)
	// Grant starts a lease of ttl seconds, kept alive until Close: the
	// membership a worker or a shard holds under it ends with it.
	Grant(ctx context.Context, ttl int64) (Lease, error)

	WorkerStore
	ShardStore
	CoordinatorStore
	ObserverStore
}

// Lease is a member's hold on the job: what it wrote under the lease
// vanishes when the lease ends (Close, or its process died and it expired).
type Lease interface {
	// Lost is closed when the lease has ended: the member is no longer
	// one, and must stop (fenced off).
	Lost() <-chan struct{}
	// Close ends the lease at once.
	Close()
}

// WorkerStore is what a worker reads and writes: its membership, the rank
// it is given, and its reports.
type WorkerStore interface {
	// JoinWorker makes worker id a member of the job, under lease l, as
	// m says (the replica it is pinned to, if any).
	JoinWorker(ctx context.Context, l Lease, id string, m WorkerMember) error
	// WaitAssignment waits for the coordinator to give worker id a rank;
	// it returns nil if the job is done first. Only ctx bounds the wait.
	WaitAssignment(ctx context.Context, id string) (*Assignment, error)
	// Assignment is worker id's rank now (nil: none).
	Assignment(ctx context.Context, id string) (*Assignment, error)
	// WaitShards waits, up to timeout, for n shards to be members.
	WaitShards(ctx context.Context, n int, timeout time.Duration) error
	// RankDone records that rank a.Rank pushed its last step, if the job's
	// placement is still the one written at revision rev; it says whether
	// it was.
	RankDone(ctx context.Context, a Assignment, rev int64) (bool, error)
	// NextTask waits for a task for worker id other than last.
	NextTask(ctx context.Context, id string, last Task) (Task, error)
	// TaskDone reports that worker id did task t.
	TaskDone(ctx context.Context, id string, t Task) error
}

// ShardStore is what a parameter-server shard reads and writes: its seat
// in the placement, its snapshots, and which ranks' holders are gone.
type ShardStore interface {
	// ClaimShard takes shard index want, or the lowest free index when want
	// is negative, of a placement of shards shards, under lease l.
	ClaimShard(ctx context.Context, l Lease, shards, want int) (int, error)
	// Served says whether shard index i of placement version was ever
	// served.
	Served(ctx context.Context, version int64, i int) (bool, error)
	// ServeShard records that this process (holding l and index i) serves
	// placement version, unless some process did before; it says whether
	// this one is the first.
	ServeShard(ctx context.Context, l Lease, version int64, i int) (bool, error)
	// LeaveShard gives index i up.
	LeaveShard(ctx context.Context, i int) error
	// ShardFilled records that this process (holding l and index i),
	// which rejoined its chains under placement version, holds every
	// update of its blocks.
	ShardFilled(ctx context.Context, l Lease, version int64, i int) error
	// RecordSnapshot records a snapshot a shard wrote.
	RecordSnapshot(ctx context.Context, rec SnapshotRecord) error
	// Checkpoint is the last complete checkpoint (nil: none) and the
	// revision it was read at.
	Checkpoint(ctx context.Context) (*CheckpointRecord, int64, error)
	// NextCheckpoint waits for a checkpoint recorded after revision rev
	// and returns it with its revision.
	NextCheckpoint(ctx context.Context, rev int64) (*CheckpointRecord, int64, error)
	// Released sends each assignment the coordinator withdraws (its
	// holder was given up on) until ctx ends.
	Released(ctx context.Context) <-chan Assignment
}

// CoordinatorStore is what the job's coordinator reads and writes: its
// election, the job's creation, the typed events it reacts to, and its
// decisions, each written only while it leads (ErrNotLeader).
type CoordinatorStore interface {
	// Campaign blocks until process id leads the job's coordination, or
	// ctx ends. When a leader dies, its leadership ends ttl seconds later
	// and the oldest standby wins.
	Campaign(ctx context.Context, id string, ttl int) (Leadership, error)
	// Leader is the leading coordinator's id ("" when none).
	Leader(ctx context.Context) (string, error)
	// Create writes the job (spec with its corpus summary, first
	// placement, running) unless it exists, or with join, only reads it. It returns the stored spec's
	// bytes and state when the job existed (created false), which is also
	// the answer when a retried try of this very call had created it.
	Create(ctx context.Context, l Leadership, spec *Spec, p *Placement, join bool) (created bool, stored []byte, state string, err error)
	// StoredSpec is the stored spec's bytes (nil: no such job).
	StoredSpec(ctx context.Context) ([]byte, error)
	// Follow returns the job as it is, as events (Follow's View), and
	// then sends its changes as events until ctx ends; a change that
	// cannot be followed ends the channel with an event of kind Failed.
	// An event may come twice when the write behind it was retried: the
	// coordinator's reactions to a repeated event change nothing.
	Follow(ctx context.Context) (*View, <-chan Event, error)
	// TaskQueue is the stored task queue (nil: none); TaskQueueAt the
	// queue as it was at the checkpoint of step.
	TaskQueue(ctx context.Context) ([]byte, error)
	TaskQueueAt(ctx context.Context, step int64) ([]byte, error)

	// The leader's decisions (each fails with ErrNotLeader when l no
	// longer leads; nil l: a coordinator that did not campaign).
	CheckLeader(ctx context.Context, l Leadership) error
	Assign(ctx context.Context, l Leadership, worker string, a Assignment) error
	Unassign(ctx context.Context, l Leadership, worker string) error
	// Place writes placement q, forgets the ranks that were done (unless q
	// is handed over: they stay done) and, with rb, records why the job
	// was re-placed.
	Place(ctx context.Context, l Leadership, q *Placement, rb *RollbackRecord) error
	// GiveTasks gives workers their tasks and stores the queue that says
	// so, as one write.
	GiveTasks(ctx context.Context, l Leadership, given []GivenTask, queue []byte) error
	SaveTaskQueueAt(ctx context.Context, l Leadership, step int64, queue []byte) error
	RecordCheckpoint(ctx context.Context, l Leadership, cp CheckpointRecord) error
	AnswerReshard(ctx context.Context, l Leadership, req ReshardRequest) error
	MarkDone(ctx context.Context, l Leadership) error
}

// GivenTask is a task given to a worker.
type GivenTask struct {
	Worker string
	Task   Task
}

// Leadership is a coordinator's won election.
type Leadership interface {
	// Lost is closed when the leadership has ended.
	Lost() <-chan struct{}
	// Resign gives the leadership up: a standby takes over at once.
	Resign(ctx context.Context)
}

// ObserverStore is what an operator's tools read and ask.
type ObserverStore interface {
	// Look reads the whole job at one revision (ErrNoJob: none).
	Look(ctx context.Context) (*Look, error)
	// RequestReshard asks the coordinator to move the job to shards
	// shards; ReshardAnswer waits, up to timeout, for its answer.
	RequestReshard(ctx context.Context, shards int) error
	ReshardAnswer(ctx context.Context, timeout time.Duration) (ReshardRequest, error)
}

// EventKind says what happened to the job.
type EventKind int

// The kinds of events a coordinator reacts to.
const (
	WorkerUp           EventKind = iota + 1 // Worker joined
	WorkerDown                              // Worker's lease ended
	ShardDown                               // Shard's lease ended, serving Placement
	SnapshotRecorded                        // Snapshot
	CheckpointRecorded                      // Checkpoint
	ReshardRequested                        // Reshard
	TaskReported                            // Worker did Task
	RankReported                            // Rank is done
	Malformed                               // a record that did not decode: What, Err
	Failed                                  // the store cannot follow the job any more: Err
	// ShardUp: Shard's process claimed its index (Placement 0), says it
	// serves Placement, or (Filled) holds every update of its blocks
	// there (a shard that rejoined its chains, job.Placement.Rejoin).
	ShardUp
)

// Event is one change of the job, typed.
type Event struct {
	Kind       EventKind
	Worker     string
	Member     WorkerMember // WorkerUp: what the worker said of itself
	Shard      int
	Placement  int64
	Filled     bool // ShardUp: the shard is filled
	Rank       int
	Snapshot   SnapshotRecord
	Checkpoint CheckpointRecord
	Reshard    ReshardRequest
	Task       Task
	What       string
	Err        error
}

// View is the job as a coordinator that starts (or takes over) finds it:
// the assignments given, the live workers, the last checkpoint, and the
// job's records as events, in the store's order.
type View struct {
	Assigned   map[string]Assignment
	Live       map[string]bool
	Checkpoint *CheckpointRecord
	Events     []Event
}

// Look is the whole job, as an operator is shown it.
type Look struct {
	Spec       *Spec
	State      string
	Placement  *Placement
	Candidates []string // the coordinators in the election, oldest (the leader) first
	Checkpoint *CheckpointRecord
	Rollbacks  []RollbackRecord // by placement version
	TaskQueue  []byte
	Workers    []Seat                // live workers, by id
	Assigned   map[string]Assignment // by worker
	Tasks      map[string]Task       // by worker
	Done       map[int]bool          // ranks done
	Shards     map[int]ShardSeat     // live shards, by index
}

// Seat is a live member and the time left on its lease.
type Seat struct {
	ID        string
	Leased    bool          // false: its record is under no lease
	LeaseLeft time.Duration // negative: expired
	Granted   time.Duration
}

// ShardSeat is a live shard: the placement it serves and its lease.
type ShardSeat struct {
	Member ShardMember
	Seat
}
