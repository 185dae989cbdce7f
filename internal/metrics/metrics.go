// Package metrics holds the Prometheus metrics every downpour role serves
// (on /metrics of its --http address) and the hooks that feed them. The
// metrics are process-wide, as Prometheus clients' are: a process running
// several roles (downpour train) tells them apart by their labels.
package metrics

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/shard"
)

// Registry holds every downpour metric, the Go runtime's and the process's.
var Registry = prometheus.NewRegistry()

// latency buckets: a push or pull message takes from a fraction of a
// millisecond (a small block set on loopback) to seconds (a held pull).
var latency = prometheus.ExponentialBuckets(0.0005, 2, 14) // 0.5 ms .. 4 s

var (
	// Workers.
	WorkerSteps = counterVec("downpour_worker_steps_total", "Training steps a worker has finished.", "job", "rank")
	WorkerLoss  = gaugeVec("downpour_worker_loss", "A worker's mean training loss over its last step (per target token; GAN: the discriminator's).", "job", "rank")
	StepSeconds = histogramVec("downpour_worker_step_seconds", "Wall time of a worker's training step: compute, and the push and pull it waits for.",
		prometheus.ExponentialBuckets(0.001, 2, 16), "job", "rank")
	RequestSeconds = histogramVec("downpour_client_request_seconds", "Time from sending a push or pull message (op pushpull: a push that brings the next step's parameters back) to a shard to its reply, resends included.",
		latency, "job", "op", "shard")
	RequestBytes = counterVec("downpour_client_payload_bytes_total", "Bytes of parameters and gradients moved by pushes and pulls, by shard.", "job", "op", "shard")

	SeatBytes   = counterVec("downpour_seat_sent_bytes_total", "Bytes a seat of a model replica sent to the replica's other seats (activations, gradients, softmax statistics).", "job", "replica", "seat")
	SeatWait    = counterVec("downpour_seat_wait_seconds_total", "Time a seat of a model replica spent waiting for the other seats' messages (the pipeline's bubble, and the seats' imbalance).", "job", "replica", "seat")
	SeatDropped = counterVec("downpour_seat_steps_dropped_total", "Steps a seat of a model replica dropped because the replica lost them (a seat died, rejoined or sent what could not be used; async and ssp), each formed again and retried.", "job", "replica", "seat")
	SeatErrors  = counterVec("downpour_seat_errors_total", "Messages from other seats of its replica that a seat could not use, by kind (malformed, bad_sender, lost, out_of_order, reconnect, rejoined, fenced).", "job", "kind")

	// Shards.
	ShardLag = histogramVec("downpour_ps_clock_lag_steps", "At each accepted push, how many steps its rank is behind the fastest active rank (ssp, async; 0 in sync mode).",
		[]float64{0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64}, "job", "shard")
	ShardPushes   = counterVec("downpour_ps_pushes_total", "Pushes a shard accepted (resends included).", "job", "shard")
	ShardRefused  = counterVec("downpour_ps_refused_total", "Messages a shard refused, by error kind.", "job", "shard", "kind")
	SnapshotTime  = histogramVec("downpour_ps_snapshot_seconds", "Time to write and sync a shard's snapshot (checkpoint) file.", prometheus.ExponentialBuckets(0.001, 2, 16), "job", "shard")
	SnapshotBytes = gaugeVec("downpour_ps_snapshot_bytes", "Size of a shard's last snapshot file.", "job", "shard")

	// The job, as the coordinator's collector sees it.
	JobStep        = gaugeVec("downpour_job_step", "The last step every rank has reported.", "job")
	JobLoss        = gaugeVec("downpour_job_loss", "Mean training loss over the ranks, at the last reported step.", "job")
	JobStepsPerSec = gaugeVec("downpour_job_steps_per_second", "Steps per second between the last two reports.", "job")
	JobEval        = gaugeVec("downpour_job_eval", "The last evaluation's values (held-out loss, BLEU, exact match; GAN: the Parzen estimate).", "job", "metric")

	// Security.
	NATSRefused = counterVec("downpour_nats_refused_total", "Clients the embedded NATS server refused (authentication) and messages or subscriptions beyond a client's permissions (publish, subscribe).", "kind")
	EtcdRefused = counterVec("downpour_etcd_refused_total", "Requests the embedded etcd refused: a failed or missing login (authentication), a key beyond the user's role (permission).", "kind")

	StoreRetries = counter("downpour_store_retries_total", "Calls to the job's store (etcd) tried again after a transient failure: an election, a timed-out request, a lost member.")

	// Leases.
	LeaseRenewals = counter("downpour_lease_renewals_total", "etcd lease keep-alives answered, over every lease of this process.")
	LeasesLost    = counter("downpour_leases_lost_total", "Leases this process lost (expired, revoked or unreachable for too long).")
)

func counter(name, help string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	Registry.MustRegister(c)
	return c
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	Registry.MustRegister(c)
	return c
}

func gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
	Registry.MustRegister(g)
	return g
}

func histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	Registry.MustRegister(h)
	return h
}

func init() {
	Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), conns)
	for kind, n := range map[string]func(shard.Passes) int64{
		"count": func(p shard.Passes) int64 { return p.Count },
		"index": func(p shard.Passes) int64 { return p.Index },
		"held":  func(p shard.Passes) int64 { return p.Held },
	} {
		Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "downpour_corpus_passes_total",
			Help:        "Passes this process made over corpus files, by what for: count (the coordinator's summary: two passes), index (a data shard's lines), held (the held-out pairs).",
			ConstLabels: prometheus.Labels{"kind": kind}}, func() float64 { return float64(n(shard.PassCounts())) }))
	}
	Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "downpour_corpus_read_bytes_total",
		Help: "Bytes this process read in passes over corpus files."}, func() float64 { return float64(shard.PassCounts().Bytes) }))
}

// Handler serves the registry in Prometheus's text format.
func Handler() http.Handler {
	return promhttp.HandlerFor(Registry, promhttp.HandlerOpts{Registry: Registry})
}

// Traffic is what a NATS connection has sent and received.
type Traffic struct{ InMsgs, OutMsgs, InBytes, OutBytes uint64 }

func (a Traffic) add(b Traffic) Traffic {
	return Traffic{InMsgs: a.InMsgs + b.InMsgs, OutMsgs: a.OutMsgs + b.OutMsgs, InBytes: a.InBytes + b.InBytes, OutBytes: a.OutBytes + b.OutBytes}
}

// A TrafficReader reads a connection's counts so far and whether it is
// closed (its counts are final).
type TrafficReader func() (t Traffic, closed bool)

// connStats reports the bytes and messages of the connections Watch was
// given, by role.
type connStats struct {
	mu    sync.Mutex
	conns map[*TrafficReader]string
	gone  map[string]Traffic // closed connections' last counts, by role
}

var conns = &connStats{conns: map[*TrafficReader]string{}, gone: map[string]Traffic{}}

var (
	bytesDesc = prometheus.NewDesc("downpour_nats_bytes_total", "Bytes a role sent to and received from NATS.", []string{"role", "direction"}, nil)
	msgsDesc  = prometheus.NewDesc("downpour_nats_messages_total", "Messages a role sent to and received from NATS.", []string{"role", "direction"}, nil)
)

func (c *connStats) Describe(ch chan<- *prometheus.Desc) { ch <- bytesDesc; ch <- msgsDesc }

func (c *connStats) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	sum := map[string]Traffic{}
	for role, st := range c.gone {
		sum[role] = st
	}
	for read, role := range c.conns {
		st, closed := (*read)()
		if closed {
			delete(c.conns, read)
			c.gone[role] = c.gone[role].add(st)
		}
		sum[role] = sum[role].add(st)
	}
	c.mu.Unlock()
	for role, st := range sum {
		ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(st.OutBytes), role, "out")
		ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(st.InBytes), role, "in")
		ch <- prometheus.MustNewConstMetric(msgsDesc, prometheus.CounterValue, float64(st.OutMsgs), role, "out")
		ch <- prometheus.MustNewConstMetric(msgsDesc, prometheus.CounterValue, float64(st.InMsgs), role, "in")
	}
}

// Watch counts a NATS connection's traffic, read by read, under role
// ("worker", "ps", "coordinator"): connections of one role add up. (The
// package reads counts rather than a *nats.Conn so that every role may
// import it without linking the NATS client.)
func Watch(read TrafficReader, role string) {
	conns.mu.Lock()
	conns.conns[&read] = role
	conns.mu.Unlock()
}

// Shard is the observer (a paramserver.Observer) of shard of job.
func Shard(job string, shard int) *ShardObserver {
	s := strconv.Itoa(shard)
	return &ShardObserver{job: job, shard: s,
		lag: ShardLag.WithLabelValues(job, s), pushes: ShardPushes.WithLabelValues(job, s),
		snapTime: SnapshotTime.WithLabelValues(job, s), snapBytes: SnapshotBytes.WithLabelValues(job, s)}
}

// ShardObserver counts a shard's refusals, pushes and snapshots.
type ShardObserver struct {
	job, shard string
	lag        prometheus.Observer
	pushes     prometheus.Counter
	snapTime   prometheus.Observer
	snapBytes  prometheus.Gauge
}

// Refused counts a message refused with k.
func (o *ShardObserver) Refused(k wire.Kind) {
	ShardRefused.WithLabelValues(o.job, o.shard, k.String()).Inc()
}

// Pushed counts an accepted push from a rank lag steps behind the fastest.
func (o *ShardObserver) Pushed(lag int64) { o.pushes.Inc(); o.lag.Observe(float64(lag)) }

// SnapshotWritten records a snapshot's write time and size.
func (o *ShardObserver) SnapshotWritten(d time.Duration, bytes int64) {
	o.snapTime.Observe(d.Seconds())
	o.snapBytes.Set(float64(bytes))
}

// Requests records one job's client requests: for each, of kind op (push,
// pull or pushpull) to a shard, how long it took and how many bytes of
// floats it carried. Each op and shard's series is looked up once: in a
// CPU profile of 64 workers, the label lookup at every message was two
// thirds of recording it.
type Requests struct {
	job    string
	mu     sync.Mutex
	series map[requestKey]requestSeries
}

type requestKey struct {
	op    string
	shard int
}

type requestSeries struct {
	seconds prometheus.Observer
	bytes   prometheus.Counter
}

// NewRequests returns job's request recorder.
func NewRequests(job string) *Requests {
	return &Requests{job: job, series: map[requestKey]requestSeries{}}
}

// Record records a request.
func (r *Requests) Record(op string, shard int, d time.Duration, bytes int) {
	k := requestKey{op, shard}
	r.mu.Lock()
	s, ok := r.series[k]
	if !ok {
		sh := strconv.Itoa(shard)
		s = requestSeries{RequestSeconds.WithLabelValues(r.job, op, sh), RequestBytes.WithLabelValues(r.job, op, sh)}
		r.series[k] = s
	}
	r.mu.Unlock()
	s.seconds.Observe(d.Seconds())
	s.bytes.Add(float64(bytes))
}
