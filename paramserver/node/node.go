// Package node runs one parameter-server shard as a member of a job: it
// joins the job (job.Join: its spec and placement, a lease), claims a
// shard index in the job's store, initialises its blocks, serves them on
// NATS (paramserver.Service), one era per placement (job.Eras), and stops
// when the job is done.
package node

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/metrics"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/paramserver"
)

// Config is a shard's connections and limits.
type Config struct {
	Store job.Store // the job's
	NATS  *nats.Conn
	Log   *slog.Logger
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
func Run(ctx context.Context, cfg Config) (err error) {
	cfg.defaults()
	name := cfg.Store.Name()
	if err := wire.ValidJob(name); err != nil {
		return err
	}
	m, ctx, err := job.Join(ctx, cfg.Store, cfg.LeaseTTL, cfg.WaitTimeout)
	if err != nil {
		return err
	}
	defer m.Close()
	defer func() { err = job.Fenced(ctx, err) }()
	// The data directory is the job's; with retention on, a shard deletes
	// its snapshots older than the checkpoints the job keeps (retain.go).
	var retained string
	if cfg.DataDir != "" {
		dir := filepath.Join(cfg.DataDir, "snapshots")
		if err := claimDir(dir, name); err != nil {
			return err
		}
		if m.Spec.KeepCheckpoints > 0 {
			retained = dir
			go retain(ctx, cfg.Store, dir, m.Spec.KeepCheckpoints, cfg.Log)
		}
	}
	idx, p, err := claimIndex(ctx, cfg, m)
	if err != nil {
		return err
	}
	log := cfg.Log.With("shard", idx)
	restore := cfg.Restore
	var kept *paramserver.Shard // the state a handover carries on (a placement of the same lineage)
	return job.Eras(ctx, p, 0, func(ctx context.Context, p *job.Placement, _ int64) (*job.Placement, int64, error) {
		if idx >= p.Shards {
			log.Info("placement has fewer shards: leaving", "placement", p.Version, "shards", p.Shards)
			return nil, 0, cfg.Store.LeaveShard(ctx, idx)
		}
		next, err := serveEra(ctx, cfg, m.Spec, p, idx, restore, m.Lease, log, &kept)
		if err == nil && next == nil && retained != "" {
			pruneOnce(ctx, cfg.Store, retained, m.Spec.KeepCheckpoints, log)
		}
		return next, 0, err
	}, func(*job.Placement) error {
		restore = "" // a restore file is for the first placement only
		return nil
	})
}

func (c *Config) defaults() {
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 10
	}
	if c.WaitTimeout == 0 {
		c.WaitTimeout = 5 * time.Minute
	}
}

// claimIndex claims an index of the job's current placement, and returns
// it with that placement. When none is free, it waits (up to the wait
// timeout): a later placement may have more shards, or a dead holder's
// lease may expire (as when a stopped job is resumed).
func claimIndex(ctx context.Context, cfg Config, m *job.Member) (int, *job.Placement, error) {
	p := m.Placement
	deadline := time.Now().Add(cfg.WaitTimeout)
	for said := false; ; said = true {
		idx, err := cfg.Store.ClaimShard(ctx, m.Lease, p.Shards, cfg.Shard)
		if err == nil {
			return idx, p, nil
		}
		if time.Now().After(deadline) {
			return 0, nil, fmt.Errorf("%w (waited %v)", err, cfg.WaitTimeout)
		}
		if !said {
			cfg.Log.Info("no shard index to claim yet; waiting", "err", err)
		}
		select {
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		if p, _, err = cfg.Store.Placement(ctx); err != nil {
			return 0, nil, err
		}
	}
}

// serveEra serves shard idx of placement p until the job is done (nil), a
// newer placement appears (it is returned) or ctx ends. Where p keeps
// copies of each block, the shard holds its blocks' copies too (primary
// and backup, Placement.Held) and follows their chains; kept is the state
// it served the placement before with, which a placement handed over from
// it (same lineage) carries on, and is set to what it serves.
func serveEra(ctx context.Context, cfg Config, spec *job.Spec, p *job.Placement, idx int, restore string,
	lease job.Lease, log *slog.Logger, kept **paramserver.Shard) (*job.Placement, error) {
	if !p.Live(idx) {
		log.Info("this shard is down in the placement (its blocks were handed over): waiting for the next one", "placement", p.Version)
		return replaced(ctx, cfg, p, idx, log)
	}
	if served, err := cfg.Store.Served(ctx, p.Version, idx); err != nil {
		return nil, err
	} else if served {
		return replaced(ctx, cfg, p, idx, log)
	}
	var shard *paramserver.Shard
	switch {
	case p.HandedOver && *kept != nil && (*kept).Lineage() == p.Lineage():
		shard = *kept
		if err := shard.Chain(idx, p); err != nil {
			return nil, fmt.Errorf("shard %d: %w", idx, err)
		}
		log.Info("handed over: serving on from the state it holds", "placement", p.Version, "lineage", p.Lineage(), "down", p.Down, "clock", shard.Clock())
	case p.HandedOver && slices.Contains(p.Filling, idx):
		// A process new to an index that rejoins its chains: it holds
		// nothing, and is filled from its blocks' other copies.
		shard = paramserver.NewShard(spec.ShardConfig(), p.Held(idx), func(job.Block, []float32) {})
		shard.Empty()
		if err := shard.Chain(idx, p); err != nil {
			return nil, fmt.Errorf("shard %d: %w", idx, err)
		}
		log.Info("rejoining: to be filled from the other copies", "placement", p.Version, "blocks", len(p.Held(idx)))
	case p.HandedOver:
		// A process new to the index, under a handover: the state it
		// would serve died with the one before it.
		return replaced(ctx, cfg, p, idx, log)
	default:
		var err error
		if shard, err = newShard(spec, p, p.Held(idx), restore); err != nil {
			return nil, fmt.Errorf("shard %d: %w", idx, err)
		}
		if p.Copies > 1 {
			if err := shard.Chain(idx, p); err != nil {
				return nil, fmt.Errorf("shard %d: %w", idx, err)
			}
		}
	}
	*kept = shard
	blocks := p.OnShard(idx)
	shard.Fence(p.Epochs)
	svcCfg, err := serviceConfig(ctx, cfg, spec, p, idx, log)
	if err != nil {
		return nil, err
	}
	// Say which placement this shard serves, before serving it: if it dies
	// from now on, that placement's progress is lost and the coordinator
	// rolls the job back. Only one process in the placement's life may say
	// so: a replacement that finds the index served before (it claimed the
	// index after the server died, before the coordinator replaced the
	// placement) must not serve it afresh (workers far past its start would
	// push to a shard at its start), and waits for the new placement.
	if first, err := cfg.Store.ServeShard(ctx, lease, p.Version, idx); err != nil {
		return nil, err
	} else if !first {
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
	return serve(ctx, cfg, spec, p, idx, svc, lease, log)
}

// serve serves placement p with svc until the job is done (nil) or
// re-placed (the next placement), with no deadline: a job runs as long as
// it runs.
func serve(ctx context.Context, cfg Config, spec *job.Spec, p *job.Placement, idx int, svc *paramserver.Service, lease job.Lease, log *slog.Logger) (*job.Placement, error) {
	type result struct {
		next *job.Placement
		err  error
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if spec.ShardConfig().Elastic {
		go watchHolders(wctx, cfg.Store, svc, log)
	}
	if slices.Contains(p.Filling, idx) {
		go reportFilled(wctx, cfg.Store, svc, lease, p.Version, idx, log)
	}
	done := make(chan result, 1)
	go func() {
		next, _, err := cfg.Store.NextPlacement(wctx, p.Version)
		done <- result{next, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, r.err
		}
		st := svc.Stats()
		counts := []any{"accepted", st.Accepted, "applied", st.Applied, "duplicates", st.Duplicates, "skipped", st.Skipped, "refused", svc.Refused()}
		if st.Replicated > 0 || st.Resent > 0 { // (applied counts both: as primary and as a copy)
			counts = append(counts, "replicated", st.Replicated, "replica_duplicates", st.ReplDuplicates, "resent", st.Resent)
		}
		if r.next == nil {
			log.Info("job done", append([]any{"clock", svc.Clock()}, counts...)...)
		} else {
			log.Info("re-placed: leaving this placement", append([]any{"placement", p.Version, "clock", svc.Clock(), "next", r.next.Version, "from_step", r.next.Start}, counts...)...)
		}
		return r.next, nil
	case <-lease.Lost():
		return nil, fmt.Errorf("shard %d lost its etcd lease", idx)
	}
}

// serviceConfig is the NATS service's configuration of shard idx of
// placement p: its snapshots, when the job checkpoints, each recorded in
// the store once written (a record completes a checkpoint).
func serviceConfig(ctx context.Context, cfg Config, spec *job.Spec, p *job.Placement, idx int, log *slog.Logger) (paramserver.ServiceConfig, error) {
	svcCfg := paramserver.ServiceConfig{Job: spec.Name, Shard: idx, Placement: p.Version, Log: log, Observer: metrics.Shard(spec.Name, idx)}
	if cfg.DataDir == "" {
		if spec.CheckpointEvery > 0 {
			return svcCfg, fmt.Errorf("the job checkpoints every %d steps: give the shard a data directory", spec.CheckpointEvery)
		}
		return svcCfg, nil
	}
	svcCfg.SnapshotDir = filepath.Join(cfg.DataDir, "snapshots") // made by Run
	svcCfg.SnapshotEvery = spec.CheckpointEvery
	svcCfg.OnSnapshot = func(path string, snap *paramserver.Snapshot) {
		// The store retries the record through an etcd election or a lost
		// member.
		rec := job.SnapshotRecord{Path: path, Step: snap.Step, Shard: idx, Placement: snap.Placement}
		if err := cfg.Store.RecordSnapshot(ctx, rec); err != nil && ctx.Err() == nil {
			log.Error("recording snapshot: giving up; the checkpoint of this step will not complete", "step", snap.Step, "err", err)
		}
	}
	return svcCfg, nil
}

// reportFilled says in the store, once the shard (rejoining its chains
// under placement version) holds every update of its blocks, that it is
// filled: the coordinator then counts it a copy like any other.
func reportFilled(ctx context.Context, st job.ShardStore, svc *paramserver.Service, lease job.Lease, version int64, idx int, log *slog.Logger) {
	start := time.Now()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if svc.Filled() {
			break
		}
	}
	if err := st.ShardFilled(ctx, lease, version, idx); err != nil {
		if ctx.Err() == nil {
			log.Warn("recording the shard filled", "err", err)
		}
		return
	}
	log.Info("filled from the other copies", "placement", version, "took", time.Since(start))
}

// replaced waits for the placement that replaces p, whose shard idx a
// process that died had served, and returns it (nil when the job is done).
func replaced(ctx context.Context, cfg Config, p *job.Placement, idx int, log *slog.Logger) (*job.Placement, error) {
	log.Info("this placement's shard was served by a process that is gone: waiting for the placement that replaces it", "placement", p.Version)
	next, _, err := cfg.Store.NextPlacement(ctx, p.Version)
	return next, err
}

// watchHolders (elastic ssp) marks a rank idle, at its next epoch, when its
// holder is given up on (the coordinator deletes the holder's assignment):
// a dead worker's rank must not hold the others back, and the dead worker
// is fenced off.
func watchHolders(ctx context.Context, st job.ShardStore, svc *paramserver.Service, log *slog.Logger) {
	for a := range st.Released(ctx) {
		if err := svc.Idle(a.Rank, a.Epoch+1); err != nil {
			log.Warn("marking a rank idle", "rank", a.Rank, "err", err)
		} else {
			log.Info("rank's holder gone: the rank is idle", "rank", a.Rank, "fenced_below_epoch", a.Epoch+1)
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
			if f == "" { // a shard that was down when the checkpoint was taken: it held no block
				continue
			}
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
	init, err := spec.BlockInit(p)
	if err != nil {
		return nil, err
	}
	return paramserver.NewShard(spec.ShardConfig(), blocks, init), nil
}
