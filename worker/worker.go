// Package worker is one model replica of a downpour job: it registers in
// the job's store under a lease, waits for the coordinator to give it a
// rank and a data shard, and then, step after step, pulls the parameters
// from the shards, computes the loss and gradient of a batch of its data
// shard, clips the gradient and pushes it (ExampleRun runs a whole job).
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
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/latency"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/shard"
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
	// Member is what the worker says of itself when it joins: the model
	// replica it is pinned to (job.PinTo), if any. A pinned worker waits
	// for a rank of its replica, and refuses any other.
	Member job.WorkerMember

	data *dataOnce // the job's data, opened once for all of Run's eras
}

// dataOnce opens the job's data the first time an era asks for it: a
// corpus's data shard is indexed once in a worker's life, not at each
// re-placement.
type dataOnce struct {
	once sync.Once
	d    shard.Dataset
	err  error
}

// openData is the job's data, opened once per Run.
func (c *Config) openData(spec *job.Spec) (shard.Dataset, error) {
	if c.data == nil {
		return spec.OpenData()
	}
	c.data.once.Do(func() { c.data.d, c.data.err = spec.OpenData() })
	return c.data.d, c.data.err
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
	cfg.data = &dataOnce{}
	if err := wire.ValidJob(cfg.Store.Name()); err != nil {
		return err
	}
	log := cfg.Log.With("worker", cfg.ID)
	m, ctx, err := job.Join(ctx, cfg.Store, cfg.LeaseTTL, cfg.WaitTimeout)
	if err != nil {
		return err
	}
	defer m.Close()
	defer func() { err = job.Fenced(ctx, err) }()
	a, err := takeRank(ctx, cfg, m)
	if err != nil || a == nil {
		return err
	}
	if m.Spec.Model == "seq2seq" && a.Rank%m.Spec.Seats() == 0 {
		// Index the rank's data shard now, before the model takes its
		// memory: the pass's garbage then grows from a small heap, not
		// by half of the model's (GOGC), which a paper-size seat's peak
		// RSS showed. (Of a replica laid out over seats, seat 0 alone
		// reads: it sends the others what they need of each batch.)
		d, err := cfg.openData(m.Spec)
		if err != nil {
			return err
		}
		if _, err := d.StepsPerEpoch(m.Spec.Seed, a.DataShard, m.Spec.Batch); err != nil {
			return err
		}
	}
	p, rev, err := cfg.Store.Placement(ctx)
	if err != nil {
		return err
	}
	var pushed int64 // with tasks: the rank's steps so far (its push numbering never goes back)
	err = job.Eras(ctx, p, rev, func(ctx context.Context, p *job.Placement, rev int64) (*job.Placement, int64, error) {
		return runEra(ctx, cfg, m.Spec, *a, p, rev, m.Lease, &pushed)
	}, func(next *job.Placement) error {
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
		case <-m.Lease.Lost():
			return fmt.Errorf("%w: lost the etcd lease", ErrFenced)
		default:
		}
		log.Info("re-placed: resuming", "placement", next.Version, "shards", next.Shards, "at_step", next.Start)
		return nil
	})
	if err == nil {
		log.Info("job done", "rank", a.Rank)
	}
	return err
}

// takeRank joins the job's workers and waits, as long as the job runs,
// for a rank (a spare worker waits until one is free, and leaves, with
// none, when the job ends without needing it), then for the job's shards.
func takeRank(ctx context.Context, cfg Config, m *job.Member) (*job.Assignment, error) {
	log := cfg.Log.With("worker", cfg.ID)
	if r := cfg.Member.Replica; r != nil && (*r < 0 || *r >= m.Spec.Workers) {
		return nil, fmt.Errorf("pinned to replica %d, but job %s has replicas 0 to %d", *r, m.Spec.Name, m.Spec.Workers-1)
	}
	if err := cfg.Store.JoinWorker(ctx, m.Lease, cfg.ID, cfg.Member); err != nil {
		return nil, err
	}
	a, err := cfg.Store.WaitAssignment(ctx, cfg.ID)
	if err != nil {
		return nil, err
	}
	if a == nil {
		log.Info("the job is done; it did not need this worker")
		return nil, nil
	}
	if seats := m.Spec.Seats(); !cfg.Member.Serves(a.Rank, seats) {
		return nil, fmt.Errorf("given rank %d, of replica %d, but pinned to replica %d", a.Rank, a.Rank/seats, *cfg.Member.Replica)
	}

	if err := cfg.Store.WaitShards(ctx, m.Placement.Shards, cfg.WaitTimeout); err != nil {
		return nil, err
	}
	log.Info("joined", "rank", a.Rank, "epoch", a.Epoch, "data_shard", a.DataShard)
	return a, nil
}

// superseded says whether err is a shard's refusal of a step sent under a
// placement the job has replaced: the worker then waits for the new one (and
// finds itself fenced off, if it was given up on).
func superseded(err error) bool { return errors.Is(err, &wire.Error{Kind: wire.Superseded}) }
