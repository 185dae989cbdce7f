package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/downpour-ml/downpour/internal/job"
)

// specFlags binds the job spec's fields to flags, starting from the defaults.
func specFlags(fs *flag.FlagSet, s *job.Spec) {
	fs.StringVar(&s.Name, "job", s.Name, "job name (letters, digits, '_' and '-')")
	fs.StringVar(&s.Task, "task", s.Task, "synthetic task: copy, reverse or sort")
	fs.IntVar(&s.MinLen, "min-len", s.MinLen, "shortest source sequence")
	fs.IntVar(&s.MaxLen, "max-len", s.MaxLen, "longest source sequence")
	fs.IntVar(&s.Seq2Seq.Embed, "embed", s.Seq2Seq.Embed, "embedding size")
	fs.IntVar(&s.Seq2Seq.Hidden, "hidden", s.Seq2Seq.Hidden, "LSTM hidden size")
	fs.IntVar(&s.Seq2Seq.Layers, "layers", s.Seq2Seq.Layers, "LSTM layers in the encoder and in the decoder")
	fs.Uint64Var(&s.Seed, "seed", s.Seed, "seed of initialisation and data")
	fs.Int64Var(&s.Steps, "steps", s.Steps, "training steps")
	fs.IntVar(&s.Workers, "workers", s.Workers, "workers (model replicas), one rank each")
	fs.IntVar(&s.Shards, "ps-shards", s.Shards, "parameter-server shards")
	fs.IntVar(&s.BlockSize, "block-size", s.BlockSize, "floats per parameter block")
	fs.IntVar(&s.Batch, "batch", s.Batch, "examples per worker per step")
	fs.StringVar(&s.Mode, "mode", s.Mode, "consistency mode: sync")
	fs.Float64Var(&s.LR, "lr", s.LR, "SGD learning rate")
	fs.Float64Var(&s.ClipNorm, "clip", s.ClipNorm, "rescale the gradient to this global norm when larger (0: never)")
	fs.Int64Var(&s.LogEvery, "log-every", s.LogEvery, "log every N steps")
}

// endpoints are the cluster flags every role has.
type endpoints struct {
	nats    string
	etcd    string
	timeout time.Duration
	verbose bool
}

func endpointFlags(fs *flag.FlagSet, e *endpoints) {
	fs.StringVar(&e.nats, "nats", "", "NATS server URL(s), comma-separated (e.g. nats://127.0.0.1:4222)")
	fs.StringVar(&e.etcd, "etcd", "", "etcd endpoint(s), comma-separated (e.g. http://127.0.0.1:2379)")
	fs.DurationVar(&e.timeout, "connect-timeout", 5*time.Second, "how long to wait for NATS and etcd to answer")
	fs.BoolVar(&e.verbose, "v", false, "log every role's progress (info level)")
}

func (e *endpoints) require(cmd string, stderr io.Writer) error {
	if e.nats == "" || e.etcd == "" {
		fmt.Fprintf(stderr, "downpour %s: needs --nats and --etcd (start a local pair with 'downpour servers')\n", cmd)
		return errUsage
	}
	return nil
}

func (e *endpoints) logger(stderr io.Writer) *slog.Logger {
	level := slog.LevelWarn
	if e.verbose {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
}

// connectNATS opens a NATS connection named after the role; an unreachable
// server is an error within the timeout, not a hang.
func connectNATS(url, name string, timeout time.Duration) (*nats.Conn, error) {
	nc, err := nats.Connect(url, nats.Name("downpour "+name), nats.Timeout(timeout),
		nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("cannot reach NATS at %s (is it running? check --nats): %w", url, err)
	}
	return nc, nil
}

func connectEtcd(ctx context.Context, eps string, timeout time.Duration) (*clientv3.Client, error) {
	return job.Connect(ctx, strings.Split(eps, ","), timeout)
}
