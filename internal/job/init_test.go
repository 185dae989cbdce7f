package job

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/downpour-ml/downpour/internal/checkpoint"
	"github.com/downpour-ml/downpour/models"
)

// synthSpec is a small synthetic job: three tensors, 1,000 parameters.
func synthSpec() Spec {
	s := Default()
	Presets["synthetic"](&s)
	s.Synthetic = models.SyntheticConfig{Params: 1000, NumTensors: 3}
	return s
}

// writeCkpt writes a checkpoint of tensors ts whose parameters count up
// from 1, and returns its path and parameters.
func writeCkpt(t *testing.T, dir, name string, ts []models.Tensor) (string, []float32) {
	t.Helper()
	p := make([]float32, models.TotalSize(ts))
	for i := range p {
		p[i] = float32(i + 1)
	}
	path := filepath.Join(dir, name)
	if err := checkpoint.Write(path, &checkpoint.Meta{Job: "a", Model: Synthetic, Tensors: ts}, p); err != nil {
		t.Fatal(err)
	}
	return path, p
}

// A job that starts from a checkpoint starts every tensor at the
// checkpoint's values, whatever the order of the checkpoint's tensors; a
// job without one starts from its seed.
func TestInitFrom(t *testing.T) {
	dir := t.TempDir()
	s := synthSpec()
	ts := s.Tensors()
	shuffled := []models.Tensor{ts[2], ts[0], ts[1]}
	path, p := writeCkpt(t, dir, "a.ckpt", shuffled)
	s.InitFrom = path
	if err := s.Resolve(); err != nil {
		t.Fatal(err)
	}
	if len(s.InitSHA256) != 64 {
		t.Fatalf("Resolve recorded the checkpoint's hash as %q", s.InitSHA256)
	}
	init, err := s.Initializer()
	if err != nil {
		t.Fatal(err)
	}
	offs := models.Offsets(shuffled)
	for i, ct := range shuffled {
		got := make([]float32, ct.Size())
		init(got, ct)
		if !slices.Equal(got, p[offs[i]:offs[i]+ct.Size()]) {
			t.Fatalf("tensor %s does not start at the checkpoint's values", ct.Name)
		}
	}
	seeded := synthSpec()
	init, err = seeded.Initializer()
	if err != nil {
		t.Fatal(err)
	}
	got, want := make([]float32, ts[0].Size()), make([]float32, ts[0].Size())
	init(got, ts[0])
	seeded.InitTensor(want, ts[0])
	if !slices.Equal(got, want) {
		t.Fatal("a job without --init-from does not start from its seed")
	}
}

// A checkpoint that is not the model's, cannot be read, or changed since
// the job resolved it, is refused, naming what is wrong.
func TestInitFromRefusals(t *testing.T) {
	dir := t.TempDir()
	base := synthSpec()
	ts := base.Tensors()
	good, _ := writeCkpt(t, dir, "good.ckpt", ts)
	reshaped := slices.Clone(ts)
	reshaped[1] = models.Tensor{Name: ts[1].Name, Shape: []int{ts[1].Size() - 1}}
	corrupt := filepath.Join(dir, "corrupt.ckpt")
	b, _ := os.ReadFile(good)
	b[len(b)-9] ^= 1
	os.WriteFile(corrupt, b, 0o644)
	for _, c := range []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "none.ckpt"), "no such file"},
		{"corrupt", corrupt, "data checksum mismatch"},
		{"reshaped", mustCkpt(t, dir, "reshaped.ckpt", reshaped), `tensor "` + ts[1].Name + `" is`},
		{"fewer tensors", mustCkpt(t, dir, "fewer.ckpt", ts[:2]), `has no tensor "` + ts[2].Name + `"`},
		{"more tensors", mustCkpt(t, dir, "more.ckpt", append(slices.Clone(ts), models.Tensor{Name: "extra", Shape: []int{2}})), `has tensor "extra"`},
		{"twice", mustCkpt(t, dir, "twice.ckpt", append(slices.Clone(ts), ts[0])), "twice"},
	} {
		s := synthSpec()
		s.InitFrom = c.path
		err := s.Resolve()
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
			t.Errorf("%s: %v, want an error naming the file and saying %q", c.name, err, c.want)
		}
	}
	s := synthSpec()
	s.InitFrom = corrupt
	if err := s.Resolve(); !errors.Is(err, checkpoint.ErrCorrupt) {
		t.Errorf("a corrupt checkpoint: %v, want ErrCorrupt", err)
	}
	// The file a shard reads must be the one the job resolved.
	s = synthSpec()
	s.InitFrom = good
	if err := s.Resolve(); err != nil {
		t.Fatal(err)
	}
	writeCkpt(t, dir, "good.ckpt", ts) // the same bytes: still the job's file
	if _, err := s.Initializer(); err != nil {
		t.Fatalf("the same file: %v", err)
	}
	// Zeros of the same shape: a whole-file CRC32C would not tell them
	// apart, since each part of the file carries its own CRC.
	p := make([]float32, models.TotalSize(ts))
	if err := checkpoint.Write(good, &checkpoint.Meta{Job: "b", Model: Synthetic, Tensors: ts}, p); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Initializer(); err == nil || !strings.Contains(err.Error(), "changed since the job started") {
		t.Fatalf("a file rewritten after the job started: %v", err)
	}
}

func mustCkpt(t *testing.T, dir, name string, ts []models.Tensor) string {
	path, _ := writeCkpt(t, dir, name, ts)
	return path
}

// A shard's blocks, made block by block (BlockInit), are the job's initial
// tensors' values bit for bit, for every model, in the order a shard makes
// them and out of it, without the tensors where their values are a stream.
func TestBlockInitGivesTheTensors(t *testing.T) {
	seq := Default()
	seq.Seq2Seq.SoftmaxBlocks = 3
	if err := seq.Resolve(); err != nil {
		t.Fatal(err)
	}
	gan := Default()
	Presets["gan"](&gan)
	gan.GAN.Noise, gan.GAN.GHidden, gan.GAN.DUnits, gan.GAN.DPieces = 10, 20, 12, 2
	gan.GOutBias = make([]float32, 784)
	for i := range gan.GOutBias {
		gan.GOutBias[i] = float32(i) / 1000
	}
	for _, s := range []Spec{seq, synthSpec(), gan} {
		p := Place(s.Tensors(), 37, 3)
		want := make([]float32, p.Size())
		for i, off := range models.Offsets(p.Tensors) {
			s.InitTensor(want[off:off+p.Tensors[i].Size()], p.Tensors[i])
		}
		for _, order := range []string{"by shard", "backwards"} {
			init, err := s.BlockInit(p)
			if err != nil {
				t.Fatal(err)
			}
			var blocks []Block
			for sh := range p.Shards {
				blocks = append(blocks, p.OnShard(sh)...)
			}
			if order == "backwards" {
				slices.Reverse(blocks)
			}
			got := make([]float32, p.Size())
			for _, b := range blocks {
				init(b, got[b.Offset:b.Offset+b.Len])
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%s, blocks %s: the blocks differ from the tensors", s.Model, order)
			}
		}
	}
}
