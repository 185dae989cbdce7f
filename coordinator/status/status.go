// Package status reads what an operator is shown of a job: its state,
// leader and standbys, placement, last checkpoint, rollbacks, data tasks,
// members with the time left on their leases and each shard's clock, from
// etcd and (given a NATS connection) from the shards themselves; and what a
// run directory says of a run that has ended. 'downpour status' prints it;
// the dashboard serves it as JSON.
package status

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/coordinator"
	"github.com/downpour-ml/downpour/internal/app/rundir"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/paramserver"
)

// Report is a job as its store (and, given a NATS connection, its shards) know
// it: what downpour status prints and the dashboard shows.
type Report struct {
	Job        string                `json:"job"`
	State      string                `json:"state"`
	Model      string                `json:"model"`
	Data       string                `json:"data"`
	Mode       string                `json:"mode"`
	Workers    int                   `json:"workers"`
	Steps      int64                 `json:"steps"`
	Leader     string                `json:"leader"`
	Standby    []string              `json:"standby"`
	Placement  Placement             `json:"placement"`
	Checkpoint *job.CheckpointRecord `json:"checkpoint"`
	Rollbacks  []Rollback            `json:"rollbacks"`
	Tasks      *Tasks                `json:"tasks,omitempty"`
	Members    []Member              `json:"workers_now"`
	Shards     []Shard               `json:"shards"`
}

type Placement struct {
	Version   int64 `json:"version"`
	Shards    int   `json:"shards"`
	Blocks    int   `json:"blocks"`
	BlockSize int   `json:"block_size"`
	Start     int64 `json:"start"`
}

type Rollback struct {
	Placement int64  `json:"placement"`
	Why       string `json:"why"`
	From      int64  `json:"from_step"` // -1: unknown
	To        int64  `json:"to_step"`
}

type Tasks struct {
	Todo, Pending, Done, Failed int
	DataSteps                   int64 `json:"data_steps"`
	Late                        int
}

type Member struct {
	ID        string `json:"id"`
	Rank      string `json:"rank"` // "waiting" until assigned
	Epoch     string `json:"epoch"`
	LeaseLeft string `json:"lease_left"`
	Done      bool   `json:"done"`
	Task      string `json:"task"`
}

type Shard struct {
	Shard     int    `json:"shard"`
	Serving   string `json:"serving"` // the placement served, or "no process", "restoring"
	Clock     string `json:"clock"`   // "" without NATS, "no answer"
	LeaseLeft string `json:"lease_left"`
}

// Read reads the status of the job of st; with nc, it also asks each
// shard for its clock.
func Read(ctx context.Context, st job.ObserverStore, nc *nats.Conn) (*Report, error) {
	lk, err := st.Look(ctx)
	if err != nil {
		return nil, err
	}
	spec, p := lk.Spec, lk.Placement
	out := &Report{Job: spec.Name, State: lk.State, Model: spec.Model, Data: spec.DataName(), Mode: spec.Mode,
		Workers: spec.Workers, Steps: spec.Steps, Standby: []string{}, Checkpoint: lk.Checkpoint,
		Placement: Placement{Version: p.Version, Shards: p.Shards, Blocks: len(p.Blocks), BlockSize: p.BlockSize, Start: p.Start}}
	for i, c := range lk.Candidates {
		if i == 0 {
			out.Leader = c
		} else {
			out.Standby = append(out.Standby, c)
		}
	}
	out.Rollbacks = []Rollback{}
	for _, rb := range lk.Rollbacks {
		out.Rollbacks = append(out.Rollbacks, Rollback{Placement: rb.Placement, Why: rb.Why, From: rb.FromStep, To: rb.ToStep})
	}
	if lk.TaskQueue != nil {
		q, err := coordinator.DecodeTasks(lk.TaskQueue)
		if err != nil {
			return nil, err
		}
		c := q.Count()
		out.Tasks = &Tasks{Todo: c[job.TaskTodo], Pending: c[job.TaskPending], Done: c[job.TaskDone],
			Failed: c[job.TaskFailed], DataSteps: q.DoneSteps(), Late: q.Late}
	}
	out.Members = members(lk)
	var clocks []int64
	if nc != nil {
		c, err := paramserver.NewClient(nc, spec.Name, p, 0, 0)
		if err != nil {
			return nil, err
		}
		clocks = c.Clocks(ctx, 2*time.Second)
	}
	out.Shards = shards(lk, p.Shards, clocks)
	return out, nil
}

// leaseLeft says how long a seat's lease has left: "-" for a record under
// no lease.
func leaseLeft(s job.Seat) string {
	switch {
	case !s.Leased:
		return "-"
	case s.LeaseLeft < 0:
		return "expired"
	}
	return fmt.Sprintf("%ds of %ds", int64(s.LeaseLeft/time.Second), int64(s.Granted/time.Second))
}

// members are the job's live workers, by id, with their ranks and tasks.
func members(lk *job.Look) []Member {
	ws := slices.Clone(lk.Workers)
	sort.Slice(ws, func(i, j int) bool { return ws[i].ID < ws[j].ID })
	out := []Member{}
	for _, w := range ws {
		m := Member{ID: w.ID, Rank: "waiting", Epoch: "-", Task: "-", LeaseLeft: leaseLeft(w)}
		if a, ok := lk.Assigned[w.ID]; ok {
			m.Rank, m.Epoch = fmt.Sprint(a.Rank), fmt.Sprint(a.Epoch)
			m.Done = lk.Done[a.Rank]
		}
		if tk, ok := lk.Tasks[w.ID]; ok && tk.ID >= 0 {
			m.Task = fmt.Sprintf("%d (shard %d, steps %d-%d)", tk.ID, tk.Shard, tk.From, tk.To)
		}
		out = append(out, m)
	}
	return out
}

// shards are the placement's n shards: the placement each serves and its
// clock (clocks[s], -1 for no answer; nil: not asked).
func shards(lk *job.Look, n int, clocks []int64) []Shard {
	var out []Shard
	for s := range n {
		seat, live := lk.Shards[s]
		serving, left := "no process", "-"
		if live {
			left = leaseLeft(seat.Seat)
			serving = "restoring"
			if seat.Member.Placement > 0 {
				serving = fmt.Sprint(seat.Member.Placement)
			}
		}
		clock := ""
		if clocks != nil {
			clock = "no answer"
			if clocks[s] >= 0 {
				clock = fmt.Sprint(clocks[s])
			}
		}
		out = append(out, Shard{Shard: s, Serving: serving, Clock: clock, LeaseLeft: left})
	}
	return out
}

// Print writes st as downpour status shows it.
func (st *Report) Print(stdout io.Writer) error {
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "job %s: %s; %s %s, %d workers, %d steps, mode %s\n", st.Job, st.State, st.Model, st.Data, st.Workers, st.Steps, st.Mode)
	if st.Leader == "" {
		fmt.Fprintln(w, "leader: none")
	} else {
		fmt.Fprintf(w, "leader: %s; standby: %s\n", st.Leader, orNone(strings.Join(st.Standby, ", ")))
	}
	p := st.Placement
	fmt.Fprintf(w, "placement: version %d, %d shards, %d blocks of up to %d floats, from step %d\n", p.Version, p.Shards, p.Blocks, p.BlockSize, p.Start)
	if st.Checkpoint != nil {
		fmt.Fprintf(w, "last complete checkpoint: step %d (placement %d)\n", st.Checkpoint.Step, st.Checkpoint.Placement)
	} else {
		fmt.Fprintln(w, "last complete checkpoint: none")
	}
	for _, rb := range st.Rollbacks {
		from := "?"
		if rb.From >= 0 {
			from = fmt.Sprint(rb.From)
		}
		fmt.Fprintf(w, "re-placed (placement %d): %s; from step %s back to %d\n", rb.Placement, rb.Why, from, rb.To)
	}
	if t := st.Tasks; t != nil {
		fmt.Fprintf(w, "tasks: %d todo, %d pending, %d done, %d failed; %d data steps done; %d late reports\n",
			t.Todo, t.Pending, t.Done, t.Failed, t.DataSteps, t.Late)
	}
	fmt.Fprintln(w, "\nworker\trank\tepoch\tlease left\tdone\ttask")
	for _, m := range st.Members {
		done := ""
		if m.Done {
			done = "yes"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Rank, m.Epoch, m.LeaseLeft, orNone(done), m.Task)
	}
	fmt.Fprintln(w, "\nshard\tserving placement\tclock\tlease left")
	for _, s := range st.Shards {
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", s.Shard, s.Serving, orNone(s.Clock), s.LeaseLeft)
	}
	return w.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// PrintEnded prints what an ended run's directory says of it.
func PrintEnded(dir string, why error, stdout io.Writer) error {
	s, err := rundir.Read(dir)
	if err != nil {
		return err
	}
	spec := s.Spec
	fmt.Fprintf(stdout, "job %s: not running (run directory %s", spec.Name, dir)
	if why != nil {
		fmt.Fprintf(stdout, "; %v", why)
	}
	fmt.Fprintf(stdout, "); %s %s, %d workers, %d ps shards, %d steps, mode %s\n", spec.Model, spec.DataName(), spec.Workers, spec.Shards, spec.Steps, spec.Mode)
	if s.Last != nil {
		fmt.Fprintf(stdout, "last logged step: %d of %d, loss %.4f\n", s.Last.Step, spec.Steps, s.Last.Loss)
	} else {
		fmt.Fprintln(stdout, "last logged step: none")
	}
	switch e := s.Eval; {
	case e == nil:
		fmt.Fprintln(stdout, "evaluations: none")
	case e.Samples > 0:
		fmt.Fprintf(stdout, "evaluations: %d, the last at step %d: Parzen %.1f ± %.1f (%d samples, %s images)\n", s.Evals, e.Step, e.Parzen, e.ParzenSE, e.Samples, cmp.Or(e.Set, "validation"))
	default:
		fmt.Fprintf(stdout, "evaluations: %d, the last at step %d: BLEU %.2f, exact match %.1f%% of %d\n", s.Evals, e.Step, e.BLEU, 100*e.ExactMatch, e.HeldOut)
	}
	if s.Checkpoint != "" {
		fmt.Fprintf(stdout, "final checkpoint: %s\n", s.Checkpoint)
	} else {
		fmt.Fprintf(stdout, "final checkpoint: none (continue with 'downpour train --resume %s' if it checkpointed)\n", dir)
	}
	return nil
}
