// Command downpour trains Seq2Seq LSTMs and GANs on a sharded parameter
// server over NATS, coordinated through etcd.
//
//	downpour train                 one process: embedded NATS and etcd, a coordinator, shards, workers
//	downpour servers               an embedded NATS server and etcd, for roles run as separate processes
//	downpour creds --job NAME      a job's credentials, a file per role (--creds FILE)
//	downpour coordinator --nats URL --etcd URL [job flags]
//	downpour ps          --nats URL --etcd URL --job NAME
//	downpour worker      --nats URL --etcd URL --job NAME
//	downpour translate   --checkpoint RUN_DIR [--beam 2]   < sentences
//	downpour eval        --checkpoint RUN_DIR [--data FILE]
//	downpour sample      --checkpoint GAN_RUN_DIR --n 100 --out grid.png
//	downpour corpus      --pairs 12000000 --out wmt-12m.tsv
//
// Exit codes: 0 success, 1 failure, 2 bad usage, 130 interrupted.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	{"train", "train a model; with no --nats/--etcd, on an embedded cluster in this process", cmdTrain},
	{"coordinator", "run a job's coordinator against a NATS and etcd cluster", cmdCoordinator},
	{"ps", "run a parameter-server shard of a job", cmdPS},
	{"worker", "run a worker of a job", cmdWorker},
	{"status", "print a job: state, leader, placement, last checkpoint, members and their leases, shard clocks", cmdStatus},
	{"dashboard", "serve a run's dashboard from its run directory, live while the run lives and after it ends", cmdDashboard},
	{"reshard", "move a running job to another number of parameter-server shards", cmdReshard},
	{"servers", "run an embedded NATS server and etcd for a local multi-process cluster", cmdServers},
	{"creds", "make a job's credentials: a private file per role and the NATS servers' users", cmdCreds},
	{"etcd-auth", "give etcd the users of the jobs in a credentials directory and turn its authentication on", cmdEtcdAuth},
	{"certs", "make a cluster's TLS authority and the certificate its NATS and etcd servers present", cmdCerts},
	{"translate", "translate stdin line by line with a trained checkpoint", cmdTranslate},
	{"eval", "score a checkpoint: perplexity, BLEU and exact match (Seq2Seq), or the Parzen-window estimate (GAN)", cmdEval},
	{"plot", "draw a run's loss and evaluation curves as PNG from its metrics.jsonl", cmdPlot},
	{"scale", "run the load harness: jobs of the synthetic model with many workers and shards, each role a process, and what each cost", cmdScale},
	{"sample", "draw samples from a GAN checkpoint into a PNG grid (and an idx file)", cmdSample},
	{"corpus", "write the generated WMT-like corpus as a corpus file, at a real corpus's scale", cmdCorpus},
}

// errUsage marks a command-line mistake: exit code 2.
var errUsage = errors.New("usage")

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: downpour <command> [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'downpour <command> --help' for a command's flags.")
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout, stderr)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			return 2
		case ctx.Err() != nil:
			fmt.Fprintf(stderr, "downpour %s: interrupted\n", c.name)
			return 130
		default:
			fmt.Fprintf(stderr, "downpour %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "downpour: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

// parse parses args into fs, printing usage on stderr for a bad flag.
func parse(fs *flag.FlagSet, args []string, stderr io.Writer, example string) error {
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: downpour %s [flags]\n\nexample:\n  %s\n\nflags:\n", fs.Name(), example)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "downpour %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}
