package paramserver

import (
	"errors"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/downpour-ml/downpour/internal/wire"
)

// feed pushes every rank's gradient of step s to the blocks in ids only.
func feed(t *testing.T, p *job.Placement, sh *Shard, ranks int, s int64, gs [][][]float32, ids map[uint32]bool) {
	t.Helper()
	for r := 0; r < ranks; r++ {
		for _, m := range pushes(p, r, 1, s, gs[s][r]) {
			if ids == nil || ids[m.Blocks[0].ID] {
				if err := sh.Push(m); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// A sync snapshot at step k is the exact state after k steps even when some
// blocks have already moved past k; restoring it and rerunning the remaining
// steps gives bit-identical parameters and optimizer state.
func TestSyncSnapshotRestoreIsExact(t *testing.T) {
	const ranks, steps, k = 2, 5, 2
	p := job.Place(testTensors, 6, 1)
	cfg := syncCfg(ranks, job.DefaultOptimizer("adam", 0.05))
	rng := rand.New(rand.NewPCG(7, 7))
	gs := make([][][]float32, steps)
	for s := range gs {
		gs[s] = [][]float32{grads(rng, p.Size()), grads(rng, p.Size())}
	}
	// The uninterrupted run, snapshotting at step k of a shard where half of
	// the blocks run one step ahead before the others reach k.
	sh := newShards(p, cfg)[0]
	if err := sh.RequestSnapshot(k); err != nil {
		t.Fatal(err)
	}
	if err := sh.RequestSnapshot(k + 1); !errors.Is(err, ErrSnapshotPending) {
		t.Fatalf("second pending snapshot: %v", err)
	}
	early := map[uint32]bool{}
	for _, b := range p.Blocks[:len(p.Blocks)/2] {
		early[b.ID] = true
	}
	for s := int64(0); s < k; s++ {
		feed(t, p, sh, ranks, s, gs, nil)
	}
	feed(t, p, sh, ranks, k, gs, early) // early blocks apply step k first
	if snaps := sh.Snapshots(); len(snaps) != 1 || snaps[0].Step != k {
		t.Fatalf("snapshots %v, want one at step %d", snaps, k)
	}
	// Meanwhile the state at step k, from a fresh run.
	atK := newShards(p, cfg)[0]
	for s := int64(0); s < k; s++ {
		feed(t, p, atK, ranks, s, gs, nil)
	}
	if err := atK.RequestSnapshot(k); err != nil {
		t.Fatal(err)
	}
	want := atK.Snapshots()[0]
	// The first run's snapshot equals the state at k.
	sh2 := newShards(p, cfg)[0]
	sh2.RequestSnapshot(k)
	for s := int64(0); s < k; s++ {
		feed(t, p, sh2, ranks, s, gs, nil)
	}
	feed(t, p, sh2, ranks, k, gs, early)
	got := sh2.Snapshots()[0]
	if !got.Equal(want) {
		t.Fatal("snapshot taken while blocks advanced differs from the state at its step")
	}
	// Through the file format, then restore and finish the run.
	path := filepath.Join(t.TempDir(), "s.dpss")
	got.Job = "j"
	if err := WriteSnapshot(path, got); err != nil {
		t.Fatal(err)
	}
	read, err := ReadSnapshot(path)
	if err != nil || !read.Equal(got) || read.Job != "j" {
		t.Fatalf("read back: %v", err)
	}
	restored, err := RestoreShard(cfg, p.OnShard(0), read)
	if err != nil {
		t.Fatal(err)
	}
	for s := int64(k); s < steps; s++ {
		feed(t, p, restored, ranks, s, gs, nil)
		feed(t, p, sh, ranks, s, gs, nil) // at step k the early blocks see duplicates
	}
	restored.RequestSnapshot(steps)
	sh.RequestSnapshot(steps)
	if a, b := restored.Snapshots(), sh.Snapshots(); len(a) != 1 || len(b) != 1 || !a[0].Equal(b[0]) {
		t.Fatal("restored run ends in a different state")
	}
}

func TestAsyncSnapshotRestore(t *testing.T) {
	p := job.Place(testTensors, 6, 1)
	cfg := job.ShardConfig{Mode: job.SSP, Staleness: 1, Ranks: 2, Optimizer: job.DefaultOptimizer("momentum", 0.1)}
	sh := newShards(p, cfg)[0]
	rng := rand.New(rand.NewPCG(3, 9))
	for s := int64(0); s < 3; s++ {
		for _, m := range pushes(p, int(s%2), 4, s, grads(rng, p.Size())) {
			sh.Push(m)
		}
	}
	sh.RequestSnapshot(0)
	snap := sh.Snapshots()[0]
	back, err := DecodeSnapshot(snap.Encode())
	if err != nil {
		t.Fatal(err)
	}
	r, err := RestoreShard(cfg, p.OnShard(0), back)
	if err != nil {
		t.Fatal(err)
	}
	r.RequestSnapshot(0)
	if !r.Snapshots()[0].Equal(snap) {
		t.Fatal("restored shard differs")
	}
	// The restored shard still knows the last steps: a resend is a duplicate.
	old := pushes(p, 0, 4, 2, grads(rng, p.Size()))[0]
	before := slices.Clone(gather(p, []*Shard{r}))
	if err := r.Push(old); err != nil || !slices.Equal(before, gather(p, []*Shard{r})) {
		t.Fatalf("resend after restore: %v", err)
	}
	stale := pushes(p, 0, 3, 9, grads(rng, p.Size()))[0]
	if err := r.Push(stale); wire.ErrKind(err) != wire.StaleEpoch {
		t.Fatalf("epochs not restored: %v", err)
	}
}

func TestRestoreRefusesMismatch(t *testing.T) {
	p := job.Place(testTensors, 6, 2)
	cfg := syncCfg(2, job.DefaultOptimizer("adam", 0.1))
	sh := newShards(p, cfg)
	sh[0].RequestSnapshot(0)
	snap := sh[0].Snapshots()[0]
	for name, c := range map[string]struct {
		cfg    job.ShardConfig
		blocks []job.Block
	}{
		"other shard's blocks": {cfg, p.OnShard(1)},
		"other optimizer":      {syncCfg(2, job.DefaultOptimizer("sgd", 0.1)), p.OnShard(0)},
		"other ranks":          {syncCfg(3, job.DefaultOptimizer("adam", 0.1)), p.OnShard(0)},
		"other mode":           {job.ShardConfig{Mode: job.Async, Ranks: 2, Optimizer: job.DefaultOptimizer("adam", 0.1)}, p.OnShard(0)},
	} {
		if _, err := RestoreShard(c.cfg, c.blocks, snap); err == nil {
			t.Errorf("%s: restored", name)
		}
	}
}

func TestSnapshotCorruptionDetected(t *testing.T) {
	p := job.Place(testTensors, 30, 1)
	sh := newShards(p, job.ShardConfig{Mode: job.Async, Ranks: 2, Optimizer: job.DefaultOptimizer("adagrad", 0.1)})[0]
	sh.RequestSnapshot(0)
	b := sh.Snapshots()[0].Encode()
	for n := 0; n < len(b); n++ {
		if _, err := DecodeSnapshot(b[:n]); !errors.Is(err, ErrCorruptSnapshot) {
			t.Fatalf("truncated to %d bytes: %v", n, err)
		}
	}
	for i := 0; i < len(b); i++ {
		if i == 4 || i == 5 {
			continue // the version has its own error
		}
		c := slices.Clone(b)
		c[i] ^= 0x10
		if _, err := DecodeSnapshot(c); err == nil {
			t.Fatalf("a flipped bit in byte %d went unnoticed", i)
		}
	}
}

func TestParseSnapshotFileIsExact(t *testing.T) {
	for _, tc := range []struct {
		name          string
		version, step int64
		shard         int
		temp, ok      bool
	}{
		{SnapshotFile(3, 7, 1200), 3, 1200, 7, false, true},
		{SnapshotFile(3, 7, 1200) + ".tmp4242", 3, 1200, 7, true, true},
		{"p3-shard-7-step-1200.dpss.bak", 0, 0, 0, false, false},
		{"p3-shard-7-step-1200.dpssx", 0, 0, 0, false, false},
		{"p03-shard-7-step-1200.dpss", 0, 0, 0, false, false},
		{"p3-shard--7-step-1200.dpss", 0, 0, 0, false, false},
		{"p3-shard-7-step-1200", 0, 0, 0, false, false},
		{"job", 0, 0, 0, false, false},
	} {
		v, sh, st, temp, ok := ParseSnapshotFile(tc.name)
		if v != tc.version || sh != tc.shard || st != tc.step || temp != tc.temp || ok != tc.ok {
			t.Errorf("%q: %d %d %d %v %v, want %d %d %d %v %v", tc.name, v, sh, st, temp, ok, tc.version, tc.shard, tc.step, tc.temp, tc.ok)
		}
	}
}

// Whatever the name, ParseSnapshotFile says ok only for exactly what
// SnapshotFile gives, or that followed by WriteSnapshot's ".tmp" suffix.
func FuzzParseSnapshotFile(f *testing.F) {
	for _, s := range []string{SnapshotFile(1, 0, 10), SnapshotFile(12, 3, 4500) + ".tmp99", "p1-shard-0-step-10.dpss.bak", "job", "p-1-shard-0-step-1.dpss"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		v, shard, step, temp, ok := ParseSnapshotFile(name)
		if !ok {
			if v != 0 || shard != 0 || step != 0 || temp {
				t.Fatalf("%q: not a snapshot, yet %d %d %d %v", name, v, shard, step, temp)
			}
			return
		}
		exact := SnapshotFile(v, shard, step)
		rest, found := strings.CutPrefix(name, exact)
		if v < 0 || shard < 0 || step < 0 || !found || temp != (rest != "") || temp && (!strings.HasPrefix(rest, ".tmp") || strings.ContainsRune(rest, '/')) {
			t.Fatalf("%q parsed as %d %d %d temp %v (%q)", name, v, shard, step, temp, exact)
		}
	})
}

func FuzzDecodeSnapshot(f *testing.F) {
	p := job.Place(testTensors, 30, 1)
	sh := newShards(p, job.ShardConfig{Mode: job.Async, Ranks: 2, Optimizer: job.DefaultOptimizer("adam", 0.1)})[0]
	sh.RequestSnapshot(0)
	f.Add(sh.Snapshots()[0].Encode())
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := DecodeSnapshot(data)
		if err != nil {
			return
		}
		if !s.Equal(s) {
			t.Fatal("snapshot not equal to itself")
		}
		if _, err := DecodeSnapshot(s.Encode()); err != nil {
			t.Fatalf("re-encoding a decoded snapshot fails: %v", err)
		}
	})
}

// stepAll pushes every rank's gradient of step s, block by block, to the
// shard of placement p that owns the block.
func stepAll(t *testing.T, p *job.Placement, shards []*Shard, ranks int, s int64, g [][]float32) {
	t.Helper()
	for r := 0; r < ranks; r++ {
		for _, m := range pushes(p, r, 1, s, g[r]) {
			if err := shards[p.Blocks[m.Blocks[0].ID].Shard].Push(m); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// blockStates snapshots every shard now (at its clock) and indexes the
// block states by id.
func blockStates(t *testing.T, shards []*Shard) map[uint32]BlockState {
	t.Helper()
	out := map[uint32]BlockState{}
	for _, sh := range shards {
		if err := sh.RequestSnapshot(sh.Clock()); err != nil {
			t.Fatal(err)
		}
		for _, sn := range sh.Snapshots() {
			for _, b := range sn.Blocks {
				out[b.ID] = b
			}
		}
	}
	return out
}

// Re-placing a sync job at a checkpoint and rerunning from it gives
// bit-identical parameters and optimizer state to the run that never moved:
// each new shard gathers its blocks from the old shards' snapshots of that
// step, whatever the old and new shard counts.
func TestReshardFromCheckpointIsExact(t *testing.T) {
	const ranks, steps, k = 2, 6, 3
	cfg := syncCfg(ranks, job.DefaultOptimizer("adam", 0.05))
	rng := rand.New(rand.NewPCG(9, 9))
	gs := make([][][]float32, steps)
	p0 := job.Place(testTensors, 6, 2)
	for s := range gs {
		gs[s] = [][]float32{grads(rng, p0.Size()), grads(rng, p0.Size())}
	}
	for _, c := range []struct{ from, to int }{{2, 3}, {3, 2}, {2, 1}, {1, 4}} {
		p := job.Place(testTensors, 6, c.from)
		straight := newShards(p, cfg)
		for s := int64(0); s < steps; s++ {
			stepAll(t, p, straight, ranks, s, gs[s])
		}
		want := blockStates(t, straight)

		old := newShards(p, cfg)
		var snaps []*Snapshot
		for _, sh := range old {
			if err := sh.RequestSnapshot(k); err != nil {
				t.Fatal(err)
			}
		}
		for s := int64(0); s < k+1; s++ { // one step past the checkpoint, then roll back
			stepAll(t, p, old, ranks, s, gs[s])
		}
		for i, sh := range old {
			for _, sn := range sh.Snapshots() {
				sn.Job, sn.Shard = "j", i
				snaps = append(snaps, sn)
			}
		}
		q, err := p.Reshard(c.to, k, []string{"s0"})
		if err != nil {
			t.Fatal(err)
		}
		if q.Version != p.Version+1 || q.Start != k || q.Shards != c.to {
			t.Fatalf("reshard: version %d start %d shards %d", q.Version, q.Start, q.Shards)
		}
		moved := make([]*Shard, c.to)
		for i := range moved {
			sn, err := Gather(snaps, q.OnShard(i))
			if err != nil {
				t.Fatal(err)
			}
			if moved[i], err = RestoreShard(cfg, q.OnShard(i), sn); err != nil {
				t.Fatal(err)
			}
		}
		for s := int64(k); s < steps; s++ {
			stepAll(t, q, moved, ranks, s, gs[s])
		}
		got := blockStates(t, moved)
		if len(got) != len(want) {
			t.Fatalf("%d->%d: %d blocks, want %d", c.from, c.to, len(got), len(want))
		}
		for id, w := range want {
			g := got[id]
			if g.Clock != w.Clock || !floatBits(g.W, w.W) || len(g.Slots) != len(w.Slots) ||
				!floatBits(g.Slots[0], w.Slots[0]) || !floatBits(g.Slots[1], w.Slots[1]) {
				t.Fatalf("%d->%d shards: block %d differs from the run that never moved", c.from, c.to, id)
			}
		}
	}
}

func TestGatherRefusesIncompleteOrMismatchedSets(t *testing.T) {
	p := job.Place(testTensors, 6, 2)
	cfg := syncCfg(1, job.DefaultOptimizer("sgd", 0.1))
	var snaps []*Snapshot
	for i, sh := range newShards(p, cfg) {
		if err := sh.RequestSnapshot(0); err != nil {
			t.Fatal(err)
		}
		sn := sh.Snapshots()[0]
		sn.Job, sn.Shard = "j", i
		snaps = append(snaps, sn)
	}
	all := p.Blocks
	if _, err := Gather(snaps, all); err != nil {
		t.Fatalf("complete set: %v", err)
	}
	// A shard that has not heard of a rank's newer epoch (it holds none of
	// the blocks the rank pushes) is raised to it; no rank's epoch goes back.
	newer := *snaps[1]
	newer.Epochs = slices.Clone(newer.Epochs)
	newer.Epochs[0] += 2
	if g, err := Gather([]*Snapshot{snaps[0], &newer}, all); err != nil || g.Epochs[0] != snaps[0].Epochs[0]+2 || !slices.Equal(g.Epochs[1:], snaps[0].Epochs[1:]) {
		t.Fatalf("snapshots of one step with a rank's epochs %d and %d: %v, gathered epochs %v", snaps[0].Epochs[0], newer.Epochs[0], err, g)
	}
	fewer := *snaps[1]
	fewer.Epochs = fewer.Epochs[:len(fewer.Epochs)-1]
	if _, err := Gather([]*Snapshot{snaps[0], &fewer}, all); err == nil {
		t.Error("gathered snapshots of different rank counts")
	}
	cases := map[string][]*Snapshot{
		"missing shard": snaps[:1],
		"twice":         {snaps[0], snaps[1], snaps[1]},
		"none":          nil,
	}
	other := *snaps[1]
	other.Step = 5
	cases["other step"] = []*Snapshot{snaps[0], &other}
	otherJob := *snaps[1]
	otherJob.Job = "k"
	cases["other job"] = []*Snapshot{snaps[0], &otherJob}
	for name, set := range cases {
		if _, err := Gather(set, all); err == nil {
			t.Errorf("%s: gathered", name)
		}
	}
}

func TestSnapshotFileNamesPlacement(t *testing.T) {
	if got := SnapshotFile(3, 1, 200); got != "p3-shard-1-step-200.dpss" {
		t.Fatalf("SnapshotFile = %q", got)
	}
}
