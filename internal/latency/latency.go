// Package latency records durations in histograms whose buckets are 2%
// wide (so quantiles are good to 1%), that merge exactly and encode as
// small JSON: the load harness's barrier waits and push and pull times,
// gathered from many workers.
package latency

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
)

// growth is the ratio of a bucket's upper bound to its lower bound.
const growth = 1.02

// Bucket 0 holds durations under 1 µs; bucket i > 0 holds
// [growth^(i-1), growth^i) µs; the last, everything from about an hour up.
const buckets = 1 + 1100

var logGrowth = math.Log(growth)

func bucketOf(d time.Duration) int {
	us := float64(d) / float64(time.Microsecond)
	if us < 1 {
		return 0
	}
	return min(buckets-1, 1+int(math.Log(us)/logGrowth))
}

// middle is the duration a bucket stands for: its geometric middle.
func middle(i int) time.Duration {
	if i == 0 {
		return 500 * time.Nanosecond
	}
	return time.Duration(math.Pow(growth, float64(i)-0.5) * float64(time.Microsecond))
}

// Histogram counts durations. The zero value is empty and ready.
type Histogram struct {
	counts map[int]uint64
	n      uint64
	sum    time.Duration
	max    time.Duration
}

// Add counts d (a negative d counts as 0).
func (h *Histogram) Add(d time.Duration) {
	d = max(d, 0)
	if h.counts == nil {
		h.counts = map[int]uint64{}
	}
	h.counts[bucketOf(d)]++
	h.n++
	h.sum += d
	h.max = max(h.max, d)
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	if h.counts == nil {
		h.counts = map[int]uint64{}
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// Count is how many durations h holds.
func (h *Histogram) Count() uint64 { return h.n }

// Mean is their mean, 0 for none.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return h.sum / time.Duration(h.n)
}

// Max is the longest, exactly.
func (h *Histogram) Max() time.Duration { return h.max }

// Quantile is the q-quantile (0 <= q <= 1) to within a bucket: the middle
// of the bucket that holds the ceil(q*n)-th smallest duration, capped at the
// maximum; 0 for an empty histogram.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for _, i := range slices.Sorted(maps.Keys(h.counts)) {
		seen += h.counts[i]
		if seen >= rank {
			return min(middle(i), h.max)
		}
	}
	return h.max
}

// histogramJSON is a histogram's encoding: the bucket counts by index.
type histogramJSON struct {
	Counts map[string]uint64 `json:"counts"`
	Sum    int64             `json:"sum_ns"`
	Max    int64             `json:"max_ns"`
}

// MarshalJSON encodes h.
func (h *Histogram) MarshalJSON() ([]byte, error) {
	j := histogramJSON{Counts: map[string]uint64{}, Sum: int64(h.sum), Max: int64(h.max)}
	for i, c := range h.counts {
		j.Counts[strconv.Itoa(i)] = c
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes what MarshalJSON wrote, refusing bucket indexes out
// of range and sums or maxima that cannot be.
func (h *Histogram) UnmarshalJSON(b []byte) error {
	var j histogramJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	if j.Sum < 0 || j.Max < 0 {
		return errors.New("latency: a negative sum or maximum")
	}
	*h = Histogram{sum: time.Duration(j.Sum), max: time.Duration(j.Max)}
	for k, c := range j.Counts {
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 || i >= buckets {
			return fmt.Errorf("latency: bucket %q out of range", k)
		}
		if c == 0 {
			continue
		}
		if h.counts == nil {
			h.counts = map[int]uint64{}
		}
		h.counts[i] += c
		h.n += c
	}
	return nil
}

// Recorder gathers what one worker saw: per step, how long it waited on the
// parameter servers (for parameters, and for its push to be read), and each
// request's time by operation and shard. It is safe for concurrent use.
type Recorder struct {
	mu       sync.Mutex
	wait     Histogram
	late     Histogram
	requests map[Key]*Histogram
	steps    int64
	ends     []int64
}

// Key names a request histogram: an operation ("push", "pull") to a shard.
type Key struct {
	Op    string `json:"op"`
	Shard int    `json:"shard"`
}

// Step records a step, ending now, that waited wait on the parameter
// servers.
func (r *Recorder) Step(wait time.Duration) {
	now := time.Now().UnixNano()
	r.mu.Lock()
	r.wait.Add(wait)
	r.steps++
	r.ends = append(r.ends, now)
	r.mu.Unlock()
}

// Late records how late a timer the worker set (its step's compute, in the
// synthetic model) woke it: the scheduling the machine adds to a step.
func (r *Recorder) Late(d time.Duration) {
	r.mu.Lock()
	r.late.Add(d)
	r.mu.Unlock()
}

// Request records a request of op to shard that took d.
func (r *Recorder) Request(op string, shard int, d time.Duration) {
	r.mu.Lock()
	if r.requests == nil {
		r.requests = map[Key]*Histogram{}
	}
	k := Key{op, shard}
	h := r.requests[k]
	if h == nil {
		h = &Histogram{}
		r.requests[k] = h
	}
	h.Add(d)
	r.mu.Unlock()
}

// Summary is a Recorder's contents, as workers write them and the harness
// merges them.
type Summary struct {
	Steps    int64       `json:"steps"`
	Wait     *Histogram  `json:"wait"`
	Late     *Histogram  `json:"late,omitempty"` // timers' lateness (Recorder.Late)
	Requests []KeyedHist `json:"requests"`
	// Ends is when each step ended (Unix nanoseconds), in a worker's
	// summary; Merge leaves them out.
	Ends []int64 `json:"ends,omitempty"`
}

// KeyedHist is one request histogram of a Summary.
type KeyedHist struct {
	Key
	Hist *Histogram `json:"hist"`
}

// Summary copies what r holds, requests in order of operation and shard.
func (r *Recorder) Summary() Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := Summary{Steps: r.steps, Wait: &Histogram{}, Late: &Histogram{}, Ends: slices.Clone(r.ends)}
	s.Wait.Merge(&r.wait)
	s.Late.Merge(&r.late)
	for k, h := range r.requests {
		c := &Histogram{}
		c.Merge(h)
		s.Requests = append(s.Requests, KeyedHist{k, c})
	}
	slices.SortFunc(s.Requests, func(a, b KeyedHist) int {
		return cmp.Or(cmp.Compare(a.Op, b.Op), cmp.Compare(a.Shard, b.Shard))
	})
	return s
}

// Merge adds o's steps and histograms to s.
func (s *Summary) Merge(o Summary) {
	s.Steps += o.Steps
	if s.Wait == nil {
		s.Wait = &Histogram{}
	}
	if o.Wait != nil {
		s.Wait.Merge(o.Wait)
	}
	if o.Late != nil {
		if s.Late == nil {
			s.Late = &Histogram{}
		}
		s.Late.Merge(o.Late)
	}
	for _, kh := range o.Requests {
		i := slices.IndexFunc(s.Requests, func(x KeyedHist) bool { return x.Key == kh.Key })
		if i < 0 {
			s.Requests = append(s.Requests, KeyedHist{kh.Key, &Histogram{}})
			i = len(s.Requests) - 1
		}
		if kh.Hist != nil {
			s.Requests[i].Hist.Merge(kh.Hist)
		}
	}
}

// Op merges the request histograms of op over every shard.
func (s *Summary) Op(op string) *Histogram {
	h := &Histogram{}
	for _, kh := range s.Requests {
		if kh.Op == op && kh.Hist != nil {
			h.Merge(kh.Hist)
		}
	}
	return h
}

// WriteFile writes s to path as JSON, through a temporary file renamed into
// place, so that a reader never sees half of it.
func WriteFile(path string, s Summary) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("latency: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("latency: %w", err)
	}
	return nil
}

// ReadFile reads a summary WriteFile wrote.
func ReadFile(path string) (Summary, error) {
	var s Summary
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("latency: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("latency: %s: %w", path, err)
	}
	return s, nil
}

// Rate is the steps per second the workers whose step ends are given made
// together while all of them ran: over the window from the latest of their
// steps at fraction skip of each one's steps (the warm-up left out) to the
// earliest of their last steps, the steps that ended in it over its length.
// It is 0 when the window is empty.
func Rate(ends [][]int64, skip float64) float64 {
	var lo, hi int64 = math.MinInt64, math.MaxInt64
	for _, e := range ends {
		if len(e) == 0 {
			continue
		}
		lo = max(lo, e[int(skip*float64(len(e)-1))])
		hi = min(hi, e[len(e)-1])
	}
	if lo == math.MinInt64 || hi <= lo {
		return 0
	}
	n := 0
	for _, e := range ends {
		for _, t := range e {
			if t > lo && t <= hi {
				n++
			}
		}
	}
	return float64(n) / (float64(hi-lo) / 1e9)
}
