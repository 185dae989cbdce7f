package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/coordinator"
	"github.com/downpour-ml/downpour/internal/app/telemetry"
	"github.com/downpour-ml/downpour/internal/checkpoint"
	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/paramserver"
)

// faultCluster is a job run as OS processes against real NATS and etcd:
// two coordinators (a leader and a standby), two shards, and three workers
// (one waiting to take a rank).
type faultCluster struct {
	t       *testing.T
	name    string
	dir     string
	ep      []string
	cli     *clientv3.Client
	nc      *nats.Conn
	coords  []*proc
	shards  []*proc
	workers []*proc
	faulty  map[*proc]bool // the processes a fault hit
}

// faultSpec is the job of the suite: sync, checkpointed every 20 steps.
var faultSpec = []string{"--steps", "200", "--hidden", "32", "--embed", "16", "--optimizer", "adam", "--log-every", "20",
	"--eval-every", "0", "--checkpoint-every", "20"}

const faultTTL = "2" // seconds: the lease of workers and shards in the suite

func startFaultCluster(t *testing.T, c *embedded.Cluster, cli *clientv3.Client, nc *nats.Conn, name string, spec []string) *faultCluster {
	return startFaultClusterOf(t, c, cli, nc, name, spec, 3)
}

// startFaultClusterOf is startFaultCluster with workers worker processes.
func startFaultClusterOf(t *testing.T, c *embedded.Cluster, cli *clientv3.Client, nc *nats.Conn, name string, spec []string, workers int) *faultCluster {
	f := &faultCluster{t: t, name: name, dir: t.TempDir(), ep: []string{"--nats", c.NATSURL, "--etcd", c.EtcdEndpoints[0]}, cli: cli, nc: nc,
		faulty: map[*proc]bool{}}
	for i := 0; i < 2; i++ {
		f.shards = append(f.shards, f.startShard(i))
	}
	for i := 0; i < workers; i++ {
		f.workers = append(f.workers, start(t, fmt.Sprintf("worker %d", i), append([]string{"worker", "-v", "--job", name, "--lease-ttl", faultTTL}, f.ep...)...))
	}
	for i := 0; i < 2; i++ {
		out := filepath.Join(f.dir, fmt.Sprint("coordinator-", i))
		f.coords = append(f.coords, start(t, fmt.Sprintf("coordinator %d", i),
			append(append([]string{"coordinator", "-v", "--job", name, "--out", out}, spec...), f.ep...)...))
		if i == 0 { // the first one leads
			f.waitFor(func() bool { l, _ := leaderPID(cli, name); return l == f.coords[0].cmd.Process.Pid }, "the first coordinator to lead")
		}
	}
	return f
}

func (f *faultCluster) startShard(i int) *proc {
	return start(f.t, fmt.Sprintf("ps %d", i), append([]string{"ps", "-v", "--job", f.name, "--shard", fmt.Sprint(i), "--lease-ttl", faultTTL,
		"--data-dir", filepath.Join(f.dir, fmt.Sprint("ps-", i))}, f.ep...)...)
}

// leaderPID is the pid in the id of the job's leading coordinator.
func leaderPID(cli *clientv3.Client, name string) (int, error) {
	r, err := cli.Get(context.Background(), etcdstore.KeysFor(name).Leader(), append(clientv3.WithFirstCreate(), clientv3.WithPrefix())...)
	if err != nil || len(r.Kvs) == 0 {
		return 0, err
	}
	id := string(r.Kvs[0].Value)
	var pid int
	fmt.Sscan(id[strings.LastIndex(id, "-")+1:], &pid)
	return pid, nil
}

func (f *faultCluster) waitFor(cond func() bool, what string) {
	f.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("%s: not within 2 minutes", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clock is the job's step as its shards tell it (-1 while they do not).
func (f *faultCluster) clock() int64 {
	p, _, err := etcdstore.New(f.cli, f.name).Placement(context.Background())
	if err != nil {
		return -1
	}
	c, err := paramserver.NewClient(f.nc, f.name, p, 0, 0)
	if err != nil {
		return -1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	clock, err := c.Clock(ctx)
	if err != nil {
		return -1
	}
	return clock
}

// doneSteps is the data steps the job's task queue counts done (-1 while
// it cannot be read).
func (f *faultCluster) doneSteps() int64 {
	r, err := f.cli.Get(context.Background(), etcdstore.KeysFor(f.name).Tasks())
	if err != nil || len(r.Kvs) != 1 {
		return -1
	}
	q, err := coordinator.DecodeTasks(r.Kvs[0].Value)
	if err != nil {
		return -1
	}
	return q.DoneSteps()
}

// checkStatus runs `downpour status` on the running job and checks what it
// says against what the test knows.
func (f *faultCluster) checkStatus(atLeast int64) {
	f.t.Helper()
	code, out, stderr := runCmd(f.t, time.Minute, append([]string{"status", "--job", f.name}, f.ep...)...)
	if code != 0 {
		f.t.Fatalf("status: exit %d, %s", code, stderr)
	}
	host, _ := os.Hostname()
	for _, want := range []string{
		"job " + f.name + ": running; seq2seq synthetic:copy, 2 workers, 200 steps, mode sync",
		fmt.Sprintf("leader: %s-%d; standby: %s-%d", host, f.coords[0].cmd.Process.Pid, host, f.coords[1].cmd.Process.Pid),
		"placement: version 1, 2 shards",
		"last complete checkpoint: step ",
	} {
		if !strings.Contains(out, want) {
			f.t.Fatalf("status lacks %q:\n%s", want, out)
		}
	}
	var ranks, waiting, shards int
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 4 && strings.Contains(fields[0], host) && fields[1] == "waiting":
			waiting++
		case len(fields) >= 4 && strings.Contains(fields[0], host):
			ranks++
		case len(fields) >= 5 && (fields[0] == "0" || fields[0] == "1") && fields[1] == "1":
			var clock int64
			if _, err := fmt.Sscan(fields[2], &clock); err != nil || clock < atLeast {
				f.t.Fatalf("shard line %q: clock below %d", line, atLeast)
			}
			shards++
		}
	}
	if ranks != 2 || waiting != 1 || shards != 2 {
		f.t.Fatalf("status shows %d workers with ranks, %d waiting, %d shards with clocks:\n%s", ranks, waiting, shards, out)
	}
}

// freezeWorker stops a worker holding a rank for twice its lease, then lets
// it go on: the zombie must find itself fenced off and exit with an error.
func (f *faultCluster) freezeWorker() string {
	f.t.Helper()
	w := f.rankHolder()
	f.faulty[w] = true
	syscall.Kill(w.cmd.Process.Pid, syscall.SIGSTOP)
	time.Sleep(4 * time.Second) // twice the lease
	r, err := f.cli.Get(context.Background(), etcdstore.KeysFor(f.name).State())
	doneBefore := err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == job.StateDone
	syscall.Kill(w.cmd.Process.Pid, syscall.SIGCONT)
	select {
	case err := <-w.done:
		w.done <- err
		// A zombie that wakes to a finished job may simply see it is done.
		if (err == nil || !strings.Contains(w.out.String(), "fenced")) && !(err == nil && doneBefore) {
			f.t.Errorf("the resumed zombie exited with %v:\n%s", err, w.out.String())
		}
	case <-time.After(time.Minute):
		f.t.Errorf("the resumed zombie did not exit within a minute:\n%s", w.out.String())
	}
	return fmt.Sprintf("SIGSTOP worker pid %d for 4s (lease %ss), then SIGCONT", w.cmd.Process.Pid, faultTTL)
}

// assignments lists the keys of the job's rank assignments.
func (f *faultCluster) assignments() string {
	r, err := f.cli.Get(context.Background(), etcdstore.KeysFor(f.name).Assigns(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		f.t.Fatal(err)
	}
	var keys []string
	for _, kv := range r.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return strings.Join(keys, " ")
}

// holderOf returns the worker process holding rank.
func (f *faultCluster) holderOf(rank int) *proc {
	r, err := f.cli.Get(context.Background(), etcdstore.KeysFor(f.name).Assigns(), clientv3.WithPrefix())
	if err != nil {
		f.t.Fatal(err)
	}
	for _, kv := range r.Kvs {
		var a job.Assignment
		if err := json.Unmarshal(kv.Value, &a); err != nil || a.Rank != rank {
			continue
		}
		for _, w := range f.workers {
			if strings.Contains(string(kv.Key), fmt.Sprintf("-%d-", w.cmd.Process.Pid)) {
				return w
			}
		}
	}
	f.t.Fatalf("no worker holds rank %d", rank)
	return nil
}

// rankHolder returns a worker process holding a rank.
func (f *faultCluster) rankHolder() *proc {
	r, err := f.cli.Get(context.Background(), etcdstore.KeysFor(f.name).Assigns(), clientv3.WithPrefix())
	if err != nil {
		f.t.Fatal(err)
	}
	for _, kv := range r.Kvs {
		for _, w := range f.workers {
			if strings.Contains(string(kv.Key), fmt.Sprintf("-%d-", w.cmd.Process.Pid)) {
				return w
			}
		}
	}
	f.t.Fatal("no worker holds a rank")
	return nil
}

func placementVersion(t *testing.T, cli *clientv3.Client, name string) int64 {
	p, _, err := etcdstore.New(cli, name).Placement(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return p.Version
}

// finish waits for the job to end and returns its final parameters.
func (f *faultCluster) finish() []float32 {
	f.t.Helper()
	f.waitFor(func() bool {
		r, _ := f.cli.Get(context.Background(), etcdstore.KeysFor(f.name).State())
		return len(r.Kvs) == 1 && string(r.Kvs[0].Value) == job.StateDone
	}, "the job to finish")
	// Every worker the faults spared ends cleanly, the spare that never got
	// a rank included.
	for _, w := range f.workers {
		if !f.faulty[w] {
			w.wait(f.t, time.Minute)
		}
	}
	for i := range f.coords {
		path := filepath.Join(f.dir, fmt.Sprint("coordinator-", i), "checkpoint", "final.ckpt")
		if _, err := os.Stat(path); err == nil {
			_, params, err := checkpoint.Read(path)
			if err != nil {
				f.t.Fatal(err)
			}
			return params
		}
	}
	f.t.Fatal("no coordinator wrote the final checkpoint")
	return nil
}

// The fault-injection suite, sync mode: for each single fault, injected at
// a step drawn from a seed, the job completes with parameters bit-identical
// to the fault-free run.
func TestFaultsSyncBitIdentical(t *testing.T) {
	downpourBinary(t)
	c, cli, nc := testServers(t)
	want, _ := trainRun(t, filepath.Join(t.TempDir(), "ref"), faultSpec...)
	rng := rand.New(rand.NewPCG(2014, 1406))
	faults := []struct {
		name   string
		inject func(f *faultCluster) string
	}{
		{"kill-worker", func(f *faultCluster) string {
			w := f.rankHolder()
			f.faulty[w] = true
			w.cmd.Process.Kill()
			return fmt.Sprintf("kill -9 worker pid %d", w.cmd.Process.Pid)
		}},
		{"kill-ps", func(f *faultCluster) string {
			f.shards[0].cmd.Process.Kill()
			err := <-f.shards[0].done
			f.shards[0].done <- err       // for its cleanup
			f.shards[0] = f.startShard(0) // as a supervisor would
			return "kill -9 ps 0, then start it again"
		}},
		{"kill-coordinator", func(f *faultCluster) string {
			f.coords[0].cmd.Process.Kill()
			return "kill -9 the leading coordinator"
		}},
		{"stop-worker", func(f *faultCluster) string {
			return f.freezeWorker()
		}},
	}
	for i, fault := range faults {
		t.Run(fault.name, func(t *testing.T) {
			f := startFaultCluster(t, c, cli, nc, fmt.Sprint("fault", i), faultSpec)
			at := int64(30 + rng.IntN(100))
			f.waitFor(func() bool { return f.clock() >= at }, fmt.Sprintf("step %d", at))
			f.checkStatus(at)
			v0 := placementVersion(t, cli, f.name)
			clock := f.clock()
			start := time.Now()
			what := fault.inject(f)
			got := f.finish()
			if !slices.Equal(got, want) {
				t.Fatalf("%s at step %d: the parameters differ from the fault-free run's", what, at)
			}
			r, err := cli.Get(context.Background(), etcdstore.KeysFor(f.name).Rollbacks(), clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			recovery := "no rollback"
			for _, kv := range r.Kvs {
				var rb job.RollbackRecord
				if err := json.Unmarshal(kv.Value, &rb); err != nil || rb.FromStep < rb.ToStep || rb.Placement <= v0 {
					t.Fatalf("rollback record %s: %v", kv.Value, err)
				}
				recovery = fmt.Sprintf("%s: rolled back from step %d to the checkpoint of step %d, %d steps redone", rb.Why, rb.FromStep, rb.ToStep, rb.FromStep-rb.ToStep)
			}
			if wantRollbacks := map[bool]int{true: 0, false: 1}[fault.name == "kill-coordinator"]; len(r.Kvs) != wantRollbacks {
				t.Fatalf("%d rollbacks, want %d", len(r.Kvs), wantRollbacks)
			}
			t.Logf("%s at step %d: completed bit-identical; %s; %.1fs from the fault to the end of the job",
				what, clock, recovery, time.Since(start).Seconds())
		})
	}
}

// A sync job whose replica is laid out over seats (2 stages and a softmax
// slice, each its own worker process, and a spare): kill -9 of one seat's
// process mid-run rolls the job back to its last checkpoint, the spare
// takes the seat, the replica runs again, and the job ends with the
// fault-free run's parameters, bit for bit.
func TestFaultsStageKilled(t *testing.T) {
	downpourBinary(t)
	c, cli, nc := testServers(t)
	spec := append(slices.Clone(faultSpec), "--workers", "1", "--layers", "2", "--softmax-blocks", "2", "--stages", "2", "--softmax-slices", "1")
	want, _ := trainRun(t, filepath.Join(t.TempDir(), "ref"), spec...)
	f := startFaultClusterOf(t, c, cli, nc, "stages", spec, 4)
	f.waitFor(func() bool { return f.clock() >= 50 }, "step 50")
	v0 := placementVersion(t, cli, f.name)
	w := f.rankHolder()
	f.faulty[w] = true
	w.cmd.Process.Kill()
	got := f.finish()
	if !slices.Equal(got, want) {
		t.Fatal("the parameters differ from the fault-free run's")
	}
	if v := placementVersion(t, cli, f.name); v <= v0 {
		t.Fatalf("placement %d after the kill, %d before: no rollback", v, v0)
	}
}

// asyncSpec is the async job of the suite: its data goes out as tasks.
var asyncSpec = []string{"--mode", "async", "--steps", "200", "--task-steps", "20", "--hidden", "32", "--embed", "16",
	"--optimizer", "adam", "--lr", "0.01", "--log-every", "20", "--eval-every", "0", "--checkpoint-every", "40"}

// The fault-injection suite, async mode: a worker killed in the middle of a
// task; a shard killed and started again (the job, and its task queue, go
// back to the last checkpoint, taken every 40 data steps). The job completes; every task is done once (none failed, every data
// step counted); every gradient a shard accepted was applied exactly once;
// and training still converges: the final held-out loss is below a quarter
// of an untrained model's (ln 13 per token on this task) and within 0.5
// nats of a fault-free run's. (Async runs differ from run to run with
// timing: fault-free ones here end anywhere between about 0.1 and 0.5.)
func TestFaultsAsync(t *testing.T) {
	taskFaults(t, asyncSpec, "kill-worker", "kill-ps", "kill-coordinator", "stop-worker")
}

// The async (and ssp) suite's shard kill with each block on both shards
// (--ps-replicas 2): no rollback, no update lost; every data step counted
// once, and every shard's counters reconcile (what it accepted as a
// primary, applied once or skipped).
func TestFaultsAsyncReplicated(t *testing.T) {
	// 300 steps, not 200: a push's answer waits for its backup, and at 200
	// steps the held-out loss of these runs (0.16-0.48) came near the
	// suite's bound (a quarter of the untrained 2.56).
	more := []string{"--ps-replicas", "2", "--steps", "300"}
	t.Run("async", func(t *testing.T) { taskFaults(t, append(slices.Clone(asyncSpec), more...), "kill-ps") })
	t.Run("ssp", func(t *testing.T) { taskFaults(t, append(slices.Clone(sspSpec), more...), "kill-ps") })
}

// sspSpec is asyncSpec in ssp mode: elastic (tasks), staleness 2.
var sspSpec = append([]string{"--mode", "ssp", "--staleness", "2"}, asyncSpec[2:]...)

// The same suite in ssp mode with tasks, where only active ranks bound the
// staleness: a killed worker's rank goes idle (the shards watch its holder
// go) and does not hold the others back, even when no worker is left to
// take it; a killed shard rolls the job and its queue back to the
// checkpoint; a frozen worker is fenced off.
func TestFaultsSSPTasks(t *testing.T) {
	taskFaults(t, sspSpec, "kill-worker", "kill-ps", "stop-worker", "kill-spare-and-worker")
}

// A replica laid out over seats in async and ssp mode (one replica of a
// stage and 2 softmax slices, each its own worker process, and a spare):
// kill -9 of a seat mid-task drops the step the replica was running; the
// spare takes the seat, the replica forms again around it and goes on
// (its seat 0 with the same task, or, when seat 0 died, the spare with a
// task of its own and the dead one's task back in the queue). The checks
// are TestFaultsAsync's: every task done once, every data step counted,
// every accepted gradient applied once on every shard, and the held-out
// loss that of a fault-free run.
func TestFaultsSeatsAsync(t *testing.T) {
	// One replica takes the suite's two replicas' 400 data steps.
	seated := []string{"--workers", "1", "--steps", "400", "--softmax-blocks", "2", "--stages", "1", "--softmax-slices", "2"}
	t.Run("async", func(t *testing.T) {
		taskFaults(t, append(slices.Clone(asyncSpec), seated...), "kill-seat-1", "kill-seat-0", "stop-worker")
	})
	t.Run("ssp", func(t *testing.T) {
		taskFaults(t, append(slices.Clone(sspSpec), seated...), "kill-seat-2")
	})
}

// taskFaults injects each fault into a job that hands its data out as tasks
// (spec), and checks what TestFaultsAsync says.
func taskFaults(t *testing.T, spec []string, faults ...string) {
	downpourBinary(t)
	c, cli, nc := testServers(t)
	// The job's ranks (a seat of a replica each), and a spare worker.
	flag := func(name string, def int) int { // the last one given, as the flags parse
		for i := len(spec) - 2; i >= 0; i-- {
			if spec[i] == name {
				n, err := strconv.Atoi(spec[i+1])
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
		return def
	}
	replicas, seats, steps := flag("--workers", 2), flag("--stages", 0)+flag("--softmax-slices", 0), flag("--steps", 0)
	workers := 3
	if seats > 0 {
		workers = replicas*seats + 1
	}
	ref := filepath.Join(t.TempDir(), "ref")
	trainRun(t, ref, spec...)
	_, refEvals := readAllMetrics(t, filepath.Join(ref, "metrics.jsonl"))

	rng := rand.New(rand.NewPCG(2014, 1406))
	for _, fault := range faults {
		t.Run(fault, func(t *testing.T) {
			f := startFaultClusterOf(t, c, cli, nc, spec[1]+"-"+fault, spec, workers)
			at := int64(30 + rng.IntN(100))
			// The shards' clock is the slowest rank's in async, and the
			// ranks take tasks unevenly: a rank that took few may end
			// below at. The queue's done data steps, over all ranks,
			// say as much of the job's progress, and end at
			// replicas*steps.
			f.waitFor(func() bool { return f.clock() >= at || f.doneSteps() >= int64(replicas)*at }, fmt.Sprintf("step %d", at))
			code, out, _ := runCmd(t, time.Minute, append([]string{"status", "--job", f.name}, f.ep...)...)
			if code != 0 || !strings.Contains(out, "tasks: ") || !strings.Contains(out, "(shard ") {
				t.Fatalf("status of an %s job shows no tasks:\n%s", spec[1], out)
			}
			what := ""
			switch fault {
			case "kill-worker":
				w := f.rankHolder()
				f.faulty[w] = true
				w.cmd.Process.Kill()
				what = fmt.Sprintf("kill -9 worker pid %d", w.cmd.Process.Pid)
			case "kill-ps":
				f.shards[0].cmd.Process.Kill()
				err := <-f.shards[0].done
				f.shards[0].done <- err
				f.shards[0] = f.startShard(0)
				what = "kill -9 ps 0, then start it again"
			case "kill-spare-and-worker": // one worker is left to finish the job
				holder := f.rankHolder()
				for _, w := range f.workers {
					if w != holder && !strings.Contains(f.assignments(), fmt.Sprintf("-%d-", w.cmd.Process.Pid)) {
						f.faulty[w] = true
						w.cmd.Process.Kill()
					}
				}
				f.faulty[holder] = true
				holder.cmd.Process.Kill()
				what = fmt.Sprintf("kill -9 the spare worker, then worker pid %d", holder.cmd.Process.Pid)
			case "kill-seat-0", "kill-seat-1", "kill-seat-2":
				seat := int(fault[len(fault)-1] - '0')
				w := f.holderOf(seat)
				f.faulty[w] = true
				clk := f.clock()
				w.cmd.Process.Kill()
				killed := time.Now()
				what = fmt.Sprintf("kill -9 the worker of seat %d, pid %d", seat, w.cmd.Process.Pid)
				if spec[1] == job.Async {
					// The shards' clock (every rank's slowest) moves on
					// once the seat's new holder pushes: the replica has
					// formed again and runs. (In ssp it is the active
					// ranks' alone, which may move on without it.)
					f.waitFor(func() bool { return f.clock() > clk }, "the replica to run again")
					what += fmt.Sprintf(" (the replica ran again %.1fs later)", time.Since(killed).Seconds())
				}
			case "kill-coordinator":
				f.coords[0].cmd.Process.Kill()
				what = "kill -9 the leading coordinator"
			case "stop-worker":
				what = f.freezeWorker()
			default:
				t.Fatalf("no such fault %q", fault)
			}
			f.finish()
			// Every task done once, every data step of both data shards counted.
			r, err := cli.Get(context.Background(), etcdstore.KeysFor(f.name).Tasks())
			if err != nil || len(r.Kvs) != 1 {
				t.Fatalf("task queue: %v", err)
			}
			q, err := coordinator.DecodeTasks(r.Kvs[0].Value)
			if err != nil {
				t.Fatal(err)
			}
			if n := q.Count(); n[job.TaskDone] != len(q.List) || q.DoneSteps() != int64(replicas*steps) {
				t.Fatalf("tasks %v, %d data steps done, want all %d done and %d steps", n, q.DoneSteps(), len(q.List), replicas*steps)
			}
			if seats > 0 {
				// The replica dropped the step the dead seat was in, and
				// formed again around the spare.
				reformed := 0
				for _, w := range f.workers {
					if !f.faulty[w] {
						reformed += strings.Count(w.out.String(), "forming it again")
					}
				}
				if reformed == 0 {
					t.Fatal("no surviving seat dropped its step and formed the replica again")
				}
				what += fmt.Sprintf(" (%d surviving seats dropped the step and formed the replica again)", reformed)
			}
			requeued := 0
			for _, tk := range q.List {
				requeued += tk.Attempts - 1
			}
			// Counters reconcile on every shard.
			for i, sh := range f.shards {
				sh.wait(t, time.Minute)
				if strings.Contains(sh.out.String(), "this shard is down in the placement") && !strings.Contains(sh.out.String(), `msg="job done"`) {
					t.Logf("shard %d: started again after its blocks were handed over: it served nothing", i)
					continue
				}
				var accepted, applied, duplicates, skipped, replicated int64
				line := ""
				for _, l := range strings.Split(sh.out.String(), "\n") {
					if strings.Contains(l, `msg="job done"`) {
						line = l
					}
				}
				for _, kv := range strings.Fields(line) {
					k, v, _ := strings.Cut(kv, "=")
					switch k {
					case "accepted":
						fmt.Sscan(v, &accepted)
					case "applied":
						fmt.Sscan(v, &applied)
					case "duplicates":
						fmt.Sscan(v, &duplicates)
					case "skipped":
						fmt.Sscan(v, &skipped)
					case "replicated": // applied as a backup copy: not pushed here
						fmt.Sscan(v, &replicated)
					}
				}
				if accepted == 0 && replicated == 0 || accepted != applied-replicated+skipped {
					t.Fatalf("shard %d: accepted %d, applied %d (%d as a copy), skipped %d (line %q)", i, accepted, applied, replicated, skipped, line)
				}
				t.Logf("shard %d: %d block gradients accepted, %d applied (%d of them as a copy), %d duplicates dropped", i, accepted, applied, replicated, duplicates)
			}
			var evals []telemetry.EvalRecord
			for i := range f.coords {
				if _, err := os.Stat(filepath.Join(f.dir, fmt.Sprint("coordinator-", i), "checkpoint", "final.ckpt")); err == nil {
					_, evals = readAllMetrics(t, filepath.Join(f.dir, fmt.Sprint("coordinator-", i), "metrics.jsonl"))
				}
			}
			if len(evals) == 0 || len(refEvals) == 0 {
				t.Fatal("no final evaluation")
			}
			got, want := evals[len(evals)-1].EvalLoss, refEvals[len(refEvals)-1].EvalLoss
			untrained := math.Log(13)
			if got > untrained/4 || want > untrained/4 || math.Abs(got-want) > 0.5 {
				t.Fatalf("held-out loss %.4f after the fault, %.4f without (untrained: %.4f)", got, want, untrained)
			}
			recovery := "no rollback"
			rb, err := cli.Get(context.Background(), etcdstore.KeysFor(f.name).Rollbacks(), clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			for _, kv := range rb.Kvs {
				var r job.RollbackRecord
				json.Unmarshal(kv.Value, &r)
				recovery = fmt.Sprintf("rolled back from %d data steps done to the checkpoint at %d: the updates of %d data steps lost and redone", r.FromStep, r.ToStep, r.FromStep-r.ToStep)
			}
			wantRollbacks := map[string]int{"kill-ps": 1}[fault]
			if slices.Contains(spec, "--ps-replicas") { // a shard's death is handed over
				wantRollbacks = 0
			}
			if len(rb.Kvs) != wantRollbacks {
				t.Fatalf("%d rollbacks, want %d", len(rb.Kvs), wantRollbacks)
			}
			t.Logf("%s at step %d: completed; %s; %d tasks done (%d given out again), held-out loss %.4f vs %.4f fault-free",
				what, at, recovery, len(q.List), requeued, got, want)
		})
	}
}

// In ssp mode a worker that takes over a dead holder's rank starts where
// the job is: the job completes (the other ranks, at most the staleness
// ahead, do not wait for it to redo the job from the start).
func TestFaultsSSP(t *testing.T) {
	downpourBinary(t)
	c, cli, nc := testServers(t)
	spec := []string{"--mode", "ssp", "--staleness", "2", "--task-steps", "0", "--steps", "200", "--hidden", "32", "--embed", "16",
		"--optimizer", "adam", "--lr", "0.01", "--log-every", "20", "--eval-every", "0"}
	f := startFaultCluster(t, c, cli, nc, "ssp", spec)
	f.waitFor(func() bool { return f.clock() >= 60 }, "step 60")
	w := f.rankHolder()
	f.faulty[w] = true
	w.cmd.Process.Kill()
	start := time.Now()
	f.finish()
	at := int64(-1)
	for _, p := range f.workers {
		for _, l := range strings.Split(p.out.String(), "\n") {
			if strings.Contains(l, "took over a rank") {
				_, v, _ := strings.Cut(l, " step=")
				fmt.Sscan(v, &at)
			}
		}
	}
	if at < 60 {
		t.Fatalf("the spare took over at step %d, want the job's clock (60 or later)", at)
	}
	t.Logf("kill -9 a worker at step 60 or later: the spare took its rank at step %d; the job completed %.1fs after the kill", at, time.Since(start).Seconds())
}
