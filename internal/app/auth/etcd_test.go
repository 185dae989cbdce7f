package auth

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/internal/metrics"
	"github.com/downpour-ml/downpour/internal/testenv"
)

// etcdAs connects to etcd at ep as c (anonymously when c is nil).
func etcdAs(t *testing.T, ep string, c *Creds) (*clientv3.Client, error) {
	t.Helper()
	user, pw := c.EtcdLogin()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Username: user, Password: pw, Logger: zap.NewNop()})
	if err == nil {
		t.Cleanup(func() { cli.Close() })
	}
	return cli, err
}

// With etcd's authentication on, each role reads its own job's keys and
// writes only what it owns; nobody touches another job's keys, and nobody
// without a password gets in.
func TestEtcdPermissions(t *testing.T) {
	e := testenv.EtcdServer(t)
	ep := e.Config().AdvertiseClientUrls[0].String()
	admin, err := etcdAs(t, ep, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // logins hash passwords: slow under -race
	defer cancel()
	creds := map[string]*Creds{}
	var all []*Creds
	for _, j := range []string{"a", "b"} {
		for _, r := range Roles {
			c, _ := New(j, r)
			creds[j+"/"+string(r)] = c
			all = append(all, c)
		}
	}
	if err := ProvisionEtcd(ctx, admin, all); err != nil {
		t.Fatal(err)
	}
	if err := EnableEtcdAuth(ctx, admin, "root-secret"); err != nil {
		t.Fatal(err)
	}
	if err := EnableEtcdAuth(ctx, admin, "root-secret"); err != nil { // again: a no-op
		t.Fatal(err)
	}
	a, b := etcdstore.KeysFor("a"), etcdstore.KeysFor("b")
	clients := map[string]*clientv3.Client{} // one login per identity

	// No login, a wrong password: nothing.
	if anon, err := etcdAs(t, ep, nil); err == nil {
		if _, err := anon.Get(ctx, a.Spec()); err == nil {
			t.Fatal("an anonymous client read a job's spec")
		}
	}
	wrong := *creds["a/worker"]
	wrong.etcdPassword = "guess"
	if _, err := etcdAs(t, ep, &wrong); err == nil || !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Fatalf("a wrong password: %v", err)
	}

	type op struct {
		who   string
		write bool
		key   string
		ok    bool
	}
	for _, o := range []op{
		{"a/coordinator", true, a.Spec(), true},
		{"a/coordinator", true, a.Placement(), true},
		{"a/coordinator", true, b.Spec(), false},
		{"a/coordinator", false, b.Spec(), false},
		{"a/worker", true, a.Worker("w1"), true},
		{"a/worker", true, a.Done(0), true},
		{"a/worker", true, a.TaskDone("w1"), true},
		{"a/worker", false, a.Spec(), true},
		{"a/worker", true, a.Spec(), false},
		{"a/worker", true, a.Assign("w1"), false},
		{"a/worker", true, a.Shard(0), false},
		{"a/worker", true, a.Checkpoint(), false},
		{"a/worker", true, b.Worker("w1"), false},
		{"a/worker", false, b.Spec(), false},
		{"a/ps", true, a.Shard(0), true},
		{"a/ps", true, a.Served(1, 0), true},
		{"a/ps", true, a.ShardSnapshot(1, 10, 0), true},
		{"a/ps", true, a.Placement(), false},
		{"a/ps", true, a.Worker("w1"), false},
		{"b/ps", true, a.Shard(0), false},
		{"a/observer", false, a.Placement(), true},
		{"a/observer", true, a.Worker("x"), false},
		{"b/observer", false, a.Placement(), false},
		{"a/worker", true, "/downpour/other", false},
	} {
		cli := clients[o.who]
		if cli == nil {
			if cli, err = etcdAs(t, ep, creds[o.who]); err != nil {
				t.Fatal(err)
			}
			clients[o.who] = cli
		}
		if o.write {
			_, err = cli.Put(ctx, o.key, "x")
		} else {
			_, err = cli.Get(ctx, o.key)
		}
		if o.ok && err != nil {
			t.Errorf("%s %s %s: %v", o.who, map[bool]string{true: "write", false: "read"}[o.write], o.key, err)
		}
		if !o.ok && !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("%s %s %s: %v, want permission denied", o.who, map[bool]string{true: "write", false: "read"}[o.write], o.key, err)
		}
	}

	// A worker's membership under a lease, as workers keep it: grant, put,
	// keep alive, ask etcd how long is left, revoke.
	w, _ := etcdAs(t, ep, creds["a/worker"])
	l, err := w.Grant(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Put(ctx, a.Worker("w2"), "{}", clientv3.WithLease(l.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.KeepAliveOnce(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
	if r, err := w.TimeToLive(ctx, l.ID); err != nil || r.TTL <= 0 {
		t.Fatalf("time to live: %v %v", r, err)
	}
	if _, err := w.Revoke(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
	// A shard claims its index as paramserver/node does, in a transaction.
	ps, _ := etcdAs(t, ep, creds["a/ps"])
	k := a.Shard(1)
	r, err := ps.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(clientv3.OpPut(k, "{}")).Commit()
	if err != nil || !r.Succeeded {
		t.Fatalf("a shard's claim: %v %v", r, err)
	}
	if !strings.Contains(EtcdUser("a", Worker), "a") {
		t.Fatal("user name")
	}
}

// The embedded etcd's refusals are logged and counted by kind, as NATS's
// are; what it allows is neither.
func TestEtcdRefusalsAreLoggedAndCounted(t *testing.T) {
	lb := &logBuffer{}
	c := testenv.ServersWith(t, embedded.Options{EtcdGRPC: EtcdServerOptions(slog.New(slog.NewTextHandler(lb, nil)))})
	ep := c.EtcdEndpoints[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	worker, _ := New("a", Worker)
	coord, _ := New("a", Coordinator)
	admin, err := etcdAs(t, ep, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ProvisionEtcd(ctx, admin, []*Creds{worker, coord}); err != nil {
		t.Fatal(err)
	}
	if err := EnableEtcdAuth(ctx, admin, "root-secret"); err != nil {
		t.Fatal(err)
	}
	count := func(kind string) float64 { return testutil.ToFloat64(metrics.EtcdRefused.WithLabelValues(kind)) }
	perm0, auth0 := count("permission"), count("authentication")
	wc, err := etcdAs(t, ep, worker)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wc.Get(ctx, etcdstore.KeysFor("a").Spec()); err != nil { // allowed: not counted
		t.Fatal(err)
	}
	if count("permission") != perm0 || count("authentication") != auth0 {
		t.Fatal("an allowed read was counted as a refusal")
	}
	if _, err := wc.Put(ctx, etcdstore.KeysFor("a").Spec(), "{}"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("a worker writing the spec: %v", err)
	}
	if _, err := wc.Get(ctx, etcdstore.KeysFor("b").Spec()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("a worker reading another job: %v", err)
	}
	wrong := *coord
	wrong.etcdPassword = "guess"
	if _, err := etcdAs(t, ep, &wrong); !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Fatalf("a wrong password: %v", err)
	}
	if got := count("permission") - perm0; got != 2 {
		t.Fatalf("%v permission refusals counted, want 2", got)
	}
	if got := count("authentication") - auth0; got != 1 {
		t.Fatalf("%v authentication refusals counted, want 1", got)
	}
	logs := lb.String()
	if strings.Count(logs, `msg="etcd refused a client" kind=permission`) != 2 || strings.Count(logs, `msg="etcd refused a client" kind=authentication`) != 1 ||
		!strings.Contains(logs, "/etcdserverpb.KV/Put") || strings.Contains(logs, "guess") {
		t.Fatalf("the log does not show the refusals as it should:\n%s", logs)
	}
}
