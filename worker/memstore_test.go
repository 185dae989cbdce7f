package worker_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/coordinator"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/memstore"
	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
	"github.com/downpour-ml/downpour/paramserver/node"
	"github.com/downpour-ml/downpour/worker"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// runInMemory runs a whole sync job on the in-memory store (and a real
// NATS server): its coordinator, shards and workers, each on its own
// connection; during runs beside it. It returns the final parameters.
func runInMemory(t *testing.T, spec job.Spec, during func(st job.Store)) []float32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url := testenv.NATS(t, 0).ClientURL()
	st := memstore.New().Job(spec.Name)
	var final []float32
	errc := make(chan error, 1+spec.Shards+spec.Workers)
	go func() {
		nc := testenv.Conn(t, url)
		errc <- coordinator.Run(ctx, st, coordinator.Config{Spec: spec, Log: quiet, OnFinish: func(ctx context.Context, p *job.Placement) error {
			c, err := paramserver.NewClient(nc, spec.Name, p, 0, 0)
			if err != nil {
				return err
			}
			final = make([]float32, p.Size())
			return c.Pull(ctx, spec.Steps, final)
		}})
	}()
	dir := t.TempDir()
	for i := range spec.Shards {
		nc := testenv.Conn(t, url)
		go func() {
			errc <- node.Run(ctx, node.Config{Store: st, NATS: nc, Log: quiet, Shard: i, DataDir: filepath.Join(dir, fmt.Sprint("ps-", i))})
		}()
	}
	for i := range spec.Workers {
		nc := testenv.Conn(t, url)
		go func() {
			errc <- worker.Run(ctx, worker.Config{Store: st, ID: fmt.Sprint("w", i), NATS: nc, Log: quiet})
		}()
	}
	if during != nil {
		during(st)
	}
	for range 1 + spec.Shards + spec.Workers {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	return final
}

// A worker's era change, on the in-memory store: the job is re-placed
// while the worker trains (an operator's reshard, after a checkpoint); the
// worker drops its era, carries on under the new placement from the
// checkpoint, and the job ends with the parameters of the run that was
// never re-placed, bit for bit.
func TestEraChangeInMemory(t *testing.T) {
	spec := job.Default()
	spec.Name, spec.Workers, spec.Shards, spec.Steps = "era", 1, 2, 400
	spec.Seq2Seq.Hidden, spec.Seq2Seq.Embed, spec.BlockSize, spec.CheckpointEvery = 16, 8, 256, 20
	want := runInMemory(t, spec, nil)
	var moved *job.Placement
	got := runInMemory(t, spec, func(st job.Store) {
		ctx := t.Context()
		if _, _, err := st.NextCheckpoint(ctx, 0); err != nil {
			t.Error(err)
			return
		}
		if err := st.RequestReshard(ctx, 2); err != nil {
			t.Error(err)
			return
		}
		ans, err := st.ReshardAnswer(ctx, 10*time.Second)
		if err != nil || ans.Status != "done" {
			t.Errorf("reshard: %+v %v", ans, err)
			return
		}
		moved, _, _ = st.Placement(ctx)
	})
	if moved == nil || moved.Version != 2 || moved.Start == 0 {
		t.Fatalf("the job was not re-placed from a checkpoint: %+v", moved)
	}
	if len(got) == 0 || !slices.Equal(got, want) {
		t.Fatalf("re-placed at step %d: the final parameters differ from the run that was not", moved.Start)
	}
}

// A model whose softmax is cut into vocabulary blocks trains through the
// parameter servers like any other: the same final parameters on 1 shard
// as on 3 (the blocks' tensors placed apart), bit for bit.
func TestSoftmaxBlocksThroughShardsInMemory(t *testing.T) {
	spec := job.Default()
	spec.Name, spec.Workers, spec.Steps = "blocks", 2, 60
	spec.Seq2Seq.Hidden, spec.Seq2Seq.Embed, spec.Seq2Seq.SoftmaxBlocks, spec.BlockSize = 16, 8, 3, 128
	spec.Shards = 1
	one := runInMemory(t, spec, nil)
	spec.Shards = 3
	three := runInMemory(t, spec, nil)
	if len(one) == 0 || !slices.Equal(one, three) {
		t.Fatal("the final parameters on 1 shard and on 3 differ")
	}
	if want := models.TotalSize(spec.Tensors()); len(one) != want {
		t.Fatalf("%d parameters, want %d", len(one), want)
	}
}

// A worker pinned to a replica the job does not have is refused at once,
// rather than waiting for a seat that will never be free.
func TestPinnedWorkerOutsideTheJobIsRefused(t *testing.T) {
	spec := job.Default()
	spec.Name, spec.Workers = "pin", 2
	st := memstore.New().Job(spec.Name)
	if _, _, _, err := st.Create(t.Context(), nil, &spec, job.Place(spec.Tensors(), spec.BlockSize, 1), false); err != nil {
		t.Fatal(err)
	}
	nc := testenv.Conn(t, testenv.NATS(t, 0).ClientURL())
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err := worker.Run(ctx, worker.Config{Store: st, ID: "w", NATS: nc, Log: quiet, Member: job.PinTo(2), WaitTimeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "pinned to replica 2, but job pin has replicas 0 to 1") {
		t.Fatalf("got %v", err)
	}
}
