package main

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
)

// A sync job whose replicas are laid out over seats (stages and softmax
// slices, each seat its own member of the job, its own rank, and its own
// NATS connection to the embedded server) ends with the parameters of the
// job whose replicas are one worker each, bit for bit: 2 replicas over 2,
// 3 and 4 stages and 1-3 slices, through 3 shards.
func TestStagedJobGivesOneWorkerBits(t *testing.T) {
	dir := t.TempDir()
	base := []string{"--steps", "12", "--log-every", "4", "--eval-every", "0", "--workers", "2", "--ps-shards", "3",
		"--layers", "4", "--hidden", "24", "--embed", "16", "--softmax-blocks", "3", "--batch", "6", "--data", "synthetic:reverse"}
	want, _ := trainRun(t, filepath.Join(dir, "one"), append([]string{"--job", "one"}, base...)...)
	for _, c := range []struct{ stages, slices int }{{2, 1}, {3, 2}, {4, 3}} {
		name := fmt.Sprintf("s%dk%d", c.stages, c.slices)
		got, _ := trainRun(t, filepath.Join(dir, name), append([]string{"--job", name, "--stages", fmt.Sprint(c.stages), "--softmax-slices", fmt.Sprint(c.slices)}, base...)...)
		if !slices.Equal(got, want) {
			t.Fatalf("%d stages, %d slices: the parameters differ from the one-worker replicas' (%d floats)", c.stages, c.slices, len(got))
		}
		// The replicas' top stages report their progress: as two ranks.
		for _, r := range readMetrics(t, filepath.Join(dir, name, "metrics.jsonl")) {
			if r.Ranks != 2 || !(r.Loss > 0) || r.Tokens <= 0 {
				t.Fatalf("%s: a metrics record %+v, want 2 ranks reporting loss and tokens", name, r)
			}
		}
	}
}
