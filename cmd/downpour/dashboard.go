package main

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/coordinator/status"
	"github.com/downpour-ml/downpour/internal/app/rundir"
	"github.com/downpour-ml/downpour/internal/app/telemetry"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/internal/metrics"
)

// web is the dashboard: a page and its script and style, served as they
// are (no build step).
//
//go:embed web
var web embed.FS

// dashboard serves a role's HTTP address: /metrics for Prometheus, and a
// page that shows the job (status from etcd and the shards) and, where the
// process has the run directory (train, coordinator), its progress, curves,
// latest sample grid and latest translations. Everything is read-only.
type dashboard struct {
	job    string
	role   string
	cli    *etcdstore.Client
	nc     *nats.Conn
	runDir string // "" where this role has none
	// stepsPerEpoch sets the curves' x axis (0: steps).
	stepsPerEpoch float64

	mu    sync.Mutex // guards drawn
	drawn time.Time  // when the curves were last drawn from metrics.jsonl
}

func (d *dashboard) routes() *http.ServeMux {
	mux := http.NewServeMux()
	static, _ := fs.Sub(web, "web")
	mux.Handle("GET /metrics", metrics.Handler())
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		b, _ := fs.ReadFile(static, "index.html")
		w.Write(b)
	})
	mux.HandleFunc("GET /api/status", d.status)
	mux.HandleFunc("GET /api/progress", d.progress)
	mux.HandleFunc("GET /plot/{name}", d.plot)
	mux.HandleFunc("GET /samples/latest.png", func(w http.ResponseWriter, r *http.Request) { d.latest(w, r, "samples", ".png") })
	mux.HandleFunc("GET /translations/latest.txt", func(w http.ResponseWriter, r *http.Request) { d.latest(w, r, "translations", ".txt") })
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// status is the job as downpour status reads it, with this role's name.
func (d *dashboard) status(w http.ResponseWriter, r *http.Request) {
	if d.cli == nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"role": d.role, "job": d.job,
			"error": "the run is not running: this page shows what its run directory holds"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	st, err := status.Read(ctx, d.cli.Job(d.job), d.nc)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"role": d.role, "job": d.job, "error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Role string `json:"role"`
		*status.Report
	}{d.role, st})
}

// progress is the run's last training and evaluation records.
func (d *dashboard) progress(w http.ResponseWriter, r *http.Request) {
	if d.runDir == "" {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "this role has no run directory"})
		return
	}
	rs, es, err := telemetry.ReadMetrics(filepath.Join(d.runDir, "metrics.jsonl"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		return
	}
	out := struct {
		RunDir  string                `json:"run_dir"`
		Records int                   `json:"records"`
		Last    *telemetry.Record     `json:"last"`
		Eval    *telemetry.EvalRecord `json:"eval"`
	}{RunDir: d.runDir, Records: len(rs)}
	if len(rs) > 0 {
		out.Last = &rs[len(rs)-1]
	}
	if len(es) > 0 {
		out.Eval = &es[len(es)-1]
	}
	writeJSON(w, http.StatusOK, out)
}

// plot serves loss.png or eval.png, drawn again from metrics.jsonl when the
// last drawing is more than two seconds old.
func (d *dashboard) plot(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if d.runDir == "" || (name != "loss.png" && name != "eval.png") {
		http.NotFound(w, r)
		return
	}
	d.mu.Lock()
	if time.Since(d.drawn) > 2*time.Second {
		// A failure (no records yet, a line being written) leaves the
		// last picture in place.
		_ = telemetry.Curves(filepath.Join(d.runDir, "metrics.jsonl"), d.runDir, d.stepsPerEpoch)
		d.drawn = time.Now()
	}
	d.mu.Unlock()
	w.Header().Set("Cache-Control", "no-store")
	http.ServeFile(w, r, filepath.Join(d.runDir, name))
}

// latest serves the file dir/step-<N><ext> of the run directory with the
// highest N.
func (d *dashboard) latest(w http.ResponseWriter, r *http.Request, dir, ext string) {
	if d.runDir == "" {
		http.NotFound(w, r)
		return
	}
	entries, _ := os.ReadDir(filepath.Join(d.runDir, dir))
	best, bestStep := "", int64(-1)
	for _, e := range entries {
		num, ok := strings.CutPrefix(strings.TrimSuffix(e.Name(), ext), "step-")
		if !ok || !strings.HasSuffix(e.Name(), ext) {
			continue
		}
		if n, err := strconv.ParseInt(num, 10, 64); err == nil && n > bestStep {
			best, bestStep = e.Name(), n
		}
	}
	if best == "" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Step", strconv.FormatInt(bestStep, 10))
	http.ServeFile(w, r, filepath.Join(d.runDir, dir, best))
}

// serveDashboard serves d on addr until ctx ends; it returns the URL it
// serves on (addr may name port 0) and a function that stops it.
func serveDashboard(ctx context.Context, addr string, d *dashboard, log *slog.Logger) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("--http %s: %w", addr, err)
	}
	srv := &http.Server{Handler: d.routes(), ReadHeaderTimeout: 5 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("dashboard stopped", "err", err)
		}
	}()
	stop = func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-done
	}
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port) + "/", stop, nil
}

// cmdDashboard serves the dashboard of a run from its run directory, so that
// a run's page outlives the process that trained it: the progress, curves,
// samples and translations come from the directory; the job's status, while
// the run lives, from its cluster (the run directory says where).
func cmdDashboard(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dashboard", flag.ContinueOnError)
	var ep endpoints
	logFlags(fs, &ep)
	httpFlag(fs, &ep)
	run := fs.String("run", "", "the run directory")
	if err := parse(fs, args, stderr, "downpour dashboard --run runs/demo-20261128-210316 --http 127.0.0.1:8080"); err != nil {
		return err
	}
	if *run == "" || ep.http == "" {
		fmt.Fprintln(stderr, "downpour dashboard: needs --run, and an --http address")
		return errUsage
	}
	s, err := rundir.Read(*run)
	if err != nil {
		return err
	}
	log := ep.logger(stderr)
	name := s.Spec.Name
	live, err := joinRun(*run, &ep, &name)
	if err != nil {
		return err
	}
	var stop func()
	if live {
		stop, err = dashboardFor(ctx, "dashboard", *s.Spec, ep, *run, stdout, log)
	} else {
		spe, _ := s.Spec.StepsPerEpoch()
		stop, err = ep.startDashboard(ctx, &dashboard{job: name, role: "dashboard", runDir: *run, stepsPerEpoch: spe}, stdout, log)
	}
	if err != nil {
		return err
	}
	defer stop()
	<-ctx.Done()
	return nil
}
