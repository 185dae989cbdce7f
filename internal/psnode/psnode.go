// Package psnode runs one parameter-server shard as a member of a job: it
// claims a shard index in etcd under a lease, reads the spec and placement,
// initialises its blocks, serves them on NATS (paramserver.Service) and stops
// when the job is done.
package psnode

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
)

// Config is a shard's connections and limits.
type Config struct {
	Job  string
	NATS *nats.Conn
	Etcd *clientv3.Client
	Log  *slog.Logger
	// Shard is the index to serve, or -1 to claim the lowest free one.
	Shard int
	// LeaseTTL in seconds; default 10.
	LeaseTTL int64
	// WaitTimeout bounds the wait for the job's spec and placement; default 5 minutes.
	WaitTimeout time.Duration
	// Ready, when set, is called with the shard's service once it serves.
	Ready func(shard int, svc *paramserver.Service)
}

// Run serves a shard of the job until the job is done or ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 10
	}
	if cfg.WaitTimeout == 0 {
		cfg.WaitTimeout = 5 * time.Minute
	}
	if err := wire.ValidJob(cfg.Job); err != nil {
		return err
	}
	keys := job.KeysFor(cfg.Job)
	specData, err := job.Wait(ctx, cfg.Etcd, keys.Spec(), cfg.WaitTimeout)
	if err != nil {
		return fmt.Errorf("job %s not found (start its coordinator first): %w", cfg.Job, err)
	}
	spec, err := job.DecodeSpec(specData)
	if err != nil {
		return err
	}
	placeData, err := job.Wait(ctx, cfg.Etcd, keys.Placement(), cfg.WaitTimeout)
	if err != nil {
		return err
	}
	p, err := paramserver.DecodePlacement(placeData)
	if err != nil {
		return err
	}
	lease, err := job.Grant(ctx, cfg.Etcd, cfg.LeaseTTL)
	if err != nil {
		return err
	}
	defer lease.Close()
	idx, err := claim(ctx, cfg.Etcd, keys, spec.Shards, cfg.Shard, lease.ID)
	if err != nil {
		return err
	}
	log := cfg.Log.With("shard", idx)

	// Initialise the owned blocks from the seed: each tensor's initial value
	// is a function of (seed, tensor), whichever shard computes it.
	blocks := p.OnShard(idx)
	offsets := models.Offsets(p.Tensors)
	cur := -1
	var full []float32
	core := paramserver.NewCore(spec.Workers, spec.LR, blocks, func(b paramserver.Block, dst []float32) {
		if b.Tensor != cur {
			t := p.Tensors[b.Tensor]
			full = make([]float32, t.Size())
			spec.InitTensor(full, t)
			cur = b.Tensor
		}
		start := b.Offset - offsets[b.Tensor]
		copy(dst, full[start:start+b.Len])
	})
	svc, err := paramserver.Serve(cfg.NATS, spec.Name, idx, core, log)
	if err != nil {
		return err
	}
	defer svc.Close()
	log.Info("serving", "blocks", len(blocks))
	if cfg.Ready != nil {
		cfg.Ready(idx, svc)
	}
	// Serve until the job is done (no deadline: a job runs as long as it runs).
	done := make(chan error, 1)
	go func() {
		done <- job.WaitPrefix(ctx, cfg.Etcd, keys.State(), 1<<62, func(kvs map[string][]byte) bool {
			return string(kvs[keys.State()]) == job.StateDone
		})
	}()
	select {
	case err := <-done:
		if err == nil {
			log.Info("job done", "clock", svc.Clock())
		}
		return err
	case <-lease.Lost():
		return fmt.Errorf("shard %d lost its etcd lease", idx)
	}
}

// claim takes shard index want, or the lowest free index when want < 0, by
// creating its membership key under the lease in a transaction.
func claim(ctx context.Context, cli *clientv3.Client, keys job.Keys, shards, want int, lease clientv3.LeaseID) (int, error) {
	if want >= shards {
		return 0, fmt.Errorf("shard %d does not exist: the job has %d shards", want, shards)
	}
	lo, hi := 0, shards
	if want >= 0 {
		lo, hi = want, want+1
	}
	for i := lo; i < hi; i++ {
		k := keys.Shard(i)
		r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
			Then(clientv3.OpPut(k, "{}", clientv3.WithLease(lease))).Commit()
		if err != nil {
			return 0, fmt.Errorf("claiming shard %d: %w", i, err)
		}
		if r.Succeeded {
			return i, nil
		}
	}
	if want >= 0 {
		return 0, fmt.Errorf("shard %d is already served by a live process", want)
	}
	return 0, fmt.Errorf("all %d shards of the job are already served", shards)
}
