package etcdstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/storetest"
	"github.com/downpour-ml/downpour/internal/metrics"
	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The etcd store keeps the store's contract, against a real etcd.
func TestContract(t *testing.T) {
	cli := testenv.Etcd(t)
	storetest.Run(t, func(t *testing.T, name string) job.Store { return New(cli, name) })
}

// Every call of the store survives an etcd leader change: each of its
// requests to etcd fails once with an election's error first, half of
// them after etcd has carried the request out (the answer lost on the
// way back), and the contract's answers are the same. Writes so retried
// take effect once (a rank's done, a placement, a claimed index).
func TestContractThroughLeaderChanges(t *testing.T) {
	cli := testenv.Etcd(t)
	for seed := range uint64(3) {
		t.Run(fmt.Sprint("seed-", seed), func(t *testing.T) { throughLeaderChanges(t, cli, seed) })
	}
}

func throughLeaderChanges(t *testing.T, cli *clientv3.Client, seed uint64) {
	f := &flaky{KV: cli, rng: rand.New(rand.NewPCG(2014, seed))}
	before := testutil.ToFloat64(metrics.StoreRetries)
	storetest.Run(t, func(t *testing.T, name string) job.Store {
		s := New(cli, fmt.Sprint(name, "-", seed))
		s.kv = f
		return s
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failed < 30 || f.landed < 12 {
		t.Fatalf("only %d requests failed (%d of them after etcd took them): the test did not test", f.failed, f.landed)
	}
	if got := testutil.ToFloat64(metrics.StoreRetries) - before; got < float64(f.failed) {
		t.Fatalf("%v retries counted for %d failed requests", got, f.failed)
	}
	t.Logf("%d requests failed, %d of them after etcd carried them out", f.failed, f.landed)
}

// flaky is an etcd KV whose requests fail as during an election, four in
// ten of them, drawn from a fixed seed: half before reaching etcd
// (ErrLeaderChanged), half after etcd carried them out
// (ErrTimeoutDueToLeaderFail: the answer was lost).
type flaky struct {
	clientv3.KV
	mu             sync.Mutex
	rng            *rand.Rand
	failed, landed int
}

// fail says whether this request fails, and whether before or after.
func (f *flaky) fail() (fail, after bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rng.IntN(10) >= 4 {
		return false, false
	}
	f.failed++
	after = f.rng.IntN(2) == 0
	if after {
		f.landed++
	}
	return true, after
}

func (f *flaky) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if fail, after := f.fail(); fail {
		if after {
			f.KV.Get(ctx, key, opts...)
			return nil, rpctypes.ErrTimeoutDueToLeaderFail
		}
		return nil, rpctypes.ErrLeaderChanged
	}
	return f.KV.Get(ctx, key, opts...)
}

func (f *flaky) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	if fail, after := f.fail(); fail {
		if after {
			f.KV.Put(ctx, key, val, opts...)
			return nil, rpctypes.ErrTimeoutDueToLeaderFail
		}
		return nil, rpctypes.ErrLeaderChanged
	}
	return f.KV.Put(ctx, key, val, opts...)
}

func (f *flaky) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	if fail, after := f.fail(); fail {
		if after {
			f.KV.Delete(ctx, key, opts...)
			return nil, rpctypes.ErrTimeoutDueToLeaderFail
		}
		return nil, rpctypes.ErrLeaderChanged
	}
	return f.KV.Delete(ctx, key, opts...)
}

func (f *flaky) Txn(ctx context.Context) clientv3.Txn { return &flakyTxn{Txn: f.KV.Txn(ctx), f: f} }

type flakyTxn struct {
	clientv3.Txn
	f *flaky
}

func (t *flakyTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { t.Txn = t.Txn.If(cs...); return t }
func (t *flakyTxn) Then(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Then(ops...); return t }
func (t *flakyTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(ops...); return t }

func (t *flakyTxn) Commit() (*clientv3.TxnResponse, error) {
	if fail, after := t.f.fail(); fail {
		if after {
			t.Txn.Commit()
			return nil, rpctypes.ErrTimeoutDueToLeaderFail
		}
		return nil, rpctypes.ErrLeaderChanged
	}
	return t.Txn.Commit()
}
