package evaluate

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/downpour-ml/downpour/internal/testenv"
)

// A grid puts image k at column k%cols, row k/cols, one pixel of border
// (grey 64) around each, intensities clamped to [0, 1] and scaled to 255.
func TestWriteGrid(t *testing.T) {
	const n, side = 3, 2
	imgs := []float32{
		0, 1, 0.5, -1, // image 0
		2, 0, 0, 0, // image 1
		0, 0, 0, 0.5, // image 2
	}
	path := filepath.Join(t.TempDir(), "g.png")
	if err := WriteGrid(path, imgs, n, side); err != nil {
		t.Fatal(err)
	}
	im := testenv.PNG(t, path)
	// 3 images: 2 columns, 2 rows of cells of 3 pixels, plus the last border.
	if b := im.Bounds(); b.Dx() != 7 || b.Dy() != 7 {
		t.Fatalf("grid %v, want 7x7", b)
	}
	gray := func(x, y int) uint32 { r, _, _, _ := im.At(x, y).RGBA(); return r >> 8 }
	for _, c := range []struct {
		x, y int
		want uint32
	}{
		{0, 0, 64}, {3, 3, 64}, {6, 6, 64}, // borders
		{1, 1, 0}, {2, 1, 255}, {1, 2, 128}, {2, 2, 0}, // image 0 (-1 clamped to 0)
		{4, 1, 255}, {5, 1, 0}, // image 1 (2 clamped to 1)
		{1, 4, 0}, {2, 5, 128}, // image 2 starts the second row
		{4, 4, 64}, {5, 5, 64}, // the cell of no image stays border grey
	} {
		if got := gray(c.x, c.y); got != c.want {
			t.Errorf("pixel (%d, %d) = %d, want %d", c.x, c.y, got, c.want)
		}
	}
}

// An idx file is MNIST's: magic 0x00000803, the three sizes big-endian,
// then one byte a pixel.
func TestWriteIDX(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.idx")
	if err := WriteIDX(path, []float32{0, 1, 0.5, 2, 9, 9}, 1, 2); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 255, 128, 255}
	if !bytes.Equal(b, want) {
		t.Fatalf("idx bytes %v, want %v", b, want)
	}
}
