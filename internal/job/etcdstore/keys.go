// Package etcdstore is the job's store (job.Store) in etcd: the layout of
// a job's records in etcd's keys (Keys), connecting as a role (ConnectAs),
// waits on keys with watches (Wait, WaitKeys), leases that say when they
// are lost (Grant), and the store's calls, each retrying what an etcd
// election or a lost member makes fail for a moment (Store). It is the one
// package of the roles' code that speaks to etcd.
//
// All keys of job J live under /downpour/jobs/J/:
//
//	spec                    the Spec, JSON, written once by the coordinator
//	corpus/<chunk>          the corpus's summary (shard.CorpusSummary), in chunks, written before the spec
//	state                   "running" or "done"
//	placement               the block placement, JSON, versioned
//	members/workers/<id>    one key per live worker, under its lease
//	members/ps/<i>          one key per live parameter-server shard, under its lease
//	assign/<id>             the rank, epoch and data shard given to worker <id>
//	done/<rank>             written by a rank when it has pushed its last step
//	shard-snapshots/p<v>/<step>/<i>  shard i's snapshot of step under placement v
//	tasks, task/<id>, task-done/<id>  async, ssp: the task queue, worker <id>'s task, its report
//	checkpoint              the last complete checkpoint (every shard's snapshot of one step)
//	reshard                 an operator's request to re-place the job, and the answer
//	rollbacks/<v>           why placement v was made, and the steps it threw away
//
// A placement's version fences eras: when the coordinator re-places the job
// (version v+1, starting from the complete checkpoint of step S), every shard
// restores its new blocks from the snapshots of step S and serves the
// subjects of v+1 only; every worker drops what it was doing and resumes at
// step S under v+1. A rank's done is written only if the placement it ran
// under is still current.
package etcdstore

import (
	"fmt"
	"strconv"
)

// Keys names the etcd keys of one job.
type Keys struct{ root string }

// KeysFor returns the keys of job name.
func KeysFor(name string) Keys { return Keys{root: jobsRoot + name + "/"} }

// jobsRoot is where the jobs' keys are.
const jobsRoot = "/downpour/jobs/"

func (k Keys) Root() string            { return k.root }
func (k Keys) Spec() string            { return k.root + "spec" }
func (k Keys) State() string           { return k.root + "state" }
func (k Keys) Placement() string       { return k.root + "placement" }
func (k Keys) Workers() string         { return k.root + "members/workers/" }
func (k Keys) Worker(id string) string { return k.Workers() + id }
func (k Keys) Shards() string          { return k.root + "members/ps/" }
func (k Keys) Shard(i int) string      { return k.Shards() + strconv.Itoa(i) }
func (k Keys) Assigns() string         { return k.root + "assign/" }
func (k Keys) Assign(id string) string { return k.Assigns() + id }
func (k Keys) Dones() string           { return k.root + "done/" }
func (k Keys) Done(rank int) string    { return k.Dones() + strconv.Itoa(rank) }

// ShardSnapshots is the prefix under which shards record the snapshots they
// have written: shard-snapshots/p<placement version>/<step>/<shard>.
func (k Keys) ShardSnapshots() string { return k.root + "shard-snapshots/" }
func (k Keys) ShardSnapshot(version, step int64, shard int) string {
	return fmt.Sprintf("%sp%d/%d/%d", k.ShardSnapshots(), version, step, shard)
}

// Served marks that a process has served shard index shard of placement
// version: each is served by one process in its life (its state dies with
// it; the coordinator then replaces the placement).
func (k Keys) Served(version int64, shard int) string {
	return fmt.Sprintf("%sserved/p%d/%d", k.root, version, shard)
}

// Reshard is where an operator asks the coordinator to re-place the job on
// another number of shards (a ReshardRequest); the coordinator writes its
// answer back into it.
func (k Keys) Reshard() string { return k.root + "reshard" }

// Tasks holds an async job's data-shard task queue; Task(id) the task the
// coordinator gives worker id ({"id": -1}: none for now); TaskDone(id) the
// task worker id reports done.
func (k Keys) Tasks() string             { return k.root + "tasks" }
func (k Keys) TaskOf(id string) string   { return k.root + "task/" + id }
func (k Keys) TaskDones() string         { return k.root + "task-done/" }
func (k Keys) TaskDone(id string) string { return k.TaskDones() + id }

// TasksAt holds the task queue as it was at the checkpoint of step (jobs with tasks).
func (k Keys) TasksAt(step int64) string { return fmt.Sprintf("%stasks-at/%d", k.root, step) }

// Corpus holds the job's corpus summary, gzip-compressed JSON cut into
// chunks of at most CorpusChunk bytes (an etcd request is at most 1.5 MiB
// by default; the paper's vocabularies take about 1 MiB compressed):
// corpus/<chunk>, zero-padded to sort in order.
func (k Keys) Corpus() string          { return k.root + "corpus/" }
func (k Keys) CorpusPart(i int) string { return fmt.Sprintf("%s%06d", k.Corpus(), i) }

// CorpusChunk is the most bytes of a corpus summary one key holds.
const CorpusChunk = 512 << 10

// Rollbacks holds a RollbackRecord per re-placement: rollbacks/<version>.
func (k Keys) Rollbacks() string { return k.root + "rollbacks/" }
func (k Keys) Rollback(version int64) string {
	return fmt.Sprintf("%s%d", k.Rollbacks(), version)
}

// Leader is the prefix of the coordinators' election for the job.
func (k Keys) Leader() string { return k.root + "leader/" }

// Checkpoint holds the last complete checkpoint: a step for which every
// shard has recorded its snapshot.
func (k Keys) Checkpoint() string { return k.root + "checkpoint" }
