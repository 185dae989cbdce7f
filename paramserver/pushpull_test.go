package paramserver

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
)

// subjectCounts counts the messages NATS carries to job's push and pull
// subjects.
func subjectCounts(t *testing.T, nc *nats.Conn, job string) (pushes, pulls *atomic.Int64) {
	t.Helper()
	pushes, pulls = &atomic.Int64{}, &atomic.Int64{}
	sub, err := nc.Subscribe("downpour."+job+".>", func(m *nats.Msg) {
		switch {
		case strings.HasSuffix(m.Subject, ".push"):
			pushes.Add(1)
		case strings.HasSuffix(m.Subject, ".pull"):
			pulls.Add(1)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return pushes, pulls
}

// A transfer whose groups fit in the window sends each group's push and
// pull as one request: no message goes to a pull subject, and in sync mode
// a rank's request is answered only once every rank has pushed, with the
// parameters after the step, bit for bit. A request held past the shard's
// PullTTL is answered Expired; the client then pulls on its own, without
// pushing again. The separate path (SeparatePulls) gives the same bits.
func TestPushBringsItsPullBack(t *testing.T) {
	nc := testenv.NATSConn(t, 64<<10)
	ts := []models.Tensor{{Name: "a", Shape: []int{300, 300}}, {Name: "b", Shape: []int{7}}}
	p := job.Place(ts, 4000, 2)
	opt := job.DefaultOptimizer("adam", 0.01)
	cfg := syncCfg(2, opt)
	cfg.PullTTL = 2
	// The test is the shards' clock: it ticks them only in step 1, so
	// that steps 0 and 2 are never held past PullTTL however slow the
	// machine, and step 1's requests expire because it ticks.
	var svcs []*Service
	var clocks []chan time.Time
	for i, sh := range newShards(p, cfg) {
		clocks = append(clocks, make(chan time.Time))
		svc, err := Serve(nc, sh, ServiceConfig{Job: "j", Shard: i, Log: quiet, Ticks: clocks[i]})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(svc.Close)
		svcs = append(svcs, svc)
	}
	tick := func() {
		for _, c := range clocks {
			c <- time.Now()
		}
	}
	pushes, pulls := subjectCounts(t, nc, "j")
	rng := rand.New(rand.NewPCG(5, 5))
	const steps = 3
	gs := make([][][]float32, steps)
	for s := range gs {
		gs[s] = [][]float32{grads(rng, p.Size()), grads(rng, p.Size())}
	}
	clients := make([]*Client, 2)
	for r := range clients {
		c, err := NewClient(nc, "j", p, r, 1)
		if err != nil {
			t.Fatal(err)
		}
		clients[r] = c
	}
	groups := len(clients[0].groups)
	if groups < 4 || groups > clients[0].Window {
		t.Fatalf("%d groups: the test needs several, within the window", groups)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws := [][]float32{make([]float32, p.Size()), make([]float32, p.Size())}
	ref := initFlat(p)
	ro := &refOptimizer{opt: opt}
	for s := range steps {
		clients[1].SeparatePulls = s == 2 // the last step the old way: the same bits
		pushes0, pulls0 := pushes.Load(), pulls.Load()
		xfer := clients[0].StartPushPull(ctx, int64(s), gs[s][0], ws[0])
		if s == 1 {
			// Rank 1 holds the step back while the shards tick past rank
			// 0's PullTTL: rank 0's requests expire and it pulls again,
			// pushing nothing twice. A held pull expires too and is sent
			// again, so the pull count can reach the group count before
			// the last group's push has been seen: wait for both.
			for deadline := time.Now().Add(10 * time.Second); pulls.Load()-pulls0 < int64(groups) || pushes.Load()-pushes0 < int64(groups); time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("step %d: %d push and %d pull messages after rank 0's requests were held and ticked past, want %d of each", s, pushes.Load()-pushes0, pulls.Load()-pulls0, groups)
				}
				tick()
			}
			time.Sleep(20 * time.Millisecond) // a push sent twice would arrive by now
			select {
			case <-xfer.done:
				t.Fatalf("step %d: rank 0's transfer ended before rank 1 pushed: %v", s, xfer.err)
			default:
			}
			if got := pushes.Load() - pushes0; got != int64(groups) {
				t.Fatalf("step %d: %d push messages while held, want %d", s, got, groups)
			}
		}
		if err := clients[1].PushPull(ctx, int64(s), gs[s][1], ws[1]); err != nil {
			t.Fatal(err)
		}
		if err := xfer.Wait(); err != nil {
			t.Fatal(err)
		}
		ro.syncStep(ref, gs[s], int64(s))
		for r, w := range ws {
			if !slices.Equal(w, ref) {
				t.Fatalf("step %d: rank %d pulled parameters that differ from the reference", s, r)
			}
		}
		// Every message, the subscriber's included, has arrived once the
		// counts settle: each rank's pushes, and pulls only where asked for.
		wantPushes, wantPulls := int64(2*groups), int64(0)
		switch s {
		case 1:
			wantPulls = int64(groups) // rank 0's pulls after expiry, at least one each
		case 2:
			wantPulls = int64(groups) // rank 1's separate pulls
		}
		awaitCount(func() int { return int(pushes.Load() - pushes0) }, int(wantPushes))
		time.Sleep(50 * time.Millisecond)
		gotPushes, gotPulls := pushes.Load()-pushes0, pulls.Load()-pulls0
		if gotPushes != wantPushes || gotPulls < wantPulls || s != 1 && gotPulls != wantPulls {
			t.Fatalf("step %d: %d push and %d pull messages, want %d and %d", s, gotPushes, gotPulls, wantPushes, wantPulls)
		}
	}
	for i, svc := range svcs {
		st := svc.Stats()
		if want := int64(2 * steps * len(p.OnShard(i))); st.Accepted != want || st.Duplicates != 0 {
			t.Fatalf("shard %d: %+v, want %d block gradients accepted and no duplicates", i, st, want)
		}
	}
}

// A combined request's push refused is answered as a pull refused, with the
// push's reason, and changes nothing.
func TestPushThenPullRefusals(t *testing.T) {
	nc := testenv.NATSConn(t, 0)
	p := job.Place(testTensors, 8, 1)
	svc := serveAll(t, nc, newShards(p, syncCfg(1, job.DefaultOptimizer("sgd", 0.1))), ServiceConfig{})[0]
	c, _ := NewClient(nc, "j", p, 0, 2)
	w := make([]float32, p.Size())
	// A zero gradient: the shard takes epoch 2 and step 0, and its
	// parameters stay as they were.
	if err := c.PushPull(context.Background(), 0, make([]float32, p.Size()), w); err != nil || !slices.Equal(w, initFlat(p)) {
		t.Fatalf("a zero gradient: %v", err)
	}
	nan := make([]float32, p.Size())
	nan[3] = float32(math.NaN())
	err := c.PushPull(context.Background(), 1, nan, w)
	if wire.ErrKind(err) != wire.NonFinite {
		t.Fatalf("a non-finite gradient: %v, want kind NonFinite", err)
	}
	stale, _ := NewClient(nc, "j", p, 0, 1) // an epoch before the shard's
	if err := stale.PushPull(context.Background(), 1, make([]float32, p.Size()), w); wire.ErrKind(err) != wire.StaleEpoch {
		t.Fatalf("a push from an earlier epoch: %v, want kind StaleEpoch", err)
	}
	if err := c.Pull(context.Background(), 1, w); err != nil || !slices.Equal(w, initFlat(p)) || svc.Clock() != 1 {
		t.Fatalf("refused pushes changed the shard: %v, clock %d", err, svc.Clock())
	}
}

// A shard that answers a push with a plain Reply (one that predates
// PushRequest.Pull) is pulled from on its own: the transfer still ends with
// the parameters.
func TestPushThenPullFallsBackToPull(t *testing.T) {
	nc := testenv.NATSConn(t, 0)
	p := job.Place(testTensors, 100, 1)
	want := initFlat(p)
	var mu sync.Mutex
	var asked []bool // Pull, on each push
	for subj, h := range map[string]nats.MsgHandler{
		wire.PushSubject("j", 1, 0): func(m *nats.Msg) {
			req, err := wire.DecodeSplitPush(m.Header.Get(wire.EnvelopeHeader), m.Data, func(id uint32) (int, bool) { return p.Blocks[id].Len, true })
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			asked = append(asked, req.Pull)
			mu.Unlock()
			b, _ := wire.Encode(&wire.Reply{V: wire.Version, Clock: 1})
			m.Respond(b)
		},
		wire.PullSubject("j", 1, 0): func(m *nats.Msg) {
			req, _ := wire.DecodePull(m.Data)
			r := &wire.PullReply{V: wire.Version, Clock: 1}
			for _, id := range req.IDs {
				b := p.Blocks[id]
				r.Blocks = append(r.Blocks, wire.Block{ID: id, Data: wire.FloatBytes(want[b.Offset : b.Offset+b.Len])})
			}
			m.Respond(wire.EncodePullReply(r))
		},
	} {
		sub, err := nc.Subscribe(subj, h)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	c, _ := NewClient(nc, "j", p, 0, 1)
	w := make([]float32, p.Size())
	if err := c.PushPull(context.Background(), 0, make([]float32, p.Size()), w); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(w, want) || len(asked) != len(c.groups) || slices.Contains(asked, false) {
		t.Fatalf("pushes asked to pull %v (%d groups); parameters right: %v", asked, len(c.groups), slices.Equal(w, want))
	}
}

// A sparse transfer's push brings its pull back too, carrying the span
// lists to pull (wire.PushRequest.PullSpans): no message goes to a pull
// subject, half the messages of the separate path go, and the parameters
// inside each rank's pull ranges come back bit for bit as the separate
// path pulls them (which TestSparseTransferMatchesDense holds to the dense
// transfer's), in sync mode with two ranks pushing and pulling different
// rows.
func TestSparsePushBringsItsPullBack(t *testing.T) {
	nc := testenv.NATSConn(t, 64<<10)
	ts := []models.Tensor{{Name: "emb", Shape: []int{500, 32}}, {Name: "w", Shape: []int{40, 40}}}
	opt := job.DefaultOptimizer("adam", 0.01)
	p := job.Place(ts, 3000, 2)
	cfg := syncCfg(2, opt)
	serveAll(t, nc, newShards(p, cfg), ServiceConfig{Job: "c"})
	serveAll(t, nc, newShards(p, cfg), ServiceConfig{Job: "s"})
	cPushes, cPulls := subjectCounts(t, nc, "c")
	sPushes, sPulls := subjectCounts(t, nc, "s")
	var combined, separate [2]*Client
	for r := range 2 {
		combined[r], _ = NewClient(nc, "c", p, r, 1)
		separate[r], _ = NewClient(nc, "s", p, r, 1)
		separate[r].SeparatePulls = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rng := rand.New(rand.NewPCG(8, 1))
	emb := 500 * 32
	var cw, sw [2][]float32
	for r := range 2 {
		cw[r], sw[r] = slices.Repeat([]float32{7}, p.Size()), slices.Repeat([]float32{7}, p.Size())
	}
	messages := 0
	for step := range 3 {
		var xfers []*Transfer
		for r := range 2 {
			push := append(randRanges(rng, emb, 32), [2]int{emb, p.Size()})
			pull := randRanges(rng, emb, 32) // and none of w
			g := zeroOutside(grads(rng, p.Size()), push)
			groups, err := combined[r].transferGroups(push, pull)
			if err != nil {
				t.Fatal(err)
			}
			if len(groups) > combined[r].Window || !slices.ContainsFunc(groups, func(g group) bool { return g.push != nil && g.pull != nil }) {
				t.Fatalf("%d groups, within the window of %d, some of them sparse both ways: the test needs them", len(groups), combined[r].Window)
			}
			messages += len(groups)
			xfers = append(xfers, combined[r].StartPushPullSparse(ctx, int64(step), g, cw[r], push, pull),
				separate[r].StartPushPullSparse(ctx, int64(step), g, sw[r], push, pull))
		}
		for _, x := range xfers {
			if err := x.Wait(); err != nil {
				t.Fatal(err)
			}
		}
		for r := range 2 {
			for i := range cw[r] {
				if math.Float32bits(cw[r][i]) != math.Float32bits(sw[r][i]) {
					t.Fatalf("step %d rank %d: float %d is %v combined, %v separate", step, r, i, cw[r][i], sw[r][i])
				}
			}
		}
	}
	awaitCount(func() int { return int(sPulls.Load()) }, messages)
	time.Sleep(50 * time.Millisecond)
	if cPushes.Load() != int64(messages) || cPulls.Load() != 0 || sPushes.Load() != int64(messages) || sPulls.Load() != int64(messages) {
		t.Fatalf("combined: %d push and %d pull messages; separate: %d and %d; want %d pushes each, and pulls only separate",
			cPushes.Load(), cPulls.Load(), sPushes.Load(), sPulls.Load(), messages)
	}
}

// Whatever would refuse a combined request's pull refuses its push with
// it, before the push changes anything: span lists to pull outside a
// block, or a shard holding all the pulls it may. The shard then has taken
// nothing, and says so.
func TestPushThenPullRefusedWhole(t *testing.T) {
	nc := testenv.NATSConn(t, 0)
	p := job.Place(testTensors, 8, 1)
	svc := serveAll(t, nc, newShards(p, syncCfg(1, job.DefaultOptimizer("sgd", 0.1))), ServiceConfig{})[0]
	b := p.Blocks[0]
	ask := func(pullSpans []byte) error {
		t.Helper()
		req := &wire.PushRequest{V: wire.Version, Job: "j", Epoch: 1, Pull: true,
			Blocks:    []wire.Block{{ID: b.ID, Data: make([]byte, 4*b.Len)}},
			PullSpans: [][]byte{pullSpans}}
		msg, err := nc.Request(wire.PushSubject("j", p.Version, 0), wire.EncodePush(req), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		r, err := wire.DecodePullReply(msg.Data)
		if err != nil {
			t.Fatal(err)
		}
		return r.Err()
	}
	if err := ask(wire.AppendSpan(nil, b.Len-1, 2)); wire.ErrKind(err) != wire.BadLength && wire.ErrKind(err) != wire.Malformed {
		t.Fatalf("spans to pull past the block's end: %v", err)
	}
	svc.mu.Lock()
	for i := range MaxWaitingPulls {
		svc.held[uint64(1<<40+i)] = heldPull{}
	}
	svc.mu.Unlock()
	if err := ask(nil); wire.ErrKind(err) != wire.TooLarge {
		t.Fatalf("a shard holding %d pulls: %v, want kind TooLarge", MaxWaitingPulls, err)
	}
	if st := svc.Stats(); st.Accepted != 0 || svc.Clock() != 0 {
		t.Fatalf("refused requests changed the shard: %+v, clock %d", st, svc.Clock())
	}
	svc.mu.Lock()
	clear(svc.held)
	svc.mu.Unlock()
	if err := ask(wire.AppendSpan(nil, 0, 1)); err != nil || svc.Stats().Accepted != 1 {
		t.Fatalf("the same request with room and spans inside the block: %v, %+v", err, svc.Stats())
	}
}
