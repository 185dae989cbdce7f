package job

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"slices"

	"github.com/downpour-ml/downpour/internal/checkpoint"
	"github.com/downpour-ml/downpour/models"
)

// An Initializer writes a tensor's initial value into dst.
type Initializer func(dst []float32, t models.Tensor)

// Initializer returns how the job's tensors start: from the checkpoint
// InitFrom names, which must be the file Resolve read (its SHA-256), or from
// the seed (InitTensor).
func (s *Spec) Initializer() (Initializer, error) {
	if s.InitFrom == "" {
		return s.InitTensor, nil
	}
	values, sum, err := s.readInit()
	if err != nil {
		return nil, err
	}
	if sum != s.InitSHA256 {
		return nil, fmt.Errorf("--init-from %s: the file changed since the job started (SHA-256 %.12s..., the job's %.12s...)", s.InitFrom, sum, s.InitSHA256)
	}
	return func(dst []float32, t models.Tensor) { copy(dst, values[t.Name]) }, nil
}

// BlockInit returns how a shard makes its blocks' initial values under
// placement p: what Initializer gives their tensors, but where a tensor's
// values are a seeded uniform stream (every tensor of the Seq2Seq and
// synthetic models, the GAN's weights) made block by block without making
// the tensor, so that a shard of a few blocks of a 640 MB embedding table
// holds those blocks only.
func (s *Spec) BlockInit(p *Placement) (func(b Block, dst []float32), error) {
	init, err := s.Initializer()
	if err != nil {
		return nil, err
	}
	offsets := models.Offsets(p.Tensors)
	streams := map[int]*models.UniformStream{}
	cur := -1
	var full []float32
	return func(b Block, dst []float32) {
		t := p.Tensors[b.Tensor]
		at := b.Offset - offsets[b.Tensor]
		if scale, ok := s.uniformScale(t); ok && s.InitFrom == "" {
			u := streams[b.Tensor]
			if u == nil || at < u.Pos() {
				u = models.NewUniformStream(s.Seed, t.Name, scale)
				streams[b.Tensor] = u
			}
			u.Fill(dst, at)
			return
		}
		if b.Tensor != cur {
			full = make([]float32, t.Size())
			init(full, t)
			cur = b.Tensor
		}
		copy(dst, full[at:at+b.Len])
	}, nil
}

// uniformScale is the half-width of the uniform law tensor t starts from
// (a seeded stream, models.InitUniform's), if it starts from one: every
// tensor but the GAN's biases. InitTensor and BlockInit both go by it.
func (s *Spec) uniformScale(t models.Tensor) (float64, bool) {
	switch s.Model {
	case Synthetic:
		return 1, true
	case "gan":
		switch {
		case t.Name == "g.out.b" && s.GOutBias != nil, len(t.Shape) == 1:
			return 0, false
		case t.Name[0] == 'g':
			return s.GAN.GScale, true
		}
		return s.GAN.DScale, true
	}
	return s.Seq2Seq.UniformScale(), true
}

// readInit reads the checkpoint InitFrom names: each of the model's tensors'
// values by name, and the file's SHA-256 in hex. The checkpoint must hold exactly
// the model's tensors, each of the model's shape.
func (s *Spec) readInit() (map[string][]float32, string, error) {
	b, err := os.ReadFile(s.InitFrom)
	if err != nil {
		return nil, "", fmt.Errorf("--init-from: %w", err)
	}
	h := sha256.Sum256(b)
	sum := hex.EncodeToString(h[:])
	m, params, err := checkpoint.Decode(b)
	if err != nil {
		return nil, sum, fmt.Errorf("--init-from %s: %w", s.InitFrom, err)
	}
	held := map[string][]float32{}
	off := 0
	for _, t := range m.Tensors {
		if _, ok := held[t.Name]; ok {
			return nil, sum, fmt.Errorf("--init-from %s: the checkpoint has tensor %q twice", s.InitFrom, t.Name)
		}
		held[t.Name] = params[off : off+t.Size()]
		off += t.Size()
	}
	values := map[string][]float32{}
	for _, t := range s.Tensors() {
		v, ok := held[t.Name]
		if !ok {
			return nil, sum, fmt.Errorf("--init-from %s: the checkpoint (a %s model) has no tensor %q, which this job's %s model has", s.InitFrom, m.Model, t.Name, s.Model)
		}
		i := slices.IndexFunc(m.Tensors, func(c models.Tensor) bool { return c.Name == t.Name })
		if !slices.Equal(m.Tensors[i].Shape, t.Shape) {
			return nil, sum, fmt.Errorf("--init-from %s: tensor %q is %v in the checkpoint, %v in this job's model", s.InitFrom, t.Name, m.Tensors[i].Shape, t.Shape)
		}
		values[t.Name] = v
	}
	if len(values) != len(held) {
		for _, t := range m.Tensors {
			if _, ok := values[t.Name]; !ok {
				return nil, sum, fmt.Errorf("--init-from %s: the checkpoint has tensor %q, which this job's %s model does not", s.InitFrom, t.Name, s.Model)
			}
		}
	}
	return values, sum, nil
}
