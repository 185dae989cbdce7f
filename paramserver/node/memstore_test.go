package node

import (
	"context"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/memstore"
	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/paramserver"
)

// A shard's placement handover, against the in-memory store: it claims
// its index, serves the job's placement, leaves it for the next one when
// the coordinator re-places the job (serving the new version's subjects
// only), and stops when the job is done; its lease ends with it.
func TestPlacementHandoverInMemory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc := testenv.NATSConn(t, 0)
	c := memstore.New()
	spec := job.Default()
	spec.Name, spec.Shards, spec.Seq2Seq.Hidden, spec.Seq2Seq.Embed = "hand", 1, 8, 4
	st := c.Job(spec.Name)
	p := job.Place(spec.Tensors(), spec.BlockSize, 1)
	if _, _, _, err := st.Create(ctx, nil, &spec, p, false); err != nil {
		t.Fatal(err)
	}
	served := make(chan int64, 4)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Store: st, NATS: nc, Log: quiet, Shard: -1,
			Ready: func(_ int, svc *paramserver.Service) {
				lk, _ := st.Look(ctx)
				served <- lk.Shards[0].Member.Placement
			}})
	}()
	serving := func(want int64) {
		t.Helper()
		select {
		case v := <-served:
			if v != want {
				t.Fatalf("serves placement %d, want %d", v, want)
			}
		case err := <-done:
			t.Fatalf("Run returned %v", err)
		case <-time.After(10 * time.Second):
			t.Fatalf("placement %d not served", want)
		}
		q, _, _ := st.Placement(ctx)
		cl, err := paramserver.NewClient(nc, spec.Name, q, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if clock, err := cl.Clock(ctx); err != nil || clock != 0 {
			t.Fatalf("placement %d's shard answers clock %d, %v", want, clock, err)
		}
	}
	serving(1)
	q, err := p.Reshard(1, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Place(ctx, nil, q, nil); err != nil {
		t.Fatal(err)
	}
	serving(2)
	if ok, _ := st.Served(ctx, 1, 0); !ok {
		t.Fatal("placement 1's shard 0 is not marked served")
	}
	if err := st.MarkDone(ctx, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the shard did not stop with the job")
	}
	if lk, _ := st.Look(ctx); len(lk.Shards) != 0 {
		t.Fatalf("the shard's seat outlived it: %+v", lk.Shards)
	}
}
