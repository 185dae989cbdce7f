package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/downpour-ml/downpour/paramserver"
)

// Snapshot retention. A shard writes a snapshot every CheckpointEvery steps
// and, left alone, fills its disk: a W2-sized shard writes hundreds of MB
// each time. Once the coordinator records a checkpoint (every shard has
// snapshotted its step), each shard deletes its own older snapshots, under
// these invariants:
//
//  1. A file the latest checkpoint names is never deleted: the job rolls
//     back to it, and a resumed or re-placed job starts from it.
//  2. A snapshot of a step after the latest checkpoint's is never deleted:
//     it may be the part of the next checkpoint this shard wrote.
//  3. The snapshots of the keep newest steps at or before the latest
//     checkpoint's are kept (that step is one of them), so an operator can
//     go back keep-1 checkpoints by hand (downpour ps --restore).
//  4. A temporary file of a step at or before the latest checkpoint's is a
//     write a crash tore: deleted. (A shard writes only steps after it.)
//  5. Nothing but snapshot files and their temporaries is touched, and a
//     snapshot directory belongs to one job (jobMarker), so one job never
//     deletes another's files.
//
// Retention runs in the shard, not the coordinator, because the files are on
// the shard's disk: on a cluster no other process can reach them.

// jobMarker, in a snapshot directory, holds the name of the job whose
// snapshots it holds. File names do not name the job, so two jobs in one
// directory would overwrite each other's snapshots, and prune one another's.
const jobMarker = "job"

// claimDir makes dir the snapshot directory of job name, or refuses if it
// belongs to another job.
func claimDir(dir, name string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(dir, jobMarker)
	b, err := os.ReadFile(path)
	switch {
	case err == nil && strings.TrimSpace(string(b)) == name:
		return nil
	case err == nil:
		return fmt.Errorf("%s holds the snapshots of job %q: give job %q a data directory of its own", dir, strings.TrimSpace(string(b)), name)
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	return os.WriteFile(path, []byte(name+"\n"), 0o644)
}

// prune deletes from dir the snapshots that invariants 1-4 let go, given the
// latest checkpoint cp, keeping those of the keep newest steps at or before
// it. It returns the names it deleted, sorted.
func prune(dir string, cp job.CheckpointRecord, keep int) ([]string, error) {
	if keep < 1 {
		return nil, fmt.Errorf("prune: keep must be at least 1 (got %d)", keep)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	// By base name: a path recorded by another process may be relative to
	// another directory, and keeping a namesake too is the safe side.
	named := map[string]bool{}
	for _, f := range cp.Files {
		named[filepath.Base(f)] = true
	}
	type file struct {
		name string
		step int64
		temp bool
	}
	var files []file
	var steps []int64 // of complete snapshots at or before cp.Step
	for _, e := range entries {
		_, _, step, temp, ok := paramserver.ParseSnapshotFile(e.Name())
		if !ok || !e.Type().IsRegular() || step > cp.Step {
			continue // not a snapshot, or newer than the checkpoint (2, 5)
		}
		files = append(files, file{e.Name(), step, temp})
		if !temp {
			steps = append(steps, step)
		}
	}
	slices.Sort(steps)
	steps = slices.Compact(steps)
	cut := int64(-1) // complete snapshots of steps after cut are kept (3)
	if len(steps) > keep {
		cut = steps[len(steps)-keep-1]
	}
	var removed []string
	var errs []error
	for _, f := range files {
		if named[f.name] {
			continue // (1)
		}
		if !f.temp && f.step > cut {
			continue // (3)
		}
		if err := os.Remove(filepath.Join(dir, f.name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, f.name)
	}
	slices.Sort(removed)
	return removed, errors.Join(errs...)
}

// retain prunes dir each time the job records a checkpoint, until ctx ends.
// It reads the latest checkpoint first, so a restarted shard prunes what an
// earlier process left.
func retain(ctx context.Context, st job.ShardStore, dir string, keep int, log *slog.Logger) {
	for ctx.Err() == nil {
		rev, ok := pruneOnce(ctx, st, dir, keep, log)
		for ok && ctx.Err() == nil {
			var cp *job.CheckpointRecord
			cp, rev, ok = nextCheckpoint(ctx, st, rev)
			if ok {
				pruneTo(*cp, dir, keep, log)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// nextCheckpoint waits for the checkpoint after revision rev (ok false:
// the store did not answer, or ctx ended).
func nextCheckpoint(ctx context.Context, st job.ShardStore, rev int64) (*job.CheckpointRecord, int64, bool) {
	cp, at, err := st.NextCheckpoint(ctx, rev)
	return cp, at, err == nil && cp != nil
}

// pruneOnce prunes dir to the job's latest checkpoint and returns the
// store's revision it read it at (ok false: the store did not answer). A
// shard also calls it when the job is done, so that a finished job leaves
// what retention keeps however far its watch had got.
func pruneOnce(ctx context.Context, st job.ShardStore, dir string, keep int, log *slog.Logger) (rev int64, ok bool) {
	cp, rev, err := st.Checkpoint(ctx)
	if err != nil {
		log.Warn("snapshot retention: reading the checkpoint", "err", err)
		return 0, false
	}
	if cp != nil {
		pruneTo(*cp, dir, keep, log)
	}
	return rev, true
}

// pruneTo prunes dir to checkpoint cp, logging what it did.
func pruneTo(cp job.CheckpointRecord, dir string, keep int, log *slog.Logger) {
	removed, err := prune(dir, cp, keep)
	if len(removed) > 0 {
		log.Info("snapshot retention: deleted snapshots older than the checkpoints kept", "checkpoint_step", cp.Step, "keep", keep, "files", removed)
	}
	if err != nil {
		log.Warn("snapshot retention: deleting old snapshots", "checkpoint_step", cp.Step, "err", err)
	}
}
