package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/downpour-ml/downpour/internal/app/auth"
)

// cmdReshard asks a running job's coordinator to move the job to another
// number of parameter-server shards, and waits for the answer. The job rolls
// back to its last complete checkpoint: every shard restores its new blocks
// from that checkpoint's snapshot files (which every shard must be able to
// read), and every worker resumes at its step.
func cmdReshard(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("reshard", flag.ContinueOnError)
	var ep endpoints
	endpointFlags(fs, &ep)
	name := fs.String("job", "demo", "job to re-place")
	shards := fs.Int("ps-shards", 0, "the new number of parameter-server shards")
	wait := fs.Duration("wait", time.Minute, "how long to wait for the coordinator's answer")
	if err := parse(fs, args, stderr, "downpour reshard --etcd http://127.0.0.1:2379 --job demo --ps-shards 3"); err != nil {
		return err
	}
	if ep.Etcd == "" || *shards < 1 {
		fmt.Fprintln(stderr, "downpour reshard: needs --etcd, and --ps-shards at least 1")
		return errUsage
	}
	cli, err := ep.ConnectEtcd(ctx, auth.Coordinator)
	if err != nil {
		return err
	}
	defer cli.Close()
	st := cli.Job(*name)
	if _, _, err := st.Placement(ctx); err != nil {
		return err
	}
	if err := st.RequestReshard(ctx, *shards); err != nil {
		return err
	}
	ans, err := st.ReshardAnswer(ctx, *wait)
	if err != nil {
		return fmt.Errorf("no answer from the coordinator of job %s (is it running?): %w", *name, err)
	}
	if ans.Status != "done" {
		return errors.New(ans.Status)
	}
	fmt.Fprintf(stdout, "job %s: placement %d on %d shards, resuming from the checkpoint of step %d\n", *name, ans.Version, *shards, ans.Start)
	return nil
}
