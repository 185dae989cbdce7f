package status

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/internal/testenv"
)

// Read assembles a job from its keys: the leader is the oldest candidate,
// members sort by id with their ranks, tasks and leases, rollbacks by
// placement, shards by index with what each serves; Print shows them.
func TestReadAndPrint(t *testing.T) {
	cli := testenv.Etcd(t)
	ctx := context.Background()
	spec := job.Default()
	spec.Name = "st"
	if err := spec.Resolve(); err != nil {
		t.Fatal(err)
	}
	p := job.Place(spec.Tensors(), spec.BlockSize, 3)
	p.Version = 2
	keys := etcdstore.KeysFor("st")
	put := func(k string, v any, opts ...clientv3.OpOption) {
		t.Helper()
		b, ok := v.([]byte)
		if !ok {
			if s, isStr := v.(string); isStr {
				b = []byte(s)
			} else {
				b, _ = json.Marshal(v)
			}
		}
		if _, err := cli.Put(ctx, k, string(b), opts...); err != nil {
			t.Fatal(err)
		}
	}
	lease, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	put(keys.Spec(), spec.Encode())
	put(keys.State(), job.StateRunning)
	put(keys.Placement(), p.Encode())
	put(keys.Leader()+"1", "coord-old")
	put(keys.Leader()+"2", "coord-new")
	put(keys.Worker("wb"), "", clientv3.WithLease(lease.ID))
	put(keys.Worker("wa"), "")
	put(keys.Assign("wb"), job.Assignment{Rank: 1, Epoch: 3})
	put(keys.Done(1), "3")
	put(keys.TaskOf("wa"), job.Task{ID: 4, Shard: 1, From: 10, To: 20})
	put(keys.Rollback(2), job.RollbackRecord{Placement: 2, Why: "shard 0 died", FromStep: -1, ToStep: 40})
	put(keys.Checkpoint(), job.CheckpointRecord{Step: 40, Placement: 1})
	put(keys.Shard(0), job.ShardMember{Placement: 2})
	put(keys.Shard(2), job.ShardMember{})
	st, err := Read(ctx, etcdstore.New(cli, "st"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Leader != "coord-old" || !slices.Equal(st.Standby, []string{"coord-new"}) {
		t.Errorf("leader %q, standby %v", st.Leader, st.Standby)
	}
	if len(st.Members) != 2 || st.Members[0].ID != "wa" || st.Members[0].Rank != "waiting" || st.Members[0].Task != "4 (shard 1, steps 10-20)" ||
		st.Members[0].LeaseLeft != "-" || st.Members[1].Rank != "1" || st.Members[1].Epoch != "3" || !st.Members[1].Done ||
		!strings.HasSuffix(st.Members[1].LeaseLeft, "of 30s") {
		t.Errorf("members %+v", st.Members)
	}
	var serving []string
	for _, s := range st.Shards {
		serving = append(serving, s.Serving)
		if s.Clock != "" {
			t.Errorf("shard %d has clock %q without NATS", s.Shard, s.Clock)
		}
	}
	if !slices.Equal(serving, []string{"2", "no process", "restoring"}) {
		t.Errorf("shards serve %v", serving)
	}
	if st.Checkpoint == nil || st.Checkpoint.Step != 40 || len(st.Rollbacks) != 1 || st.Rollbacks[0].To != 40 || st.Placement.Version != 2 || st.Placement.Shards != 3 {
		t.Errorf("checkpoint %+v, rollbacks %+v, placement %+v", st.Checkpoint, st.Rollbacks, st.Placement)
	}
	var b strings.Builder
	if err := st.Print(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"job st: running", "leader: coord-old; standby: coord-new", "last complete checkpoint: step 40 (placement 1)",
		"re-placed (placement 2): shard 0 died; from step ? back to 40"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("printed status lacks %q:\n%s", want, b.String())
		}
	}
	if _, err := Read(ctx, etcdstore.New(cli, "nosuch"), nil); err == nil || !strings.Contains(err.Error(), "job nosuch: not in etcd") {
		t.Errorf("unknown job: %v", err)
	}
}
