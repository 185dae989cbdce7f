// Package deploy_test is the fault-injection suite against the
// docker-compose cluster of docker-compose.yml: it builds the images, brings
// the cluster up once per fault, trains a sync job on it, injects the fault
// with the Docker engine (kill, network disconnect, pause) at a step drawn
// from a seed, and checks that the job completes with parameters
// bit-identical to the same job trained by `downpour train` in one process.
//
//	go test -v -run TestClusterFaults ./deploy
//
// It needs a Docker engine and docker-compose. Without them it skips (and
// says why under -v), unless DOWNPOUR_CLUSTER_SUITE=require, as in CI, makes
// that a failure.
package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/app/auth"
	"github.com/downpour-ml/downpour/internal/checkpoint"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/paramserver"
)

// The suite's job: the compose cluster's Seq2Seq copy task, sync, on 2
// workers and 2 shards, checkpointed every 100 steps. About 15 s fault-free
// on a 2-core machine; each fault hits between steps 200 and 600, and the
// suite checks that the job was still running once it had. (With 1,500
// steps and faults up to step 800, a job at 400 steps/s could end in the
// second or two an etcd election kept the next reading waiting.)
const (
	jobName  = "demo" // the name docker-compose.yml gives it
	steps    = 2000
	jobArgs  = "--workers 2 --ps-shards 2 --steps 2000 --hidden 32 --embed 16 --optimizer adam --checkpoint-every 100 --log-every 500 --eval-every 0"
	roleArgs = "--lease-ttl 3" // seconds: the lease of workers and shards
	lease    = 3 * time.Second
	project  = "downpour-faults"
)

// cluster is one docker-compose project of the suite, watched from the host
// through the loopback ports faults.yml publishes.
type cluster struct {
	t   *testing.T
	cli *clientv3.Client
	// ncs are the test's connections, one to each NATS node: the shards'
	// clocks are read through whichever answers (a node being killed, or
	// one that has not learned a shard's interest from its routes yet,
	// does not stop the reading).
	ncs []*nats.Conn
	hit map[string]bool // the services a fault hit
	// placement is the last placement read from etcd, used while etcd
	// does not answer.
	placement *job.Placement
	// lastErr is why the last clock reading failed, for a failure message.
	lastErr error
	// at is the step the fault is injected at; landed says the check that
	// it landed while the job ran has been made (an isolation makes it
	// right after the cut: the job can finish while the worker is away).
	at     int64
	landed bool
}

// clusterArgs are the flags a fault's job adds to the suite's (fault.args).
var clusterArgs string

// compose runs docker-compose on the suite's project.
func compose(args ...string) (string, error) {
	cmd := exec.Command("docker-compose", append([]string{"-p", project, "-f", "docker-compose.yml", "-f", "faults.yml"}, args...)...)
	cmd.Env = append(os.Environ(), "JOB_ARGS="+jobArgs+clusterArgs, "ROLE_ARGS="+roleArgs)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func docker(args ...string) (string, error) {
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

func container(service string) string { return project + "_" + service + "_1" }

// port is the loopback address faults.yml published for a service's port.
func port(t *testing.T, service string, p int) string {
	out, err := compose("port", service, fmt.Sprint(p))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// up starts the cluster and connects to its etcd and NATS servers.
func up(t *testing.T) *cluster {
	t.Helper()
	compose("down", "-v", "--remove-orphans") // whatever an interrupted run left
	began := time.Now()
	// As cluster.sh up: the servers, then etcd's users, then the roles.
	if _, err := compose("up", "-d", "etcd1", "etcd2", "etcd3", "nats1", "nats2", "nats3"); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		_, err := compose("run", "--rm", "--no-deps", "etcd-auth")
		if err == nil {
			break
		}
		if i == 30 {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
	}
	c := &cluster{t: t, hit: map[string]bool{}}
	t.Cleanup(c.down)
	// The test watches as the job's observer, over TLS. It connects before
	// the roles start: the job runs at some 70 steps/s, and a test that
	// took 40 s to connect found it done before the step of its fault.
	tc, err := auth.ClientTLS("build/secrets/tls/" + auth.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	obs, err := auth.Read("build/secrets/creds/demo-observer.creds")
	if err != nil {
		t.Fatal(err)
	}
	var etcds, natss []string
	for i := 1; i <= 3; i++ {
		etcds = append(etcds, "https://"+port(t, fmt.Sprint("etcd", i), 2379))
		natss = append(natss, "tls://"+port(t, fmt.Sprint("nats", i), 4222))
	}
	user, password := obs.EtcdLogin()
	if c.cli, err = etcdstore.ConnectAs(t.Context(), etcds, 10*time.Second, user, password, tc); err != nil {
		t.Fatal(err)
	}
	for i, u := range natss {
		nc, err := nats.Connect(u, append(obs.NATSOptions(), nats.Secure(tc), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true),
			nats.ReconnectWait(100*time.Millisecond), nats.IgnoreDiscoveredServers())...)
		if err != nil {
			t.Fatal(err)
		}
		c.ncs = append(c.ncs, nc)
		// The server on the published port must be the cluster's own.
		want := fmt.Sprint("nats", i+1)
		for deadline := time.Now().Add(30 * time.Second); nc.ConnectedServerName() != want; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the NATS server there is %q (%v), not the cluster's %s", u, nc.ConnectedServerName(), nc.Status(), want)
			}
		}
	}
	connected := time.Now()
	if _, err := compose("up", "-d"); err != nil { // the roles
		t.Fatal(err)
	}
	t.Logf("servers up and the test connected in %.1f s; the roles started in %.1f s", connected.Sub(began).Seconds(), time.Since(connected).Seconds())
	return c
}

// down dumps the cluster's logs if the test failed, then removes it.
func (c *cluster) down() {
	for _, nc := range c.ncs {
		nc.Close()
	}
	if c.cli != nil {
		c.cli.Close()
	}
	if c.t.Failed() || os.Getenv("DOWNPOUR_CLUSTER_LOGS") != "" { // (=1: always, to see where time goes)
		logs, _ := compose("logs", "--no-color", "--timestamps", "--tail", "60")
		c.t.Logf("the cluster's logs (last 60 lines each):\n%s", logs)
	}
	if out, err := compose("down", "-v", "--remove-orphans"); err != nil {
		c.t.Errorf("%v\n%s", err, out)
	}
}

func (c *cluster) waitFor(cond func() bool, within time.Duration, what string) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: not within %v (the last clock reading failed with: %v)", what, within, c.lastErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// clock is the job's placement and its step as the shards tell it (-1
// while they do not).
func (c *cluster) clock() (version, step int64) {
	// The placement's read has its own time: while etcd elects a leader
	// it may use all of it, and the shards must still be asked.
	ectx, ecancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	p, _, err := etcdstore.New(c.cli, jobName).Placement(ectx)
	ecancel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	switch {
	case err == nil:
		c.placement = p
	case c.placement != nil: // etcd is electing a leader, say: the shards still answer
		p = c.placement
	default:
		c.lastErr = fmt.Errorf("reading the placement: %w", err)
		return 0, -1
	}
	var errs []error
	for _, nc := range c.ncs {
		pc, err := paramserver.NewClient(nc, jobName, p, 0, 0)
		if err != nil {
			c.lastErr = err
			return p.Version, -1
		}
		nctx, ncancel := context.WithTimeout(ctx, 300*time.Millisecond)
		step, err = pc.Clock(nctx)
		ncancel()
		if err == nil {
			return p.Version, step
		}
		errs = append(errs, fmt.Errorf("through %s (%v): %w", nc.ConnectedUrl(), nc.Status(), err))
	}
	c.lastErr = errors.Join(errs...)
	return p.Version, -1
}

// get reads key (with opts) from the cluster's etcd; nothing while etcd
// does not answer.
func (c *cluster) get(key string, opts ...clientv3.OpOption) []*mvccpb.KeyValue {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r, err := c.cli.Get(ctx, key, opts...)
	if err != nil {
		return nil
	}
	return r.Kvs
}

// landedWhileRunning fails the test unless the job was still running once
// the fault (what, injected at step c0) had been injected: the first
// reading after it, of the job's state in etcd or of a shard's clock over
// NATS (whichever answers first: a fault of one may slow the other), says
// the job runs, not that it has ended. Otherwise a fault that must cost
// nothing (a coordinator, a NATS or an etcd node) would pass for having
// hit a finished job.
func (c *cluster) landedWhileRunning(what string, c0 int64) {
	c.t.Helper()
	c.landed = true
	after, state := int64(-1), ""
	c.waitFor(func() bool {
		if r := c.get(etcdstore.KeysFor(jobName).State()); len(r) == 1 {
			state = string(r[0].Value)
			return true
		}
		_, after = c.clock()
		return after >= 0
	}, 30*time.Second, "a reading of the job after "+what)
	if state == job.StateDone || after >= steps {
		c.t.Fatalf("%s (at step %d) landed after the job's last step: the next reading found it done (state %q, clock %d)", what, c0, state, after)
	}
}

func (c *cluster) done() bool {
	r := c.get(etcdstore.KeysFor(jobName).State())
	return len(r) == 1 && string(r[0].Value) == job.StateDone
}

// leader is the service name of the leading coordinator (its id is its
// hostname, set to the service's name, and its pid).
func (c *cluster) leader() string {
	r := c.get(etcdstore.KeysFor(jobName).Leader(), append(clientv3.WithFirstCreate(), clientv3.WithPrefix())...)
	if len(r) == 0 {
		return ""
	}
	id := string(r[0].Value)
	return id[:strings.LastIndex(id, "-")]
}

// rankHolder is a worker service holding a rank (workers' ids are their
// service names).
func (c *cluster) rankHolder() string {
	for _, kv := range c.get(etcdstore.KeysFor(jobName).Assigns(), clientv3.WithPrefix()) {
		return strings.TrimPrefix(string(kv.Key), etcdstore.KeysFor(jobName).Assigns())
	}
	c.t.Fatal("no worker holds a rank")
	return ""
}

// etcdLeader is the etcd service that leads the etcd cluster.
func (c *cluster) etcdLeader() string {
	for i := 1; i <= 3; i++ {
		ep := "https://" + port(c.t, fmt.Sprint("etcd", i), 2379)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := c.cli.Status(ctx, ep)
		cancel()
		if err == nil && s.Header.MemberId == s.Leader {
			return fmt.Sprint("etcd", i)
		}
	}
	c.t.Fatal("no etcd member says it leads")
	return ""
}

// busiestNATS is the NATS service with the most client connections: the
// one whose death makes the most clients reconnect.
func (c *cluster) busiestNATS() string {
	best, most := "", -1
	for i := 1; i <= 3; i++ {
		resp, err := http.Get("http://" + port(c.t, fmt.Sprint("nats", i), 8222) + "/varz")
		if err != nil {
			continue
		}
		var v struct{ Connections int }
		err = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if err == nil && v.Connections > most {
			best, most = fmt.Sprint("nats", i), v.Connections
		}
	}
	if best == "" {
		c.t.Fatal("no NATS server answered on its monitoring port")
	}
	return best
}

// finalParams waits for the job to end and for every process the fault
// spared to exit 0, and returns the parameters of the final checkpoint.
func (c *cluster) finalParams() []float32 {
	c.t.Helper()
	c.waitFor(c.done, 3*time.Minute, "the job to finish")
	for _, s := range []string{"coordinator1", "coordinator2", "ps0", "ps1", "worker1", "worker2", "worker3"} {
		if c.hit[s] {
			continue
		}
		c.waitFor(func() bool {
			out, _ := docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", container(s))
			if strings.HasPrefix(out, "exited") && out != "exited 0" {
				c.t.Fatalf("%s: %s", s, out)
			}
			return out == "exited 0"
		}, time.Minute, s+" to exit")
	}
	dir := c.t.TempDir()
	for _, s := range []string{"coordinator1", "coordinator2"} {
		path := filepath.Join(dir, s+".ckpt")
		if _, err := docker("cp", container(s)+":/runs/"+s+"/checkpoint/final.ckpt", path); err != nil {
			continue
		}
		_, params, err := checkpoint.Read(path)
		if err != nil {
			c.t.Fatal(err)
		}
		return params
	}
	c.t.Fatal("no coordinator wrote the final checkpoint")
	return nil
}

// rollbacks are the job's rollback records.
func (c *cluster) rollbacks() []job.RollbackRecord {
	var rbs []job.RollbackRecord
	for _, kv := range c.get(etcdstore.KeysFor(jobName).Rollbacks(), clientv3.WithPrefix()) {
		var rb job.RollbackRecord
		if err := json.Unmarshal(kv.Value, &rb); err != nil {
			c.t.Fatalf("rollback record %s: %v", kv.Value, err)
		}
		rbs = append(rbs, rb)
	}
	return rbs
}

// logs is what a service's container printed (across restarts).
func logs(service string) string {
	out, _ := docker("logs", container(service))
	return out
}

// kill kills a service's container (docker's restart policy leaves it
// dead).
func (c *cluster) kill(service string) {
	c.t.Helper()
	c.hit[service] = true
	if _, err := docker("kill", container(service)); err != nil {
		c.t.Fatal(err)
	}
}

// isolate cuts a worker off the cluster's network (or freezes it) for
// twice the lease, then lets it back: it must find itself fenced off.
func (c *cluster) isolate(cut, restore []string, w string) {
	c.t.Helper()
	c.hit[w] = true
	if _, err := docker(cut...); err != nil {
		c.t.Fatal(err)
	}
	c.landedWhileRunning(strings.Join(cut, " "), c.at)
	time.Sleep(2 * lease)
	if _, err := docker(restore...); err != nil {
		c.t.Fatal(err)
	}
	c.waitFor(func() bool { return strings.Contains(logs(w), "fenced off") }, time.Minute, w+" to say it is fenced off")
	c.t.Logf("%s's log:\n%s", w, logs(w))
}

type fault struct {
	name      string
	rollbacks int                                    // how many the fault must cause
	inject    func(c *cluster) (string, func() bool) // what it did; when the job has recovered (nil: once past the fault's step)
	// args are flags the fault's job adds to the suite's; handover says
	// the job hands the fault over (recovered: the new placement is
	// published and the job is past the step after the fault's).
	args     string
	handover bool
}

var faults = []fault{
	{name: "none", rollbacks: 0, inject: func(c *cluster) (string, func() bool) { return "no fault", nil }},
	{name: "worker dies", rollbacks: 1, inject: func(c *cluster) (string, func() bool) {
		w := c.rankHolder()
		c.kill(w)
		return "docker kill " + w, nil
	}},
	{name: "PS shard dies", rollbacks: 1, inject: func(c *cluster) (string, func() bool) {
		c.kill("ps0")
		if _, err := docker("start", container("ps0")); err != nil {
			c.t.Fatal(err)
		}
		return "docker kill ps0, docker start ps0", nil
	}},
	// The same job with each block on both shards, for the time the next
	// fault's job loses.
	{name: "none, 2 copies", inject: func(c *cluster) (string, func() bool) { return "no fault", nil }, args: " --ps-replicas 2"},
	// With each block on both shards, the same kill costs no step: the
	// coordinator hands ps0's blocks over to ps1, and ps0, started again,
	// rejoins its blocks' chains and is filled from ps1.
	{name: "PS shard dies, 2 copies", inject: func(c *cluster) (string, func() bool) {
		c.kill("ps0")
		if _, err := docker("start", container("ps0")); err != nil {
			c.t.Fatal(err)
		}
		return "docker kill ps0, docker start ps0", nil
	}, args: " --ps-replicas 2", handover: true},
	{name: "coordinator leader dies", rollbacks: 0, inject: func(c *cluster) (string, func() bool) {
		l := c.leader()
		if l == "" {
			c.t.Fatal("no coordinator leads")
		}
		c.kill(l)
		return "docker kill " + l + " (the leader)", func() bool { l2 := c.leader(); return l2 != "" && l2 != l }
	}},
	{name: "NATS node dies", rollbacks: 0, inject: func(c *cluster) (string, func() bool) {
		n := c.busiestNATS()
		c.kill(n)
		return "docker kill " + n + " (the most connected)", nil
	}},
	{name: "etcd node dies", rollbacks: 0, inject: func(c *cluster) (string, func() bool) {
		e := c.etcdLeader()
		c.kill(e)
		return "docker kill " + e + " (the raft leader)", nil
	}},
	{name: "worker partitioned", rollbacks: 1, inject: func(c *cluster) (string, func() bool) {
		w := c.rankHolder()
		net := project + "_cluster"
		c.isolate([]string{"network", "disconnect", net, container(w)}, []string{"network", "connect", net, container(w)}, w)
		return fmt.Sprintf("docker network disconnect %s for %v, then connect", w, 2*lease), nil
	}},
	{name: "worker frozen", rollbacks: 1, inject: func(c *cluster) (string, func() bool) {
		w := c.rankHolder()
		c.isolate([]string{"pause", container(w)}, []string{"unpause", container(w)}, w)
		return fmt.Sprintf("docker pause %s for %v, then unpause", w, 2*lease), nil
	}},
}

// The fault-injection suite against the compose cluster, sync mode: for
// each fault of the table, the job completes with parameters bit-identical
// to the fault-free run's; a fault that loses a step in flight rolls back
// once, to the last complete checkpoint; the others roll back nothing.
func TestClusterFaults(t *testing.T) {
	if raceBuild {
		t.Skip("the cluster suite runs in the plain test run: under -race only this test process would be watched, not the cluster's")
	}
	// It builds images and runs a cluster for minutes: only when asked, so
	// that 'go test ./...' stays quick with or without Docker.
	switch os.Getenv("DOWNPOUR_CLUSTER_SUITE") {
	case "1", "require":
	default:
		t.Skip("the compose cluster suite (about 7 minutes, needs Docker) runs with DOWNPOUR_CLUSTER_SUITE=1 (=require: fail without Docker, as CI does)")
	}
	for _, tool := range [][]string{{"docker", "info"}, {"docker-compose", "version"}} {
		if out, err := exec.Command(tool[0], tool[1:]...).CombinedOutput(); err != nil {
			msg := fmt.Sprintf("the cluster suite needs a Docker engine and docker-compose: %s: %v\n%s", strings.Join(tool, " "), err, out)
			if os.Getenv("DOWNPOUR_CLUSTER_SUITE") == "require" {
				t.Fatal(msg)
			}
			t.Skip("cluster suite not run: " + msg)
		}
	}
	build := exec.Command("./cluster.sh", "build")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("cluster.sh build: %v\n%s", err, out)
	}
	ref := filepath.Join(t.TempDir(), "ref")
	train := exec.Command("build/downpour", append([]string{"train", "--out", ref}, strings.Fields(jobArgs)...)...)
	if out, err := train.CombinedOutput(); err != nil {
		t.Fatalf("downpour train: %v\n%s", err, out)
	}
	_, want, err := checkpoint.Read(filepath.Join(ref, "checkpoint", "final.ckpt"))
	if err != nil {
		t.Fatal(err)
	}

	rng := rand.New(rand.NewPCG(2014, 1409))
	var table []string
	freeRate := map[string]float64{} // by the job's added flags: steps per second of the fault-free run, from the step a fault would hit to the end
	for _, f := range faults {
		at := int64(200 + rng.IntN(400)) // up to 600: 1,400 steps (3.5-10 s) before the end
		t.Run(strings.ReplaceAll(strings.ReplaceAll(f.name, ",", ""), " ", "-"), func(t *testing.T) {
			clusterArgs = f.args
			defer func() { clusterArgs = "" }()
			c := up(t)
			began := time.Now()
			var v0, c0 int64
			c.waitFor(func() bool { v0, c0 = c.clock(); return c0 >= at }, 2*time.Minute, fmt.Sprint("step ", at))
			injected := time.Now()
			c.at = c0
			what, recovered := f.inject(c)
			if !c.landed {
				c.landedWhileRunning(what, c0)
			}
			if recovered == nil { // back past the step the fault hit (after the rollback or handover, if it causes one)
				recovered = func() bool {
					v, s := c.clock()
					return s > c0 && (f.rollbacks == 0 && !f.handover || v > v0) && (!f.handover || s > c0+1)
				}
			}
			c.waitFor(func() bool { return recovered() || c.done() }, 2*time.Minute, "recovery")
			recovery := time.Since(injected)
			got := c.finalParams()
			end := time.Since(injected)
			if !slices.Equal(got, want) {
				t.Fatalf("%s at step %d: the final parameters differ from the fault-free run's", what, c0)
			}
			rbs := c.rollbacks()
			if len(rbs) != f.rollbacks {
				t.Fatalf("%s at step %d: %d rollbacks, want %d: %+v", what, c0, len(rbs), f.rollbacks, rbs)
			}
			redone := "none"
			for _, rb := range rbs {
				if rb.Placement <= v0 || rb.FromStep < rb.ToStep || rb.FromStep < c0 {
					t.Fatalf("rollback %+v after the fault at step %d of placement %d", rb, c0, v0)
				}
				redone = fmt.Sprintf("%d (from %d back to the checkpoint of %d)", rb.FromStep-rb.ToStep, rb.FromStep, rb.ToStep)
			}
			remaining := float64(steps - c0)
			if strings.HasPrefix(f.name, "none") {
				freeRate[f.args] = remaining / end.Seconds()
				row := fmt.Sprintf("| %s | | | | | %.1f s for the whole job (%.0f steps/s) |", f.name, time.Since(began).Seconds(), freeRate[f.args])
				t.Log(row)
				table = append(table, row)
				return
			}
			lost := "?"
			if rate := freeRate[f.args]; rate > 0 {
				lost = fmt.Sprintf("%.1f s", end.Seconds()-remaining/rate)
			}
			row := fmt.Sprintf("| %s | `%s` | %d | %.1f s | %s | %s |", f.name, what, c0, recovery.Seconds(), redone, lost)
			t.Log(row)
			table = append(table, row)
		})
	}
	t.Logf("\n| fault | how | at step | recovery | steps redone | time lost |\n|---|---|---|---|---|---|\n%s",
		strings.Join(table, "\n"))
}
