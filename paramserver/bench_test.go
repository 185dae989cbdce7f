package paramserver

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
)

// benchBlockSize is the block size of the push/pull benchmarks: the default
// of `downpour train`.
const benchBlockSize = 16 << 10

// BenchmarkEncodeDecode1MiB encodes and decodes a push of 1 MiB of gradient
// (16 blocks of 16 Ki floats): the wire cost per MiB, which must stay a raw
// byte copy with no per-float work.
// The W2 workload of the benchmarks: 4 layers, hidden and embedding 512,
// vocabularies 16000 and 8000.
var w2 = models.Seq2SeqConfig{SrcVocab: 16000, TgtVocab: 8000, Embed: 512, Hidden: 512, Layers: 4}

func BenchmarkEncodeDecode1MiB(b *testing.B) {
	req := &wire.PushRequest{V: wire.Version, Job: "bench", Rank: 1, Epoch: 1, Step: 7}
	g := make([]float32, 1<<18)
	for i := range g {
		g[i] = float32(i)
	}
	for i := 0; i < 16; i++ {
		req.Blocks = append(req.Blocks, wire.Block{ID: uint32(i), Data: wire.FloatBytes(g[i<<14 : (i+1)<<14])})
	}
	data, _ := wire.Encode(req)
	b.Run("encode", func(b *testing.B) {
		b.SetBytes(1 << 20)
		b.ReportAllocs()
		var buf []byte // the client reuses its buffers, as here
		for b.Loop() {
			buf = wire.AppendPush(buf[:0], req)
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.SetBytes(1 << 20)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := wire.DecodePush(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkApply measures each optimizer's update of one 1 Mi-float block:
// gradient bytes per second.
func BenchmarkApply(b *testing.B) {
	const n = 1 << 20
	rng := rand.New(rand.NewPCG(1, 1))
	w, g := grads(rng, n), grads(rng, n)
	for _, kind := range []string{"sgd", "momentum", "adagrad", "adam"} {
		o := job.DefaultOptimizer(kind, 0.001)
		slots := make([][]float32, o.Slots())
		for i := range slots {
			slots[i] = make([]float32, n)
		}
		b.Run(kind, func(b *testing.B) {
			b.SetBytes(4 * n)
			var t int64
			for b.Loop() {
				Apply(o, w, g, slots, t)
				t++
			}
		})
	}
}

// rig is a shard set served on an embedded NATS server and one worker's
// client, for the push/pull benchmarks.
type rig struct {
	nc     *nats.Conn
	dial   func() *nats.Conn // another connection of the rig's kind
	p      *job.Placement
	client *Client
	grads  []float32
	params []float32
	step   int64
}

// connKind is how the rig's shards and worker reach the embedded NATS server:
// over loopback TCP, as roles in separate processes on one host do, or
// in-process (a pipe in memory), as the roles of `downpour train` do.
type connKind string

const (
	tcp       connKind = "tcp"
	inProcess connKind = "inprocess"
)

// byConn runs f as one sub-benchmark per connection kind.
func byConn(b *testing.B, f func(b *testing.B, conn connKind)) {
	for _, conn := range []connKind{inProcess, tcp} {
		b.Run("conn="+string(conn), func(b *testing.B) { f(b, conn) })
	}
}

// Each shard and the worker have their own connection, as separate processes
// would.
func newRig(b *testing.B, tensors []models.Tensor, shards int, maxPayload int32, conn connKind) *rig {
	return newRigCopies(b, tensors, shards, 1, maxPayload, conn, "j")
}

// newRigCopies is newRig with each block on copies shards (the chains of
// job.PlaceCopies), serving job name (a second rig may share the server).
func newRigCopies(b *testing.B, tensors []models.Tensor, shards, copies int, maxPayload int32, conn connKind, name string) *rig {
	srv := testenv.NATS(b, maxPayload)
	return rigOn(b, srv, tensors, shards, copies, conn, name)
}

func rigOn(b *testing.B, srv *server.Server, tensors []models.Tensor, shards, copies int, conn connKind, name string) *rig {
	dial := func() *nats.Conn {
		var opts []nats.Option
		if conn == inProcess {
			opts = append(opts, nats.InProcessServer(srv))
		}
		nc, err := nats.Connect(srv.ClientURL(), opts...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nc.Close)
		return nc
	}
	nc := dial()
	p := job.PlaceCopies(tensors, benchBlockSize, shards, copies)
	for s := 0; s < shards; s++ {
		sh := NewShard(syncCfg(1, job.DefaultOptimizer("sgd", 1e-6)), p.Held(s), func(job.Block, []float32) {})
		if copies > 1 {
			if err := sh.Chain(s, p); err != nil {
				b.Fatal(err)
			}
		}
		svc, err := Serve(dial(), sh, ServiceConfig{Job: name, Shard: s, Placement: p.Version, Log: quiet})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(svc.Close)
	}
	c, err := NewClient(nc, name, p, 0, 1)
	if err != nil {
		b.Fatal(err)
	}
	return &rig{nc: nc, dial: dial, p: p, client: c, grads: grads(rand.New(rand.NewPCG(1, 2)), p.Size()), params: make([]float32, p.Size())}
}

// pushPull runs one step through the shards and returns how long the push
// and the pull took.
func (r *rig) pushPull(b *testing.B) (push, pull time.Duration) {
	ctx := context.Background()
	start := time.Now()
	if err := r.client.Push(ctx, r.step, r.grads); err != nil {
		b.Fatal(err)
	}
	mid := time.Now()
	r.step++
	if err := r.client.Pull(ctx, r.step, r.params); err != nil {
		b.Fatal(err)
	}
	return mid.Sub(start), time.Since(mid)
}

// rawEcho serves, on the same server and with the same topology (one
// responder per shard), plain NATS request/reply of the same message sizes as
// the rig's pushes and pulls: an acknowledgement for each push message and a
// payload of the pulled size for each pull message.
type rawEcho struct {
	nc      *nats.Conn
	window  int      // requests in flight at most, as the rig's client
	shard   []int    // per group: its shard
	pushMsg [][]byte // per group: a message the size of its push
	pullMsg [][]byte // per group: a small request naming the group
	reply   [][]byte // per group: a reply the size of its pull reply
}

// written returns n bytes of memory that has been written. A large
// allocation that is never written is backed by the kernel's one shared
// zero page: copying from it reads the same 4 KiB, always in cache, which
// would make the raw side move its payloads far more cheaply than any real
// data (gradients, parameters) moves.
func written(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7)
	}
	return p
}

func newRawEcho(b *testing.B, r *rig) *rawEcho {
	e := &rawEcho{nc: r.nc, window: r.client.Window}
	for i, g := range byTurn(r.client.groups) { // in the order Push and Pull send them
		n := 0
		for _, blk := range g.blocks {
			n += 4 * blk.Len
		}
		e.shard = append(e.shard, g.shard)
		e.pushMsg = append(e.pushMsg, written(n+64, byte(i)))
		req := make([]byte, 16+4*len(g.ids))
		binary.LittleEndian.PutUint32(req, uint32(i))
		e.pullMsg = append(e.pullMsg, req)
		e.reply = append(e.reply, written(n+64, byte(i+1)))
	}
	for s := 0; s < r.p.Shards; s++ {
		nc := r.dial() // a connection per responder, like the shards
		push, err := nc.Subscribe(fmt.Sprintf("raw.%d.push", s), func(m *nats.Msg) { m.Respond([]byte("ok")) })
		if err != nil {
			b.Fatal(err)
		}
		pull, err := nc.Subscribe(fmt.Sprintf("raw.%d.pull", s), func(m *nats.Msg) {
			m.Respond(e.reply[binary.LittleEndian.Uint32(m.Data)])
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { push.Unsubscribe(); pull.Unsubscribe() })
	}
	return e
}

// run does what a push and a pull do in raw NATS: every group's request,
// as many in flight as the client allows, pushes first, then pulls.
func (e *rawEcho) run(b *testing.B) (push, pull time.Duration) {
	phase := func(suffix string, msgs [][]byte) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		sem := make(chan struct{}, e.window) // the client's bound on requests in flight
		for i, m := range msgs {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if _, err := e.nc.Request(fmt.Sprintf("raw.%d.%s", e.shard[i], suffix), m, 30*time.Second); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		return time.Since(start)
	}
	return phase("push", e.pushMsg), phase("pull", e.pullMsg)
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// BenchmarkPushPullW2 moves the W2 model's whole gradient to 2 shards and its
// whole parameter set back, through the embedded NATS server, beside raw NATS
// request/reply of the same message sizes in the same run. ratio_to_raw is
// raw time / downpour time (1 means no overhead over NATS itself). The raw
// side's connections are of the same kind as the rig's.
func BenchmarkPushPullW2(b *testing.B) { byConn(b, pushPullW2) }

func pushPullW2(b *testing.B, conn connKind) {
	r := newRig(b, w2.Tensors(), 2, 0, conn)
	e := newRawEcho(b, r)
	r.pushPull(b) // warm up
	e.run(b)
	var ours, raw, oursPush, rawPush []time.Duration
	for b.Loop() {
		p1, p2 := r.pushPull(b)
		q1, q2 := e.run(b)
		ours, raw = append(ours, p1+p2), append(raw, q1+q2)
		oursPush, rawPush = append(oursPush, p1), append(rawPush, q1)
	}
	b.ReportMetric(float64(median(oursPush).Milliseconds()), "ms/push")
	b.ReportMetric(float64(median(rawPush).Milliseconds()), "raw_ms/push")
	bytes := float64(2 * 4 * r.p.Size())
	b.ReportMetric(bytes/median(ours).Seconds()/1e6, "MB/s")
	b.ReportMetric(bytes/median(raw).Seconds()/1e6, "raw_MB/s")
	b.ReportMetric(median(raw).Seconds()/median(ours).Seconds(), "ratio_to_raw")
}

// BenchmarkPushPull10M pushes 10M float32 gradients to one shard, which
// applies SGD, and pulls the 10M parameters back: the workload ps-lite's own
// benchmark measures (130 ms push + 180 ms pull on this machine kind, with an
// empty server handler). ps-lite's worker and server are separate processes;
// conn=tcp is the comparable one.
func BenchmarkPushPull10M(b *testing.B) { byConn(b, pushPull10M) }

func pushPull10M(b *testing.B, conn connKind) {
	r := newRig(b, []models.Tensor{{Name: "x", Shape: []int{10_000_000}}}, 1, 0, conn)
	r.pushPull(b)
	var push, pull []time.Duration
	for b.Loop() {
		p1, p2 := r.pushPull(b)
		push, pull = append(push, p1), append(pull, p2)
	}
	b.ReportMetric(float64(median(push).Microseconds())/1e3, "ms/push")
	b.ReportMetric(float64(median(pull).Microseconds())/1e3, "ms/pull")
	b.ReportMetric(float64((median(push)+median(pull)).Microseconds())/1e3, "ms/pushpull")
}

// BenchmarkSyncOverheadW2 compares one sync step of a W2-sized model through
// the parameter server (1 worker, 2 shards, embedded NATS: push the gradient,
// SGD on the shards, pull the parameters) with the same step done locally
// (SGD on the worker, no PS). The gradient is synthetic: the W2 model's
// compute is not part of either side, so the ratio here is the PS's cost
// against the bare optimizer; against a real W2 step (seconds of compute) the
// PS adds the absolute ms/step reported.
func BenchmarkSyncOverheadW2(b *testing.B) { byConn(b, syncOverheadW2) }

func syncOverheadW2(b *testing.B, conn connKind) {
	r := newRig(b, w2.Tensors(), 2, 0, conn)
	r.pushPull(b)
	w := make([]float32, r.p.Size())
	opt := job.DefaultOptimizer("sgd", 1e-6)
	var ps, local []time.Duration
	for b.Loop() {
		p1, p2 := r.pushPull(b)
		start := time.Now()
		Apply(opt, w, r.grads, nil, 0)
		local = append(local, time.Since(start))
		ps = append(ps, p1+p2)
	}
	b.ReportMetric(float64(median(ps).Microseconds())/1e3, "ms/ps_step")
	b.ReportMetric(float64(median(local).Microseconds())/1e3, "ms/local_step")
	b.ReportMetric(median(ps).Seconds()/median(local).Seconds(), "ratio")
}

// BenchmarkSyncOverheadW2Model is the same comparison with the real W2
// model's step (batch 128, length 20), done as workers do it: forward and
// backward, clip, then push the gradient to 2 shards and pull the next
// parameters in the background (a Transfer) while the next step's forward
// pass starts on the layers already pulled; against forward and backward,
// clip and a local SGD update. Steps alternate between two batches of
// uniformly random tokens (the worst case for sparse rows: real text
// repeats its frequent words). transfer=rows moves, as workers do, only the
// embedding rows the batches use (the push, this batch's; the pull, the
// next one's); transfer=dense moves the tables whole (--dense-transfer).
// Each iteration times a run of 8 steps of each kind, side by side; the PS
// run ends by waiting for its last transfer, so its cost is counted whole
// (in training it is paid once per job, here once per 8 steps).
// conn=inprocess connects the shards and the worker to the embedded NATS in
// memory, as `downpour train` does; conn=tcp over loopback, as roles in
// separate processes on one host do (measured with rows only, to keep the
// run's length). With -short (CI runs every benchmark once that way) a run
// is one step, with no warm-up run: it checks that the benchmark works, and
// its ratio means nothing.
func BenchmarkSyncOverheadW2Model(b *testing.B) {
	for _, c := range []struct {
		conn connKind
		rows bool
	}{{inProcess, true}, {inProcess, false}, {tcp, true}} {
		name := fmt.Sprintf("conn=%s/transfer=%s", c.conn, map[bool]string{true: "rows", false: "dense"}[c.rows])
		b.Run(name, func(b *testing.B) { syncOverheadW2Model(b, c.conn, c.rows) })
	}
}

func syncOverheadW2Model(b *testing.B, conn connKind, rows bool) {
	run := 8 // steps per timed run: the last transfer, a one-off of the run, is counted whole and shared by these
	if testing.Short() {
		run = 1
	}
	r := newRig(b, w2.Tensors(), 2, 0, conn)
	m := models.NewSeq2Seq[float32](w2)
	m.Init(1)
	batches := randomW2Batches()
	var ranges [2][][2]int
	for i, batch := range batches {
		if rows {
			ranges[i] = m.Ranges(batch, nil)
		}
	}
	r.client.ReadOrder(m.ReadOrder())
	opt := job.DefaultOptimizer("sgd", 1e-6)
	ctx := context.Background()
	if err := r.client.Pull(ctx, 0, m.Params()); err != nil {
		b.Fatal(err)
	}
	var xfer *Transfer
	// Where the PS run waits on the transfer: the forward pass for
	// parameters, the backward pass for the gradients to be sent, the step's
	// end for the rest (the last run's transfer included).
	var waitParams, waitGrads, waitEnd time.Duration
	hooks := &models.Hooks{
		NeedParams: func(lo, hi int) {
			if xfer != nil {
				t := time.Now()
				if err := xfer.WaitRange(lo, hi); err != nil {
					b.Fatal(err)
				}
				waitParams += time.Since(t)
			}
		},
		GradsFree: func() {
			if xfer != nil {
				t := time.Now()
				if err := xfer.WaitPushed(); err != nil {
					b.Fatal(err)
				}
				waitGrads += time.Since(t)
			}
		},
	}
	settle := func() {
		if xfer != nil {
			t := time.Now()
			if err := xfer.Wait(); err != nil {
				b.Fatal(err)
			}
			waitEnd += time.Since(t)
			xfer = nil
		}
	}
	psRun := func() {
		m.Hooks = hooks
		for k := range run {
			m.Loss(batches[k%2], true)
			settle()
			m.ClipGrads(5)
			xfer = r.client.StartPushPullSparse(ctx, r.step, m.Grads(), m.Params(), ranges[k%2], ranges[(k+1)%2])
			r.step++
		}
		settle()
		m.Hooks = nil
	}
	localRun := func() {
		for k := range run {
			m.Loss(batches[k%2], true)
			m.ClipGrads(5)
			Apply(opt, m.Params(), m.Grads(), nil, 0)
		}
	}
	if !testing.Short() {
		psRun()
		localRun()
	}
	waitParams, waitGrads, waitEnd = 0, 0, 0
	var ps, local []time.Duration
	for b.Loop() {
		start := time.Now()
		psRun()
		mid := time.Now()
		localRun()
		ps, local = append(ps, mid.Sub(start)/time.Duration(run)), append(local, time.Since(mid)/time.Duration(run))
	}
	b.ReportMetric(float64(median(ps).Milliseconds()), "ms/ps_step")
	b.ReportMetric(float64(median(local).Milliseconds()), "ms/local_step")
	b.ReportMetric(median(ps).Seconds()/median(local).Seconds(), "ratio")
	steps := float64(len(ps) * run)
	b.ReportMetric(float64(waitParams.Milliseconds())/steps, "ms_wait_params/ps_step")
	b.ReportMetric(float64(waitGrads.Milliseconds())/steps, "ms_wait_grads/ps_step")
	b.ReportMetric(float64(waitEnd.Milliseconds())/steps, "ms_wait_end/ps_step")
}

// BenchmarkTransferCombined moves a step through a Transfer, as workers
// do, two ways side by side in each iteration: each group's push bringing
// its pull back in one request (the default where a step's messages fit in
// the window), and a push then a pull (SeparatePulls). It reports the
// median time and CPU of a step each way (CPU: this process's, which serves
// NATS and the shards too: what the step costs the machine) and their
// ratios, separate over combined. Over TCP, as roles in separate processes.
//
// transfer=dense is the scale harness's step: 65536 floats in 8 tensors
// over 16 shards, one message a shard. transfer=rows is an embedding
// table's step as Seq2Seq workers move it: a 4000x64 table and 4 dense
// tensors of 8192 floats over 4 shards, the push carrying the rows of one
// batch (about a third of them) and the pull those of the next, as sparse
// blocks beside the dense ones.
func BenchmarkTransferCombined(b *testing.B) {
	b.Run("transfer=dense", func(b *testing.B) {
		var ts []models.Tensor
		for i := range 8 {
			ts = append(ts, models.Tensor{Name: fmt.Sprint("t", i), Shape: []int{8192}})
		}
		transferCombined(b, ts, 16, nil)
	})
	b.Run("transfer=rows", func(b *testing.B) {
		ts := []models.Tensor{{Name: "emb", Shape: []int{4000, 64}}}
		for i := range 4 {
			ts = append(ts, models.Tensor{Name: fmt.Sprint("t", i), Shape: []int{8192}})
		}
		rng := rand.New(rand.NewPCG(4, 4))
		emb := 4000 * 64
		ranges := [2][][2]int{append(randRanges(rng, emb, 64), [2]int{emb, emb + 4*8192}), append(randRanges(rng, emb, 64), [2]int{emb, emb + 4*8192})}
		transferCombined(b, ts, 4, &ranges)
	})
}

// transferCombined times steps of tensors over shards, combined and
// separate; with rows, step k pushes rows[k%2] and pulls rows[(k+1)%2].
func transferCombined(b *testing.B, ts []models.Tensor, shards int, rows *[2][][2]int) {
	r := newRig(b, ts, shards, 0, tcp)
	sep, err := NewClient(r.nc, "j", r.p, 0, 1)
	if err != nil {
		b.Fatal(err)
	}
	sep.SeparatePulls = true
	grads := r.grads
	if rows != nil {
		grads = zeroOutside(r.grads, rows[0])
		if gs, err := r.client.transferGroups(rows[0], rows[1]); err != nil || len(gs) > r.client.Window {
			b.Fatalf("%d groups (%v): more than the window, which would not combine them", len(gs), err)
		}
	}
	ctx := context.Background()
	step := func(c *Client) (time.Duration, time.Duration) {
		cpu0, start := cpuTime(b), time.Now()
		var x *Transfer
		if rows == nil {
			x = c.StartPushPull(ctx, r.step, grads, r.params)
		} else {
			x = c.StartPushPullSparse(ctx, r.step, grads, r.params, rows[0], rows[1])
		}
		if err := x.Wait(); err != nil {
			b.Fatal(err)
		}
		r.step++
		return time.Since(start), cpuTime(b) - cpu0
	}
	step(r.client)
	step(sep)
	var wall, cpu [2][]time.Duration
	for b.Loop() {
		for i, c := range []*Client{r.client, sep} {
			w, u := step(c)
			wall[i], cpu[i] = append(wall[i], w), append(cpu[i], u)
		}
	}
	b.ReportMetric(float64(median(wall[0]).Microseconds()), "us/step")
	b.ReportMetric(float64(median(wall[1]).Microseconds()), "separate_us/step")
	b.ReportMetric(float64(median(cpu[0]).Microseconds()), "cpu_us/step")
	b.ReportMetric(float64(median(cpu[1]).Microseconds()), "separate_cpu_us/step")
	b.ReportMetric(median(wall[1]).Seconds()/median(wall[0]).Seconds(), "time_ratio")
	b.ReportMetric(median(cpu[1]).Seconds()/median(cpu[0]).Seconds(), "cpu_ratio")
}

// cpuTime is this process's CPU time so far (user and system).
func cpuTime(b *testing.B) time.Duration {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		b.Fatal(err)
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}

// BenchmarkRoundTripTail measures the tail of a step's round trip at low
// load, as the scale harness's one worker and one shard see it: every
// 100 ms, a Transfer of 65,536 floats to one shard and back (one request,
// its push bringing its pull back), and beside it raw NATS request/reply
// of the same sizes (256 KiB each way, a responder on its own connection)
// on the same server, over TCP. It reports each one's p50 and p99 and
// their ratios: how much of the tail is NATS and the machine's, and how
// much the parameter server's. Run with -benchtime 300x (a minute).
func BenchmarkRoundTripTail(b *testing.B) {
	r := newRig(b, []models.Tensor{{Name: "x", Shape: []int{65536}}}, 1, 0, tcp)
	resp := r.dial()
	reply := written(4*65536+64, 3)
	sub, err := resp.Subscribe("raw.tail", func(m *nats.Msg) { m.Respond(reply) })
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sub.Unsubscribe() })
	resp.Flush()
	req := written(4*65536+64, 5)
	ctx := context.Background()
	var ours, raw []time.Duration
	for b.Loop() {
		time.Sleep(50 * time.Millisecond)
		start := time.Now()
		if err := r.client.StartPushPull(ctx, r.step, r.grads, r.params).Wait(); err != nil {
			b.Fatal(err)
		}
		ours = append(ours, time.Since(start))
		r.step++
		time.Sleep(50 * time.Millisecond)
		start = time.Now()
		if _, err := r.nc.Request("raw.tail", req, 10*time.Second); err != nil {
			b.Fatal(err)
		}
		raw = append(raw, time.Since(start))
	}
	q := func(ds []time.Duration, p float64) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1e3
	}
	b.ReportMetric(q(ours, 0.5), "p50_ms")
	b.ReportMetric(q(ours, 0.99), "p99_ms")
	b.ReportMetric(q(raw, 0.5), "raw_p50_ms")
	b.ReportMetric(q(raw, 0.99), "raw_p99_ms")
	b.ReportMetric(q(ours, 0.99)/q(ours, 0.5), "p99/p50")
	b.ReportMetric(q(raw, 0.99)/q(raw, 0.5), "raw_p99/p50")
}

// randomW2Batches are two W2 batches (128 pairs of length 20) of uniformly
// random tokens: the worst case for sparse rows (real text repeats its
// frequent words).
func randomW2Batches() [2]*models.SeqBatch {
	rng := rand.New(rand.NewPCG(3, 3))
	var batches [2]*models.SeqBatch
	for i := range batches {
		batch := &models.SeqBatch{Size: 128, SrcLen: 20, TgtLen: 20}
		for range 128 * 20 {
			batch.Src = append(batch.Src, int32(rng.IntN(w2.SrcVocab)))
			batch.TgtIn = append(batch.TgtIn, int32(rng.IntN(w2.TgtVocab)))
			batch.TgtOut = append(batch.TgtOut, int32(rng.IntN(w2.TgtVocab)))
		}
		batches[i] = batch
	}
	return batches
}

// BenchmarkW2Replicated is the W2 sync step through 2 shards that keep one
// copy of each block (R=1) and through 2 shards that keep two (R=2:
// --ps-replicas 2, each step's update applied on the primary and sent
// down the chain to the backup before the next pull is answered), side by
// side on one NATS server, in process, alternating which goes first.
// step=model is the real step as BenchmarkSyncOverheadW2Model's
// transfer=rows times it (forward, backward, clip, the push and the next
// pull overlapped with the next forward pass; runs of 4 steps); step=ps is
// BenchmarkSyncOverheadW2's push and pull of a synthetic W2 gradient
// alone, no model compute: the replication's cost against the PS's own.
// It reports each median step time and their ratio, R=2 over R=1.
func BenchmarkW2Replicated(b *testing.B) {
	b.Run("step=model", func(b *testing.B) { w2Replicated(b, true) })
	b.Run("step=ps", func(b *testing.B) { w2Replicated(b, false) })
}

func w2Replicated(b *testing.B, model bool) {
	srv := testenv.NATS(b, 0)
	rigs := []*rig{rigOn(b, srv, w2.Tensors(), 2, 1, inProcess, "r1"), rigOn(b, srv, w2.Tensors(), 2, 2, inProcess, "r2")}
	run := 4
	if testing.Short() || !model {
		run = 1
	}
	var m *models.Seq2Seq[float32]
	var batches [2]*models.SeqBatch
	var ranges [2][][2]int
	if model {
		m = models.NewSeq2Seq[float32](w2)
		m.Init(1)
		batches = randomW2Batches()
		for i, batch := range batches {
			ranges[i] = m.Ranges(batch, nil)
		}
		for _, r := range rigs {
			r.client.ReadOrder(m.ReadOrder())
		}
	}
	ctx := context.Background()
	// step runs a run of steps through r and returns the time a step took.
	step := func(r *rig) time.Duration {
		start := time.Now()
		if !model {
			r.pushPull(b)
			return time.Since(start)
		}
		var xfer *Transfer
		wait := func(err error) {
			if err != nil {
				b.Fatal(err)
			}
		}
		m.Hooks = &models.Hooks{
			NeedParams: func(lo, hi int) {
				if xfer != nil {
					wait(xfer.WaitRange(lo, hi))
				}
			},
			GradsFree: func() {
				if xfer != nil {
					wait(xfer.WaitPushed())
				}
			},
		}
		wait(r.client.Pull(ctx, r.step, m.Params()))
		start = time.Now()
		for k := range run {
			m.Loss(batches[k%2], true)
			if xfer != nil {
				wait(xfer.Wait())
				xfer = nil
			}
			m.ClipGrads(5)
			xfer = r.client.StartPushPullSparse(ctx, r.step, m.Grads(), m.Params(), ranges[k%2], ranges[(k+1)%2])
			r.step++
		}
		wait(xfer.Wait())
		m.Hooks = nil
		return time.Since(start) / time.Duration(run)
	}
	if !testing.Short() {
		for _, r := range rigs {
			step(r)
		}
	}
	times := [2][]time.Duration{}
	i := 0
	for b.Loop() {
		for k := range 2 {
			j := (i + k) % 2 // who goes first alternates
			times[j] = append(times[j], step(rigs[j]))
		}
		i++
	}
	one, two := median(times[0]), median(times[1])
	b.ReportMetric(float64(one.Microseconds())/1e3, "ms/step_R1")
	b.ReportMetric(float64(two.Microseconds())/1e3, "ms/step_R2")
	b.ReportMetric(two.Seconds()/one.Seconds(), "ratio")
}
