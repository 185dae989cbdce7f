package scale

import (
	"fmt"
	"io"
	"strings"
)

// WriteTable writes runs as the Markdown table docs/scale.md shows, one row
// a run in the order given. "of linear" is a run's examples a second over
// its workers times those of the run of one worker in the same mode, shards
// and parameters, where the runs hold one. The request column is the
// requests that pushed and brought the next parameters back, or, for runs
// without them, the pushes. A run with copies of each block (--ps-replicas)
// says so beside its mode.
func WriteTable(w io.Writer, rs []Result) error {
	var b strings.Builder
	b.WriteString("| mode | workers | shards | params | steps/s | examples/s | of linear | wait p50 / p99 ms (p99/p50) | timer late p50 / p99 ms | push+pull p50 / p99 ms | NATS msgs a step | etcd a step (bound) | etcd watch a step |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		linear := "-"
		for _, one := range rs {
			if one.Workers == 1 && one.Mode == r.Mode && one.Shards == r.Shards && one.Params == r.Params && one.PSReplicas == r.PSReplicas && one.ExamplesPerSec > 0 {
				linear = fmt.Sprintf("%.0f%%", 100*r.ExamplesPerSec/(float64(r.Workers)*one.ExamplesPerSec))
				break
			}
		}
		late := "-"
		if r.Late.Count > 0 {
			late = fmt.Sprintf("%.1f / %.1f", r.Late.P50, r.Late.P99)
		}
		req := r.PushPull
		if req.Count == 0 {
			req = r.Push
		}
		ratio := 0.0
		if r.Wait.P50 > 0 {
			ratio = r.Wait.P99 / r.Wait.P50
		}
		mode := r.Mode
		if r.PSReplicas > 1 {
			mode += fmt.Sprintf(", %d copies", r.PSReplicas)
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %.2f | %.0f | %s | %.1f / %.1f (%.1f) | %s | %.1f / %.1f | %.0f | %.1f (%.1f) | %.1f |\n",
			mode, r.Workers, r.Shards, r.Params, r.StepsPerSec, r.ExamplesPerSec, linear, r.Wait.P50, r.Wait.P99, ratio, late,
			req.P50, req.P99, r.NATS.Msgs, r.EtcdPerStep, Membership(r).PerStep, r.WatchPerStep)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
