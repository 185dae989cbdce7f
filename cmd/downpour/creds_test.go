package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/app/auth"
	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/internal/testenv"
)

// A job runs as separate processes on NATS servers that require
// credentials, each role with its own file from downpour creds; a role
// without credentials, or with another role's, is refused, and the server
// logs the refusal.
func TestJobWithCredentials(t *testing.T) {
	downpourBinary(t)
	dir := t.TempDir()
	creds := filepath.Join(dir, "creds")
	code, stdout, stderr := runCmd(t, 10*time.Second, "creds", "--job", "sec", "--dir", creds)
	if code != 0 {
		t.Fatalf("creds: exit %d: %s%s", code, stdout, stderr)
	}
	conf, err := os.ReadFile(filepath.Join(creds, "nats-auth.conf"))
	if err != nil || !strings.Contains(string(conf), "downpour.sec.*.ps.*.push") {
		t.Fatalf("nats-auth.conf (%v):\n%s", err, conf)
	}
	for _, r := range auth.Roles {
		path := filepath.Join(creds, fmt.Sprintf("sec-%s.creds", r))
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s's credentials: %v, mode %v (want 0600)", r, err, st.Mode().Perm())
		}
		c, err := auth.Read(path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(path)
		_, seed, _ := strings.Cut(string(b), "nats-seed: ")
		if seed = strings.TrimSpace(seed); seed == "" || strings.Contains(string(conf), seed) || !strings.Contains(string(conf), c.Public()) {
			t.Fatalf("nats-auth.conf holds %s's seed or lacks its public key", r)
		}
	}
	// --refresh writes the servers' side again (an upgrade's permissions),
	// with the same identities: a config whose permissions are gone comes
	// back whole, and no credentials file changes.
	before, _ := os.ReadFile(filepath.Join(creds, "sec-ps.creds"))
	os.WriteFile(filepath.Join(creds, "nats-auth.conf"), []byte("# stale\n"), 0o644)
	if code, _, stderr := runCmd(t, 10*time.Second, "creds", "--refresh", "--dir", creds); code != 0 {
		t.Fatalf("creds --refresh: %s", stderr)
	}
	if again, err := os.ReadFile(filepath.Join(creds, "nats-auth.conf")); err != nil || string(again) != string(conf) {
		t.Fatalf("creds --refresh wrote another config (%v):\n%s\nwas\n%s", err, again, conf)
	}
	if after, _ := os.ReadFile(filepath.Join(creds, "sec-ps.creds")); string(after) != string(before) {
		t.Fatal("creds --refresh changed a role's credentials")
	}
	if !strings.Contains(string(conf), "downpour.sec.*.ps.*.repl") {
		t.Fatal("nats-auth.conf does not let shards reach their chains' subjects")
	}
	if code, _, _ := runCmd(t, 10*time.Second, "creds", "--refresh", "--dir", t.TempDir()); code == 0 {
		t.Fatal("creds --refresh of a directory without users succeeded")
	}
	// A second job on the same servers.
	if code, _, stderr := runCmd(t, 10*time.Second, "creds", "--job", "other", "--dir", creds); code != 0 {
		t.Fatalf("creds: %s", stderr)
	}
	users, err := readUsers(creds)
	if err != nil || len(users) != 2*len(auth.Roles) {
		t.Fatalf("users %v, %v", users, err)
	}
	// The servers speak TLS only, with the cluster's own authority.
	tlsDir := filepath.Join(dir, "tls")
	if code, _, stderr := runCmd(t, 10*time.Second, "certs", "--dir", tlsDir, "--hosts", "downpour-test.local"); code != 0 {
		t.Fatalf("certs: %s", stderr)
	}
	servers := start(t, "servers", "servers", "--dir", filepath.Join(dir, "servers"), "--creds-dir", creds, "--tls-dir", tlsDir)
	var natsURL, etcdURL, caFile string
	for deadline := time.Now().Add(time.Minute); natsURL == ""; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("servers did not say where they listen:\n%s", servers.out.String())
		}
		for _, l := range strings.Split(servers.out.String(), "\n") {
			if f := strings.Fields(l); len(f) == 9 && f[0] == "run" && f[3] == "--nats" && f[7] == "--tls-ca" {
				natsURL, etcdURL, caFile = f[4], f[6], f[8]
			}
		}
	}
	if !strings.HasPrefix(natsURL, "tls://") || !strings.HasPrefix(etcdURL, "https://") {
		t.Fatalf("servers with --tls-dir listen at %s and %s", natsURL, etcdURL)
	}
	cc, err := auth.ClientTLS(caFile)
	if err != nil {
		t.Fatal(err)
	}
	serverLog := &servers.out
	c := struct {
		NATSURL       string
		EtcdEndpoints []string
	}{natsURL, []string{etcdURL}}
	ep := []string{"--nats", c.NATSURL, "--etcd", c.EtcdEndpoints[0], "--tls-ca", caFile, "--http", ""}
	credsOf := func(r auth.Role) []string {
		return []string{"--creds", filepath.Join(creds, fmt.Sprintf("sec-%s.creds", r))}
	}

	// Refused: without the authority (the servers' certificate is not one
	// the system trusts), without credentials, and with another role's.
	code, _, stderr = runCmd(t, 30*time.Second, "worker", "--job", "sec", "--nats", natsURL, "--etcd", etcdURL, "--http", "")
	if code != 1 || !strings.Contains(stderr, "certificate") {
		t.Fatalf("a worker without --tls-ca: exit %d: %s", code, stderr)
	}
	code, _, stderr = runCmd(t, 30*time.Second, append([]string{"worker", "--job", "sec"}, ep...)...)
	if code != 1 || !strings.Contains(stderr, "requires a login") {
		t.Fatalf("a worker without credentials: exit %d: %s", code, stderr)
	}
	code, _, stderr = runCmd(t, 30*time.Second, append(append([]string{"worker", "--job", "sec"}, ep...), credsOf(auth.PS)...)...)
	if code != 1 || !strings.Contains(stderr, "holds credentials of a ps; this is a worker") {
		t.Fatalf("a worker with a shard's credentials: exit %d: %s", code, stderr)
	}
	if nc, err := nats.Connect(natsURL, nats.Secure(cc)); err == nil {
		nc.Close()
		t.Fatal("NATS took a client without credentials")
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(serverLog.String(), "NATS refused a client") ||
		!strings.Contains(serverLog.String(), "kind=authentication"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) { // the server logs it on its own goroutine
			t.Fatalf("the server's log does not show the refusal:\n%s", serverLog.String())
		}
	}

	// etcd: a worker may not change the job's spec; another job's worker
	// may not even read it; nobody gets in without a login.
	login := func(job string, r auth.Role) *clientv3.Client {
		cr, err := auth.Read(filepath.Join(creds, fmt.Sprintf("%s-%s.creds", job, r)))
		if err != nil {
			t.Fatal(err)
		}
		u, pw := cr.EtcdLogin()
		cli, err := connectAs(etcdURL, u, pw, cc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := login("sec", auth.Worker).Put(ctx, etcdstore.KeysFor("sec").Spec(), "{}"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("a worker writing its job's spec: %v", err)
	}
	if _, err := login("other", auth.Worker).Get(ctx, etcdstore.KeysFor("sec").Spec()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("another job's worker reading the spec: %v", err)
	}
	if _, err := connectAs(etcdURL, "", "", cc); err == nil || !strings.Contains(err.Error(), "requires a login") {
		t.Fatalf("etcd without a login: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(serverLog.String(), `msg="etcd refused a client" kind=permission`) ||
		!strings.Contains(serverLog.String(), `msg="etcd refused a client" kind=authentication`); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the server's log does not show etcd's refusals:\n%s", serverLog.String())
		}
	}

	// The job, each role with its own credentials.
	spec := []string{"--job", "sec", "--steps", "30", "--hidden", "64", "--log-every", "10"}
	var procs []*proc
	for i := 0; i < 2; i++ {
		procs = append(procs, start(t, fmt.Sprintf("worker %d", i), append(append([]string{"worker", "--job", "sec"}, ep...), credsOf(auth.Worker)...)...))
		procs = append(procs, start(t, fmt.Sprintf("ps %d", i), append(append([]string{"ps", "--job", "sec"}, ep...), credsOf(auth.PS)...)...))
	}
	out := filepath.Join(dir, "run")
	coord := start(t, "coordinator", append(append(append([]string{"coordinator", "--out", out}, spec...), ep...), credsOf(auth.Coordinator)...)...)
	endJob(t, coord, procs, out, dir, spec, "authenticated")
	code, stdout, stderr = runCmd(t, 30*time.Second, append(append([]string{"status", "--job", "sec"}, ep[:6]...), credsOf(auth.Observer)...)...)
	if code != 0 || !strings.Contains(stdout, "job sec: done") {
		t.Fatalf("status with the observer's credentials: exit %d\n%s%s", code, stdout, stderr)
	}
}

func connectAs(endpoint, user, password string, tc *tls.Config) (*clientv3.Client, error) {
	return etcdstore.ConnectAs(context.Background(), []string{endpoint}, 5*time.Second, user, password, tc)
}

// etcd-auth gives an etcd over TLS the users of every job in a credentials
// directory and turns its authentication on; run again (a job added), it
// logs in as root with the password it kept and gives the new job's users.
func TestEtcdAuthCommand(t *testing.T) {
	dir := t.TempDir()
	creds, tlsDir := filepath.Join(dir, "creds"), filepath.Join(dir, "tls")
	for _, args := range [][]string{{"creds", "--job", "a", "--dir", creds}, {"certs", "--dir", tlsDir}} {
		if code, _, stderr := runCmd(t, 10*time.Second, args...); code != 0 {
			t.Fatalf("%v: %s", args, stderr)
		}
	}
	c := testenv.ServersWith(t, embedded.Options{Dir: filepath.Join(dir, "servers"),
		TLSCert: filepath.Join(tlsDir, auth.ServerFile), TLSKey: filepath.Join(tlsDir, auth.ServerKeyFile)})
	cc, err := auth.ClientTLS(filepath.Join(tlsDir, auth.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	etcdAuth := func() {
		t.Helper()
		code, stdout, stderr := runCmd(t, time.Minute, "etcd-auth", "--creds-dir", creds, "--etcd", c.EtcdEndpoints[0], "--tls-ca", filepath.Join(tlsDir, auth.CAFile))
		if code != 0 || !strings.Contains(stdout, "authentication on") {
			t.Fatalf("etcd-auth: exit %d\n%s%s", code, stdout, stderr)
		}
	}
	etcdAuth()
	if st, err := os.Stat(filepath.Join(creds, "etcd-root.secret")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the root password file: %v, mode %v", err, st.Mode().Perm())
	}
	if _, err := connectAs(c.EtcdEndpoints[0], "", "", cc); err == nil || !strings.Contains(err.Error(), "requires a login") {
		t.Fatalf("etcd without a login after etcd-auth: %v", err)
	}
	if code, _, stderr := runCmd(t, 10*time.Second, "creds", "--job", "b", "--dir", creds); code != 0 {
		t.Fatal(stderr)
	}
	etcdAuth()
	for _, j := range []string{"a", "b"} {
		cr, err := auth.Read(filepath.Join(creds, j+"-coordinator.creds"))
		if err != nil {
			t.Fatal(err)
		}
		u, pw := cr.EtcdLogin()
		cli, err := connectAs(c.EtcdEndpoints[0], u, pw, cc)
		if err != nil {
			t.Fatalf("job %s's coordinator: %v", j, err)
		}
		_, err = cli.Put(t.Context(), etcdstore.KeysFor(j).Spec(), "{}")
		cli.Close()
		if err != nil {
			t.Fatalf("job %s's coordinator writing its spec: %v", j, err)
		}
	}
	if code, _, stderr := runCmd(t, 10*time.Second, "etcd-auth", "--creds-dir", creds); code != 2 || !strings.Contains(stderr, "--etcd") {
		t.Fatalf("etcd-auth without --etcd: exit %d: %s", code, stderr)
	}
}

// A job laid out over seats, its workers each holding credentials pinned
// to one model replica (downpour creds --replicas): each worker takes a seat
// of its own replica only, and the job ends with the in-process run's
// parameters. A worker with an unpinned worker's file finds none (creds
// --replicas writes none), and one pinned to a replica the job lacks is
// refused.
func TestSeatsWithReplicaCredentials(t *testing.T) {
	downpourBinary(t)
	dir := t.TempDir()
	creds := filepath.Join(dir, "creds")
	if code, stdout, stderr := runCmd(t, 10*time.Second, "creds", "--job", "rep", "--dir", creds, "--replicas", "2"); code != 0 {
		t.Fatalf("creds: exit %d: %s%s", code, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(creds, "rep-worker.creds")); !os.IsNotExist(err) {
		t.Fatalf("creds --replicas wrote an unpinned worker's file: %v", err)
	}
	users, err := readUsers(creds)
	if err != nil {
		t.Fatal(err)
	}
	pinned := map[int]bool{}
	for _, u := range users {
		if u.Role == auth.Worker {
			pinned[u.Replica] = true
		}
	}
	if len(pinned) != 2 || !pinned[0] || !pinned[1] {
		t.Fatalf("the workers' users are of replicas %v, want 0 and 1", pinned)
	}
	servers := start(t, "servers", "servers", "--dir", filepath.Join(dir, "servers"), "--creds-dir", creds)
	var natsURL, etcdURL string
	for deadline := time.Now().Add(time.Minute); natsURL == ""; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("servers did not say where they listen:\n%s", servers.out.String())
		}
		for _, l := range strings.Split(servers.out.String(), "\n") {
			if f := strings.Fields(l); len(f) >= 7 && f[0] == "run" && f[3] == "--nats" {
				natsURL, etcdURL = f[4], f[6]
			}
		}
	}
	ep := []string{"--nats", natsURL, "--etcd", etcdURL, "--http", ""}
	credsOf := func(name string) []string { return []string{"--creds", filepath.Join(creds, "rep-"+name+".creds")} }
	spec := []string{"--job", "rep", "--steps", "16", "--hidden", "24", "--embed", "16", "--layers", "2", "--batch", "6",
		"--log-every", "8", "--workers", "2", "--stages", "1", "--softmax-slices", "1", "--data", "synthetic:reverse"}
	var procs []*proc
	workers := map[string]int{}
	// Replica 1's workers first: were they free to take any seat, they
	// would take replica 0's, whose subjects their NATS identity cannot
	// reach.
	for i, r := range []int{1, 1, 0, 0} {
		name := fmt.Sprintf("worker %d of replica %d", i, r)
		procs = append(procs, start(t, name, append(append([]string{"worker", "-v", "--job", "rep", "--id", fmt.Sprintf("w%d", i)}, ep...), credsOf(fmt.Sprintf("worker-r%d", r))...)...))
		workers[name] = r
		if i == 1 {
			time.Sleep(time.Second)
		}
	}
	for i := range 2 {
		procs = append(procs, start(t, fmt.Sprintf("ps %d", i), append(append([]string{"ps", "--job", "rep"}, ep...), credsOf("ps")...)...))
	}
	out := filepath.Join(dir, "run")
	coord := start(t, "coordinator", append(append(append([]string{"coordinator", "--out", out}, spec...), ep...), credsOf("coordinator")...)...)
	endJob(t, coord, procs, out, dir, spec, "replica-pinned")
	for _, p := range procs {
		r, ok := workers[p.name]
		if !ok {
			continue
		}
		var rank int
		i := strings.Index(p.out.String(), "rank=")
		if i < 0 {
			t.Fatalf("%s does not say its rank:\n%s", p.name, p.out.String())
		}
		if _, err := fmt.Sscanf(p.out.String()[i:], "rank=%d", &rank); err != nil {
			t.Fatalf("%s does not say its rank:\n%s", p.name, p.out.String())
		}
		if rank/2 != r {
			t.Fatalf("%s held rank %d, of replica %d", p.name, rank, rank/2)
		}
	}
	// A worker pinned to a replica the job does not have is refused.
	code, _, stderr := runCmd(t, 30*time.Second, append(append([]string{"worker", "--job", "rep", "--replica", "5"}, ep...), credsOf("worker-r1")...)...)
	if code != 2 || !strings.Contains(stderr, "--replica 5, but --creds are replica 1's") {
		t.Fatalf("--replica against pinned credentials: exit %d: %s", code, stderr)
	}
}
