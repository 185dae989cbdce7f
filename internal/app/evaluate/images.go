package evaluate

import (
	"encoding/binary"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
)

// WriteGrid lays n images (side x side, intensities in [0, 1]) out in a
// square grid with a one-pixel border, white ink on black as MNIST.
func WriteGrid(path string, imgs []float32, n, side int) error {
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

// WriteIDX writes the samples in MNIST's idx format (magic 0x00000803).
func WriteIDX(path string, imgs []float32, n, side int) error {
	b := []byte{0, 0, 8, 3}
	for _, d := range []int{n, side, side} {
		b = binary.BigEndian.AppendUint32(b, uint32(d))
	}
	for _, v := range imgs[:n*side*side] {
		b = append(b, toByte(v))
	}
	return os.WriteFile(path, b, 0o644)
}
