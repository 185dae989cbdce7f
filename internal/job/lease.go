package job

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
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
	go func() {
		for range ch { // drain keep-alive responses; the channel closes when the lease is gone
		}
		close(l.lost)
	}()
	return l, nil
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
