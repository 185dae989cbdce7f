package shard

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func idxBytes(dims []uint32, data []byte) []byte {
	b := []byte{0, 0, 8, byte(len(dims))}
	for _, d := range dims {
		b = append(b, byte(d>>24), byte(d>>16), byte(d>>8), byte(d))
	}
	return append(b, data...)
}

func TestDecodeIDX(t *testing.T) {
	raw := idxBytes([]uint32{2, 3}, []byte{1, 2, 3, 4, 5, 6})
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write(raw)
	w.Close()
	for _, b := range [][]byte{raw, gz.Bytes()} {
		x, err := DecodeIDX(b)
		if err != nil || len(x.Dims) != 2 || x.Dims[1] != 3 || x.Data[5] != 6 {
			t.Fatalf("%v %+v", err, x)
		}
	}
	for name, b := range map[string][]byte{
		"truncated":  raw[:len(raw)-1],
		"extra":      append(append([]byte(nil), raw...), 0),
		"magic":      append([]byte{1}, raw[1:]...),
		"float type": append([]byte{0, 0, 0x0d}, raw[3:]...),
		"no dims":    {0, 0, 8, 0},
		"huge dim":   idxBytes([]uint32{1 << 31, 1 << 31}, nil),
		"short head": {0, 0, 8, 3, 0, 0},
		"bad gzip":   {0x1f, 0x8b, 1, 2, 3},
		"zero dim":   idxBytes([]uint32{0}, nil),
	} {
		if _, err := DecodeIDX(b); !errors.Is(err, ErrBadIDX) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// The MNIST shipped in the GoMNIST module loads and splits as the paper does.
func TestLoadMNIST(t *testing.T) {
	dir, err := MNISTDir()
	if err != nil {
		t.Fatal(err) // the module is a dependency: it must be in the cache of any machine that built this
	}
	m, err := LoadMNIST(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Train) != 50000 || len(m.Valid) != 10000 || len(m.Test) != 10000 || len(m.Train[0]) != 784 {
		t.Fatalf("split %d/%d/%d", len(m.Train), len(m.Valid), len(m.Test))
	}
	var sum float64
	for _, v := range m.Train[0] {
		if v < 0 || v > 1 {
			t.Fatalf("pixel %v", v)
		}
		sum += float64(v)
	}
	if sum < 50 || sum > 200 { // a handwritten digit covers roughly 10-25% of the image
		t.Fatalf("first image's ink %v", sum)
	}
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "train-images-idx3-ubyte"), idxBytes([]uint32{1, 28, 28}, make([]byte, 100)), 0o644)
	os.WriteFile(filepath.Join(bad, "t10k-images-idx3-ubyte"), idxBytes([]uint32{1, 28, 28}, make([]byte, 784)), 0o644)
	if _, err := LoadMNIST(bad); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("truncated file: %v", err)
	}
}

// A directory's images are decoded once per process, and again when a file
// changes.
func TestLoadMNISTOncePerProcess(t *testing.T) {
	dir := t.TempDir()
	write := func(first byte) {
		train := make([]byte, 10001*784)
		train[0] = first
		if err := os.WriteFile(filepath.Join(dir, "train-images-idx3-ubyte"), idxBytes([]uint32{10001, 28, 28}, train), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "t10k-images-idx3-ubyte"), idxBytes([]uint32{1, 28, 28}, make([]byte, 784)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(255)
	a, err := LoadMNIST(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadMNIST(dir + "/.")
	if err != nil || b != a {
		t.Fatalf("second load of the same directory: %p, %v; want the first's %p", b, err, a)
	}
	if a.Train[0][0] != 1 || len(a.Train) != 1 || len(a.Valid) != 10000 || len(a.Test) != 1 {
		t.Fatalf("pixel %v, split %d/%d/%d", a.Train[0][0], len(a.Train), len(a.Valid), len(a.Test))
	}
	write(51) // the same size: the modification time tells
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(filepath.Join(dir, "train-images-idx3-ubyte"), later, later); err != nil {
		t.Fatal(err)
	}
	c, err := LoadMNIST(dir)
	if err != nil || c == a || c.Train[0][0] != 0.2 {
		t.Fatalf("after the file changed: %p (first %p), pixel %v, %v", c, a, c.Train[0][0], err)
	}
	for v := range 256 {
		if pixel[v] != float32(v)/255 {
			t.Fatalf("pixel[%d] = %v", v, pixel[v])
		}
	}
}

func FuzzDecodeIDX(f *testing.F) {
	f.Add(idxBytes([]uint32{2, 3}, []byte{1, 2, 3, 4, 5, 6}))
	f.Add([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := DecodeIDX(b)
		if err != nil {
			return
		}
		n := 1
		for _, d := range x.Dims {
			n *= d
		}
		if n != len(x.Data) {
			t.Fatalf("dims %v for %d bytes", x.Dims, len(x.Data))
		}
	})
}
