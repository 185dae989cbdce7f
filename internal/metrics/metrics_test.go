package metrics

import (
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

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
	NewRequests("lint").Record("push", 0, time.Millisecond, 4)
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

// Requests records each request in its op's and shard's series, from many
// goroutines at once.
func TestRequestsRecordBySeries(t *testing.T) {
	r := NewRequests("req")
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				op := []string{"push", "pull", "pushpull"}[i%3]
				r.Record(op, g%2, time.Duration(i)*time.Millisecond, 4*i)
			}
		})
	}
	wg.Wait()
	for _, c := range []struct {
		op    string
		shard string
		n     int     // requests
		bytes float64 // their bytes
	}{
		// 4 goroutines a shard, each: i%3 == 0 for 34 of 0..99 (summing to 1683), 1 and 2 for 33 (1617, 1650).
		{"push", "0", 4 * 34, 4 * 4 * 1683},
		{"pull", "1", 4 * 33, 4 * 4 * 1617},
		{"pushpull", "1", 4 * 33, 4 * 4 * 1650},
	} {
		h := &dto.Metric{}
		if err := RequestSeconds.WithLabelValues("req", c.op, c.shard).(prometheus.Histogram).Write(h); err != nil {
			t.Fatal(err)
		}
		if got := h.GetHistogram().GetSampleCount(); got != uint64(c.n) {
			t.Errorf("%s to shard %s: %d requests, want %d", c.op, c.shard, got, c.n)
		}
		if got := testutil.ToFloat64(RequestBytes.WithLabelValues("req", c.op, c.shard)); got != c.bytes {
			t.Errorf("%s to shard %s: %v bytes, want %v", c.op, c.shard, got, c.bytes)
		}
	}
}
