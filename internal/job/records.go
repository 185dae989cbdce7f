package job

// The records the roles write to and read from the job's store.

// Job states (the store's state record).
const (
	StateRunning = "running"
	StateDone    = "done"
)

// SnapshotRecord is what a shard records in etcd for a snapshot it wrote.
type SnapshotRecord struct {
	Path      string `json:"path"`
	Step      int64  `json:"step"`
	Shard     int    `json:"shard"`
	Placement int64  `json:"placement"` // version it was taken under
}

// CheckpointRecord names the last complete checkpoint: the step, the
// placement it was taken under, and each shard's snapshot file.
type CheckpointRecord struct {
	Step      int64    `json:"step"`
	Placement int64    `json:"placement"`
	Files     []string `json:"files"` // by shard
}

// RollbackRecord says why and from where the coordinator re-placed the job:
// the steps from ToStep to FromStep are thrown away and done again. In sync
// mode they are job steps (FromStep: the furthest a shard had got; -1 when
// unknown); in async mode with tasks, data steps done (the updates they made
// since the checkpoint are lost).
type RollbackRecord struct {
	Placement int64  `json:"placement"`
	Why       string `json:"why"`
	FromStep  int64  `json:"from_step"`
	ToStep    int64  `json:"to_step"`
}

// ShardMember is the value of a shard's membership key: the placement
// version it serves (0 while it is still restoring).
type ShardMember struct {
	Placement int64 `json:"placement"`
	// Filled: the shard, which rejoined its chains under Placement, holds
	// every update of its blocks (ShardStore.ShardFilled).
	Filled bool `json:"filled,omitempty"`
}

// ReshardRequest asks the coordinator to move the job to Shards shards. The
// coordinator answers in Status ("done" or why not) and Version (the new
// placement's).
type ReshardRequest struct {
	Shards  int    `json:"shards"`
	Status  string `json:"status,omitempty"`
	Version int64  `json:"version,omitempty"`
	Start   int64  `json:"start,omitempty"`
}

// Assignment is what the coordinator gives a worker: its rank, the fencing
// epoch of that rank, and the data shard it reads.
// WorkerMember is what a worker says of itself when it joins: the model
// replica it may serve, when it is pinned to one (its NATS identity may
// reach that replica's seat subjects only, or it runs on the machine that
// holds that replica's other seats). Nil Replica: any.
type WorkerMember struct {
	Replica *int `json:"replica,omitempty"`
}

// PinTo is the membership of a worker pinned to replica r (r < 0: any).
func PinTo(r int) WorkerMember {
	if r < 0 {
		return WorkerMember{}
	}
	return WorkerMember{Replica: &r}
}

// Serves says whether a worker of membership m may hold rank of a job
// whose replicas have seats seats each.
func (m WorkerMember) Serves(rank, seats int) bool {
	return m.Replica == nil || *m.Replica == rank/max(1, seats)
}

type Assignment struct {
	Rank      int    `json:"rank"`
	Epoch     uint64 `json:"epoch"`
	DataShard int    `json:"data_shard"`
}

// Task states.
const (
	TaskTodo    = "todo"
	TaskPending = "pending"
	TaskDone    = "done"
	TaskFailed  = "failed"
)

// Task is a piece of an async job's data: steps [From, To) of data shard
// Shard, processed by one worker at a time.
type Task struct {
	ID       int    `json:"id"`
	Shard    int    `json:"shard"`
	From     int64  `json:"from"`
	To       int64  `json:"to"`
	State    string `json:"state"`
	Owner    string `json:"owner,omitempty"`
	Deadline int64  `json:"deadline,omitempty"` // tick by which a pending task must be done
	Attempts int    `json:"attempts,omitempty"` // times it was given out
}
