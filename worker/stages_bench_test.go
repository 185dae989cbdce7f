package worker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/testenv"
	"github.com/downpour-ml/downpour/paramserver"
)

// stagedJob is one replica of a W2 job, laid out (stages, slices) or as
// one worker (0, 0), against its own 2 shards on an in-process NATS server,
// each seat a trainer of its own as a worker runs it.
type stagedJob struct {
	name     string
	trainers []trainer
	tokens   []int // per step of the stream, target tokens
	step     int64
}

// benchSpec is W2 (4 layers of 512, vocabularies 16,000 and 8,000, the
// softmax in 4 blocks) on the generated corpus, batch 128, sync, 2 shards.
func benchSpec(name string, stages, slices int) *job.Spec {
	s := job.Default()
	s.Name, s.Workers, s.Shards, s.Mode, s.Batch = name, 1, 2, job.Sync, 128
	s.Data, s.VocabMax, s.TgtVocab, s.HeldOut = "synthetic:wmt", 16000, 8000, 0
	s.Seq2Seq.Embed, s.Seq2Seq.Hidden, s.Seq2Seq.Layers, s.Seq2Seq.SoftmaxBlocks = 512, 512, 4, 4
	if testing.Short() { // (CI: that the benchmark runs; its figures mean nothing)
		s.Seq2Seq.Embed, s.Seq2Seq.Hidden, s.Batch = 64, 64, 16
	}
	s.Stages, s.SoftmaxSlices = stages, slices
	s.Optimizer, s.LogEvery, s.EvalEvery = job.DefaultOptimizer("sgd", 0.1), 1000, 0
	return &s
}

// Every shard and every seat has a connection of its own, as the roles of
// a job do: one connection shared by all would carry every seat's pulls and
// activations at once, past the server's pending limit for one client (64
// MiB), which then drops it as a slow consumer and the messages with it.
func newStagedJob(b *testing.B, srv *server.Server, stages, slices int) *stagedJob {
	name := fmt.Sprintf("w2-s%dk%d", stages, slices)
	spec := benchSpec(name, stages, slices)
	if err := spec.Resolve(); err != nil {
		b.Fatal(err)
	}
	p := job.Place(spec.Tensors(), spec.BlockSize, spec.Shards)
	cfg := spec.ShardConfig()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i := range spec.Shards {
		init, err := spec.BlockInit(p)
		if err != nil {
			b.Fatal(err)
		}
		sh := paramserver.NewShard(cfg, p.OnShard(i), init)
		svc, err := paramserver.Serve(testenv.Conn(b, srv.ClientURL()), sh, paramserver.ServiceConfig{Job: name, Shard: i, Placement: p.Version, Log: quiet})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(svc.Close)
	}
	j := &stagedJob{name: name}
	for rank := range spec.Ranks() {
		wcfg := Config{NATS: testenv.Conn(b, srv.ClientURL()), Log: quiet}
		wcfg.defaults()
		a := job.Assignment{Rank: rank, Epoch: 1, DataShard: 0}
		var t trainer
		var err error
		if spec.LaidOut() {
			t, err = newSeatTrainer(wcfg, spec, a, p)
		} else {
			t, err = newSeq2SeqTrainer(wcfg, spec, a, p)
		}
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(t.close)
		j.trainers = append(j.trainers, t)
	}
	d, err := spec.OpenData()
	if err != nil {
		b.Fatal(err)
	}
	for step := range int64(1000) {
		bt, err := d.Batch(spec.Seed, 0, step, spec.Batch)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for _, y := range bt.TgtOut {
			if y >= 0 {
				n++
			}
		}
		j.tokens = append(j.tokens, n)
	}
	return j
}

// run runs n steps of every seat at once, and returns the target tokens
// they trained on.
func (j *stagedJob) run(b *testing.B, n int) int {
	tokens := 0
	for range n {
		s := at{Shard: 0, Data: j.step, N: j.step}
		var wg sync.WaitGroup
		errs := make([]error, len(j.trainers))
		for i, t := range j.trainers {
			wg.Go(func() { errs[i] = t.step(context.Background(), s) })
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		tokens += j.tokens[j.step]
		j.step++
	}
	return tokens
}

// BenchmarkStages trains W2 (4 layers of 512, batch 128, the softmax in 4
// vocabulary blocks, sync, 2 shards, a NATS server in the process, each
// role on a connection of its own) as one worker and as
// one replica laid out over 1, 2 and 4 stages with one softmax slice, and
// over 4 stages and 4 slices (the paper's layout), side by side: each
// iteration runs the same steps of each layout in turn. It reports each
// layout's median tokens/s and its ratio of step time to the one-worker
// replica's. On 2 cores a pipeline adds no cores: this is the layout's
// overhead (the messages between seats, each seat's own transfer, waits
// the wavefront does not hide). With -short, one step each of a narrow
// model, no warm-up: it checks that the benchmark runs.
func BenchmarkStages(b *testing.B) {
	srv := testenv.NATS(b, 0)
	layouts := []struct{ stages, slices int }{{0, 0}, {1, 1}, {2, 1}, {4, 1}, {4, 4}}
	jobs := make([]*stagedJob, len(layouts))
	for i, l := range layouts {
		jobs[i] = newStagedJob(b, srv, l.stages, l.slices)
	}
	steps := 2
	if testing.Short() {
		steps = 1
	} else {
		for _, j := range jobs {
			j.run(b, 1) // warm-up: the first pulls, the seats' hellos
		}
	}
	times := make([][]float64, len(jobs)) // seconds per token
	for b.Loop() {
		for i, j := range jobs {
			start := time.Now()
			n := j.run(b, steps)
			times[i] = append(times[i], time.Since(start).Seconds()/float64(n))
		}
	}
	base := medianF(times[0])
	for i, l := range layouts {
		name := "one_worker"
		if l.stages > 0 {
			name = fmt.Sprintf("s%dk%d", l.stages, l.slices)
		}
		b.ReportMetric(1/medianF(times[i]), "tokens/s_"+name)
		if i > 0 {
			b.ReportMetric(medianF(times[i])/base, "ratio_"+name)
		}
	}
}

func medianF(xs []float64) float64 { return slices.Sorted(slices.Values(xs))[len(xs)/2] }
