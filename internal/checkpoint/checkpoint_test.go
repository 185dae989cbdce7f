package checkpoint

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/downpour-ml/downpour/models"
)

func sample() (*Meta, []float32) {
	m := &Meta{Job: "j", Step: 12, Model: "seq2seq", Tensors: []models.Tensor{{Name: "a", Shape: []int{2, 3}}, {Name: "b", Shape: []int{4}}}}
	p := make([]float32, 10)
	for i := range p {
		p[i] = float32(i) * 0.25
	}
	return m, p
}

func TestWriteReadRoundTrip(t *testing.T) {
	m, p := sample()
	path := filepath.Join(t.TempDir(), "final.ckpt")
	if err := Write(path, m, p); err != nil {
		t.Fatal(err)
	}
	m2, p2, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Job != "j" || m2.Step != 12 || len(m2.Tensors) != 2 || !slices.Equal(p, p2) {
		t.Fatalf("round trip: %+v %v", m2, p2)
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Fatalf("temporary files left behind: %v", ents)
	}
	// Write streams the parameters a part at a time: its file is Encode's
	// bytes, for a model of several parts (and a part's remainder) too.
	big := &Meta{Job: "j", Model: "seq2seq", Tensors: []models.Tensor{{Name: "w", Shape: []int{3<<20 + 5}}}}
	bp := make([]float32, 3<<20+5)
	for i := range bp {
		bp[i] = float32(i%977) - 0.5
	}
	for _, c := range []struct {
		m *Meta
		p []float32
	}{{m, p}, {big, bp}} {
		if err := Write(path, c.m, c.p); err != nil {
			t.Fatal(err)
		}
		want, err := Encode(c.m, c.p)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Write's file of %d parameters is not Encode's bytes (%v)", len(c.p), err)
		}
	}
	if err := Write(path, m, p[:3]); err == nil {
		t.Fatal("wrote a checkpoint of the wrong length")
	}
}

// Every truncation and every single flipped bit is detected.
func TestCorruptionDetected(t *testing.T) {
	m, p := sample()
	b, err := Encode(m, p)
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(b); n++ {
		if _, _, err := Decode(b[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d bytes: %v", n, err)
		}
	}
	for i := 0; i < len(b); i++ {
		if i == 4 || i == 5 { // the version field has its own error
			continue
		}
		for bit := 0; bit < 8; bit++ {
			c := slices.Clone(b)
			c[i] ^= 1 << bit
			if _, _, err := Decode(c); err == nil {
				t.Fatalf("flipping bit %d of byte %d went unnoticed", bit, i)
			}
		}
	}
}

func TestEncodeRefusesWrongLength(t *testing.T) {
	m, p := sample()
	if _, err := Encode(m, p[:9]); err == nil {
		t.Fatal("accepted 9 parameters for 10")
	}
}

// A gzipped checkpoint reads as the plain one; a corrupt or truncated
// gzip stream is ErrCorrupt.
func TestGzipped(t *testing.T) {
	m, p := sample()
	b, _ := Encode(m, p)
	var z bytes.Buffer
	w := gzip.NewWriter(&z)
	w.Write(b)
	w.Close()
	path := filepath.Join(t.TempDir(), "x.ckpt.gz")
	if err := os.WriteFile(path, z.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	m2, p2, err := Read(path)
	if err != nil || m2.Step != m.Step || !slices.Equal(p2, p) {
		t.Fatalf("gzipped: %v %+v %v", err, m2, p2)
	}
	for _, bad := range [][]byte{z.Bytes()[:z.Len()-9], append(z.Bytes()[:20:20], 0xff, 0xff, 0xff), {0x1f, 0x8b}} {
		if _, _, err := Decode(bad); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("corrupt gzip (%d bytes): %v", len(bad), err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	m, p := sample()
	b, _ := Encode(m, p)
	f.Add(b)
	var z bytes.Buffer
	w := gzip.NewWriter(&z)
	w.Write(b)
	w.Close()
	f.Add(z.Bytes())
	f.Add([]byte("DPCK\x01\x00\x00\x00\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, p, err := Decode(data)
		if err == nil && models.TotalSize(m.Tensors) != len(p) {
			t.Fatalf("decoded %d parameters for tensors of %d", len(p), models.TotalSize(m.Tensors))
		}
	})
}
