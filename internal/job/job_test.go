package job

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/embedded"
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
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if s.Seq2Seq.Layers != 4 || s.Seq2Seq.Hidden != 1000 || s.Seq2Seq.Embed != 1000 || s.VocabMax != 160000 || s.TgtVocab != 80000 ||
		s.Batch != 128 || s.Optimizer.Kind != "sgd" || s.Optimizer.LR != 0.7 || s.Epochs != 7.5 ||
		s.HalveAfterEpochs != 5 || s.HalveEveryEpochs != 0.5 || s.ClipNorm != 5 || !s.Reverse || s.Seq2Seq.InitScale != 0.08 {
		t.Fatalf("paper preset %+v", s)
	}
}
