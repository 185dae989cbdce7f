package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/coordinator"
	"github.com/downpour-ml/downpour/internal/auth"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/rundir"
	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/paramserver"
)

// cmdStatus prints a job as etcd (and, with --nats, its shards) know it:
// state, leader and standbys, placement, last checkpoint, members with the
// time left on their leases, and each shard's clock.
func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var ep endpoints
	endpointFlags(fs, &ep)
	name := fs.String("job", "demo", "the job")
	run := fs.String("run", "", "a train run's directory: its job while it runs (the run directory says where), or what the run left when it has ended")
	if err := parse(fs, args, stderr, "downpour status --etcd http://127.0.0.1:2379 --nats nats://127.0.0.1:4222 --job demo\n  downpour status --run runs/demo-20261128-210316"); err != nil {
		return err
	}
	if *run != "" && (ep.etcd != "" || ep.nats != "") {
		fmt.Fprintln(stderr, "downpour status: give --run, or --etcd and --nats, not both")
		return errUsage
	}
	if *run != "" {
		live, err := joinRun(*run, &ep, name)
		if !live {
			return printEnded(*run, err, stdout)
		}
	}
	if ep.etcd == "" {
		fmt.Fprintln(stderr, "downpour status: needs --etcd (and --nats for the shards' clocks), or --run")
		return errUsage
	}
	if err := wire.ValidJob(*name); err != nil {
		return err
	}
	cli, err := connectEtcd(ctx, ep, auth.Observer)
	if err != nil {
		if *run != "" { // killed without a chance to say so
			return printEnded(*run, fmt.Errorf("its cluster does not answer: %w", err), stdout)
		}
		return err
	}
	defer cli.Close()
	var nc *nats.Conn
	if ep.nats != "" {
		if nc, err = connectNATS(ep, "status", auth.Observer); err != nil {
			return err
		}
		defer nc.Close()
	}
	st, err := readStatus(ctx, cli, nc, *name)
	if err != nil {
		return fmt.Errorf("%w (etcd at %s)", err, ep.etcd)
	}
	return st.print(stdout)
}

// joinRun points ep and name at the live run in dir, with the observer's
// credentials it published, and reports whether there is one (err says
// why not, nil when the run has simply ended).
func joinRun(dir string, ep *endpoints, name *string) (live bool, err error) {
	e, creds, err := rundir.Live(dir)
	if err != nil {
		if errors.Is(err, rundir.ErrNotLive) {
			err = nil
		}
		return false, err
	}
	ep.nats, ep.etcd, ep.credsFile, *name = e.NATS, strings.Join(e.Etcd, ","), creds, e.Job
	return true, nil
}

// printEnded prints what an ended run's directory says of it.
func printEnded(dir string, why error, stdout io.Writer) error {
	s, err := rundir.Read(dir)
	if err != nil {
		return err
	}
	spec := s.Spec
	fmt.Fprintf(stdout, "job %s: not running (run directory %s", spec.Name, dir)
	if why != nil {
		fmt.Fprintf(stdout, "; %v", why)
	}
	fmt.Fprintf(stdout, "); %s %s, %d workers, %d ps shards, %d steps, mode %s\n", spec.Model, spec.Data, spec.Workers, spec.Shards, spec.Steps, spec.Mode)
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

// jobStatus is a job as etcd (and, given a NATS connection, its shards) know
// it: what downpour status prints and the dashboard shows.
type jobStatus struct {
	Job        string                `json:"job"`
	State      string                `json:"state"`
	Model      string                `json:"model"`
	Data       string                `json:"data"`
	Mode       string                `json:"mode"`
	Workers    int                   `json:"workers"`
	Steps      int64                 `json:"steps"`
	Leader     string                `json:"leader"`
	Standby    []string              `json:"standby"`
	Placement  placementStatus       `json:"placement"`
	Checkpoint *job.CheckpointRecord `json:"checkpoint"`
	Rollbacks  []rollbackStatus      `json:"rollbacks"`
	Tasks      *taskStatus           `json:"tasks,omitempty"`
	Members    []memberStatus        `json:"workers_now"`
	Shards     []shardStatus         `json:"shards"`
}

type placementStatus struct {
	Version   int64 `json:"version"`
	Shards    int   `json:"shards"`
	Blocks    int   `json:"blocks"`
	BlockSize int   `json:"block_size"`
	Start     int64 `json:"start"`
}

type rollbackStatus struct {
	Placement int64  `json:"placement"`
	Why       string `json:"why"`
	From      int64  `json:"from_step"` // -1: unknown
	To        int64  `json:"to_step"`
}

type taskStatus struct {
	Todo, Pending, Done, Failed int
	DataSteps                   int64 `json:"data_steps"`
	Late                        int
}

type memberStatus struct {
	ID        string `json:"id"`
	Rank      string `json:"rank"` // "waiting" until assigned
	Epoch     string `json:"epoch"`
	LeaseLeft string `json:"lease_left"`
	Done      bool   `json:"done"`
	Task      string `json:"task"`
}

type shardStatus struct {
	Shard     int    `json:"shard"`
	Serving   string `json:"serving"` // the placement served, or "no process", "restoring"
	Clock     string `json:"clock"`   // "" without NATS, "no answer"
	LeaseLeft string `json:"lease_left"`
}

// readStatus reads job name's status; with nc, it also asks each shard for
// its clock.
func readStatus(ctx context.Context, cli *clientv3.Client, nc *nats.Conn, name string) (*jobStatus, error) {
	keys := job.KeysFor(name)
	r, err := cli.Get(ctx, keys.Root(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("reading job %s: %w", name, err)
	}
	kvs := map[string][]byte{}
	leases := map[string]clientv3.LeaseID{}
	type cand struct {
		id  string
		rev int64
	}
	var cands []cand
	for _, kv := range r.Kvs {
		k := string(kv.Key)
		kvs[k] = kv.Value
		leases[k] = clientv3.LeaseID(kv.Lease)
		if strings.HasPrefix(k, keys.Leader()) {
			cands = append(cands, cand{string(kv.Value), kv.CreateRevision})
		}
	}
	if kvs[keys.Spec()] == nil {
		return nil, fmt.Errorf("job %s: not in etcd", name)
	}
	spec, err := job.DecodeSpec(kvs[keys.Spec()])
	if err != nil {
		return nil, err
	}
	p, err := paramserver.DecodePlacement(kvs[keys.Placement()])
	if err != nil {
		return nil, err
	}
	left := func(k string) string {
		id := leases[k]
		if id == 0 {
			return "-"
		}
		ttl, err := cli.TimeToLive(ctx, id)
		if err != nil || ttl.TTL < 0 {
			return "expired"
		}
		return fmt.Sprintf("%ds of %ds", ttl.TTL, ttl.GrantedTTL)
	}
	st := &jobStatus{Job: spec.Name, State: string(kvs[keys.State()]), Model: spec.Model, Data: spec.Data, Mode: spec.Mode,
		Workers: spec.Workers, Steps: spec.Steps, Standby: []string{}, Rollbacks: []rollbackStatus{}, Members: []memberStatus{},
		Placement: placementStatus{Version: p.Version, Shards: p.Shards, Blocks: len(p.Blocks), BlockSize: p.BlockSize, Start: p.Start}}
	sort.Slice(cands, func(i, j int) bool { return cands[i].rev < cands[j].rev })
	for i, c := range cands {
		if i == 0 {
			st.Leader = c.id
		} else {
			st.Standby = append(st.Standby, c.id)
		}
	}
	var cp job.CheckpointRecord
	if b := kvs[keys.Checkpoint()]; b != nil && json.Unmarshal(b, &cp) == nil {
		st.Checkpoint = &cp
	}
	for k, v := range kvs {
		var rb job.RollbackRecord
		if strings.HasPrefix(k, keys.Rollbacks()) && json.Unmarshal(v, &rb) == nil {
			st.Rollbacks = append(st.Rollbacks, rollbackStatus{Placement: rb.Placement, Why: rb.Why, From: rb.FromStep, To: rb.ToStep})
		}
	}
	sort.Slice(st.Rollbacks, func(i, j int) bool { return st.Rollbacks[i].Placement < st.Rollbacks[j].Placement })
	if b := kvs[keys.Tasks()]; b != nil {
		q, err := coordinator.DecodeTasks(b)
		if err != nil {
			return nil, err
		}
		c := q.Count()
		st.Tasks = &taskStatus{Todo: c[coordinator.TaskTodo], Pending: c[coordinator.TaskPending], Done: c[coordinator.TaskDone],
			Failed: c[coordinator.TaskFailed], DataSteps: q.DoneSteps(), Late: q.Late}
	}
	var ids []string
	for k := range kvs {
		if id, ok := strings.CutPrefix(k, keys.Workers()); ok {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	for _, id := range ids {
		m := memberStatus{ID: id, Rank: "waiting", Epoch: "-", Task: "-", LeaseLeft: left(keys.Worker(id))}
		var a job.Assignment
		if b := kvs[keys.Assign(id)]; b != nil && json.Unmarshal(b, &a) == nil {
			m.Rank, m.Epoch = fmt.Sprint(a.Rank), fmt.Sprint(a.Epoch)
			m.Done = kvs[keys.Done(a.Rank)] != nil
		}
		var tk coordinator.Task
		if b := kvs[keys.TaskOf(id)]; b != nil && json.Unmarshal(b, &tk) == nil && tk.ID >= 0 {
			m.Task = fmt.Sprintf("%d (shard %d, steps %d-%d)", tk.ID, tk.Shard, tk.From, tk.To)
		}
		st.Members = append(st.Members, m)
	}
	// The shards' clocks, from the shards themselves.
	clocks := map[int]string{}
	if nc != nil {
		for s, c := range shardClocks(ctx, nc, spec.Name, p, 2*time.Second) {
			clocks[s] = "no answer"
			if c >= 0 {
				clocks[s] = fmt.Sprint(c)
			}
		}
	}
	for s := 0; s < p.Shards; s++ {
		k := keys.Shard(s)
		serving := "-"
		var m job.ShardMember
		if b := kvs[k]; b == nil {
			serving = "no process"
		} else if json.Unmarshal(b, &m) == nil && m.Placement > 0 {
			serving = fmt.Sprint(m.Placement)
		} else {
			serving = "restoring"
		}
		st.Shards = append(st.Shards, shardStatus{Shard: s, Serving: serving, Clock: clocks[s], LeaseLeft: left(k)})
	}
	return st, nil
}

// print writes st as downpour status shows it.
func (st *jobStatus) print(stdout io.Writer) error {
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

// shardClocks asks every shard of placement p for its clock, each within
// timeout; a shard that does not answer gets -1.
func shardClocks(ctx context.Context, nc *nats.Conn, name string, p *paramserver.Placement, timeout time.Duration) []int64 {
	clocks := make([]int64, p.Shards)
	for s := range clocks {
		one := *p
		one.Blocks = nil
		for _, b := range p.Blocks {
			if b.Shard == s {
				one.Blocks = append(one.Blocks, b)
			}
		}
		clocks[s] = -1
		c, err := paramserver.NewClient(nc, name, &one, 0, 0)
		if err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		if clock, err := c.Clock(cctx); err == nil {
			clocks[s] = clock
		}
		cancel()
	}
	return clocks
}
