package rundir

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/downpour-ml/downpour/internal/app/auth"
	"github.com/downpour-ml/downpour/internal/job"
)

// A live run's endpoints and observer credentials are readable by their
// owner only, read back as written, and gone once removed.
func TestPublishAndLive(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := Live(dir); !errors.Is(err, ErrNotLive) {
		t.Fatalf("before publishing: %v", err)
	}
	obs, err := auth.New("j", auth.Observer)
	if err != nil {
		t.Fatal(err)
	}
	worker, _ := auth.New("j", auth.Worker)
	want := Endpoints{Job: "j", NATS: "nats://127.0.0.1:4222", Etcd: []string{"http://127.0.0.1:2379"}}
	if _, err := Publish(dir, want, worker); err == nil {
		t.Fatal("published a worker's credentials")
	}
	remove, err := Publish(dir, want, obs)
	if err != nil {
		t.Fatal(err)
	}
	got, credsPath, err := Live(dir)
	if err != nil || got.Job != want.Job || got.NATS != want.NATS || len(got.Etcd) != 1 || got.Etcd[0] != want.Etcd[0] {
		t.Fatalf("Live: %+v, %v", got, err)
	}
	for _, p := range []string{credsPath, filepath.Join(dir, endpointsFile)} {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm()&0o077 != 0 {
			t.Fatalf("%s: %v, mode %v", p, err, st.Mode())
		}
	}
	if c, err := auth.Read(credsPath); err != nil || c.Role != auth.Observer || c.Public() != obs.Public() {
		t.Fatalf("the observer's credentials read back as %v, %v", c, err)
	}
	remove()
	if _, _, err := Live(dir); !errors.Is(err, ErrNotLive) {
		t.Fatalf("after removing: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, endpointsFile), []byte(`{"job":"j"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Live(dir); err == nil || errors.Is(err, ErrNotLive) {
		t.Fatalf("endpoints without servers: %v", err)
	}
}

// Read summarises a run directory from its files; a directory without a
// job is not a run directory.
func TestRead(t *testing.T) {
	dir := t.TempDir()
	if _, err := Read(dir); err == nil {
		t.Fatal("an empty directory read as a run")
	}
	spec := job.Default()
	write := func(name, body string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("job.json", string(spec.Encode()))
	s, err := Read(dir)
	if err != nil || s.Spec.Name != "demo" || s.Last != nil || s.Eval != nil || s.Checkpoint != "" {
		t.Fatalf("a run with no records: %+v, %v", s, err)
	}
	write("metrics.jsonl", `{"kind":"train","step":10,"loss":2}
{"kind":"eval","step":10,"bleu":5}
{"kind":"train","step":20,"loss":1}
{"kind":"eval","step":20,"bleu":9}
`)
	write("checkpoint/final.ckpt", "x")
	s, err = Read(dir)
	if err != nil || s.Last.Step != 20 || s.Last.Loss != 1 || s.Evals != 2 || s.Eval.BLEU != 9 || s.Checkpoint != filepath.Join(dir, "checkpoint", "final.ckpt") {
		t.Fatalf("summary %+v, %v", s, err)
	}
	write("metrics.jsonl", "not json\n")
	if _, err := Read(dir); err == nil {
		t.Fatal("corrupt metrics read")
	}
}
