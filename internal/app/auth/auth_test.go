package auth

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/metrics"
	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/internal/wire"
)

// logBuffer is a log sink safe for the server's goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *logBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// world is an embedded NATS server that knows two jobs' identities.
type world struct {
	url   string
	log   *logBuffer
	creds map[string]*Creds // "job/role"
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{log: &logBuffer{}, creds: map[string]*Creds{}}
	var users []User
	for _, j := range []string{"a", "b"} {
		for _, r := range Roles {
			c, err := New(j, r)
			if err != nil {
				t.Fatal(err)
			}
			w.creds[j+"/"+string(r)] = c
			users = append(users, c.User())
			if r == Worker {
				for rep := range 2 { // a/worker0, a/worker1: pinned to replicas 0 and 1
					p, err := c.ForReplica(rep)
					if err != nil {
						t.Fatal(err)
					}
					w.creds[fmt.Sprintf("%s/worker%d", j, rep)] = p
					users = append(users, p.User())
				}
			}
		}
	}
	c := testenv.ServersWith(t, embedded.Options{NATSUsers: ServerUsers(users),
		NATSLog: ServerLog(slog.New(slog.NewTextHandler(w.log, nil)))})
	w.url = c.NATSURL
	return w
}

// conn connects as job/role, collecting the asynchronous errors the server
// sends (permission violations).
func (w *world) conn(t *testing.T, who string) (*nats.Conn, *errList) {
	t.Helper()
	errs := &errList{}
	opts := append(w.creds[who].NATSOptions(), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs.add(err) }))
	nc, err := nats.Connect(w.url, opts...)
	if err != nil {
		t.Fatalf("%s: %v", who, err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

type errList struct {
	mu   sync.Mutex
	errs []error
}

func (e *errList) add(err error) { e.mu.Lock(); e.errs = append(e.errs, err); e.mu.Unlock() }

// wait waits for an error that says want.
func (e *errList) wait(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		e.mu.Lock()
		for _, err := range e.errs {
			if strings.Contains(err.Error(), want) {
				e.mu.Unlock()
				return
			}
		}
		e.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no error saying %q; got %v", want, e.errs)
}

func refused(kind string) float64 {
	return testutil.ToFloat64(metrics.NATSRefused.WithLabelValues(kind))
}

// A shard of job a serves a worker of job a; everyone else who tries to
// reach it, or to reach beyond their role, is refused, logged and counted.
func TestPermissionsIsolateRolesAndJobs(t *testing.T) {
	w := newWorld(t)
	push, pull := wire.PushSubject("a", 1, 0), wire.PullSubject("a", 1, 0)

	// The shard of job a answers pulls: a worker's round trip works (the
	// shard may reply only to requests it received).
	ps, _ := w.conn(t, "a/ps")
	var mu sync.Mutex
	var pushes int
	if _, err := ps.Subscribe(push, func(m *nats.Msg) { mu.Lock(); pushes++; mu.Unlock(); m.Respond([]byte("ok")) }); err != nil {
		t.Fatal(err)
	}
	if _, err := ps.Subscribe(pull, func(m *nats.Msg) { m.Respond([]byte("params")) }); err != nil {
		t.Fatal(err)
	}
	ps.Flush()
	worker, _ := w.conn(t, "a/worker")
	if r, err := worker.Request(pull, []byte("pull"), 5*time.Second); err != nil || string(r.Data) != "params" {
		t.Fatalf("a worker's pull: %v %v", r, err)
	}
	if _, err := worker.Request(push, []byte("push"), 5*time.Second); err != nil {
		t.Fatalf("a worker's push: %v", err)
	}

	// No credentials: no connection.
	before := refused("authentication")
	if nc, err := nats.Connect(w.url); err == nil {
		nc.Close()
		t.Fatal("a client without credentials connected")
	} else if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("connecting without credentials: %v", err)
	}
	// Unknown credentials (a key the server does not list): no connection.
	stranger, _ := New("a", Worker)
	if nc, err := nats.Connect(w.url, stranger.NATSOptions()...); err == nil {
		nc.Close()
		t.Fatal("a client with unknown credentials connected")
	}
	if got := refused("authentication"); got < before+2 {
		t.Errorf("authentication refusals counted %v -> %v, want 2 more", before, got)
	}

	// The seats of a replica laid out over stages talk on the job's seat
	// subjects; no other role, and no other job's worker, may listen there
	// (or, below, send).
	seat := wire.SeatSubject("a", 0, 1)
	seatMsgs := make(chan []byte, 4)
	if _, err := worker.Subscribe(seat, func(m *nats.Msg) { seatMsgs <- m.Data }); err != nil {
		t.Fatal(err)
	}
	worker.Flush()
	seatPeer, _ := w.conn(t, "a/worker")
	if err := seatPeer.Publish(seat, []byte("activations")); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-seatMsgs:
		if string(got) != "activations" {
			t.Fatalf("a seat got %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a worker's message to another seat of its job did not arrive")
	}
	seatSpy, seatSpyErrs := w.conn(t, "b/worker")
	seatSpy.Subscribe(seat, func(*nats.Msg) { t.Error("another job's worker received a seat's message") })
	seatSpyErrs.wait(t, "Permissions Violation for Subscription")
	seatPS, seatPSErrs := w.conn(t, "a/ps")
	seatPS.Publish(seat, []byte("poison"))
	seatPSErrs.wait(t, "Permissions Violation for Publish")

	// A worker pinned to replica 0 talks to replica 0's seats; a worker
	// pinned to replica 1 may neither listen there nor send there.
	own, ownErrs := w.conn(t, "a/worker0")
	if err := own.Publish(seat, []byte("own replica")); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-seatMsgs:
		if string(got) != "own replica" {
			t.Fatalf("a seat got %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a pinned worker's message to its own replica's seat did not arrive")
	}
	other, otherSeatErrs := w.conn(t, "a/worker1")
	other.Subscribe(seat, func(*nats.Msg) { t.Error("a worker of replica 1 received replica 0's seat message") })
	otherSeatErrs.wait(t, "Permissions Violation for Subscription")
	other.Publish(seat, []byte("poison from replica 1"))
	otherSeatErrs.wait(t, "Permissions Violation for Publish")
	own.Publish(wire.SeatSubject("a", 1, 0), []byte("poison from replica 0"))
	ownErrs.wait(t, "Permissions Violation for Publish")

	// A worker may not listen to pushes (it would see others' gradients).
	before = refused("subscribe")
	spy, spyErrs := w.conn(t, "a/worker")
	seen := 0
	spy.Subscribe(push, func(*nats.Msg) { seen++ })
	spyErrs.wait(t, "Permissions Violation for Subscription")
	// ... nor may another job's shard.
	otherPS, otherErrs := w.conn(t, "b/ps")
	otherPS.Subscribe(push, func(*nats.Msg) { seen++ })
	otherErrs.wait(t, "Permissions Violation for Subscription")
	// ... nor may anyone read another identity's replies.
	obs, obsErrs := w.conn(t, "a/observer")
	obs.Subscribe(InboxPrefix("a", Worker)+".>", func(*nats.Msg) { seen++ })
	obsErrs.wait(t, "Permissions Violation for Subscription")
	if got := refused("subscribe"); got < before+3 {
		t.Errorf("subscription refusals counted %v -> %v, want 3 more", before, got)
	}

	// Shards that keep copies of each other's blocks send their chains'
	// entries on the replication subjects: a shard of job a reaches
	// another; no worker, and no other job's shard, may send or listen
	// there.
	repl := wire.ReplSubject("a", 1, 1)
	replMsgs := make(chan []byte, 4)
	ps2, _ := w.conn(t, "a/ps")
	if _, err := ps2.Subscribe(repl, func(m *nats.Msg) { replMsgs <- m.Data }); err != nil {
		t.Fatal(err)
	}
	ps2.Flush()
	psPeer, _ := w.conn(t, "a/ps")
	if err := psPeer.Publish(repl, []byte("entries")); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-replMsgs:
		if string(got) != "entries" {
			t.Fatalf("a shard got %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a shard's entries to another shard of its job did not arrive")
	}
	replWorker, replWorkerErrs := w.conn(t, "a/worker")
	replWorker.Publish(repl, []byte("forged entries"))
	replWorkerErrs.wait(t, "Permissions Violation for Publish")
	replWorker.Subscribe(repl, func(*nats.Msg) { t.Error("a worker read a shard's entries") })
	replWorkerErrs.wait(t, "Permissions Violation for Subscription")
	replOther, replOtherErrs := w.conn(t, "b/ps")
	replOther.Publish(repl, []byte("another job's entries"))
	replOtherErrs.wait(t, "Permissions Violation for Publish")

	// Another job's worker may not push to job a; a shard may not publish
	// anything but replies and its chains' messages; an observer may not
	// push.
	before = refused("publish")
	mu.Lock()
	n := pushes
	mu.Unlock()
	bWorker, bErrs := w.conn(t, "b/worker")
	bWorker.Publish(push, []byte("poison"))
	bErrs.wait(t, "Permissions Violation for Publish")
	psErrs := &errList{}
	ps.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { psErrs.add(err) })
	ps.Publish(wire.ProgressSubject("a"), []byte("lies"))
	psErrs.wait(t, "Permissions Violation for Publish")
	obs.Publish(push, []byte("poison"))
	obsErrs.wait(t, "Permissions Violation for Publish")
	// The one legitimate push is all the shard has seen.
	if _, err := worker.Request(push, []byte("push"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if pushes != n+1 {
		t.Errorf("the shard saw %d pushes after the attempts, want %d (the worker's alone)", pushes, n+1)
	}
	mu.Unlock()
	if seen != 0 {
		t.Errorf("refused subscriptions received %d messages", seen)
	}
	if got := refused("publish"); got < before+3 {
		t.Errorf("publish refusals counted %v -> %v, want 3 more", before, got)
	}
	for _, want := range []string{"NATS refused a client", "kind=authentication", "kind=subscribe", "kind=publish"} {
		if !strings.Contains(w.log.String(), want) {
			t.Errorf("the server's log does not say %q:\n%s", want, w.log.String())
		}
	}
}

// The server config written for nats-server gives the same permissions: a
// real server started from it lets a worker and a shard talk and refuses a
// worker's subscription to pushes.
func TestServerConfigFile(t *testing.T) {
	var users []User
	creds := map[Role]*Creds{}
	for _, r := range Roles {
		c, _ := New("job-1", r)
		creds[r] = c
		users = append(users, c.User())
	}
	dir := t.TempDir()
	var b bytes.Buffer
	if err := WriteServerConfig(&b, users); err != nil {
		t.Fatal(err)
	}
	for _, c := range creds {
		if strings.Contains(b.String(), string(c.seed)) || !strings.Contains(b.String(), c.Public()) {
			t.Fatalf("the server config holds a seed, or lacks a public key:\n%s", b.String())
		}
	}
	conf := filepath.Join(dir, "nats.conf")
	os.WriteFile(conf, []byte("listen: 127.0.0.1:-1\n"+b.String()), 0o644)
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("nats-server does not take the config: %v\n%s", err, b.String())
	}
	opts.NoSigs, opts.NoLog = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("not ready")
	}
	defer s.Shutdown()
	ps, err := nats.Connect(s.ClientURL(), creds[PS].NATSOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	ps.Subscribe(wire.PullSubject("job-1", 3, 1), func(m *nats.Msg) { m.Respond([]byte("p")) })
	ps.Flush()
	errs := &errList{}
	wk, err := nats.Connect(s.ClientURL(), append(creds[Worker].NATSOptions(), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs.add(err) }))...)
	if err != nil {
		t.Fatal(err)
	}
	defer wk.Close()
	if r, err := wk.Request(wire.PullSubject("job-1", 3, 1), nil, 5*time.Second); err != nil || string(r.Data) != "p" {
		t.Fatalf("pull through the config file's permissions: %v %v", r, err)
	}
	wk.Subscribe(wire.PushSubject("job-1", 3, 1), func(*nats.Msg) {})
	errs.wait(t, "Permissions Violation for Subscription")
}

// Credentials files are private: written 0600, refused when others may read
// them, and their secret appears in no error and no String.
func TestCredsFiles(t *testing.T) {
	c, err := New("demo", Worker)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "demo-worker.creds")
	if err := c.Write(path); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %04o, want 0600", st.Mode().Perm())
	}
	back, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if back.Public() != c.Public() || back.Job != "demo" || back.Role != Worker {
		t.Fatalf("read back %v, wrote %v", back, c)
	}
	if strings.Contains(c.String(), string(c.seed)) || !strings.Contains(c.String(), c.Public()) {
		t.Fatalf("String %q shows the seed or hides the public key", c.String())
	}
	os.Chmod(path, 0o644)
	if _, err := Read(path); !errors.Is(err, ErrOpenFile) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a world-readable credentials file: %v", err)
	}
	for _, bad := range []string{
		"job: demo\nrole: worker\nnats-seed: SUnotaseed\n",
		"job: demo\nrole: admin\nnats-seed: x\n",
		"job: a.b\nrole: worker\nnats-seed: x\n",
		"job: demo\nrole: worker\npassword: hunter2\n",
	} {
		_, err := Parse([]byte(bad))
		if err == nil {
			t.Errorf("%q was accepted", bad)
		} else if strings.Contains(err.Error(), "SUnotaseed") || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("an error echoes a secret: %v", err)
		}
	}
}

// No credentials file crashes the reader, and none it accepts lacks a
// usable key.
func FuzzParseCreds(f *testing.F) {
	c, _ := New("demo", PS)
	var b bytes.Buffer
	dir := f.TempDir()
	c.Write(filepath.Join(dir, "c"))
	data, _ := os.ReadFile(filepath.Join(dir, "c"))
	f.Add(data)
	f.Add(b.Bytes())
	f.Add([]byte("job: demo\nrole: worker\nnats-seed: SUAAAA\n"))
	w, _ := New("demo", Worker)
	if p, err := w.ForReplica(3); err == nil {
		p.Write(filepath.Join(dir, "p"))
		data, _ := os.ReadFile(filepath.Join(dir, "p"))
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		if c.Replica < AnyReplica || c.Replica >= 0 && c.Role != Worker {
			t.Fatalf("accepted %s pinned to replica %d", c.Role, c.Replica)
		}
		if _, err := c.kp.Sign([]byte("nonce")); err != nil || !strings.HasPrefix(c.Public(), "U") {
			t.Fatalf("accepted credentials that cannot sign: %v", err)
		}
	})
}

// A worker's credentials pinned to a replica read back pinned, with the
// workers' etcd login; only a worker's may be pinned.
func TestCredsPinnedToAReplica(t *testing.T) {
	dir := t.TempDir()
	w, _ := New("demo", Worker)
	p, err := w.ForReplica(2)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "w2.creds")
	if err := p.Write(path); err != nil {
		t.Fatal(err)
	}
	got, err := Read(path)
	if err != nil || got.Replica != 2 || got.Role != Worker || got.Public() != p.Public() || got.Public() == w.Public() {
		t.Fatalf("%v %v", got, err)
	}
	if u1, p1 := got.EtcdLogin(); u1 == "" {
		t.Fatal("no etcd login")
	} else if u2, p2 := w.EtcdLogin(); u1 != u2 || p1 != p2 {
		t.Fatal("a pinned worker has another etcd login than the job's workers")
	}
	if u := got.User(); u.Replica != 2 {
		t.Fatalf("user %+v", u)
	}
	plain, _ := Parse([]byte(strings.Replace(string(mustRead(t, path)), "replica: 2\n", "", 1)))
	if plain == nil || plain.Replica != AnyReplica {
		t.Fatalf("credentials without a replica line: %+v", plain)
	}
	ps, _ := New("demo", PS)
	if _, err := ps.ForReplica(0); err == nil {
		t.Fatal("a shard's credentials pinned")
	}
	for _, bad := range []string{"replica: -1\n", "replica: x\n"} {
		if _, err := Parse(append(mustRead(t, path), bad...)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	psPath := filepath.Join(dir, "ps.creds")
	ps.Write(psPath)
	if _, err := Parse(append(mustRead(t, psPath), "replica: 1\n"...)); err == nil || !strings.Contains(err.Error(), "only a worker") {
		t.Fatalf("a shard's credentials with a replica: %v", err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
