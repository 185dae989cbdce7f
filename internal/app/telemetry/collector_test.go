package telemetry

import (
	"bufio"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/internal/wire"
)

// A record is written once every rank reported the step; its loss is the
// token-weighted mean over ranks; garbage and out-of-range ranks are ignored.
func TestCollectorAggregatesRanks(t *testing.T) {
	s := testenv.NATS(t, 0)
	nc := testenv.Conn(t, s.ClientURL())
	defer nc.Close()
	path := filepath.Join(t.TempDir(), "metrics.jsonl")
	c, err := NewCollector(nc, "j", 2, 10, path, "tokens", nil)
	if err != nil {
		t.Fatal(err)
	}
	pub := func(p wire.Progress) {
		p.V = wire.Version
		b, _ := wire.Encode(&p)
		nc.Publish(wire.ProgressSubject("j"), b)
	}
	nc.Publish(wire.ProgressSubject("j"), []byte("garbage"))
	pub(wire.Progress{Rank: 7, Step: 0, Loss: 1e9, Tokens: 1})
	pub(wire.Progress{Rank: 0, Step: 0, Loss: 6, Tokens: 3, Nanos: 1e9})
	pub(wire.Progress{Rank: 0, Step: 5, Loss: 1, Tokens: 1, Nanos: 1})
	pub(wire.Progress{Rank: 1, Step: 0, Loss: 2, Tokens: 1, Nanos: 2e9})
	nc.Flush()
	if !c.WaitStep(1, 5*time.Second) {
		t.Fatal("the first step never recorded")
	}
	if c.WaitStep(6, 100*time.Millisecond) {
		t.Fatal("step 6 recorded with one rank of two")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(path)
	defer f.Close()
	sc := bufio.NewScanner(f)
	var rs []Record
	for sc.Scan() {
		var r Record
		json.Unmarshal(sc.Bytes(), &r)
		rs = append(rs, r)
	}
	if len(rs) != 1 {
		t.Fatalf("%d records, want 1", len(rs))
	}
	r := rs[0]
	if r.Step != 1 || r.Ranks != 2 || r.Tokens != 4 || math.Abs(r.Loss-2) > 1e-12 || r.StepSeconds != 2 {
		t.Fatalf("record %+v, want loss 8/4 = 2 over 4 tokens, busy 2s", r)
	}
}

// When the data goes out as tasks, data shards reach a step at different
// times and a later step can complete first: records are still written in
// step order. A step reported twice by one data shard (its task ran again
// after its worker died) counts that shard once. A step whose reports never
// all come holds the later ones back for holdFor at most.
func TestCollectorWritesInStepOrder(t *testing.T) {
	s := testenv.NATS(t, 0)
	nc := testenv.Conn(t, s.ClientURL())
	defer nc.Close()
	path := filepath.Join(t.TempDir(), "metrics.jsonl")
	var console strings.Builder
	c, err := NewCollector(nc, "j", 2, 30, path, "examples", &console)
	if err != nil {
		t.Fatal(err)
	}
	pub := func(ps ...wire.Progress) {
		for _, p := range ps {
			p.V, p.Tokens, p.Loss, p.Nanos = wire.Version, 1, 1, 1e8
			b, _ := wire.Encode(&p)
			nc.Publish(wire.ProgressSubject("j"), b)
		}
		nc.Flush()
	}
	pub(wire.Progress{Rank: 0, Step: 0}, wire.Progress{Rank: 0, Step: 10}, wire.Progress{Rank: 1, Step: 10},
		wire.Progress{Rank: 0, Step: 20}, wire.Progress{Rank: 0, Step: 20})
	if c.WaitStep(11, 200*time.Millisecond) {
		t.Fatal("step 11 written before step 1")
	}
	pub(wire.Progress{Rank: 1, Step: 0})
	if !c.WaitStep(11, 5*time.Second) {
		t.Fatal("steps 1 and 11 not written once both complete")
	}
	if c.WaitStep(21, 200*time.Millisecond) {
		t.Fatal("step 21 written with one data shard, reported twice")
	}
	holdFor = 300 * time.Millisecond
	defer func() { holdFor = 5 * time.Second }()
	pub(wire.Progress{Rank: 0, Step: 25}, wire.Progress{Rank: 1, Step: 25}) // step 21's other report is lost
	if !c.WaitStep(26, 5*time.Second) {
		t.Fatal("step 26 held back for good by an incomplete step 21")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	rs, _, err := ReadMetrics(path)
	if err != nil {
		t.Fatal(err)
	}
	var steps []int64
	for _, r := range rs {
		steps = append(steps, r.Step)
		if r.Ranks != 2 || r.StepsPerSec <= 0 {
			t.Errorf("record %+v", r)
		}
	}
	if !slices.Equal(steps, []int64{1, 11, 26}) {
		t.Fatalf("steps written %v, want [1 11 26]", steps)
	}
	if !strings.Contains(console.String(), "examples/s") {
		t.Fatalf("console: %q", console.String())
	}
	if first, last := c.Span(); first.Step != 1 || last.Step != 26 {
		t.Fatalf("span %d-%d", first.Step, last.Step)
	}
}
