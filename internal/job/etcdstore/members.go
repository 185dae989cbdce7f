package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/job"
)

// The members' calls: a worker's and a shard's.

// JoinWorker writes worker id's membership key under l.
func (s *Store) JoinWorker(ctx context.Context, l job.Lease, id string, m job.WorkerMember) error {
	b, _ := json.Marshal(m)
	if err := s.put(ctx, s.keys.Worker(id), string(b), clientv3.WithLease(leaseID(l))); err != nil {
		return fmt.Errorf("registering worker: %w", err)
	}
	return nil
}

// WaitAssignment waits for worker id's rank, or the job's end (nil).
func (s *Store) WaitAssignment(ctx context.Context, id string) (*job.Assignment, error) {
	var data []byte
	done := false
	err := s.waitAgain(ctx, func() error {
		return WaitKeys(ctx, s.cli, []string{s.keys.Assign(id), s.keys.State()}, 1<<62, func(kvs map[string]*mvccpb.KeyValue) bool {
			if kv := kvs[s.keys.Assign(id)]; kv != nil {
				data = kv.Value
			}
			done = kvs[s.keys.State()] != nil && string(kvs[s.keys.State()].Value) == job.StateDone
			return data != nil || done
		})
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for a rank: %w", err)
	}
	if data == nil {
		return nil, nil
	}
	var a job.Assignment
	if err := json.Unmarshal(data, &a); err != nil {
		return nil, fmt.Errorf("assignment: %w", err)
	}
	return &a, nil
}

// Assignment is worker id's rank now (nil: none, or not readable).
func (s *Store) Assignment(ctx context.Context, id string) (*job.Assignment, error) {
	b, _, err := s.get(ctx, s.keys.Assign(id))
	if err != nil {
		return nil, err
	}
	var a job.Assignment
	if b == nil || json.Unmarshal(b, &a) != nil {
		return nil, nil
	}
	return &a, nil
}

// WaitShards waits, up to timeout, for n shards to be members.
func (s *Store) WaitShards(ctx context.Context, n int, timeout time.Duration) error {
	err := s.waitAgain(ctx, func() error {
		return WaitPrefix(ctx, s.cli, s.keys.Shards(), timeout, func(kvs map[string][]byte) bool { return len(kvs) >= n })
	})
	if err != nil {
		return fmt.Errorf("waiting for %d parameter-server shards: %w", n, err)
	}
	return nil
}

// RankDone writes rank a.Rank done if the placement is still the one of
// revision rev (a retry of a write that took effect finds it so again,
// and writes the same value).
func (s *Store) RankDone(ctx context.Context, a job.Assignment, rev int64) (bool, error) {
	var ok bool
	err := s.do(ctx, func(ctx context.Context) error {
		r, err := s.kv.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.keys.Placement()), "=", rev)).
			Then(clientv3.OpPut(s.keys.Done(a.Rank), strconv.FormatUint(a.Epoch, 10))).
			Commit()
		if err != nil {
			return err
		}
		ok = r.Succeeded
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("reporting rank %d done: %w", a.Rank, err)
	}
	return ok, nil
}

// NextTask waits for worker id's task other than last.
func (s *Store) NextTask(ctx context.Context, id string, last job.Task) (job.Task, error) {
	var task job.Task
	key := s.keys.TaskOf(id)
	err := s.waitAgain(ctx, func() error {
		return WaitKeys(ctx, s.cli, []string{key}, 1<<62, func(kvs map[string]*mvccpb.KeyValue) bool {
			task = job.Task{}
			kv := kvs[key]
			return kv != nil && json.Unmarshal(kv.Value, &task) == nil && task.ID >= 0 && task != last
		})
	})
	return task, err
}

// TaskDone reports worker id's task t done.
func (s *Store) TaskDone(ctx context.Context, id string, t job.Task) error {
	b, _ := json.Marshal(t)
	if err := s.put(ctx, s.keys.TaskDone(id), string(b)); err != nil {
		return fmt.Errorf("reporting task %d done: %w", t.ID, err)
	}
	return nil
}

// ClaimShard creates index want's membership key (or the lowest free
// one's) under l. A try whose write took effect but whose answer was lost
// is found by its lease when tried again.
func (s *Store) ClaimShard(ctx context.Context, l job.Lease, shards, want int) (int, error) {
	if want >= shards {
		return 0, fmt.Errorf("shard %d does not exist: the job has %d shards", want, shards)
	}
	lo, hi := 0, shards
	if want >= 0 {
		lo, hi = want, want+1
	}
	lease := leaseID(l)
	for i := lo; i < hi; i++ {
		k := s.keys.Shard(i)
		var ok bool
		err := s.do(ctx, func(ctx context.Context) error {
			r, err := s.kv.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
				Then(clientv3.OpPut(k, "{}", clientv3.WithLease(lease))).Else(clientv3.OpGet(k)).Commit()
			if err != nil {
				return err
			}
			ok = r.Succeeded
			if kvs := r.Responses[0].GetResponseRange().GetKvs(); !ok && len(kvs) > 0 && clientv3.LeaseID(kvs[0].Lease) == lease {
				ok = true // this lease's own claim, made by a try that seemed to fail
			}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("claiming shard %d: %w", i, err)
		}
		if ok {
			return i, nil
		}
	}
	if want >= 0 {
		return 0, fmt.Errorf("shard %d is already served by a live process", want)
	}
	return 0, fmt.Errorf("all %d shards of the job are already served", shards)
}

// Served says whether index i of placement version was ever served.
func (s *Store) Served(ctx context.Context, version int64, i int) (bool, error) {
	b, _, err := s.get(ctx, s.keys.Served(version, i))
	if err != nil {
		return false, fmt.Errorf("shard %d: %w", i, err)
	}
	return b != nil, nil
}

// ServeShard marks index i of placement version served, and the shard's
// membership as serving it, unless it was served before. The mark holds
// the lease's id, so that a retry of a try that took effect knows its own.
func (s *Store) ServeShard(ctx context.Context, l job.Lease, version int64, i int) (bool, error) {
	lease := leaseID(l)
	member, _ := json.Marshal(job.ShardMember{Placement: version})
	served := s.keys.Served(version, i)
	mark := strconv.FormatInt(int64(lease), 16)
	var ok bool
	err := s.do(ctx, func(ctx context.Context) error {
		r, err := s.kv.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(served), "=", 0)).
			Then(clientv3.OpPut(served, mark), clientv3.OpPut(s.keys.Shard(i), string(member), clientv3.WithLease(lease))).
			Else(clientv3.OpGet(served)).Commit()
		if err != nil {
			return err
		}
		ok = r.Succeeded
		if kvs := r.Responses[0].GetResponseRange().GetKvs(); !ok && len(kvs) > 0 && string(kvs[0].Value) == mark {
			ok = true
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("shard %d: recording its placement: %w", i, err)
	}
	return ok, nil
}

// ShardFilled writes index i's membership key again, under l, saying the
// shard is filled under placement version (only while l holds the index).
func (s *Store) ShardFilled(ctx context.Context, l job.Lease, version int64, i int) error {
	lease := leaseID(l)
	member, _ := json.Marshal(job.ShardMember{Placement: version, Filled: true})
	k := s.keys.Shard(i)
	var ok bool
	err := s.do(ctx, func(ctx context.Context) error {
		r, err := s.kv.Txn(ctx).If(clientv3.Compare(clientv3.LeaseValue(k), "=", lease)).
			Then(clientv3.OpPut(k, string(member), clientv3.WithLease(lease))).Commit()
		if err != nil {
			return err
		}
		ok = r.Succeeded
		return nil
	})
	if err != nil {
		return fmt.Errorf("shard %d: recording it filled: %w", i, err)
	}
	if !ok {
		return fmt.Errorf("shard %d: recording it filled: %w", i, job.ErrFenced)
	}
	return nil
}

// LeaveShard deletes index i's membership key.
func (s *Store) LeaveShard(ctx context.Context, i int) error {
	return s.do(ctx, func(ctx context.Context) error {
		_, err := s.kv.Delete(ctx, s.keys.Shard(i))
		return err
	})
}

// RecordSnapshot records a shard's snapshot: it completes a checkpoint.
func (s *Store) RecordSnapshot(ctx context.Context, rec job.SnapshotRecord) error {
	b, _ := json.Marshal(rec)
	return s.put(ctx, s.keys.ShardSnapshot(rec.Placement, rec.Step, rec.Shard), string(b))
}

// Checkpoint is the last complete checkpoint (nil: none).
func (s *Store) Checkpoint(ctx context.Context) (*job.CheckpointRecord, int64, error) {
	b, rev, err := s.get(ctx, s.keys.Checkpoint())
	if err != nil {
		return nil, 0, fmt.Errorf("reading the last checkpoint: %w", err)
	}
	var cp job.CheckpointRecord
	if b == nil || json.Unmarshal(b, &cp) != nil {
		return nil, rev, nil
	}
	return &cp, rev, nil
}

// NextCheckpoint waits for a checkpoint written after revision rev.
func (s *Store) NextCheckpoint(ctx context.Context, rev int64) (*job.CheckpointRecord, int64, error) {
	var cp *job.CheckpointRecord
	var at int64
	key := s.keys.Checkpoint()
	err := s.waitAgain(ctx, func() error {
		return WaitKeys(ctx, s.cli, []string{key}, 1<<62, func(kvs map[string]*mvccpb.KeyValue) bool {
			kv := kvs[key]
			var c job.CheckpointRecord
			if kv == nil || kv.ModRevision <= rev || json.Unmarshal(kv.Value, &c) != nil {
				return false
			}
			cp, at = &c, kv.ModRevision
			return true
		})
	})
	return cp, at, err
}

// Released sends the assignments the coordinator deletes from the call on,
// watching again after a transient failure from the revision it last saw.
func (s *Store) Released(ctx context.Context) <-chan job.Assignment {
	out := make(chan job.Assignment)
	var seen int64 // the revision the watch goes on after: now, before returning
	err := s.do(ctx, func(ctx context.Context) error {
		r, err := s.kv.Get(ctx, s.keys.Assigns(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil {
			seen = r.Header.Revision
		}
		return err
	})
	if err != nil {
		close(out)
		return out
	}
	go func() {
		defer close(out)
		for ctx.Err() == nil {
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for resp := range s.cli.Watch(wctx, s.keys.Assigns(), clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(seen+1)) {
				if resp.Err() != nil {
					break
				}
				for _, ev := range resp.Events {
					seen = ev.Kv.ModRevision
					var a job.Assignment
					if ev.Type != clientv3.EventTypeDelete || ev.PrevKv == nil || json.Unmarshal(ev.PrevKv.Value, &a) != nil {
						continue
					}
					select {
					case out <- a:
					case <-ctx.Done():
					}
				}
			}
			cancel()
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return out
}
