// Package coordinator runs a downpour job: it writes the job spec and the
// block placement to etcd, hands each worker a rank, a fencing epoch and a
// data shard (or, in async and ssp jobs with tasks, pieces of the data),
// records checkpoints once every shard has snapshotted a step, rolls the
// job back or re-places it when a member dies or an operator asks, and
// declares the job done when every rank has pushed its last step.
//
// The decisions are pure state machines fed with events, scripted in
// tests: Job (job.go) for the whole job, built on Ranks (ranks.go: who
// holds which rank, under which epoch) and Tasks (tasks.go: the async data
// queue). Run (run.go) adapts them to etcd watches, a ticker and the
// caller's snapshot hooks; leader.go elects one coordinator among several,
// whose writes are guarded by its leadership:
//
//	lead, err := coordinator.Campaign(ctx, cli, spec.Name, id, ttl)
//	err = coordinator.Run(ctx, cli, coordinator.Config{Spec: spec, Leader: lead, OnFinish: saveCheckpoint})
//
// Subpackages: jobrun runs the coordinator's process with its run directory
// (evaluations, metrics, the final checkpoint); status reads what an
// operator is shown of a job.
package coordinator
