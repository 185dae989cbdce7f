package etcdstore

import (
	"context"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/testenv"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// A shard claims the index it asks for, or the lowest free one; an index
// held by a live process, or one the job does not have, is refused.
func TestClaimShard(t *testing.T) {
	cli := testenv.Etcd(t) // cleanups run last-registered first: the leases go before etcd
	ctx := context.Background()
	st := New(cli, "j")
	lease := func() job.Lease {
		l, err := st.Grant(ctx, 5)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Close)
		return l
	}
	if i, err := st.ClaimShard(ctx, lease(), 3, 1); i != 1 || err != nil {
		t.Fatalf("explicit claim: %d %v", i, err)
	}
	for _, want := range []int{0, 2} {
		if i, err := st.ClaimShard(ctx, lease(), 3, -1); i != want || err != nil {
			t.Fatalf("claim: %d %v, want %d", i, err, want)
		}
	}
	for _, c := range []struct {
		want int
		says string
	}{{-1, "already served"}, {1, "already served by a live process"}, {3, "does not exist"}} {
		if _, err := st.ClaimShard(ctx, lease(), 3, c.want); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("claim %d: %v, want %q", c.want, err, c.says)
		}
	}
}

// Whatever a job's key holds, the coordinator's event of it is a known
// kind or none, and a record that does not decode is a Malformed event
// naming its key, never a panic.
func FuzzEvent(f *testing.F) {
	for _, seed := range []struct{ key, value string }{
		{"members/workers/w1", "{}"}, {"shard-snapshots/p1/20/0", `{"path":"s","step":20}`}, {"checkpoint", `{"step":5}`},
		{"reshard", `{"shards":3}`}, {"task-done/w", `{"id":4}`}, {"done/0", "1"}, {"reshard", "{"}, {"task-done/w", "x"},
	} {
		f.Add(seed.key, []byte(seed.value), true)
	}
	f.Add("members/ps/1", []byte(`{"placement":2}`), false)
	f.Add("members/ps/0", []byte("{}"), true)                            // a claim
	f.Add("members/ps/0", []byte(`{"placement":3,"filled":true}`), true) // a shard filled
	f.Add("members/ps/0", []byte(`{"placement":-1}`), true)
	f.Add("members/ps/x", []byte("{}"), true)
	s := New(nil, "j")
	f.Fuzz(func(t *testing.T, key string, value []byte, put bool) {
		typ, prev := mvccpb.DELETE, &mvccpb.KeyValue{Key: []byte(s.keys.Root() + key), Value: value}
		if put {
			typ, prev = mvccpb.PUT, nil
		}
		ev, ok := s.event(typ, &mvccpb.KeyValue{Key: []byte(s.keys.Root() + key), Value: value}, prev)
		if !ok {
			return
		}
		if (ev.Kind < job.WorkerUp || ev.Kind > job.Malformed) && ev.Kind != job.ShardUp {
			t.Fatalf("event of kind %d", ev.Kind)
		}
		if ev.Kind == job.ShardUp && (ev.Shard < 0 || ev.Placement < 0) {
			t.Fatalf("a shard's event %+v", ev)
		}
		if ev.Kind == job.Malformed && (ev.Err == nil || !strings.Contains(ev.What, key)) {
			t.Fatalf("a malformed record's event %+v does not say what and why", ev)
		}
	})
}
