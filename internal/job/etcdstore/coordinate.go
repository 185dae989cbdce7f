package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/downpour-ml/downpour/internal/job"
)

// The coordinator's calls: its election, the events it follows, and its
// decisions, each written in a transaction guarded by its leadership.

// leadership is a won election (job.Leadership).
type leadership struct {
	session  *concurrency.Session
	election *concurrency.Election
	key      string // the candidacy's key and revision, as won (Resign clears the election's)
	rev      int64
}

func (l *leadership) Lost() <-chan struct{} { return l.session.Done() }

func (l *leadership) Resign(ctx context.Context) {
	l.election.Resign(ctx)
	l.session.Close()
}

// guard is the comparison every write of the leader is made under.
func (l *leadership) guard() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.rev)
}

// Campaign blocks until process id leads the job (a retry after a
// transient failure campaigns again with the same session, which etcd
// treats as the same candidate).
func (s *Store) Campaign(ctx context.Context, id string, ttl int) (job.Leadership, error) {
	var sess *concurrency.Session
	err := s.do(ctx, func(context.Context) error {
		var err error
		sess, err = concurrency.NewSession(s.cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("starting an etcd session: %w", err)
	}
	e := concurrency.NewElection(sess, s.keys.Leader())
	err = s.waitAgain(ctx, func() error { return e.Campaign(ctx, id) })
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("campaigning to lead job %s: %w", s.name, err)
	}
	return &leadership{session: sess, election: e, key: e.Key(), rev: e.Rev()}, nil
}

// Leader is the id of the job's leader, or "" when none.
func (s *Store) Leader(ctx context.Context) (string, error) {
	var id string
	err := s.do(ctx, func(ctx context.Context) error {
		r, err := s.kv.Get(ctx, s.keys.Leader(), append(clientv3.WithFirstCreate(), clientv3.WithPrefix())...)
		if err != nil {
			return err
		}
		id = ""
		if len(r.Kvs) > 0 {
			id = string(r.Kvs[0].Value)
		}
		return nil
	})
	return id, err
}

// write commits ops if cmps hold and l still leads (when l is set); it
// reports whether cmps held.
func (s *Store) write(ctx context.Context, l job.Leadership, cmps []clientv3.Cmp, ops ...clientv3.Op) (bool, error) {
	var ok bool
	err := s.do(ctx, func(ctx context.Context) error {
		var err error
		ok, err = s.writeOnce(ctx, l, cmps, ops...)
		return err
	})
	return ok, err
}

func (s *Store) writeOnce(ctx context.Context, l job.Leadership, cmps []clientv3.Cmp, ops ...clientv3.Op) (bool, error) {
	if l == nil {
		r, err := s.kv.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return false, err
		}
		return r.Succeeded, nil
	}
	// Under the leader's guard; when a comparison fails, the candidacy's
	// key, read in the same transaction, says whether it was the guard.
	lead := l.(*leadership)
	all := append(append([]clientv3.Cmp(nil), cmps...), lead.guard())
	r, err := s.kv.Txn(ctx).If(all...).Then(ops...).Else(clientv3.OpGet(lead.key)).Commit()
	if err != nil {
		return false, err
	}
	if r.Succeeded {
		return true, nil
	}
	if kvs := r.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 0 || kvs[0].CreateRevision != lead.rev {
		return false, job.ErrNotLeader
	}
	return false, nil
}

// CheckLeader fails with job.ErrNotLeader unless l leads.
func (s *Store) CheckLeader(ctx context.Context, l job.Leadership) error {
	if ok, err := s.write(ctx, l, nil); err != nil || !ok {
		return errors.Join(err, job.ErrNotLeader)
	}
	return nil
}

// Create writes the job unless it exists (with join: never). A retry of a
// try that created it finds it, with this spec, and joins it.
func (s *Store) Create(ctx context.Context, l job.Leadership, spec *job.Spec, p *job.Placement, join bool) (bool, []byte, string, error) {
	create := clientv3.Compare(clientv3.CreateRevision(s.keys.Spec()), "=", 0)
	if join {
		create = clientv3.Compare(clientv3.CreateRevision(s.keys.Spec()), "<", 0) // never: read only
	}
	if c := spec.Corpus(); c != nil && !join {
		// The corpus summary goes first, in chunks, each written only while
		// the job does not exist yet: a job that exists has its own.
		parts := []clientv3.Op{clientv3.OpDelete(s.keys.Corpus(), clientv3.WithPrefix())}
		for i, b := 0, c.Encode(); len(b) > 0; i++ {
			n := min(len(b), CorpusChunk)
			parts, b = append(parts, clientv3.OpPut(s.keys.CorpusPart(i), string(b[:n]))), b[n:]
		}
		for _, op := range parts {
			err := s.do(ctx, func(ctx context.Context) error {
				_, err := s.kv.Txn(ctx).If(create).Then(op).Commit()
				return err
			})
			if err != nil {
				return false, nil, "", fmt.Errorf("writing job %s's corpus summary to etcd: %w", s.name, err)
			}
		}
	}
	var resp *clientv3.TxnResponse
	err := s.do(ctx, func(ctx context.Context) error {
		var err error
		resp, err = s.kv.Txn(ctx).
			If(create).
			Then(clientv3.OpPut(s.keys.Spec(), string(spec.Encode())),
				clientv3.OpPut(s.keys.Placement(), string(p.Encode())),
				clientv3.OpPut(s.keys.State(), job.StateRunning)).
			Else(clientv3.OpGet(s.keys.Spec()), clientv3.OpGet(s.keys.State())).
			Commit()
		return err
	})
	if err != nil {
		return false, nil, "", fmt.Errorf("creating job %s in etcd: %w", s.name, err)
	}
	if resp.Succeeded {
		return true, nil, "", nil
	}
	var stored []byte
	var state string
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		stored = kvs[0].Value
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		state = string(kvs[0].Value)
	}
	return false, stored, state, nil
}

// jobKeys are a job's keys read at one revision.
type jobKeys struct {
	Kvs    []*mvccpb.KeyValue
	Header struct{ Revision int64 }
}

// readJob reads every key of the job but its corpus summary (a megabyte
// for the paper's vocabularies, which only Find needs), at one revision.
func (s *Store) readJob(ctx context.Context) (*jobKeys, error) {
	root, corpus := s.keys.Root(), s.keys.Corpus()
	var r *clientv3.TxnResponse
	err := s.do(ctx, func(ctx context.Context) error {
		var err error
		r, err = s.kv.Txn(ctx).Then(
			clientv3.OpGet(root, clientv3.WithRange(corpus)),
			clientv3.OpGet(clientv3.GetPrefixRangeEnd(corpus), clientv3.WithRange(clientv3.GetPrefixRangeEnd(root)))).Commit()
		return err
	})
	if err != nil {
		return nil, err
	}
	out := &jobKeys{}
	out.Header.Revision = r.Header.Revision
	for _, rr := range r.Responses {
		out.Kvs = append(out.Kvs, rr.GetResponseRange().Kvs...)
	}
	return out, nil
}

// Follow reads the job's keys, as a View, and then sends their changes as
// events; a watch a transient failure ends is opened again after the last
// revision seen.
func (s *Store) Follow(ctx context.Context) (*job.View, <-chan job.Event, error) {
	snap, err := s.readJob(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("reading job state: %w", err)
	}
	v := &job.View{Assigned: map[string]job.Assignment{}, Live: map[string]bool{}}
	for _, kv := range snap.Kvs {
		k := string(kv.Key)
		if id, ok := strings.CutPrefix(k, s.keys.Assigns()); ok {
			var a job.Assignment
			if json.Unmarshal(kv.Value, &a) == nil {
				v.Assigned[id] = a
			}
			continue
		}
		if id, ok := strings.CutPrefix(k, s.keys.Workers()); ok {
			v.Live[id] = true
		}
		if k == s.keys.Checkpoint() {
			var cp job.CheckpointRecord
			if json.Unmarshal(kv.Value, &cp) == nil {
				v.Checkpoint = &cp
			}
		}
		if ev, ok := s.event(mvccpb.PUT, kv, nil); ok {
			v.Events = append(v.Events, ev)
		}
	}
	out := make(chan job.Event)
	go s.follow(ctx, snap.Header.Revision, out)
	return v, out, nil
}

// follow sends the job's changes after revision seen to out until ctx
// ends or the watch fails for good (an event of kind Failed).
func (s *Store) follow(ctx context.Context, seen int64, out chan<- job.Event) {
	defer close(out)
	send := func(ev job.Event) bool {
		select {
		case out <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wc := s.cli.Watch(wctx, s.keys.Root(), clientv3.WithPrefix(), clientv3.WithRev(seen+1), clientv3.WithPrevKV())
		var failed error
		for wr := range wc {
			if err := wr.Err(); err != nil {
				failed = err
				break
			}
			for _, e := range wr.Events {
				if ev, ok := s.event(e.Type, e.Kv, e.PrevKv); ok && !send(ev) {
					cancel()
					return
				}
				seen = e.Kv.ModRevision
			}
		}
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case failed == nil: // the watch closed without a word: open it again
		case !Transient(failed) || errors.Is(failed, rpctypes.ErrCompacted):
			send(job.Event{Kind: job.Failed, Err: fmt.Errorf("watching job %s: %w", s.name, failed)})
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// event is the typed event of one key's change (ok false: nothing a
// coordinator reacts to). prev is a deleted key's last value, when known.
func (s *Store) event(typ mvccpb.Event_EventType, kv, prev *mvccpb.KeyValue) (job.Event, bool) {
	k := string(kv.Key)
	put := typ == mvccpb.PUT
	malformed := func(what string, err error) (job.Event, bool) {
		return job.Event{Kind: job.Malformed, What: what + " " + k, Err: err}, true
	}
	switch {
	case strings.HasPrefix(k, s.keys.Workers()):
		id := strings.TrimPrefix(k, s.keys.Workers())
		if put {
			var m job.WorkerMember
			if json.Unmarshal(kv.Value, &m) != nil || m.Replica != nil && *m.Replica < 0 {
				return job.Event{Kind: job.Malformed, What: k, Err: fmt.Errorf("worker member %q", kv.Value)}, true
			}
			return job.Event{Kind: job.WorkerUp, Worker: id, Member: m}, true
		}
		return job.Event{Kind: job.WorkerDown, Worker: id}, true
	case strings.HasPrefix(k, s.keys.Shards()) && !put && prev != nil:
		var m job.ShardMember
		idx, err := strconv.Atoi(strings.TrimPrefix(k, s.keys.Shards()))
		if err != nil || json.Unmarshal(prev.Value, &m) != nil {
			return job.Event{}, false
		}
		return job.Event{Kind: job.ShardDown, Shard: idx, Placement: m.Placement}, true
	case strings.HasPrefix(k, s.keys.Shards()) && put:
		var m job.ShardMember
		idx, err := strconv.Atoi(strings.TrimPrefix(k, s.keys.Shards()))
		if err != nil || json.Unmarshal(kv.Value, &m) != nil || idx < 0 || m.Placement < 0 {
			return malformed("shard member", fmt.Errorf("%q", kv.Value))
		}
		return job.Event{Kind: job.ShardUp, Shard: idx, Placement: m.Placement, Filled: m.Filled}, true
	case !put:
		return job.Event{}, false
	case strings.HasPrefix(k, s.keys.ShardSnapshots()):
		var rec job.SnapshotRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return malformed("snapshot record", err)
		}
		return job.Event{Kind: job.SnapshotRecorded, Snapshot: rec}, true
	case k == s.keys.Checkpoint():
		var cp job.CheckpointRecord
		if json.Unmarshal(kv.Value, &cp) != nil {
			return job.Event{}, false
		}
		return job.Event{Kind: job.CheckpointRecorded, Checkpoint: cp}, true
	case k == s.keys.Reshard():
		var req job.ReshardRequest
		if err := json.Unmarshal(kv.Value, &req); err != nil {
			return malformed("reshard request", err)
		}
		return job.Event{Kind: job.ReshardRequested, Reshard: req}, true
	case strings.HasPrefix(k, s.keys.TaskDones()):
		id := strings.TrimPrefix(k, s.keys.TaskDones())
		var t job.Task
		if err := json.Unmarshal(kv.Value, &t); err != nil {
			return malformed("task report of "+id+":", err)
		}
		return job.Event{Kind: job.TaskReported, Worker: id, Task: t}, true
	case strings.HasPrefix(k, s.keys.Dones()):
		rank, err := strconv.Atoi(strings.TrimPrefix(k, s.keys.Dones()))
		if err != nil {
			return job.Event{}, false
		}
		return job.Event{Kind: job.RankReported, Rank: rank}, true
	}
	return job.Event{}, false
}

// TaskQueue is the stored task queue (nil: none).
func (s *Store) TaskQueue(ctx context.Context) ([]byte, error) {
	b, _, err := s.get(ctx, s.keys.Tasks())
	if err != nil {
		return nil, fmt.Errorf("reading the task queue: %w", err)
	}
	return b, nil
}

// TaskQueueAt is the queue stored with the checkpoint of step (nil: none).
func (s *Store) TaskQueueAt(ctx context.Context, step int64) ([]byte, error) {
	b, _, err := s.get(ctx, s.keys.TasksAt(step))
	return b, err
}

// StoredSpec is the stored spec's bytes (nil: no such job).
func (s *Store) StoredSpec(ctx context.Context) ([]byte, error) {
	b, _, err := s.get(ctx, s.keys.Spec())
	if err != nil {
		return nil, fmt.Errorf("reading job %s: %w", s.name, err)
	}
	return b, nil
}

// guarded writes ops under l, failing with what when they cannot be.
func (s *Store) guarded(ctx context.Context, l job.Leadership, what string, ops ...clientv3.Op) error {
	if _, err := s.write(ctx, l, nil, ops...); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// Assign gives worker its rank.
func (s *Store) Assign(ctx context.Context, l job.Leadership, worker string, a job.Assignment) error {
	return s.guarded(ctx, l, "assigning rank "+strconv.Itoa(a.Rank), putJSON(s.keys.Assign(worker), a))
}

// Unassign withdraws worker's rank.
func (s *Store) Unassign(ctx context.Context, l job.Leadership, worker string) error {
	return s.guarded(ctx, l, "unassigning "+worker, clientv3.OpDelete(s.keys.Assign(worker)))
}

// Place writes placement q, deletes the ranks' dones (unless q is handed
// over: they stay done) and, with rb, the rollback record, as one
// transaction on the revision of the placement it replaces: a retry whose
// first try took effect finds q in place and writes nothing (dones
// written under q since are kept).
func (s *Store) Place(ctx context.Context, l job.Leadership, q *job.Placement, rb *job.RollbackRecord) error {
	ops := []clientv3.Op{clientv3.OpPut(s.keys.Placement(), string(q.Encode()))}
	if !q.HandedOver {
		ops = append(ops, clientv3.OpDelete(s.keys.Dones(), clientv3.WithPrefix()))
	}
	if rb != nil {
		ops = append(ops, putJSON(s.keys.Rollback(q.Version), rb))
	}
	err := s.do(ctx, func(ctx context.Context) error {
		r, err := s.kv.Get(ctx, s.keys.Placement())
		if err != nil {
			return err
		}
		var rev int64
		if len(r.Kvs) > 0 {
			if p, err := job.DecodePlacement(r.Kvs[0].Value); err == nil && p.Version >= q.Version {
				return nil // written by an earlier try
			}
			rev = r.Kvs[0].ModRevision
		}
		ok, err := s.writeOnce(ctx, l, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.keys.Placement()), "=", rev)}, ops...)
		if err == nil && !ok {
			err = rpctypes.ErrLeaderChanged // the placement moved under this try: read it again
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("writing placement %d: %w", q.Version, err)
	}
	return nil
}

// GiveTasks writes the tasks given and the queue in one transaction.
func (s *Store) GiveTasks(ctx context.Context, l job.Leadership, given []job.GivenTask, queue []byte) error {
	var ops []clientv3.Op
	for _, g := range given {
		ops = append(ops, putJSON(s.keys.TaskOf(g.Worker), g.Task))
	}
	if queue != nil {
		ops = append(ops, clientv3.OpPut(s.keys.Tasks(), string(queue)))
	}
	if len(ops) == 0 {
		return nil
	}
	return s.guarded(ctx, l, "giving tasks and storing the task queue", ops...)
}

// SaveTaskQueueAt stores the queue of the checkpoint of step.
func (s *Store) SaveTaskQueueAt(ctx context.Context, l job.Leadership, step int64, queue []byte) error {
	return s.guarded(ctx, l, "storing the task queue of a checkpoint", clientv3.OpPut(s.keys.TasksAt(step), string(queue)))
}

// RecordCheckpoint records the last complete checkpoint.
func (s *Store) RecordCheckpoint(ctx context.Context, l job.Leadership, cp job.CheckpointRecord) error {
	return s.guarded(ctx, l, fmt.Sprintf("recording checkpoint %d", cp.Step), putJSON(s.keys.Checkpoint(), cp))
}

// AnswerReshard writes the answer to a reshard request.
func (s *Store) AnswerReshard(ctx context.Context, l job.Leadership, req job.ReshardRequest) error {
	return s.guarded(ctx, l, "answering a reshard request", putJSON(s.keys.Reshard(), req))
}

// MarkDone marks the job done.
func (s *Store) MarkDone(ctx context.Context, l job.Leadership) error {
	return s.guarded(ctx, l, "marking the job done", clientv3.OpPut(s.keys.State(), job.StateDone))
}

// RequestReshard asks for the job on shards shards.
func (s *Store) RequestReshard(ctx context.Context, shards int) error {
	b, _ := json.Marshal(job.ReshardRequest{Shards: shards})
	if err := s.put(ctx, s.keys.Reshard(), string(b)); err != nil {
		return fmt.Errorf("asking for the reshard: %w", err)
	}
	return nil
}

// ReshardAnswer waits, up to timeout, for the coordinator's answer.
func (s *Store) ReshardAnswer(ctx context.Context, timeout time.Duration) (job.ReshardRequest, error) {
	var ans job.ReshardRequest
	err := s.waitAgain(ctx, func() error {
		return WaitPrefix(ctx, s.cli, s.keys.Reshard(), timeout, func(kvs map[string][]byte) bool {
			return json.Unmarshal(kvs[s.keys.Reshard()], &ans) == nil && ans.Status != ""
		})
	})
	return ans, err
}

// Look reads the whole job at one revision, with its members' leases.
func (s *Store) Look(ctx context.Context) (*job.Look, error) {
	r, err := s.readJob(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading job %s: %w", s.name, err)
	}
	kvs := map[string]*mvccpb.KeyValue{}
	for _, kv := range r.Kvs {
		kvs[string(kv.Key)] = kv
	}
	if kvs[s.keys.Spec()] == nil {
		return nil, fmt.Errorf("job %s: not in etcd (%w)", s.name, job.ErrNoJob)
	}
	lk := &job.Look{Assigned: map[string]job.Assignment{}, Tasks: map[string]job.Task{}, Done: map[int]bool{}, Shards: map[int]job.ShardSeat{}}
	if lk.Spec, err = job.DecodeSpec(kvs[s.keys.Spec()].Value); err != nil {
		return nil, err
	}
	if kv := kvs[s.keys.Placement()]; kv == nil {
		return nil, fmt.Errorf("job %s has no placement", s.name)
	} else if lk.Placement, err = job.DecodePlacement(kv.Value); err != nil {
		return nil, err
	}
	if kv := kvs[s.keys.State()]; kv != nil {
		lk.State = string(kv.Value)
	}
	if kv := kvs[s.keys.Tasks()]; kv != nil {
		lk.TaskQueue = kv.Value
	}
	var cands []*mvccpb.KeyValue
	for _, kv := range r.Kvs {
		s.look(ctx, lk, kv, &cands)
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].CreateRevision < cands[j].CreateRevision })
	for _, c := range cands {
		lk.Candidates = append(lk.Candidates, string(c.Value))
	}
	sort.Slice(lk.Rollbacks, func(i, j int) bool { return lk.Rollbacks[i].Placement < lk.Rollbacks[j].Placement })
	return lk, nil
}

// look adds one key of the job to lk.
func (s *Store) look(ctx context.Context, lk *job.Look, kv *mvccpb.KeyValue, cands *[]*mvccpb.KeyValue) {
	k := string(kv.Key)
	switch {
	case k == s.keys.Checkpoint():
		var cp job.CheckpointRecord
		if json.Unmarshal(kv.Value, &cp) == nil {
			lk.Checkpoint = &cp
		}
	case strings.HasPrefix(k, s.keys.Leader()):
		*cands = append(*cands, kv)
	case strings.HasPrefix(k, s.keys.Rollbacks()):
		var rb job.RollbackRecord
		if json.Unmarshal(kv.Value, &rb) == nil {
			lk.Rollbacks = append(lk.Rollbacks, rb)
		}
	case strings.HasPrefix(k, s.keys.Workers()):
		lk.Workers = append(lk.Workers, s.seat(ctx, strings.TrimPrefix(k, s.keys.Workers()), kv.Lease))
	case strings.HasPrefix(k, s.keys.Shards()):
		i, err := strconv.Atoi(strings.TrimPrefix(k, s.keys.Shards()))
		if err != nil {
			return
		}
		var m job.ShardMember
		json.Unmarshal(kv.Value, &m)
		lk.Shards[i] = job.ShardSeat{Member: m, Seat: s.seat(ctx, strconv.Itoa(i), kv.Lease)}
	case strings.HasPrefix(k, s.keys.Assigns()):
		var a job.Assignment
		if json.Unmarshal(kv.Value, &a) == nil {
			lk.Assigned[strings.TrimPrefix(k, s.keys.Assigns())] = a
		}
	case strings.HasPrefix(k, s.keys.TaskDones()): // before task/: "task-done/" is not under "task/"
	case strings.HasPrefix(k, s.root()+"task/"):
		var t job.Task
		if json.Unmarshal(kv.Value, &t) == nil {
			lk.Tasks[strings.TrimPrefix(k, s.root()+"task/")] = t
		}
	case strings.HasPrefix(k, s.keys.Dones()):
		if rank, err := strconv.Atoi(strings.TrimPrefix(k, s.keys.Dones())); err == nil {
			lk.Done[rank] = true
		}
	}
}

func (s *Store) root() string { return s.keys.Root() }

// seat is member id with the time left on its lease.
func (s *Store) seat(ctx context.Context, id string, lease int64) job.Seat {
	st := job.Seat{ID: id, Leased: lease != 0, LeaseLeft: -1}
	if lease == 0 {
		return st
	}
	ttl, err := s.cli.TimeToLive(ctx, clientv3.LeaseID(lease))
	if err == nil && ttl.TTL >= 0 {
		st.LeaseLeft, st.Granted = time.Duration(ttl.TTL)*time.Second, time.Duration(ttl.GrantedTTL)*time.Second
	}
	return st
}
