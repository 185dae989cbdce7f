// Package node runs one parameter-server shard as a member of a job: it
// claims a shard index in etcd under a lease, reads the spec and placement,
// initialises its blocks, serves them on NATS (paramserver.Service) and stops
// when the job is done.
package node

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/internal/metrics"
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
	// DataDir holds the shard's snapshots (DataDir/snapshots); empty: none.
	DataDir string
	// Restore, when set, is a snapshot file to start from instead of the
	// job's initial parameters.
	Restore string
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
	keys := etcdstore.KeysFor(cfg.Job)
	spec, p, err := etcdstore.Find(ctx, cfg.Etcd, cfg.Job, cfg.WaitTimeout)
	if err != nil {
		return err
	}
	// The data directory is the job's; with retention on, a shard deletes
	// its snapshots older than the checkpoints the job keeps (retain.go).
	var retained string
	if cfg.DataDir != "" {
		dir := filepath.Join(cfg.DataDir, "snapshots")
		if err := claimDir(dir, cfg.Job); err != nil {
			return err
		}
		if spec.KeepCheckpoints > 0 {
			retained = dir
			rctx, cancel := context.WithCancel(ctx)
			defer cancel()
			go retain(rctx, cfg.Etcd, cfg.Job, dir, spec.KeepCheckpoints, cfg.Log)
		}
	}
	lease, err := etcdstore.Grant(ctx, cfg.Etcd, cfg.LeaseTTL)
	if err != nil {
		return err
	}
	defer lease.Close()
	// Claim an index of the current placement. When none is free, wait: a
	// later placement may have more shards, or a dead holder's lease may
	// expire (as when a stopped job is resumed).
	var idx int
	deadline := time.Now().Add(cfg.WaitTimeout)
	for said := false; ; said = true {
		if idx, err = claim(ctx, cfg.Etcd, keys, p.Shards, cfg.Shard, lease.ID); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w (waited %v)", err, cfg.WaitTimeout)
		}
		if !said {
			cfg.Log.Info("no shard index to claim yet; waiting", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		if p, _, err = etcdstore.ReadPlacement(ctx, cfg.Etcd, cfg.Job); err != nil {
			return err
		}
	}
	log := cfg.Log.With("shard", idx)
	restore := cfg.Restore
	for {
		if idx >= p.Shards {
			log.Info("placement has fewer shards: leaving", "placement", p.Version, "shards", p.Shards)
			_, err := cfg.Etcd.Delete(ctx, keys.Shard(idx))
			return err
		}
		next, err := serveEra(ctx, cfg, spec, p, idx, restore, lease, log)
		if err != nil {
			return err
		}
		if next == nil {
			if retained != "" {
				pruneOnce(ctx, cfg.Etcd, cfg.Job, retained, spec.KeepCheckpoints, log)
			}
			return nil
		}
		restore = ""
		p = next
	}
}

// serveEra serves shard idx of placement p until the job is done (nil), a
// newer placement appears (it is returned) or ctx ends.
func serveEra(ctx context.Context, cfg Config, spec *job.Spec, p *job.Placement, idx int, restore string,
	lease *etcdstore.Lease, log *slog.Logger) (*job.Placement, error) {
	keys := etcdstore.KeysFor(cfg.Job)
	if r, err := cfg.Etcd.Get(ctx, keys.Served(p.Version, idx)); err != nil {
		return nil, fmt.Errorf("shard %d: %w", idx, err)
	} else if len(r.Kvs) > 0 {
		return replaced(ctx, cfg, p, idx, log)
	}
	blocks := p.OnShard(idx)
	shard, err := newShard(spec, p, blocks, restore)
	if err != nil {
		return nil, fmt.Errorf("shard %d: %w", idx, err)
	}
	shard.Fence(p.Epochs)
	svcCfg := paramserver.ServiceConfig{Job: spec.Name, Shard: idx, Placement: p.Version, Log: log, Observer: metrics.Shard(spec.Name, idx)}
	if cfg.DataDir != "" {
		svcCfg.SnapshotDir = filepath.Join(cfg.DataDir, "snapshots") // made by Run
		svcCfg.SnapshotEvery = spec.CheckpointEvery
		svcCfg.OnSnapshot = func(path string, snap *paramserver.Snapshot) {
			rec, _ := json.Marshal(job.SnapshotRecord{Path: path, Step: snap.Step, Shard: idx, Placement: snap.Placement})
			// The record completes a checkpoint: retry it through an etcd
			// election or a lost member (the put is idempotent).
			for attempt := 1; ; attempt++ {
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := cfg.Etcd.Put(pctx, keys.ShardSnapshot(snap.Placement, snap.Step, idx), string(rec))
				cancel()
				if err == nil {
					return
				}
				if attempt == 5 || ctx.Err() != nil {
					log.Error("recording snapshot: giving up; the checkpoint of this step will not complete", "step", snap.Step, "err", err)
					return
				}
				log.Warn("recording snapshot: retrying", "step", snap.Step, "attempt", attempt, "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
				}
			}
		}
	} else if spec.CheckpointEvery > 0 {
		return nil, fmt.Errorf("the job checkpoints every %d steps: give the shard a data directory", spec.CheckpointEvery)
	}
	// Say which placement this shard serves, before serving it: if it dies
	// from now on, that placement's progress is lost and the coordinator
	// rolls the job back. Only one process in the placement's life may say
	// so: a replacement that finds the index served before (it claimed the
	// index after the server died, before the coordinator replaced the
	// placement) must not serve it afresh (workers far past its start would
	// push to a shard at its start), and waits for the new placement.
	member, _ := json.Marshal(job.ShardMember{Placement: p.Version})
	served := keys.Served(p.Version, idx)
	r, err := cfg.Etcd.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(served), "=", 0)).
		Then(clientv3.OpPut(served, ""), clientv3.OpPut(keys.Shard(idx), string(member), clientv3.WithLease(lease.ID))).Commit()
	if err != nil {
		return nil, fmt.Errorf("shard %d: recording its placement: %w", idx, err)
	}
	if !r.Succeeded {
		return replaced(ctx, cfg, p, idx, log)
	}
	svc, err := paramserver.Serve(cfg.NATS, shard, svcCfg)
	if err != nil {
		return nil, err
	}
	defer svc.Close()
	log.Info("serving", "blocks", len(blocks), "placement", p.Version, "from_step", p.Start)
	if cfg.Ready != nil {
		cfg.Ready(idx, svc)
	}
	// Serve until the job is done or re-placed (no deadline: a job runs as
	// long as it runs).
	type result struct {
		next *job.Placement
		err  error
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if spec.ShardConfig().Elastic {
		go watchHolders(wctx, cfg, svc, log)
	}
	done := make(chan result, 1)
	go func() {
		next, _, err := etcdstore.NextPlacement(wctx, cfg.Etcd, cfg.Job, p.Version)
		done <- result{next, err}
	}()
	select {
	case r := <-done:
		switch {
		case r.err != nil:
			return nil, r.err
		case r.next == nil:
			st := svc.Stats()
			log.Info("job done", "clock", svc.Clock(), "accepted", st.Accepted, "applied", st.Applied, "duplicates", st.Duplicates, "skipped", st.Skipped,
				"refused", svc.Refused())
		default:
			st := svc.Stats()
			log.Info("re-placed: leaving this placement", "placement", p.Version, "clock", svc.Clock(), "next", r.next.Version, "from_step", r.next.Start,
				"accepted", st.Accepted, "applied", st.Applied, "duplicates", st.Duplicates, "skipped", st.Skipped, "refused", svc.Refused())
		}
		return r.next, nil
	case <-lease.Lost():
		return nil, fmt.Errorf("shard %d lost its etcd lease", idx)
	}
}

// replaced waits for the placement that replaces p, whose shard idx a
// process that died had served, and returns it (nil when the job is done).
func replaced(ctx context.Context, cfg Config, p *job.Placement, idx int, log *slog.Logger) (*job.Placement, error) {
	log.Info("this placement's shard was served by a process that is gone: waiting for the placement that replaces it", "placement", p.Version)
	next, _, err := etcdstore.NextPlacement(ctx, cfg.Etcd, cfg.Job, p.Version)
	return next, err
}

// watchHolders (elastic ssp) marks a rank idle, at its next epoch, when its
// holder is given up on (the coordinator deletes the holder's assignment):
// a dead worker's rank must not hold the others back, and the dead worker
// is fenced off.
func watchHolders(ctx context.Context, cfg Config, svc *paramserver.Service, log *slog.Logger) {
	for resp := range cfg.Etcd.Watch(ctx, etcdstore.KeysFor(cfg.Job).Assigns(), clientv3.WithPrefix(), clientv3.WithPrevKV()) {
		if err := resp.Err(); err != nil {
			log.Warn("watching the ranks' holders", "err", err)
			return
		}
		for _, ev := range resp.Events {
			var a job.Assignment
			if ev.Type != clientv3.EventTypeDelete || ev.PrevKv == nil || json.Unmarshal(ev.PrevKv.Value, &a) != nil {
				continue
			}
			if err := svc.Idle(a.Rank, a.Epoch+1); err != nil {
				log.Warn("marking a rank idle", "rank", a.Rank, "err", err)
			} else {
				log.Info("rank's holder gone: the rank is idle", "rank", a.Rank, "fenced_below_epoch", a.Epoch+1)
			}
		}
	}
}

// newShard makes the shard's state: from the snapshot file restore when
// given; else, for a placement that starts from a checkpoint, from that
// checkpoint's snapshots; else from the job's initial parameters. Each
// tensor's initial value is a function of (seed, tensor), or the tensor's
// value in the checkpoint the job starts from, whichever shard computes it.
func newShard(spec *job.Spec, p *job.Placement, blocks []job.Block, restore string) (*paramserver.Shard, error) {
	if restore == "" && len(p.From) > 0 {
		var snaps []*paramserver.Snapshot
		for _, f := range p.From {
			snap, err := paramserver.ReadSnapshot(f)
			if err != nil {
				return nil, err
			}
			if snap.Job != spec.Name || snap.Step != p.Start {
				return nil, fmt.Errorf("snapshot %s is of job %q at step %d; placement %d starts job %q at step %d", f, snap.Job, snap.Step, p.Version, spec.Name, p.Start)
			}
			snaps = append(snaps, snap)
		}
		snap, err := paramserver.Gather(snaps, blocks)
		if err != nil {
			return nil, err
		}
		return paramserver.RestoreShard(spec.ShardConfig(), blocks, snap)
	}
	if restore != "" {
		snap, err := paramserver.ReadSnapshot(restore)
		if err != nil {
			return nil, err
		}
		if snap.Job != spec.Name {
			return nil, fmt.Errorf("snapshot %s belongs to job %q, not %q", restore, snap.Job, spec.Name)
		}
		return paramserver.RestoreShard(spec.ShardConfig(), blocks, snap)
	}
	init, err := spec.Initializer()
	if err != nil {
		return nil, err
	}
	offsets := models.Offsets(p.Tensors)
	cur := -1
	var full []float32
	return paramserver.NewShard(spec.ShardConfig(), blocks, func(b job.Block, dst []float32) {
		if b.Tensor != cur {
			t := p.Tensors[b.Tensor]
			full = make([]float32, t.Size())
			init(full, t)
			cur = b.Tensor
		}
		start := b.Offset - offsets[b.Tensor]
		copy(dst, full[start:start+b.Len])
	}), nil
}

// claim takes shard index want, or the lowest free index when want < 0, by
// creating its membership key under the lease in a transaction.
func claim(ctx context.Context, cli *clientv3.Client, keys etcdstore.Keys, shards, want int, lease clientv3.LeaseID) (int, error) {
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
