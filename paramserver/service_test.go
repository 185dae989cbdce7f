package paramserver

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
)

func startNATS(t *testing.T, maxPayload int32) *nats.Conn {
	t.Helper()
	s, err := embedded.StartNATS(t.TempDir(), maxPayload)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// Two ranks train through two shards over a real NATS server, with a small
// max_payload so that pushes and pulls are cut into several messages; the
// result must equal the single-process reference bit for bit.
func TestServiceSyncOverNATS(t *testing.T) {
	nc := startNATS(t, 64<<10)
	ts := []models.Tensor{{Name: "big", Shape: []int{300, 200}}, {Name: "small", Shape: []int{17}}}
	const ranks, steps, lr = 2, 3, 0.05
	p := Place(ts, 5000, 2)
	cores := newCores(p, ranks, lr)
	for s, core := range cores {
		svc, err := Serve(nc, "j", s, core, quiet)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(svc.Close)
	}
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
	for s := 0; s < steps; s++ {
		reference(ref, gs[s], lr)
	}
	for r := range final {
		if !slices.Equal(final[r], ref) {
			t.Fatalf("rank %d pulled parameters that differ from the reference", r)
		}
	}
}

// Garbage, unknown jobs and bad blocks are answered with their kind and
// counted; the shard keeps serving.
func TestServiceRefusesBadInput(t *testing.T) {
	nc := startNATS(t, 0)
	p := Place(testTensors, 8, 1)
	svc, err := Serve(nc, "j", 0, newCores(p, 1, 0.1)[0], quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	ask := func(subj string, data []byte) wire.Kind {
		m, err := nc.Request(subj, data, 5*time.Second)
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
	push, pull := wire.PushSubject("j", 0), wire.PullSubject("j", 0)
	for _, c := range []struct {
		subj string
		data []byte
		want wire.Kind
	}{
		{push, []byte("\xc1garbage"), wire.Malformed},
		{pull, nil, wire.Malformed},
		{push, enc(&wire.PushRequest{V: wire.Version, Job: "other"}), wire.UnknownJob},
		{pull, enc(&wire.PullRequest{V: wire.Version, Job: "j", IDs: []uint32{77}}), wire.UnknownBlock},
		{push, enc(&wire.PushRequest{V: wire.Version, Job: "j", Blocks: []wire.Block{{ID: 0, Data: make([]byte, 4)}}}), wire.BadLength},
		{push, enc(&wire.PushRequest{V: 9, Job: "j"}), wire.BadVersion},
	} {
		if got := ask(c.subj, c.data); got != c.want {
			t.Errorf("%s %q: kind %v, want %v", c.subj, c.data, got, c.want)
		}
	}
	want := map[wire.Kind]int64{wire.Malformed: 2, wire.UnknownJob: 1, wire.UnknownBlock: 1, wire.BadLength: 1, wire.BadVersion: 1}
	if got := svc.Refused(); !maps.Equal(got, want) {
		t.Errorf("refused counters %v, want %v", got, want)
	}
	// Still serving.
	c, _ := NewClient(nc, "j", p, 0, 1)
	w := make([]float32, p.Size())
	if err := c.Pull(context.Background(), 0, w); err != nil || !slices.Equal(w, initFlat(p)) {
		t.Fatalf("pull after bad input: %v", err)
	}
}
