package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/checkpoint"
	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/internal/kernel/gemm"
	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/models"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// downpourBinary builds the downpour command once per test run.
func downpourBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "downpour-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "downpour")
		args := []string{"build", "-o", binPath}
		var tags []string // the binary is built like this test
		if models.BLAS == "openblas" {
			tags = append(tags, "openblas")
		}
		if !gemm.Assembly && runtime.GOARCH == "amd64" {
			tags = append(tags, "noasm")
		}
		if len(tags) > 0 {
			args = append(args, "-tags", strings.Join(tags, ","))
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

type proc struct {
	name string
	cmd  *exec.Cmd
	out  syncBuffer
	done chan error
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(downpourBinary(t), args...), done: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() { // what it said last, to see why
			lines := strings.Split(strings.TrimSpace(p.out.String()), "\n")
			t.Logf("%s (pid %d), last lines:\n%s", name, p.cmd.Process.Pid, strings.Join(lines[max(0, len(lines)-15):], "\n"))
		}
	})
	return p
}

// testServers starts an embedded NATS server and etcd for the test, with
// an etcd client and a NATS connection to them.
func testServers(t *testing.T) (*embedded.Cluster, *clientv3.Client, *nats.Conn) {
	t.Helper()
	c := testenv.Servers(t)
	return c, testenv.EtcdClient(t, c.EtcdEndpoints), testenv.Conn(t, c.NATSURL)
}

// endJob waits for a job's coordinator and other processes to exit cleanly
// and checks that the final parameters in the run directory out are those of
// the in-process run of spec.
func endJob(t *testing.T, coord *proc, procs []*proc, out, dir string, spec []string, what string) {
	t.Helper()
	coord.wait(t, 2*time.Minute)
	for _, p := range procs {
		p.wait(t, 30*time.Second)
	}
	_, got, err := checkpoint.Read(filepath.Join(out, "checkpoint", "final.ckpt"))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := trainRun(t, filepath.Join(dir, "inproc"), spec...)
	if !slices.Equal(got, want) {
		t.Fatalf("the %s run's parameters differ from the in-process run's", what)
	}
}

func (p *proc) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Fatalf("%s: %v\n%s", p.name, err, p.out.String())
		}
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %v:\n%s", p.name, timeout, p.out.String())
	}
}

// The same job run as five OS processes (a coordinator, two shards, two
// workers) against real NATS and etcd finishes, and its final parameters are
// bit-identical to the single-process run of the same spec.
func TestMultiProcessJob(t *testing.T) {
	downpourBinary(t)
	dir := t.TempDir()
	c, _, _ := testServers(t)
	ep := []string{"--nats", c.NATSURL, "--etcd", c.EtcdEndpoints[0]}
	spec := []string{"--job", "mp", "--steps", "40", "--hidden", "64", "--log-every", "10"}
	// Start workers and shards first: they must wait for the coordinator.
	var procs []*proc
	for i := 0; i < 2; i++ {
		procs = append(procs, start(t, fmt.Sprintf("worker %d", i), append([]string{"worker", "--job", "mp"}, ep...)...))
		procs = append(procs, start(t, fmt.Sprintf("ps %d", i), append([]string{"ps", "--job", "mp"}, ep...)...))
	}
	out := filepath.Join(dir, "run")
	coord := start(t, "coordinator", append(append([]string{"coordinator", "--out", out}, spec...), ep...)...)
	endJob(t, coord, procs, out, dir, spec, "multi-process")
	if rs := readMetrics(t, filepath.Join(out, "metrics.jsonl")); len(rs) != 5 {
		t.Fatalf("%d metrics records, want 5", len(rs))
	}
}

// SIGTERM stops `downpour train` within seconds with exit code 130.
func TestTrainSIGTERM(t *testing.T) {
	out := filepath.Join(t.TempDir(), "run")
	p := start(t, "train", "train", "--out", out, "--steps", "1000000", "--log-every", "1")
	deadline := time.Now().Add(time.Minute)
	for {
		if b, _ := os.ReadFile(filepath.Join(out, "metrics.jsonl")); bytes.Count(b, []byte("\n")) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("training did not start within a minute:\n%s", p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 130 {
			t.Fatalf("exit %v after SIGTERM, want 130:\n%s", err, p.out.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("train did not stop within 20s of SIGTERM:\n%s", p.out.String())
	}
}

// waitCheckpoint polls etcd until job's last complete checkpoint was taken
// under placement version (or a later one).
func waitCheckpoint(t *testing.T, cli *clientv3.Client, name string, version int64) job.CheckpointRecord {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		r, err := cli.Get(context.Background(), etcdstore.KeysFor(name).Checkpoint())
		if err != nil {
			t.Fatal(err)
		}
		var cp job.CheckpointRecord
		if len(r.Kvs) == 1 && json.Unmarshal(r.Kvs[0].Value, &cp) == nil && cp.Placement >= version {
			return cp
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no complete checkpoint under placement %d within a minute", version)
	return job.CheckpointRecord{}
}

// A sync job re-placed while it runs, from 2 shards to 3 and back to 2 (the
// third shard process joining, then leaving), rolls back to its last complete
// checkpoint each time and ends with parameters bit-identical to the run that
// never moved.
func TestReshardRunningJob(t *testing.T) {
	downpourBinary(t)
	dir := t.TempDir()
	c, cli, _ := testServers(t)
	ep := []string{"--nats", c.NATSURL, "--etcd", c.EtcdEndpoints[0]}
	spec := []string{"--job", "rs", "--steps", "150", "--hidden", "32", "--embed", "16", "--optimizer", "adam",
		"--log-every", "50", "--checkpoint-every", "10"}
	var procs []*proc
	for i := 0; i < 2; i++ {
		procs = append(procs, start(t, fmt.Sprintf("worker %d", i), append([]string{"worker", "--job", "rs"}, ep...)...))
		procs = append(procs, start(t, fmt.Sprintf("ps %d", i), append([]string{"ps", "--job", "rs", "-v",
			"--data-dir", filepath.Join(dir, fmt.Sprint("ps-", i))}, ep...)...))
	}
	out := filepath.Join(dir, "run")
	coord := start(t, "coordinator", append(append([]string{"coordinator", "--out", out}, spec...), ep...)...)
	// A third shard waits for a placement that has room for it.
	third := start(t, "ps 2", append([]string{"ps", "--job", "rs", "-v", "--shard", "2", "--data-dir", filepath.Join(dir, "ps-2")}, ep...)...)

	reshard := func(shards int, version int64) {
		cp := waitCheckpoint(t, cli, "rs", version-1)
		code, stdout, stderr := runCmd(t, time.Minute, append([]string{"reshard", "--job", "rs", "--ps-shards", fmt.Sprint(shards)}, ep[2:]...)...)
		want := fmt.Sprintf("placement %d on %d shards", version, shards)
		if code != 0 || !strings.Contains(stdout, want) {
			t.Fatalf("reshard to %d: exit %d, stdout %q (want %q), stderr %q", shards, code, stdout, want, stderr)
		}
		p, _, err := etcdstore.New(cli, "rs").Placement(context.Background())
		if err != nil || p.Version != version || p.Shards != shards || p.Start < cp.Step || len(p.From) != int(version) {
			t.Fatalf("placement after reshard: %+v, %v (checkpoint %+v)", p, err, cp)
		}
	}
	reshard(3, 2)
	// A coordinator of another job under the same name is refused at once
	// (it does not stand by).
	other := append([]string{"coordinator", "--out", filepath.Join(dir, "other")}, spec...)
	other = append(append(other, "--seed", "99"), ep...)
	if code, _, stderr := runCmd(t, 30*time.Second, other...); code != 1 || !strings.Contains(stderr, "different spec") {
		t.Fatalf("a coordinator with another spec: exit %d, %s", code, stderr)
	}
	reshard(2, 3)
	third.wait(t, time.Minute) // it leaves the job when placement 3 has no room for it
	if !strings.Contains(third.out.String(), "placement has fewer shards: leaving") {
		t.Fatalf("the third shard exited without leaving:\n%s", third.out.String())
	}
	endJob(t, coord, procs, out, dir, spec, "re-placed")
	// Evaluations follow the placement too.
	_, evals := readAllMetrics(t, filepath.Join(out, "metrics.jsonl"))
	if len(evals) != 2 || evals[0].Step != 100 || evals[1].Step != 150 {
		t.Fatalf("evaluations %+v, want steps 100 and 150", evals)
	}
	// A job that is not there: refused.
	if code, _, stderr := runCmd(t, time.Minute, append([]string{"reshard", "--job", "nosuch", "--ps-shards", "2"}, ep[2:]...)...); code == 0 || !strings.Contains(stderr, "no placement") {
		t.Fatalf("reshard of an unknown job: exit %d, %s", code, stderr)
	}
}
