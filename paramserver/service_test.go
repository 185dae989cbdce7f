package paramserver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// awaitCount waits until count() reaches want. A subscriber's callback runs
// on its own goroutine, so neither the sender's reply nor a Flush says it
// has run: only the count does. It returns the count, which may exceed want
// if more arrived; after 10 s it returns whatever it has.
func awaitCount(count func() int, want int) int {
	deadline := time.Now().Add(10 * time.Second)
	for n := count(); ; n = count() {
		if n >= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(time.Millisecond)
	}
}

func serveAll(t testing.TB, nc *nats.Conn, shards []*Shard, cfg ServiceConfig) []*Service {
	t.Helper()
	var svcs []*Service
	for i, sh := range shards {
		c := cfg
		c.Shard, c.Log = i, quiet
		if c.Job == "" {
			c.Job = "j"
		}
		svc, err := Serve(nc, sh, c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(svc.Close)
		svcs = append(svcs, svc)
	}
	return svcs
}

// Two ranks train through two shards over a real NATS server, with a small
// max_payload so that pushes and pulls are cut into several messages; the
// result must equal the single-process reference bit for bit.
func TestServiceSyncOverNATS(t *testing.T) {
	nc := testenv.NATSConn(t, 64<<10)
	ts := []models.Tensor{{Name: "big", Shape: []int{300, 200}}, {Name: "small", Shape: []int{17}}}
	const ranks, steps = 2, 3
	opt := job.DefaultOptimizer("adam", 0.01)
	p := job.Place(ts, 5000, 2)
	serveAll(t, nc, newShards(p, syncCfg(ranks, opt)), ServiceConfig{})
	ref := initFlat(p)
	rng := rand.New(rand.NewPCG(9, 9))
	gs := make([][][]float32, steps)
	for s := range gs {
		gs[s] = [][]float32{grads(rng, p.Size()), grads(rng, p.Size())}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	final := make([][]float32, ranks)
	errs := make([]error, ranks)
	for r := 0; r < ranks; r++ {
		wg.Go(func() {
			c, err := NewClient(nc, "j", p, r, 1)
			if err != nil {
				errs[r] = err
				return
			}
			if len(c.groups) < 4 {
				errs[r] = io.ErrShortBuffer
				return
			}
			w := make([]float32, p.Size())
			if r == 1 { // rank 1 goes through PushPull, as workers do
				if errs[r] = c.Pull(ctx, 0, w); errs[r] != nil {
					return
				}
				for s := 0; s < steps; s++ {
					if errs[r] = c.PushPull(ctx, int64(s), gs[s][r], w); errs[r] != nil {
						return
					}
				}
				final[r] = w
				return
			}
			for s := 0; s < steps; s++ {
				if err := c.Pull(ctx, int64(s), w); err != nil {
					errs[r] = err
					return
				}
				if err := c.Push(ctx, int64(s), gs[s][r]); err != nil {
					errs[r] = err
					return
				}
			}
			errs[r] = c.Pull(ctx, steps, w)
			final[r] = w
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	ro := &refOptimizer{opt: opt}
	for s := 0; s < steps; s++ {
		ro.syncStep(ref, gs[s], int64(s))
	}
	for r := range final {
		if !slices.Equal(final[r], ref) {
			t.Fatalf("rank %d pulled parameters that differ from the reference", r)
		}
	}
}

// Exactly once under concurrent resends: many goroutines send the same push
// messages at once, over and over; each gradient is applied once.
func TestServiceConcurrentResends(t *testing.T) {
	nc := testenv.NATSConn(t, 0)
	p := job.Place(testTensors, 8, 2)
	for _, mode := range []string{job.Sync, job.Async} {
		name := "j"
		shards := newShards(p, job.ShardConfig{Mode: mode, Ranks: 1, Optimizer: job.DefaultOptimizer("sgd", 1)})
		svcs := serveAll(t, nc, shards, ServiceConfig{})
		g := grads(rand.New(rand.NewPCG(2, 2)), p.Size())
		c, _ := NewClient(nc, name, p, 0, 1)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 5 {
					if err := c.Push(context.Background(), 0, g); err != nil {
						t.Error(err)
					}
				}
			})
		}
		wg.Wait()
		want := initFlat(p)
		for i := range want {
			want[i] -= g[i]
		}
		w := make([]float32, p.Size())
		if err := c.Pull(context.Background(), 1, w); err != nil || !slices.Equal(w, want) {
			t.Fatalf("%s: %v; parameters differ from one application", mode, err)
		}
		var st Stats
		for _, s := range svcs {
			x := s.Stats()
			st.Applied, st.Duplicates, st.Accepted = st.Applied+x.Applied, st.Duplicates+x.Duplicates, st.Accepted+x.Accepted
			s.Close()
		}
		if st.Applied != int64(len(p.Blocks)) || st.Accepted != int64(len(p.Blocks)) || st.Duplicates != int64(39*len(p.Blocks)) {
			t.Fatalf("%s: stats %+v, want %d applied and %d duplicates", mode, st, len(p.Blocks), 39*len(p.Blocks))
		}
	}
}

// Garbage, unknown jobs and bad blocks are answered with their kind and
// counted; the shard keeps serving.
func TestServiceRefusesBadInput(t *testing.T) {
	nc := testenv.NATSConn(t, 0)
	p := job.Place(testTensors, 8, 1)
	svc := serveAll(t, nc, newShards(p, syncCfg(1, job.DefaultOptimizer("sgd", 0.1))), ServiceConfig{})[0]
	ask := func(subj, env string, data []byte) wire.Kind {
		msg := &nats.Msg{Subject: subj, Data: data}
		if env != "" { // a split push
			msg.Header = nats.Header{wire.EnvelopeHeader: {env}}
		}
		m, err := nc.RequestMsg(msg, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := wire.DecodePullReply(m.Data); err == nil {
			return r.Kind
		}
		t.Fatalf("undecodable reply %x", m.Data)
		return 0
	}
	enc := func(m any) []byte { b, _ := wire.Encode(m); return b }
	push, pull, snap := wire.PushSubject("j", 1, 0), wire.PullSubject("j", 1, 0), wire.SnapshotSubject("j", 1, 0)
	// split pushes: the envelope names blocks 0 and 1 (8 floats each)
	env := func(job string, ids ...uint32) string {
		req := &wire.PushRequest{V: wire.Version, Job: job, Step: 0}
		for _, id := range ids {
			req.Blocks = append(req.Blocks, wire.Block{ID: id})
		}
		return wire.EncodeEnvelope(req)
	}
	nan := make([]float32, 16)
	nan[11] = float32(math.NaN())
	for _, c := range []struct {
		subj, env string
		data      []byte
		want      wire.Kind
	}{
		{push, "", []byte("\xc1garbage"), wire.Malformed},
		{pull, "", nil, wire.Malformed},
		{push, "", enc(&wire.PushRequest{V: wire.Version, Job: "other"}), wire.UnknownJob},
		{pull, "", enc(&wire.PullRequest{V: wire.Version, Job: "j", IDs: []uint32{77}}), wire.UnknownBlock},
		{push, "", enc(&wire.PushRequest{V: wire.Version, Job: "j", Blocks: []wire.Block{{ID: 0, Data: make([]byte, 4)}}}), wire.BadLength},
		{push, "", enc(&wire.PushRequest{V: 9, Job: "j"}), wire.BadVersion},
		{snap, "", enc(&wire.SnapshotRequest{V: wire.Version, Job: "j", Step: 3}), wire.Refused}, // no snapshot directory
		{push, "not base64", make([]byte, 64), wire.Malformed},
		{push, env("other", 0, 1), make([]byte, 64), wire.UnknownJob},
		{push, env("j", 0, 77), make([]byte, 64), wire.UnknownBlock},
		{push, env("j", 0, 1), make([]byte, 60), wire.BadLength},
		{push, env("j", 0, 1), make([]byte, 68), wire.BadLength},
		{push, env("j", 0, 1), wire.AppendFloats(nil, nan), wire.NonFinite},
	} {
		if got := ask(c.subj, c.env, c.data); got != c.want {
			t.Errorf("%s %q %q: kind %v, want %v", c.subj, c.env, c.data, got, c.want)
		}
	}
	want := map[wire.Kind]int64{wire.Malformed: 3, wire.UnknownJob: 2, wire.UnknownBlock: 2, wire.BadLength: 3, wire.BadVersion: 1, wire.Refused: 1, wire.NonFinite: 1}
	if got := svc.Refused(); !maps.Equal(got, want) {
		t.Errorf("refused counters %v, want %v", got, want)
	}
	c, _ := NewClient(nc, "j", p, 0, 1)
	w := make([]float32, p.Size())
	if err := c.Pull(context.Background(), 0, w); err != nil || !slices.Equal(w, initFlat(p)) {
		t.Fatalf("pull after bad input: %v", err)
	}
}

// A pull held past PullTTL ticks is answered Expired; the client resends it
// and gets its answer once the shard can give it. What crosses NATS shows
// both: pull replies of kind Expired, and more than one pull request.
func TestServiceHeldPullExpiresAndIsResent(t *testing.T) {
	nc := testenv.NATSConn(t, 0)
	p := job.Place(testTensors, 100, 1)
	cfg := syncCfg(1, job.DefaultOptimizer("sgd", 1))
	cfg.PullTTL = 2
	svc := serveAll(t, nc, newShards(p, cfg), ServiceConfig{Tick: 20 * time.Millisecond})[0]
	_, pulls := subjectCounts(t, nc, "j")
	var expired, answered atomic.Int64 // pull replies of kind Expired, and the others
	replies, err := nc.Subscribe("_INBOX.>", func(m *nats.Msg) {
		if r, err := wire.DecodePullReply(m.Data); err == nil && r.Kind == wire.Expired {
			expired.Add(1)
		} else {
			answered.Add(1)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer replies.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c, _ := NewClient(nc, "j", p, 0, 1)
	done := make(chan error, 1)
	w := make([]float32, p.Size())
	go func() { done <- c.Pull(context.Background(), 1, w) }()
	// Several expiries and resends, however slow the machine.
	if n := awaitCount(func() int { return int(expired.Load()) }, 3); n < 3 {
		t.Fatalf("%d Expired answers in 10 s to a pull held past 2 ticks of 20 ms", n)
	}
	if n := awaitCount(func() int { return int(pulls.Load()) }, 4); n < 4 {
		t.Fatalf("%d pull requests after 3 Expired answers: the client did not resend", n)
	}
	select {
	case err := <-done:
		t.Fatalf("pull for an unapplied step returned: %v", err)
	default:
	}
	if n := answered.Load(); n != 0 {
		t.Fatalf("%d answers other than Expired to a pull for an unapplied step", n)
	}
	g := slices.Repeat([]float32{1}, p.Size())
	if err := c.Push(context.Background(), 0, g); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if w[0] != initFlat(p)[0]-1 {
		t.Fatal("the resent pull returned stale parameters")
	}
	svc.mu.Lock()
	held := len(svc.held)
	svc.mu.Unlock()
	if held != 0 {
		t.Fatalf("%d pulls still held", held)
	}
}

// A transfer in flight hands over each range of parameters as soon as its
// messages have arrived: whatever WaitRange has returned for already holds
// the parameters after the step, while the rest may still be moving; and a
// transfer that cannot finish fails its waiters instead of hanging them.
func TestTransferHandsOverRanges(t *testing.T) {
	nc := testenv.NATSConn(t, 64<<10)
	ts := []models.Tensor{{Name: "a", Shape: []int{300, 100}}, {Name: "b", Shape: []int{200, 150}}, {Name: "c", Shape: []int{7}}}
	opt := job.DefaultOptimizer("sgd", 0.1)
	p := job.Place(ts, 4000, 2)
	serveAll(t, nc, newShards(p, syncCfg(1, opt)), ServiceConfig{})
	c, err := NewClient(nc, "j", p, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rng := rand.New(rand.NewPCG(5, 5))
	g := grads(rng, p.Size())
	want := initFlat(p)
	(&refOptimizer{opt: opt}).syncStep(want, [][]float32{g}, 0)
	w := make([]float32, p.Size())
	xf := c.StartPushPull(ctx, 0, g, w)
	offs := models.Offsets(ts)
	for i := range ts { // tensor by tensor, front to back, as a forward pass reads them
		lo, hi := offs[i], offs[i]+ts[i].Size()
		if err := xf.WaitRange(lo, hi); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(w[lo:hi], want[lo:hi]) {
			t.Fatalf("tensor %d handed over before its parameters arrived", i)
		}
	}
	if err := xf.WaitPushed(); err != nil {
		t.Fatal(err)
	}
	if err := xf.Wait(); err != nil || !slices.Equal(w, want) {
		t.Fatalf("transfer: %v", err)
	}
	// No shard serves job "k": the transfer fails when its context ends.
	q, err := NewClient(nc, "k", p, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer scancel()
	xf = q.StartPushPull(sctx, 0, g, w)
	if err := xf.WaitRange(0, 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitRange of a failed transfer: %v", err)
	}
	if err := xf.WaitPushed(); err == nil || xf.Wait() == nil {
		t.Fatal("a failed transfer reported success")
	}
}

// Clock reports the slowest shard's clock.
func TestClientClock(t *testing.T) {
	nc := testenv.NATSConn(t, 64<<10)
	ts := []models.Tensor{{Name: "a", Shape: []int{100, 30}}}
	p := job.Place(ts, 500, 2)
	serveAll(t, nc, newShards(p, syncCfg(1, job.DefaultOptimizer("sgd", 0.1))), ServiceConfig{})
	c, err := NewClient(nc, "j", p, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g := grads(rand.New(rand.NewPCG(1, 1)), p.Size())
	for step := int64(0); step < 3; step++ {
		if clock, err := c.Clock(ctx); err != nil || clock != step {
			t.Fatalf("clock %d, %v; want %d", clock, err, step)
		}
		if err := c.Push(ctx, step, g); err != nil {
			t.Fatal(err)
		}
	}
}

// Clocks reports each shard's own clock, and -1 for a shard that does not
// answer; Snapshot reaches every shard and names the ones that refuse.
func TestClientClocksAndSnapshot(t *testing.T) {
	nc := testenv.NATSConn(t, 64<<10)
	ts := []models.Tensor{{Name: "a", Shape: []int{100, 30}}}
	p := job.Place(ts, 500, 3)
	shards := newShards(p, syncCfg(1, job.DefaultOptimizer("sgd", 0.1)))
	svcs := serveAll(t, nc, shards[:2], ServiceConfig{SnapshotDir: t.TempDir()}) // shard 2 has no process
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := NewClientFor(nc, "j", p, 0, 1, func(b job.Block) bool { return b.Shard != 1 }) // none of shard 1's blocks
	if err != nil {
		t.Fatal(err)
	}
	g := grads(rand.New(rand.NewPCG(1, 1)), p.Size())
	one, err := NewClient(nc, "j", &job.Placement{Version: p.Version, Shards: p.Shards, BlockSize: p.BlockSize, Blocks: p.OnShard(0)}, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	for step := int64(0); step < 2; step++ { // shard 0 two steps on, shard 1 none
		if err := one.Push(ctx, step, g); err != nil {
			t.Fatal(err)
		}
	}
	if got := c.Clocks(ctx, 300*time.Millisecond); !slices.Equal(got, []int64{2, -1, -1}) {
		t.Errorf("clocks %v, want [2 -1 -1]: shard 1 holds none of the client's blocks, shard 2 has no process", got)
	}
	all, _ := NewClient(nc, "j", p, 0, 1)
	if got := all.Clocks(ctx, 300*time.Millisecond); !slices.Equal(got, []int64{2, 0, -1}) {
		t.Errorf("clocks %v, want [2 0 -1]", got)
	}
	err = c.Snapshot(ctx, 2, 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "shard 2:") || strings.Contains(err.Error(), "shard 0:") || strings.Contains(err.Error(), "shard 1:") {
		t.Fatalf("snapshot: %v; want shard 2's failure only", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for svcs[0].SnapshotsWritten() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if svcs[0].SnapshotsWritten() != 1 {
		t.Errorf("shard 0 wrote %d snapshots, want 1", svcs[0].SnapshotsWritten())
	}
	// Shard 1 holds the request until it reaches step 2; it wrote none yet.
	if n := svcs[1].SnapshotsWritten(); n != 0 {
		t.Errorf("shard 1 wrote %d snapshots before reaching the step", n)
	}
}

// Push and Pull send their messages to the shards in turns (each shard's
// first, then each shard's second, ...), not shard by shard: a shard
// answers one message at a time, so a window's worth of requests queued at
// one shard would leave the others idle. With a window of 1, the messages
// finish in the order they are sent.
func TestClientTakesTurnsAcrossShards(t *testing.T) {
	nc := testenv.NATSConn(t, 16<<10)
	p := job.Place([]models.Tensor{{Name: "a", Shape: []int{200, 300}}}, 1000, 3)
	serveAll(t, nc, newShards(p, syncCfg(1, job.DefaultOptimizer("sgd", 0.1))), ServiceConfig{})
	c, err := NewClient(nc, "j", p, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	perShard := make([]int, p.Shards)
	for _, g := range c.groups {
		perShard[g.shard]++
	}
	var want []int
	for turn := 0; len(want) < len(c.groups); turn++ {
		for s, n := range perShard {
			if turn < n {
				want = append(want, s)
			}
		}
	}
	if slices.Min(perShard) < 2 || slices.Max(perShard) == slices.Min(perShard) {
		t.Fatalf("groups per shard %v: want at least 2 each, unequal, to tell the orders apart", perShard)
	}
	var mu sync.Mutex
	got := map[Op][]int{}
	c.Window = 1
	c.Observe = func(op Op, shard int, _ time.Duration, _ int) {
		mu.Lock()
		got[op] = append(got[op], shard)
		mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := make([]float32, p.Size())
	if err := c.Push(ctx, 0, grads(rand.New(rand.NewPCG(1, 1)), p.Size())); err != nil {
		t.Fatal(err)
	}
	if err := c.Pull(ctx, 1, w); err != nil {
		t.Fatal(err)
	}
	for _, op := range []Op{OpPush, OpPull} {
		if !slices.Equal(got[op], want) {
			t.Errorf("%s: shards in order %v, want %v", op, got[op], want)
		}
	}
}

// A dense push of blocks that follow one another in the gradient goes
// split, straight from it; any other push goes whole. Either way the shards
// apply exactly the reference's update.
func TestClientPushesRunsSplit(t *testing.T) {
	nc := testenv.NATSConn(t, 1536) // 3 blocks of 64 floats a message: a run of 3
	ts := []models.Tensor{{Name: "x", Shape: []int{10, 64}}, {Name: "y", Shape: []int{200}}}
	p := job.PlaceRuns(ts, 64, 2, 3, job.DefaultHash, 0.5)
	opt := job.DefaultOptimizer("sgd", 0.1)
	serveAll(t, nc, newShards(p, syncCfg(1, opt)), ServiceConfig{})
	var split, whole atomic.Int64
	for s := range p.Shards {
		if _, err := nc.Subscribe(wire.PushSubject("j", 1, s), func(m *nats.Msg) {
			if m.Header.Get(wire.EnvelopeHeader) != "" {
				split.Add(1)
			} else {
				whole.Add(1)
			}
		}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := NewClient(nc, "j", p, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	var wantSplit, wantWhole int64
	for _, g := range c.groups {
		contiguous := true
		for i, b := range g.blocks[1:] {
			contiguous = contiguous && g.blocks[i].Offset+g.blocks[i].Len == b.Offset
		}
		if contiguous {
			wantSplit++
		} else {
			wantWhole++
		}
	}
	t.Logf("%d groups are runs, %d are not", wantSplit, wantWhole)
	if wantSplit < 4 {
		t.Fatalf("only %d of %d groups are runs: the test shows little", wantSplit, len(c.groups))
	}
	g := grads(rand.New(rand.NewPCG(5, 5)), p.Size())
	ctx := context.Background()
	if err := c.Push(ctx, 0, g); err != nil {
		t.Fatal(err)
	}
	awaitCount(func() int { return int(split.Load() + whole.Load()) }, int(wantSplit+wantWhole))
	nc.Flush()
	if split.Load() != wantSplit || whole.Load() != wantWhole {
		t.Errorf("dense push: %d messages split and %d whole, want %d and %d", split.Load(), whole.Load(), wantSplit, wantWhole)
	}
	// A sparse step (the first 70 floats of x, as spans) goes whole.
	split.Store(0)
	whole.Store(0)
	sparse := make([]float32, p.Size())
	copy(sparse[:70], g[:70])
	w := make([]float32, p.Size())
	if err := c.StartPushPullSparse(ctx, 1, sparse, w, [][2]int{{0, 70}}, nil).Wait(); err != nil {
		t.Fatal(err)
	}
	awaitCount(func() int { return int(split.Load() + whole.Load()) }, 1)
	nc.Flush()
	if split.Load() != 0 || whole.Load() == 0 {
		t.Errorf("sparse push: %d messages split and %d whole, want none split", split.Load(), whole.Load())
	}
	want := initFlat(p)
	ref := &refOptimizer{opt: opt}
	ref.step(want, g, 0)
	ref.step(want, sparse, 1)
	if !slices.Equal(w, want) {
		t.Fatalf("parameters after a split and a sparse push differ from the reference")
	}
}

// On a server that allows messages far larger than job.MessageBytes, the
// client still fills messages to job.MessageBytes, so that each of Place's runs
// has one to itself and goes split; a block larger than that still gets a
// message of its own.
func TestClientPacksRunsUnderLargeMaxPayload(t *testing.T) {
	nc := testenv.NATSConn(t, 8<<20)
	const bs = 16 << 10
	p := job.PlaceRuns([]models.Tensor{{Name: "x", Shape: []int{60 * bs}}}, bs, 2, job.RunBytes/(4*bs), job.DefaultHash, 0.5)
	c, err := NewClient(nc, "j", p, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.groups) != 4 {
		t.Fatalf("%d messages for 4 runs of 15 blocks", len(c.groups))
	}
	for _, g := range c.groups {
		if !g.contiguous || len(g.blocks) != 15 {
			t.Errorf("a message of %d blocks (%v), contiguous %v; want one run of 15", len(g.blocks), g.ids, g.contiguous)
		}
	}
	big := job.Place([]models.Tensor{{Name: "x", Shape: []int{3 << 19}}}, 1<<19, 1) // 2 MiB blocks
	c, err = NewClient(nc, "j", big, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.groups) != 3 {
		t.Fatalf("%d messages for 3 blocks of 2 MiB", len(c.groups))
	}
}

// A push arrives from NATS, over TCP and in-process, whole or split, with
// every block's floats readable in place (wire.Floats), which is what lets
// a shard apply it without copying it out first: the encoder aligns the
// blocks within the message, a split push's header section is a multiple
// of 4 bytes, and nats.go hands the message over in a buffer of its own.
func TestPushesArriveAligned(t *testing.T) {
	srv := testenv.NATS(t, 0)
	for _, inProc := range []bool{false, true} {
		var opts []nats.Option
		if inProc {
			opts = append(opts, nats.InProcessServer(srv))
		}
		sub, pub := testenv.Conn(t, srv.ClientURL(), opts...), testenv.Conn(t, srv.ClientURL(), opts...)
		msgs := make(chan *nats.Msg, 64)
		if _, err := sub.ChanSubscribe("pushes", msgs); err != nil {
			t.Fatal(err)
		}
		if err := sub.Flush(); err != nil {
			t.Fatal(err)
		}
		sent := 0
		floats := map[uint32]int{} // block id -> length
		for _, job := range []string{"j", "job-2", strings.Repeat("x", 40)} {
			for k, sizes := range [][]int{{1}, {3, 5}, {16384, 7, 16384}} {
				req := &wire.PushRequest{V: wire.Version, Job: job, Rank: 1, Epoch: 1, Step: 2}
				for i, n := range sizes {
					id := uint32(10*k + i)
					floats[id] = n
					req.Blocks = append(req.Blocks, wire.Block{ID: id, Data: wire.AppendFloats(nil, make([]float32, n))})
				}
				if err := pub.Publish("pushes", wire.EncodePush(req)); err != nil {
					t.Fatal(err)
				}
				// and split: the envelope in a header, the floats as the body
				var body []byte
				for _, b := range req.Blocks {
					body = append(body, b.Data...)
				}
				split := &nats.Msg{Subject: "pushes", Header: nats.Header{wire.EnvelopeHeader: {wire.EncodeEnvelope(req)}}, Data: body}
				if err := pub.PublishMsg(split); err != nil {
					t.Fatal(err)
				}
				sent += 2
			}
		}
		for range sent {
			select {
			case m := <-msgs:
				var req *wire.PushRequest
				var err error
				if env := m.Header.Get(wire.EnvelopeHeader); env != "" {
					req, err = wire.DecodeSplitPush(env, m.Data, func(id uint32) (int, bool) { n, ok := floats[id]; return n, ok })
				} else {
					req, err = wire.DecodePush(m.Data)
				}
				if err != nil {
					t.Fatal(err)
				}
				for _, b := range req.Blocks {
					if _, ok := wire.Floats(b.Data); !ok {
						t.Errorf("in-process %v, job %q: block %d of %d bytes cannot be read in place", inProc, req.Job, b.ID, len(b.Data))
					}
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a push did not arrive")
			}
		}
	}
}

// A request whose reply is lost with the connection to the NATS server is
// resent as soon as the connection is back, not after its attempt's
// timeout. (The responder here ignores the first copy, as a reply lost in
// the dying server's buffers never arrives.)
func TestClientResendsWhenConnectionLost(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true}
	run := func() *server.Server {
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatal("NATS server not ready")
		}
		return s
	}
	s := run()
	opts.Port = s.Addr().(*net.TCPAddr).Port
	dial := func() *nats.Conn {
		nc, err := nats.Connect(s.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	responder, requester := dial(), dial()
	var copies atomic.Int32
	if _, err := responder.Subscribe("q", func(m *nats.Msg) {
		if copies.Add(1) > 1 {
			m.Respond([]byte("a"))
		}
	}); err != nil {
		t.Fatal(err)
	}
	responder.Flush()
	c := &Client{nc: requester, Attempt: time.Minute}
	done := make(chan error, 1)
	go func() { _, err := c.request(context.Background(), 1, "q", nil, []byte("x")); done <- err }()
	for copies.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	s.Shutdown()
	s.WaitForShutdown()
	s = run()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request was not resent after the connection came back")
	}
}

// A shard answers pushes and pulls sent under the placements its own
// replaced with Superseded, and counts them; what it serves is untouched.
func TestServiceRefusesSupersededPlacements(t *testing.T) {
	nc := testenv.NATSConn(t, 0)
	p := job.Place(testTensors, 100, 1)
	svc := serveAll(t, nc, newShards(p, syncCfg(1, job.DefaultOptimizer("sgd", 1))), ServiceConfig{Placement: 3})[0]
	g := slices.Repeat([]float32{1}, p.Size())
	w := make([]float32, p.Size())
	for _, v := range []int64{1, 2} {
		old := *p
		old.Version = v
		c, _ := NewClient(nc, "j", &old, 0, 1)
		c.Attempt = time.Minute // a refusal, not a timeout, must end these
		if err := c.Push(context.Background(), 0, g); !errors.Is(err, &wire.Error{Kind: wire.Superseded}) {
			t.Fatalf("push under placement %d: %v", v, err)
		}
		if err := c.Pull(context.Background(), 0, w); !errors.Is(err, &wire.Error{Kind: wire.Superseded}) {
			t.Fatalf("pull under placement %d: %v", v, err)
		}
		if err := c.PushPull(context.Background(), 0, g, w); !errors.Is(err, &wire.Error{Kind: wire.Superseded}) {
			t.Fatalf("push bringing its pull back under placement %d: %v", v, err)
		}
	}
	if n := svc.Refused()[wire.Superseded]; n != 6 {
		t.Fatalf("%d refusals counted as superseded, want 6", n)
	}
	cur := *p
	cur.Version = 3
	c, _ := NewClient(nc, "j", &cur, 0, 1)
	if err := c.Push(context.Background(), 0, g); err != nil {
		t.Fatal(err)
	}
	if err := c.Pull(context.Background(), 1, w); err != nil || w[0] != initFlat(p)[0]-1 {
		t.Fatalf("pull under the current placement: %v, w[0] %v", err, w[0])
	}
	if st, n := svc.Stats(), int64(len(p.OnShard(0))); st.Accepted != n || st.Applied != n || svc.Clock() != 1 {
		t.Fatalf("stats %+v, clock %d: the refused pushes changed something", st, svc.Clock())
	}
}

// recorder is an Observer that keeps what it was told.
type recorder struct {
	mu      sync.Mutex
	refused []wire.Kind
	lags    []int64
	snaps   []int64
}

func (r *recorder) Refused(k wire.Kind) { r.mu.Lock(); r.refused = append(r.refused, k); r.mu.Unlock() }
func (r *recorder) Pushed(lag int64)    { r.mu.Lock(); r.lags = append(r.lags, lag); r.mu.Unlock() }
func (r *recorder) SnapshotWritten(d time.Duration, n int64) {
	r.mu.Lock()
	r.snaps = append(r.snaps, n)
	r.mu.Unlock()
}

// The metrics hooks see what happens: each accepted push with its rank's
// clock lag, each refusal with its kind, each snapshot with its size; the
// client's Observe sees every message to every shard with its bytes.
func TestObserversSeeTraffic(t *testing.T) {
	nc := testenv.NATSConn(t, 0)
	ts := []models.Tensor{{Name: "w", Shape: []int{1000}}}
	p := job.Place(ts, 300, 2)
	rec := &recorder{}
	dir := t.TempDir()
	shards := newShards(p, job.ShardConfig{Mode: job.Async, Ranks: 2, Optimizer: job.DefaultOptimizer("sgd", 0.1)})
	svcs := serveAll(t, nc, shards[:1], ServiceConfig{Observer: rec, SnapshotDir: dir})
	other, err := Serve(nc, shards[1], ServiceConfig{Job: "j", Shard: 1, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type seen struct {
		op    Op
		shard int
		bytes int
	}
	var mu sync.Mutex
	got := map[seen]int{}
	clients := make([]*Client, 2)
	for r := range clients {
		c, err := NewClient(nc, "j", p, r, 1)
		if err != nil {
			t.Fatal(err)
		}
		c.Observe = func(op Op, shard int, d time.Duration, bytes int) {
			if d <= 0 {
				t.Errorf("%s to shard %d took %v", op, shard, d)
			}
			mu.Lock()
			got[seen{op, shard, bytes}]++
			mu.Unlock()
		}
		clients[r] = c
	}
	g := make([]float32, p.Size())
	w := make([]float32, p.Size())
	for s := int64(0); s < 3; s++ { // rank 0 three steps ahead of rank 1
		if err := clients[0].Push(ctx, s, g); err != nil {
			t.Fatal(err)
		}
	}
	if err := clients[1].Push(ctx, 0, g); err != nil {
		t.Fatal(err)
	}
	if err := clients[1].Pull(ctx, 0, w); err != nil {
		t.Fatal(err)
	}
	for i := range g {
		g[i] = float32(math.NaN())
	}
	if err := clients[1].Push(ctx, 1, g); err == nil {
		t.Fatal("a NaN push was accepted")
	}
	// A snapshot of shard 0, through its subject.
	req, _ := wire.Encode(&wire.SnapshotRequest{V: wire.Version, Job: "j", Step: 0})
	if _, err := nc.Request(wire.SnapshotSubject("j", 1, 0), req, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// The NaN push was refused as soon as one shard said so: the other's
	// refusal, and the client's observation of it, may come after. Wait for
	// those too (and for the snapshot), not for a time.
	settled := func() bool {
		rec.mu.Lock()
		refused := len(rec.refused)
		rec.mu.Unlock()
		mu.Lock()
		defer mu.Unlock()
		pushes := 0
		for k, n := range got {
			if k.op == OpPush {
				pushes += n
			}
		}
		return svcs[0].SnapshotsWritten() > 0 && refused > 0 && pushes >= 8
	}
	deadline := time.Now().Add(5 * time.Second)
	for !settled() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if !slices.Equal(rec.lags, []int64{0, 0, 0, 2}) {
		t.Errorf("lags %v, want 0, 0, 0 (rank 0 is the fastest) then 2 (rank 1, two steps behind it)", rec.lags)
	}
	if !slices.Equal(rec.refused, []wire.Kind{wire.NonFinite}) {
		t.Errorf("refusals %v, want one non_finite", rec.refused)
	}
	if len(rec.snaps) != 1 || rec.snaps[0] <= 0 {
		t.Errorf("snapshots %v, want one of some bytes", rec.snaps)
	}
	mu.Lock()
	defer mu.Unlock()
	for s := 0; s < 2; s++ {
		n := 0
		for _, b := range p.OnShard(s) {
			n += 4 * b.Len
		}
		if got[seen{OpPush, s, n}] != 4 || got[seen{OpPull, s, n}] != 1 {
			t.Errorf("shard %d: observed %v; want 4 pushes and 1 pull of %d bytes", s, got, n)
		}
	}
}
