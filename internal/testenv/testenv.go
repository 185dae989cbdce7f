// Package testenv starts the real servers a test needs, NATS and etcd
// embedded in the test process, and connects clients to them; everything it
// starts is stopped at the test's cleanup (clients before servers). Tests
// use real servers, never mocks of them: this is the one place that starts
// them. It also reads the images tests draw (PNG).
//
//	nc := testenv.NATSConn(t, 0)  // a server and a connection to it
//	cli := testenv.Etcd(t)        // a one-member etcd and a client
//	c := testenv.Servers(t)       // both, as 'downpour train' embeds them
package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/downpour-ml/downpour/internal/embedded"
)

// NATS starts a NATS server (maxPayload 0: the default max_payload).
func NATS(t testing.TB, maxPayload int32) *server.Server {
	t.Helper()
	s, err := embedded.StartNATS(t.TempDir(), maxPayload)
	if err != nil {
		t.Fatalf("starting NATS: %v", err)
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// Conn opens a connection to the NATS server at url.
func Conn(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connecting to NATS at %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// NATSConn starts a NATS server and opens a connection to it.
func NATSConn(t testing.TB, maxPayload int32) *nats.Conn {
	t.Helper()
	return Conn(t, NATS(t, maxPayload).ClientURL())
}

// EtcdServer starts a one-member etcd.
func EtcdServer(t testing.TB) *embed.Etcd {
	t.Helper()
	e, err := embedded.StartEtcd(context.Background(), t.TempDir())
	if err != nil {
		t.Fatalf("starting etcd: %v", err)
	}
	t.Cleanup(e.Close)
	return e
}

// EtcdClient connects to etcd at endpoints and checks that it answers.
func EtcdClient(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("connecting to etcd at %v: %v", endpoints, err)
	}
	t.Cleanup(func() { cli.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Get(ctx, "health"); err != nil {
		t.Fatalf("etcd at %v does not answer: %v", endpoints, err)
	}
	return cli
}

// Etcd starts a one-member etcd and connects a client to it.
func Etcd(t testing.TB) *clientv3.Client {
	t.Helper()
	return EtcdClient(t, []string{EtcdServer(t).Config().AdvertiseClientUrls[0].String()})
}

// Servers starts NATS and etcd together, as 'downpour train' embeds them.
func Servers(t testing.TB) *embedded.Cluster {
	t.Helper()
	return ServersWith(t, embedded.Options{})
}

// ServersWith is Servers with options (credentials, TLS, ports, logs); an
// empty opts.Dir is a directory of the test's.
func ServersWith(t testing.TB, opts embedded.Options) *embedded.Cluster {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	c, err := embedded.StartWith(t.Context(), opts)
	if err != nil {
		t.Fatalf("starting NATS and etcd: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}
