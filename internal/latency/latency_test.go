package latency

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// Quantiles are within a bucket (2%) of the exact order statistic, for
// durations spread over six decades; Max and Mean are exact.
func TestQuantilesMatchSortedDurations(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	var all []time.Duration
	var sum time.Duration
	for range 20000 {
		d := time.Duration(float64(time.Microsecond) * math.Pow(10, 6*rng.Float64()))
		h.Add(d)
		all = append(all, d)
		sum += d
	}
	slices.Sort(all)
	for _, q := range []float64{0, 0.01, 0.5, 0.9, 0.99, 0.999, 1} {
		rank := max(1, int(math.Ceil(q*float64(len(all)))))
		want := all[rank-1]
		got := h.Quantile(q)
		if r := float64(got) / float64(want); r < 1/1.02 || r > 1.02 {
			t.Errorf("q %v: %v, exact %v (ratio %.4f)", q, got, want, r)
		}
	}
	if h.Max() != all[len(all)-1] || h.Count() != 20000 || h.Mean() != sum/20000 {
		t.Fatalf("max %v count %d mean %v; want %v, 20000, %v", h.Max(), h.Count(), h.Mean(), all[len(all)-1], sum/20000)
	}
}

// Tiny, huge and negative durations land in the end buckets; an empty
// histogram answers 0.
func TestEdges(t *testing.T) {
	var h Histogram
	if h.Quantile(0.5) != 0 || h.Mean() != 0 {
		t.Fatal("an empty histogram is not 0")
	}
	h.Add(-time.Second)
	h.Add(10 * time.Nanosecond)
	h.Add(1000 * time.Hour)
	if h.Quantile(0) != 500*time.Nanosecond || h.Quantile(1) >= 1000*time.Hour || h.Max() != 1000*time.Hour {
		t.Fatalf("quantiles %v %v, max %v", h.Quantile(0), h.Quantile(1), h.Max())
	}
}

// Merging histograms equals adding every duration to one; the JSON form
// decodes to the same histogram.
func TestMergeAndJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var a, b, all Histogram
	for i := range 5000 {
		d := time.Duration(rng.Int64N(int64(time.Second)))
		if i%3 == 0 {
			a.Add(d)
		} else {
			b.Add(d)
		}
		all.Add(d)
	}
	a.Merge(&b)
	if !equal(&a, &all) {
		t.Fatal("a merge differs from adding everything to one")
	}
	js, err := json.Marshal(&a)
	if err != nil {
		t.Fatal(err)
	}
	var back Histogram
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if !equal(&back, &a) {
		t.Fatal("JSON round trip changed the histogram")
	}
}

func equal(a, b *Histogram) bool {
	if a.n != b.n || a.sum != b.sum || a.max != b.max || len(a.counts) != len(b.counts) {
		return false
	}
	for i, c := range a.counts {
		if b.counts[i] != c {
			return false
		}
	}
	return true
}

// A recorder's summary holds its steps and requests by operation and shard
// in order; summaries of several workers merge into the job's.
func TestRecorderSummaries(t *testing.T) {
	var r1, r2 Recorder
	r1.Step(time.Millisecond)
	r1.Request("pull", 1, 2*time.Millisecond)
	r1.Request("push", 0, 3*time.Millisecond)
	r1.Request("pull", 0, 4*time.Millisecond)
	r2.Step(5 * time.Millisecond)
	r2.Step(6 * time.Millisecond)
	r2.Request("pull", 1, 7*time.Millisecond)
	r2.Late(800 * time.Microsecond)
	r2.Late(3 * time.Millisecond)
	s := r1.Summary()
	var keys []Key
	for _, kh := range s.Requests {
		keys = append(keys, kh.Key)
	}
	if want := []Key{{"pull", 0}, {"pull", 1}, {"push", 0}}; !slices.Equal(keys, want) {
		t.Fatalf("keys %v, want %v", keys, want)
	}
	s.Merge(r2.Summary())
	if s.Steps != 3 || s.Wait.Count() != 3 || s.Wait.Max() != 6*time.Millisecond {
		t.Fatalf("merged: %d steps, %d waits, max %v", s.Steps, s.Wait.Count(), s.Wait.Max())
	}
	if p := s.Op("pull"); p.Count() != 3 || p.Max() != 7*time.Millisecond {
		t.Fatalf("pulls: %d, max %v", p.Count(), p.Max())
	}
	if len(s.Requests) != 3 || s.Requests[1].Hist.Count() != 2 {
		t.Fatalf("pull 1 merged: %+v", s.Requests)
	}
	if s.Late.Count() != 2 || s.Late.Max() != 3*time.Millisecond || s.Late.Mean() != 1900*time.Microsecond {
		t.Fatalf("timers' lateness merged: %d, max %v", s.Late.Count(), s.Late.Max())
	}
	// A summary from before Late (no "late" in its JSON) merges into one
	// with it, and the other way.
	var old Summary
	old.Merge(Summary{Steps: 1, Wait: &Histogram{}})
	old.Merge(s)
	if old.Late.Count() != 2 {
		t.Fatalf("lateness merged into an old summary: %d", old.Late.Count())
	}
}

// Malformed encodings are refused with an error, never a panic.
func TestUnmarshalRefuses(t *testing.T) {
	for _, in := range []string{`{"counts":{"x":1}}`, `{"counts":{"-1":1}}`, `{"counts":{"99999":1}}`, `{"sum_ns":-1}`, `[`} {
		var h Histogram
		if err := json.Unmarshal([]byte(in), &h); err == nil {
			t.Errorf("%s: no error", in)
		}
	}
}

func FuzzUnmarshalHistogram(f *testing.F) {
	var h Histogram
	h.Add(time.Millisecond)
	js, _ := json.Marshal(&h)
	f.Add(js)
	f.Add([]byte(`{"counts":{"5":3},"sum_ns":7,"max_ns":9}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Histogram
		if json.Unmarshal(b, &h) != nil {
			return
		}
		h.Quantile(0.5)
		h.Quantile(0.99)
		out, err := json.Marshal(&h)
		if err != nil {
			t.Fatal(err)
		}
		var back Histogram
		if err := json.Unmarshal(out, &back); err != nil || !equal(&back, &h) {
			t.Fatalf("round trip of %s: %v", out, err)
		}
	})
}

// Rate counts the steps that end inside the window where every worker runs
// past its warm-up: two workers at 10 and 20 steps a second make 30.
func TestRate(t *testing.T) {
	var a, b []int64
	for i := range int64(101) {
		a = append(a, i*100e6) // 10 a second for 10 s
	}
	for i := range int64(181) {
		b = append(b, 1e9+i*50e6) // 20 a second from 1 s to 10 s
	}
	if r := Rate([][]int64{a, b}, 0.1); math.Abs(r-30) > 0.5 {
		t.Fatalf("rate %v, want 30", r)
	}
	if r := Rate([][]int64{a, {}}, 0); math.Abs(r-10) > 0.2 {
		t.Fatalf("one worker: rate %v, want 10", r)
	}
	if r := Rate([][]int64{{5}}, 0); r != 0 {
		t.Fatalf("one step: rate %v, want 0", r)
	}
}
