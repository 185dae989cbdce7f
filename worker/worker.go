// Package worker is one model replica of a downpour job: it registers in etcd
// under a lease, waits for the coordinator to give it a rank and a data shard,
// and then, step after step, pulls the parameters from the shards, computes
// the loss and gradient of a batch of its data shard, clips the gradient and
// pushes it.
//
//	err := worker.Run(ctx, worker.Config{Store: store, ID: "w1", NATS: nc})
//
// where store is the job's (job.Store: etcdstore.New(cli, "demo") on a real
// cluster).
//
// Run (worker.go) is membership: the lease, the rank, and one era per
// placement of the job. An era (era.go) runs the rank's steps, or the
// tasks the coordinator hands out, under one placement, drops them when
// the job is re-placed, and reports the rank done. Each model has a
// trainer behind one interface that runs a single step: seq2seq.go (the
// push of a step and the pull of the next in flight behind the next
// forward pass) and gan.go (the authors' simultaneous update, or the
// alternating one). GANReference (reference.go) is a sync GAN job computed
// in one process, which the distributed path equals bit for bit.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/latency"
	"github.com/downpour-ml/downpour/internal/wire"
)

// Config is a worker's connections and limits. Zero values get the defaults
// named on each field.
type Config struct {
	Store job.Store // the job's
	ID    string    // unique among the job's workers; default host-pid-time
	NATS  *nats.Conn
	Log   *slog.Logger
	// LeaseTTL is the lease of the worker's membership, in seconds; default 10.
	LeaseTTL int64
	// WaitTimeout bounds each wait for the job (spec, rank, placement,
	// shards); default 5 minutes.
	WaitTimeout time.Duration
	// StepTimeout bounds one step's pull and push; default 5 minutes.
	StepTimeout time.Duration
	// Record, if set, records each step's wait on the parameter servers
	// and each request's time (the load harness reads it).
	Record *latency.Recorder
}

func (c *Config) defaults() {
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = fmt.Sprintf("%s-%d-%d", host, os.Getpid(), time.Now().UnixNano())
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 10
	}
	if c.WaitTimeout == 0 {
		c.WaitTimeout = 5 * time.Minute
	}
	if c.StepTimeout == 0 {
		c.StepTimeout = 5 * time.Minute
	}
}

// Run joins the job and trains until its last step is pushed.
func Run(ctx context.Context, cfg Config) (err error) {
	cfg.defaults()
	if err := wire.ValidJob(cfg.Store.Name()); err != nil {
		return err
	}
	log := cfg.Log.With("worker", cfg.ID)

	spec, p, err := cfg.Store.Find(ctx, cfg.WaitTimeout)
	if err != nil {
		return err
	}
	lease, err := cfg.Store.Grant(ctx, cfg.LeaseTTL)
	if err != nil {
		return err
	}
	defer lease.Close()
	// Losing the lease (a long freeze, a partition) ends the worker's
	// membership: whatever it is doing or waiting for stops, fenced.
	ctx, fence := context.WithCancelCause(ctx)
	defer fence(nil)
	go func() {
		select {
		case <-lease.Lost():
			fence(fmt.Errorf("%w: lost the etcd lease: this worker is no longer a member of the job", ErrFenced))
		case <-ctx.Done():
		}
	}()
	defer func() {
		if c := context.Cause(ctx); errors.Is(c, ErrFenced) {
			err = c
		}
	}()
	if err := cfg.Store.JoinWorker(ctx, lease, cfg.ID); err != nil {
		return err
	}
	// Wait for a rank, as long as the job runs: a spare worker waits until
	// a rank is free, and leaves when the job ends without needing it.
	a, err := cfg.Store.WaitAssignment(ctx, cfg.ID)
	if err != nil {
		return err
	}
	if a == nil {
		log.Info("the job is done; it did not need this worker")
		return nil
	}
	if err := cfg.Store.WaitShards(ctx, p.Shards, cfg.WaitTimeout); err != nil {
		return err
	}
	log.Info("joined", "rank", a.Rank, "epoch", a.Epoch, "data_shard", a.DataShard)

	p, rev, err := cfg.Store.Placement(ctx)
	if err != nil {
		return err
	}
	var pushed int64 // with tasks: the rank's steps so far (its push numbering never goes back)
	for {
		next, nextRev, err := runEra(ctx, cfg, spec, *a, p, rev, lease, &pushed)
		if err != nil || next == nil {
			if err == nil {
				log.Info("job done", "rank", a.Rank)
			}
			return err
		}
		// A worker that was given up on (its lease ran out while it was
		// frozen or cut off) has lost its rank: it must not run again.
		now, err := cfg.Store.Assignment(ctx, cfg.ID)
		if err != nil {
			return fmt.Errorf("re-reading its rank: %w", err)
		}
		if now == nil || *now != *a {
			return fmt.Errorf("%w: rank %d epoch %d is no longer this worker's", ErrFenced, a.Rank, a.Epoch)
		}
		select {
		case <-lease.Lost():
			return fmt.Errorf("%w: lost the etcd lease", ErrFenced)
		default:
		}
		log.Info("re-placed: resuming", "placement", next.Version, "shards", next.Shards, "at_step", next.Start)
		p, rev = next, nextRev
	}
}

// superseded says whether err is a shard's refusal of a step sent under a
// placement the job has replaced: the worker then waits for the new one (and
// finds itself fenced off, if it was given up on).
func superseded(err error) bool { return errors.Is(err, &wire.Error{Kind: wire.Superseded}) }
