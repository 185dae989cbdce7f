package etcdstore

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/metrics"
)

// Lease is an etcd lease kept alive until Close, under which a process
// registers itself: when the process dies, the lease expires after its TTL and
// the process's keys vanish.
type Lease struct {
	ID     clientv3.LeaseID
	cli    *clientv3.Client
	cancel context.CancelFunc
	lost   chan struct{}
}

// Grant grants a lease of ttl seconds and keeps it alive in the background.
func Grant(ctx context.Context, cli *clientv3.Client, ttl int64) (*Lease, error) {
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	g, err := cli.Grant(gctx, ttl)
	if err != nil {
		return nil, fmt.Errorf("granting an etcd lease: %w", err)
	}
	kctx, kcancel := context.WithCancel(context.Background())
	ch, err := cli.KeepAlive(kctx, g.ID)
	if err != nil {
		kcancel()
		return nil, fmt.Errorf("keeping an etcd lease alive: %w", err)
	}
	l := &Lease{ID: g.ID, cli: cli, cancel: kcancel, lost: make(chan struct{})}
	go l.keep(kctx, ch, time.Duration(ttl)*time.Second)
	return l, nil
}

// keep drains keep-alive responses until the lease is gone. The client
// stops keeping a lease alive when no keep-alive was answered within its TTL,
// which also happens while etcd elects a new leader or this process cannot
// reach its member; the new leader extends every lease, so the lease may
// well be alive. Only etcd knows: keep asks it, and the lease is lost when
// etcd says it has expired (or was revoked), or when etcd has not been
// reached for three TTLs and ten seconds, after which it has surely expired
// (an election takes a few seconds at most).
func (l *Lease) keep(ctx context.Context, ch <-chan *clientv3.LeaseKeepAliveResponse, ttl time.Duration) {
	defer close(l.lost)
	last := time.Now() // when etcd last said the lease was alive
	for {
		for range ch {
			last = time.Now()
			metrics.LeaseRenewals.Inc()
		}
		for ch = nil; ch == nil; {
			if ctx.Err() != nil {
				return
			}
			if time.Since(last) > 3*ttl+10*time.Second {
				metrics.LeasesLost.Inc()
				return
			}
			qctx, cancel := context.WithTimeout(ctx, time.Second)
			r, err := l.cli.TimeToLive(qctx, l.ID)
			cancel()
			switch {
			case err == nil && r.TTL < 0:
				metrics.LeasesLost.Inc()
				return // expired or revoked (TTL -1; 0 is less than a second left)
			case err == nil:
				last = time.Now()
				if ch, err = l.cli.KeepAlive(ctx, l.ID); err != nil {
					ch = nil
				}
			}
			if ch == nil {
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
			}
		}
	}
}

// Lost is closed when the lease can no longer be kept alive (expired, revoked
// or the client closed).
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Close stops the keep-alive and revokes the lease, so that the keys under it
// vanish at once rather than after the TTL.
func (l *Lease) Close() {
	l.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	l.cli.Revoke(ctx, l.ID)
	<-l.lost
}
