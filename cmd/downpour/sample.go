package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"math/rand/v2"
	"os"

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
	if err := writeGrid(*out, imgs, *n, side); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d samples in %s\n", *n, *out)
	if *idx != "" {
		if err := writeIDX(*idx, imgs, *n, side); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d samples in %s (idx, unsigned bytes)\n", *n, *idx)
	}
	return nil
}

// writeGrid lays n images (side x side, intensities in [0, 1]) out in a
// square grid with a one-pixel border, white ink on black as MNIST.
func writeGrid(path string, imgs []float32, n, side int) error {
	cols := int(math.Ceil(math.Sqrt(float64(n))))
	rows := (n + cols - 1) / cols
	cell := side + 1
	im := image.NewGray(image.Rect(0, 0, cols*cell+1, rows*cell+1))
	for i := range im.Pix {
		im.Pix[i] = 64 // the border
	}
	for k := 0; k < n; k++ {
		x0, y0 := 1+(k%cols)*cell, 1+(k/cols)*cell
		for y := 0; y < side; y++ {
			for x := 0; x < side; x++ {
				im.SetGray(x0+x, y0+y, color.Gray{Y: toByte(imgs[k*side*side+y*side+x])})
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, im); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func toByte(v float32) uint8 {
	return uint8(math.Round(math.Min(math.Max(float64(v), 0), 1) * 255))
}

// writeIDX writes the samples in MNIST's idx format (magic 0x00000803).
func writeIDX(path string, imgs []float32, n, side int) error {
	b := []byte{0, 0, 8, 3}
	for _, d := range []int{n, side, side} {
		b = binary.BigEndian.AppendUint32(b, uint32(d))
	}
	for _, v := range imgs[:n*side*side] {
		b = append(b, toByte(v))
	}
	return os.WriteFile(path, b, 0o644)
}
