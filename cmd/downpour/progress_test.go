package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/downpour-ml/downpour/internal/app/telemetry"
	"github.com/downpour-ml/downpour/internal/job"
)

// On a terminal, train draws a progress bar (steps, ETA, loss, rate) redrawn
// in place, with the other lines above it; the run is the same.
func TestTrainShowsAProgressBarOnATerminal(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("opening a pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 120})
	var screen bytes.Buffer
	read := make(chan struct{})
	go func() { io.Copy(&screen, ptmx); close(read) }()
	if !isTerminal(tty) {
		t.Fatal("a pty is not taken for a terminal")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stderr syncBuffer
	out := filepath.Join(t.TempDir(), "run")
	code := run(ctx, []string{"train", "--job", "bar", "--steps", "120", "--out", out, "--http", ""}, tty, &stderr)
	tty.Close()
	<-read
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, stderr.String(), screen.String())
	}
	s := screen.String()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`step +120/120 \[=+\] done +loss \d\.\d{4} +[\d.]+ steps/s`), // the finished bar
		regexp.MustCompile(`step +\d+/120 \[=*>? *\] \d+s +loss`),                       // a bar under way, with its ETA
		regexp.MustCompile(`eval at step 100: loss`),                                    // above the bar
		regexp.MustCompile(`eval at step 120: loss`),                                    // below it, once complete
		regexp.MustCompile(`done: 120 steps in`),                                        // after it
		regexp.MustCompile("\x1b\\["),                                                   // redrawn in place
	} {
		if !want.MatchString(s) {
			t.Errorf("the terminal never showed %q:\n%q", want, s)
		}
	}
	if strings.Contains(s, "step  10/120  loss") {
		t.Errorf("the terminal shows the step lines meant for a log:\n%s", s)
	}
	if rs := readMetrics(t, filepath.Join(out, "metrics.jsonl")); len(rs) != 13 {
		t.Errorf("%d metrics records, want 13 (steps 1, 11, 21, ..., 111 and the last)", len(rs))
	}
}

// Without a terminal (a pipe, a file), train writes a plain line per logged
// step, with no escape sequences.
func TestTrainWritesLinesWithoutATerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if isTerminal(w) || isTerminal(&bytes.Buffer{}) {
		t.Fatal("a pipe or a buffer is taken for a terminal")
	}
	var got bytes.Buffer
	read := make(chan struct{})
	go func() { io.Copy(&got, r); close(read) }()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stderr syncBuffer
	code := run(ctx, []string{"train", "--job", "lines", "--steps", "30", "--out", filepath.Join(t.TempDir(), "run"), "--http", ""}, w, &stderr)
	w.Close()
	<-read
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !regexp.MustCompile(`(?m)^step 21/30  loss \d\.\d{4}  [\d.]+ steps/s  \d+ tokens/s$`).Match(got.Bytes()) || bytes.Contains(got.Bytes(), []byte("\x1b")) {
		t.Fatalf("want plain step lines:\n%q", got.String())
	}
}

// The bar's own drawing, record by record, into a buffer.
func TestProgressBarDrawsRecords(t *testing.T) {
	var buf syncBuffer
	b := newProgressBar(&buf, 100, 0, "tokens")
	for s := int64(10); s <= 100; s += 10 {
		b.Train(telemetry.Record{Step: s, Loss: 1 / float64(s), StepsPerSec: 50, TokensPerSec: 1000}, 100)
		time.Sleep(5 * time.Millisecond)
	}
	b.Write([]byte("a line above\n"))
	b.Close()
	b.Close() // twice is fine
	s := buf.String()
	for _, want := range []string{"step 100/100", "done", "loss 0.0100", "50.0 steps/s", "1000 tokens/s", "a line above"} {
		if !strings.Contains(s, want) {
			t.Errorf("no %q in %q", want, s)
		}
	}
	// The synthetic load model's throughput is in examples.
	var ex syncBuffer
	spec := job.Default()
	spec.Model = job.Synthetic
	b = newProgressBar(&ex, 10, 0, spec.Unit())
	b.Train(telemetry.Record{Step: 10, Loss: 0.5, StepsPerSec: 9, TokensPerSec: 300}, 10)
	b.Close()
	if !strings.Contains(ex.String(), "300 examples/s") {
		t.Errorf("synthetic: %q", ex.String())
	}
}

// --log-format json writes every log line as one JSON object, with the
// level, the message and the role's fields.
func TestJSONLogs(t *testing.T) {
	code, _, stderr := runCmd(t, 3*time.Minute, "train", "--job", "jsonlog", "--steps", "5", "--out", filepath.Join(t.TempDir(), "run"),
		"--http", "", "-v", "--log-format", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if len(lines) < 5 {
		t.Fatalf("only %d log lines:\n%s", len(lines), stderr)
	}
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("a log line that is not JSON: %q: %v", l, err)
		}
		if rec["level"] == nil || rec["msg"] == nil || rec["time"] == nil {
			t.Fatalf("a log line without level, msg or time: %q", l)
		}
	}
}
