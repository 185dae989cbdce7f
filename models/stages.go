package models

import (
	"errors"
	"fmt"
	"slices"
	"sync"
)

// A replica over seats: the paper's layout (Sutskever et al., section 3.4)
// of one Seq2Seq model replica over several workers. S stages run the LSTM
// layers (layer l of the encoder and of the decoder on the same stage, the
// embeddings on stage 0) and K slices run the output softmax's vocabulary
// blocks. A step's activations go up the stages a chunk of time steps at a
// time, as they are computed (the layers work as a wavefront), the top
// layer's outputs to every slice, and the gradients come back down the same
// way, latest time steps first. Every sum that crosses a seat is taken in
// the order the model in one process takes it (softmax.go, lstm.go, the
// global norm), so a replica over seats computes the one-process loss and
// gradient bit for bit, for any stages, slices and chunk size.

// StagePlan says which seat runs what: seats 0..Stages-1 are the stages,
// Stages..Stages+Slices-1 the slices.
type StagePlan struct {
	Stages, Slices int
	// LayerStage is each layer's stage (of the encoder and the decoder).
	LayerStage []int
	// SliceBlocks is each slice's output blocks, [lo, hi).
	SliceBlocks [][2]int
}

// Plan lays c's model out over stages and slices: layer l on stage
// l*stages/Layers (contiguous layers per stage), the embeddings on stage 0,
// the output blocks dealt into slices of contiguous blocks (the first
// slices one block larger).
func (c Seq2SeqConfig) Plan(stages, slices int) (StagePlan, error) {
	nb := len(c.OutBlocks())
	switch {
	case stages < 1 || stages > c.Layers:
		return StagePlan{}, fmt.Errorf("stages must be in 1..%d, the model's layers (got %d)", c.Layers, stages)
	case slices < 1 || slices > nb:
		return StagePlan{}, fmt.Errorf("softmax slices must be in 1..%d, the model's softmax blocks (got %d; raise --softmax-blocks)", nb, slices)
	}
	p := StagePlan{Stages: stages, Slices: slices}
	for l := range c.Layers {
		p.LayerStage = append(p.LayerStage, l*stages/c.Layers)
	}
	lo := 0
	for k := range slices {
		n := nb / slices
		if k < nb%slices {
			n++
		}
		p.SliceBlocks = append(p.SliceBlocks, [2]int{lo, lo + n})
		lo += n
	}
	return p, nil
}

// Seats is the replica's number of seats.
func (p StagePlan) Seats() int { return p.Stages + p.Slices }

// layers is stage s's layers, [lo, hi).
func (p StagePlan) layers(s int) (lo, hi int) {
	lo, hi = -1, -1
	for l, st := range p.LayerStage {
		if st == s {
			if lo < 0 {
				lo = l
			}
			hi = l + 1
		}
	}
	return lo, hi
}

// SeatTensors lists each seat's tensors, as indices of c.Tensors().
func (p StagePlan) SeatTensors(c Seq2SeqConfig) [][]int {
	out := make([][]int, p.Seats())
	out[0] = []int{0, 1} // the embeddings
	L := c.Layers
	for l, s := range p.LayerStage { // the encoder's layers, then the decoder's
		out[s] = append(out[s], 2+3*l, 2+3*l+1, 2+3*l+2)
	}
	for l, s := range p.LayerStage {
		out[s] = append(out[s], 2+3*L+3*l, 2+3*L+3*l+1, 2+3*L+3*l+2)
	}
	for k, r := range p.SliceBlocks {
		for b := r[0]; b < r[1]; b++ {
			out[p.Stages+k] = append(out[p.Stages+k], 2+6*L+2*b, 2+6*L+2*b+1)
		}
	}
	return out
}

// A SeatMsg is what one seat sends another during a step. Each pair of
// seats exchanges its messages in an order both know, and a message
// carries only the fields its place in that order calls for.
type SeatMsg[T Float] struct {
	// Data: activations or gradients of time steps [T0, T1) (rows of
	// Batch x Hidden each), or a whole running input gradient.
	Data   []T
	T0, T1 int
	// Stats: per row, per block of the sender's softmax slice (or, from
	// the top stage, per row the combined statistics).
	Stats []SoftmaxStats
	// Ys, Has: per row, the target's logit where the sender's blocks hold
	// the target.
	Ys  []T
	Has []bool
	// Squares: the sender's tensors' sums of squares, in the order of its
	// seat's tensors (StagePlan.SeatTensors).
	Squares []float64
	Norm    float64
}

// A SeatLink is one seat's connection to the other seats of its replica.
// Messages from one seat to another arrive in the order sent. Send does
// not keep m's slices once it returns (it copies or encodes them); Recv's
// message is the caller's.
type SeatLink[T Float] interface {
	Send(to int, m SeatMsg[T]) error
	Recv(from int) (SeatMsg[T], error)
}

// ErrSeatMessage is the kind of error a seat's step returns when another
// seat's message is not the one the step's order calls for (a wrong shape,
// time steps or field).
var ErrSeatMessage = errors.New("a seat's message is not the one expected")

// seatAbort carries a seat's error out of its step (SeatStep recovers it):
// a message that cannot be sent or received, or a malformed one, ends the
// seat's part of the step wherever it is.
type seatAbort struct{ err error }

// seatLinks are the channels between a replica's seats in one process:
// ch[from][to], each carrying the pair's messages in order.
type seatLinks[T Float] struct{ ch [][]chan SeatMsg[T] }

func newSeatLinks[T Float](n int) *seatLinks[T] {
	l := &seatLinks[T]{ch: make([][]chan SeatMsg[T], n)}
	for i := range n {
		l.ch[i] = make([]chan SeatMsg[T], n)
		for j := range n {
			l.ch[i][j] = make(chan SeatMsg[T], 1<<12)
		}
	}
	return l
}

// localLink is seat's end of in-process links.
type localLink[T Float] struct {
	l    *seatLinks[T]
	seat int
}

func (l localLink[T]) Send(to int, m SeatMsg[T]) error {
	m.Data, m.Stats, m.Ys, m.Has, m.Squares = slices.Clone(m.Data), slices.Clone(m.Stats), slices.Clone(m.Ys), slices.Clone(m.Has), slices.Clone(m.Squares)
	l.l.ch[l.seat][to] <- m
	return nil
}

func (l localLink[T]) Recv(from int) (SeatMsg[T], error) { return <-l.l.ch[from][l.seat], nil }

// LocalLinks connects n seats in one process: the i-th link is seat i's.
func LocalLinks[T Float](n int) []SeatLink[T] {
	l := newSeatLinks[T](n)
	out := make([]SeatLink[T], n)
	for i := range out {
		out[i] = localLink[T]{l, i}
	}
	return out
}

// StagedStep runs a training step of batch b on a replica laid out by
// plan, each seat on its own copy of the model (replicas[seat], of equal
// parameters) in its own goroutine, over in-process links (SeatStep does
// one seat's part). It returns the loss and token count (as Loss does);
// each seat's gradient is then in its copy's Grads(), at its own tensors
// (plan.SeatTensors) and zero elsewhere, equal bit for bit to one Loss and
// ClipGrads of the whole model.
func StagedStep[T Float](replicas []*Seq2Seq[T], plan StagePlan, b *SeqBatch, chunk int, clip float64) (loss float64, tokens int, err error) {
	if len(replicas) != plan.Seats() {
		return 0, 0, errors.New("models: a staged step needs a model copy per seat")
	}
	links := LocalLinks[T](plan.Seats())
	errs := make([]error, plan.Seats())
	var wg sync.WaitGroup
	for seat := range plan.Seats() {
		wg.Go(func() {
			l, n, err := replicas[seat].SeatStep(plan, seat, b, chunk, clip, links[seat])
			if seat == plan.Stages-1 {
				loss, tokens = l, n
			}
			errs[seat] = err
		})
	}
	wg.Wait()
	return loss, tokens, errors.Join(errs...)
}

// SeatStep is seat's part of a training step of batch b on a replica laid
// out by plan, its messages to and from the other seats over link, time
// steps a chunk at a time: the forward and backward passes of its layers
// or softmax blocks, and the clip of the replica's gradient to norm clip.
// It calls the model's Hooks as Loss does: NeedParams before it first
// reads each of its tensors, GradsFree before its backward pass.
// Its gradient is then in Grads(), at its own tensors
// (plan.SeatTensors(m.Cfg)[seat]); the rest of Grads() it leaves as it
// was. The top stage (seat plan.Stages-1) returns the loss and token count
// (as Loss does), the others zeros. An error (of kind ErrSeatMessage where
// a message was malformed) ends the seat's part where it is.
func (m *Seq2Seq[T]) SeatStep(plan StagePlan, seat int, b *SeqBatch, chunk int, clip float64, link SeatLink[T]) (loss float64, tokens int, err error) {
	if chunk < 1 || seat < 0 || seat >= plan.Seats() {
		return 0, 0, fmt.Errorf("models: seat %d of %d in chunks of %d time steps", seat, plan.Seats(), chunk)
	}
	if err := b.Validate(m.Cfg); err != nil {
		return 0, 0, err
	}
	defer func() {
		if r := recover(); r != nil {
			a, ok := r.(seatAbort)
			if !ok {
				panic(r)
			}
			loss, tokens, err = 0, 0, a.err
		}
	}()
	x := &seatIO[T]{link: link}
	tensors := plan.SeatTensors(m.Cfg)
	for _, t := range tensors[seat] {
		if m.offs[t] < 0 {
			return 0, 0, fmt.Errorf("models: seat %d holds tensor %s, which this model does not", seat, m.Cfg.Tensors()[t].Name)
		}
	}
	// The seat's gradients are cleared where its backward pass starts (a
	// push still in flight reads them until then: Hooks.GradsFree).
	backward := func() {
		if m.Hooks != nil && m.Hooks.GradsFree != nil {
			m.Hooks.GradsFree()
		}
		m.clearGrads(tensors[seat])
	}
	if seat < plan.Stages {
		loss, tokens = m.stageStep(seat, plan, b, chunk, x, backward)
	} else {
		m.sliceStep(seat-plan.Stages, plan, b, x, backward)
	}
	m.seatClip(seat, plan, tensors, clip, x)
	return loss, tokens, nil
}

// seatIO sends and receives through a link, ending the seat's step on an
// error.
type seatIO[T Float] struct{ link SeatLink[T] }

func (x *seatIO[T]) send(to int, m SeatMsg[T]) {
	if err := x.link.Send(to, m); err != nil {
		panic(seatAbort{fmt.Errorf("to seat %d: %w", to, err)})
	}
}

// recv receives the next message from seat from, which check finds
// well-formed (a nil error) or not.
func (x *seatIO[T]) recv(from int, check func(SeatMsg[T]) error) SeatMsg[T] {
	m, err := x.link.Recv(from)
	if err == nil {
		if err = check(m); err != nil {
			err = fmt.Errorf("%w: %w", ErrSeatMessage, err)
		}
	}
	if err != nil {
		panic(seatAbort{fmt.Errorf("from seat %d: %w", from, err)})
	}
	return m
}

// chunkOf checks that a message carries time steps [t0, t1) of width
// floats each.
func chunkOf[T Float](t0, t1, width int) func(SeatMsg[T]) error {
	return func(m SeatMsg[T]) error {
		if m.T0 != t0 || m.T1 != t1 || len(m.Data) != (t1-t0)*width {
			return fmt.Errorf("time steps [%d, %d) of %d floats, want [%d, %d) of %d", m.T0, m.T1, len(m.Data), t0, t1, (t1-t0)*width)
		}
		return nil
	}
}

// stageStep is stage s's part of a step: its layers' forward passes, the
// combination of the softmax's statistics (on the top stage), and its
// layers' backward passes.
// backward is called where its backward pass starts.
func (m *Seq2Seq[T]) stageStep(s int, plan StagePlan, b *SeqBatch, chunk int, x *seatIO[T], backward func()) (loss float64, tokens int) {
	cfg, B, H, E := m.Cfg, b.Size, m.Cfg.Hidden, m.Cfg.Embed
	r := &stageRun[T]{s: s, plan: plan, batch: B, chunk: chunk, io: x, need: m.need}
	r.la, r.lb = plan.layers(s)
	r.top = r.lb == cfg.Layers
	enc := make([]*LSTMCache[T], cfg.Layers)
	dec := make([]*LSTMCache[T], cfg.Layers)
	var xs, ys []T
	if s == 0 {
		xs, ys = make([]T, b.SrcLen*B*E), make([]T, b.TgtLen*B*E)
		m.need(0)
		Embedding(xs, m.srcEmb, E, b.Src)
		m.need(1 + cfg.Layers)
		Embedding(ys, m.tgtEmb, E, b.TgtIn)
	}
	none := func(int) ([]T, []T) { return nil, nil }
	r.forward(m.enc, enc, 1, xs, b.SrcLen, none, false)
	r.forward(m.dec, dec, 2+cfg.Layers, ys, b.TgtLen, func(l int) ([]T, []T) { return enc[l].Final(H) }, true)
	var dTop func(t0, t1 int) []T
	if r.top { // combine the slices' statistics, row by row, in block order
		loss, tokens = m.combine(plan, b.TgtOut, x, s)
		dTop = m.outputGradient(plan, b, x)
	}
	backward()
	dy := r.backward(m.dec, dec, b.TgtLen, none, dTop)
	dx := r.backward(m.enc, enc, b.SrcLen, func(l int) ([]T, []T) { return dec[l].DH, dec[l].DC }, nil)
	if s == 0 {
		m.embeddingBackward(1, dy, b.TgtIn)
		m.embeddingBackward(0, dx, b.Src)
	}
	return loss, tokens
}

// outputGradient is the top stage's source of the gradient of its
// decoder outputs, summed over the softmax's blocks: the last slice sends
// it a chunk of the output layer's rows at a time, latest first, and the
// top stage's backward pass asks for time steps [t0, t1), latest first,
// waiting only for the chunks that hold them.
func (m *Seq2Seq[T]) outputGradient(plan StagePlan, b *SeqBatch, x *seatIO[T]) func(t0, t1 int) []T {
	B, H := b.Size, m.Cfg.Hidden
	steps := m.outRows(B) / B // time steps of a chunk
	buf := make([]T, b.TgtLen*B*H)
	have := b.TgtLen // time steps [have, TgtLen) are in
	last := plan.Stages + plan.Slices - 1
	return func(t0, t1 int) []T {
		for have > t0 {
			c0 := (have - 1) / steps * steps
			msg := x.recv(last, chunkOf[T](c0, have, B*H))
			copy(buf[c0*B*H:have*B*H], msg.Data)
			have = c0
		}
		return buf[t0*B*H : t1*B*H]
	}
}

// stageRun is one stage's step: its layers [la, lb) and its links.
type stageRun[T Float] struct {
	s, la, lb    int
	top          bool // it holds the top layer
	plan         StagePlan
	batch, chunk int
	io           *seatIO[T]
	need         func(span int) // the model's NeedParams for a span of its ReadOrder
}

// forward runs the stage's layers of one side over steps time steps, a
// chunk at a time: input from the embeddings (emb, on stage 0) or the
// stage below, outputs to the stage above (or, from the decoder's top, to
// every slice). init gives a layer's initial state; layer l's parameters
// are the model's span base+l.
func (r *stageRun[T]) forward(layers []*LSTM[T], caches []*LSTMCache[T], base int, emb []T, steps int, init func(l int) ([]T, []T), toSlices bool) {
	B, H, la, lb := r.batch, layers[0].Hidden, r.la, r.lb
	for l := la; l < lb; l++ {
		r.need(base + l)
		h0, c0 := init(l)
		caches[l] = layers[l].Begin(nil, nil, steps, B, h0, c0)
	}
	for t0 := 0; t0 < steps; t0 += r.chunk {
		t1 := min(t0+r.chunk, steps)
		in := layers[la].In
		if r.s == 0 {
			copy(caches[la].X[t0*B*in:t1*B*in], emb[t0*B*in:t1*B*in])
		} else {
			copy(caches[la].X[t0*B*in:t1*B*in], r.io.recv(r.s-1, chunkOf[T](t0, t1, B*in)).Data)
		}
		for l := la; l < lb; l++ {
			layers[l].Steps(caches[l], t0, t1)
			out := caches[l].Out(H)[t0*B*H : t1*B*H]
			switch {
			case l+1 < lb:
				copy(caches[l+1].X[t0*B*H:t1*B*H], out)
			case !r.top:
				r.io.send(r.s+1, SeatMsg[T]{Data: out, T0: t0, T1: t1})
			case toSlices:
				for k := range r.plan.Slices {
					r.io.send(r.plan.Stages+k, SeatMsg[T]{Data: out, T0: t0, T1: t1})
				}
			}
		}
	}
}

// backward runs the stage's layers of one side back over steps time
// steps, latest chunk first: the outputs' gradient from the stage above,
// or dTop's on the top stage (nil: none, as for the encoder's top layer); the
// inputs' gradient to the stage below. final gives a layer's final-state
// gradient. It returns the bottom layer's whole input gradient (for stage
// 0's embeddings).
func (r *stageRun[T]) backward(layers []*LSTM[T], caches []*LSTMCache[T], steps int, final func(l int) ([]T, []T), dTop func(t0, t1 int) []T) []T {
	B, H, la, lb := r.batch, layers[0].Hidden, r.la, r.lb
	for l := la; l < lb; l++ {
		dh, dc := final(l)
		layers[l].BackBegin(caches[l], dh, dc)
	}
	for t1 := steps; t1 > 0; {
		t0 := (t1 - 1) / r.chunk * r.chunk
		var d []T
		switch {
		case !r.top:
			d = r.io.recv(r.s+1, chunkOf[T](t0, t1, B*H)).Data
		case dTop != nil:
			d = dTop(t0, t1)
		}
		for l := lb - 1; l >= la; l-- {
			d = layers[l].BackSteps(caches[l], d, t0, t1, true)
		}
		if r.s > 0 {
			r.io.send(r.s-1, SeatMsg[T]{Data: d, T0: t0, T1: t1})
		}
		t1 = t0
	}
	for l := la; l < lb; l++ {
		layers[l].BackFinish(caches[l])
	}
	return caches[la].DX
}

// combine gathers every slice's per-row statistics of its blocks (in slice,
// then block order), and sends each slice the rows' combined statistics;
// it returns the summed loss and the rows counted.
func (m *Seq2Seq[T]) combine(plan StagePlan, labels []int32, x *seatIO[T], s int) (loss float64, count int) {
	rows := len(labels)
	msgs := make([]SeatMsg[T], plan.Slices)
	for k := range plan.Slices {
		nb := plan.SliceBlocks[k][1] - plan.SliceBlocks[k][0]
		msgs[k] = x.recv(plan.Stages+k, func(m SeatMsg[T]) error {
			if len(m.Stats) != rows*nb || len(m.Ys) != rows || len(m.Has) != rows {
				return fmt.Errorf("statistics of %d blocks and %d targets, want %d rows x %d blocks", len(m.Stats), len(m.Ys), rows, nb)
			}
			return nil
		})
	}
	all := make([]SoftmaxStats, rows)
	var stats []SoftmaxStats
	for r, y := range labels {
		if y < 0 {
			continue
		}
		stats = stats[:0]
		var vy T
		for k, msg := range msgs {
			nb := plan.SliceBlocks[k][1] - plan.SliceBlocks[k][0]
			stats = append(stats, msg.Stats[r*nb:(r+1)*nb]...)
			if msg.Has[r] {
				vy = msg.Ys[r]
			}
		}
		all[r] = CombineStats(stats)
		loss += RowLoss(all[r], vy)
		count++
	}
	for k := range plan.Slices {
		x.send(plan.Stages+k, SeatMsg[T]{Stats: all})
	}
	return loss, count
}

// sliceStep is slice k's part of a step, a chunk of rows of the output
// layer at a time (whole time steps, as in one process: softmaxBackward):
// its blocks' logits and statistics as the decoder's outputs arrive; then,
// with the rows' combined statistics, last chunk first, their gradients
// and its share of the input gradient, added onto the chunk's running sum
// the slice before passes on, and passed on, so that the top stage's
// backward pass starts on the latest time steps while the slices work on
// the earlier ones.
func (m *Seq2Seq[T]) sliceStep(k int, plan StagePlan, b *SeqBatch, x *seatIO[T], backward func()) {
	H, B := m.Cfg.Hidden, b.Size
	seat, top := plan.Stages+k, plan.Stages-1
	rows := b.TgtLen * B
	blocks := m.out[plan.SliceBlocks[k][0]:plan.SliceBlocks[k][1]]
	nb, width := len(blocks), 0
	for _, o := range blocks {
		width += o.hi - o.lo
	}
	in := make([]T, rows*H)
	stats := make([]SoftmaxStats, rows*nb)
	ys, has := make([]T, rows), make([]bool, rows)
	// lg holds one chunk's logits of the slice's blocks, block after block;
	// exps computes rows [r0, r1)'s and turns each row into its
	// exponentials, noting the rows' stats and target logits when note is
	// set (the forward pass; the backward pass computes them again).
	step := m.outRows(B)
	lg := make([]T, min(step, rows)*width)
	exps := func(r0, r1 int, note bool) {
		n, off := r1-r0, 0
		for i, o := range blocks {
			w := o.hi - o.lo
			c := lg[off : off+n*w]
			o.logits(c, in[r0*H:r1*H], n, H)
			for r := r0; r < r1; r++ {
				y := b.TgtOut[r]
				if y < 0 {
					continue
				}
				row := c[(r-r0)*w : (r-r0+1)*w]
				if !note {
					BlockStats(row)
					continue
				}
				if int(y) >= o.lo && int(y) < o.hi {
					ys[r], has[r] = row[int(y)-o.lo], true
				}
				stats[r*nb+i] = BlockStats(row)
			}
			off += n * w
		}
	}
	m.need(2 + 2*m.Cfg.Layers) // its blocks
	done := 0                  // rows whose logits are computed
	for t0 := 0; t0 < b.TgtLen; {
		msg := x.recv(top, func(m SeatMsg[T]) error {
			if m.T0 != t0 || m.T1 <= t0 || m.T1 > b.TgtLen || len(m.Data) != (m.T1-t0)*B*H {
				return fmt.Errorf("time steps [%d, %d) of %d floats, want from %d to at most %d, %d floats a step", m.T0, m.T1, len(m.Data), t0, b.TgtLen, B*H)
			}
			return nil
		})
		copy(in[msg.T0*B*H:msg.T1*B*H], msg.Data)
		t0 = msg.T1
		for ; done < rows && (min(done+step, rows) <= t0*B); done += step { // each chunk as soon as its rows are in
			exps(done, min(done+step, rows), true)
		}
	}
	x.send(top, SeatMsg[T]{Stats: stats, Ys: ys, Has: has})
	all := x.recv(top, func(m SeatMsg[T]) error {
		if len(m.Stats) != rows {
			return fmt.Errorf("combined statistics of %d rows, want %d", len(m.Stats), rows)
		}
		return nil
	}).Stats
	// Each block's share of a chunk's input gradient is computed before the
	// chunk's running sum from the slice before arrives; only the
	// additions, in block order, wait for it (the sum is the one process's:
	// block 0's product, += block 1's, and so on).
	parts := make([][]T, nb)
	for i := range parts {
		parts[i] = make([]T, min(step, rows)*H)
	}
	backward()
	scale := 1 / float64(B)
	last := (rows - 1) / step * step
	for r0 := last; r0 >= 0; r0 -= step { // softmaxBackward's order
		r1 := min(r0+step, rows)
		if r0 != last {
			exps(r0, r1, false)
		}
		n, off := r1-r0, 0
		for i, o := range blocks {
			w := o.hi - o.lo
			c := lg[off : off+n*w]
			for r := r0; r < r1; r++ {
				row := c[(r-r0)*w : (r-r0+1)*w]
				y := b.TgtOut[r]
				if y < 0 {
					clear(row)
					continue
				}
				label := -1
				if int(y) >= o.lo && int(y) < o.hi {
					label = int(y) - o.lo
				}
				BlockGrad(row, stats[r*nb+i], all[r], label, scale)
			}
			o.backward(in[r0*H:r1*H], c, parts[i][:n*H], nil, n, H, true)
			off += n * w
		}
		t0, t1 := r0/B, r1/B
		var acc []T
		from := parts
		if k > 0 {
			acc = x.recv(seat-1, chunkOf[T](t0, t1, B*H)).Data
		} else { // slice 0's first block starts the running sum
			acc, from = slices.Clone(parts[0][:n*H]), parts[1:]
		}
		for _, p := range from {
			for j, v := range p[:n*H] {
				acc[j] += v
			}
		}
		to := seat + 1
		if k+1 == plan.Slices {
			to = top
		}
		x.send(to, SeatMsg[T]{Data: acc, T0: t0, T1: t1})
	}
}

// seatClip clips the replica's gradient to norm clip: each seat sums its
// tensors' squares, seat 0 adds them in tensor order (GlobalNorm's order)
// and tells every seat the norm, and each seat scales its own tensors.
func (m *Seq2Seq[T]) seatClip(seat int, plan StagePlan, tensors [][]int, clip float64, x *seatIO[T]) {
	offs := m.offs
	mine := make([]float64, len(tensors[seat]))
	for i, t := range tensors[seat] {
		mine[i] = sumSquares(m.grads[offs[t] : offs[t]+m.sizes[t]])
	}
	var norm float64
	if seat == 0 {
		all := make([]float64, len(m.sizes))
		for other := range plan.Seats() {
			q := mine
			if other > 0 {
				q = x.recv(other, func(m SeatMsg[T]) error {
					if len(m.Squares) != len(tensors[other]) {
						return fmt.Errorf("sums of squares of %d tensors, want %d", len(m.Squares), len(tensors[other]))
					}
					return nil
				}).Squares
			}
			for i, t := range tensors[other] {
				all[t] = q[i]
			}
		}
		norm = NormOf(all)
		for other := 1; other < plan.Seats(); other++ {
			x.send(other, SeatMsg[T]{Norm: norm})
		}
	} else {
		x.send(0, SeatMsg[T]{Squares: mine})
		norm = x.recv(0, func(SeatMsg[T]) error { return nil }).Norm
	}
	for _, t := range tensors[seat] { // ClipGlobalNorm's scaling, tensor by tensor
		m.clipTensor(t, norm, clip)
	}
}
