package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
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

// WaitKeys is WaitPrefix for a few exact keys, with their revisions: it
// reads them together and
// watches only them, so that a waiter is not sent the rest of a job's
// changes. A role that waited on the job's whole prefix was sent every
// task given out and done, and every checkpoint record, by every worker:
// at 64 workers, 226 watch responses a job step, growing with the square
// of the workers. Changes of different keys may reach done out of their
// revisions' order: each key's own changes arrive in order.
func WaitKeys(ctx context.Context, cli *clientv3.Client, keys []string, timeout time.Duration, done func(map[string]*mvccpb.KeyValue) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ctx = clientv3.WithRequireLeader(ctx)
	what := strings.Join(keys, ", ")
	ops := make([]clientv3.Op, len(keys))
	for i, k := range keys {
		ops[i] = clientv3.OpGet(k)
	}
	r, err := cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return waitErr(ctx, what, timeout, err)
	}
	kvs := map[string]*mvccpb.KeyValue{}
	for _, op := range r.Responses {
		for _, kv := range op.GetResponseRange().Kvs {
			kvs[string(kv.Key)] = kv
		}
	}
	if done(kvs) {
		return nil
	}
	// One watch a key, on the client's one stream; their responses meet
	// here. A watch that ends (an error, or ctx) ends the wait.
	events := make(chan clientv3.WatchResponse)
	ended := make(chan error, len(keys))
	for _, k := range keys {
		wc := cli.Watch(ctx, k, clientv3.WithRev(r.Header.Revision+1))
		go func() {
			for wr := range wc {
				if err := wr.Err(); err != nil {
					ended <- err
					return
				}
				select {
				case events <- wr:
				case <-ctx.Done():
					return
				}
			}
			ended <- ctx.Err()
		}()
	}
	for {
		select {
		case wr := <-events:
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					delete(kvs, string(ev.Kv.Key))
				} else {
					kvs[string(ev.Kv.Key)] = ev.Kv
				}
			}
			if done(kvs) {
				return nil
			}
		case err := <-ended:
			if err == nil {
				err = errors.New("watch ended")
			}
			return waitErr(ctx, what, timeout, err)
		case <-ctx.Done():
			return waitErr(ctx, what, timeout, ctx.Err())
		}
	}
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
