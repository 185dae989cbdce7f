package coordinator

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/internal/job"
)

func TestRanksRestoreThenContinue(t *testing.T) {
	r := NewRanks(3)
	r.Restore("a", job.Assignment{Rank: 0, Epoch: 4})
	r.Restore("b", job.Assignment{Rank: 2, Epoch: 1})
	r.Restore("x", job.Assignment{Rank: 7, Epoch: 1}) // out of range: ignored
	if out := r.Up("a"); out != nil {
		t.Fatalf("restored worker reassigned: %v", out)
	}
	out := r.Up("c")
	if len(out) != 1 || out[0].Rank != 1 || out[0].Epoch != 1 {
		t.Fatalf("got %+v, want c on rank 1 epoch 1", out)
	}
	out = append(r.Down("a"), r.Up("d")...)
	if len(out) != 1 || out[0].Worker != "d" || out[0].Rank != 0 || out[0].Epoch != 5 {
		t.Fatalf("got %+v, want d on rank 0 epoch 5", out)
	}
}

// Fences and rollbacks, as a script: "fence" answers each rank's oldest
// accepted epoch, "holds w" whether w's death loses work in progress.
func TestRanksFenceAndRollback(t *testing.T) {
	r := NewRanks(2)
	steps := []struct{ ev, want string }{
		{"fence", "1 1"}, // nobody yet: the first holders get epoch 1
		{"up a", "a:0@1"},
		{"up b", "b:1@1"},
		{"fence", "1 1"},
		{"holds a", "yes"},
		{"down a", "-"},
		{"fence", "2 1"}, // rank 0 is free: its old holder (epoch 1) is fenced
		{"holds a", "no"},
		{"up c", "c:0@2"},
		{"fence", "2 1"},
		{"done 1", "-"},
		{"holds b", "no"}, // b finished: its death loses nothing
		{"rollback", "-"},
		{"holds b", "yes"}, // after a rollback b runs again
		{"fence", "2 1"},
		{"down b", "-"},
		{"fence", "2 2"},
	}
	for _, s := range steps {
		f := strings.Fields(s.ev)
		got := "-"
		switch f[0] {
		case "up", "down":
			var out []Assign
			if f[0] == "up" {
				out = r.Up(f[1])
			} else {
				out = r.Down(f[1])
			}
			var parts []string
			for _, a := range out {
				parts = append(parts, fmt.Sprintf("%s:%d@%d", a.Worker, a.Rank, a.Epoch))
			}
			if len(parts) > 0 {
				got = strings.Join(parts, " ")
			}
		case "done":
			var rank int
			fmt.Sscan(f[1], &rank)
			r.Done(rank)
		case "fence":
			got = strings.Trim(fmt.Sprint(r.Fence()), "[]")
		case "holds":
			got = map[bool]string{true: "yes", false: "no"}[r.Holds(f[1])]
		case "rollback":
			if as := r.Rollback(); len(as) > 0 {
				t.Fatalf("rollback assigned %v with nobody waiting", as)
			}
		}
		if got != s.want {
			t.Fatalf("%s: got %s, want %s", s.ev, got, s.want)
		}
	}
}

// Ranks that are seats of replicas read their replica's data shard: rank r
// of 3 seats a replica reads shard r / 3.
func TestSeatedRanksReadTheirReplicasShard(t *testing.T) {
	r := NewSeatedRanks(6, 3)
	var got []int
	for i := range 6 {
		for _, a := range r.Up(string(rune('a' + i))) {
			if a.Rank != i {
				t.Fatalf("worker %d got rank %d", i, a.Rank)
			}
			got = append(got, a.DataShard)
		}
	}
	if !slices.Equal(got, []int{0, 0, 0, 1, 1, 1}) {
		t.Fatalf("data shards %v", got)
	}
}
