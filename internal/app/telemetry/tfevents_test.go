package telemetry

import (
	"bufio"
	"bytes"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/internal/wire"
)

// An event as testdata/read_tfevents.py prints it.
type readEvent struct {
	WallTime    float64            `json:"wall_time"`
	Step        int64              `json:"step"`
	FileVersion string             `json:"file_version"`
	Scalars     map[string]float64 `json:"scalars"`
}

// readEvents reads an event file with Google's protobuf runtime and a CRC
// written apart from Go's (testdata/read_tfevents.py). Without python3 and
// its protobuf module the test is skipped, or fails where
// DOWNPOUR_PYTHON=require (CI).
func readEvents(t *testing.T, path string) []readEvent {
	t.Helper()
	if err := exec.Command("/usr/bin/python3", "-c", "import google.protobuf").Run(); err != nil {
		if os.Getenv("DOWNPOUR_PYTHON") == "require" {
			t.Fatalf("python3 cannot import google.protobuf (%v), and DOWNPOUR_PYTHON=require (install Debian's python3-protobuf)", err)
		}
		t.Skipf("python3 cannot import google.protobuf (%v): install Debian's python3-protobuf to check event files", err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command("/usr/bin/python3", "testdata/read_tfevents.py", path)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("read_tfevents.py: %v: %s", err, stderr.String())
	}
	var evs []readEvent
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var ev readEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// An event's bytes are the protocol buffer the format defines, field by
// field, with zero left out as proto3 does.
func TestEventBytes(t *testing.T) {
	at := time.Unix(2, 500_000_000) // 2.5 s: 0x4004000000000000
	got := appendEventHeader(nil, at, 300, func(b []byte) []byte { return b })
	want := []byte{0x09, 0, 0, 0, 0, 0, 0, 0x04, 0x40, 0x10, 0xac, 0x02}
	if !bytes.Equal(got, want) {
		t.Fatalf("wall time 2.5, step 300: % x, want % x", got, want)
	}
	if got := appendEventHeader(nil, at, 0, func(b []byte) []byte { return b }); !bytes.Equal(got, want[:9]) {
		t.Fatalf("step 0: % x, want % x", got, want[:9])
	}
	// A record: length 3, its masked CRC, the data, the data's masked CRC.
	rec := appendRecord(nil, []byte("abc"))
	if len(rec) != 8+4+3+4 || !bytes.Equal(rec[:8], []byte{3, 0, 0, 0, 0, 0, 0, 0}) || string(rec[12:15]) != "abc" {
		t.Fatalf("record % x", rec)
	}
}

// A file the writer made is read by Google's protobuf runtime as the events
// written: the file version first, then each step's scalars, values as
// float32, in order; steps at either end of int64 survive.
func TestEventFileReadByProtobuf(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Unix(1_700_000_000, 250_000_000)
	w, err := NewEventWriter(dir, t0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(filepath.Base(w.Path()), "tfevents") {
		t.Fatalf("%s: TensorBoard reads files whose names hold tfevents", w.Path())
	}
	w2, err := NewEventWriter(dir, t0) // a second writer in the same second
	if err != nil || w2.Path() == w.Path() {
		t.Fatalf("a second writer: %v, %s", err, w2.Path())
	}
	w2.Close()
	steps := []int64{1, 2, 1 << 40, -1, math.MaxInt64}
	for i, s := range steps {
		err := w.Scalars(s, t0.Add(time.Duration(i)*time.Second), Scalar{"train/loss", 1 / float64(i+3)}, Scalar{"eval/bleu", float64(i) * 1e6})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Scalars(9, t0); err != nil { // nothing to write
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	evs := readEvents(t, w.Path())
	if len(evs) != 1+len(steps) {
		t.Fatalf("%d events, want %d: %+v", len(evs), 1+len(steps), evs)
	}
	if evs[0].FileVersion != EventFileVersion || evs[0].WallTime != 1_700_000_000.25 {
		t.Fatalf("first event %+v, want the file version at %v", evs[0], 1_700_000_000.25)
	}
	for i, s := range steps {
		ev := evs[1+i]
		want := map[string]float64{"train/loss": float64(float32(1 / float64(i+3))), "eval/bleu": float64(float32(float64(i) * 1e6))}
		if ev.Step != s || ev.WallTime != 1_700_000_000.25+float64(i) || len(ev.Scalars) != 2 ||
			ev.Scalars["train/loss"] != want["train/loss"] || ev.Scalars["eval/bleu"] != want["eval/bleu"] {
			t.Fatalf("event %d: %+v, want step %d and %v", 1+i, ev, s, want)
		}
	}
}

// A collector writes what it writes to metrics.jsonl as TensorBoard scalars
// in an event file beside it: each training record's loss and rates at its
// step, and each evaluation's values under tags that say what they are.
func TestCollectorWritesEvents(t *testing.T) {
	s := testenv.NATS(t, 0)
	nc := testenv.Conn(t, s.ClientURL())
	defer nc.Close()
	dir := t.TempDir()
	c, err := NewCollector(nc, "j", 1, 2, filepath.Join(dir, "metrics.jsonl"), "tokens", nil)
	if err != nil {
		t.Fatal(err)
	}
	for step := range 2 {
		b, _ := wire.Encode(&wire.Progress{V: wire.Version, Step: int64(step), Loss: float64(8 * (step + 1)), Tokens: 4, Nanos: 5e8})
		nc.Publish(wire.ProgressSubject("j"), b)
	}
	nc.Flush()
	if !c.WaitStep(2, 5*time.Second) {
		t.Fatal("step 2 never recorded")
	}
	c.WriteEval(EvalRecord{Step: 2, EvalLoss: 0.5, Perplexity: 1.6, BLEU: 42, ExactMatch: 0.25, HeldOut: 8})
	c.WriteEval(EvalRecord{Step: 2, Parzen: 150.5, ParzenSE: 2, Sigma: 0.2, Samples: 100, HeldOut: 10, Set: "test"})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "events.out.tfevents.*"))
	if len(files) != 1 {
		t.Fatalf("event files %v, want one", files)
	}
	evs := readEvents(t, files[0])
	if len(evs) != 5 || evs[0].FileVersion != EventFileVersion {
		t.Fatalf("%d events, want the version, 2 steps and 2 evaluations: %+v", len(evs), evs)
	}
	for i, want := range []struct {
		step    int64
		scalars map[string]float64
	}{
		{1, map[string]float64{"train/loss": 2}},
		{2, map[string]float64{"train/loss": 4}},
		{2, map[string]float64{"eval/loss": 0.5, "eval/perplexity": float64(float32(1.6)), "eval/bleu": 42, "eval/exact_match": 0.25}},
		{2, map[string]float64{"eval/parzen_test": 150.5, "eval/parzen_test_stderr": 2, "eval/parzen_test_sigma": float64(float32(0.2))}},
	} {
		ev := evs[1+i]
		if ev.Step != want.step {
			t.Fatalf("event %d: step %d, want %d", 1+i, ev.Step, want.step)
		}
		for tag, v := range want.scalars {
			if got, ok := ev.Scalars[tag]; !ok || got != v {
				t.Fatalf("event %d: %s = %v (%v), want %v: %+v", 1+i, tag, got, ok, v, ev.Scalars)
			}
		}
		if i < 2 && (ev.Scalars["train/steps_per_sec"] <= 0 || ev.Scalars["train/tokens_per_sec"] <= 0) {
			t.Fatalf("event %d: rates %+v", 1+i, ev.Scalars)
		}
	}
}
