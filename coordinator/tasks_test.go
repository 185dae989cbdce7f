package coordinator

import (
	"fmt"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/internal/job"
)

// The task queue as a script: "next w" answers the task given ("id:shard:from-to"
// or "none"), "finish w id" whether the report counted, "tick" the owners that
// lost a task, "count" the tasks by state.
func TestTasksScript(t *testing.T) {
	q := NewTasks(2, 25, 10, 2, 2) // 2 data shards of 25 steps, tasks of 10 steps, 2 ticks each, 2 attempts
	steps := []struct{ ev, want string }{
		{"count", "todo=6"},
		{"next a", "0:0:0-10"},
		{"next a", "0:0:0-10"}, // asking again: the same task
		{"next b", "1:1:0-10"}, // every data shard's first range before any second
		{"finish a 1", "no"},   // not a's
		{"finish a 0", "yes"},
		{"finish a 0", "no"}, // once
		{"next a", "2:0:10-20"},
		{"down b", "-"},        // b's task goes back
		{"next c", "1:1:0-10"}, // the oldest todo first
		{"tick", "-"},
		{"tick", "-"},
		{"tick", "c a"},         // both missed their deadline (in task order)
		{"finish c 1", "no"},    // too late: no longer c's, and failed (given out twice)
		{"next c", "2:0:10-20"}, // task 2's second attempt
		{"next a", "3:1:10-20"},
		{"tick", "-"},
		{"tick", "-"},
		{"tick", "c a"}, // c's second attempt fails; a's task goes back
		{"count", "failed=2 todo=3 done=1"},
		{"next a", "3:1:10-20"}, // its second attempt
		{"finish a 3", "yes"},
		{"next a", "4:0:20-25"},
		{"finish a 4", "yes"},
		{"next a", "5:1:20-25"},
		{"finished", "no"},
		{"finish a 5", "yes"},
		{"next a", "none"},
		{"finished", "yes"},
		{"donesteps", "30"}, // tasks 0, 3, 4, 5
	}
	for _, s := range steps {
		f := strings.Fields(s.ev)
		var got string
		switch f[0] {
		case "next":
			if tk, ok := q.Next(f[1]); ok {
				got = fmt.Sprintf("%d:%d:%d-%d", tk.ID, tk.Shard, tk.From, tk.To)
			} else {
				got = "none"
			}
		case "finish":
			var id int
			fmt.Sscan(f[2], &id)
			got = map[bool]string{true: "yes", false: "no"}[q.Finish(f[1], id)]
		case "down":
			q.Down(f[1])
			got = "-"
		case "tick":
			got = strings.Join(q.Tick(), " ")
			if got == "" {
				got = "-"
			}
		case "count":
			c := q.Count()
			var parts []string
			for _, st := range []string{job.TaskFailed, job.TaskTodo, job.TaskPending, job.TaskDone} {
				if c[st] > 0 {
					parts = append(parts, fmt.Sprintf("%s=%d", st, c[st]))
				}
			}
			got = strings.Join(parts, " ")
		case "finished":
			got = map[bool]string{true: "yes", false: "no"}[q.Finished()]
		case "donesteps":
			got = fmt.Sprint(q.DoneSteps())
		}
		if got != s.want {
			t.Fatalf("%s: got %s, want %s", s.ev, got, s.want)
		}
	}
	if q.Late != 3 {
		t.Fatalf("late reports %d, want 3", q.Late)
	}
	// Through its stored form.
	r, err := DecodeTasks(q.Encode())
	if err != nil || string(r.Encode()) != string(q.Encode()) {
		t.Fatalf("round trip: %v", err)
	}
	for _, bad := range []string{`{"tasks":[{"id":1,"from":0,"to":5,"state":"todo"}]}`, `{"tasks":[{"id":0,"from":5,"to":5,"state":"todo"}]}`,
		`{"tasks":[{"id":0,"from":0,"to":5,"state":"lost"}]}`, `[`} {
		if _, err := DecodeTasks([]byte(bad)); err == nil {
			t.Errorf("%s: decoded", bad)
		}
	}
}

func FuzzDecodeTasks(f *testing.F) {
	f.Add(NewTasks(2, 25, 10, 2, 2).Encode())
	f.Add([]byte(`{"tasks":[{"id":0,"from":0,"to":5,"state":"pending","owner":"a"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		q, err := DecodeTasks(data)
		if err != nil {
			return
		}
		q.Next("a")
		q.Tick()
		q.Finish("a", 0)
		q.Down("a")
		q.DoneSteps()
		if _, err := DecodeTasks(q.Encode()); err != nil {
			t.Fatalf("a decoded queue does not survive its own encoding: %v", err)
		}
	})
}

// As many workers as data shards start every data shard at its first step
// together: the job's step (the step every data shard has passed) moves
// from the start. (Given out data shard by data shard, 64 workers began 16
// data shards at 4 ranges each, and the job's step 1 came only when the
// last data shard started, 58 s into a 93 s job.)
func TestTasksStartEveryDataShard(t *testing.T) {
	q := NewTasks(8, 100, 25, 10, 3)
	seen := map[int]bool{}
	for w := range 8 {
		tk, ok := q.Next(fmt.Sprint("w", w))
		if !ok || tk.From != 0 || seen[tk.Shard] {
			t.Fatalf("worker %d: task %+v", w, tk)
		}
		seen[tk.Shard] = true
	}
}
