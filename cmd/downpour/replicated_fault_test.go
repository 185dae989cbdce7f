package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
)

// The suite's sync job with each parameter block on both shards
// (--ps-replicas 2): a shard killed with kill -9 (then started again, as a
// supervisor would), the other shard killed, or a shard frozen with SIGSTOP
// past its lease, costs no step: the coordinator hands the shard's blocks
// over to their backups, the workers send what they had in flight to the
// new primaries, and the job ends with the fault-free run's parameters
// (of one copy: replication changes no bit) with no rollback, 0 steps
// redone. The frozen shard, woken, finds itself fenced off. A killed shard
// started again rejoins and is filled while the job trains: when the
// other dies after that, its blocks are handed over to it. Both shards
// killed at once lose both copies of every block: the job goes back to its
// last checkpoint, as with one copy, and its rollback record says why.
func TestFaultsReplicatedShards(t *testing.T) {
	downpourBinary(t)
	c, cli, nc := testServers(t)
	want, _ := trainRun(t, filepath.Join(t.TempDir(), "ref"), faultSpec...)
	spec := append(slices.Clone(faultSpec), "--ps-replicas", "2")
	rng := rand.New(rand.NewPCG(2014, 35))
	for i, fault := range []string{"kill-ps-0", "kill-ps-1", "stop-ps-0", "kill-both", "kill-ps-0-then-ps-1"} {
		t.Run(fault, func(t *testing.T) {
			f := startFaultCluster(t, c, cli, nc, fmt.Sprint("repl", i), spec)
			at := int64(30 + rng.IntN(100))
			if fault == "kill-ps-0-then-ps-1" {
				// The refill takes the lease's end and a few steps more
				// (2-3 s, up to 110 steps here): early, so that it is
				// done well before the job's 200th step.
				at = 30
			}
			f.waitFor(func() bool { return f.clock() >= at }, fmt.Sprintf("step %d", at))
			v0 := placementVersion(t, cli, f.name)
			clock := f.clock()
			start := time.Now()
			if fault == "kill-both" {
				// Both copies of every block lost at once: back to the
				// last checkpoint, as with one copy, and said so.
				for k, sh := range f.shards {
					sh.cmd.Process.Kill()
					err := <-sh.done
					sh.done <- err
					f.shards[k] = f.startShard(k)
				}
				got := f.finish()
				if !slices.Equal(got, want) {
					t.Fatalf("both shards killed at step %d: the parameters differ from the fault-free run's", clock)
				}
				r, err := cli.Get(context.Background(), etcdstore.KeysFor(f.name).Rollbacks(), clientv3.WithPrefix())
				if err != nil || len(r.Kvs) != 1 || !strings.Contains(string(r.Kvs[0].Value), "last copy") {
					t.Fatalf("both shards killed: rollback records %v (%v), want one that says the last copy was lost", r.Kvs, err)
				}
				t.Logf("kill -9 both shards at step %d: completed bit-identical; %s", clock, r.Kvs[0].Value)
				return
			}
			if fault == "kill-ps-0-then-ps-1" {
				// ps 0 dies and comes back: it rejoins, is filled while
				// the job trains, and so holds a copy again when ps 1
				// dies, whose blocks it then takes over.
				f.shards[0].cmd.Process.Kill()
				err := <-f.shards[0].done
				f.shards[0].done <- err
				f.shards[0] = f.startShard(0)
				var filledAt int64
				f.waitFor(func() bool {
					p := placementOf(t, cli, f.name)
					filledAt = f.clock()
					return p.Version > v0+2 && len(p.Down) == 0 && len(p.Filling) == 0
				}, "ps 0 to rejoin and be filled")
				refilled := time.Since(start)
				v1 := placementVersion(t, cli, f.name)
				f.shards[1].cmd.Process.Kill()
				f.faulty[f.shards[1]] = true
				f.waitFor(func() bool { return placementVersion(t, cli, f.name) > v1 }, "the second handover")
				got := f.finish()
				if !slices.Equal(got, want) {
					t.Fatalf("ps 0 killed at step %d, then ps 1: the parameters differ from the fault-free run's", clock)
				}
				r, err := cli.Get(context.Background(), etcdstore.KeysFor(f.name).Rollbacks(), clientv3.WithPrefix())
				if err != nil || len(r.Kvs) != 0 {
					t.Fatalf("%d rollbacks (%v), want none", len(r.Kvs), err)
				}
				if p := placementOf(t, cli, f.name); !p.HandedOver || p.Lineage() != v0 || !slices.Equal(p.Down, []int{1}) {
					t.Fatalf("final placement %d: handed over %v, lineage %d, down %v", p.Version, p.HandedOver, p.Lineage(), p.Down)
				}
				if !strings.Contains(f.shards[0].out.String(), "filled from the other copies") {
					t.Fatalf("ps 0 did not say it was filled:\n%s", f.shards[0].out.String())
				}
				t.Logf("kill -9 ps 0 at step %d, started again: rejoined and filled %.1fs later (step %d); then kill -9 ps 1: completed bit-identical, no rollback, 0 steps redone",
					clock, refilled.Seconds(), filledAt)
				return
			}
			idx := int(fault[len(fault)-1] - '0')
			sh := f.shards[idx]
			what := ""
			switch {
			case strings.HasPrefix(fault, "kill"):
				sh.cmd.Process.Kill()
				err := <-sh.done
				sh.done <- err
				what = fmt.Sprintf("kill -9 ps %d", idx)
				if idx == 0 {
					f.shards[0] = f.startShard(0) // as a supervisor would: it finds its index down, and waits
					what += ", then start it again"
				}
			default:
				syscall.Kill(sh.cmd.Process.Pid, syscall.SIGSTOP)
				f.waitFor(func() bool { return placementVersion(t, cli, f.name) > v0 }, "the handover")
				syscall.Kill(sh.cmd.Process.Pid, syscall.SIGCONT)
				what = fmt.Sprintf("SIGSTOP ps %d until its blocks were handed over, then SIGCONT", idx)
			}
			f.waitFor(func() bool { return placementVersion(t, cli, f.name) > v0 }, "the handover")
			handed := time.Since(start)
			got := f.finish()
			if !slices.Equal(got, want) {
				t.Fatalf("%s at step %d: the parameters differ from the fault-free run's", what, clock)
			}
			r, err := cli.Get(context.Background(), etcdstore.KeysFor(f.name).Rollbacks(), clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Kvs) != 0 {
				t.Fatalf("%s: %d rollbacks (%s), want none: 0 steps redone", what, len(r.Kvs), r.Kvs[0].Value)
			}
			pr, err := cli.Get(context.Background(), etcdstore.KeysFor(f.name).Placement())
			if err != nil || len(pr.Kvs) != 1 {
				t.Fatal(err)
			}
			p, err := job.DecodePlacement(pr.Kvs[0].Value)
			wantDown := []int{idx}
			if fault == "kill-ps-0" { // started again: it rejoins
				wantDown = nil
			}
			if err != nil || !p.HandedOver || p.Lineage() != v0 || !slices.Equal(p.Down, wantDown) {
				t.Fatalf("final placement %d: handed over %v, lineage %d, down %v, want %v (%v)", p.Version, p.HandedOver, p.Lineage(), p.Down, wantDown, err)
			}
			if fault == "stop-ps-0" {
				select {
				case err := <-sh.done:
					sh.done <- err
					if err == nil || !strings.Contains(sh.out.String(), "lease") {
						t.Fatalf("the woken shard exited with %v:\n%s", err, sh.out.String())
					}
				case <-time.After(time.Minute):
					t.Fatalf("the woken shard did not exit within a minute:\n%s", sh.out.String())
				}
			}
			t.Logf("%s at step %d: completed bit-identical; handed over %.1fs after the fault; no rollback, 0 steps redone; %.1fs from the fault to the end of the job",
				what, clock, handed.Seconds(), time.Since(start).Seconds())
		})
	}
}

// Async with one worker is deterministic (each push brings back the
// parameters it made): with each block on both shards, a shard killed
// mid-run loses no update and applies none twice, so the job ends with
// the fault-free run's parameters bit for bit, and no rollback.
func TestFaultsAsyncReplicatedLosesNothing(t *testing.T) {
	downpourBinary(t)
	c, cli, nc := testServers(t)
	spec := append(slices.Clone(asyncSpec), "--workers", "1", "--ps-replicas", "2")
	want, _ := trainRun(t, filepath.Join(t.TempDir(), "ref"), spec...)
	f := startFaultClusterOf(t, c, cli, nc, "async-one", spec, 2)
	f.waitFor(func() bool { return f.doneSteps() >= 60 }, "60 data steps done")
	v0 := placementVersion(t, cli, f.name)
	f.shards[1].cmd.Process.Kill()
	f.faulty[f.shards[1]] = true
	f.waitFor(func() bool { return placementVersion(t, cli, f.name) > v0 }, "the handover")
	got := f.finish()
	if !slices.Equal(got, want) {
		t.Fatal("async with one worker: the parameters after the handover differ from the fault-free run's")
	}
	r, err := cli.Get(context.Background(), etcdstore.KeysFor(f.name).Rollbacks(), clientv3.WithPrefix())
	if err != nil || len(r.Kvs) != 0 {
		t.Fatalf("%d rollbacks (%v), want none", len(r.Kvs), err)
	}
}

// placementOf is the job's placement in etcd.
func placementOf(t *testing.T, cli *clientv3.Client, name string) *job.Placement {
	t.Helper()
	r, err := cli.Get(context.Background(), etcdstore.KeysFor(name).Placement())
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("reading the placement: %v", err)
	}
	p, err := job.DecodePlacement(r.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
