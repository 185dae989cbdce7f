package node

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/paramserver"
)

// A shard's snapshot directory after a rollback: placement 1 checkpointed
// 10, 20 and 30 and reached 40 before a shard died; placement 2 restarted at
// 30 and checkpointed 40 and 50. Step 60 is being written, 70 is written but
// not yet part of a checkpoint, and crashes tore writes of steps 20 and 45.
var retainDir = []string{
	"p1-shard-0-step-10.dpss", "p1-shard-0-step-20.dpss", "p1-shard-0-step-30.dpss", "p1-shard-0-step-40.dpss",
	"p2-shard-0-step-40.dpss", "p2-shard-0-step-50.dpss",
	"p2-shard-0-step-60.dpss.tmp123", "p1-shard-0-step-20.dpss.tmp9", "p2-shard-0-step-45.dpss.tmp7", "p2-shard-0-step-70.dpss",
	// not snapshots: left alone whatever their names say
	jobMarker, "notes.txt", "p1-shard-0-step-10.dpss.bak", "p01-shard-0-step-10.dpss", "p1-shard-0-step-+10.dpss",
}

func fill(t *testing.T, dir string, names []string) {
	t.Helper()
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names // sorted by ReadDir
}

func TestPruneKeepsWhatTheJobMayNeed(t *testing.T) {
	cp := job.CheckpointRecord{Step: 50, Placement: 2, Files: []string{"/data/ps-0/snapshots/p2-shard-0-step-50.dpss", "/data/ps-1/snapshots/p2-shard-1-step-50.dpss"}}
	for _, tc := range []struct {
		name    string
		cp      job.CheckpointRecord
		keep    int
		removed []string
	}{
		{"keep 1: the checkpoint's step and anything newer", cp, 1, []string{
			"p1-shard-0-step-10.dpss", "p1-shard-0-step-20.dpss", "p1-shard-0-step-20.dpss.tmp9", "p1-shard-0-step-30.dpss",
			"p1-shard-0-step-40.dpss", "p2-shard-0-step-40.dpss", "p2-shard-0-step-45.dpss.tmp7"}},
		{"keep 2: both placements' step 40 count as one step", cp, 2, []string{
			"p1-shard-0-step-10.dpss", "p1-shard-0-step-20.dpss", "p1-shard-0-step-20.dpss.tmp9", "p1-shard-0-step-30.dpss",
			"p2-shard-0-step-45.dpss.tmp7"}},
		{"keep 3", cp, 3, []string{"p1-shard-0-step-10.dpss", "p1-shard-0-step-20.dpss", "p1-shard-0-step-20.dpss.tmp9",
			"p2-shard-0-step-45.dpss.tmp7"}},
		{"keep more than there are: only the torn writes go", cp, 10, []string{"p1-shard-0-step-20.dpss.tmp9", "p2-shard-0-step-45.dpss.tmp7"}},
		{"an earlier checkpoint: nothing after its step goes", job.CheckpointRecord{Step: 20, Placement: 1,
			Files: []string{"p1-shard-0-step-20.dpss"}}, 1, []string{"p1-shard-0-step-10.dpss", "p1-shard-0-step-20.dpss.tmp9"}},
		{"a file the checkpoint names stays, whatever its step", job.CheckpointRecord{Step: 50, Placement: 2,
			Files: []string{"elsewhere/p1-shard-0-step-10.dpss"}}, 1, []string{
			"p1-shard-0-step-20.dpss", "p1-shard-0-step-20.dpss.tmp9", "p1-shard-0-step-30.dpss",
			"p1-shard-0-step-40.dpss", "p2-shard-0-step-40.dpss", "p2-shard-0-step-45.dpss.tmp7"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			fill(t, dir, retainDir)
			if err := os.Mkdir(filepath.Join(dir, "p1-shard-0-step-1.dpss"), 0o755); err != nil { // not a file
				t.Fatal(err)
			}
			removed, err := prune(dir, tc.cp, tc.keep)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(removed, tc.removed) {
				t.Errorf("removed %q,\nwant %q", removed, tc.removed)
			}
			var want []string
			for _, n := range append(slices.Clone(retainDir), "p1-shard-0-step-1.dpss") {
				if !slices.Contains(tc.removed, n) {
					want = append(want, n)
				}
			}
			slices.Sort(want)
			if got := listDir(t, dir); !slices.Equal(got, want) {
				t.Errorf("left %q,\nwant %q", got, want)
			}
			// Pruning again to the same checkpoint removes nothing more.
			if again, err := prune(dir, tc.cp, tc.keep); err != nil || len(again) != 0 {
				t.Errorf("pruning again removed %q (%v)", again, err)
			}
		})
	}
	if _, err := prune(t.TempDir(), cp, 0); err == nil {
		t.Error("prune with keep 0 did not refuse")
	}
}

// A snapshot directory belongs to the first job that uses it.
func TestClaimDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "snapshots")
	if err := claimDir(dir, "a"); err != nil {
		t.Fatal(err)
	}
	if err := claimDir(dir, "a"); err != nil {
		t.Fatalf("the same job again: %v", err)
	}
	err := claimDir(dir, "b")
	if err == nil || !strings.Contains(err.Error(), `job "a"`) || !strings.Contains(err.Error(), `job "b"`) {
		t.Fatalf("another job: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, jobMarker)); string(b) != "a\n" {
		t.Fatalf("marker holds %q", b)
	}
}

// A shard prunes its directory each time the coordinator records a
// checkpoint, and, started after one, prunes to it at once.
func TestRetainPrunesOnEachCheckpoint(t *testing.T) {
	ctx, cli, _ := servers(t)
	keys := etcdstore.KeysFor("j")
	dir := t.TempDir()
	var names []string
	for _, step := range []int64{10, 20, 30, 40, 50} {
		names = append(names, paramserver.SnapshotFile(1, 0, step))
	}
	fill(t, dir, names)
	record := func(step int64) {
		t.Helper()
		b, _ := json.Marshal(job.CheckpointRecord{Step: step, Placement: 1, Files: []string{filepath.Join(dir, paramserver.SnapshotFile(1, 0, step))}})
		if _, err := cli.Put(ctx, keys.Checkpoint(), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	await := func(want ...int64) {
		t.Helper()
		var names []string
		for _, step := range want {
			names = append(names, paramserver.SnapshotFile(1, 0, step))
		}
		slices.Sort(names)
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := listDir(t, dir)
			if slices.Equal(got, names) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the directory holds %q, want %q", got, names)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	record(20)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { retain(rctx, etcdstore.New(cli, "j"), dir, 2, quiet); close(done) }()
	await(10, 20, 30, 40, 50) // two steps at or before 20 are kept
	record(30)
	await(20, 30, 40, 50)
	if _, err := cli.Put(ctx, keys.Checkpoint(), "{not json"); err != nil { // ignored
		t.Fatal(err)
	}
	record(50)
	await(40, 50)
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("retain did not stop with its context")
	}
	// A shard started after checkpoint 50 prunes to it straight away.
	fill(t, dir, []string{paramserver.SnapshotFile(1, 0, 10)})
	rctx, cancel = context.WithCancel(ctx)
	defer cancel()
	go retain(rctx, etcdstore.New(cli, "j"), dir, 1, quiet)
	await(50)
}
