package node

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// A shard refuses to start from the snapshots of another job, or of another
// step than its placement starts from; from its own job's, it starts.
func TestNewShardRefusesForeignSnapshots(t *testing.T) {
	spec := job.Default()
	spec.Name, spec.Seq2Seq.Hidden, spec.Seq2Seq.Embed = "mine", 8, 4
	p := job.Place(spec.Tensors(), 64, 1)
	blocks := p.OnShard(0)
	own, err := newShard(&spec, p, blocks, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := own.RequestSnapshot(0); err != nil {
		t.Fatal(err)
	}
	snap := own.Snapshots()[0]
	dir := t.TempDir()
	write := func(jobName string) string {
		snap.Job, snap.Shard, snap.Placement = jobName, 0, 1
		path := filepath.Join(dir, jobName+".dpss")
		if err := paramserver.WriteSnapshot(path, snap); err != nil {
			t.Fatal(err)
		}
		return path
	}
	mine, theirs := write("mine"), write("theirs")
	if _, err := newShard(&spec, p, blocks, theirs); err == nil || !strings.Contains(err.Error(), `belongs to job "theirs"`) {
		t.Fatalf("--restore of another job's snapshot: %v", err)
	}
	q, _ := p.Reshard(1, 7, []string{mine})
	if _, err := newShard(&spec, q, q.OnShard(0), ""); err == nil || !strings.Contains(err.Error(), "at step 0; placement 2 starts job \"mine\" at step 7") {
		t.Fatalf("a placement's snapshot of another step: %v", err)
	}
	q, _ = p.Reshard(1, 0, []string{theirs})
	if _, err := newShard(&spec, q, q.OnShard(0), ""); err == nil || !strings.Contains(err.Error(), `of job "theirs"`) {
		t.Fatalf("a placement's snapshot of another job: %v", err)
	}
	if _, err := newShard(&spec, p, blocks, mine); err != nil {
		t.Fatalf("its own snapshot: %v", err)
	}
}

// servers starts an embedded NATS server and etcd for a test, with a
// context, an etcd client and a NATS connection, all ended at its cleanup.
func servers(t *testing.T) (context.Context, *clientv3.Client, *nats.Conn) {
	t.Helper()
	c := testenv.Servers(t) // cleanups run last-registered first: the clients go before the servers
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cli := testenv.EtcdClient(t, c.EtcdEndpoints)
	return ctx, cli, testenv.Conn(t, c.NATSURL)
}

// In an elastic ssp job, a rank whose holder is given up on (the
// coordinator deletes its assignment) stops holding the other ranks back,
// and its holder's epoch is fenced off.
func TestGoneHolderIdlesItsRank(t *testing.T) {
	ctx, cli, nc := servers(t)
	p := job.Place([]models.Tensor{{Name: "w", Shape: []int{4}}}, 4, 1)
	cfg := job.ShardConfig{Mode: job.SSP, Staleness: 1, Ranks: 2, Elastic: true, Optimizer: job.DefaultOptimizer("sgd", 1)}
	shard := paramserver.NewShard(cfg, p.OnShard(0), func(job.Block, []float32) {})
	svc, err := paramserver.Serve(nc, shard, paramserver.ServiceConfig{Job: "j", Shard: 0, Placement: p.Version, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	keys := etcdstore.KeysFor("j")
	if _, err := cli.Put(ctx, keys.Assign("gone"), `{"rank":0,"epoch":1,"data_shard":0}`); err != nil {
		t.Fatal(err)
	}
	go watchHolders(ctx, etcdstore.New(cli, "j"), svc, quiet)
	time.Sleep(100 * time.Millisecond) // the watch is on

	g := make([]float32, 4)
	gone, _ := paramserver.NewClient(nc, "j", p, 0, 1)
	if err := gone.Push(ctx, 0, g); err != nil { // rank 0 is active at clock 1
		t.Fatal(err)
	}
	alive, _ := paramserver.NewClient(nc, "j", p, 1, 1)
	for step := int64(0); step < 4; step++ {
		if err := alive.Push(ctx, step, g); err != nil {
			t.Fatal(err)
		}
	}
	pulled := make(chan error, 1)
	go func() { pulled <- alive.Pull(ctx, 4, make([]float32, 4)) }() // needs every active rank at 3
	select {
	case err := <-pulled:
		t.Fatalf("the pull did not wait for rank 0: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := cli.Delete(ctx, keys.Assign("gone")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-pulled:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the pull still waits for the gone holder's rank")
	}
	if err := gone.Push(ctx, 1, g); !errors.Is(err, &wire.Error{Kind: wire.StaleEpoch}) {
		t.Fatalf("the gone holder's push: %v, want it fenced off", err)
	}
}

// A process that claims a shard index of a placement that another process
// served (and died serving, before the coordinator replaced the placement)
// does not serve it afresh: the job is past the placement's start, and
// workers would push steps its fresh state cannot take. It waits for the
// placement that replaces it, and serves that.
func TestReplacementWaitsForTheNextPlacement(t *testing.T) {
	ctx, cli, nc := servers(t)
	spec := job.Default()
	spec.Name, spec.Shards, spec.Seq2Seq.Hidden, spec.Seq2Seq.Embed = "j", 1, 8, 4
	p := job.Place(spec.Tensors(), spec.BlockSize, 1)
	keys := etcdstore.KeysFor(spec.Name)
	for k, v := range map[string]string{keys.Spec(): string(spec.Encode()), keys.Placement(): string(p.Encode()),
		keys.State(): job.StateRunning, keys.Served(p.Version, 0): ""} {
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	served := make(chan int64, 4)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Store: etcdstore.New(cli, spec.Name), NATS: nc, Log: quiet, Shard: 0, LeaseTTL: 2,
			Ready: func(int, *paramserver.Service) {
				r, _ := cli.Get(ctx, keys.Shard(0))
				var m job.ShardMember
				if len(r.Kvs) == 1 && json.Unmarshal(r.Kvs[0].Value, &m) == nil {
					served <- m.Placement
				}
			}})
	}()
	select {
	case v := <-served:
		t.Fatalf("served placement %d, whose shard 0 a gone process had served", v)
	case err := <-done:
		t.Fatalf("Run returned %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	q, err := p.Reshard(1, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, keys.Placement(), string(q.Encode())); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-served:
		if v != q.Version {
			t.Fatalf("served placement %d, want %d", v, q.Version)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the replacement did not serve the new placement")
	}
}
