package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/paramserver"
)

// Errors a caller can branch on.
var (
	ErrSpecConflict = errors.New("a job of that name exists with a different spec")
	ErrJobDone      = errors.New("the job has already finished")
	// ErrNothingToResume: the job does not exist, or has no complete
	// checkpoint.
	ErrNothingToResume = errors.New("nothing to resume")
)

// resume writes the placement that continues the job from its last complete
// checkpoint, on p's shards, and forgets the ranks that had finished after
// it: they rerun from there.
func resume(ctx context.Context, cli *clientv3.Client, l *Leadership, keys job.Keys, p *paramserver.Placement) (*paramserver.Placement, error) {
	r, err := cli.Get(ctx, keys.Checkpoint())
	if err != nil {
		return nil, fmt.Errorf("reading the last checkpoint: %w", err)
	}
	var cp job.CheckpointRecord
	if len(r.Kvs) == 0 || json.Unmarshal(r.Kvs[0].Value, &cp) != nil || len(cp.Files) == 0 {
		return nil, fmt.Errorf("%w: no complete checkpoint (train with --checkpoint-every)", ErrNothingToResume)
	}
	q, err := p.Reshard(p.Shards, cp.Step, cp.Files)
	if err != nil {
		return nil, err
	}
	_, err = write(ctx, cli, l, nil, clientv3.OpPut(keys.Placement(), string(q.Encode())),
		clientv3.OpDelete(keys.Dones(), clientv3.WithPrefix()), clientv3.OpDelete(keys.Finishing()))
	if err != nil {
		return nil, fmt.Errorf("writing placement %d: %w", q.Version, err)
	}
	return q, nil
}

// Config is what Run needs besides an etcd client.
type Config struct {
	Spec job.Spec
	Log  *slog.Logger
	// JoinTimeout bounds how long a rank may stay without a worker; 0 means
	// 5 minutes.
	JoinTimeout time.Duration
	// Leader, when set, is this coordinator's won election: every write is
	// guarded by it, and Run returns ErrNotLeader once it is lost.
	Leader *Leadership
	// Resume continues a stopped job from its last complete checkpoint: the
	// coordinator writes a new placement (same shards) starting from it, so
	// shards restore from its snapshots and workers resume at its step. The
	// job must exist, with the same spec, and have a complete checkpoint.
	Resume bool
	// OnFinish runs once every rank is done and before the job is marked
	// done (while the shards still serve), e.g. to save the final parameters.
	OnFinish func(ctx context.Context, p *paramserver.Placement) error
}

// Run coordinates the job until every rank is done, then marks it done. It
// returns early with ctx's error, or when the job cannot proceed.
func Run(ctx context.Context, cli *clientv3.Client, cfg Config) error {
	spec := &cfg.Spec
	if err := spec.Validate(); err != nil {
		return err
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.JoinTimeout == 0 {
		cfg.JoinTimeout = 5 * time.Minute
	}
	keys := job.KeysFor(spec.Name)
	p := paramserver.Place(spec.Tensors(), spec.BlockSize, spec.Shards)
	if len(p.Blocks) < spec.Shards {
		return fmt.Errorf("the model has %d blocks of %d floats for %d shards: lower --block-size or --ps-shards", len(p.Blocks), spec.BlockSize, spec.Shards)
	}
	// Create the job, or join it if it exists with the same spec (only join,
	// to resume).
	create := clientv3.Compare(clientv3.CreateRevision(keys.Spec()), "=", 0)
	if cfg.Resume {
		create = clientv3.Compare(clientv3.CreateRevision(keys.Spec()), "<", 0) // never: read only
	}
	if cfg.Leader != nil {
		if ok, err := write(ctx, cli, cfg.Leader, nil); err != nil || !ok {
			return fmt.Errorf("job %s: %w", spec.Name, errors.Join(err, ErrNotLeader))
		}
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		go func() {
			select {
			case <-cfg.Leader.Lost():
				cancel(ErrNotLeader)
			case <-ctx.Done():
			}
		}()
	}
	resp, err := cli.Txn(ctx).
		If(create).
		Then(clientv3.OpPut(keys.Spec(), string(spec.Encode())),
			clientv3.OpPut(keys.Placement(), string(p.Encode())),
			clientv3.OpPut(keys.State(), job.StateRunning)).
		Else(clientv3.OpGet(keys.Spec()), clientv3.OpGet(keys.State())).
		Commit()
	if err != nil {
		return fmt.Errorf("creating job %s in etcd: %w", spec.Name, err)
	}
	if !resp.Succeeded {
		stored := resp.Responses[0].GetResponseRange().Kvs
		if len(stored) == 0 { // only when resuming
			return fmt.Errorf("job %s: %w: no such job", spec.Name, ErrNothingToResume)
		}
		old := stored[0].Value
		if !bytes.Equal(old, spec.Encode()) {
			return fmt.Errorf("job %s: %w (stored: %s)", spec.Name, ErrSpecConflict, old)
		}
		if st := resp.Responses[1].GetResponseRange().Kvs; len(st) > 0 && string(st[0].Value) == job.StateDone {
			return fmt.Errorf("job %s: %w", spec.Name, ErrJobDone)
		}
		if p, _, err = job.ReadPlacement(ctx, cli, spec.Name); err != nil {
			return err
		}
		cfg.Log.Info("joined existing job", "job", spec.Name, "placement", p.Version)
	} else {
		cfg.Log.Info("created job", "job", spec.Name, "params", p.Size(), "blocks", len(p.Blocks), "shards", spec.Shards)
	}
	if cfg.Resume {
		if p, err = resume(ctx, cli, cfg.Leader, keys, p); err != nil {
			return fmt.Errorf("job %s: %w", spec.Name, err)
		}
		cfg.Log.Info("resuming", "job", spec.Name, "from_step", p.Start, "placement", p.Version)
	}
	c := &run{cli: cli, cfg: cfg, keys: keys, ranks: NewRanks(spec.Workers), placement: p,
		snaps: map[int64]map[int]string{}, last: job.CheckpointRecord{Step: -1}}
	err = c.loop(ctx)
	if cause := context.Cause(ctx); errors.Is(cause, ErrNotLeader) {
		return fmt.Errorf("job %s: %w", spec.Name, ErrNotLeader)
	}
	return err
}

type run struct {
	cli       *clientv3.Client
	cfg       Config
	keys      job.Keys
	ranks     *Ranks
	placement *paramserver.Placement
	snaps     map[int64]map[int]string // the placement's shard snapshot files by step and shard
	last      job.CheckpointRecord     // the last complete checkpoint (Step -1: none)
	finishing bool                     // some rank has finished: no more re-placements
}

// loop rebuilds the rank state from etcd, then follows membership and
// completion events until every rank is done.
func (c *run) loop(ctx context.Context) error {
	snap, err := c.cli.Get(ctx, c.keys.Root(), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("reading job state: %w", err)
	}
	var events []*mvccpb.KeyValue
	for _, kv := range snap.Kvs {
		k := string(kv.Key)
		if id, ok := strings.CutPrefix(k, c.keys.Assigns()); ok {
			var a job.Assignment
			if json.Unmarshal(kv.Value, &a) == nil {
				c.ranks.Restore(id, a)
			}
		} else {
			events = append(events, kv)
		}
	}
	// Workers whose assignment exists but whose lease is gone are down.
	live := map[string]bool{}
	for _, kv := range snap.Kvs {
		if id, ok := strings.CutPrefix(string(kv.Key), c.keys.Workers()); ok {
			live[id] = true
		}
	}
	for id := range c.ranks.rankOf {
		if !live[id] {
			if err := c.apply(ctx, c.ranks.Down(id)); err != nil {
				return err
			}
		}
	}
	for _, kv := range events {
		if finished, err := c.handle(ctx, mvccpb.PUT, kv, nil); err != nil || finished {
			return err
		}
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wc := c.cli.Watch(wctx, c.keys.Root(), clientv3.WithPrefix(), clientv3.WithRev(snap.Header.Revision+1), clientv3.WithPrevKV())
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	since := time.Now() // since when a rank has been without a worker
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if c.ranks.Unassigned() == 0 {
				since = time.Now()
			} else if time.Since(since) > c.cfg.JoinTimeout {
				return fmt.Errorf("job %s: %d ranks have had no worker for %v: start more workers", c.cfg.Spec.Name, c.ranks.Unassigned(), c.cfg.JoinTimeout)
			}
		case wr, ok := <-wc:
			if !ok {
				return fmt.Errorf("etcd watch closed: %w", ctx.Err())
			}
			if err := wr.Err(); err != nil {
				return fmt.Errorf("watching job %s: %w", c.cfg.Spec.Name, err)
			}
			for _, ev := range wr.Events {
				if finished, err := c.handle(ctx, ev.Type, ev.Kv, ev.PrevKv); err != nil || finished {
					return err
				}
			}
		}
	}
}

// handle feeds one key change to the rank state and carries out its actions.
// (prev, for a deletion, is the key's last value when known.)
func (c *run) handle(ctx context.Context, typ mvccpb.Event_EventType, kv, prev *mvccpb.KeyValue) (finished bool, err error) {
	k := string(kv.Key)
	if id, ok := strings.CutPrefix(k, c.keys.Workers()); ok {
		if typ == mvccpb.DELETE {
			lost := c.ranks.Holds(id)
			c.cfg.Log.Info("worker left", "worker", id, "work_lost", lost)
			// Its assignment goes: should it come back (it was frozen or
			// cut off, not dead), it finds it has no rank.
			if _, err := write(ctx, c.cli, c.cfg.Leader, nil, clientv3.OpDelete(c.keys.Assign(id))); err != nil {
				return false, err
			}
			if err := c.apply(ctx, c.ranks.Down(id)); err != nil {
				return false, err
			}
			if lost && c.cfg.Spec.Mode == paramserver.Sync {
				// Its last step may be half pushed: only a rollback keeps
				// the run what it would have been.
				return false, c.rollback(ctx, fmt.Sprintf("worker %s died", id))
			}
			return false, nil
		}
		return false, c.apply(ctx, c.ranks.Up(id))
	}
	if i, ok := strings.CutPrefix(k, c.keys.Shards()); ok && typ == mvccpb.DELETE && prev != nil {
		var m job.ShardMember
		idx, err := strconv.Atoi(i)
		if err == nil && json.Unmarshal(prev.Value, &m) == nil && m.Placement == c.placement.Version && idx < c.placement.Shards {
			// It served this placement: its blocks' progress is lost.
			return false, c.rollback(ctx, fmt.Sprintf("parameter-server shard %d died", idx))
		}
		return false, nil
	}
	if rest, ok := strings.CutPrefix(k, c.keys.ShardSnapshots()); ok && typ == mvccpb.PUT {
		return false, c.recordSnapshot(ctx, rest, kv.Value)
	}
	if k == c.keys.Checkpoint() && typ == mvccpb.PUT { // read back when the coordinator restarts
		var cp job.CheckpointRecord
		if json.Unmarshal(kv.Value, &cp) == nil && cp.Step > c.last.Step {
			c.last = cp
		}
		return false, nil
	}
	if k == c.keys.Finishing() {
		c.finishing = true
		return false, nil
	}
	if k == c.keys.Reshard() && typ == mvccpb.PUT {
		return false, c.reshard(ctx, kv.Value)
	}
	if r, ok := strings.CutPrefix(k, c.keys.Dones()); ok && typ == mvccpb.PUT {
		rank, err := strconv.Atoi(r)
		if err != nil || !c.ranks.Done(rank) {
			return false, nil
		}
		c.cfg.Log.Info("all ranks done", "job", c.cfg.Spec.Name)
		if c.cfg.OnFinish != nil {
			if err := c.cfg.OnFinish(ctx, c.placement); err != nil {
				return false, err
			}
		}
		if _, err := write(ctx, c.cli, c.cfg.Leader, nil, clientv3.OpPut(c.keys.State(), job.StateDone)); err != nil {
			return false, fmt.Errorf("marking job done: %w", err)
		}
		return true, nil
	}
	return false, nil
}

// recordSnapshot notes a shard's snapshot (key "<step>/<shard>") and, once
// every shard has one for a step, records that step as the last complete
// checkpoint.
func (c *run) recordSnapshot(ctx context.Context, key string, value []byte) error {
	var rec job.SnapshotRecord
	if err := json.Unmarshal(value, &rec); err != nil || rec.Shard < 0 || rec.Shard >= c.placement.Shards {
		c.cfg.Log.Warn("ignoring a malformed snapshot record", "key", key)
		return nil
	}
	if rec.Placement != c.placement.Version || rec.Step <= c.last.Step {
		return nil // of an earlier placement, or older than the last checkpoint
	}
	m := c.snaps[rec.Step]
	if m == nil {
		m = map[int]string{}
		c.snaps[rec.Step] = m
	}
	m[rec.Shard] = rec.Path
	if len(m) < c.placement.Shards {
		return nil
	}
	cp := job.CheckpointRecord{Step: rec.Step, Placement: rec.Placement, Files: make([]string, c.placement.Shards)}
	for i, f := range m {
		cp.Files[i] = f
	}
	b, _ := json.Marshal(cp)
	if _, err := write(ctx, c.cli, c.cfg.Leader, nil, clientv3.OpPut(c.keys.Checkpoint(), string(b))); err != nil {
		return fmt.Errorf("recording checkpoint %d: %w", rec.Step, err)
	}
	c.last = cp
	for step := range c.snaps {
		if step <= rec.Step {
			delete(c.snaps, step)
		}
	}
	c.cfg.Log.Info("checkpoint complete", "step", rec.Step)
	return nil
}

// rollback moves the whole job back to its last complete checkpoint (or to
// its start, without one) on the same shards: a new placement fences the
// old era, shards restore, every rank reruns from there (the finished ones
// too), and a rank whose holder died is fenced at once.
func (c *run) rollback(ctx context.Context, why string) error {
	step, files := c.last.Step, c.last.Files
	if step < 0 {
		step, files = 0, nil
	}
	q, err := c.placement.Reshard(c.placement.Shards, step, files)
	if err != nil {
		return fmt.Errorf("rolling back: %w", err)
	}
	q.Epochs = c.ranks.Fence()
	_, err = write(ctx, c.cli, c.cfg.Leader, nil, clientv3.OpPut(c.keys.Placement(), string(q.Encode())),
		clientv3.OpDelete(c.keys.Dones(), clientv3.WithPrefix()), clientv3.OpDelete(c.keys.Finishing()))
	if err != nil {
		return fmt.Errorf("writing placement %d: %w", q.Version, err)
	}
	c.cfg.Log.Warn("rolled back", "why", why, "to_step", step, "placement", q.Version)
	c.placement, c.finishing = q, false
	c.ranks.Rollback()
	clear(c.snaps)
	return nil
}

// reshard answers an operator's request to move the job to another number
// of shards: the new placement starts from the last complete checkpoint, so
// every shard restores from it and every worker resumes at its step. It is
// refused when there is no complete checkpoint, or once a rank has finished.
func (c *run) reshard(ctx context.Context, value []byte) error {
	var req job.ReshardRequest
	if err := json.Unmarshal(value, &req); err != nil || req.Status != "" {
		return nil // malformed (answered below) or already answered
	}
	answer := func(status string) error {
		req.Status = status
		b, _ := json.Marshal(req)
		_, err := write(ctx, c.cli, c.cfg.Leader, nil, clientv3.OpPut(c.keys.Reshard(), string(b)))
		return err
	}
	var why string
	switch {
	case c.finishing:
		why = "refused: a rank has already finished its last step"
	case c.last.Step < 0:
		why = "refused: the job has no complete checkpoint yet (it re-places from one: run it with --checkpoint-every)"
	}
	var q *paramserver.Placement
	if why == "" {
		var err error
		if q, err = c.placement.Reshard(req.Shards, c.last.Step, c.last.Files); err != nil {
			why = "refused: " + err.Error()
		}
	}
	if why != "" {
		c.cfg.Log.Warn("reshard request", "shards", req.Shards, "answer", why)
		return answer(why)
	}
	req.Status, req.Version, req.Start = "done", q.Version, q.Start
	b, _ := json.Marshal(req)
	ok, err := write(ctx, c.cli, c.cfg.Leader, []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(c.keys.Finishing()), "=", 0)},
		clientv3.OpPut(c.keys.Placement(), string(q.Encode())), clientv3.OpPut(c.keys.Reshard(), string(b)))
	if err != nil {
		return fmt.Errorf("writing placement %d: %w", q.Version, err)
	}
	if !ok {
		c.finishing = true
		return answer("refused: a rank has already finished its last step")
	}
	c.cfg.Log.Info("re-placed the job", "placement", q.Version, "shards", q.Shards, "from_step", q.Start)
	c.placement = q
	clear(c.snaps)
	return nil
}

func (c *run) apply(ctx context.Context, as []Assign) error {
	for _, a := range as {
		b, _ := json.Marshal(a.Assignment)
		if _, err := write(ctx, c.cli, c.cfg.Leader, nil, clientv3.OpPut(c.keys.Assign(a.Worker), string(b))); err != nil {
			return fmt.Errorf("assigning rank %d to %s: %w", a.Rank, a.Worker, err)
		}
		c.cfg.Log.Info("assigned rank", "worker", a.Worker, "rank", a.Rank, "epoch", a.Epoch, "data_shard", a.DataShard)
	}
	return nil
}
