package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/downpour-ml/downpour/internal/app/rundir"
	"github.com/downpour-ml/downpour/internal/testenv"
)

// startTrain starts a train command line in the background and returns the
// URL of its dashboard, a wait for its exit code and output, and a stop
// that interrupts it (as Ctrl-C does).
func startTrain(t *testing.T, args ...string) (url string, wait func() (int, string), stop func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	pr, pw := io.Pipe()
	var stderr syncBuffer
	var all syncBuffer
	done := make(chan struct{})
	var code int
	go func() {
		code = run(ctx, append([]string{"train"}, args...), pw, &stderr)
		pw.Close()
		close(done)
	}()
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		re := regexp.MustCompile(`^dashboard: (http://\S+/) `)
		for sc.Scan() {
			all.Write(append(sc.Bytes(), '\n'))
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				urls <- m[1]
			}
		}
		io.Copy(io.Discard, pr)
	}()
	wait = func() (int, string) {
		<-done
		return code, all.String() + stderr.String()
	}
	t.Cleanup(func() { cancel(); <-done })
	select {
	case url = <-urls:
	case <-time.After(time.Minute):
		t.Fatalf("no dashboard line on stdout:\n%s%s", all.String(), stderr.String())
	}
	return url, wait, cancel
}

func get(t *testing.T, url string) (int, http.Header, []byte) {
	t.Helper()
	r, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return r.StatusCode, r.Header, b
}

// sample reads one series' value from a Prometheus text scrape (-1 when
// absent).
func sample(scrape, series string) float64 {
	for _, line := range strings.Split(scrape, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return -1
}

// dashRuns numbers the runs of TestDashboardAndMetricsOfARunningJob.
var dashRuns atomic.Int64

// A running job serves its dashboard and Prometheus metrics: the page and
// its script, the status of the job (members, shards and their clocks), the
// run's progress, the curves, the latest translations, and metrics whose
// values move while it trains.
func TestDashboardAndMetricsOfARunningJob(t *testing.T) {
	out := filepath.Join(t.TempDir(), "run")
	// The job trains until the checks are done, however fast the machine,
	// and is then interrupted. The job's name is new to the process at each
	// run (-count), whose metrics would otherwise start from the last run's.
	job := fmt.Sprintf("dash%d", dashRuns.Add(1))
	url, wait, stop := startTrain(t, "--job", job, "--steps", "10000000", "--hidden", "32", "--embed", "16", "--eval-every", "50", "--out", out, "--http", "127.0.0.1:0")

	code, hdr, page := get(t, url)
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") || !strings.Contains(string(page), `<script src="/static/app.js">`) {
		t.Fatalf("GET /: %d %s\n%s", code, hdr.Get("Content-Type"), page)
	}
	if code, _, js := get(t, url+"static/app.js"); code != 200 || !strings.Contains(string(js), `fetch("/api/status"`) {
		t.Fatalf("GET /static/app.js: %d", code)
	}

	// The status, once both workers have ranks and the shards serve.
	var st struct {
		Role, Job, State string
		Members          []struct{ ID, Rank string } `json:"workers_now"`
		Shards           []struct{ Serving, Clock string }
	}
	deadline := time.Now().Add(time.Minute)
	for {
		code, _, b := get(t, url+"api/status")
		if code == 200 {
			if err := json.Unmarshal(b, &st); err != nil {
				t.Fatal(err)
			}
			if len(st.Members) == 2 && st.Members[0].Rank != "waiting" && len(st.Shards) == 2 && st.Shards[0].Serving == "1" && st.Shards[0].Clock != "" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed the running job: %d %s", code, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st.Role != "train" || st.Job != job || st.State != "running" {
		t.Fatalf("status %+v", st)
	}

	// Metrics move while the job trains: once every series is there (the
	// ranks' first steps may still be under way), they grow.
	series := []string{
		`downpour_worker_steps_total{job="` + job + `",rank="0"}`,
		`downpour_worker_steps_total{job="` + job + `",rank="1"}`,
		// Shard 0 holds the embeddings, which travel sparse, shard 1
		// dense blocks: both come back in the push's reply.
		`downpour_client_request_seconds_count{job="` + job + `",op="pushpull",shard="0"}`,
		`downpour_client_payload_bytes_total{job="` + job + `",op="pushpull",shard="0"}`,
		`downpour_client_request_seconds_count{job="` + job + `",op="pushpull",shard="1"}`,
		`downpour_client_payload_bytes_total{job="` + job + `",op="pushpull",shard="1"}`,
		`downpour_ps_pushes_total{job="` + job + `",shard="0"}`,
		`downpour_ps_clock_lag_steps_count{job="` + job + `",shard="1"}`,
		`downpour_job_step{job="` + job + `"}`,
		`downpour_nats_bytes_total{direction="out",role="worker"}`,
		`downpour_nats_bytes_total{direction="in",role="ps"}`,
	}
	var m1 []byte
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		_, _, m1 = get(t, url+"metrics")
		missing := ""
		for _, s := range series {
			if sample(string(m1), s) < 0 {
				missing = s
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s in the scrape within a minute", missing)
		}
	}
	var m2 []byte
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) { // slow under -race
		_, _, m2 = get(t, url+"metrics")
		grown := true
		for _, s := range series {
			grown = grown && sample(string(m2), s) > sample(string(m1), s)
		}
		if grown || time.Now().After(deadline) {
			break
		}
	}
	for _, series := range series {
		a, b := sample(string(m1), series), sample(string(m2), series)
		if a < 0 || b <= a {
			t.Errorf("%s: %v then %v, want it present and growing", series, a, b)
		}
	}
	if v := sample(string(m2), `downpour_worker_loss{job="`+job+`",rank="0"}`); !(v > 0 && v < 10) {
		t.Errorf("worker loss %v", v)
	}
	if !strings.Contains(string(m2), "downpour_lease_renewals_total") || !strings.Contains(string(m2), "go_goroutines") {
		t.Error("the scrape lacks the lease or the Go runtime metrics")
	}

	// Progress, curves and translations from the run directory.
	deadline = time.Now().Add(time.Minute)
	for {
		_, _, b := get(t, url+"api/progress")
		var p struct {
			Records int
			Eval    *struct{ Step int64 }
		}
		json.Unmarshal(b, &p)
		if p.Records > 0 && p.Eval != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("progress never showed records and an evaluation: %s", b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, name := range []string{"loss.png", "eval.png"} {
		code, hdr, b := get(t, url+"plot/"+name)
		if code != 200 || hdr.Get("Content-Type") != "image/png" {
			t.Fatalf("%s: %d %s", name, code, hdr.Get("Content-Type"))
		}
		if _, err := png.Decode(strings.NewReader(string(b))); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	code, hdr, b := get(t, url+"translations/latest.txt")
	if code != 200 || hdr.Get("X-Step") == "" || !strings.Contains(string(b), "reference:   ") || !strings.Contains(string(b), "translation: ") {
		t.Fatalf("translations: %d step %q\n%s", code, hdr.Get("X-Step"), b)
	}
	if code, _, _ := get(t, url+"samples/latest.png"); code != 404 {
		t.Fatalf("a Seq2Seq run has no samples: %d", code)
	}
	if code, _, _ := get(t, url+"plot/..%2fjob.json"); code != 404 {
		t.Fatalf("plot/ served another file: %d", code)
	}
	stop()
	if code, out := wait(); code != 130 || !strings.Contains(out, "downpour train: interrupted") {
		t.Fatalf("train, interrupted: exit %d, want 130\n%s", code, out)
	}
}

// The dashboard renders in a real browser: headless Chromium takes a
// screenshot of a running job's page, which must show the page's colours,
// its text and its curve. With DOWNPOUR_SCREENSHOT=path, the picture is
// kept there (docs/dashboard.png is made so).
func TestDashboardRendersInABrowser(t *testing.T) {
	if raceBuild {
		t.Skip("the plain run renders the page; under -race, TestDashboardAndMetricsOfARunningJob covers the server it talks to")
	}
	browser := ""
	for _, b := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(b); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		if os.Getenv("DOWNPOUR_BROWSER") == "require" {
			t.Fatal("no chromium on PATH, and DOWNPOUR_BROWSER=require (install Debian's chromium)")
		}
		t.Skip("no chromium on PATH (install Debian's chromium; CI requires it)")
	}
	out := filepath.Join(t.TempDir(), "run")
	url, wait, _ := startTrain(t, "--job", "shot", "--steps", "400", "--eval-every", "100", "--out", out, "--http", "127.0.0.1:0")
	deadline := time.Now().Add(time.Minute)
	for { // until there are curves to show
		_, _, b := get(t, url+"api/progress")
		var p struct{ Eval *struct{ Step int64 } }
		json.Unmarshal(b, &p)
		if p.Eval != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no evaluation within a minute: %s", b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	shot := os.Getenv("DOWNPOUR_SCREENSHOT")
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "dashboard.png")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--user-data-dir="+t.TempDir(), "--window-size=1280,1400", "--virtual-time-budget=4000", "--screenshot="+shot, url)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", browser, err, b)
	}
	img := testenv.PNG(t, shot)
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 1400 {
		t.Fatalf("screenshot %v, want 1280x1400", b)
	}
	accent, dark, red := count(img, 47, 111, 222), count(img, 29, 35, 48), count(img, 241, 90, 96)
	// The job's name and the progress bar are in the accent colour, the text
	// dark; the loss curve is in gonum/plot's first soft colour.
	if accent < 300 || dark < 2000 {
		t.Fatalf("the screenshot does not look rendered: %d accent pixels, %d text pixels (kept at %s)", accent, dark, shot)
	}
	if red < 50 {
		t.Fatalf("the screenshot shows no curve: %d curve pixels (kept at %s)", red, shot)
	}
	if code, out := wait(); code != 0 {
		t.Fatalf("train: exit %d\n%s", code, out)
	}
}

// count counts the pixels of img within 40 of colour (r, g, b) per channel.
func count(img image.Image, r, g, b int) int {
	n := 0
	bd := img.Bounds()
	for y := bd.Min.Y; y < bd.Max.Y; y++ {
		for x := bd.Min.X; x < bd.Max.X; x++ {
			pr, pg, pb, _ := img.At(x, y).RGBA()
			if abs(int(pr>>8)-r) < 40 && abs(int(pg>>8)-g) < 40 && abs(int(pb>>8)-b) < 40 {
				n++
			}
		}
	}
	return n
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// A train run can be watched from another process: 'downpour status --run'
// reaches its job through the endpoints and observer credentials the run
// directory holds while the run lives, and says what the directory holds
// once it has ended; 'downpour dashboard --run' serves the run's page after
// the run is gone.
func TestStatusAndDashboardOfATrainRun(t *testing.T) {
	out := filepath.Join(t.TempDir(), "run")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var trainOut, trainErr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"train", "--job", "watched", "--steps", "100000", "--log-every", "5", "--out", out, "--http", ""}, &trainOut, &trainErr)
	}()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, _, err := rundir.Live(out); err == nil && strings.Contains(trainOut.String(), "step ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the run never published its endpoints:\n%s%s", trainOut.String(), trainErr.String())
		}
	}
	code, o, e := runCmd(t, time.Minute, "status", "--run", out)
	if code != 0 || !strings.Contains(o, "job watched: running") || !strings.Contains(o, "leader: ") {
		t.Fatalf("status of the live run: exit %d\n%s%s", code, o, e)
	}
	cancel()
	<-done
	if _, _, err := rundir.Live(out); !errors.Is(err, rundir.ErrNotLive) {
		t.Fatalf("the ended run still publishes endpoints: %v", err)
	}
	code, o, e = runCmd(t, time.Minute, "status", "--run", out)
	if code != 0 || !strings.Contains(o, "job watched: not running") || !strings.Contains(o, "last logged step: ") ||
		!strings.Contains(o, "final checkpoint: none") {
		t.Fatalf("status of the ended run: exit %d\n%s%s", code, o, e)
	}
	if code, _, e := runCmd(t, time.Minute, "status", "--run", out, "--etcd", "http://127.0.0.1:1"); code != 2 || !strings.Contains(e, "not both") {
		t.Fatalf("--run with --etcd: exit %d, %s", code, e)
	}

	dctx, stop := context.WithCancel(context.Background())
	defer stop()
	var dashOut, dashErr syncBuffer
	dashDone := make(chan int, 1)
	go func() {
		dashDone <- run(dctx, []string{"dashboard", "--run", out, "--http", "127.0.0.1:0"}, &dashOut, &dashErr)
	}()
	var base string
	for deadline := time.Now().Add(30 * time.Second); base == ""; time.Sleep(20 * time.Millisecond) {
		if m := regexp.MustCompile(`dashboard: (http://\S+/)`).FindStringSubmatch(dashOut.String()); m != nil {
			base = m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no dashboard URL: %s%s", dashOut.String(), dashErr.String())
		}
	}
	get := func(path string) (int, string, []byte) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), b
	}
	if code, _, b := get("api/progress"); code != 200 || !strings.Contains(string(b), `"records":`) || strings.Contains(string(b), `"records":0`) {
		t.Fatalf("progress: %d %s", code, b)
	}
	if code, _, b := get("api/status"); code != http.StatusServiceUnavailable || !strings.Contains(string(b), "not running") {
		t.Fatalf("status: %d %s", code, b)
	}
	if code, ctype, b := get("plot/loss.png"); code != 200 || ctype != "image/png" || len(b) < 1000 {
		t.Fatalf("loss.png: %d %s, %d bytes", code, ctype, len(b))
	}
	stop()
	<-dashDone
}
