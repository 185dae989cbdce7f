package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/downpour-ml/downpour/internal/app/telemetry"
	"github.com/downpour-ml/downpour/internal/job"
)

// cmdPlot draws a run's curves (loss.png, eval.png) from its metrics.jsonl,
// as training does after each evaluation: for a run still going, or one
// whose pictures were lost.
func cmdPlot(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("plot", flag.ContinueOnError)
	run := fs.String("run", "", "the run directory")
	out := fs.String("out", "", "where to write the PNGs (default: the run directory)")
	spe := fs.Float64("steps-per-epoch", -1, "x axis in epochs of this many steps (default: from the run's job.json; 0: steps)")
	if err := parse(fs, args, stderr, "downpour plot --run runs/demo-20261128-221000"); err != nil {
		return err
	}
	if *run == "" {
		fmt.Fprintln(stderr, "downpour plot: needs --run")
		return errUsage
	}
	if *out == "" {
		*out = *run
	}
	if *spe < 0 {
		*spe = 0
		if b, err := os.ReadFile(filepath.Join(*run, "job.json")); err == nil {
			spec, err := job.DecodeSpec(b)
			if err != nil {
				return fmt.Errorf("%s: %w", filepath.Join(*run, "job.json"), err)
			}
			if *spe, err = spec.StepsPerEpoch(); err != nil {
				return err
			}
		}
	}
	if err := telemetry.Curves(filepath.Join(*run, "metrics.jsonl"), *out, *spe); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "curves in %s\n", *out)
	return nil
}
