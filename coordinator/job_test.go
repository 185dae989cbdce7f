package coordinator

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/cockroachdb/datadriven"
	"github.com/downpour-ml/downpour/models"
)

// TestJobScripts drives Job with the scripts in testdata/job (run with
// -rewrite to regenerate the expected output). Each command is an event;
// its output is the actions the Job answers with, as render writes them
// ("-" for none). Commands:
//
//	new mode=sync|ssp|async ranks=N shards=N join-ticks=N [tasks=(S,steps,per,timeout,attempts)] [checkpoint-every=N] [seats=N] [copies=N]
//	up W | down W                  worker W registers or dies
//	shard-down I V                 the process of shard I, serving placement V (0: restoring), dies
//	shard-up I V [filled]          the process of shard I claims it (V 0), serves placement V, or is filled there
//	snap I STEP V                  shard I recorded its snapshot of STEP under placement V (file sI@STEP)
//	done R                         rank R pushed its last step
//	reshard N                      an operator asks for N shards
//	tick
//	task-done W ID                 worker W reports task ID done
//	resume
func TestJobScripts(t *testing.T) {
	datadriven.Walk(t, "testdata/job", func(t *testing.T, path string) {
		var j *Job
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			arg := func(i int) string {
				if i >= len(d.CmdArgs) {
					d.Fatalf(t, "%s needs %d arguments", d.Cmd, i+1)
				}
				return d.CmdArgs[i].Key
			}
			num := func(i int) int {
				n, err := strconv.Atoi(arg(i))
				if err != nil {
					d.Fatalf(t, "%s: %v", d.Cmd, err)
				}
				return n
			}
			if d.Cmd != "new" && j == nil {
				d.Fatalf(t, "%s before new", d.Cmd)
			}
			var out []Action
			switch d.Cmd {
			case "new":
				var mode string
				var ranks, shards, joinTicks int
				seats := 1
				var every int64
				var tasks []int64
				d.ScanArgs(t, "mode", &mode)
				d.ScanArgs(t, "ranks", &ranks)
				d.ScanArgs(t, "shards", &shards)
				d.ScanArgs(t, "join-ticks", &joinTicks)
				if d.HasArg("tasks") {
					d.ScanArgs(t, "tasks", &tasks)
					if len(tasks) != 5 {
						d.Fatalf(t, "tasks=(S,steps,per,timeout,attempts)")
					}
				}
				if d.HasArg("checkpoint-every") {
					d.ScanArgs(t, "checkpoint-every", &every)
				}
				if d.HasArg("seats") {
					d.ScanArgs(t, "seats", &seats)
				}
				p := testPlacement(shards)
				if d.HasArg("copies") { // each block on this many shards
					var copies int
					d.ScanArgs(t, "copies", &copies)
					p = job.PlaceCopies(p.Tensors, p.BlockSize, shards, copies)
				}
				j = NewSeatedJob(mode, ranks, seats, p, joinTicks)
				if tasks != nil {
					j.UseTasks(NewTasks(int(tasks[0]), tasks[1], tasks[2], tasks[3], int(tasks[4])), every)
				}
				return ""
			case "up":
				out = j.WorkerUp(arg(0))
			case "down":
				out = j.WorkerDown(arg(0))
			case "shard-down":
				out = j.ShardDown(num(0), int64(num(1)))
			case "shard-up":
				out = j.ShardUp(num(0), int64(num(1)), len(d.CmdArgs) > 2 && d.CmdArgs[2].Key == "filled")
			case "snap":
				out = j.SnapshotRecorded(job.SnapshotRecord{Shard: num(0), Step: int64(num(1)), Placement: int64(num(2)),
					Path: fmt.Sprintf("s%d@%d", num(0), num(1))})
			case "done":
				out = j.RankDone(num(0))
			case "reshard":
				out = j.ReshardRequested(job.ReshardRequest{Shards: num(0)})
			case "tick":
				out = j.Tick()
			case "task-done":
				out = j.TaskDone(arg(0), num(1))
			case "resume":
				out = j.Resume()
			default:
				d.Fatalf(t, "unknown event %q", d.Cmd)
			}
			return render(out) + "\n"
		})
	})
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
			if p.HandedOver {
				parts = append(parts, fmt.Sprintf("hand over v%d (lineage %d) down=%v filling=%v fence=%v", p.Version, p.Lineage(), p.Down, p.Filling, p.Epochs))
				break
			}
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

func testPlacement(shards int) *job.Placement {
	return job.Place([]models.Tensor{{Name: "w", Shape: []int{64}}}, 8, shards)
}

// Each DoSaveTasks carries the queue as it was at that point of the step,
// not as the step leaves it: written before a snapshot's slow requests, the
// first save must not already show the next task given (a coordinator
// killed between that save and the give left a task pending with a worker
// that never got it, and the job waited for the task's timeout).
func TestSaveTasksCarriesItsMomentsQueue(t *testing.T) {
	j := NewJob(job.Async, 2, testPlacement(2), 10)
	j.UseTasks(NewTasks(2, 20, 10, 3, 3), 20)
	j.WorkerUp("a")
	j.WorkerUp("b")
	j.TaskDone("a", 0)
	out := j.TaskDone("b", 1) // save; snapshot 20; task b 3; save
	if got := render(out); got != "save; snapshot 20; task b 3:1:10-20; save" {
		t.Fatalf("actions: %s", got)
	}
	first, last := out[0].Tasks.List[3], out[3].Tasks.List[3]
	if first.State != job.TaskTodo || last.State != job.TaskPending || last.Owner != "b" {
		t.Fatalf("task 3 in the first save: %+v; in the last: %+v", first, last)
	}
}

// TestRanksScripts drives Ranks with the scripts in testdata/ranks (run
// with -rewrite to regenerate the expected output). Commands: new ranks=N
// [seats=S]; up W [replica=R]; down W; done R ("all done" once every rank is); state
// (unassigned ranks, and which are done).
func TestRanksScripts(t *testing.T) {
	datadriven.Walk(t, "testdata/ranks", func(t *testing.T, path string) {
		var r *Ranks
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			if d.Cmd == "new" {
				var n int
				seats := 1
				d.ScanArgs(t, "ranks", &n)
				if d.HasArg("seats") {
					d.ScanArgs(t, "seats", &seats)
				}
				r = NewSeatedRanks(n, seats)
				return ""
			}
			if r == nil {
				d.Fatalf(t, "%s before new", d.Cmd)
			}
			var out []Assign
			switch d.Cmd {
			case "up":
				m := job.WorkerMember{}
				if d.HasArg("replica") {
					var rep int
					d.ScanArgs(t, "replica", &rep)
					m = job.PinTo(rep)
				}
				out = r.UpAs(d.CmdArgs[0].Key, m)
			case "down":
				out = r.Down(d.CmdArgs[0].Key)
			case "done":
				rank, err := strconv.Atoi(d.CmdArgs[0].Key)
				if err != nil {
					d.Fatalf(t, "done: %v", err)
				}
				if r.Done(rank) {
					return "all done\n"
				}
			case "state":
				var b strings.Builder
				fmt.Fprintf(&b, "unassigned %d", r.Unassigned())
				for i := range len(r.holder) {
					fmt.Fprintf(&b, "; rank %d done: %v", i, r.done[i])
				}
				return b.String() + "\n"
			default:
				d.Fatalf(t, "unknown event %q", d.Cmd)
			}
			if len(out) == 0 {
				return "-\n"
			}
			var parts []string
			for _, a := range out {
				parts = append(parts, fmt.Sprintf("%s:%d@%d", a.Worker, a.Rank, a.Epoch))
			}
			return strings.Join(parts, " ") + "\n"
		})
	})
}
