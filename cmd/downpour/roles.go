package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/downpour-ml/downpour/coordinator"
	"github.com/downpour-ml/downpour/coordinator/jobrun"
	"github.com/downpour-ml/downpour/internal/app/auth"
	"github.com/downpour-ml/downpour/internal/app/cluster"
	"github.com/downpour-ml/downpour/internal/app/rundir"
	"github.com/downpour-ml/downpour/internal/embedded"
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	"github.com/downpour-ml/downpour/internal/latency"
	"github.com/downpour-ml/downpour/paramserver"
	"github.com/downpour-ml/downpour/paramserver/node"
	"github.com/downpour-ml/downpour/worker"
	"github.com/nats-io/nats.go"
)

// coordinatorTTL is the lease, in seconds, of a coordinator's leadership: a
// standby takes over this long after the leader dies.
const coordinatorTTL = 5

// embeddedCoordinatorTTL is the leadership lease of the coordinator of
// `downpour train` on its embedded cluster. No standby can reach that
// cluster, so a short lease buys no failover; it only risks the run, since a
// coordinator whose renewals are starved for a few seconds (a machine busy
// with the run's own compute, GC) loses its leadership and the job ends.
// The price: `train --resume` after the process was killed outright waits
// up to this long for the dead run's lease to run out.
const embeddedCoordinatorTTL = 15

func cmdCoordinator(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	spec := job.Default()
	jf := specFlags(fs, &spec, args)
	var ep endpoints
	endpointFlags(fs, &ep)
	httpFlag(fs, &ep)
	profileFlag(fs, &ep)
	out := fs.String("out", "", "run directory for metrics.jsonl and the final checkpoint (default runs/<job>-<time>)")
	resume := fs.Bool("resume", false, "continue the stopped job --job from its last complete checkpoint, as it was started (its spec is in etcd); --out may hold its earlier run")
	if err := jf.parse(args, stderr, "downpour coordinator --nats nats://127.0.0.1:4222 --etcd http://127.0.0.1:2379 --job demo --workers 2 --ps-shards 2"); err != nil {
		return err
	}
	if *jf.print && !*resume {
		return printJob(jf, &spec, stdout, stderr)
	}
	if err := ep.require("coordinator", stderr); err != nil {
		return err
	}
	if *resume {
		if err := onlyResumeFlags(fs); err != nil {
			fmt.Fprintf(stderr, "downpour coordinator: %v\n", err)
			return errUsage
		}
	} else {
		jf.finish()
		if err := spec.Validate(); err != nil {
			fmt.Fprintf(stderr, "downpour coordinator: %v\n", err)
			return errUsage
		}
		if err := spec.Resolve(); err != nil {
			return err
		}
	}
	r, err := ep.join(ctx, auth.Coordinator, stderr)
	if err != nil {
		return err
	}
	defer r.close()
	var rp *jobrun.ResumePoint
	if *resume {
		s, point, err := jobrun.FindResumable(ctx, r.cli, spec.Name)
		if err != nil {
			return err
		}
		spec, rp = s, &point
	}
	if err := coordinatorRunDir(out, &spec, rp != nil); err != nil {
		return err
	}
	if rp != nil {
		fmt.Fprintf(stdout, "resuming job %s at step %d of %d; run directory %s\n", spec.Name, rp.From, spec.Steps, *out)
	} else {
		fmt.Fprintf(stdout, "coordinating job %s: %d workers, %d shards, %d steps; run directory %s\n", spec.Name, spec.Workers, spec.Shards, spec.Steps, *out)
	}
	spe, _ := spec.StepsPerEpoch()
	stopDash, err := ep.startDashboard(ctx, &dashboard{job: spec.Name, role: "coordinator", cli: r.cli, nc: r.nc, runDir: *out, stepsPerEpoch: spe}, stdout, r.log)
	if err != nil {
		return err
	}
	defer stopDash()
	_, err = jobrun.Coordinate(r.ctx, jobrun.Config{Store: r.cli.Job(spec.Name), NATS: r.nc, Spec: spec, Out: *out, Resume: rp, LeaseTTL: coordinatorTTL, Console: stdout, Log: r.log})
	err = cluster.Cause(r.ctx, err)
	if errors.Is(err, coordinator.ErrJobDone) {
		// Another coordinator finished it (this one stood by): nothing to do.
		fmt.Fprintf(stdout, "job %s is done\n", spec.Name)
		return nil
	}
	if err == nil {
		fmt.Fprintf(stdout, "job %s done; final checkpoint in %s\n", spec.Name, filepath.Join(*out, "checkpoint", "final.ckpt"))
	}
	return err
}

// coordinatorRunDir makes the coordinator's run directory *out (the
// default one when empty). A coordinator restarted with the same run
// directory (a supervisor restarting it) carries on in it; so does one
// resuming its job.
func coordinatorRunDir(out *string, spec *job.Spec, resuming bool) error {
	sameJob := false
	if *out != "" {
		b, err := os.ReadFile(filepath.Join(*out, "job.json"))
		sameJob = err == nil && bytes.Equal(b, spec.Encode())
	}
	if (resuming || sameJob) && *out != "" {
		return os.MkdirAll(*out, 0o755)
	}
	return rundir.Prepare(out, rundir.Name(spec))
}

// roleProcess is a role's process joined to the cluster: its etcd client and
// NATS connection, its logger, and a context that ends (cluster.Cause says
// why) once NATS has stayed unreachable for --give-up.
type roleProcess struct {
	cli   *etcdstore.Client
	nc    *nats.Conn
	log   *slog.Logger
	ctx   context.Context
	close func() // stops the watch and closes both connections
}

// join connects the process of role to etcd and NATS, as that role.
// With --cpuprofile, the process's CPU profile runs from here to close.
func (e *endpoints) join(ctx context.Context, role auth.Role, stderr io.Writer) (*roleProcess, error) {
	stopProfile, err := startProfile(e.profile)
	if err != nil {
		return nil, err
	}
	cli, err := e.ConnectEtcd(ctx, role)
	if err != nil {
		stopProfile()
		return nil, err
	}
	nc, err := e.ConnectNATS(string(role), role)
	if err != nil {
		cli.Close()
		stopProfile()
		return nil, err
	}
	log := e.logger(stderr)
	wctx, stop := cluster.Watch(ctx, nc, e.giveUp, log)
	return &roleProcess{cli: cli, nc: nc, log: log, ctx: wctx, close: func() { stop(); nc.Close(); cli.Close(); stopProfile() }}, nil
}

// startProfile starts a CPU profile written to path ("": none) when the
// returned stop is called.
func startProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func cmdPS(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ps", flag.ContinueOnError)
	var ep endpoints
	endpointFlags(fs, &ep)
	httpFlag(fs, &ep)
	profileFlag(fs, &ep)
	name := fs.String("job", "demo", "job to serve")
	shard := fs.Int("shard", -1, "shard index to serve (-1: the lowest free one)")
	dataDir := fs.String("data-dir", "", "directory for the shard's snapshots (needed when the job checkpoints; one job's: another is refused)")
	restore := fs.String("restore", "", "start from this snapshot file instead of the initial parameters")
	ttl := fs.Int64("lease-ttl", 10, "seconds without a heartbeat after which the job gives this shard up")
	wait := fs.Duration("wait", 5*time.Minute, "how long to wait for the job to appear, and for a shard index to claim")
	if err := parse(fs, args, stderr, "downpour ps --nats nats://127.0.0.1:4222 --etcd http://127.0.0.1:2379 --job demo"); err != nil {
		return err
	}
	if err := ep.require("ps", stderr); err != nil {
		return err
	}
	r, err := ep.join(ctx, auth.PS, stderr)
	if err != nil {
		return err
	}
	defer r.close()
	// A shard may only answer requests, not ask other shards for their
	// clocks: its dashboard shows the job without them.
	stopDash, err := ep.startDashboard(ctx, &dashboard{job: *name, role: "ps", cli: r.cli}, stdout, r.log)
	if err != nil {
		return err
	}
	defer stopDash()
	return cluster.Cause(r.ctx, node.Run(r.ctx, node.Config{Store: r.cli.Job(*name), NATS: r.nc, Log: r.log, Shard: *shard,
		DataDir: *dataDir, Restore: *restore, LeaseTTL: *ttl, WaitTimeout: *wait,
		Ready: func(i int, _ *paramserver.Service) { fmt.Fprintf(stdout, "serving shard %d of job %s\n", i, *name) }}))
}

func cmdWorker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	var ep endpoints
	endpointFlags(fs, &ep)
	httpFlag(fs, &ep)
	profileFlag(fs, &ep)
	name := fs.String("job", "demo", "job to join")
	id := fs.String("id", "", "worker id, unique in the job (default host-pid-time)")
	ttl := fs.Int64("lease-ttl", 10, "seconds without a heartbeat after which the job gives this worker up")
	wait := fs.Duration("wait", 5*time.Minute, "how long to wait for the job to appear, for a rank, and for the shards")
	stats := fs.String("stats", "", "when the worker ends, write here (JSON) each step's wait on the shards and each push's and pull's time, by shard, as histograms (the scale harness reads them)")
	replica := fs.Int("replica", -1, "a job laid out over seats: serve only this model replica's seats (default: the replica of --creds pinned to one, else any)")
	if err := parse(fs, args, stderr, "downpour worker --nats nats://127.0.0.1:4222 --etcd http://127.0.0.1:2379 --job demo"); err != nil {
		return err
	}
	if err := ep.require("worker", stderr); err != nil {
		return err
	}
	if c, err := ep.CredsFor(auth.Worker); err != nil {
		return err
	} else if c != nil && c.Replica >= 0 {
		if *replica >= 0 && *replica != c.Replica {
			fmt.Fprintf(stderr, "downpour worker: --replica %d, but --creds are replica %d's\n", *replica, c.Replica)
			return errUsage
		}
		*replica = c.Replica
	}
	r, err := ep.join(ctx, auth.Worker, stderr)
	if err != nil {
		return err
	}
	defer r.close()
	stopDash, err := ep.startDashboard(ctx, &dashboard{job: *name, role: "worker", cli: r.cli, nc: r.nc}, stdout, r.log)
	if err != nil {
		return err
	}
	defer stopDash()
	var rec *latency.Recorder
	if *stats != "" {
		rec = &latency.Recorder{}
	}
	err = worker.Run(r.ctx, worker.Config{Store: r.cli.Job(*name), ID: *id, NATS: r.nc, Log: r.log, LeaseTTL: *ttl, WaitTimeout: *wait, Record: rec,
		Member: job.PinTo(*replica)})
	if rec != nil {
		if werr := latency.WriteFile(*stats, rec.Summary()); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	if err := cluster.Cause(r.ctx, err); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "worker finished its steps of job %s\n", *name)
	return nil
}

func cmdServers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("servers", flag.ContinueOnError)
	dir := fs.String("dir", "", "data directory of both servers (default: a new temporary directory)")
	var opts embedded.Options
	fs.IntVar(&opts.NATSPort, "nats-port", 0, "NATS client port (0: a free one)")
	fs.IntVar(&opts.EtcdPort, "etcd-port", 0, "etcd client port (0: a free one)")
	fs.IntVar(&opts.EtcdPeerPort, "etcd-peer-port", 0, "etcd peer port (0: a free one)")
	credsDir := fs.String("creds-dir", "", "require NATS credentials: accept only the jobs' roles made by 'downpour creds --dir' in this directory")
	tlsDir := fs.String("tls-dir", "", "serve NATS and etcd over TLS only, with the certificate made by 'downpour certs --dir' in this directory")
	var ep endpoints
	logFlags(fs, &ep)
	if err := parse(fs, args, stderr, "downpour servers --dir /tmp/downpour-servers --nats-port 4222 --etcd-port 2379"); err != nil {
		return err
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "downpour-servers-")
		if err != nil {
			return err
		}
		*dir = d
	}
	opts.Dir = *dir
	log := ep.logger(stderr)
	if *credsDir != "" {
		users, err := readUsers(*credsDir)
		if err != nil {
			return err
		}
		if len(users) == 0 {
			return fmt.Errorf("%s holds no job's users: make them with 'downpour creds --dir %s'", *credsDir, *credsDir)
		}
		opts.NATSUsers = auth.ServerUsers(users)
	} else {
		log.Warn("NATS accepts any client on loopback: give --creds-dir to require the roles' credentials")
	}
	opts.NATSLog, opts.EtcdGRPC = auth.ServerLog(log), auth.EtcdServerOptions(log)
	var clientTLS *tls.Config
	caFile := filepath.Join(*tlsDir, auth.CAFile)
	if *tlsDir != "" {
		if _, err := auth.ServerTLS(*tlsDir); err != nil { // its files, checked as the roles' files are
			return err
		}
		opts.TLSCert, opts.TLSKey = filepath.Join(*tlsDir, auth.ServerFile), filepath.Join(*tlsDir, auth.ServerKeyFile)
		var err error
		if clientTLS, err = auth.ClientTLS(caFile); err != nil {
			return err
		}
	}
	c, err := embedded.StartWith(ctx, opts)
	if err != nil {
		return err
	}
	defer c.Close()
	if *credsDir != "" {
		// etcd keeps password hashes: it learns them from the roles'
		// files, which the operator who made them holds in this directory.
		creds, err := readCreds(*credsDir)
		if err != nil {
			return err
		}
		if err := auth.SetUpEtcd(ctx, c.EtcdEndpoints, 10*time.Second, filepath.Join(*credsDir, "etcd-root.secret"), creds, clientTLS); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "NATS %s\netcd %s\ndata %s\n", c.NATSURL, c.EtcdEndpoints[0], *dir)
	tlsFlag := ""
	if *tlsDir != "" {
		tlsFlag = " --tls-ca " + caFile
	}
	fmt.Fprintf(stdout, "run roles with: --nats %s --etcd %s%s\n", c.NATSURL, c.EtcdEndpoints[0], tlsFlag)
	<-ctx.Done()
	return nil
}
