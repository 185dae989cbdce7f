// Package storetest is the contract of job.Store as a test: every
// implementation (etcdstore, memstore, and etcdstore behind injected etcd
// failures) runs Run and must give the same answers.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/shard"
)

// NewStore returns an empty store of job name; each call of a test is on
// the same cluster.
type NewStore func(t *testing.T, name string) job.Store

// Run runs the contract's cases against stores made by newStore.
func Run(t *testing.T, newStore NewStore) {
	t.Run("create-find", func(t *testing.T) { createFind(t, newStore) })
	t.Run("members", func(t *testing.T) { members(t, newStore) })
	t.Run("placements", func(t *testing.T) { placements(t, newStore) })
	t.Run("shards", func(t *testing.T) { shards(t, newStore) })
	t.Run("tasks", func(t *testing.T) { tasks(t, newStore) })
	t.Run("checkpoints", func(t *testing.T) { checkpoints(t, newStore) })
	t.Run("leadership", func(t *testing.T) { leadership(t, newStore) })
	t.Run("corpus", func(t *testing.T) { corpus(t, newStore) })
}

func spec(name string) (*job.Spec, *job.Placement) {
	s := job.Default()
	s.Name = name
	p := job.Place([]models.Tensor{{Name: "w", Shape: []int{8}}}, 4, 2)
	return &s, p
}

// created makes the job in st (no election).
func created(t *testing.T, st job.Store) (*job.Spec, *job.Placement) {
	t.Helper()
	s, p := spec(st.Name())
	// Not created (ok false) with this spec stored: a retried try of this
	// call created it.
	if ok, stored, _, err := st.Create(context.Background(), nil, s, p, false); err != nil || !ok && string(stored) != string(s.Encode()) {
		t.Fatalf("Create: %v %v", ok, err)
	}
	return s, p
}

// follower reads a store's events; an event that comes again at once (its
// write was retried) is read once.
type follower struct {
	ch   <-chan job.Event
	last *job.Event
}

func follow(t *testing.T, st job.Store) (*job.View, *follower) {
	t.Helper()
	view, ch, err := st.Follow(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return view, &follower{ch: ch}
}

// next is the next event, within 10 s.
func (f *follower) next(t *testing.T) job.Event {
	t.Helper()
	for {
		select {
		case ev, ok := <-f.ch:
			if !ok {
				t.Fatal("the events ended")
			}
			if f.last != nil && reflect.DeepEqual(ev, *f.last) {
				continue
			}
			f.last = &ev
			return ev
		case <-time.After(10 * time.Second):
			t.Fatal("no event within 10 s")
		}
	}
}

func grant(t *testing.T, st job.Store) job.Lease {
	t.Helper()
	l, err := st.Grant(context.Background(), 30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

// A job is found once created, with what was written; creating it again
// (or joining it) finds it and changes nothing.
func createFind(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	st := newStore(t, "cf")
	if _, _, err := st.Find(ctx, 100*time.Millisecond); err == nil {
		t.Fatal("found a job nobody created")
	}
	if ok, stored, _, err := st.Create(ctx, nil, &job.Spec{Name: "cf"}, &job.Placement{}, true); err != nil || ok || stored != nil {
		t.Fatalf("joining no job: %v %q %v", ok, stored, err)
	}
	s, p := created(t, st)
	gs, gp, err := st.Find(ctx, time.Second)
	if err != nil || string(gs.Encode()) != string(s.Encode()) || string(gp.Encode()) != string(p.Encode()) {
		t.Fatalf("Find: %v", err)
	}
	ok, stored, state, err := st.Create(ctx, nil, s, p, false)
	if err != nil || ok || string(stored) != string(s.Encode()) || state != job.StateRunning {
		t.Fatalf("creating it again: %v %q %q %v", ok, stored, state, err)
	}
	if b, err := st.StoredSpec(ctx); err != nil || string(b) != string(s.Encode()) {
		t.Fatalf("StoredSpec: %v", err)
	}
	lk, err := st.Look(ctx)
	if err != nil || lk.State != job.StateRunning || lk.Placement.Version != p.Version {
		t.Fatalf("Look: %+v %v", lk, err)
	}
	if _, err := newStore(t, "nosuch").Look(ctx); !errors.Is(err, job.ErrNoJob) {
		t.Fatalf("Look of no job: %v", err)
	}
}

// A worker joins under its lease, is given a rank, and leaves with its
// lease; the coordinator follows it as events; a withdrawn rank is
// released to the shards.
func members(t *testing.T, newStore NewStore) {
	ctx := t.Context()
	st := newStore(t, "mb")
	created(t, st)
	view, events := follow(t, st)
	if len(view.Live) != 0 || len(view.Events) != 0 {
		t.Fatalf("Follow of a new job: %+v", view)
	}
	released := st.Released(ctx)
	l := grant(t, st)
	if err := st.JoinWorker(ctx, l, "w1", job.PinTo(1)); err != nil {
		t.Fatal(err)
	}
	if ev := events.next(t); ev.Kind != job.WorkerUp || ev.Worker != "w1" || ev.Member.Replica == nil || *ev.Member.Replica != 1 {
		t.Fatalf("after a join: %+v", ev)
	}
	// A worker that says nothing of a replica serves any.
	l2 := grant(t, st)
	if err := st.JoinWorker(ctx, l2, "w2", job.WorkerMember{}); err != nil {
		t.Fatal(err)
	}
	if ev := events.next(t); ev.Kind != job.WorkerUp || ev.Worker != "w2" || ev.Member.Replica != nil {
		t.Fatalf("after a join: %+v", ev)
	}
	l2.Close()
	if ev := events.next(t); ev.Kind != job.WorkerDown || ev.Worker != "w2" {
		t.Fatalf("after a lease's end: %+v", ev)
	}
	got := make(chan *job.Assignment, 1)
	go func() {
		a, err := st.WaitAssignment(ctx, "w1")
		if err != nil {
			t.Error(err)
		}
		got <- a
	}()
	want := job.Assignment{Rank: 1, Epoch: 3, DataShard: 1}
	if err := st.Assign(ctx, nil, "w1", want); err != nil {
		t.Fatal(err)
	}
	if a := <-got; a == nil || *a != want {
		t.Fatalf("WaitAssignment: %+v", a)
	}
	if a, err := st.Assignment(ctx, "w1"); err != nil || a == nil || *a != want {
		t.Fatalf("Assignment: %+v %v", a, err)
	}
	view, _ = follow(t, st)
	if !view.Live["w1"] || view.Live["w2"] || view.Assigned["w1"] != want {
		t.Fatalf("Follow after a join: %+v", view)
	}
	if i := slices.IndexFunc(view.Events, func(e job.Event) bool { return e.Kind == job.WorkerUp && e.Worker == "w1" }); i < 0 ||
		view.Events[i].Member.Replica == nil || *view.Events[i].Member.Replica != 1 {
		t.Fatalf("Follow's events after a join: %+v", view.Events)
	}
	if err := st.Unassign(ctx, nil, "w1"); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-released:
		if a != want {
			t.Fatalf("released %+v, want %+v", a, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the withdrawn rank was not released")
	}
	if a, err := st.Assignment(ctx, "w1"); err != nil || a != nil {
		t.Fatalf("Assignment after Unassign: %+v %v", a, err)
	}
	l.Close()
	if ev := events.next(t); ev.Kind != job.WorkerDown || ev.Worker != "w1" {
		t.Fatalf("after the lease ended: %+v", ev)
	}
	select {
	case <-l.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("a closed lease is not lost")
	}
}

// A rank's done counts only under the placement it ran under; a new
// placement forgets the ranks done and records why; the job's end ends the
// waits for a placement and for a rank.
func placements(t *testing.T, newStore NewStore) {
	ctx := t.Context()
	st := newStore(t, "pl")
	_, p := created(t, st)
	_, events := follow(t, st)
	p1, rev1, err := st.Placement(ctx)
	if err != nil || p1.Version != p.Version {
		t.Fatalf("Placement: %v", err)
	}
	a := job.Assignment{Rank: 0, Epoch: 1}
	if ok, err := st.RankDone(ctx, a, rev1); err != nil || !ok {
		t.Fatalf("RankDone under the current placement: %v %v", ok, err)
	}
	if ev := events.next(t); ev.Kind != job.RankReported || ev.Rank != 0 {
		t.Fatalf("after RankDone: %+v", ev)
	}
	waited := make(chan *job.Placement, 1)
	go func() {
		q, _, err := st.NextPlacement(ctx, p.Version)
		if err != nil {
			t.Error(err)
		}
		waited <- q
	}()
	q, err := p.Reshard(2, 10, []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	rb := job.RollbackRecord{Placement: q.Version, Why: "test", FromStep: 12, ToStep: 10}
	if err := st.Place(ctx, nil, q, &rb); err != nil {
		t.Fatal(err)
	}
	if got := <-waited; got == nil || got.Version != q.Version {
		t.Fatalf("NextPlacement: %+v", got)
	}
	p2, rev2, err := st.Placement(ctx)
	if err != nil || p2.Version != q.Version || rev2 <= rev1 {
		t.Fatalf("Placement after Place: %v %d %d %v", p2.Version, rev1, rev2, err)
	}
	if ok, err := st.RankDone(ctx, a, rev1); err != nil || ok {
		t.Fatalf("RankDone under a replaced placement: %v %v", ok, err)
	}
	lk, err := st.Look(ctx)
	if err != nil || len(lk.Done) != 0 || !slices.Equal(lk.Rollbacks, []job.RollbackRecord{rb}) {
		t.Fatalf("Look after Place: %+v %v", lk, err)
	}
	// Placing q again (a coordinator's retry) changes nothing: the rank
	// done under it since stays done.
	if ok, err := st.RankDone(ctx, a, rev2); err != nil || !ok {
		t.Fatalf("RankDone under the new placement: %v %v", ok, err)
	}
	if err := st.Place(ctx, nil, q, &rb); err != nil {
		t.Fatal(err)
	}
	if _, rev3, err := st.Placement(ctx); err != nil || rev3 != rev2 {
		t.Fatalf("placing the same placement again wrote it again (revision %d, was %d): %v", rev3, rev2, err)
	}
	if lk, err := st.Look(ctx); err != nil || !lk.Done[0] {
		t.Fatalf("placing the same placement again forgot the ranks done: %+v %v", lk, err)
	}
	// A placement handed over (a shard's blocks to their backups) keeps
	// the ranks done, and records no rollback.
	r := job.PlaceCopies(q.Tensors, q.BlockSize, 2, 2)
	r.Version = q.Version + 1
	if err := st.Place(ctx, nil, r, nil); err != nil {
		t.Fatal(err)
	}
	_, revR, err := st.Placement(ctx)
	if ok, err2 := st.RankDone(ctx, a, revR); err != nil || err2 != nil || !ok {
		t.Fatalf("RankDone under placement %d: %v %v %v", r.Version, ok, err, err2)
	}
	h, err := r.Handover(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Place(ctx, nil, h, nil); err != nil {
		t.Fatal(err)
	}
	if lk, err := st.Look(ctx); err != nil || !lk.Done[0] || len(lk.Rollbacks) != 1 {
		t.Fatalf("a handover forgot the ranks done, or recorded a rollback: %+v %v", lk, err)
	}
	q = h
	if err := st.MarkDone(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if q, _, err := st.NextPlacement(ctx, q.Version); err != nil || q != nil {
		t.Fatalf("NextPlacement of a done job: %+v %v", q, err)
	}
	if a, err := st.WaitAssignment(ctx, "spare"); err != nil || a != nil {
		t.Fatalf("WaitAssignment of a done job: %+v %v", a, err)
	}
}

// A shard claims the index it asks for, or the lowest free one; an index
// held by a live process, or one the job does not have, is refused. Each
// index of a placement is served once; a shard that leaves is followed.
func shards(t *testing.T, newStore NewStore) {
	ctx := t.Context()
	st := newStore(t, "sh")
	created(t, st)
	_, events := follow(t, st)
	la, lb, lc := grant(t, st), grant(t, st), grant(t, st)
	if i, err := st.ClaimShard(ctx, la, 3, 1); i != 1 || err != nil {
		t.Fatalf("explicit claim: %d %v", i, err)
	}
	if i, err := st.ClaimShard(ctx, lb, 3, -1); i != 0 || err != nil {
		t.Fatalf("claim: %d %v, want 0", i, err)
	}
	if i, err := st.ClaimShard(ctx, lc, 3, -1); i != 2 || err != nil {
		t.Fatalf("claim: %d %v, want 2", i, err)
	}
	for _, c := range []struct {
		want int
		says string
	}{{-1, "already served"}, {1, "already served by a live process"}, {3, "does not exist"}} {
		if _, err := st.ClaimShard(ctx, grant(t, st), 3, c.want); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("claim %d: %v, want %q", c.want, err, c.says)
		}
	}
	if err := st.WaitShards(ctx, 3, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := st.WaitShards(ctx, 4, 100*time.Millisecond); err == nil {
		t.Fatal("4 shards of 3")
	}
	if ok, err := st.ServeShard(ctx, la, 1, 1); err != nil || !ok {
		t.Fatalf("ServeShard: %v %v", ok, err)
	}
	if ok, err := st.ServeShard(ctx, lb, 1, 1); err != nil || ok {
		t.Fatalf("ServeShard of an index served before: %v %v", ok, err)
	}
	if ok, err := st.Served(ctx, 1, 1); err != nil || !ok {
		t.Fatalf("Served: %v %v", ok, err)
	}
	if ok, err := st.Served(ctx, 1, 0); err != nil || ok {
		t.Fatalf("Served of an index never served: %v %v", ok, err)
	}
	lk, err := st.Look(ctx)
	if err != nil || lk.Shards[1].Member.Placement != 1 || lk.Shards[0].Member.Placement != 0 {
		t.Fatalf("Look: %+v %v", lk.Shards, err)
	}
	// Each claim and serve is told, then a shard that says it is filled
	// (only the index's holder may).
	if err := st.ShardFilled(ctx, la, 1, 1); err != nil {
		t.Fatalf("ShardFilled: %v", err)
	}
	if err := st.ShardFilled(ctx, lb, 1, 1); !errors.Is(err, job.ErrFenced) {
		t.Fatalf("ShardFilled of an index another holds: %v, want ErrFenced", err)
	}
	for _, want := range []job.Event{{Kind: job.ShardUp, Shard: 1}, {Kind: job.ShardUp, Shard: 0}, {Kind: job.ShardUp, Shard: 2},
		{Kind: job.ShardUp, Shard: 1, Placement: 1}, {Kind: job.ShardUp, Shard: 1, Placement: 1, Filled: true}} {
		if ev := events.next(t); ev.Kind != want.Kind || ev.Shard != want.Shard || ev.Placement != want.Placement || ev.Filled != want.Filled {
			t.Fatalf("event %+v, want %+v", ev, want)
		}
	}
	if lk, err := st.Look(ctx); err != nil || !lk.Shards[1].Member.Filled {
		t.Fatalf("Look after ShardFilled: %+v %v", lk.Shards, err)
	}
	la.Close()
	if ev := events.next(t); ev.Kind != job.ShardDown || ev.Shard != 1 || ev.Placement != 1 {
		t.Fatalf("after shard 1's lease ended: %+v", ev)
	}
	if err := st.LeaveShard(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if ev := events.next(t); ev.Kind != job.ShardDown || ev.Shard != 2 || ev.Placement != 0 {
		t.Fatalf("after shard 2 left: %+v", ev)
	}
}

// Tasks given reach their workers, and their reports the coordinator; the
// queue is stored with them, and with each checkpoint.
func tasks(t *testing.T, newStore NewStore) {
	ctx := t.Context()
	st := newStore(t, "tk")
	created(t, st)
	_, events := follow(t, st)
	task := job.Task{ID: 4, Shard: 1, From: 10, To: 20, State: job.TaskPending, Owner: "w"}
	queue := []byte(`{"queue":1}`)
	if err := st.GiveTasks(ctx, nil, []job.GivenTask{{Worker: "w", Task: job.Task{ID: -1}}}, nil); err != nil {
		t.Fatal(err)
	}
	got := make(chan job.Task, 1)
	go func() {
		tk, err := st.NextTask(ctx, "w", job.Task{})
		if err != nil {
			t.Error(err)
		}
		got <- tk
	}()
	if err := st.GiveTasks(ctx, nil, []job.GivenTask{{Worker: "w", Task: task}}, queue); err != nil {
		t.Fatal(err)
	}
	if tk := <-got; tk != task {
		t.Fatalf("NextTask: %+v", tk)
	}
	if b, err := st.TaskQueue(ctx); err != nil || string(b) != string(queue) {
		t.Fatalf("TaskQueue: %q %v", b, err)
	}
	if err := st.TaskDone(ctx, "w", task); err != nil {
		t.Fatal(err)
	}
	if ev := events.next(t); ev.Kind != job.TaskReported || ev.Worker != "w" || ev.Task != task {
		t.Fatalf("after TaskDone: %+v", ev)
	}
	if err := st.SaveTaskQueueAt(ctx, nil, 20, queue); err != nil {
		t.Fatal(err)
	}
	if b, err := st.TaskQueueAt(ctx, 20); err != nil || string(b) != string(queue) {
		t.Fatalf("TaskQueueAt: %q %v", b, err)
	}
	if b, err := st.TaskQueueAt(ctx, 30); err != nil || b != nil {
		t.Fatalf("TaskQueueAt of no checkpoint: %q %v", b, err)
	}
}

// A checkpoint recorded reaches the shards that wait for it; a snapshot
// record, a reshard request and its answer are followed; a coordinator
// that takes over finds them all, in the store's order.
func checkpoints(t *testing.T, newStore NewStore) {
	ctx := t.Context()
	st := newStore(t, "ck")
	created(t, st)
	_, events := follow(t, st)
	task := job.Task{ID: 4, Shard: 1, From: 10, To: 20, State: job.TaskDone, Owner: "w"}
	if err := st.TaskDone(ctx, "w", task); err != nil {
		t.Fatal(err)
	}
	if ev := events.next(t); ev.Kind != job.TaskReported {
		t.Fatalf("after TaskDone: %+v", ev)
	}
	rec := job.SnapshotRecord{Path: "/s", Step: 20, Shard: 1, Placement: 1}
	if err := st.RecordSnapshot(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if ev := events.next(t); ev.Kind != job.SnapshotRecorded || ev.Snapshot != rec {
		t.Fatalf("after RecordSnapshot: %+v", ev)
	}
	cp0, rev, err := st.Checkpoint(ctx)
	if err != nil || cp0 != nil {
		t.Fatalf("Checkpoint before one: %+v %v", cp0, err)
	}
	waited := make(chan *job.CheckpointRecord, 1)
	go func() {
		cp, _, err := st.NextCheckpoint(ctx, rev)
		if err != nil {
			t.Error(err)
		}
		waited <- cp
	}()
	cp := job.CheckpointRecord{Step: 20, Placement: 1, Files: []string{"/s0", "/s"}}
	if err := st.RecordCheckpoint(ctx, nil, cp); err != nil {
		t.Fatal(err)
	}
	if got := <-waited; got == nil || got.Step != 20 || !slices.Equal(got.Files, cp.Files) {
		t.Fatalf("NextCheckpoint: %+v", got)
	}
	if ev := events.next(t); ev.Kind != job.CheckpointRecorded || ev.Checkpoint.Step != 20 {
		t.Fatalf("after RecordCheckpoint: %+v", ev)
	}
	if err := st.RequestReshard(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if ev := events.next(t); ev.Kind != job.ReshardRequested || ev.Reshard.Shards != 3 || ev.Reshard.Status != "" {
		t.Fatalf("after RequestReshard: %+v", ev)
	}
	if err := st.AnswerReshard(ctx, nil, job.ReshardRequest{Shards: 3, Status: "done", Version: 2, Start: 20}); err != nil {
		t.Fatal(err)
	}
	ans, err := st.ReshardAnswer(ctx, 10*time.Second)
	if err != nil || ans.Status != "done" || ans.Version != 2 {
		t.Fatalf("ReshardAnswer: %+v %v", ans, err)
	}
	// A coordinator that takes over finds all of it.
	view, _, err := st.Follow(ctx)
	if err != nil || view.Checkpoint == nil || view.Checkpoint.Step != 20 {
		t.Fatalf("Follow: %+v %v", view, err)
	}
	var kinds []job.EventKind
	for _, ev := range view.Events {
		kinds = append(kinds, ev.Kind)
	}
	if want := []job.EventKind{job.CheckpointRecorded, job.ReshardRequested, job.SnapshotRecorded, job.TaskReported}; !slices.Equal(kinds, want) {
		t.Fatalf("the view's events are %v, want %v", kinds, want)
	}
}

// One coordinator leads at a time; the next takes over when it resigns,
// and a deposed leader's writes are refused.
func leadership(t *testing.T, newStore NewStore) {
	ctx := t.Context()
	st := newStore(t, "ld")
	created(t, st)
	a, err := st.Campaign(ctx, "a", 30)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := st.Leader(ctx); err != nil || id != "a" {
		t.Fatalf("Leader: %q %v", id, err)
	}
	if err := st.CheckLeader(ctx, a); err != nil {
		t.Fatal(err)
	}
	won := make(chan job.Leadership, 1)
	go func() {
		b, err := st.Campaign(ctx, "b", 30)
		if err != nil {
			t.Error(err)
		}
		won <- b
	}()
	select {
	case <-won:
		t.Fatal("two leaders at once")
	case <-time.After(200 * time.Millisecond):
	}
	if err := st.Assign(ctx, a, "w", job.Assignment{Rank: 0, Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	a.Resign(ctx)
	var b job.Leadership
	select {
	case b = <-won:
	case <-time.After(10 * time.Second):
		t.Fatal("the standby did not take over")
	}
	t.Cleanup(func() { b.Resign(context.Background()) })
	if err := st.Assign(ctx, a, "w", job.Assignment{Rank: 0, Epoch: 2}); !errors.Is(err, job.ErrNotLeader) {
		t.Fatalf("a deposed leader's write: %v", err)
	}
	if err := st.MarkDone(ctx, a); !errors.Is(err, job.ErrNotLeader) {
		t.Fatalf("a deposed leader's write: %v", err)
	}
	if err := st.CheckLeader(ctx, a); !errors.Is(err, job.ErrNotLeader) {
		t.Fatalf("CheckLeader of a deposed leader: %v", err)
	}
	if got, err := st.Assignment(ctx, "w"); err != nil || got == nil || got.Epoch != 1 {
		t.Fatalf("the deposed leader's write took effect: %+v %v", got, err)
	}
	if err := st.Assign(ctx, b, "w", job.Assignment{Rank: 0, Epoch: 2}); err != nil {
		t.Fatal(err)
	}
	if id, err := st.Leader(ctx); err != nil || id != "b" {
		t.Fatalf("Leader: %q %v", id, err)
	}
}

// A job's corpus summary is stored with it and comes back attached to the
// spec Find returns, whole, however large (the paper's vocabularies take
// more than one etcd request); creating the job again with another corpus
// leaves the stored one.
func corpus(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "corpus.tsv")
	var b strings.Builder
	rng := rand.New(rand.NewPCG(1, 2))
	for range 7000 {
		for k := range 20 {
			if k == 10 {
				b.WriteString("\t")
			} else if k > 0 {
				b.WriteString(" ")
			}
			fmt.Fprintf(&b, "%08x", rng.Uint32()) // 70,000 distinct words a side
		}
		b.WriteString("\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	s, p := spec("cx")
	s.Data, s.VocabMax, s.Epochs, s.HalveEveryEpochs, s.Steps = path, 1<<20, 0, 0, 10
	if err := s.Resolve(); err != nil {
		t.Fatal(err)
	}
	if s.Corpus() == nil || len(s.Corpus().Encode()) <= 512<<10 { // etcdstore.CorpusChunk
		t.Fatalf("the test's corpus summary should span several etcd keys")
	}
	st := newStore(t, "cx")
	// (Not created with this spec stored: a retried try created it, as
	// created says.)
	if ok, stored, _, err := st.Create(ctx, nil, s, p, false); err != nil || !ok && string(stored) != string(s.Encode()) {
		t.Fatalf("Create: %v %v", ok, err)
	}
	gs, _, err := st.Find(ctx, time.Second)
	if err != nil || gs.Corpus() == nil || gs.Corpus().Digest() != s.CorpusDigest ||
		!slices.Equal(gs.Corpus().Src, s.Corpus().Src) || len(gs.Corpus().Src) < 60000 {
		t.Fatalf("Find: %v", err)
	}
	if lk, err := st.Look(ctx); err != nil || lk.Spec.CorpusDigest != s.CorpusDigest || lk.State != job.StateRunning {
		t.Fatalf("Look of a job with a corpus: %v", err)
	}
	if view, _ := follow(t, st); len(view.Events) != 0 {
		t.Fatalf("Follow of a job with a corpus found events %+v", view.Events)
	}
	other := *s
	if err := other.AttachCorpus((&shard.CorpusSummary{Stats: shard.CorpusStats{Lines: 1, Pairs: 1}}).Encode()); err == nil {
		t.Fatal("a summary other than the spec's was attached")
	}
	again := *s
	again.HeldOut++
	if err := again.Resolve(); err != nil || again.CorpusDigest == s.CorpusDigest {
		t.Fatalf("another held-out count, the same summary: %v", err)
	}
	if ok, _, _, err := st.Create(ctx, nil, &again, p, false); err != nil || ok {
		t.Fatalf("created twice: %v %v", ok, err)
	}
	if gs, _, err := st.Find(ctx, time.Second); err != nil || gs.Corpus().Digest() != s.CorpusDigest {
		t.Fatalf("a second Create changed the stored corpus: %v", err)
	}
}
