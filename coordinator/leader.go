package coordinator

import "github.com/downpour-ml/downpour/internal/job"

// ErrNotLeader is returned when a write is refused because this coordinator
// no longer leads its job (another one was elected while it was cut off or
// frozen): job.ErrNotLeader, which the store's writes return.
var ErrNotLeader = job.ErrNotLeader
