package jobrun

import (
	"context"
	"errors"
	"fmt"

	"github.com/downpour-ml/downpour/coordinator"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
)

// ResumePoint is what resuming a stopped job starts from.
type ResumePoint struct {
	From   int64 // the step of the last complete checkpoint
	Shards int   // shards of the job's current placement
}

// FindResumable reads the spec, placement and last complete checkpoint of
// the stopped job name in the cluster's store, or of its only job when name
// is empty.
func FindResumable(ctx context.Context, c *etcdstore.Client, name string) (job.Spec, ResumePoint, error) {
	if name == "" {
		names, err := c.Jobs(ctx)
		if err != nil {
			return job.Spec{}, ResumePoint{}, err
		}
		if len(names) != 1 {
			return job.Spec{}, ResumePoint{}, fmt.Errorf("%w: the cluster holds jobs %v: name one with --job", coordinator.ErrNothingToResume, names)
		}
		name = names[0]
	}
	lk, err := c.Job(name).Look(ctx)
	if errors.Is(err, job.ErrNoJob) {
		return job.Spec{}, ResumePoint{}, fmt.Errorf("job %s: %w: no such job", name, coordinator.ErrNothingToResume)
	} else if err != nil {
		return job.Spec{}, ResumePoint{}, err
	}
	if lk.State == job.StateDone {
		return job.Spec{}, ResumePoint{}, fmt.Errorf("job %s: %w", name, coordinator.ErrJobDone)
	}
	if lk.Checkpoint == nil {
		return job.Spec{}, ResumePoint{}, fmt.Errorf("job %s: %w: no complete checkpoint (train with --checkpoint-every)", name, coordinator.ErrNothingToResume)
	}
	return *lk.Spec, ResumePoint{From: lk.Checkpoint.Step, Shards: lk.Placement.Shards}, nil
}
