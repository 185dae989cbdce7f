package main

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/downpour-ml/downpour/internal/app/auth"
	"github.com/downpour-ml/downpour/internal/app/cluster"
)

// The roles of `downpour train` reach its embedded NATS server in-process:
// they connect with no TCP listener to dial, the server knows them by name,
// and it still checks their credentials.
func TestEmbeddedRolesConnectInProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ep := endpoints{Endpoints: cluster.Endpoints{Timeout: 5 * time.Second}}
	var logs syncBuffer // the server logs from its own goroutines
	c, err := startEmbedded(ctx, t.TempDir(), "inproc", &ep, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ep.InProcess == nil {
		t.Fatal("startEmbedded left the roles to dial the embedded NATS over TCP")
	}
	// A loopback address where nothing listens: only an in-process
	// connection can succeed.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep.NATS = "nats://" + l.Addr().String()
	l.Close()

	nc, err := ep.ConnectNATS("worker 0", auth.Worker)
	if err != nil {
		t.Fatalf("in-process connection: %v", err)
	}
	defer nc.Close()
	if err := nc.FlushTimeout(5 * time.Second); err != nil { // a PING/PONG round trip through the server
		t.Fatal(err)
	}
	connz, err := c.NATS.Connz(&server.ConnzOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, ci := range connz.Conns {
		seen = append(seen, ci.Name)
	}
	if !strings.Contains(strings.Join(seen, ","), "downpour worker 0") {
		t.Fatalf("the server does not list the worker's connection; it lists %q", seen)
	}

	// refused connects with ep and wants an error saying want.
	refused := func(what string, ep endpoints, name, want string) {
		t.Helper()
		nc, err := ep.ConnectNATS(name, auth.Worker)
		if err == nil || !strings.Contains(err.Error(), want) {
			if nc != nil {
				nc.Close()
			}
			t.Fatalf("%s: got %v, want an error saying %q", what, err, want)
		}
	}
	noCreds := ep
	noCreds.Creds = nil
	refused("in-process connection without credentials", noCreds, "worker 1", "closed this worker's in-process connection")
	if !strings.Contains(logs.String(), "authentication error") {
		t.Fatalf("the server's log does not say why it closed the connection:\n%s", logs.String())
	}

	tcpOnly := ep
	tcpOnly.InProcess = nil
	refused("TCP connection to a closed port", tcpOnly, "worker 2", "cannot reach NATS")
}
