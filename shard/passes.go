package shard

import "sync/atomic"

// Passes counts this process's passes over corpus files, by what they were
// for, and the bytes they read: a job's corpus is counted once (by its
// coordinator) and each data shard indexed once per worker, which the
// tests and the metrics (downpour_corpus_passes_total) check.
type Passes struct {
	Count int64 // Summarize's passes (two a summary)
	Index int64 // a data shard's index
	Held  int64 // reading the held-out pairs
	Bytes int64 // read by all of them
}

var passes struct{ count, index, held, bytes atomic.Int64 }

// PassCounts is the process's passes so far.
func PassCounts() Passes {
	return Passes{Count: passes.count.Load(), Index: passes.index.Load(), Held: passes.held.Load(), Bytes: passes.bytes.Load()}
}
