package metrics

import (
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/downpour-ml/downpour/internal/testenv"
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

// The NATS traffic of watched connections is counted by role, and what a
// closed connection sent stays counted.
func TestWatchCountsNATSTraffic(t *testing.T) {
	s := testenv.NATS(t, 0)
	nc := testenv.Conn(t, s.ClientURL())
	Watch(nc, "tester")
	for range 3 {
		if err := nc.Publish("x", make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	nc.Flush()
	out := scrape(t)
	if v := value(t, out, `downpour_nats_messages_total{direction="out",role="tester"}`); v != 3 {
		t.Fatalf("3 messages out counted as %v", v)
	}
	if v := value(t, out, `downpour_nats_bytes_total{direction="out",role="tester"}`); v < 3000 {
		t.Fatalf("3000 bytes out counted as %v", v)
	}
	nc.Close()
	if v := value(t, scrape(t), `downpour_nats_messages_total{direction="out",role="tester"}`); v != 3 {
		t.Fatalf("after the connection closed: %v messages, want 3", v)
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
