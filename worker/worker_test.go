package worker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/internal/testenv"
)

// A worker for a job nobody created gives up after its wait timeout with an
// error that says what to do, and leaves no membership behind.
func TestUnknownJobTimesOut(t *testing.T) {
	c := testenv.Servers(t)
	nc := testenv.Conn(t, c.NATSURL)
	cli := testenv.EtcdClient(t, c.EtcdEndpoints)
	start := time.Now()
	err := Run(context.Background(), Config{Store: etcdstore.New(cli, "ghost"), NATS: nc, WaitTimeout: 300 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if !errors.Is(err, etcdstore.ErrTimeout) || !strings.Contains(err.Error(), "start its coordinator first") {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("gave up after %v", d)
	}
	r, _ := cli.Get(context.Background(), etcdstore.KeysFor("ghost").Root(), clientv3.WithPrefix())
	if len(r.Kvs) != 0 {
		t.Fatalf("left keys behind: %v", r.Kvs)
	}
	if err := Run(context.Background(), Config{Store: etcdstore.New(cli, "bad.name"), NATS: nc}); err == nil {
		t.Fatal("accepted an invalid job name")
	}
}

// With tasks, progress is reported by data shard and data step (each done
// once, whoever does it); without, by rank and the rank's step.
func TestProgressNames(t *testing.T) {
	s := at{Shard: 1, Data: 35, N: 97}
	spec := job.Default()
	spec.Mode, spec.TaskSteps = job.Async, 20
	if r, step := s.progress(&spec, 0); r != 1 || step != 35 {
		t.Errorf("with tasks: rank %d step %d, want data shard 1 step 35", r, step)
	}
	spec.Mode = job.Sync
	if r, step := s.progress(&spec, 0); r != 0 || step != 97 {
		t.Errorf("sync: rank %d step %d, want rank 0 step 97", r, step)
	}
}
