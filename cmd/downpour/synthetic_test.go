package main

import (
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/worker"
)

// A sync job of the synthetic load model (the scale harness's) ends with the
// parameters of a one-process computation, bit for bit: 3 workers, 2 shards,
// tensors over several blocks, and a step time, so that the transfers of a
// step overlap the next step's "forward pass" as they do in the harness.
func TestSyntheticSyncMatchesOneProcess(t *testing.T) {
	out := filepath.Join(t.TempDir(), "run")
	got, meta := trainRun(t, out, "--model", "synthetic", "--workers", "3", "--ps-shards", "2", "--steps", "12",
		"--synthetic-params", "10007", "--synthetic-tensors", "3", "--block-size", "1500", "--step-ms", "6",
		"--optimizer", "momentum", "--lr", "0.05", "--log-every", "4", "--job", "syn")
	spec, err := job.DecodeSpec(meta.Config)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Model != job.Synthetic || spec.Workers != 3 || spec.Synthetic != (models.SyntheticConfig{Params: 10007, NumTensors: 3, StepMs: 6}) {
		t.Fatalf("ran %s with %d workers, %+v", spec.Model, spec.Workers, spec.Synthetic)
	}
	ref := worker.NewSyntheticReference(spec)
	first := ref.Step(0)
	for step := int64(1); step < spec.Steps; step++ {
		ref.Step(step)
	}
	if !slices.Equal(ref.Params(), got) {
		diff := 0
		for i := range got {
			if i >= len(ref.Params()) || got[i] != ref.Params()[i] {
				diff++
			}
		}
		t.Fatalf("%d of %d parameters differ from the one-process reference", diff, len(got))
	}
	rs := readMetrics(t, filepath.Join(out, "metrics.jsonl"))
	// Records at steps 1, 5, 9 and the last, each over the examples of its
	// steps; the first is the first step's mean loss.
	var steps []int64
	for _, r := range rs {
		steps = append(steps, r.Step)
	}
	if !slices.Equal(steps, []int64{1, 5, 9, 12}) || rs[0].Tokens != 3*int64(spec.Batch) || rs[1].Tokens != 3*4*int64(spec.Batch) ||
		math.Abs(rs[0].Loss-first) > 1e-9*first || !(rs[3].Loss < rs[0].Loss/2) {
		t.Fatalf("metrics %+v (first step's loss %v)", rs, first)
	}
}

// A job started from another's final checkpoint (--init-from) starts at its
// parameters, whatever its seed and shard count, and then trains as the
// one-process computation from there does, bit for bit. A checkpoint of
// another shape is refused before anything starts, naming the tensor.
func TestInitFromCheckpoint(t *testing.T) {
	dir := t.TempDir()
	common := []string{"--model", "synthetic", "--workers", "2", "--synthetic-params", "5003", "--synthetic-tensors", "2",
		"--block-size", "1000", "--step-ms", "0", "--log-every", "2"}
	first, _ := trainRun(t, filepath.Join(dir, "a"), append(common, "--ps-shards", "2", "--steps", "4", "--job", "a")...)
	ckpt := filepath.Join(dir, "a", "checkpoint", "final.ckpt")
	got, meta := trainRun(t, filepath.Join(dir, "b"), append(common, "--ps-shards", "3", "--steps", "5", "--seed", "9",
		"--optimizer", "momentum", "--lr", "0.05", "--init-from", ckpt, "--job", "b")...)
	spec, err := job.DecodeSpec(meta.Config)
	if err != nil {
		t.Fatal(err)
	}
	if spec.InitFrom != ckpt || len(spec.InitSHA256) != 64 {
		t.Fatalf("the job records init-from %q, hash %q", spec.InitFrom, spec.InitSHA256)
	}
	ref := worker.NewSyntheticReference(spec)
	if !slices.Equal(ref.Params(), first) {
		t.Fatal("the reference does not start at the checkpoint's parameters")
	}
	for step := range spec.Steps {
		ref.Step(step)
	}
	if !slices.Equal(ref.Params(), got) {
		t.Fatal("a job started from a checkpoint differs from the one-process computation started there")
	}
	code, stdout, stderr := runCmd(t, time.Minute, "train", "--out", filepath.Join(dir, "c"), "--model", "synthetic",
		"--synthetic-params", "5004", "--synthetic-tensors", "2", "--init-from", ckpt, "--job", "c")
	if code == 0 || !strings.Contains(stderr, "--init-from "+ckpt+": tensor") {
		t.Fatalf("a checkpoint of another shape: exit %d\n%s%s", code, stdout, stderr)
	}
}
