package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/coordinator/status"
	"github.com/downpour-ml/downpour/internal/app/auth"
	"github.com/downpour-ml/downpour/internal/app/rundir"
	"github.com/downpour-ml/downpour/internal/wire"
)

// cmdStatus prints a job as etcd (and, with --nats, its shards) know it:
// state, leader and standbys, placement, last checkpoint, members with the
// time left on their leases, and each shard's clock.
func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var ep endpoints
	endpointFlags(fs, &ep)
	name := fs.String("job", "demo", "the job")
	run := fs.String("run", "", "a train run's directory: its job while it runs (the run directory says where), or what the run left when it has ended")
	if err := parse(fs, args, stderr, "downpour status --etcd http://127.0.0.1:2379 --nats nats://127.0.0.1:4222 --job demo\n  downpour status --run runs/demo-20261128-210316"); err != nil {
		return err
	}
	if *run != "" && (ep.Etcd != "" || ep.NATS != "") {
		fmt.Fprintln(stderr, "downpour status: give --run, or --etcd and --nats, not both")
		return errUsage
	}
	if *run != "" {
		live, err := joinRun(*run, &ep, name)
		if !live {
			return status.PrintEnded(*run, err, stdout)
		}
	}
	if ep.Etcd == "" {
		fmt.Fprintln(stderr, "downpour status: needs --etcd (and --nats for the shards' clocks), or --run")
		return errUsage
	}
	if err := wire.ValidJob(*name); err != nil {
		return err
	}
	cli, err := ep.ConnectEtcd(ctx, auth.Observer)
	if err != nil {
		if *run != "" { // killed without a chance to say so
			return status.PrintEnded(*run, fmt.Errorf("its cluster does not answer: %w", err), stdout)
		}
		return err
	}
	defer cli.Close()
	var nc *nats.Conn
	if ep.NATS != "" {
		if nc, err = ep.ConnectNATS("status", auth.Observer); err != nil {
			return err
		}
		defer nc.Close()
	}
	st, err := status.Read(ctx, cli.Job(*name), nc)
	if err != nil {
		return fmt.Errorf("%w (etcd at %s)", err, ep.Etcd)
	}
	return st.Print(stdout)
}

// joinRun points ep and name at the live run in dir, with the observer's
// credentials it published, and reports whether there is one (err says
// why not, nil when the run has simply ended).
func joinRun(dir string, ep *endpoints, name *string) (live bool, err error) {
	e, creds, err := rundir.Live(dir)
	if err != nil {
		if errors.Is(err, rundir.ErrNotLive) {
			err = nil
		}
		return false, err
	}
	ep.NATS, ep.Etcd, ep.CredsFile, *name = e.NATS, strings.Join(e.Etcd, ","), creds, e.Job
	return true, nil
}
