package telemetry

import (
	"bufio"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
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
