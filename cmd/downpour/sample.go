package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"

	"github.com/downpour-ml/downpour/internal/app/evaluate"
	"github.com/downpour-ml/downpour/models"
)

func cmdSample(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sample", flag.ContinueOnError)
	ckpt := fs.String("checkpoint", "", "a GAN run directory or final.ckpt file")
	n := fs.Int("n", 100, "samples to draw")
	out := fs.String("out", "samples.png", "PNG grid of the samples")
	idx := fs.String("idx", "", "also write the samples as an idx file of unsigned bytes (n x 28 x 28), for other tools")
	seed := fs.Uint64("seed", 1, "seed of the noise")
	if err := parse(fs, args, stderr, "downpour sample --checkpoint runs/demo-20261128-221000 --n 100 --out grid.png --idx samples.idx"); err != nil {
		return err
	}
	if *ckpt == "" || *n < 1 || *n > 100000 {
		fmt.Fprintln(stderr, "downpour sample: needs --checkpoint, and --n in 1..100000")
		return errUsage
	}
	params, spec, err := readCheckpoint(*ckpt, stderr)
	if err != nil {
		return err
	}
	if spec.Model != "gan" {
		return fmt.Errorf("%s is a checkpoint of a %s, not of a GAN", *ckpt, spec.Model)
	}
	side := int(math.Round(math.Sqrt(float64(spec.GAN.Pixels))))
	if side*side != spec.GAN.Pixels {
		return fmt.Errorf("%d pixels are not a square image", spec.GAN.Pixels)
	}
	imgs := models.Sample(spec.GAN, params, *n, rand.New(rand.NewPCG(*seed, 0x5a9)))
	if err := evaluate.WriteGrid(*out, imgs, *n, side); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d samples in %s\n", *n, *out)
	if *idx != "" {
		if err := evaluate.WriteIDX(*idx, imgs, *n, side); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d samples in %s (idx, unsigned bytes)\n", *n, *idx)
	}
	return nil
}
