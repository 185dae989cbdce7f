package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/coordinator/jobrun"
	"github.com/downpour-ml/downpour/internal/app/auth"
	"github.com/downpour-ml/downpour/internal/app/rundir"
	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/paramserver/node"
	"github.com/downpour-ml/downpour/worker"
)

// trainFlags are train's flags, bound to where their values go.
type trainFlags struct {
	fs          *flag.FlagSet
	spec        job.Spec
	jf          *jobFlags
	ep          endpoints
	out, resume *string
}

func newTrainFlags(args []string) *trainFlags {
	t := &trainFlags{fs: flag.NewFlagSet("train", flag.ContinueOnError), spec: job.Default()}
	t.jf = specFlags(t.fs, &t.spec, args)
	endpointFlags(t.fs, &t.ep)
	httpFlag(t.fs, &t.ep)
	t.out = t.fs.String("out", "", "run directory (default runs/<job>-<time>)")
	t.resume = t.fs.String("resume", "", "continue the stopped run in this directory from its last complete checkpoint (the job is as it was started)")
	return t
}

func cmdTrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	t := newTrainFlags(args)
	fs, jf, out, resume := t.fs, t.jf, t.out, t.resume
	spec, ep := &t.spec, &t.ep
	if err := jf.parse(args, stderr, "downpour train --steps 300 --workers 2 --ps-shards 2   or   downpour train --config examples/seq2seq-small.yaml --data corpus.tsv"); err != nil {
		return err
	}
	if *resume != "" {
		if err := onlyResumeFlags(fs); err != nil {
			fmt.Fprintf(stderr, "downpour train: %v\n", err)
			return errUsage
		}
		return resumeTrain(ctx, *resume, flagArg(args, "job"), *ep, stdout, stderr)
	}
	if *jf.print {
		return printJob(jf, spec, stdout, stderr)
	}
	jf.finish()
	if err := spec.Validate(); err != nil {
		fmt.Fprintf(stderr, "downpour train: %v\n", err)
		return errUsage
	}
	if err := spec.Resolve(); err != nil {
		return err
	}
	if (ep.NATS == "") != (ep.Etcd == "") {
		fmt.Fprintln(stderr, "downpour train: give both --nats and --etcd to join a cluster, or neither to run an embedded one")
		return errUsage
	}
	if err := rundir.Prepare(out, rundir.Name(spec)); err != nil {
		return err
	}
	log := ep.logger(stderr)
	start := time.Now()
	if ep.NATS == "" {
		c, err := startEmbedded(ctx, filepath.Join(*out, "cluster"), spec.Name, ep, log)
		if err != nil {
			return err
		}
		defer c.Close()
		defer publishRun(*out, spec.Name, c, ep, log)()
		log.Info("embedded cluster up", "nats", ep.NATS, "etcd", ep.Etcd, "took", time.Since(start))
	}
	what := "data " + spec.DataName()
	switch spec.Model {
	case "gan":
		what = "GAN on MNIST"
	case job.Synthetic:
		what = fmt.Sprintf("synthetic load model of %d parameters, %g ms a step", spec.Synthetic.Params, spec.Synthetic.StepMs)
	}
	fmt.Fprintf(stdout, "training job %s: %s, %d workers, %d ps shards, %d steps, mode %s; run directory %s\n",
		spec.Name, what, spec.Workers, spec.Shards, spec.Steps, spec.Mode, *out)
	stopDash, err := dashboardFor(ctx, "train", *spec, *ep, *out, stdout, log)
	if err != nil {
		return err
	}
	defer stopDash()
	console := io.Writer(stdout)
	if isTerminal(stdout) {
		bar := newProgressBar(stdout, spec.Steps, 0, spec.Unit())
		console = bar
		defer bar.Close() // on error; after success it is closed below
	}
	first, last, err := trainAll(ctx, *spec, *ep, *out, nil, console, log)
	if bar, ok := console.(*progressBar); ok {
		bar.Close()
	}
	if err != nil {
		return err
	}
	if first != nil && last != nil {
		fmt.Fprintf(stdout, "done: %d steps in %.1fs; loss %.4f -> %.4f; checkpoint %s\n", spec.Steps,
			time.Since(start).Seconds(), first.Loss, last.Loss, filepath.Join(*out, "checkpoint", "final.ckpt"))
	}
	return nil
}

// startEmbedded starts the embedded NATS server and etcd of a run of job
// under dir, on loopback, with credentials made for this run: NATS and etcd
// know only the job's roles, each with its permissions (etcd's root
// password stays in dir, 0600, for a resumed run). It points ep at them.
func startEmbedded(ctx context.Context, dir, job string, ep *endpoints, log *slog.Logger) (*embedded.Cluster, error) {
	ep.Creds = map[auth.Role]*auth.Creds{}
	var users []auth.User
	for _, r := range auth.Roles {
		c, err := auth.New(job, r)
		if err != nil {
			return nil, err
		}
		ep.Creds[r] = c
		users = append(users, c.User())
	}
	c, err := embedded.StartWith(ctx, embedded.Options{Dir: dir, NATSUsers: auth.ServerUsers(users), NATSLog: auth.ServerLog(log),
		EtcdGRPC: auth.EtcdServerOptions(log)})
	if err != nil {
		return nil, err
	}
	creds := make([]*auth.Creds, 0, len(auth.Roles))
	for _, r := range auth.Roles {
		creds = append(creds, ep.Creds[r])
	}
	if err := auth.SetUpEtcd(ctx, c.EtcdEndpoints, ep.Timeout, filepath.Join(dir, "etcd-root.secret"), creds, nil); err != nil {
		c.Close()
		return nil, err
	}
	ep.NATS, ep.Etcd, ep.InProcess = c.NATSURL, c.EtcdEndpoints[0], c.NATS
	return c, nil
}

// publishRun writes into the run directory where its embedded cluster is,
// with an observer's credentials, for 'downpour status --run' and
// 'downpour dashboard --run'; the returned func removes them (the cluster
// goes with this process).
func publishRun(dir, name string, c *embedded.Cluster, ep *endpoints, log *slog.Logger) (remove func()) {
	remove, err := rundir.Publish(dir, rundir.Endpoints{Job: name, NATS: c.NATSURL, Etcd: c.EtcdEndpoints}, ep.Creds[auth.Observer])
	if err != nil {
		log.Warn("the run's endpoints could not be written: downpour status --run will not see it", "err", err)
		return func() {}
	}
	return remove
}

// dashboardFor serves the dashboard of spec's job for a process that
// connects to the job with connections of its own (train, which runs every
// role in the process).
func dashboardFor(ctx context.Context, role string, spec job.Spec, ep endpoints, out string, stdout io.Writer, log *slog.Logger) (stop func(), err error) {
	if ep.http == "" {
		return func() {}, nil
	}
	cli, err := ep.ConnectEtcd(ctx, auth.Observer)
	if err != nil {
		return nil, err
	}
	nc, err := ep.ConnectNATS("dashboard", auth.Observer)
	if err != nil {
		cli.Close()
		return nil, err
	}
	spe, _ := spec.StepsPerEpoch()
	stopServing, err := ep.startDashboard(ctx, &dashboard{job: spec.Name, role: role, cli: cli, nc: nc, runDir: out, stepsPerEpoch: spe}, stdout, log)
	if err != nil {
		nc.Close()
		cli.Close()
		return nil, err
	}
	return func() { stopServing(); nc.Close(); cli.Close() }, nil
}

// printJob prints the effective job of a command line (--print-config), once
// it is known to be valid.
func printJob(jf *jobFlags, spec *job.Spec, stdout, stderr io.Writer) error {
	jf.finish()
	if err := spec.Validate(); err != nil {
		fmt.Fprintf(stderr, "downpour %s: %v\n", jf.fs.Name(), err)
		return errUsage
	}
	return jf.printConfig(stdout)
}

// resumeTrain continues the stopped run in directory out: on its embedded
// cluster (whose etcd data holds the job) unless endpoints are given.
func resumeTrain(ctx context.Context, out, name string, ep endpoints, stdout, stderr io.Writer) error {
	if (ep.NATS == "") != (ep.Etcd == "") {
		fmt.Fprintln(stderr, "downpour train: give both --nats and --etcd to join a cluster, or neither to run an embedded one")
		return errUsage
	}
	if st, err := os.Stat(out); err != nil || !st.IsDir() {
		return fmt.Errorf("no run directory %s to resume", out)
	}
	log := ep.logger(stderr)
	start := time.Now()
	if ep.NATS == "" {
		dir := filepath.Join(out, "cluster")
		if _, err := os.Stat(dir); err != nil {
			return fmt.Errorf("%s holds no embedded cluster to resume (for a run on a cluster, give --nats and --etcd): %w", out, err)
		}
		b, err := os.ReadFile(filepath.Join(out, "job.json"))
		if err != nil {
			return fmt.Errorf("%s: %w", out, err)
		}
		stored, err := job.DecodeSpec(b)
		if err != nil {
			return fmt.Errorf("%s: %w", out, err)
		}
		if name == "" {
			name = stored.Name
		}
		c, err := startEmbedded(ctx, dir, stored.Name, &ep, log)
		if err != nil {
			return err
		}
		defer c.Close()
		defer publishRun(out, stored.Name, c, &ep, log)()
	}
	cli, err := ep.ConnectEtcd(ctx, auth.Coordinator)
	if err != nil {
		return err
	}
	spec, rp, err := jobrun.FindResumable(ctx, cli, name)
	cli.Close()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "resuming job %s at step %d of %d: %d workers, %d ps shards, mode %s; run directory %s\n",
		spec.Name, rp.From, spec.Steps, spec.Workers, rp.Shards, spec.Mode, out)
	stopDash, err := dashboardFor(ctx, "train", spec, ep, out, stdout, log)
	if err != nil {
		return err
	}
	defer stopDash()
	console := io.Writer(stdout)
	if isTerminal(stdout) {
		bar := newProgressBar(stdout, spec.Steps, rp.From, spec.Unit())
		console = bar
		defer bar.Close()
	}
	first, last, err := trainAll(ctx, spec, ep, out, &rp, console, log)
	if bar, ok := console.(*progressBar); ok {
		bar.Close()
	}
	if err != nil {
		return err
	}
	if first != nil && last != nil {
		fmt.Fprintf(stdout, "done: steps %d-%d in %.1fs; loss %.4f -> %.4f; checkpoint %s\n", rp.From+1, spec.Steps,
			time.Since(start).Seconds(), first.Loss, last.Loss, filepath.Join(out, "checkpoint", "final.ckpt"))
	}
	return nil
}

type lossRecord struct{ Loss float64 }

// roleConns are a role's own connections: its store of the job.
type roleConns struct{ st job.Store }

// trainAll runs the coordinator, the shards and the workers of spec in this
// process, each with its own NATS connection and etcd client, exactly as
// separate processes would. It returns once the coordinator has finished the
// job and every role has stopped, or on the first error (stopping the rest).
func trainAll(ctx context.Context, spec job.Spec, ep endpoints, out string, resume *jobrun.ResumePoint, stdout io.Writer, log *slog.Logger) (first, last *lossRecord, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex // guards errs
		errs []error
	)
	fail := func(role string, err error) {
		if err == nil || errors.Is(err, context.Canceled) && ctx.Err() != nil {
			return
		}
		mu.Lock()
		errs = append(errs, fmt.Errorf("%s: %w", role, err))
		mu.Unlock()
		cancel()
	}
	// role connects a role's clients and runs f with them.
	role := func(name string, f func(ctx context.Context, nc *nats.Conn, r roleConns) error) {
		wg.Go(func() {
			cli, err := ep.ConnectEtcd(ctx, auth.Role(strings.Fields(name)[0]))
			if err != nil {
				fail(name, err)
				return
			}
			defer cli.Close()
			nc, err := ep.ConnectNATS(name, auth.Role(strings.Fields(name)[0])) // "ps 1" is a ps
			if err != nil {
				fail(name, err)
				return
			}
			defer nc.Close()
			fail(name, f(ctx, nc, roleConns{st: cli.Job(spec.Name)}))
		})
	}
	role("coordinator", func(ctx context.Context, nc *nats.Conn, r roleConns) error {
		ttl := coordinatorTTL
		if ep.InProcess != nil { // the embedded cluster: nobody to fail over to
			ttl = embeddedCoordinatorTTL
		}
		col, err := jobrun.Coordinate(ctx, jobrun.Config{Store: r.st, NATS: nc, Spec: spec, Out: out, Resume: resume, LeaseTTL: ttl, Console: stdout, Log: log})
		if col != nil {
			if f, l := col.Span(); f != nil {
				first, last = &lossRecord{f.Loss}, &lossRecord{l.Loss}
			}
		}
		return err
	})
	shards := spec.Shards
	if resume != nil {
		shards = resume.Shards
	}
	for i := 0; i < shards; i++ {
		role(fmt.Sprintf("ps %d", i), func(ctx context.Context, nc *nats.Conn, r roleConns) error {
			return node.Run(ctx, node.Config{Store: r.st, NATS: nc, Log: log, Shard: i,
				DataDir: filepath.Join(out, fmt.Sprintf("ps-%d", i))})
		})
	}
	for i := 0; i < spec.Ranks(); i++ { // a replica laid out over seats: a member per seat
		role(fmt.Sprintf("worker %d", i), func(ctx context.Context, nc *nats.Conn, r roleConns) error {
			return worker.Run(ctx, worker.Config{Store: r.st, ID: fmt.Sprintf("local-%d", i), NATS: nc, Log: log})
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	return first, last, nil
}
