// Package rundir reads and writes what a run directory holds beside its
// metrics and checkpoints: while a run with an embedded cluster lives, the
// cluster's endpoints and an observer's credentials (so that 'downpour
// status --run DIR' and 'downpour dashboard --run DIR' can reach the job
// from another process), and a summary of a run that has ended.
package rundir

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/downpour-ml/downpour/internal/app/auth"
	"github.com/downpour-ml/downpour/internal/app/telemetry"
	"github.com/downpour-ml/downpour/internal/job"
)

// Endpoints say where a live run's job is: its name and its embedded
// cluster's NATS and etcd endpoints.
type Endpoints struct {
	Job  string   `json:"job"`
	NATS string   `json:"nats"`
	Etcd []string `json:"etcd"`
}

const (
	endpointsFile = "cluster/endpoints.json"
	observerFile  = "cluster/observer.creds"
)

// ErrNotLive is returned for a run directory whose run holds no endpoints:
// it has ended (or never had an embedded cluster).
var ErrNotLive = errors.New("the run is not running (or joined a cluster of its own)")

// Publish writes e and the observer's credentials into dir (readable by
// their owner only) for as long as the run lives; remove deletes them.
func Publish(dir string, e Endpoints, observer *auth.Creds) (remove func(), err error) {
	if observer == nil || observer.Role != auth.Observer {
		return nil, fmt.Errorf("rundir: publishing needs an observer's credentials")
	}
	b, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	ep, creds := filepath.Join(dir, endpointsFile), filepath.Join(dir, observerFile)
	if err := os.MkdirAll(filepath.Dir(ep), 0o700); err != nil {
		return nil, err
	}
	if err := observer.Write(creds); err != nil {
		return nil, err
	}
	// The endpoints last: a reader that finds them finds the credentials.
	tmp := ep + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		os.Remove(creds)
		return nil, err
	}
	if err := os.Rename(tmp, ep); err != nil {
		os.Remove(creds)
		return nil, err
	}
	return func() { os.Remove(ep); os.Remove(creds) }, nil
}

// Live reads the endpoints a live run in dir published, and the path of
// its observer's credentials; ErrNotLive when there are none.
func Live(dir string) (Endpoints, string, error) {
	var e Endpoints
	b, err := os.ReadFile(filepath.Join(dir, endpointsFile))
	if errors.Is(err, os.ErrNotExist) {
		return e, "", ErrNotLive
	}
	if err != nil {
		return e, "", err
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Job == "" || e.NATS == "" || len(e.Etcd) == 0 {
		return e, "", fmt.Errorf("%s: not a run's endpoints (%v)", filepath.Join(dir, endpointsFile), err)
	}
	return e, filepath.Join(dir, observerFile), nil
}

// Summary is what a run directory says of its run.
type Summary struct {
	Dir        string
	Spec       *job.Spec
	Last       *telemetry.Record     // the last training record, if any
	Eval       *telemetry.EvalRecord // the last evaluation, if any
	Evals      int
	Checkpoint string // the final checkpoint's path, "" if there is none
}

// Read summarises the run in dir from its job.json, metrics.jsonl and
// checkpoint.
func Read(dir string) (*Summary, error) {
	b, err := os.ReadFile(filepath.Join(dir, "job.json"))
	if err != nil {
		return nil, fmt.Errorf("%s is not a run directory: %w", dir, err)
	}
	spec, err := job.DecodeSpec(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "job.json"), err)
	}
	s := &Summary{Dir: dir, Spec: spec}
	rs, es, err := telemetry.ReadMetrics(filepath.Join(dir, "metrics.jsonl"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if len(rs) > 0 {
		s.Last = &rs[len(rs)-1]
	}
	if len(es) > 0 {
		s.Eval, s.Evals = &es[len(es)-1], len(es)
	}
	if ck := filepath.Join(dir, "checkpoint", "final.ckpt"); fileExists(ck) {
		s.Checkpoint = ck
	}
	return s, nil
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}

// Name names a job's default run directory: the job's name, or for a GAN
// or synthetic job left with the default name ("demo"), the model's.
func Name(spec *job.Spec) string {
	if spec.Name == job.Default().Name && (spec.Model == "gan" || spec.Model == job.Synthetic) {
		return spec.Model
	}
	return spec.Name
}

// Prepare makes the run directory: the default runs/<name>-<time> when
// out is empty, else *out, whose parent must exist. It must not hold an
// earlier run.
func Prepare(outp *string, name string) error {
	if *outp == "" {
		*outp = filepath.Join("runs", name+"-"+time.Now().Format("20060102-150405"))
		if err := os.MkdirAll("runs", 0o755); err != nil {
			return fmt.Errorf("creating the runs directory: %w", err)
		}
	}
	out := *outp
	parent := filepath.Dir(out)
	if st, err := os.Stat(parent); err != nil || !st.IsDir() {
		return fmt.Errorf("run directory parent %s does not exist: create it or choose another --out", parent)
	}
	if ents, err := os.ReadDir(out); err == nil && len(ents) > 0 {
		return fmt.Errorf("run directory %s already holds a run: choose another --out", out)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("creating run directory: %w", err)
	}
	return nil
}
