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
	// gradRows are the runs of rows of the embedding tables ([0] source,
	// [1] target) the last backward pass wrote into their gradients;
	// elsewhere those gradients are zero (see clearGrads).
	gradRows [2][][2]int
	// outBudget is the most logits the output layer computes at once
	// (outRows; the constant, but for tests of the chunks).
	outBudget int
	// Hooks, when set, let a caller overlap moving parameters and gradients
	// with the computation (see Hooks).
	Hooks *Hooks
}

// Hooks let a training loop overlap communication with computation. A
// model's training step (Seq2Seq.Loss and SeatStep, GAN.Step) calls
// NeedParams(lo, hi) before the forward pass first reads Params()[lo:hi]
// (spans in the order they are read; a seat's, of the tensors it holds),
// and GradsFree before the backward pass first writes Grads(): a caller
// still pulling the parameters or pushing the previous step's gradients
// waits in these.
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
	used                    []bool // rowRuns' scratch, a table's rows long
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
	m := &Seq2Seq[T]{Cfg: cfg, sizes: TensorSizes(cfg.Tensors()), outBudget: outBudget}
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
	n := GlobalNorm(m.grads, m.held)
	for t := range m.offs {
		m.clipTensor(t, n, max)
	}
	return n
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
	var runs [][2]int
	rows := func(base, vocab int, ids []int32) {
		runs = rowRuns(ids, make([]bool, vocab), runs[:0])
		for _, r := range runs {
			add(base+r[0]*E, base+r[1]*E)
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

// rowRuns appends to dst the rows ids use, as sorted runs [lo, hi) of
// consecutive rows of a table of len(used) rows; used is scratch, all
// false, which it leaves so.
func rowRuns(ids []int32, used []bool, dst [][2]int) [][2]int {
	for _, id := range ids {
		used[id] = true
	}
	for r, u := range used {
		switch {
		case !u:
		case len(dst) > 0 && dst[len(dst)-1][1] == r:
			dst[len(dst)-1][1] = r + 1
		default:
			dst = append(dst, [2]int{r, r + 1})
		}
	}
	for _, id := range ids {
		used[id] = false
	}
	return dst
}

// embeddingBackward adds d, the gradient of the rows of embedding table t
// (0 source, 1 target) that ids looked up, into the table's gradient, and
// notes the rows written.
func (m *Seq2Seq[T]) embeddingBackward(t int, d []T, ids []int32) {
	dTable, vocab := m.dSrcEmb, m.Cfg.SrcVocab
	if t == 1 {
		dTable, vocab = m.dTgtEmb, m.Cfg.TgtVocab
	}
	EmbeddingBackward(dTable, d, m.Cfg.Embed, ids)
	if len(m.ws.used) < vocab {
		m.ws.used = make([]bool, vocab)
	}
	m.gradRows[t] = rowRuns(ids, m.ws.used[:vocab], m.gradRows[t][:0])
}

// clearGrads zeroes the gradients of tensors (nil: every tensor held).
// The embedding tables' gradients are released rather than written
// (zeroRelease): a step writes a batch's rows of them, and a table cleared
// by writing would keep every page in memory though it holds a few rows.
func (m *Seq2Seq[T]) clearGrads(tensors []int) {
	clearOne := func(t int) {
		g := m.grads[m.offs[t] : m.offs[t]+m.sizes[t]]
		if t < 2 {
			zeroRelease(g)
			m.gradRows[t] = m.gradRows[t][:0]
		} else {
			clear(g)
		}
	}
	if tensors != nil {
		for _, t := range tensors {
			clearOne(t)
		}
		return
	}
	for t, off := range m.offs {
		if off >= 0 {
			clearOne(t)
		}
	}
}

// clipTensor rescales tensor t's gradient to norm max when the whole
// gradient's norm n exceeds it, as ClipGlobalNorm scales every element
// (one rounding each). Of an embedding table it scales only the rows the
// last backward pass wrote: the others are zeros, which scale to zeros.
func (m *Seq2Seq[T]) clipTensor(t int, n, max float64) {
	off := m.offs[t]
	if off < 0 {
		return
	}
	if t >= 2 {
		clipTo(m.grads[off:off+m.sizes[t]], n, max)
		return
	}
	E := m.Cfg.Embed
	for _, r := range m.gradRows[t] {
		clipTo(m.grads[off+r[0]*E:off+r[1]*E], n, max)
	}
}

// ReleaseEmbeddings zeroes the embedding tables' parameters, giving their
// memory back where whole pages allow (as gradients are: see clearGrads).
// It is for a trainer that pulls, before every step, the rows the step
// reads (Ranges): only those rows then take memory, and the tables of a
// large vocabulary are most of the model.
func (m *Seq2Seq[T]) ReleaseEmbeddings() {
	for t := range 2 {
		if off := m.offs[t]; off >= 0 {
			zeroRelease(m.params[off : off+m.sizes[t]])
		}
	}
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
	loss, tokens = m.softmax(in, B, b.TgtOut, 1/float64(B))
	if !backward {
		return loss, tokens
	}
	if m.Hooks != nil && m.Hooks.GradsFree != nil {
		m.Hooks.GradsFree()
	}
	m.clearGrads(nil)
	dIn := m.softmaxBackward(in, B, b.TgtOut, 1/float64(B))
	for l := cfg.Layers - 1; l >= 0; l-- {
		dIn, _, _ = m.dec[l].Backward(ws.dec[l], dIn, nil, nil, true)
	}
	m.embeddingBackward(1, dIn, b.TgtIn)
	dIn = nil
	for l := cfg.Layers - 1; l >= 0; l-- {
		// The decoder's initial-state gradients are in its caches.
		dIn, _, _ = m.enc[l].Backward(ws.enc[l], dIn, ws.dec[l].DH, ws.dec[l].DC, true)
	}
	m.embeddingBackward(0, dIn, b.Src)
	return loss, tokens
}

// outBudget is the most logits (rows x target vocabulary) the output
// layer computes at once. Its rows go in chunks of whole time steps that
// fit (outRows); the backward pass keeps the last chunk's from the forward
// pass and computes the others' again, last chunk first. 2^25 floats (128
// MiB) keep the W1 and W2 shapes in one chunk, and put the paper's (batch
// 128, 80,000 words) at 3 time steps a chunk: 123 MB, where a batch of 80
// steps took 3.3 GB at once.
const outBudget = 1 << 25

// outRows is the rows of a chunk of the output layer for a batch of batch
// rows a time step.
func (m *Seq2Seq[T]) outRows(batch int) int { return chunkRows(m.outBudget, batch, m.Cfg.TgtVocab) }

// OutputRows is the rows of a chunk of the output layer (whole time steps
// of at most 2^25 logits) for a batch of batch rows a time step: the rows
// past the last chunk's are computed twice in a training step.
func (c Seq2SeqConfig) OutputRows(batch int) int { return chunkRows(outBudget, batch, c.TgtVocab) }

func chunkRows(budget, batch, vocab int) int { return max(1, budget/(batch*vocab)) * batch }

// softmax computes the output layer's logits of in (len(labels) rows of
// hidden, batch rows a time step), chunk by chunk and block by block, and
// the softmax cross-entropy against labels (softmax.go), leaving in the
// workspace's logits the gradient of scale * (summed loss) of the last
// chunk.
func (m *Seq2Seq[T]) softmax(in []T, batch int, labels []int32, scale float64) (loss float64, tokens int) {
	rows, step := len(labels), m.outRows(batch)
	for r0 := 0; r0 < rows; r0 += step {
		var n int
		loss, n = m.softmaxChunk(in, r0, min(r0+step, rows), labels, scale, loss)
		tokens += n
	}
	return loss, tokens
}

// softmaxChunk is softmax's rows [r0, r1): their logits in the workspace,
// block after block, turned into their gradient; it returns the loss added
// onto from (the rows before's, so that the sum runs in row order) and the
// rows counted.
func (m *Seq2Seq[T]) softmaxChunk(in []T, r0, r1 int, labels []int32, scale, from float64) (float64, int) {
	ws, H, rows := &m.ws, m.Cfg.Hidden, r1-r0
	ws.logits = grow(ws.logits, rows*m.Cfg.TgtVocab)
	ws.widths = ws.widths[:0]
	off := 0
	for i := range m.out {
		o := &m.out[i]
		n := o.hi - o.lo
		o.logits(ws.logits[off:off+rows*n], in[r0*H:r1*H], rows, H)
		ws.widths = append(ws.widths, n)
		off += rows * n
	}
	if len(ws.stats) < len(m.out) {
		ws.stats = make([]SoftmaxStats, len(m.out))
	}
	return blocksCE(ws.logits, ws.widths, labels[r0:r1], scale, ws.stats, from)
}

// softmaxBackward sets the output layer's gradients and returns the
// gradient of its input, after softmax on the same arguments: chunk by
// chunk from the last (whose logits' gradient softmax left; the others'
// are computed again), each block's product added in block order.
func (m *Seq2Seq[T]) softmaxBackward(in []T, batch int, labels []int32, scale float64) []T {
	ws, H := &m.ws, m.Cfg.Hidden
	rows, step := len(labels), m.outRows(batch)
	ws.dIn = grow(ws.dIn, rows*H)
	if rows == 0 {
		return ws.dIn
	}
	last := (rows - 1) / step * step
	for r0 := last; r0 >= 0; r0 -= step {
		r1 := min(r0+step, rows)
		if r0 != last {
			m.softmaxChunk(in, r0, r1, labels, scale, 0)
		}
		n, off := r1-r0, 0 // the block's logits (softmaxChunk's layout: block after block)
		for i := range m.out {
			o := &m.out[i]
			w := o.hi - o.lo
			ws.part = o.backward(in[r0*H:r1*H], ws.logits[off:off+n*w], ws.dIn[r0*H:r1*H], ws.part, n, H, i == 0)
			off += n * w
		}
	}
	return ws.dIn
}
