// Package checkpoint reads and writes a model's parameters as one file:
//
//	"DPCK" | version u16 | 0 u16 | header length u32 | header (JSON) | CRC32C(header) u32
//	       | data length u64 | data (little-endian float32) | CRC32C(data) u32
//
// A file is written under a temporary name, fsynced and renamed, so a reader
// sees either the old file or the whole new one; a torn or corrupt file fails
// its checksums and is refused with ErrCorrupt. A reader also takes a
// checkpoint compressed with gzip (gzip -k final.ckpt), as one is shipped.
package checkpoint

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/downpour-ml/downpour/internal/wire"
	"github.com/downpour-ml/downpour/models"
)

// Version is the format version written.
const Version = 1

const (
	magic     = "DPCK"
	maxHeader = 1 << 20
	// maxGunzipped bounds what a gzipped checkpoint may expand to (4 GiB
	// of parameters: the paper's Seq2Seq has 1.5 GiB).
	maxGunzipped = 4 << 30
)

// ErrCorrupt marks a file that is not a whole, valid checkpoint.
var ErrCorrupt = errors.New("corrupt checkpoint")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Meta describes the parameters a checkpoint holds.
type Meta struct {
	Job     string          `json:"job"`
	Step    int64           `json:"step"` // steps applied
	Model   string          `json:"model"`
	Config  json.RawMessage `json:"config,omitempty"` // the model's shape, as the job spec has it
	Tensors []models.Tensor `json:"tensors"`
}

// Encode serialises m and params.
func Encode(m *Meta, params []float32) ([]byte, error) {
	head, err := header(m, params)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.Grow(len(head) + 4*len(params) + 4)
	if err := writeTo(&b, head, params); err != nil { // (a bytes.Buffer does not fail)
		return nil, err
	}
	return b.Bytes(), nil
}

// header is a checkpoint's bytes before its parameters.
func header(m *Meta, params []float32) ([]byte, error) {
	if models.TotalSize(m.Tensors) != len(params) {
		return nil, fmt.Errorf("checkpoint: %d parameters for tensors of %d", len(params), models.TotalSize(m.Tensors))
	}
	h, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, 24+len(h))
	b = append(b, magic...)
	b = binary.LittleEndian.AppendUint16(b, Version)
	b = binary.LittleEndian.AppendUint16(b, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(h)))
	b = append(b, h...)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(h, castagnoli))
	return binary.LittleEndian.AppendUint64(b, uint64(4*len(params))), nil
}

// writeTo writes a checkpoint's bytes, its header head (header's) and
// params, to w without making them whole first: the parameters go a part
// at a time (a 384M-parameter model's checkpoint is 1.5 GB, which a whole
// encoding would hold a second copy of).
func writeTo(w io.Writer, head []byte, params []float32) error {
	if _, err := w.Write(head); err != nil {
		return err
	}
	crc := uint32(0)
	var buf []byte
	for at := 0; at < len(params); at += 1 << 20 {
		part := params[at:min(at+1<<20, len(params))]
		buf = wire.AppendFloats(buf[:0], part)
		crc = crc32.Update(crc, castagnoli, buf)
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	_, err := w.Write(binary.LittleEndian.AppendUint32(nil, crc))
	return err
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// Decode parses a checkpoint, checking its form and both checksums; b may
// be gzip-compressed.
func Decode(b []byte) (*Meta, []float32, error) {
	if len(b) >= 2 && b[0] == 0x1f && b[1] == 0x8b {
		z, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, nil, corrupt("gzip: %v", err)
		}
		var out bytes.Buffer
		n, err := io.Copy(&out, io.LimitReader(z, maxGunzipped+1))
		if err != nil {
			return nil, nil, corrupt("gzip: %v", err)
		}
		if n > maxGunzipped {
			return nil, nil, corrupt("gzip: expands beyond %d bytes", int64(maxGunzipped))
		}
		b = out.Bytes()
		if len(b) >= 2 && b[0] == 0x1f && b[1] == 0x8b {
			return nil, nil, corrupt("gzip inside gzip")
		}
	}
	if len(b) < 12 || string(b[:4]) != magic {
		return nil, nil, corrupt("not a downpour checkpoint (bad magic)")
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != Version {
		return nil, nil, fmt.Errorf("checkpoint format version %d: this build reads version %d", v, Version)
	}
	if binary.LittleEndian.Uint16(b[6:]) != 0 {
		return nil, nil, corrupt("reserved field is not zero")
	}
	hl := uint64(binary.LittleEndian.Uint32(b[8:]))
	if hl > maxHeader || uint64(len(b)) < 12+hl+12 {
		return nil, nil, corrupt("truncated header")
	}
	h := b[12 : 12+hl]
	rest := b[12+hl:]
	if crc32.Checksum(h, castagnoli) != binary.LittleEndian.Uint32(rest) {
		return nil, nil, corrupt("header checksum mismatch")
	}
	dl := binary.LittleEndian.Uint64(rest[4:])
	rest = rest[12:]
	if dl%4 != 0 || dl+4 != uint64(len(rest)) {
		return nil, nil, corrupt("data length %d does not match the file (%d bytes left)", dl, len(rest))
	}
	data := rest[:dl]
	if crc32.Checksum(data, castagnoli) != binary.LittleEndian.Uint32(rest[dl:]) {
		return nil, nil, corrupt("data checksum mismatch")
	}
	var m Meta
	if err := json.Unmarshal(h, &m); err != nil {
		return nil, nil, corrupt("header: %v", err)
	}
	n := 0
	for _, t := range m.Tensors {
		s := 1
		for _, d := range t.Shape {
			if d < 0 || (d > 0 && s > int(dl)/d) {
				return nil, nil, corrupt("tensor %q has an impossible shape %v", t.Name, t.Shape)
			}
			s *= d
		}
		n += s
	}
	if uint64(4*n) != dl {
		return nil, nil, corrupt("tensors hold %d parameters, data %d", n, dl/4)
	}
	params := make([]float32, n)
	wire.CopyFloats(params, data)
	return &m, params, nil
}

// Write stores a checkpoint at path atomically: temporary file, fsync,
// rename, fsync of the directory.
func Write(path string, m *Meta, params []float32) error {
	head, err := header(m, params)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := writeTo(bw, head, params); err != nil {
		f.Close()
		return fmt.Errorf("checkpoint: %w", err)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("checkpoint: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("checkpoint: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Read loads and checks the checkpoint at path.
func Read(path string) (*Meta, []float32, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoint: %w", err)
	}
	m, p, err := Decode(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, p, nil
}
