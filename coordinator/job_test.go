package coordinator

import (
	"fmt"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/internal/jobetcd"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver/placement"
)

// runScript feeds a Job the events of a script and checks the actions each
// produces. A line is "event args => actions", actions separated by "; " and
// written as render writes them ("-" for none); "#" starts a comment.
func runScript(t *testing.T, j *Job, script string) {
	t.Helper()
	for n, line := range strings.Split(script, "\n") {
		line, _, _ = strings.Cut(line, "#")
		if strings.TrimSpace(line) == "" {
			continue
		}
		ev, want, ok := strings.Cut(line, "=>")
		if !ok {
			t.Fatalf("line %d: no =>", n+1)
		}
		f := strings.Fields(ev)
		num := func(i int) int {
			var v int
			fmt.Sscan(f[i], &v)
			return v
		}
		var out []Action
		switch f[0] {
		case "up":
			out = j.WorkerUp(f[1])
		case "down":
			out = j.WorkerDown(f[1])
		case "shard-down": // shard-down <index> <placement it served>
			out = j.ShardDown(num(1), int64(num(2)))
		case "snap": // snap <shard> <step> <placement>
			out = j.SnapshotRecorded(jobetcd.SnapshotRecord{Shard: num(1), Step: int64(num(2)), Placement: int64(num(3)),
				Path: fmt.Sprintf("s%d@%d", num(1), num(2))})
		case "done":
			out = j.RankDone(num(1))
		case "reshard":
			out = j.ReshardRequested(jobetcd.ReshardRequest{Shards: num(1)})
		case "tick":
			out = j.Tick()
		case "task-done": // task-done <worker> <task id>
			out = j.TaskDone(f[1], num(2))
		case "resume":
			out = j.Resume()
		default:
			t.Fatalf("line %d: unknown event %q", n+1, f[0])
		}
		if got := render(out); got != strings.TrimSpace(want) {
			t.Fatalf("line %d: %s\n got: %s\nwant: %s", n+1, strings.TrimSpace(ev), got, strings.TrimSpace(want))
		}
	}
}

func render(as []Action) string {
	if len(as) == 0 {
		return "-"
	}
	var parts []string
	for _, a := range as {
		switch a.Kind {
		case DoAssign:
			parts = append(parts, fmt.Sprintf("assign %s:%d@%d", a.Assign.Worker, a.Assign.Rank, a.Assign.Epoch))
		case DoUnassign:
			parts = append(parts, "unassign "+a.Worker)
		case DoPlace:
			p := a.Placement
			parts = append(parts, fmt.Sprintf("place v%d shards=%d from=%d files=%s fence=%v", p.Version, p.Shards, p.Start, strings.Join(p.From, ","), p.Epochs))
		case DoCheckpoint:
			parts = append(parts, fmt.Sprintf("checkpoint %d %s", a.Checkpoint.Step, strings.Join(a.Checkpoint.Files, ",")))
		case DoAnswer:
			parts = append(parts, fmt.Sprintf("answer %q", a.Reshard.Status))
		case DoFinish:
			parts = append(parts, "finish")
		case DoFail:
			parts = append(parts, "fail")
		case DoGiveTask:
			if a.Task.ID < 0 {
				parts = append(parts, fmt.Sprintf("task %s none", a.Worker))
			} else {
				parts = append(parts, fmt.Sprintf("task %s %d:%d:%d-%d", a.Worker, a.Task.ID, a.Task.Shard, a.Task.From, a.Task.To))
			}
		case DoSaveTasks:
			parts = append(parts, "save")
		case DoSnapshot:
			parts = append(parts, fmt.Sprintf("snapshot %d", a.Checkpoint.Step))
		}
	}
	return strings.Join(parts, "; ")
}

func testPlacement(shards int) *placement.Placement {
	return placement.Place([]models.Tensor{{Name: "w", Shape: []int{64}}}, 8, shards)
}

func TestJobScriptSync(t *testing.T) {
	runScript(t, NewJob(placement.Sync, 2, testPlacement(2), 3), `
up a => assign a:0@1
up b => assign b:1@1
up c => -                          # a spare waits
snap 0 10 1 => -
snap 1 10 1 => checkpoint 10 s0@10,s1@10
snap 1 10 1 => -                   # again: nothing new
snap 0 20 1 => -
snap 0 30 2 => -                   # a placement that is not (yet) the job's
down a => unassign a; assign c:0@2; place v2 shards=2 from=10 files=s0@10,s1@10 fence=[2 1]
snap 1 20 1 => -                   # a snapshot of the old placement no longer counts
snap 0 20 2 => -
snap 1 20 2 => checkpoint 20 s0@20,s1@20
shard-down 1 1 => -                # it served an old placement
shard-down 0 0 => -                # it was still restoring
shard-down 1 2 => place v3 shards=2 from=20 files=s0@20,s1@20 fence=[2 1]
done 0 => -
down c => unassign c               # its rank was done: nothing lost
up e => -                          # a done rank is not given again: e waits
shard-down 0 3 => place v4 shards=2 from=20 files=s0@20,s1@20 fence=[3 1]; assign e:0@3   # the rollback revives rank 0
tick => -
up d => -
done 0 => -
done 1 => finish
done 1 => -                        # once
down b => unassign b               # after the end: no rollback
`)
}

func TestJobScriptReshardAndJoinTimeout(t *testing.T) {
	runScript(t, NewJob(placement.Sync, 1, testPlacement(2), 2), `
reshard 3 => answer "refused: the job has no complete checkpoint yet (it re-places from one: run it with --checkpoint-every)"
up a => assign a:0@1
snap 0 5 1 => -
snap 1 5 1 => checkpoint 5 s0@5,s1@5
reshard 100 => answer "refused: cannot place 8 blocks on 100 shards"
reshard 3 => place v2 shards=3 from=5 files=s0@5,s1@5 fence=[1]; answer "done"
snap 2 10 2 => -
snap 0 10 2 => -
snap 1 10 2 => checkpoint 10 s0@10,s1@10,s2@10
reshard 1 => place v3 shards=1 from=10 files=s0@10,s1@10,s2@10 fence=[1]; answer "done"
snap 0 15 3 => checkpoint 15 s0@15
down a => unassign a; place v4 shards=1 from=15 files=s0@15 fence=[2]
tick => -
tick => -
tick => fail                       # rank 0 without a worker for more than 2 ticks
`)
}

// In async mode a dead worker does not roll the job back (its replacement
// carries on); a dead shard does.
func TestJobScriptAsync(t *testing.T) {
	runScript(t, NewJob(placement.Async, 2, testPlacement(2), 10), `
up a => assign a:0@1
up b => assign b:1@1
down a => unassign a
up c => assign c:0@2
shard-down 0 1 => place v2 shards=2 from=0 files= fence=[2 1]
`)
}

// Async with tasks: workers take tasks one at a time, come and go; a dead
// worker's task goes to another; the job finishes when the tasks are done.
func TestJobScriptTasks(t *testing.T) {
	j := NewJob(placement.Async, 2, testPlacement(2), 2)
	j.UseTasks(NewTasks(2, 20, 10, 3, 2), 0) // 4 tasks: shard 0 steps 0-10, 10-20; shard 1 likewise
	runScript(t, j, `
up a => assign a:0@1; task a 0:0:0-10; save
up b => assign b:1@1; task b 1:0:10-20; save
up c => -                                  # a third worker waits for a rank
task-done a 0 => save; task a 2:1:0-10; save
task-done a 0 => -                         # again: a is busy with task 2; the stale report changes nothing
down b => unassign b; save; assign c:1@2; task c 1:0:10-20; save
task-done b 1 => -                         # a dead worker's report does not count
tick => -
tick => -
tick => -
tick => save                               # both missed their deadline: task 2 goes back, task 1 (given out twice) fails
task-done c 1 => task c 2:1:0-10; save     # late: it does not count; c takes the oldest todo
task-done c 2 => save; task c 3:1:10-20; save
task-done a 2 => task a none               # late too: nothing left to give a
task-done c 3 => save; finish              # every task done or failed
tick => -
`)
}

// Async checkpoints: every 20 data steps done, the shards snapshot; when a
// shard dies the job goes back to the last complete checkpoint, and so does
// the task queue, so that the tasks done since are done again and every data
// step is still counted once.
func TestJobScriptAsyncCheckpoints(t *testing.T) {
	j := NewJob(placement.Async, 2, testPlacement(2), 10)
	j.UseTasks(NewTasks(2, 20, 10, 3, 3), 20)
	runScript(t, j, `
up a => assign a:0@1; task a 0:0:0-10; save
up b => assign b:1@1; task b 1:0:10-20; save
task-done a 0 => save; task a 2:1:0-10; save
task-done b 1 => save; snapshot 20; task b 3:1:10-20; save      # 20 data steps done
snap 0 20 1 => -
snap 1 20 1 => checkpoint 20 s0@20,s1@20
task-done a 2 => save; task a none                             # 30 done; 40 would be the next checkpoint
shard-down 0 1 => place v2 shards=2 from=20 files=s0@20,s1@20 fence=[1 1]; save; task a 2:1:0-10; task b 3:1:10-20; save
task-done a 2 => save; task a none                             # task 2 again: it was done after the checkpoint
task-done b 3 => save; finish                                  # the queue ends with every data step done once
`)
}

// Each DoSaveTasks carries the queue as it was at that point of the step,
// not as the step leaves it: written before a snapshot's slow requests, the
// first save must not already show the next task given (a coordinator
// killed between that save and the give left a task pending with a worker
// that never got it, and the job waited for the task's timeout).
func TestSaveTasksCarriesItsMomentsQueue(t *testing.T) {
	j := NewJob(placement.Async, 2, testPlacement(2), 10)
	j.UseTasks(NewTasks(2, 20, 10, 3, 3), 20)
	j.WorkerUp("a")
	j.WorkerUp("b")
	j.TaskDone("a", 0)
	out := j.TaskDone("b", 1) // save; snapshot 20; task b 3; save
	if got := render(out); got != "save; snapshot 20; task b 3:1:10-20; save" {
		t.Fatalf("actions: %s", got)
	}
	first, last := out[0].Tasks.List[3], out[3].Tasks.List[3]
	if first.State != jobetcd.TaskTodo || last.State != jobetcd.TaskPending || last.Owner != "b" {
		t.Fatalf("task 3 in the first save: %+v; in the last: %+v", first, last)
	}
}
