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

// stageMsg is what one seat sends another during a step; each pair of
// seats exchanges its messages in an order both know.
type stageMsg[T Float] struct {
	data    []T            // activations or gradients of time steps [t0, t1), or whole
	t0, t1  int            // time steps
	stats   []SoftmaxStats // per row, per block of the sender's
	ys      []T            // per row: the target's logit, where the sender holds it
	has     []bool         // per row: whether it does
	squares map[int]float64
	norm    float64
}

// seatLinks are the channels between a replica's seats in one process:
// ch[from][to], each carrying the pair's messages in order.
type seatLinks[T Float] struct{ ch [][]chan stageMsg[T] }

func newSeatLinks[T Float](n int) *seatLinks[T] {
	l := &seatLinks[T]{ch: make([][]chan stageMsg[T], n)}
	for i := range n {
		l.ch[i] = make([]chan stageMsg[T], n)
		for j := range n {
			l.ch[i][j] = make(chan stageMsg[T], 1<<12)
		}
	}
	return l
}

func (l *seatLinks[T]) send(from, to int, m stageMsg[T]) { l.ch[from][to] <- m }
func (l *seatLinks[T]) recv(to, from int) stageMsg[T]    { return <-l.ch[from][to] }

// StagedStep runs a training step of batch b on a replica laid out by
// plan, each seat on its own copy of the model (replicas[seat], of equal
// parameters) in its own goroutine, the seats exchanging activations and
// gradients a chunk of time steps at a time: the forward and backward
// passes and the gradient's clip to norm clip. It returns the loss and
// token count (as Loss does); each seat's gradient is then in its copy's
// Grads(), at its own tensors (plan.SeatTensors) and zero elsewhere, equal
// bit for bit to one Loss and ClipGrads of the whole model.
func StagedStep[T Float](replicas []*Seq2Seq[T], plan StagePlan, b *SeqBatch, chunk int, clip float64) (loss float64, tokens int, err error) {
	if len(replicas) != plan.Seats() || chunk < 1 {
		return 0, 0, errors.New("models: a staged step needs a model copy per seat and chunks of at least one time step")
	}
	links := newSeatLinks[T](plan.Seats())
	tensors := plan.SeatTensors(replicas[0].Cfg)
	var wg sync.WaitGroup
	for seat := range plan.Seats() {
		wg.Go(func() {
			m := replicas[seat]
			clear(m.grads)
			if seat < plan.Stages {
				l, n := m.stageStep(seat, plan, b, chunk, links)
				if seat == plan.Stages-1 {
					loss, tokens = l, n
				}
			} else {
				m.sliceStep(seat-plan.Stages, plan, b, links)
			}
			m.seatClip(seat, plan, tensors, clip, links)
		})
	}
	wg.Wait()
	return loss, tokens, nil
}

// stageStep is stage s's part of a step: its layers' forward passes, the
// combination of the softmax's statistics (on the top stage), and its
// layers' backward passes.
func (m *Seq2Seq[T]) stageStep(s int, plan StagePlan, b *SeqBatch, chunk int, links *seatLinks[T]) (loss float64, tokens int) {
	cfg, B, H, E := m.Cfg, b.Size, m.Cfg.Hidden, m.Cfg.Embed
	r := &stageRun[T]{s: s, plan: plan, batch: B, chunk: chunk, links: links}
	r.la, r.lb = plan.layers(s)
	r.top = r.lb == cfg.Layers
	enc := make([]*LSTMCache[T], cfg.Layers)
	dec := make([]*LSTMCache[T], cfg.Layers)
	var x, y []T
	if s == 0 {
		x, y = make([]T, b.SrcLen*B*E), make([]T, b.TgtLen*B*E)
		Embedding(x, m.srcEmb, E, b.Src)
		Embedding(y, m.tgtEmb, E, b.TgtIn)
	}
	none := func(int) ([]T, []T) { return nil, nil }
	r.forward(m.enc, enc, x, b.SrcLen, none, false)
	r.forward(m.dec, dec, y, b.TgtLen, func(l int) ([]T, []T) { return enc[l].Final(H) }, true)
	var dTop []T
	if r.top { // combine the slices' statistics, row by row, in block order
		loss, tokens = m.combine(plan, b.TgtOut, links, s)
		dTop = links.recv(s, plan.Stages+plan.Slices-1).data // the input gradient, summed over the blocks
	}
	dy := r.backward(m.dec, dec, b.TgtLen, none, dTop)
	dx := r.backward(m.enc, enc, b.SrcLen, func(l int) ([]T, []T) { return dec[l].DH, dec[l].DC }, nil)
	if s == 0 {
		EmbeddingBackward(m.dTgtEmb, dy, E, b.TgtIn)
		EmbeddingBackward(m.dSrcEmb, dx, E, b.Src)
	}
	return loss, tokens
}

// stageRun is one stage's step: its layers [la, lb) and its links.
type stageRun[T Float] struct {
	s, la, lb    int
	top          bool // it holds the top layer
	plan         StagePlan
	batch, chunk int
	links        *seatLinks[T]
}

// forward runs the stage's layers of one side over steps time steps, a
// chunk at a time: input from the embeddings (emb, on stage 0) or the
// stage below, outputs to the stage above (or, from the decoder's top, to
// every slice). init gives a layer's initial state.
func (r *stageRun[T]) forward(layers []*LSTM[T], caches []*LSTMCache[T], emb []T, steps int, init func(l int) ([]T, []T), toSlices bool) {
	B, H, la, lb := r.batch, layers[0].Hidden, r.la, r.lb
	for l := la; l < lb; l++ {
		h0, c0 := init(l)
		caches[l] = layers[l].Begin(nil, nil, steps, B, h0, c0)
	}
	for t0 := 0; t0 < steps; t0 += r.chunk {
		t1 := min(t0+r.chunk, steps)
		in := layers[la].In
		if r.s == 0 {
			copy(caches[la].X[t0*B*in:t1*B*in], emb[t0*B*in:t1*B*in])
		} else {
			copy(caches[la].X[t0*B*in:t1*B*in], r.links.recv(r.s, r.s-1).data)
		}
		for l := la; l < lb; l++ {
			layers[l].Steps(caches[l], t0, t1)
			out := caches[l].Out(H)[t0*B*H : t1*B*H]
			switch {
			case l+1 < lb:
				copy(caches[l+1].X[t0*B*H:t1*B*H], out)
			case !r.top:
				r.links.send(r.s, r.s+1, stageMsg[T]{data: slices.Clone(out), t0: t0, t1: t1})
			case toSlices:
				for k := range r.plan.Slices {
					r.links.send(r.s, r.plan.Stages+k, stageMsg[T]{data: slices.Clone(out), t0: t0, t1: t1})
				}
			}
		}
	}
}

// backward runs the stage's layers of one side back over steps time
// steps, latest chunk first: the outputs' gradient from the stage above,
// or dTop on the top stage (nil: none, as for the encoder's top layer); the
// inputs' gradient to the stage below. final gives a layer's final-state
// gradient. It returns the bottom layer's whole input gradient (for stage
// 0's embeddings).
func (r *stageRun[T]) backward(layers []*LSTM[T], caches []*LSTMCache[T], steps int, final func(l int) ([]T, []T), dTop []T) []T {
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
			d = r.links.recv(r.s, r.s+1).data
		case dTop != nil:
			d = dTop[t0*B*H : t1*B*H]
		}
		for l := lb - 1; l >= la; l-- {
			d = layers[l].BackSteps(caches[l], d, t0, t1, true)
		}
		if r.s > 0 {
			r.links.send(r.s, r.s-1, stageMsg[T]{data: slices.Clone(d), t0: t0, t1: t1})
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
func (m *Seq2Seq[T]) combine(plan StagePlan, labels []int32, links *seatLinks[T], s int) (loss float64, count int) {
	msgs := make([]stageMsg[T], plan.Slices)
	for k := range plan.Slices {
		msgs[k] = links.recv(s, plan.Stages+k)
	}
	all := make([]SoftmaxStats, len(labels))
	var stats []SoftmaxStats
	for r, y := range labels {
		if y < 0 {
			continue
		}
		stats = stats[:0]
		var vy T
		for k, msg := range msgs {
			nb := plan.SliceBlocks[k][1] - plan.SliceBlocks[k][0]
			stats = append(stats, msg.stats[r*nb:(r+1)*nb]...)
			if msg.has[r] {
				vy = msg.ys[r]
			}
		}
		all[r] = CombineStats(stats)
		loss += RowLoss(all[r], vy)
		count++
	}
	for k := range plan.Slices {
		links.send(s, plan.Stages+k, stageMsg[T]{stats: all})
	}
	return loss, count
}

// sliceStep is slice k's part of a step: its blocks' logits and
// statistics, then, with the rows' combined statistics, their gradients
// and its share of the input gradient, added onto the running sum the
// slice before passes on.
func (m *Seq2Seq[T]) sliceStep(k int, plan StagePlan, b *SeqBatch, links *seatLinks[T]) {
	H, B := m.Cfg.Hidden, b.Size
	seat, top := plan.Stages+k, plan.Stages-1
	rows := b.TgtLen * B
	in := make([]T, rows*H)
	for t1 := 0; t1 < b.TgtLen; {
		msg := links.recv(seat, top)
		copy(in[msg.t0*B*H:msg.t1*B*H], msg.data)
		t1 = msg.t1
	}
	blocks := m.out[plan.SliceBlocks[k][0]:plan.SliceBlocks[k][1]]
	nb := len(blocks)
	logits := make([][]T, nb)
	stats := make([]SoftmaxStats, rows*nb)
	ys, has := make([]T, rows), make([]bool, rows)
	for i, o := range blocks {
		w := o.hi - o.lo
		lg := make([]T, rows*w)
		o.logits(lg, in, rows, H)
		for r, y := range b.TgtOut {
			if y < 0 {
				continue
			}
			if int(y) >= o.lo && int(y) < o.hi {
				ys[r], has[r] = lg[r*w+int(y)-o.lo], true
			}
			stats[r*nb+i] = BlockStats(lg[r*w : (r+1)*w])
		}
		logits[i] = lg
	}
	links.send(seat, top, stageMsg[T]{stats: stats, ys: ys, has: has})
	all := links.recv(seat, top).stats
	var acc, part []T
	if k > 0 {
		acc = links.recv(seat, seat-1).data
	}
	scale := 1 / float64(B)
	for i, o := range blocks {
		w := o.hi - o.lo
		lg := logits[i]
		for r, y := range b.TgtOut {
			row := lg[r*w : (r+1)*w]
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
		first := acc == nil // slice 0's first block starts the running sum
		if first {
			acc = make([]T, rows*H)
		}
		part = o.backward(in, lg, acc, part, rows, H, first)
	}
	if k+1 < plan.Slices {
		links.send(seat, seat+1, stageMsg[T]{data: acc})
	} else {
		links.send(seat, top, stageMsg[T]{data: acc})
	}
}

// seatClip clips the replica's gradient to norm clip: each seat sums its
// tensors' squares, seat 0 adds them in tensor order (GlobalNorm's order)
// and tells every seat the norm, and each seat scales its own tensors.
func (m *Seq2Seq[T]) seatClip(seat int, plan StagePlan, tensors [][]int, clip float64, links *seatLinks[T]) {
	offs := Offsets(m.Cfg.Tensors())
	mine := map[int]float64{}
	for _, t := range tensors[seat] {
		mine[t] = sumSquares(m.grads[offs[t] : offs[t]+m.sizes[t]])
	}
	var norm float64
	if seat == 0 {
		all := make([]float64, len(m.sizes))
		for t, q := range mine {
			all[t] = q
		}
		for other := 1; other < plan.Seats(); other++ {
			for t, q := range links.recv(0, other).squares {
				all[t] = q
			}
		}
		norm = NormOf(all)
		for other := 1; other < plan.Seats(); other++ {
			links.send(0, other, stageMsg[T]{norm: norm})
		}
	} else {
		links.send(seat, 0, stageMsg[T]{squares: mine})
		norm = links.recv(seat, 0).norm
	}
	for _, t := range tensors[seat] { // ClipGlobalNorm's scaling, tensor by tensor
		clipTo(m.grads[offs[t]:offs[t]+m.sizes[t]], norm, clip)
	}
}
