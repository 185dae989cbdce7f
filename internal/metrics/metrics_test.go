package metrics

import (
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/downpour-ml/downpour/internal/wire"
)

// Every metric follows Prometheus's conventions (promtool's linter: units
// in names, _total on counters, help text).
func TestMetricsFollowConventions(t *testing.T) {
	// Give every vector a child, so that the linter sees each metric.
	o := Shard("lint", 0)
	o.Refused(wire.NonFinite)
	o.Pushed(1)
	o.SnapshotWritten(time.Millisecond, 10)
	Request("lint", "push", 0, time.Millisecond, 4)
	WorkerSteps.WithLabelValues("lint", "0").Inc()
	WorkerLoss.WithLabelValues("lint", "0").Set(1)
	StepSeconds.WithLabelValues("lint", "0").Observe(1)
	JobStep.WithLabelValues("lint").Set(1)
	JobLoss.WithLabelValues("lint").Set(1)
	JobStepsPerSec.WithLabelValues("lint").Set(1)
	JobEval.WithLabelValues("lint", "bleu").Set(1)
	problems, err := testutil.GatherAndLint(Registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// The traffic of watched connections is counted by role, connections of
// one role add up, and what a closed connection sent stays counted after it
// is dropped.
func TestWatchCountsTrafficByRole(t *testing.T) {
	var mu sync.Mutex
	a, b := Traffic{OutMsgs: 3, OutBytes: 3000, InMsgs: 1, InBytes: 10}, Traffic{OutMsgs: 2, OutBytes: 20}
	closed := false
	Watch(func() (Traffic, bool) { mu.Lock(); defer mu.Unlock(); return a, closed }, "tester")
	Watch(func() (Traffic, bool) { return b, false }, "tester")
	Watch(func() (Traffic, bool) { return Traffic{OutMsgs: 7}, false }, "other")
	out := scrape(t)
	for metric, want := range map[string]float64{
		`downpour_nats_messages_total{direction="out",role="tester"}`: 5,
		`downpour_nats_bytes_total{direction="out",role="tester"}`:    3020,
		`downpour_nats_messages_total{direction="in",role="tester"}`:  1,
		`downpour_nats_bytes_total{direction="in",role="tester"}`:     10,
		`downpour_nats_messages_total{direction="out",role="other"}`:  7,
	} {
		if v := value(t, out, metric); v != want {
			t.Errorf("%s = %v, want %v", metric, v, want)
		}
	}
	mu.Lock()
	a.OutMsgs, closed = 4, true // its last count, then closed
	mu.Unlock()
	for range 2 { // the scrape that drops it, and one after
		if v := value(t, scrape(t), `downpour_nats_messages_total{direction="out",role="tester"}`); v != 6 {
			t.Fatalf("after a connection closed: %v messages, want 6", v)
		}
	}
}

func scrape(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	r, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return string(b)
}

// value finds a sample line "name{labels} value" in a scrape.
func value(t *testing.T, scrape, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(scrape, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in the scrape", series)
	return 0
}
