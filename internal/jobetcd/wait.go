package jobetcd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrTimeout is returned when a wait on etcd runs past its deadline.
var ErrTimeout = errors.New("timed out")

// Wait returns the first value of key once it exists, watching from the
// revision it last read. It fails with ErrTimeout after timeout.
func Wait(ctx context.Context, cli *clientv3.Client, key string, timeout time.Duration) ([]byte, error) {
	var val []byte
	err := WaitPrefix(ctx, cli, key, timeout, func(kvs map[string][]byte) bool {
		v, ok := kvs[key]
		val = v
		return ok
	})
	return val, err
}

// WaitPrefix calls done with every key and value under prefix, first as they
// are and then after each change, until done returns true. It fails with
// ErrTimeout after timeout.
func WaitPrefix(ctx context.Context, cli *clientv3.Client, prefix string, timeout time.Duration, done func(map[string][]byte) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ctx = clientv3.WithRequireLeader(ctx)
	r, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return waitErr(ctx, prefix, timeout, err)
	}
	kvs := map[string][]byte{}
	for _, kv := range r.Kvs {
		kvs[string(kv.Key)] = kv.Value
	}
	if done(kvs) {
		return nil
	}
	wc := cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision+1))
	for wr := range wc {
		if err := wr.Err(); err != nil {
			return waitErr(ctx, prefix, timeout, err)
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.DELETE {
				delete(kvs, string(ev.Kv.Key))
			} else {
				kvs[string(ev.Kv.Key)] = ev.Kv.Value
			}
		}
		if done(kvs) {
			return nil
		}
	}
	return waitErr(ctx, prefix, timeout, ctx.Err())
}

func waitErr(ctx context.Context, key string, timeout time.Duration, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("waiting for %s: %w after %v", key, ErrTimeout, timeout)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("waiting for %s: %w", key, err)
}
