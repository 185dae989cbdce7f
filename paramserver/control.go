package paramserver

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/downpour-ml/downpour/internal/wire"
)

// Clock returns the smallest clock of the shards: the number of steps every
// block has applied (sync), so far as the shards tell.
func (c *Client) Clock(ctx context.Context) (clock int64, err error) {
	err = c.again(func() error {
		clock, err = c.clock(ctx)
		return err
	})
	return clock, err
}

// again runs f, and again under the newest placement for as long as f
// ends because the placement it ran under was handed over.
func (c *Client) again(f func() error) error {
	for {
		if err := c.adopt(); err != nil {
			return err
		}
		if err := f(); !errors.Is(err, errHandedOver) {
			return err
		}
	}
}

func (c *Client) clock(ctx context.Context) (int64, error) {
	clock := int64(math.MaxInt64)
	seen := map[int]bool{}
	for _, g := range c.groups {
		if seen[g.shard] {
			continue
		}
		seen[g.shard] = true
		r, err := c.shardClock(ctx, g)
		if err != nil {
			return 0, err
		}
		clock = min(clock, r)
	}
	return clock, nil
}

// shardClock asks the shard of g for its clock, by a pull of g's first
// block that need not wait.
func (c *Client) shardClock(ctx context.Context, g group) (int64, error) {
	data, err := wire.Encode(&wire.PullRequest{V: wire.Version, Job: c.job, Rank: c.rank, Epoch: c.epoch, IDs: g.ids[:1]})
	if err != nil {
		return 0, err
	}
	msg, err := c.request(ctx, g.version, wire.PullSubject(c.job, g.version, g.shard), nil, data)
	if err != nil {
		return 0, err
	}
	r, err := wire.DecodePullReply(msg.Data)
	if err != nil {
		return 0, fmt.Errorf("pull reply from shard %d: %w", g.shard, err)
	}
	if err := r.Err(); err != nil {
		if err := c.supersededWait(ctx, g.version, err); errors.Is(err, errHandedOver) {
			return 0, err
		}
		return 0, fmt.Errorf("pull from shard %d refused: %w", g.shard, err)
	}
	return r.Clock, nil
}

// Clocks asks each shard of the placement for its clock, one after the
// other, each within timeout: what an operator's view of a job shows. A
// shard that does not answer in time, refuses, or holds none of the
// client's blocks gets -1.
func (c *Client) Clocks(ctx context.Context, timeout time.Duration) []int64 {
	clocks := make([]int64, c.shards)
	for s := range clocks {
		clocks[s] = -1
		i := slices.IndexFunc(c.groups, func(g group) bool { return g.shard == s })
		if i < 0 {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		if clock, err := c.shardClock(cctx, c.groups[i]); err == nil {
			clocks[s] = clock
		}
		cancel()
	}
	return clocks
}

// Snapshot asks every live shard of the placement (not one handed over,
// job.Placement.Down) to write its snapshot of the boundary of step, each
// within timeout, and returns the shards' failures joined (each names its
// shard). A shard snapshots at that boundary whether or not it holds
// blocks of this client.
func (c *Client) Snapshot(ctx context.Context, step int64, timeout time.Duration) error {
	return c.again(func() error { return c.snapshot(ctx, step, timeout) })
}

func (c *Client) snapshot(ctx context.Context, step int64, timeout time.Duration) error {
	req, err := wire.Encode(&wire.SnapshotRequest{V: wire.Version, Job: c.job, Step: step})
	if err != nil {
		return err
	}
	p, _ := c.hand.newest()
	var errs []error
	for s := 0; s < c.shards; s++ {
		if p != nil && !p.Live(s) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, timeout)
		msg, err := c.request(sctx, c.version, wire.SnapshotSubject(c.job, c.version, s), nil, req)
		cancel()
		if err == nil {
			var r *wire.Reply
			if r, err = wire.DecodeReply(msg.Data); err == nil {
				err = r.Err()
			}
		}
		if errors.Is(err, errHandedOver) {
			return err // asked again under the new placement
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", s, err))
		}
	}
	return errors.Join(errs...)
}

// Idle tells every shard that this rank has no work for now (elastic ssp):
// until it pushes again, it does not hold back the other ranks.
func (c *Client) Idle(ctx context.Context) error {
	return c.again(func() error { return c.idle(ctx) })
}

func (c *Client) idle(ctx context.Context) error {
	seen := map[int]bool{}
	for _, g := range c.groups {
		if seen[g.shard] {
			continue
		}
		seen[g.shard] = true
		data, err := wire.Encode(&wire.PushRequest{V: wire.Version, Job: c.job, Rank: c.rank, Epoch: c.epoch})
		if err != nil {
			return err
		}
		if refused, err := c.pushTo(ctx, g.version, g.shard, nil, data); err != nil {
			return err
		} else if refused != nil {
			if err := c.supersededWait(ctx, g.version, refused); errors.Is(err, errHandedOver) {
				return err
			}
			return fmt.Errorf("idle mark to shard %d refused: %w", g.shard, refused)
		}
	}
	return nil
}
