package coordinator

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/downpour-ml/downpour/internal/job"
)

// Tasks is the data-shard task queue of an async job, after PaddlePaddle's
// Go master: every task is todo, pending (given to an owner, with a
// deadline), done, or failed (given out maxAttempts times without being
// done). A task whose owner dies or misses its deadline goes back to todo.
// It is pure: time is ticks.
//
// Invariants (tested): a task is done at most once, and only by its current
// owner; a worker owns at most one task; tasks are given out in order (step
// range by step range, and within a range data shard by data shard: every
// data shard starts before any goes on, so that the job's step, the step
// every data shard has passed, moves from the start), the oldest todo
// first; the queue is
// finished when every task is done or failed, and then DoneSteps counts
// exactly the data steps of the done tasks.
type Tasks struct {
	List        []job.Task `json:"tasks"`
	Now         int64      `json:"now"`
	Timeout     int64      `json:"timeout"`      // ticks a worker has for a task
	MaxAttempts int        `json:"max_attempts"` // times a task is given out before it fails
	Late        int        `json:"late"`         // reports of tasks no longer the reporter's
}

// NewTasks cuts steps steps of each of shards data shards into tasks of at
// most per steps.
func NewTasks(shards int, steps, per, timeout int64, maxAttempts int) *Tasks {
	q := &Tasks{Timeout: timeout, MaxAttempts: maxAttempts}
	for f := int64(0); f < steps; f += per {
		for s := 0; s < shards; s++ {
			q.List = append(q.List, job.Task{ID: len(q.List), Shard: s, From: f, To: min(f+per, steps), State: job.TaskTodo})
		}
	}
	return q
}

// Next gives worker the oldest todo task, or reports that none is left to
// give (some may still be pending). A worker that owns a task gets it again.
func (q *Tasks) Next(worker string) (job.Task, bool) {
	for _, t := range q.List {
		if t.State == job.TaskPending && t.Owner == worker {
			return t, true
		}
	}
	for i := range q.List {
		t := &q.List[i]
		if t.State == job.TaskTodo {
			t.State, t.Owner, t.Deadline = job.TaskPending, worker, q.Now+q.Timeout
			t.Attempts++
			return *t, true
		}
	}
	return job.Task{}, false
}

// Finish records worker's report that task id is done. It reports whether
// the report counted (the task was pending with worker as its owner).
func (q *Tasks) Finish(worker string, id int) bool {
	if id < 0 || id >= len(q.List) || q.List[id].State != job.TaskPending || q.List[id].Owner != worker {
		q.Late++
		return false
	}
	t := &q.List[id]
	t.State, t.Owner, t.Deadline = job.TaskDone, "", 0
	return true
}

// Down returns worker's pending task, if any, to the queue.
func (q *Tasks) Down(worker string) {
	for i := range q.List {
		if t := &q.List[i]; t.State == job.TaskPending && t.Owner == worker {
			q.requeue(t)
		}
	}
}

// Tick advances time; pending tasks past their deadline go back to the
// queue. It returns the owners that lost a task.
func (q *Tasks) Tick() []string {
	q.Now++
	var lost []string
	for i := range q.List {
		if t := &q.List[i]; t.State == job.TaskPending && q.Now > t.Deadline {
			lost = append(lost, t.Owner)
			q.requeue(t)
		}
	}
	return lost
}

func (q *Tasks) requeue(t *job.Task) {
	t.Owner, t.Deadline = "", 0
	if t.Attempts >= q.MaxAttempts {
		t.State = job.TaskFailed
	} else {
		t.State = job.TaskTodo
	}
}

// Finished reports whether every task is done or failed.
func (q *Tasks) Finished() bool {
	for _, t := range q.List {
		if t.State == job.TaskTodo || t.State == job.TaskPending {
			return false
		}
	}
	return true
}

// Count returns the number of tasks in each state.
func (q *Tasks) Count() map[string]int {
	m := map[string]int{}
	for _, t := range q.List {
		m[t.State]++
	}
	return m
}

// DoneSteps is the number of data steps in done tasks.
func (q *Tasks) DoneSteps() int64 {
	var n int64
	for _, t := range q.List {
		if t.State == job.TaskDone {
			n += t.To - t.From
		}
	}
	return n
}

func (q *Tasks) clone() *Tasks {
	c := *q
	c.List = slices.Clone(q.List)
	return &c
}

// Encode is the queue's JSON, as the store keeps it.
func (q *Tasks) Encode() []byte {
	b, err := json.Marshal(q)
	if err != nil {
		panic(err)
	}
	return b
}

// DecodeTasks parses a stored queue and checks it.
func DecodeTasks(b []byte) (*Tasks, error) {
	var q Tasks
	if err := json.Unmarshal(b, &q); err != nil {
		return nil, fmt.Errorf("task queue: %w", err)
	}
	for i, t := range q.List {
		switch {
		case t.ID != i || t.From < 0 || t.To <= t.From || t.Shard < 0:
			return nil, fmt.Errorf("task queue: task %d is inconsistent: %+v", i, t)
		case t.State != job.TaskTodo && t.State != job.TaskPending && t.State != job.TaskDone && t.State != job.TaskFailed:
			return nil, fmt.Errorf("task queue: task %d has state %q", i, t.State)
		}
	}
	return &q, nil
}
