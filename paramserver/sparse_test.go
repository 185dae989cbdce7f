package paramserver

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
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

// randRanges is a sorted, disjoint set of [lo, hi) ranges of n floats, each
// of whole rows of width, covering about a third of them.
func randRanges(rng *rand.Rand, n, width int) [][2]int {
	var rs [][2]int
	for row := 0; row < n/width; row++ {
		if rng.IntN(3) != 0 {
			continue
		}
		lo := row * width
		if k := len(rs); k > 0 && rs[k-1][1] == lo {
			rs[k-1][1] = lo + width
		} else {
			rs = append(rs, [2]int{lo, lo + width})
		}
	}
	return rs
}

// zeroOutside zeroes g outside ranges, as a gradient of only those rows.
func zeroOutside(g []float32, ranges [][2]int) []float32 {
	out := make([]float32, len(g))
	for _, r := range ranges {
		copy(out[r[0]:r[1]], g[r[0]:r[1]])
	}
	return out
}

// sparsePushes is pushes with each block cut to its parts inside ranges,
// written out plainly: one message per block.
func sparsePushes(p *job.Placement, rank int, epoch uint64, step int64, g []float32, ranges [][2]int) []*wire.PushRequest {
	out := pushes(p, rank, epoch, step, g)
	for i, b := range p.Blocks {
		var spans, data []byte
		for _, r := range ranges {
			lo, hi := max(r[0], b.Offset), min(r[1], b.Offset+b.Len)
			if lo < hi {
				spans = wire.AppendSpan(spans, lo-b.Offset, hi-lo)
				data = wire.AppendFloats(data, g[lo:hi])
			}
		}
		if spans == nil {
			spans = wire.EmptySpans
		}
		out[i].Blocks[0] = wire.Block{ID: b.ID, Spans: spans, Data: data}
	}
	return out
}

// A sparse push changes the parameters exactly as the dense push of the
// same gradient (zeros outside its spans) does, bit for bit, for every
// optimizer, in sync mode with one rank and with several (some of which
// touch nothing in a block) and in async mode.
func TestSparsePushesApplyAsDense(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 1))
	ts := []models.Tensor{{Name: "emb", Shape: []int{40, 6}}, {Name: "w", Shape: []int{5, 5}}, {Name: "emb2", Shape: []int{9, 4}}}
	for _, cfg := range []job.ShardConfig{syncCfg(1, job.Optimizer{}), syncCfg(3, job.Optimizer{}), {Mode: job.Async, Ranks: 2}} {
		for _, opt := range testOptimizers() {
			cfg.Optimizer = opt
			for _, bs := range []int{7, 24, 1000} {
				p := job.Place(ts, bs, 2)
				dense, sparse := newShards(p, cfg), newShards(p, cfg)
				for _, sh := range [][]*Shard{dense, sparse} { // signed zeros a gradient does not reach must stay as they are
					for i, id := range sh[0].Blocks() {
						w, _ := sh[0].Params(id)
						w[i%len(w)], w[(i+1)%len(w)] = float32(math.Copysign(0, -1)), 0
					}
				}
				for step := range 4 {
					for r := range cfg.Ranks {
						var ranges [][2]int
						if r != 1 { // rank 1 touches nothing
							ranges = randRanges(rng, p.Size(), 2)
						}
						g := zeroOutside(grads(rng, p.Size()), ranges)
						if len(ranges) > 0 {
							g[ranges[0][0]] = float32(math.Copysign(0, -1)) // a -0 gradient travels as itself
						}
						st := int64(step)
						if cfg.Mode == job.Async {
							st = int64(step*cfg.Ranks + r)
						}
						for i, m := range pushes(p, r, 1, st, g) {
							if err := dense[p.Blocks[i].Shard].Push(m); err != nil {
								t.Fatal(err)
							}
						}
						for i, m := range sparsePushes(p, r, 1, st, g, ranges) {
							if err := sparse[p.Blocks[i].Shard].Push(m); err != nil {
								t.Fatal(err)
							}
						}
					}
					want, got := gather(p, dense), gather(p, sparse)
					for i := range want {
						if math.Float32bits(want[i]) != math.Float32bits(got[i]) {
							t.Fatalf("%s %d ranks, %s, block %d, step %d: float %d is %v sparse, %v dense", cfg.Mode, cfg.Ranks, opt.Kind, bs, step, i, got[i], want[i])
						}
					}
				}
				if dense[0].Stats() != sparse[0].Stats() {
					t.Fatalf("stats differ: %+v sparse, %+v dense", sparse[0].Stats(), dense[0].Stats())
				}
			}
		}
	}
}

// A sparse pull reads exactly the floats its spans name, in order; spans
// outside a block are refused.
func TestSparseReads(t *testing.T) {
	p := job.Place(testTensors, 8, 1)
	sh := newShards(p, syncCfg(1, job.DefaultOptimizer("sgd", 0.1)))[0]
	w := initFlat(p)
	b := p.Blocks[2]
	req := &wire.PullRequest{V: wire.Version, Job: "j", IDs: []uint32{p.Blocks[1].ID, b.ID, p.Blocks[3].ID},
		Spans: [][]byte{nil, wire.AppendSpan(wire.AppendSpan(nil, 1, 2), 6, 2), wire.EmptySpans}}
	if ok, err := sh.Pull(req, 1); !ok || err != nil {
		t.Fatalf("pull: %v %v", ok, err)
	}
	got, err := sh.Read(req)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]float32{w[p.Blocks[1].Offset : p.Blocks[1].Offset+p.Blocks[1].Len],
		slices.Concat(w[b.Offset+1:b.Offset+3], w[b.Offset+6:b.Offset+8]), {}}
	for i := range want {
		if !slices.Equal(got[i].Data, wire.AppendFloats(nil, want[i])) {
			t.Fatalf("block %d: read %d bytes, want %v", i, len(got[i].Data), want[i])
		}
	}
	for _, c := range []struct {
		name  string
		spans [][]byte
		kind  wire.Kind
	}{
		{"past the end", [][]byte{nil, wire.AppendSpan(nil, 7, 2), nil}, wire.BadLength},
		{"count", [][]byte{nil}, wire.Malformed},
		{"form", [][]byte{nil, wire.AppendSpan(nil, 7, 2)[:3], nil}, wire.Malformed},
	} {
		bad := *req
		bad.Spans = c.spans
		if _, err := sh.Pull(&bad, 2); !errors.Is(err, &wire.Error{Kind: c.kind}) {
			t.Errorf("pull %s: %v, want %v", c.name, err, c.kind)
		}
		if _, err := sh.Read(&bad); !errors.Is(err, &wire.Error{Kind: c.kind}) {
			t.Errorf("read %s: %v, want %v", c.name, err, c.kind)
		}
	}
	if sh.Waiting() != 0 {
		t.Fatal("a refused pull was held")
	}
}

func TestBlockSpans(t *testing.T) {
	b := job.Block{Offset: 100, Len: 50}
	enc := func(pairs ...int) []byte {
		out := []byte{}
		for i := 0; i < len(pairs); i += 2 {
			out = wire.AppendSpan(out, pairs[i], pairs[i+1])
		}
		return out
	}
	for _, c := range []struct {
		ranges [][2]int
		want   []byte
	}{
		{[][2]int{{0, 1000}}, nil},                                               // covers it: whole
		{[][2]int{{100, 150}}, nil},                                              // exactly
		{[][2]int{{90, 120}, {120, 160}}, nil},                                   // adjacent ranges merge to whole
		{[][2]int{{0, 10}, {200, 300}}, wire.EmptySpans},                         // misses it
		{nil, wire.EmptySpans},                                                   // (no ranges at all)
		{[][2]int{{0, 100}, {150, 160}}, wire.EmptySpans},                        // touches its ends only
		{[][2]int{{90, 110}}, enc(0, 10)},                                        // its head
		{[][2]int{{140, 170}}, enc(40, 10)},                                      // its tail
		{[][2]int{{0, 5}, {102, 104}, {104, 106}, {130, 131}}, enc(2, 4, 30, 1)}, // merged, inside
	} {
		if got := blockSpans(c.ranges, b); !slices.Equal(got, c.want) || (got == nil) != (c.want == nil) {
			t.Errorf("ranges %v: spans %v, want %v", c.ranges, got, c.want)
		}
	}
}

// Through NATS, a sparse transfer leaves the parameters inside its pull
// ranges exactly as a dense transfer of the same gradient does, leaves the
// rest of the vector alone, and moves fewer bytes. Bad ranges fail it.
func TestSparseTransferMatchesDense(t *testing.T) {
	nc := testenv.NATSConn(t, 64<<10)
	ts := []models.Tensor{{Name: "emb", Shape: []int{500, 32}}, {Name: "w", Shape: []int{40, 40}}}
	opt := job.DefaultOptimizer("momentum", 0.1)
	p := job.Place(ts, 3000, 2)
	cfg := syncCfg(2, opt)
	dense, sparse := newShards(p, cfg), newShards(p, cfg)
	serveAll(t, nc, dense, ServiceConfig{Job: "dense"})
	serveAll(t, nc, sparse, ServiceConfig{Job: "sparse"})
	clients := func(job string) []*Client {
		var cs []*Client
		for r := range 2 {
			c, err := NewClient(nc, job, p, r, 1)
			if err != nil {
				t.Fatal(err)
			}
			cs = append(cs, c)
		}
		return cs
	}
	var bytes [2]atomic.Int64
	dc, sc := clients("dense"), clients("sparse")
	for i, c := range sc {
		c.Observe = func(_ Op, _ int, _ time.Duration, n int) { bytes[i].Add(int64(n)) }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rng := rand.New(rand.NewPCG(2, 9))
	emb := 500 * 32
	dw, sw := [2][]float32{make([]float32, p.Size()), make([]float32, p.Size())}, [2][]float32{}
	for r := range sw {
		sw[r] = slices.Repeat([]float32{7}, p.Size()) // untouched floats keep this
	}
	pulledEver := [2][]bool{make([]bool, p.Size()), make([]bool, p.Size())}
	for step := range 3 {
		var ranges, pulls [2][][2]int
		var g [2][]float32
		var dx, sx [2]*Transfer
		for r := range 2 {
			ranges[r] = append(randRanges(rng, emb, 32), [2]int{emb, p.Size()})
			pulls[r] = append(randRanges(rng, emb, 32), [2]int{emb, p.Size()})
			g[r] = zeroOutside(grads(rng, p.Size()), ranges[r])
			dx[r] = dc[r].StartPushPull(ctx, int64(step), g[r], dw[r])
			sx[r] = sc[r].StartPushPullSparse(ctx, int64(step), g[r], sw[r], ranges[r], pulls[r])
		}
		for r := range 2 {
			if err := dx[r].Wait(); err != nil {
				t.Fatal(err)
			}
			if err := sx[r].Wait(); err != nil {
				t.Fatal(err)
			}
			inside := make([]bool, p.Size())
			for _, rg := range pulls[r] {
				for i := rg[0]; i < rg[1]; i++ {
					inside[i] = true
				}
			}
			for i := range inside {
				pulledEver[r][i] = pulledEver[r][i] || inside[i]
				if inside[i] && math.Float32bits(sw[r][i]) != math.Float32bits(dw[r][i]) {
					t.Fatalf("step %d rank %d: pulled float %d is %v, dense %v", step, r, i, sw[r][i], dw[r][i])
				}
				if !pulledEver[r][i] && sw[r][i] != 7 {
					t.Fatalf("step %d rank %d: float %d, never inside the pull ranges, changed", step, r, i)
				}
			}
		}
	}
	if full := int64(3 * 2 * 4 * p.Size()); bytes[0].Load() >= full*3/4 || bytes[0].Load() == 0 {
		t.Fatalf("rank 0 moved %d bytes; dense transfers move %d", bytes[0].Load(), full)
	}
	for _, bad := range [][][2]int{{{10, 5}}, {{0, 10}, {5, 20}}, {{0, p.Size() + 1}}} {
		if err := sc[0].StartPushPullSparse(ctx, 3, make([]float32, p.Size()), sw[0], bad, nil).Wait(); err == nil {
			t.Fatalf("ranges %v accepted", bad)
		}
	}
}

// A sparse transfer packs each shard's blocks by what they carry this time,
// into fewer messages than the whole blocks need, each fitting the server's
// max_payload, every block in exactly one; the messages go in the read
// order a client is given, else front to back.
func TestTransferGroups(t *testing.T) {
	nc := testenv.NATSConn(t, 16<<10)
	ts := []models.Tensor{{Name: "emb", Shape: []int{500, 32}}, {Name: "w", Shape: []int{40, 40}}}
	p := job.Place(ts, 1000, 2)
	c, err := NewClient(nc, "j", p, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	rows := func() [][2]int {
		var rs [][2]int
		for _, r := range randRanges(rng, 16000, 32) {
			if rng.IntN(4) == 0 {
				rs = append(rs, r)
			}
		}
		return append(rs, [2]int{16000, 17600})
	}
	push, pull := rows(), rows()
	check := func(name string, gs []group, sparse bool) {
		t.Helper()
		seen := map[uint32]int{}
		for _, g := range gs {
			size := wire.Headroom
			for i, b := range g.blocks {
				if b.Shard != g.shard || g.ids[i] != b.ID {
					t.Fatalf("%s: block %d in a group of shard %d", name, b.ID, g.shard)
				}
				seen[b.ID]++
				pushSize, pullSize := 4*b.Len, 4*b.Len
				if g.push != nil && g.push[i] != nil {
					n, _, _ := wire.ParseSpans(g.push[i])
					pushSize = 4*n + len(g.push[i]) + 8
				}
				if g.pull != nil && g.pull[i] != nil {
					n, _, _ := wire.ParseSpans(g.pull[i])
					pullSize = 4*n + len(g.pull[i]) + 8
				}
				size += max(pushSize, pullSize) + wire.PerBlock
			}
			if size > int(nc.MaxPayload()) {
				t.Fatalf("%s: a group of %d bytes", name, size)
			}
			if !sparse && (g.push != nil || g.pull != nil) {
				t.Fatalf("%s: a dense transfer with spans", name)
			}
		}
		if len(seen) != len(p.Blocks) {
			t.Fatalf("%s: %d of %d blocks", name, len(seen), len(p.Blocks))
		}
		for id, n := range seen {
			if n != 1 {
				t.Fatalf("%s: block %d in %d groups", name, id, n)
			}
		}
	}
	dense, err := c.transferGroups(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	check("dense", dense, false)
	for i := 1; i < len(dense); i++ {
		if dense[i].blocks[0].Offset < dense[i-1].blocks[0].Offset {
			t.Fatal("dense groups out of vector order")
		}
	}
	sparse, err := c.transferGroups(push, pull)
	if err != nil {
		t.Fatal(err)
	}
	check("sparse", sparse, true)
	if 2*len(sparse) > len(dense) {
		t.Fatalf("%d sparse groups for %d dense ones", len(sparse), len(dense))
	}
	// Read "w" first, then "emb".
	c.ReadOrder([][2]int{{16000, 17600}, {0, 16000}})
	ordered, err := c.transferGroups(push, pull)
	if err != nil {
		t.Fatal(err)
	}
	check("ordered", ordered, true)
	wFirst := true
	for _, g := range ordered {
		if g.blocks[0].Offset < 16000 {
			wFirst = false
		} else if !wFirst {
			t.Fatal("a group of w after a group of emb")
		}
	}
	// The whole blocks are packed again in read order too: no message
	// holds a block of w behind one of emb.
	whole, err := c.transferGroups(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	check("whole, ordered", whole, false)
	for _, g := range whole {
		for i := 1; i < len(g.blocks); i++ {
			if c.readCmp(g.blocks[i-1], g.blocks[i]) > 0 {
				t.Fatalf("a message holds block %d before block %d", g.blocks[i-1].ID, g.blocks[i].ID)
			}
		}
	}
	if whole[0].blocks[0].Offset < 16000 {
		t.Fatal("the first whole message is not w's")
	}
	if c.readRank(15999) != 1 || c.readRank(16000) != 0 || c.readRank(17600) != 2 {
		t.Fatalf("ranks %d %d %d", c.readRank(15999), c.readRank(16000), c.readRank(17600))
	}
	// A transfer refused at its start says so from every wait.
	xf := c.StartPushPullSparse(context.Background(), 0, make([]float32, p.Size()), make([]float32, p.Size()), [][2]int{{5, 1}}, nil)
	if xf.WaitRange(0, 10) == nil || xf.WaitPushed() == nil || xf.Wait() == nil {
		t.Fatal("bad ranges accepted")
	}
}

// A transfer's pushes leave in its groups' order (the read order): with one
// push in flight, the shards receive them exactly so. (Sent with their
// pulls, as they are when they all fit in the window, they leave at once.)
func TestTransferPushesInReadOrder(t *testing.T) {
	nc := testenv.NATSConn(t, 16<<10)
	ts := []models.Tensor{{Name: "emb", Shape: []int{100, 32}}, {Name: "w", Shape: []int{40, 40}}, {Name: "b", Shape: []int{40}}}
	p := job.Place(ts, 1000, 2)
	serveAll(t, nc, newShards(p, syncCfg(1, job.DefaultOptimizer("sgd", 0.1))), ServiceConfig{})
	spy := testenv.Conn(t, nc.ConnectedUrl())
	var mu sync.Mutex
	var got []uint32
	sub, err := spy.Subscribe("downpour.j.*.ps.*.push", func(m *nats.Msg) {
		if req, err := wire.DecodePush(m.Data); err == nil {
			mu.Lock()
			got = append(got, req.Blocks[0].ID)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	spy.Flush()
	c, err := NewClient(nc, "j", p, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	c.PushWindow, c.SeparatePulls = 1, true
	c.ReadOrder([][2]int{{3200, 4800}, {4800, 4840}, {0, 3200}}) // w, b, emb
	push := [][2]int{{0, 64}, {640, 704}, {3200, 4840}}
	groups, err := c.transferGroups(push, push)
	if err != nil {
		t.Fatal(err)
	}
	var want []uint32
	for _, g := range groups {
		want = append(want, g.ids[0])
	}
	if p.Blocks[want[0]].Offset != 3200 { // w's first block
		t.Fatalf("first group starts at block %d (offset %d)", want[0], p.Blocks[want[0]].Offset)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g := zeroOutside(grads(rand.New(rand.NewPCG(1, 1)), p.Size()), push)
	if err := c.StartPushPullSparse(ctx, 0, g, make([]float32, p.Size()), push, push).Wait(); err != nil {
		t.Fatal(err)
	}
	awaitCount(func() int { mu.Lock(); defer mu.Unlock(); return len(got) }, len(want))
	sub.Unsubscribe()
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, want) {
		t.Fatalf("pushes arrived starting with blocks %v, want %v", got, want)
	}
}
