package main

import (
	"context"
	"encoding/json"
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
	"github.com/downpour-ml/downpour/internal/job"
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
	if err := parse(fs, args, stderr, "downpour status --etcd http://127.0.0.1:2379 --nats nats://127.0.0.1:4222 --job demo"); err != nil {
		return err
	}
	if ep.etcd == "" {
		fmt.Fprintln(stderr, "downpour status: needs --etcd (and --nats for the shards' clocks)")
		return errUsage
	}
	if err := wire.ValidJob(*name); err != nil {
		return err
	}
	cli, err := connectEtcd(ctx, ep.etcd, ep.timeout)
	if err != nil {
		return err
	}
	defer cli.Close()
	keys := job.KeysFor(*name)
	r, err := cli.Get(ctx, keys.Root(), clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("reading job %s: %w", *name, err)
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
		return fmt.Errorf("job %s: not in etcd at %s", *name, ep.etcd)
	}
	spec, err := job.DecodeSpec(kvs[keys.Spec()])
	if err != nil {
		return err
	}
	p, err := paramserver.DecodePlacement(kvs[keys.Placement()])
	if err != nil {
		return err
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
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	state := string(kvs[keys.State()])
	fmt.Fprintf(w, "job %s: %s; %s %s, %d workers, %d steps, mode %s\n", spec.Name, state, spec.Model, spec.Data, spec.Workers, spec.Steps, spec.Mode)
	sort.Slice(cands, func(i, j int) bool { return cands[i].rev < cands[j].rev })
	switch len(cands) {
	case 0:
		fmt.Fprintln(w, "leader: none")
	default:
		var standby []string
		for _, c := range cands[1:] {
			standby = append(standby, c.id)
		}
		fmt.Fprintf(w, "leader: %s; standby: %s\n", cands[0].id, orNone(strings.Join(standby, ", ")))
	}
	fmt.Fprintf(w, "placement: version %d, %d shards, %d blocks of up to %d floats, from step %d\n", p.Version, p.Shards, len(p.Blocks), p.BlockSize, p.Start)
	var cp job.CheckpointRecord
	if b := kvs[keys.Checkpoint()]; b != nil && json.Unmarshal(b, &cp) == nil {
		fmt.Fprintf(w, "last complete checkpoint: step %d (placement %d)\n", cp.Step, cp.Placement)
	} else {
		fmt.Fprintln(w, "last complete checkpoint: none")
	}
	var rbs []job.RollbackRecord
	for k, v := range kvs {
		var rb job.RollbackRecord
		if strings.HasPrefix(k, keys.Rollbacks()) && json.Unmarshal(v, &rb) == nil {
			rbs = append(rbs, rb)
		}
	}
	sort.Slice(rbs, func(i, j int) bool { return rbs[i].Placement < rbs[j].Placement })
	for _, rb := range rbs {
		from := "?"
		if rb.FromStep >= 0 {
			from = fmt.Sprint(rb.FromStep)
		}
		fmt.Fprintf(w, "re-placed (placement %d): %s; from step %s back to %d\n", rb.Placement, rb.Why, from, rb.ToStep)
	}
	if b := kvs[keys.Tasks()]; b != nil {
		q, err := coordinator.DecodeTasks(b)
		if err != nil {
			return err
		}
		c := q.Count()
		fmt.Fprintf(w, "tasks: %d todo, %d pending, %d done, %d failed; %d data steps done; %d late reports\n",
			c[coordinator.TaskTodo], c[coordinator.TaskPending], c[coordinator.TaskDone], c[coordinator.TaskFailed], q.DoneSteps(), q.Late)
	}
	fmt.Fprintln(w, "\nworker\trank\tepoch\tlease left\tdone\ttask")
	var ids []string
	for k := range kvs {
		if id, ok := strings.CutPrefix(k, keys.Workers()); ok {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	for _, id := range ids {
		rank, epoch, done := "waiting", "-", ""
		var a job.Assignment
		if b := kvs[keys.Assign(id)]; b != nil && json.Unmarshal(b, &a) == nil {
			rank, epoch = fmt.Sprint(a.Rank), fmt.Sprint(a.Epoch)
			if kvs[keys.Done(a.Rank)] != nil {
				done = "yes"
			}
		}
		task := "-"
		var tk coordinator.Task
		if b := kvs[keys.TaskOf(id)]; b != nil && json.Unmarshal(b, &tk) == nil && tk.ID >= 0 {
			task = fmt.Sprintf("%d (shard %d, steps %d-%d)", tk.ID, tk.Shard, tk.From, tk.To)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", id, rank, epoch, left(keys.Worker(id)), orNone(done), task)
	}
	// The shards' clocks, from the shards themselves.
	clocks := map[int]string{}
	if ep.nats != "" {
		nc, err := connectNATS(ep.nats, "status", ep.timeout)
		if err != nil {
			return err
		}
		defer nc.Close()
		for s, c := range shardClocks(ctx, nc, spec.Name, p, 2*time.Second) {
			clocks[s] = "no answer"
			if c >= 0 {
				clocks[s] = fmt.Sprint(c)
			}
		}
	}
	fmt.Fprintln(w, "\nshard\tserving placement\tclock\tlease left")
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
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", s, serving, orNone(clocks[s]), left(k))
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
