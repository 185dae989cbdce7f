// Package coordinator runs a downpour job: it writes the job spec and the
// block placement to the job's store, hands each worker a rank, a fencing epoch and a
// data shard (or, in async and ssp jobs with tasks, pieces of the data),
// records checkpoints once every shard has snapshotted a step, rolls the
// job back or re-places it when a member dies or an operator asks, and
// declares the job done when every rank has pushed its last step.
//
// The decisions are pure state machines fed with events, scripted in
// tests: Job (job.go) for the whole job, built on Ranks (ranks.go: who
// holds which rank, under which epoch) and Tasks (tasks.go: the async data
// queue). Run (run.go) adapts them to the job's store: it switches on the
// store's typed events (job.Event), ticks, and writes the machine's
// decisions through the store, guarded by the coordinator's leadership
// when it won one of the store's elections:
//
//	lead, err := st.Campaign(ctx, id, ttl) // st: the job's job.Store
//	err = coordinator.Run(ctx, st, coordinator.Config{Spec: spec, Leader: lead, OnFinish: saveCheckpoint})
//
// (ExampleRun runs it on the in-memory store.)
//
// Subpackages: jobrun runs the coordinator's process with its run directory
// (evaluations, metrics, the final checkpoint); status reads what an
// operator is shown of a job.
package coordinator
