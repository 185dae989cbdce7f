// Package jobetcd is a downpour job's layout in etcd and the IO every role
// does on it: the keys (Keys), the records stored under them (assignments,
// tasks, snapshots, checkpoints, rollbacks), connecting as a role
// (ConnectAs), waiting on keys with watches (Wait, WaitPrefix) and leases
// that say when they are lost (Grant). It links neither the models nor the
// servers, so that a role's credentials (package auth) need neither.
//
// All keys of job J live under /downpour/jobs/J/:
//
//	spec                    the Spec, JSON, written once by the coordinator
//	state                   "running" or "done"
//	placement               the block placement, JSON, versioned
//	members/workers/<id>    one key per live worker, under its lease
//	members/ps/<i>          one key per live parameter-server shard, under its lease
//	assign/<id>             the rank, epoch and data shard given to worker <id>
//	done/<rank>             written by a rank when it has pushed its last step
//	shard-snapshots/p<v>/<step>/<i>  shard i's snapshot of step under placement v
//	tasks, task/<id>, task-done/<id>  async, ssp: the task queue, worker <id>'s task, its report
//	checkpoint              the last complete checkpoint (every shard's snapshot of one step)
//	reshard                 an operator's request to re-place the job, and the answer
//	rollbacks/<v>           why placement v was made, and the steps it threw away
//
// A placement's version fences eras: when the coordinator re-places the job
// (version v+1, starting from the complete checkpoint of step S), every shard
// restores its new blocks from the snapshots of step S and serves the
// subjects of v+1 only; every worker drops what it was doing and resumes at
// step S under v+1. A rank's done is written only if the placement it ran
// under is still current.
package jobetcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Keys names the etcd keys of one job.
type Keys struct{ root string }

// KeysFor returns the keys of job name.
func KeysFor(name string) Keys { return Keys{root: "/downpour/jobs/" + name + "/"} }

func (k Keys) Root() string            { return k.root }
func (k Keys) Spec() string            { return k.root + "spec" }
func (k Keys) State() string           { return k.root + "state" }
func (k Keys) Placement() string       { return k.root + "placement" }
func (k Keys) Workers() string         { return k.root + "members/workers/" }
func (k Keys) Worker(id string) string { return k.Workers() + id }
func (k Keys) Shards() string          { return k.root + "members/ps/" }
func (k Keys) Shard(i int) string      { return k.Shards() + strconv.Itoa(i) }
func (k Keys) Assigns() string         { return k.root + "assign/" }
func (k Keys) Assign(id string) string { return k.Assigns() + id }
func (k Keys) Dones() string           { return k.root + "done/" }
func (k Keys) Done(rank int) string    { return k.Dones() + strconv.Itoa(rank) }

// ShardSnapshots is the prefix under which shards record the snapshots they
// have written: shard-snapshots/p<placement version>/<step>/<shard>.
func (k Keys) ShardSnapshots() string { return k.root + "shard-snapshots/" }
func (k Keys) ShardSnapshot(version, step int64, shard int) string {
	return fmt.Sprintf("%sp%d/%d/%d", k.ShardSnapshots(), version, step, shard)
}

// Served marks that a process has served shard index shard of placement
// version: each is served by one process in its life (its state dies with
// it; the coordinator then replaces the placement).
func (k Keys) Served(version int64, shard int) string {
	return fmt.Sprintf("%sserved/p%d/%d", k.root, version, shard)
}

// Reshard is where an operator asks the coordinator to re-place the job on
// another number of shards (a ReshardRequest); the coordinator writes its
// answer back into it.
func (k Keys) Reshard() string { return k.root + "reshard" }

// Tasks holds an async job's data-shard task queue; Task(id) the task the
// coordinator gives worker id ({"id": -1}: none for now); TaskDone(id) the
// task worker id reports done.
func (k Keys) Tasks() string             { return k.root + "tasks" }
func (k Keys) TaskOf(id string) string   { return k.root + "task/" + id }
func (k Keys) TaskDones() string         { return k.root + "task-done/" }
func (k Keys) TaskDone(id string) string { return k.TaskDones() + id }

// TasksAt holds the task queue as it was at the checkpoint of step (jobs with tasks).
func (k Keys) TasksAt(step int64) string { return fmt.Sprintf("%stasks-at/%d", k.root, step) }

// Rollbacks holds a RollbackRecord per re-placement: rollbacks/<version>.
func (k Keys) Rollbacks() string { return k.root + "rollbacks/" }
func (k Keys) Rollback(version int64) string {
	return fmt.Sprintf("%s%d", k.Rollbacks(), version)
}

// Leader is the prefix of the coordinators' election for the job.
func (k Keys) Leader() string { return k.root + "leader/" }

// Checkpoint holds the last complete checkpoint: a step for which every
// shard has recorded its snapshot.
func (k Keys) Checkpoint() string { return k.root + "checkpoint" }

// Job states.
const (
	StateRunning = "running"
	StateDone    = "done"
)

// ErrTimeout is returned when a wait on etcd runs past its deadline.
var ErrTimeout = errors.New("timed out")

// Connect opens an etcd client and checks, within timeout, that the cluster
// answers, so that a wrong endpoint is a clear error and not a hang.
func Connect(ctx context.Context, endpoints []string, timeout time.Duration) (*clientv3.Client, error) {
	return ConnectAs(ctx, endpoints, timeout, "", "", nil)
}

// ConnectAs is Connect, logged in as user (with etcd's authentication on;
// "" for none), over TLS as tc says (nil: plain; the endpoints are then
// http:// ones).
func ConnectAs(ctx context.Context, endpoints []string, timeout time.Duration, user, password string, tc *tls.Config) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: timeout, Logger: zap.NewNop(), Username: user, Password: password, TLS: tc})
	if errors.Is(err, rpctypes.ErrAuthNotEnabled) && user != "root" {
		// An etcd without authentication takes anyone: credentials made
		// for one that has it are not an error.
		cli, err = clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: timeout, Logger: zap.NewNop(), TLS: tc})
	}
	if errors.Is(err, rpctypes.ErrAuthFailed) || errors.Is(err, rpctypes.ErrUserEmpty) {
		return nil, fmt.Errorf("etcd at %s refused the login of %q (give the role's own credentials with --creds): %w", strings.Join(endpoints, ","), user, err)
	}
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %w", strings.Join(endpoints, ","), err)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A request every logged-in user may make, and that the cluster answers
	// only with a quorum: the list of alarms. (Reading a key instead would
	// be refused for most roles, and a refusal is what the servers log as a
	// sign of trouble.)
	if _, err := cli.AlarmList(cctx); err != nil {
		if errors.Is(err, rpctypes.ErrUserEmpty) {
			cli.Close()
			return nil, fmt.Errorf("etcd at %s requires a login (give the role's credentials with --creds): %w", strings.Join(endpoints, ","), err)
		}
		cli.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if herr := tlsProblem(endpoints, tc, timeout); herr != nil {
			return nil, fmt.Errorf("etcd at %s: %w", strings.Join(endpoints, ","), herr)
		}
		return nil, fmt.Errorf("etcd at %s did not answer within %v (is it running? check --etcd): %w", strings.Join(endpoints, ","), timeout, err)
	}
	return cli, nil
}

// tlsProblem says why a TLS handshake with the first https endpoint fails
// (an authority the client does not trust, a name the certificate lacks),
// which the etcd client reports only as a timeout; nil when it succeeds or
// the endpoints are not https ones.
func tlsProblem(endpoints []string, tc *tls.Config, timeout time.Duration) error {
	for _, e := range endpoints {
		u, err := url.Parse(e)
		if err != nil || u.Scheme != "https" {
			continue
		}
		if tc == nil {
			tc = &tls.Config{}
		}
		tc = tc.Clone()
		tc.ServerName = u.Hostname()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", u.Host, tc)
		if err != nil {
			var netErr net.Error
			if errors.As(err, &netErr) {
				return nil // unreachable, not a TLS problem
			}
			return fmt.Errorf("TLS handshake: %w (give the cluster's authority with --tls-ca)", err)
		}
		c.Close()
		return nil
	}
	return nil
}

// Wait returns the first value of key once it exists, watching from the
// revision it last read. It fails with ErrTimeout after timeout.
func Wait(ctx context.Context, cli *clientv3.Client, key string, timeout time.Duration) ([]byte, error) {
	var val []byte
	err := WaitPrefix(ctx, cli, key, timeout, func(kvs map[string][]byte) bool {
		v, ok := kvs[key]
		val = v
		return ok
	})
	return val, err
}

// WaitPrefix calls done with every key and value under prefix, first as they
// are and then after each change, until done returns true. It fails with
// ErrTimeout after timeout.
func WaitPrefix(ctx context.Context, cli *clientv3.Client, prefix string, timeout time.Duration, done func(map[string][]byte) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ctx = clientv3.WithRequireLeader(ctx)
	r, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return waitErr(ctx, prefix, timeout, err)
	}
	kvs := map[string][]byte{}
	for _, kv := range r.Kvs {
		kvs[string(kv.Key)] = kv.Value
	}
	if done(kvs) {
		return nil
	}
	wc := cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(r.Header.Revision+1))
	for wr := range wc {
		if err := wr.Err(); err != nil {
			return waitErr(ctx, prefix, timeout, err)
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.DELETE {
				delete(kvs, string(ev.Kv.Key))
			} else {
				kvs[string(ev.Kv.Key)] = ev.Kv.Value
			}
		}
		if done(kvs) {
			return nil
		}
	}
	return waitErr(ctx, prefix, timeout, ctx.Err())
}

func waitErr(ctx context.Context, key string, timeout time.Duration, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("waiting for %s: %w after %v", key, ErrTimeout, timeout)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("waiting for %s: %w", key, err)
}
