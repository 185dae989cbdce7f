package psnode

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/job"
)

func TestClaim(t *testing.T) {
	e, err := embedded.StartEtcd(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close) // cleanups run last-registered first: the leases go before etcd
	ctx := context.Background()
	cli, err := job.Connect(ctx, []string{e.Config().AdvertiseClientUrls[0].String()}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	keys := job.KeysFor("j")
	lease := func() clientv3.LeaseID {
		l, err := job.Grant(ctx, cli, 5)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Close)
		return l.ID
	}
	if i, err := claim(ctx, cli, keys, 3, 1, lease()); i != 1 || err != nil {
		t.Fatalf("explicit claim: %d %v", i, err)
	}
	for _, want := range []int{0, 2} {
		if i, err := claim(ctx, cli, keys, 3, -1, lease()); i != want || err != nil {
			t.Fatalf("claim: %d %v, want %d", i, err, want)
		}
	}
	for _, c := range []struct {
		want int
		says string
	}{{-1, "already served"}, {1, "already served by a live process"}, {3, "does not exist"}} {
		if _, err := claim(ctx, cli, keys, 3, c.want, lease()); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("claim %d: %v, want %q", c.want, err, c.says)
		}
	}
}
