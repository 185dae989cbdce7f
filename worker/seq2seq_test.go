package worker

import (
	"context"
	"io"
	"log/slog"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
)

// stepRig is one rank of a small Seq2Seq job against real shards on an
// in-process NATS server, with no etcd: the placement and the assignment
// are given, as runEra gives them to a trainer.
type stepRig struct {
	spec *job.Spec
	p    *job.Placement
	nc   *nats.Conn
	w0   []float32 // the initial parameters
}

func newStepRig(t *testing.T, mode string, nFetch, nPush int64) *stepRig {
	t.Helper()
	nc := testenv.NATSConn(t, 0)
	spec := job.Default()
	spec.Name, spec.Workers, spec.Shards, spec.Mode = "steps", 1, 2, mode
	spec.Seq2Seq.Embed, spec.Seq2Seq.Hidden, spec.Seq2Seq.Layers = 8, 8, 1
	spec.Batch, spec.BlockSize, spec.NFetch, spec.NPush, spec.LogEvery = 4, 64, nFetch, nPush, 2
	spec.ClipNorm = 0.5 // small enough that every step clips
	spec.Optimizer = job.DefaultOptimizer("momentum", 0.1)
	if err := spec.Resolve(); err != nil {
		t.Fatal(err)
	}
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	r := &stepRig{spec: &spec, nc: nc, p: job.Place(spec.Tensors(), spec.BlockSize, spec.Shards)}
	r.w0 = make([]float32, r.p.Size())
	ts := spec.Tensors()
	for i, off := range models.Offsets(ts) {
		spec.InitTensor(r.w0[off:off+ts[i].Size()], ts[i])
	}
	cfg := spec.ShardConfig()
	for i := range spec.Shards {
		sh := paramserver.NewShard(cfg, r.p.OnShard(i), func(b job.Block, dst []float32) { copy(dst, r.w0[b.Offset:b.Offset+b.Len]) })
		svc, err := paramserver.Serve(nc, sh, paramserver.ServiceConfig{Job: spec.Name, Shard: i, Placement: r.p.Version,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(svc.Close)
	}
	return r
}

// params pulls what the shards hold now.
func (r *stepRig) params(t *testing.T) []float32 {
	t.Helper()
	c, err := paramserver.NewClient(r.nc, r.spec.Name, r.p, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	w := make([]float32, r.p.Size())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Pull(ctx, 0, w); err != nil {
		t.Fatal(err)
	}
	return w
}

// run drives a trainer through steps 0..n-1 of data shard 0, as runEra
// does, and returns the progress reports it published.
func (r *stepRig) run(t *testing.T, n int64) []wire.Progress {
	t.Helper()
	var mu sync.Mutex
	var reports []wire.Progress
	sub, err := r.nc.Subscribe(wire.ProgressSubject(r.spec.Name), func(m *nats.Msg) {
		p, err := wire.DecodeProgress(m.Data)
		if err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		reports = append(reports, *p)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	tr, err := newSeq2SeqTrainer(Config{NATS: r.nc, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), StepTimeout: 30 * time.Second},
		r.spec, job.Assignment{Rank: 0, Epoch: 1, DataShard: 0}, r.p)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.close()
	for s := range n {
		if err := tr.step(context.Background(), at{Shard: 0, Data: s, N: s, Last: s == n-1}); err != nil {
			t.Fatal(err)
		}
	}
	// The reports come back to this connection's subscriber on its own
	// goroutine: wait for the last step's.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		got := slices.Clone(reports)
		mu.Unlock()
		if len(got) > 0 && got[len(got)-1].Step == n-1 || time.Now().After(deadline) {
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reference computes the same steps in one process: gradients of each
// batch clipped, summed over n_push steps, applied by the optimizer, with
// the parameters read afresh every n_fetch steps; and the loss of each step.
func (r *stepRig) reference(t *testing.T, n int64) (w []float32, losses []float64) {
	t.Helper()
	spec := r.spec
	data, err := spec.OpenData()
	if err != nil {
		t.Fatal(err)
	}
	m := models.NewSeq2Seq[float32](spec.Seq2Seq)
	w = slices.Clone(r.w0)
	slots := make([][]float32, spec.Optimizer.Slots())
	for i := range slots {
		slots[i] = make([]float32, len(w))
	}
	acc := make([]float32, len(w))
	applied := int64(0)
	for s := range n {
		if s%spec.NFetch == 0 {
			copy(m.Params(), w)
		}
		b, err := data.Batch(spec.Seed, 0, s, spec.Batch)
		if err != nil {
			t.Fatal(err)
		}
		loss, _ := m.Loss(b, true)
		losses = append(losses, loss)
		g := m.Grads()
		m.ClipGrads(spec.ClipNorm)
		for i := range g {
			acc[i] += g[i]
		}
		if (s+1)%spec.NPush == 0 || s == n-1 {
			paramserver.Apply(spec.Optimizer, w, acc, slots, applied)
			applied++
			clear(acc)
		}
	}
	return w, losses
}

func sameBits(a, b []float32) int {
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}

// A sync step pulls, computes the clipped gradient of its batch and pushes
// it, with each push and the next pull in flight behind the next forward
// pass and only the embedding rows the batches use on the wire: after 5
// steps the shards hold what the plain computation gives, bit for bit.
func TestSeq2SeqStepSyncPipelined(t *testing.T) {
	r := newStepRig(t, job.Sync, 1, 1)
	reports := r.run(t, 5)
	want, losses := r.reference(t, 5)
	if i := sameBits(r.params(t), want); i >= 0 {
		t.Fatalf("parameter %d differs from the plain computation", i)
	}
	// Reports every LogEvery (2) steps and at the last: steps 0, 2, 4, each
	// with the losses of the steps since the last report.
	var steps []int64
	for _, p := range reports {
		steps = append(steps, p.Step)
	}
	if !slices.Equal(steps, []int64{0, 2, 4}) {
		t.Fatalf("progress at steps %v, want [0 2 4]", steps)
	}
	if got, want := reports[1].Loss, losses[1]+losses[2]; math.Abs(got-want) > 1e-9*math.Abs(want) {
		t.Errorf("report of step 2 sums loss %v, want %v (steps 1 and 2)", got, want)
	}
}

// An async rank with n_fetch = n_push = 2 pulls every other step and pushes
// the sum of two steps' clipped gradients every other step (and at its last
// step): 5 steps are 3 momentum updates, each on the parameters pulled
// before the two steps it sums.
func TestSeq2SeqStepAsyncAccumulates(t *testing.T) {
	r := newStepRig(t, job.Async, 2, 2)
	r.run(t, 5)
	want, _ := r.reference(t, 5)
	if i := sameBits(r.params(t), want); i >= 0 {
		t.Fatalf("parameter %d differs from the plain computation", i)
	}
}
