package models

import (
	"errors"
	"fmt"
	"slices"
)

// Seq2SeqConfig is the shape of a Seq2Seq model (Sutskever et al., 2014): a
// deep LSTM encoder whose final state starts a deep LSTM decoder, with a
// softmax over the target vocabulary.
type Seq2SeqConfig struct {
	SrcVocab  int     `json:"src_vocab"`
	TgtVocab  int     `json:"tgt_vocab"`
	Embed     int     `json:"embed"`
	Hidden    int     `json:"hidden"`
	Layers    int     `json:"layers"`
	InitScale float64 `json:"init_scale"` // parameters start U(-InitScale, InitScale); 0 means 0.08
	// SoftmaxBlocks cuts the output layer into this many blocks of the
	// target vocabulary (0 or 1: one), each with its own weights and bias,
	// whose normalizer and input gradient are combined in block order
	// (softmax.go): a replica whose softmax is split over slices of whole
	// blocks computes the bits of the model in one process.
	SoftmaxBlocks int `json:"softmax_blocks,omitempty"`
}

// Validate reports whether the shape is usable.
func (c Seq2SeqConfig) Validate() error {
	switch {
	case c.SrcVocab < 2 || c.TgtVocab < 2:
		return fmt.Errorf("seq2seq: vocabularies must hold at least 2 words (got %d, %d)", c.SrcVocab, c.TgtVocab)
	case c.Embed < 1 || c.Hidden < 1 || c.Layers < 1:
		return fmt.Errorf("seq2seq: embed, hidden and layers must be positive (got %d, %d, %d)", c.Embed, c.Hidden, c.Layers)
	case c.InitScale < 0:
		return errors.New("seq2seq: init scale must not be negative")
	case c.SoftmaxBlocks < 0 || c.SoftmaxBlocks > c.TgtVocab:
		return fmt.Errorf("seq2seq: softmax blocks must be in 0..%d, the target vocabulary (got %d)", c.TgtVocab, c.SoftmaxBlocks)
	}
	return nil
}

// OutBlocks are the output layer's blocks of the target vocabulary, as
// [lo, hi) ranges of word ids: SoftmaxBlocks (at least one) nearly equal
// ranges, the larger first.
func (c Seq2SeqConfig) OutBlocks() [][2]int {
	n := max(1, c.SoftmaxBlocks)
	out := make([][2]int, n)
	lo := 0
	for b := range n {
		w := c.TgtVocab / n
		if b < c.TgtVocab%n {
			w++
		}
		out[b] = [2]int{lo, lo + w}
		lo += w
	}
	return out
}

// UniformScale is the half-width of the uniform law every tensor starts
// from (InitScale, or its default).
func (c Seq2SeqConfig) UniformScale() float64 { return c.initScale() }

func (c Seq2SeqConfig) initScale() float64 {
	if c.InitScale == 0 {
		return 0.08
	}
	return c.InitScale
}

// Tensors lists the model's parameter tensors in the order of the flat
// parameter vector.
func (c Seq2SeqConfig) Tensors() []Tensor {
	ts := []Tensor{
		{Name: "src_emb", Shape: []int{c.SrcVocab, c.Embed}},
		{Name: "tgt_emb", Shape: []int{c.TgtVocab, c.Embed}},
	}
	for _, side := range []string{"enc", "dec"} {
		for l := 0; l < c.Layers; l++ {
			in := c.Hidden
			if l == 0 {
				in = c.Embed
			}
			ts = append(ts, LSTMTensors(fmt.Sprintf("%s.l%d", side, l), in, c.Hidden)...)
		}
	}
	blocks := c.OutBlocks()
	if len(blocks) == 1 {
		return append(ts,
			Tensor{Name: "out.w", Shape: []int{c.Hidden, c.TgtVocab}},
			Tensor{Name: "out.b", Shape: []int{c.TgtVocab}})
	}
	for b, r := range blocks { // each block's weights and bias together: a slice's are contiguous
		ts = append(ts,
			Tensor{Name: fmt.Sprintf("out.w.%d", b), Shape: []int{c.Hidden, r[1] - r[0]}},
			Tensor{Name: fmt.Sprintf("out.b.%d", b), Shape: []int{r[1] - r[0]}})
	}
	return ts
}

// InitTensor fills dst with the initial value of tensor t of a model seeded
// with seed: U(-InitScale, InitScale) for every tensor, as in the paper.
func (c Seq2SeqConfig) InitTensor(dst []float32, seed uint64, t Tensor) {
	InitUniform(dst, seed, t.Name, c.initScale())
}

// SeqBatch is a batch of sequence pairs, time-major: token (t, b) of the
// source is Src[t*Size+b]. TgtIn is the decoder input (the target shifted
// right behind a start symbol) and TgtOut the labels; a negative label marks
// padding, which is not counted.
type SeqBatch struct {
	Size   int
	SrcLen int
	TgtLen int
	Src    []int32
	TgtIn  []int32
	TgtOut []int32
}

// Validate checks the batch's shape and ids against the model's vocabularies.
func (b *SeqBatch) Validate(c Seq2SeqConfig) error {
	if b.Size < 1 || b.SrcLen < 1 || b.TgtLen < 1 {
		return fmt.Errorf("seq2seq batch: empty batch (%d x %d -> %d)", b.Size, b.SrcLen, b.TgtLen)
	}
	if len(b.Src) != b.Size*b.SrcLen || len(b.TgtIn) != b.Size*b.TgtLen || len(b.TgtOut) != b.Size*b.TgtLen {
		return errors.New("seq2seq batch: token slices do not match the batch shape")
	}
	for _, id := range b.Src {
		if id < 0 || int(id) >= c.SrcVocab {
			return fmt.Errorf("seq2seq batch: source id %d outside vocabulary of %d", id, c.SrcVocab)
		}
	}
	for i, id := range b.TgtIn {
		if id < 0 || int(id) >= c.TgtVocab || int(b.TgtOut[i]) >= c.TgtVocab {
			return fmt.Errorf("seq2seq batch: target id outside vocabulary of %d", c.TgtVocab)
		}
	}
	return nil
}

// Seq2Seq is a model instance: its parameters, its gradients and views of
// both per layer.
type Seq2Seq[T Float] struct {
	Cfg      Seq2SeqConfig
	params   []T
	grads    []T
	srcEmb   []T
	tgtEmb   []T
	dSrcEmb  []T
	dTgtEmb  []T
	enc, dec []*LSTM[T]
	out      []outBlock[T]
	ws       workspace[T]
	// Spans of the flat parameter vector, in the order the forward pass
	// reads them: source embedding, encoder layers, target embedding,
	// decoder layers, output layer.
	spans [][2]int
	sizes []int // the tensors' sizes, in order
	offs  []int // each tensor's offset in params and grads; -1: not held
	held  []int // the sizes of the tensors it holds, in order
	// Hooks, when set, let a caller overlap moving parameters and gradients
	// with the computation (see Hooks).
	Hooks *Hooks
}

// Hooks let a training loop overlap communication with computation. A
// model's training step (Seq2Seq.Loss, GAN.Step) calls NeedParams(lo, hi)
// before the forward pass first reads Params()[lo:hi] (spans in the order
// they are read), and GradsFree before the backward pass first writes
// Grads(): a caller still pulling the parameters or pushing the previous
// step's gradients waits in these.
type Hooks struct {
	NeedParams func(lo, hi int)
	GradsFree  func()
}

func (m *Seq2Seq[T]) need(i int) {
	if m.Hooks != nil && m.Hooks.NeedParams != nil {
		m.Hooks.NeedParams(m.spans[i][0], m.spans[i][1])
	}
}

// outBlock is one block of the output layer: word ids [lo, hi), its
// weights (hidden x width) and bias, and their gradients.
type outBlock[T Float] struct {
	lo, hi int
	w, b   []T
	dw, db []T
}

// logits sets dst (rows x width) to the block's logits of in (rows x
// hidden): its bias plus in times its weights.
func (o *outBlock[T]) logits(dst, in []T, rows, hidden int) {
	n := o.hi - o.lo
	for r := 0; r < rows; r++ {
		copy(dst[r*n:(r+1)*n], o.b)
	}
	matmul(dst, in, false, o.w, false, rows, n, hidden, true)
}

// backward adds the block's weight and bias gradients from dlog, the
// gradient of its logits, and its share of the input gradient onto dIn
// (rows x hidden): written there when first is set, else computed into
// part and added, so that blocks taken in order sum in block order. It
// returns part, grown as needed.
func (o *outBlock[T]) backward(in, dlog, dIn, part []T, rows, hidden int, first bool) []T {
	n := o.hi - o.lo
	matmul(o.dw, in, true, dlog, false, hidden, n, rows, true)
	addColSums(o.db, dlog)
	if first {
		matmul(dIn, dlog, false, o.w, true, rows, hidden, n, false)
		return part
	}
	part = grow(part, rows*hidden)
	matmul(part, dlog, false, o.w, true, rows, hidden, n, false)
	for j, v := range part {
		dIn[j] += v
	}
	return part
}

// workspace holds a model's step buffers, reused from step to step.
type workspace[T Float] struct {
	x, y, logits, dIn, part []T
	enc, dec                []*LSTMCache[T]
	widths                  []int
	stats                   []SoftmaxStats
}

// NewSeq2Seq allocates a model of shape cfg with zero parameters. It panics on
// an invalid shape (validate configs with cfg.Validate first).
func NewSeq2Seq[T Float](cfg Seq2SeqConfig) *Seq2Seq[T] { return newSeq2Seq[T](cfg, nil) }

// NewSeq2SeqHolding allocates the part of a model of shape cfg that one
// seat of a replica laid out over seats holds: tensors (indices of
// cfg.Tensors(), as StagePlan.SeatTensors gives them) and nothing of the
// others. Params and Grads are then those tensors' alone, in order
// (Offsets says where each is); the model runs SeatStep for its seat and
// nothing else.
func NewSeq2SeqHolding[T Float](cfg Seq2SeqConfig, tensors []int) *Seq2Seq[T] {
	held := make([]bool, len(cfg.Tensors()))
	for _, t := range tensors {
		held[t] = true
	}
	return newSeq2Seq[T](cfg, held)
}

// NewSeq2SeqOn makes a model of shape cfg for inference on params (the
// flat vector of cfg.Tensors(), which it uses, not copies) with no
// gradients: it runs Loss(b, false) and decodes, and nothing that needs
// Grads. An evaluation of a large model then holds its parameters once.
func NewSeq2SeqOn[T Float](cfg Seq2SeqConfig, params []T) *Seq2Seq[T] {
	if n := TotalSize(cfg.Tensors()); len(params) != n {
		panic(fmt.Sprintf("models: %d parameters for a model of %d", len(params), n))
	}
	return newSeq2SeqWith(cfg, nil, params)
}

func newSeq2Seq[T Float](cfg Seq2SeqConfig, held []bool) *Seq2Seq[T] {
	return newSeq2SeqWith[T](cfg, held, nil)
}

// newSeq2SeqWith makes the model of the tensors held (nil: all), on params
// with no gradients, or, with params nil, on parameters and gradients of
// its own.
func newSeq2SeqWith[T Float](cfg Seq2SeqConfig, held []bool, params []T) *Seq2Seq[T] {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	m := &Seq2Seq[T]{Cfg: cfg, sizes: TensorSizes(cfg.Tensors())}
	n := 0
	for t, size := range m.sizes {
		if held == nil || held[t] {
			m.offs = append(m.offs, n)
			m.held = append(m.held, size)
			n += size
		} else {
			m.offs = append(m.offs, -1)
		}
	}
	m.params = params
	if params == nil {
		m.params, m.grads = make([]T, n), make([]T, n)
	}
	w, g := &view[T]{buf: m.params, held: held}, &view[T]{buf: m.grads, held: held}
	E, H, V := cfg.Embed, cfg.Hidden, cfg.TgtVocab
	var enc, dec [][2]int
	lo := 0
	cut := func() [2]int { // the span taken from w since the last cut
		s := [2]int{lo, w.off}
		lo = w.off
		return s
	}
	m.srcEmb, m.dSrcEmb = w.take(cfg.SrcVocab*E), g.take(cfg.SrcVocab*E)
	src := cut()
	m.tgtEmb, m.dTgtEmb = w.take(V*E), g.take(V*E)
	tgt := cut()
	for i, layers := range []*[]*LSTM[T]{&m.enc, &m.dec} {
		for l := 0; l < cfg.Layers; l++ {
			in := H
			if l == 0 {
				in = E
			}
			*layers = append(*layers, newLSTM(in, H, w, g))
			if i == 0 {
				enc = append(enc, cut())
			} else {
				dec = append(dec, cut())
			}
		}
	}
	for _, r := range cfg.OutBlocks() {
		n := r[1] - r[0]
		o := outBlock[T]{lo: r[0], hi: r[1]}
		o.w, o.dw = w.take(H*n), g.take(H*n)
		o.b, o.db = w.take(n), g.take(n)
		m.out = append(m.out, o)
	}
	m.spans = slices.Concat([][2]int{src}, enc, [][2]int{tgt}, dec, [][2]int{cut()})
	return m
}

// Params is the flat parameter vector, in the order of Cfg.Tensors().
func (m *Seq2Seq[T]) Params() []T { return m.params }

// Grads is the flat gradient vector, laid out like Params.
func (m *Seq2Seq[T]) Grads() []T { return m.grads }

// ClipGrads rescales the gradient to norm max when its norm (GlobalNorm,
// tensor by tensor) exceeds it, and returns the norm before clipping.
func (m *Seq2Seq[T]) ClipGrads(max float64) float64 {
	return ClipGlobalNorm(m.grads, m.held, max)
}

// Offsets is each tensor's offset in Params and Grads, -1 for a tensor the
// model does not hold (NewSeq2SeqHolding).
func (m *Seq2Seq[T]) Offsets() []int { return slices.Clone(m.offs) }

// ReadOrder returns the spans of the flat parameter vector in the order a
// step first reads them (the order of the NeedParams hook's calls): source
// embedding, encoder layers, target embedding, decoder layers, output
// layer.
func (m *Seq2Seq[T]) ReadOrder() [][2]int { return slices.Clone(m.spans) }

// Ranges appends to dst the parts of the flat parameter vector that a step
// on b reads and can give a nonzero gradient, as sorted, disjoint [lo, hi)
// ranges with adjacent ones merged: the rows of the source embedding that
// b's source tokens use, the rows of the target embedding that its decoder
// inputs use, and every other tensor whole. Outside them, Loss(b, true)
// reads no parameter and leaves every gradient zero, so a worker need move
// only these (the embedding tables are most of a large-vocabulary model).
func (m *Seq2Seq[T]) Ranges(b *SeqBatch, dst [][2]int) [][2]int {
	E := m.Cfg.Embed
	add := func(lo, hi int) {
		if n := len(dst); n > 0 && dst[n-1][1] == lo {
			dst[n-1][1] = hi
		} else {
			dst = append(dst, [2]int{lo, hi})
		}
	}
	rows := func(base, vocab int, ids []int32) {
		used := make([]bool, vocab)
		for _, id := range ids {
			used[id] = true
		}
		for r, u := range used {
			if u {
				add(base+r*E, base+(r+1)*E)
			}
		}
	}
	for t, off := range m.offs { // (a model holding some tensors: of those, in its own layout)
		switch {
		case off < 0:
		case t == 0:
			rows(off, m.Cfg.SrcVocab, b.Src)
		case t == 1:
			rows(off, m.Cfg.TgtVocab, b.TgtIn)
		default:
			add(off, off+m.sizes[t])
		}
	}
	return dst
}

// Init sets every parameter to its initial value for seed.
func (m *Seq2Seq[T]) Init(seed uint64) {
	ts := m.Cfg.Tensors()
	for i, off := range m.offs {
		if off >= 0 {
			InitUniform(m.params[off:off+ts[i].Size()], seed, ts[i].Name, m.Cfg.initScale())
		}
	}
}

// Loss runs the model on b and returns the summed cross-entropy of the target
// tokens and their count. With backward, it also sets Grads() to the gradient
// of (summed loss) / b.Size: the paper's rule of dividing by the batch size.
func (m *Seq2Seq[T]) Loss(b *SeqBatch, backward bool) (loss float64, tokens int) {
	cfg, ws := m.Cfg, &m.ws
	E, H, B := cfg.Embed, cfg.Hidden, b.Size
	if ws.enc == nil {
		ws.enc, ws.dec = make([]*LSTMCache[T], cfg.Layers), make([]*LSTMCache[T], cfg.Layers)
	}
	// Encoder.
	ws.x = grow(ws.x, b.SrcLen*B*E)
	m.need(0)
	Embedding(ws.x, m.srcEmb, E, b.Src)
	in := ws.x
	for l, layer := range m.enc {
		m.need(1 + l)
		ws.enc[l] = layer.Forward(ws.enc[l], in, b.SrcLen, B, nil, nil)
		in = ws.enc[l].Out(H)
	}
	// Decoder, started from the encoder's final state layer by layer.
	ws.y = grow(ws.y, b.TgtLen*B*E)
	m.need(1 + cfg.Layers)
	Embedding(ws.y, m.tgtEmb, E, b.TgtIn)
	in = ws.y
	for l, layer := range m.dec {
		m.need(2 + cfg.Layers + l)
		h0, c0 := ws.enc[l].Final(H)
		ws.dec[l] = layer.Forward(ws.dec[l], in, b.TgtLen, B, h0, c0)
		in = ws.dec[l].Out(H)
	}
	m.need(2 + 2*cfg.Layers)
	rows := b.TgtLen * B
	loss, tokens = m.softmax(in, rows, b.TgtOut, 1/float64(B))
	if !backward {
		return loss, tokens
	}
	if m.Hooks != nil && m.Hooks.GradsFree != nil {
		m.Hooks.GradsFree()
	}
	clear(m.grads)
	dIn := m.softmaxBackward(in, rows)
	for l := cfg.Layers - 1; l >= 0; l-- {
		dIn, _, _ = m.dec[l].Backward(ws.dec[l], dIn, nil, nil, true)
	}
	EmbeddingBackward(m.dTgtEmb, dIn, E, b.TgtIn)
	dIn = nil
	for l := cfg.Layers - 1; l >= 0; l-- {
		// The decoder's initial-state gradients are in its caches.
		dIn, _, _ = m.enc[l].Backward(ws.enc[l], dIn, ws.dec[l].DH, ws.dec[l].DC, true)
	}
	EmbeddingBackward(m.dSrcEmb, dIn, E, b.Src)
	return loss, tokens
}

// softmax computes the output layer's logits of in (rows x hidden), block
// by block, and the softmax cross-entropy against labels (softmax.go),
// leaving in the workspace's logits the gradient of scale * (summed loss).
func (m *Seq2Seq[T]) softmax(in []T, rows int, labels []int32, scale float64) (loss float64, tokens int) {
	ws, H := &m.ws, m.Cfg.Hidden
	ws.logits = grow(ws.logits, rows*m.Cfg.TgtVocab)
	ws.widths = ws.widths[:0]
	off := 0
	for i := range m.out {
		o := &m.out[i]
		n := o.hi - o.lo
		o.logits(ws.logits[off:off+rows*n], in, rows, H)
		ws.widths = append(ws.widths, n)
		off += rows * n
	}
	if len(ws.stats) < len(m.out) {
		ws.stats = make([]SoftmaxStats, len(m.out))
	}
	return blocksCE(ws.logits, ws.widths, labels, scale, ws.stats)
}

// softmaxBackward sets the output layer's gradients from the logits'
// (softmax's) and returns the gradient of its input: each block's product
// added in block order.
func (m *Seq2Seq[T]) softmaxBackward(in []T, rows int) []T {
	ws, H := &m.ws, m.Cfg.Hidden
	ws.dIn = grow(ws.dIn, rows*H)
	off := 0 // the block's logits (softmax's layout: block after block)
	for i := range m.out {
		o := &m.out[i]
		n := o.hi - o.lo
		ws.part = o.backward(in, ws.logits[off:off+rows*n], ws.dIn, ws.part, rows, H, i == 0)
		off += rows * n
	}
	return ws.dIn
}
