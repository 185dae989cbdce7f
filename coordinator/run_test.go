package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/paramserver"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func etcd(t *testing.T) *clientv3.Client {
	t.Helper()
	e, err := embedded.StartEtcd(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli, err := job.Connect(context.Background(), []string{e.Config().AdvertiseClientUrls[0].String()}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Run against a real etcd: workers register under leases, get ranks, report
// done; the coordinator calls OnFinish once and marks the job done. A second
// coordinator with another spec is refused, and so is a rerun of the job.
func TestRunAssignsAndFinishes(t *testing.T) {
	cli := etcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	spec := job.Default()
	spec.Name, spec.Workers = "c1", 2
	keys := job.KeysFor(spec.Name)
	finished := 0
	errc := make(chan error, 1)
	go func() {
		errc <- Run(ctx, cli, Config{Spec: spec, Log: quiet, OnFinish: func(ctx context.Context, p *paramserver.Placement) error {
			finished++
			return nil
		}})
	}()
	if _, err := job.Wait(ctx, cli, keys.Spec(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	other := spec
	other.Steps++
	if err := Run(ctx, cli, Config{Spec: other, Log: quiet}); !errors.Is(err, ErrSpecConflict) {
		t.Fatalf("second coordinator with another spec: %v", err)
	}
	ranks := map[int]bool{}
	for _, id := range []string{"w0", "w1"} {
		l, err := job.Grant(ctx, cli, 5)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		cli.Put(ctx, keys.Worker(id), "{}", clientv3.WithLease(l.ID))
		v, err := job.Wait(ctx, cli, keys.Assign(id), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var a job.Assignment
		json.Unmarshal(v, &a)
		if a.Epoch != 1 || a.DataShard != a.Rank {
			t.Fatalf("assignment %+v", a)
		}
		ranks[a.Rank] = true
	}
	if !ranks[0] || !ranks[1] {
		t.Fatalf("ranks given: %v", ranks)
	}
	cli.Put(ctx, keys.Done(0), "1")
	cli.Put(ctx, keys.Done(1), "1")
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if finished != 1 {
		t.Fatalf("OnFinish ran %d times", finished)
	}
	if v, _ := job.Wait(ctx, cli, keys.State(), time.Second); string(v) != job.StateDone {
		t.Fatalf("state %q", v)
	}
	if err := Run(ctx, cli, Config{Spec: spec, Log: quiet}); !errors.Is(err, ErrJobDone) {
		t.Fatalf("rerun of a finished job: %v", err)
	}
}

func TestRunJoinTimeout(t *testing.T) {
	cli := etcd(t)
	spec := job.Default()
	spec.Name = "lonely"
	err := Run(context.Background(), cli, Config{Spec: spec, Log: quiet, JoinTimeout: 1500 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "2 ranks have had no worker") {
		t.Fatalf("got %v", err)
	}
}

func TestRunRefusesMoreShardsThanBlocks(t *testing.T) {
	cli := etcd(t)
	spec := job.Default()
	spec.Shards, spec.BlockSize = 1000, 2<<20
	if err := Run(context.Background(), cli, Config{Spec: spec, Log: quiet}); err == nil || !strings.Contains(err.Error(), "lower --block-size") {
		t.Fatalf("got %v", err)
	}
}
