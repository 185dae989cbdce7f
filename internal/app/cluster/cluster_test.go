package cluster

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/app/auth"
	"github.com/downpour-ml/downpour/internal/testenv"
)

// A role cut off from NATS for longer than giveUp ends with ErrNATSGone as
// its cause; Cause turns the role's own error into it.
func TestWatchGivesUp(t *testing.T) {
	s := testenv.NATS(t, 0)
	ep := Endpoints{NATS: s.ClientURL(), Timeout: 5 * time.Second}
	nc, err := ep.ConnectNATS("worker 1", auth.Worker)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, stop := Watch(context.Background(), nc, 300*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	defer stop()
	s.Shutdown()
	s.WaitForShutdown()
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("still running 10 s after NATS went away, giving up after 300 ms")
	}
	if err := Cause(ctx, context.Canceled); !errors.Is(err, ErrNATSGone) {
		t.Fatalf("cause %v, want ErrNATSGone", err)
	}
	if err := Cause(ctx, nil); err != nil {
		t.Fatalf("a role that ended well reports %v", err)
	}
}

// An unreachable NATS is an error within the timeout that names the
// address; a credentials file of another role is refused before dialling.
func TestConnectErrors(t *testing.T) {
	ep := Endpoints{NATS: "nats://127.0.0.1:1", Timeout: time.Second}
	start := time.Now()
	if _, err := ep.ConnectNATS("worker", auth.Worker); err == nil || !strings.Contains(err.Error(), "cannot reach NATS at nats://127.0.0.1:1") {
		t.Fatalf("unreachable NATS: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %v", d)
	}
	c, err := auth.New("j", auth.PS)
	if err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/ps.creds"
	if err := c.Write(path); err != nil {
		t.Fatal(err)
	}
	ep.CredsFile = path
	if _, err := ep.ConnectNATS("worker", auth.Worker); err == nil || !strings.Contains(err.Error(), "holds credentials of a ps; this is a worker") {
		t.Fatalf("another role's credentials: %v", err)
	}
}

// Traffic reads a connection's own counts, and says when it is closed (so
// that the metrics keep its last counts).
func TestTrafficReadsConnection(t *testing.T) {
	s := testenv.NATS(t, 0)
	nc := testenv.Conn(t, s.ClientURL())
	read := Traffic(nc)
	for range 3 {
		if err := nc.Publish("x", make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	st, closed := read()
	if st.OutMsgs != 3 || st.OutBytes < 3000 || closed {
		t.Fatalf("after 3 messages of 1000 bytes: %+v, closed %v", st, closed)
	}
	nc.Close()
	if st, closed = read(); st.OutMsgs != 3 || !closed {
		t.Fatalf("after close: %+v, closed %v", st, closed)
	}
}
