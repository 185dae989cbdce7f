package coordinator

import (
	"fmt"
	"slices"

	"github.com/downpour-ml/downpour/internal/job"
)

// Job is the coordinator's decisions for one job as a pure state machine, in
// the manner of etcd's raft: membership, snapshot, completion and operator
// events go in (fed by the store adapter, Run, from the store's events, and by a
// ticker); actions to carry out come out. It does no IO and reads no clock.
//
// Invariants (each tested by a script):
//   - ranks: see Ranks;
//   - a checkpoint is recorded only once every shard of the current
//     placement has a snapshot of its step under that placement, and never
//     goes backwards;
//   - sync: a worker that dies holding an unfinished rank, or a shard that
//     dies while serving the current placement, rolls the job back: a new
//     placement version from the last complete checkpoint (or step 0),
//     fencing every rank at its current holder's epoch (a free rank at the
//     next one), and every rank runs again from there;
//   - async, ssp: a dead shard rolls back likewise; a dead worker does not;
//   - where the placement keeps copies of each block, a dead shard is
//     handed over instead (no rollback, ranks keep their steps and their
//     dones), unless it held the last copy of a block;
//   - a reshard is a rollback onto another number of shards, refused
//     without a complete checkpoint;
//   - the job finishes once, when every rank is done under the current
//     placement.
type Job struct {
	mode      string
	ranks     *Ranks
	placement *job.Placement
	snaps     map[int64]map[int]string // the placement's shard snapshot files by step and shard
	last      job.CheckpointRecord     // the last complete checkpoint (Step -1: none)
	finished  bool
	joinTicks int // ticks a rank may stay without a worker
	idleTicks int // ticks some rank has been without a worker
	// with tasks (async, ssp): the data-shard tasks, and the rank holders waiting for one.
	tasks *Tasks
	idle  map[string]bool
	// async checkpoints: every ckEvery data steps done, the shards snapshot
	// (labelled by the data steps done) and the queue as it was then is
	// kept, to go back to with them.
	ckEvery int64
	nextCk  int64
	queueAt map[int64]*Tasks
	tasks0  *Tasks // the queue at the start
}

// ActionKind names what an Action asks the adapter to do.
type ActionKind int

// Actions.
const (
	DoAssign     ActionKind = iota // write Assign
	DoUnassign                     // delete Worker's assignment
	DoPlace                        // write Placement, and delete every rank's done
	DoCheckpoint                   // record Checkpoint as the last complete one
	DoAnswer                       // write Reshard (the answer to a request)
	DoFinish                       // save the final parameters, mark the job done
	DoFail                         // stop coordinating with Err
	DoGiveTask                     // write Worker's task: Task (ID -1: none for now)
	DoSaveTasks                    // store the task queue (Tasks)
	DoSnapshot                     // ask every shard for a snapshot now, labelled Checkpoint.Step (with tasks)
)

// Action is one thing for the adapter to carry out, in order.
type Action struct {
	Kind       ActionKind
	Assign     Assign
	Worker     string
	Placement  *job.Placement
	Checkpoint job.CheckpointRecord
	Reshard    job.ReshardRequest
	Err        error
	Why        string // for the log
	Task       job.Task
	Tasks      *Tasks
	// Thrown (DoPlace, with tasks): data steps of tasks done since the
	// checkpoint the job goes back to, which are done again; -1: unknown.
	Thrown int64
}

// NewJob makes the state of a job of workers ranks in mode under placement
// p; a rank may stay without a worker for joinTicks ticks.
func NewJob(mode string, workers int, p *job.Placement, joinTicks int) *Job {
	return NewSeatedJob(mode, workers, 1, p, joinTicks)
}

// NewSeatedJob is NewJob for ranks that are seats of model replicas, seats
// to a replica (NewSeatedRanks). A seat is a rank like any other: in sync
// mode the death of one rolls the job back, and its replica runs again
// once a spare holds the seat.
func NewSeatedJob(mode string, ranks, seats int, p *job.Placement, joinTicks int) *Job {
	return &Job{mode: mode, ranks: NewSeatedRanks(ranks, seats), placement: p, snaps: map[int64]map[int]string{},
		last: job.CheckpointRecord{Step: -1}, joinTicks: joinTicks}
}

// UseTasks makes the job hand out its data as the tasks of q (async mode):
// a rank holder works on one task at a time, the job finishes when every
// task is done or failed, and a worker's death only puts its task back.
// Where a model replica is laid out over seats, the tasks go to its seat 0
// (the rank holders of ranks 0, Seats, 2 Seats, ...), which orders the
// other seats to run its steps.
//
// With checkpointEvery > 0, every checkpointEvery data steps done the
// shards snapshot, and a rollback to that checkpoint also puts the queue
// back as it was: tasks done since go back to todo, so every data step is
// still counted exactly once.
func (j *Job) UseTasks(q *Tasks, checkpointEvery int64) {
	j.tasks, j.idle = q, map[string]bool{}
	j.tasks0 = q.clone()
	j.queueAt = map[int64]*Tasks{}
	if checkpointEvery > 0 {
		j.ckEvery = checkpointEvery
		j.nextCk = (q.DoneSteps()/checkpointEvery + 1) * checkpointEvery
	}
}

// Placement is the job's current placement.
func (j *Job) Placement() *job.Placement { return j.placement }

// RestoreAssignment records an assignment read back from the store.
func (j *Job) RestoreAssignment(worker string, a job.Assignment) { j.ranks.Restore(worker, a) }

// Holders lists the workers holding ranks.
func (j *Job) Holders() []string {
	var ws []string
	for w := range j.ranks.rankOf {
		ws = append(ws, w)
	}
	return ws
}

// CheckpointRecorded records a checkpoint read back from the store.
func (j *Job) CheckpointRecorded(cp job.CheckpointRecord) {
	if cp.Step > j.last.Step {
		j.last = cp
	}
}

// WorkerUp: worker registered.
func (j *Job) WorkerUp(worker string) []Action { return j.WorkerUpAs(worker, job.WorkerMember{}) }

// WorkerUpAs records that worker joined as m says (pinned to a replica,
// or not).
func (j *Job) WorkerUpAs(worker string, m job.WorkerMember) []Action {
	return j.withTasks(assigns(j.ranks.UpAs(worker, m)))
}

// withTasks adds, after assignments, a task for each newly assigned worker.
func (j *Job) withTasks(out []Action) []Action {
	if j.tasks == nil {
		return out
	}
	for _, a := range out {
		if a.Kind == DoAssign && a.Assign.Rank%j.ranks.seats == 0 {
			j.idle[a.Assign.Worker] = true
		}
	}
	return append(out, j.offer()...)
}

// offer gives tasks to the idle rank holders (in name order), while there
// are tasks to give, and says "none for now" to the rest.
func (j *Job) offer() []Action {
	var ws []string
	for w := range j.idle {
		ws = append(ws, w)
	}
	slices.Sort(ws)
	var out []Action
	changed := false
	for _, w := range ws {
		t, ok := j.tasks.Next(w)
		if !ok {
			t = job.Task{ID: -1}
		} else {
			delete(j.idle, w)
			changed = true
		}
		out = append(out, Action{Kind: DoGiveTask, Worker: w, Task: t})
	}
	if changed {
		out = append(out, Action{Kind: DoSaveTasks, Tasks: j.tasks.clone()})
	}
	return out
}

// RestoreQueueAt records the queue as it was at the checkpoint of step
// (read back from the store by a coordinator that takes over).
func (j *Job) RestoreQueueAt(step int64, q *Tasks) {
	if j.queueAt != nil {
		j.queueAt[step] = q
	}
}

// TaskDone: worker reported task id done.
func (j *Job) TaskDone(worker string, id int) []Action {
	if j.tasks == nil || j.finished {
		return nil
	}
	if _, held := j.ranks.rankOf[worker]; !held {
		j.tasks.Late++
		return nil // not a member any more: its report does not count
	}
	counted := j.tasks.Finish(worker, id)
	var out []Action
	if counted {
		out = append(out, Action{Kind: DoSaveTasks, Tasks: j.tasks.clone()})
		if done := j.tasks.DoneSteps(); j.ckEvery > 0 && done >= j.nextCk && !j.tasks.Finished() {
			j.nextCk = (done/j.ckEvery + 1) * j.ckEvery
			j.queueAt[done] = j.tasks.clone()
			out = append(out, Action{Kind: DoSnapshot, Checkpoint: job.CheckpointRecord{Step: done, Placement: j.placement.Version},
				Tasks: j.queueAt[done]})
		}
	} else if j.pending(worker) {
		return nil // a stale report: it is busy with its current task
	}
	j.idle[worker] = true
	if j.tasks.Finished() {
		j.finished = true
		return append(out, Action{Kind: DoFinish})
	}
	return append(out, j.offer()...)
}

// Resume, after the job's keys have been read back, offers tasks to the
// rank holders that have none pending (a coordinator that takes over does
// not know who was waiting), and finishes a job whose tasks all ended.
func (j *Job) Resume() []Action {
	if j.tasks == nil || j.finished {
		return nil
	}
	if j.tasks.Finished() {
		j.finished = true
		return []Action{{Kind: DoFinish}}
	}
	for w, r := range j.ranks.rankOf {
		if r%j.ranks.seats == 0 && !j.pending(w) {
			j.idle[w] = true
		}
	}
	return j.offer()
}

// pending reports whether worker owns a pending task.
func (j *Job) pending(worker string) bool {
	for _, t := range j.tasks.List {
		if t.State == job.TaskPending && t.Owner == worker {
			return true
		}
	}
	return false
}

// WorkerDown: worker's membership ended (its lease ran out, or it left).
func (j *Job) WorkerDown(worker string) []Action {
	lost := j.ranks.Holds(worker)
	_, held := j.ranks.rankOf[worker]
	var out []Action
	if held { // should it come back, it finds it has no rank
		out = append(out, Action{Kind: DoUnassign, Worker: worker})
	}
	if j.tasks != nil {
		delete(j.idle, worker)
		j.tasks.Down(worker)
		out = append(out, Action{Kind: DoSaveTasks, Tasks: j.tasks.clone()})
	}
	out = append(out, j.withTasks(assigns(j.ranks.Down(worker)))...)
	if j.tasks != nil && !j.finished {
		out = append(out, j.offer()...) // its task, to an idle holder
	}
	if lost && j.mode == job.Sync && !j.finished {
		// Its last step may be half pushed: only a rollback keeps the run
		// what it would have been.
		out = append(out, j.rollback(j.placement.Shards, fmt.Sprintf("worker %s died", worker))...)
	}
	return out
}

// ShardDown: shard idx's membership ended; it was serving placement version
// serving (0: none yet). Where the placement keeps copies of each block
// (job.Placement.Copies), its blocks are handed over to their backups: a
// placement of the same lineage, one version on, with idx down; nothing is
// rolled back, and every rank carries on (and stays done, if it was).
// Where a block had no other copy left, the job rolls back to the last
// checkpoint.
func (j *Job) ShardDown(idx int, serving int64) []Action {
	p := j.placement
	if j.finished || serving < p.Lineage() || !p.Live(idx) {
		return nil // it held no progress of this placement's lineage, or was handed over already
	}
	why := fmt.Sprintf("parameter-server shard %d died", idx)
	if p.Copies > 1 {
		q, err := p.Handover(idx)
		if err == nil {
			j.placement = q
			clear(j.snaps) // a checkpoint completes under one version
			return []Action{{Kind: DoPlace, Placement: q, Why: why + ": its blocks are handed over to their backups", Thrown: 0}}
		}
		why += " (" + err.Error() + "): going back to the last checkpoint"
	}
	return j.rollback(p.Shards, why)
}

// ShardUp: shard idx's process claimed its index (serving 0), says it
// serves placement version serving, or that it is filled there. Where the
// placement keeps copies of each block, a process that claims an index a
// handover left down rejoins: the placement in which it is the last copy
// of what it held, being filled (job.Placement.Rejoin); once it says it is
// filled, the placement in which it is a copy like any other. So the job
// gets its copies back while it trains.
func (j *Job) ShardUp(idx int, serving int64, filled bool) []Action {
	p := j.placement
	if j.finished || p.Copies < 2 {
		return nil
	}
	switch {
	case slices.Contains(p.Down, idx):
		q, err := p.Rejoin(idx)
		if err != nil {
			return nil
		}
		j.placement = q
		clear(j.snaps)
		return []Action{{Kind: DoPlace, Placement: q, Why: fmt.Sprintf("parameter-server shard %d is back: it rejoins its blocks' chains, to be filled", idx), Thrown: 0}}
	case filled && slices.Contains(p.Filling, idx) && serving >= p.Lineage():
		q, err := p.Filled(idx)
		if err != nil {
			return nil
		}
		j.placement = q
		clear(j.snaps)
		return []Action{{Kind: DoPlace, Placement: q, Why: fmt.Sprintf("parameter-server shard %d is filled: every block has its copies again", idx), Thrown: 0}}
	}
	return nil
}

// SnapshotRecorded: a shard recorded a snapshot.
func (j *Job) SnapshotRecorded(rec job.SnapshotRecord) []Action {
	if !j.placement.Live(rec.Shard) || rec.Placement != j.placement.Version || rec.Step <= j.last.Step {
		return nil // of an earlier placement, or older than the last checkpoint
	}
	m := j.snaps[rec.Step]
	if m == nil {
		m = map[int]string{}
		j.snaps[rec.Step] = m
	}
	m[rec.Shard] = rec.Path
	if len(m) < j.placement.LiveShards() { // (a shard down holds no block: its file stays "")
		return nil
	}
	cp := job.CheckpointRecord{Step: rec.Step, Placement: rec.Placement, Files: make([]string, j.placement.Shards)}
	for i, f := range m {
		cp.Files[i] = f
	}
	j.last = cp
	for step := range j.snaps {
		if step <= rec.Step {
			delete(j.snaps, step)
		}
	}
	for step := range j.queueAt {
		if step < rec.Step {
			delete(j.queueAt, step)
		}
	}
	return []Action{{Kind: DoCheckpoint, Checkpoint: cp}}
}

// RankDone: rank reported its last step pushed under the current placement.
func (j *Job) RankDone(rank int) []Action {
	if j.finished || j.tasks != nil || !j.ranks.Done(rank) {
		return nil
	}
	j.finished = true
	return []Action{{Kind: DoFinish}}
}

// ReshardRequested: an operator asked for another number of shards.
func (j *Job) ReshardRequested(req job.ReshardRequest) []Action {
	if req.Status != "" {
		return nil // already answered
	}
	answer := func(status string) []Action {
		req.Status = status
		return []Action{{Kind: DoAnswer, Reshard: req}}
	}
	switch {
	case j.finished:
		return answer("refused: the job has finished")
	case j.last.Step < 0:
		return answer("refused: the job has no complete checkpoint yet (it re-places from one: run it with --checkpoint-every)")
	}
	out := j.rollback(req.Shards, fmt.Sprintf("an operator asked for %d shards", req.Shards))
	if out[0].Kind == DoFail { // the placement could not be made
		return answer("refused: " + out[0].Err.Error())
	}
	req.Version, req.Start = j.placement.Version, j.placement.Start
	return append(out, answer("done")...)
}

// Tick advances time by one tick: a rank left without a worker for too long
// fails the job.
func (j *Job) Tick() []Action {
	var out []Action
	if j.tasks != nil && !j.finished {
		if lost := j.tasks.Tick(); len(lost) > 0 {
			out = append(out, Action{Kind: DoSaveTasks, Tasks: j.tasks.clone()})
			if j.tasks.Finished() { // the last ones failed
				j.finished = true
				return append(out, Action{Kind: DoFinish})
			}
			out = append(out, j.offer()...)
		}
	}
	return append(out, j.joinTick()...)
}

func (j *Job) joinTick() []Action {
	if j.ranks.Unassigned() == 0 || j.finished || j.tasks != nil && len(j.ranks.rankOf) > 0 {
		j.idleTicks = 0
		return nil
	}
	j.idleTicks++
	if j.idleTicks > j.joinTicks {
		return []Action{{Kind: DoFail, Err: fmt.Errorf("%d ranks have had no worker for %d ticks: start more workers", j.ranks.Unassigned(), j.joinTicks)}}
	}
	return nil
}

// rollback moves the job to a new placement on shards shards, starting from
// the last complete checkpoint (or step 0 without one).
func (j *Job) rollback(shards int, why string) []Action {
	step, files := j.last.Step, j.last.Files
	if step < 0 {
		step, files = 0, nil
	}
	q, err := j.placement.Reshard(shards, step, files)
	if err != nil {
		return []Action{{Kind: DoFail, Err: err}}
	}
	q.Epochs = j.ranks.Fence()
	j.placement = q
	clear(j.snaps)
	// The placement first: its fence must be in force before a revived
	// rank's new holder can push.
	out := append([]Action{{Kind: DoPlace, Placement: q, Why: why, Thrown: -1}}, assigns(j.ranks.Rollback())...)
	if j.tasks != nil {
		// The shards go back to the checkpoint: so does the queue. Every
		// holder drops its task and takes one anew.
		back := j.tasks0
		if qa, ok := j.queueAt[step]; ok && j.last.Step >= 0 {
			back = qa
		}
		late, before := j.tasks.Late, j.tasks.DoneSteps()
		j.tasks = back.clone()
		out[0].Thrown = max(0, before-j.tasks.DoneSteps())
		j.tasks.Late = late
		if j.ckEvery > 0 {
			j.nextCk = (j.tasks.DoneSteps()/j.ckEvery + 1) * j.ckEvery
		}
		for i := range j.tasks.List {
			if t := &j.tasks.List[i]; t.State == job.TaskPending {
				t.State, t.Owner, t.Deadline = job.TaskTodo, "", 0
			}
		}
		for w := range j.ranks.rankOf {
			j.idle[w] = true
		}
		out = append(out, Action{Kind: DoSaveTasks, Tasks: j.tasks.clone()})
		out = append(out, j.offer()...)
	}
	return out
}

func assigns(as []Assign) []Action {
	out := make([]Action, len(as))
	for i, a := range as {
		out[i] = Action{Kind: DoAssign, Assign: a}
	}
	return out
}
