package etcdstore

import (
	"context"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/testenv"
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
