package job

import (
	"context"
	"errors"
	"math"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/models"
)

func etcd(t *testing.T) *clientv3.Client {
	t.Helper()
	e, err := embedded.StartEtcd(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli, err := Connect(context.Background(), []string{e.Config().AdvertiseClientUrls[0].String()}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestSpecValidate(t *testing.T) {
	d := Default()
	if err := d.Validate(); err != nil {
		t.Fatalf("default spec: %v", err)
	}
	// ssp with tasks is elastic: its shards bound the staleness by the
	// active ranks only.
	for _, c := range []struct {
		mode           string
		taskSteps      int64
		tasks, elastic bool
	}{{"sync", 50, false, false}, {"async", 50, true, false}, {"ssp", 50, true, true}, {"ssp", 0, false, false}} {
		s := Default()
		s.Mode, s.TaskSteps = c.mode, c.taskSteps
		if s.UsesTasks() != c.tasks || s.ShardConfig().Elastic != c.elastic {
			t.Errorf("%s with task steps %d: tasks %v, elastic %v", c.mode, c.taskSteps, s.UsesTasks(), s.ShardConfig().Elastic)
		}
	}
	for _, c := range []struct {
		mut  func(*Spec)
		says string
	}{
		{func(s *Spec) { s.Name = "" }, "job name"},
		{func(s *Spec) { s.Model = "gan" }, "gan: every size must be positive"},
		{func(s *Spec) { s.Model = "rbm" }, "model \"rbm\""},
		{func(s *Spec) { s.Seq2Seq.Hidden = 0 }, "positive"},
		{func(s *Spec) { s.Data = "synthetic:nope" }, "unknown synthetic task"},
		{func(s *Spec) { s.Data = "" }, "data"},
		{func(s *Spec) { s.Tokenizer = "moses" }, "tokenizer"},
		{func(s *Spec) { s.VocabMax = 2 }, "vocab max"},
		{func(s *Spec) { s.Steps = 0 }, "steps"},
		{func(s *Spec) { s.Workers = 0 }, "workers"},
		{func(s *Spec) { s.Shards = 2000 }, "ps shards"},
		{func(s *Spec) { s.BlockSize = 0 }, "block size"},
		{func(s *Spec) { s.Mode = "bogus" }, "mode"},
		{func(s *Spec) { s.Mode, s.Staleness = "ssp", -1 }, "staleness"},
		{func(s *Spec) { s.NFetch = 2 }, "need --mode async"},
		{func(s *Spec) { s.Mode, s.NPush = "async", 0 }, "n-push"},
		{func(s *Spec) { s.Optimizer.LR = -1 }, "learning rate"},
		{func(s *Spec) { s.Optimizer.Kind = "rmsprop" }, "optimizer"},
		{func(s *Spec) { s.NonFinite = "ignore" }, "non-finite"},
		{func(s *Spec) { s.CheckpointEvery = -1 }, "checkpoint"},
		{func(s *Spec) { s.Mode, s.TaskSteps, s.CheckpointEvery = "ssp", 0, 10 }, "checkpoints only when it hands its data out as tasks"},
		{func(s *Spec) { s.LogEvery = 0 }, "log every"},
	} {
		s := Default()
		c.mut(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("got %v, want an error saying %q", err, c.says)
		}
		if _, err := DecodeSpec(s.Encode()); err == nil {
			t.Errorf("DecodeSpec accepted an invalid spec (%s)", c.says)
		}
	}
	got, err := DecodeSpec(d.Encode())
	if err != nil || string(got.Encode()) != string(d.Encode()) {
		t.Fatalf("spec round trip: %v", err)
	}
}

func TestWaitSeesLaterPut(t *testing.T) {
	cli := etcd(t)
	ctx := context.Background()
	go func() {
		time.Sleep(50 * time.Millisecond)
		cli.Put(ctx, "/k/a", "1")
		cli.Put(ctx, "/k/b", "2")
		cli.Delete(ctx, "/k/a")
		cli.Put(ctx, "/k/c", "3")
	}()
	var seen map[string][]byte
	err := WaitPrefix(ctx, cli, "/k/", 10*time.Second, func(kvs map[string][]byte) bool {
		seen = kvs
		return len(kvs) == 2 && kvs["/k/c"] != nil
	})
	if err != nil || string(seen["/k/b"]) != "2" || seen["/k/a"] != nil {
		t.Fatalf("WaitPrefix: %v %v", err, seen)
	}
	v, err := Wait(ctx, cli, "/k/b", time.Second)
	if err != nil || string(v) != "2" {
		t.Fatalf("Wait on an existing key: %v %q", err, v)
	}
}

func TestWaitTimesOut(t *testing.T) {
	cli := etcd(t)
	start := time.Now()
	_, err := Wait(context.Background(), cli, "/never", 200*time.Millisecond)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("timed out after %v", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Wait(ctx, cli, "/never", time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
}

func TestConnectRefusesDeadEndpoint(t *testing.T) {
	start := time.Now()
	_, err := Connect(context.Background(), []string{"http://127.0.0.1:1"}, 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("gave up after %v", d)
	}
}

// Keys under a lease vanish when it is closed.
func TestLeaseCloseRemovesKeys(t *testing.T) {
	cli := etcd(t)
	ctx := context.Background()
	l, err := Grant(ctx, cli, 5)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/member", "x", clientv3.WithLease(l.ID)); err != nil {
		t.Fatal(err)
	}
	l.Close()
	r, err := cli.Get(ctx, "/member")
	if err != nil || len(r.Kvs) != 0 {
		t.Fatalf("member key survives its lease: %v %v", err, r.Kvs)
	}
	select {
	case <-l.Lost():
	default:
		t.Fatal("Lost not closed after Close")
	}
}

func TestPaperPreset(t *testing.T) {
	s := Default()
	Presets["paper"](&s)
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "batch 0 per worker") {
		t.Fatalf("a global batch not yet split: %v", err)
	}
	s.SplitBatch()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if s.Seq2Seq.Layers != 4 || s.Seq2Seq.Hidden != 1000 || s.Seq2Seq.Embed != 1000 || s.VocabMax != 160000 || s.TgtVocab != 80000 ||
		s.GlobalBatch != 128 || s.Batch != 64 || s.Optimizer.Kind != "sgd" || s.Optimizer.LR != 0.7 || s.Epochs != 7.5 ||
		s.HalveAfterEpochs != 5 || s.HalveEveryEpochs != 0.5 || s.ClipNorm != 5 || !s.Reverse || s.Seq2Seq.InitScale != 0.08 {
		t.Fatalf("paper preset %+v", s)
	}
}

// stallProxy forwards TCP connections to an address; while stalled, it
// holds back what flows in the directions it is told to.
type stallProxy struct {
	addr     string
	toServer atomic.Bool // hold requests
	toClient atomic.Bool // hold responses
}

func newStallProxy(t *testing.T, upstream string) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &stallProxy{addr: ln.Addr().String()}
	pipe := func(dst, src net.Conn, stalled *atomic.Bool) {
		defer dst.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			for stalled.Load() {
				time.Sleep(5 * time.Millisecond)
			}
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			go pipe(u, c, &p.toServer)
			go pipe(c, u, &p.toClient)
		}
	}()
	return p
}

// A lease is lost when etcd says so, not when the client stops hearing
// from etcd: with etcd's answers held back for longer than the TTL while
// etcd keeps the lease (as a new etcd leader does: it extends every lease),
// the client gives up keeping it alive, but the lease lives, and is kept
// alive again once etcd answers. Cut off both ways for longer than the TTL,
// it expires and is lost.
func TestLeaseLostOnlyWhenEtcdSaysSo(t *testing.T) {
	e, err := embedded.StartEtcd(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	p := newStallProxy(t, e.Config().ListenClientUrls[0].Host)
	ctx := context.Background()
	cli, err := Connect(ctx, []string{"http://" + p.addr}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	l, err := Grant(ctx, cli, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// etcd's answers are held back for 2.5 s; meanwhile another client
	// keeps the lease alive, as the extension of every lease by a new
	// leader does.
	direct, err := Connect(ctx, []string{e.Config().ListenClientUrls[0].String()}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	p.toClient.Store(true)
	for range 10 {
		if _, err := direct.KeepAliveOnce(ctx, l.ID); err != nil {
			t.Fatal(err)
		}
		time.Sleep(250 * time.Millisecond) // the client's keep-alive gives up after 1 s
	}
	p.toClient.Store(false)
	select {
	case <-l.Lost():
		t.Fatal("the lease was given up while etcd kept it alive")
	case <-time.After(3 * time.Second): // three TTLs with nobody else keeping it alive
	}
	r, err := cli.TimeToLive(ctx, l.ID)
	if err != nil || r.TTL < 0 { // -1: gone; 0: under a second left
		t.Fatalf("the lease is not alive: %v %+v", err, r)
	}

	p.toServer.Store(true)
	p.toClient.Store(true)
	time.Sleep(2500 * time.Millisecond) // etcd expires it after 1 s
	p.toServer.Store(false)
	p.toClient.Store(false)
	select {
	case <-l.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("an expired lease is still not lost 5 s after etcd is back")
	}
}

// The gan preset is the authors' recipe (github.com/goodfeli/adversarial,
// mnist.yaml): their simultaneous update on a global batch of 100, N(0, 1)
// noise, and the generator's output bias at the logit of the training
// pixels' means clipped at 1e-7, so an always-black corner pixel starts at
// logit(1e-7) = -16.1. With uniform noise and a 1e-3 clip (logit -6.9) the
// recipe collapsed (worker's TestGANRecipeDoesNotCollapse).
func TestGANPreset(t *testing.T) {
	s := Default()
	Presets["gan"](&s)
	if err := s.Resolve(); err != nil {
		t.Fatal(err)
	}
	if s.GAN.NoiseDist != models.Gaussian || !s.Simultaneous() || s.GANK != 1 || s.GlobalBatch != 100 || s.Batch != 50 ||
		s.Optimizer.Kind != "momentum" || s.Optimizer.LR != 0.1 || s.Optimizer.Momentum != 0.5 || s.Optimizer.MomentumFinal != 0.7 ||
		s.Optimizer.Schedule.Decay != 1.000004 || s.Optimizer.Schedule.Floor != 1e-6 {
		t.Fatalf("gan preset %+v", s)
	}
	// 50,000 training images at 100 an update: epoch 1 ends at update 500,
	// epoch 250 at 125,000.
	if s.Optimizer.RampStart != 500 || s.Optimizer.RampEnd != 125000 {
		t.Fatalf("momentum ramp over updates %d..%d", s.Optimizer.RampStart, s.Optimizer.RampEnd)
	}
	if want := float32(math.Log(1e-7 / (1 - 1e-7))); s.GOutBias[0] != want || s.GOutBias[783] != want {
		t.Fatalf("corner pixels' output bias %v, %v; want %v", s.GOutBias[0], s.GOutBias[783], want)
	}
	// A pixel at the digits' centre is bright often enough to be inside the
	// clip: its bias is the plain logit of its mean.
	m, err := s.OpenMNIST()
	if err != nil {
		t.Fatal(err)
	}
	var mean float64
	for _, img := range m.Train {
		mean += float64(img[14*28+14])
	}
	mean /= float64(len(m.Train))
	if want := float32(math.Log(mean / (1 - mean))); s.GOutBias[14*28+14] != want || mean < 0.1 {
		t.Fatalf("centre pixel (mean %.3f): bias %v, want %v", mean, s.GOutBias[14*28+14], want)
	}
}
