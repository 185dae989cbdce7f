package scale

import (
	"bufio"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/models"
)

// productFlops is the floating-point operations of one training step of a
// workload as the model's own GEMM calls make it
// (internal/kernel/gemm/testdata/products.txt, which models'
// TestStepProducts records from the step and checks).
func productFlops(t *testing.T, workload string) float64 {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "..", "..", "internal", "kernel", "gemm", "testdata", "products.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var total float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 7 || fs[0] != workload {
			continue
		}
		n := 1.0
		for _, s := range []string{fs[1], fs[4], fs[5], fs[6]} { // calls, m, n, k
			v, err := strconv.Atoi(s)
			if err != nil {
				t.Fatal(err)
			}
			n *= float64(v)
		}
		total += 2 * n
	}
	if total == 0 {
		t.Fatalf("no products of %s", workload)
	}
	return total
}

// The work a step's seats count adds up to the products W2's step runs,
// however the replica is laid out; the output layer's rows are counted
// once more for every chunk but the last; the bytes are the tensors' and
// the batch's rows'.
func TestStepWorkCountsTheStepsProducts(t *testing.T) {
	cfg := models.Seq2SeqConfig{SrcVocab: 16000, TgtVocab: 8000, Embed: 512, Hidden: 512, Layers: 4}
	b := &models.SeqBatch{Size: 128, SrcLen: 20, TgtLen: 20, Src: make([]int32, 2560), TgtIn: make([]int32, 2560), TgtOut: make([]int32, 2560)}
	for i := range b.Src {
		b.Src[i], b.TgtIn[i] = int32(i%1000), int32(i%300)
	}
	want := productFlops(t, "W2")
	for _, l := range [][2]int{{1, 1}, {2, 1}, {4, 1}} {
		plan, err := cfg.Plan(l[0], l[1])
		if err != nil {
			t.Fatal(err)
		}
		var got float64
		for _, w := range StepWork(cfg, plan, b) {
			got += w.LSTM + w.Output
		}
		if got != want {
			t.Fatalf("%d stages: %.6g operations a step, the step's products make %.6g", l[0], got, want)
		}
	}
	// The paper's shape in 4 slices: chunks of 3 time steps, 11 of 30 steps
	// the last chunk's (30 = 9 x 3 + 3: the last chunk is 3 steps).
	paper := models.Seq2SeqConfig{SrcVocab: 160000, TgtVocab: 80000, Embed: 1000, Hidden: 1000, Layers: 4, SoftmaxBlocks: 4}
	plan, err := paper.Plan(4, 4)
	if err != nil {
		t.Fatal(err)
	}
	pb := &models.SeqBatch{Size: 128, SrcLen: 25, TgtLen: 30, Src: make([]int32, 128*25), TgtIn: make([]int32, 128*30), TgtOut: make([]int32, 128*30)}
	for i := range pb.Src {
		pb.Src[i] = int32(i % 700)
	}
	ws := StepWork(paper, plan, pb)
	rows := 128.0 * 30
	if want := 2 * 1000 * 20000 * (3*rows + rows - 3*128); ws[4].Output != want || ws[7].Output != want {
		t.Fatalf("a slice's operations %.6g, want %.6g", ws[4].Output, want)
	}
	// Stage 0 pushes and pulls its layer 0 whole and the batch's rows.
	layer0 := 2 * float64(4*1000*(1000+1000)+4*1000) // encoder and decoder
	if want := 8 * (layer0 + 700*1000 + 1*1000); ws[0].PS != want {
		t.Fatalf("stage 0 moves %.6g bytes to and from the shards, want %.6g", ws[0].PS, want)
	}
	// Stage 1 sends its outputs up and its input's gradient down.
	if want := 2 * 128 * 55 * 1000 * 4.0; ws[1].Sent != want {
		t.Fatalf("stage 1 sends %.6g bytes, want %.6g", ws[1].Sent, want)
	}
}

// A cluster's step by hand: one stage and one slice (no wavefront to
// fill), then 4 stages, where the forward pass is the busiest stage's and
// a chunk of each of the others'; the shards' link carries every seat's
// bytes of every replica.
func TestPredictLayoutByHand(t *testing.T) {
	cfg := models.Seq2SeqConfig{SrcVocab: 500, TgtVocab: 400, Embed: 32, Hidden: 32, Layers: 4, SoftmaxBlocks: 2}
	b := &models.SeqBatch{Size: 8, SrcLen: 5, TgtLen: 6, Src: make([]int32, 40), TgtIn: make([]int32, 48), TgtOut: make([]int32, 48)}
	lm := LayoutModel{LSTM: 1e-9, Output: 2e-9}
	var m Model
	m.Shard.Byte, m.Servers.Byte = 1e-9, 2e-9
	for _, l := range [][2]int{{1, 1}, {4, 2}} {
		plan, err := cfg.Plan(l[0], l[1])
		if err != nil {
			t.Fatal(err)
		}
		c := LayoutCluster{Cfg: cfg, Plan: plan, Batch: b, Replicas: 3, Shards: 2, Cores: 2, ParallelEfficiency: 0.5, LinkBytesPerSec: 1e6, Chunk: 1}
		ws := StepWork(cfg, plan, b)
		got := lm.PredictLayout(m, c)
		chunks := 5.0 + 6
		var fwd, fwdMax, ps float64
		for s := range l[0] {
			f := ws[s].LSTMForward * 1e-9
			fwd, fwdMax = fwd+f, max(fwdMax, f)
		}
		for _, w := range ws {
			ps += w.PS
		}
		if want := fwd/chunks + (chunks-1)/chunks*fwdMax; math.Abs(got.Forward-want) > 1e-12*want {
			t.Errorf("%v: forward %v, want %v", l, got.Forward, want)
		}
		if want := ps * 3 / 2 / 2 / 1e6; math.Abs(got.ShardLink-want) > 1e-12*want {
			t.Errorf("%v: shard link %v, want %v", l, got.ShardLink, want)
		}
		if want := 2e-9 * ps * 3 / 2; math.Abs(got.NATSCPU-want) > 1e-12*want {
			t.Errorf("%v: NATS CPU %v, want %v", l, got.NATSCPU, want)
		}
		if got.Step != got.Forward+got.Slices+got.Backward+got.Hops+got.Transfer {
			t.Errorf("%v: the step %v is not its parts'", l, got.Step)
		}
	}
}

// A run whose recorded steps are not its data's batches, or whose roles
// lack a seat's CPU, is refused rather than fitted.
func TestLoadLayoutRunRefusesWhatIsNotTheRun(t *testing.T) {
	src := filepath.Join("..", "..", "..", "..", "docs", "layout", "results", "paper-2x2")
	copyRun := func(t *testing.T, edit func(name string, b []byte) []byte) string {
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "run"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"run/job.json", "run/metrics.jsonl", "roles.txt"} {
			b, err := os.ReadFile(filepath.Join(src, name))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, name), edit(name, b), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	same := func(_ string, b []byte) []byte { return b }
	r, err := LoadLayoutRun("run", copyRun(t, same))
	if err != nil || len(r.Steps) != 11 || len(r.Work) != 12 || len(r.CPU) != 4 || r.CPU[0] != 144.3 {
		t.Fatalf("the committed run: %d steps, %d works, CPU %v (%v)", len(r.Steps), len(r.Work), r.CPU, err)
	}
	otherTokens := func(name string, b []byte) []byte {
		if name == "run/metrics.jsonl" {
			return []byte(strings.Replace(string(b), `"tokens":3456`, `"tokens":3457`, 1))
		}
		return b
	}
	if _, err := LoadLayoutRun("run", copyRun(t, otherTokens)); err == nil || !strings.Contains(err.Error(), "target tokens") {
		t.Fatalf("a step of other tokens than its batch's: %v", err)
	}
	noSeat := func(name string, b []byte) []byte {
		if name == "roles.txt" {
			var keep []string
			for _, l := range strings.Split(string(b), "\n") {
				if !strings.HasPrefix(l, "seat-1 ") {
					keep = append(keep, l)
				}
			}
			return []byte(strings.Join(keep, "\n"))
		}
		return b
	}
	if _, err := LoadLayoutRun("run", copyRun(t, noSeat)); err == nil || !strings.Contains(err.Error(), "3 seats' CPU of 4") {
		t.Fatalf("roles without a seat: %v", err)
	}
}
