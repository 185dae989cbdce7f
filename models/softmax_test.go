package models

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// The output layer over 1-5 vocabulary blocks has the gradient finite
// differences give, and the loss of the same model over one block (the
// blocks are one layer's parameters laid out otherwise).
func TestBlockedSoftmaxGradient(t *testing.T) {
	for _, blocks := range []int{2, 3, 5} {
		t.Run(fmt.Sprint("blocks=", blocks), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(5, uint64(blocks)))
			cfg := Seq2SeqConfig{SrcVocab: 6, TgtVocab: 7, Embed: 3, Hidden: 4, Layers: 2, InitScale: 0.5, SoftmaxBlocks: blocks}
			m := NewSeq2Seq[float64](cfg)
			m.Init(7)
			b := smallBatch(rng, cfg, 2, 3, 4)
			loss := func() float64 {
				l, _ := m.Loss(b, false)
				return l / float64(b.Size)
			}
			m.Loss(b, true)
			checkGrad(t, "seq2seq", m.Params(), slices.Clone(m.Grads()), loss)

			// The same weights as one block: the same loss.
			one := cfg
			one.SoftmaxBlocks = 0
			m1 := NewSeq2Seq[float64](one)
			n0 := len(m1.Params()) - cfg.Hidden*cfg.TgtVocab - cfg.TgtVocab // the layers before the output layer
			copy(m1.Params()[:n0], m.Params()[:n0])
			for _, o := range m.out {
				for h := 0; h < cfg.Hidden; h++ {
					copy(m1.out[0].w[h*cfg.TgtVocab+o.lo:h*cfg.TgtVocab+o.hi], o.w[h*(o.hi-o.lo):(h+1)*(o.hi-o.lo)])
				}
				copy(m1.out[0].b[o.lo:o.hi], o.b)
			}
			l1, _ := m1.Loss(b, false)
			lb, _ := m.Loss(b, false)
			if math.Abs(l1-lb) > 1e-12*math.Abs(l1) {
				t.Fatalf("loss over %d blocks %v, over one %v", blocks, lb, l1)
			}
		})
	}
}

// A softmax split over slices of whole blocks, each slice computing its
// blocks apart (its own logits, its rows' stats, its gradients) and
// passing the running sum of the input gradient on to the next, gives the
// bits of the one-process output layer: the loss, every weight and bias
// gradient and the input gradient, for every grouping of 4 blocks.
func TestSplitSoftmaxGivesOneProcessBits(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	const H, V, rows, blocks = 24, 403, 37, 4
	cfg := Seq2SeqConfig{SrcVocab: 5, TgtVocab: V, Embed: 3, Hidden: H, Layers: 1, SoftmaxBlocks: blocks}
	m := NewSeq2Seq[float32](cfg)
	m.Init(3)
	in := make([]float32, rows*H)
	for i := range in {
		in[i] = float32(rng.NormFloat64())
	}
	labels := make([]int32, rows)
	for i := range labels {
		labels[i] = int32(rng.IntN(V))
	}
	labels[5] = -1 // padding
	const scale = 0.125
	wantLoss, wantCount := m.softmax(in, rows, labels, scale) // one time step of rows: one chunk
	wantDIn := slices.Clone(m.softmaxBackward(in, rows, labels, scale))
	wantGrads := slices.Clone(m.Grads())

	for _, grouping := range [][]int{{4}, {1, 3}, {2, 2}, {3, 1}, {1, 1, 1, 1}, {1, 2, 1}} {
		t.Run(fmt.Sprint(grouping), func(t *testing.T) {
			grads := make([]float32, len(m.Grads()))
			loss, count, dIn := splitSoftmax(m, grouping, in, rows, labels, scale, grads)
			if loss != wantLoss || count != wantCount {
				t.Fatalf("loss %v over %d rows, want %v over %d", loss, count, wantLoss, wantCount)
			}
			if !slices.Equal(dIn, wantDIn) {
				t.Fatal("the input gradient differs")
			}
			if !slices.Equal(grads, wantGrads) {
				t.Fatal("the output layer's gradients differ")
			}
		})
	}
}

// splitSoftmax computes m's output layer as slices of whole blocks would
// (grouping: each slice's number of blocks, in order): each slice its own
// blocks' logits and stats; one combiner the rows' stats and the loss;
// each slice its gradients, and the input gradient as a running sum passed
// from slice to slice. It writes the weight and bias gradients into grads
// (laid out as m.Grads()).
func splitSoftmax(m *Seq2Seq[float32], grouping []int, in []float32, rows int, labels []int32, scale float64, grads []float32) (float64, int, []float32) {
	H := m.Cfg.Hidden
	type slice struct {
		blocks []outBlock[float32]
		logits [][]float32      // a block's rows x width
		stats  [][]SoftmaxStats // a block's, per row
		vy     map[int]float32  // row -> its target's logit, where the target is in this slice
		label  map[int][2]int   // row -> (block within the slice, index in it)
	}
	var slices_ []*slice
	b := 0
	for _, n := range grouping {
		s := &slice{blocks: m.out[b : b+n], vy: map[int]float32{}, label: map[int][2]int{}}
		b += n
		// Forward: the slice's logits and stats.
		for k, o := range s.blocks {
			w := o.hi - o.lo
			lg := make([]float32, rows*w)
			for r := 0; r < rows; r++ {
				copy(lg[r*w:(r+1)*w], o.b)
			}
			matmul(lg, in, false, o.w, false, rows, w, H, true)
			st := make([]SoftmaxStats, rows)
			for r, y := range labels {
				if y < 0 {
					continue
				}
				if int(y) >= o.lo && int(y) < o.hi {
					s.vy[r], s.label[r] = lg[r*w+int(y)-o.lo], [2]int{k, int(y) - o.lo}
				}
				st[r] = BlockStats(lg[r*w : (r+1)*w])
			}
			s.logits, s.stats = append(s.logits, lg), append(s.stats, st)
		}
		slices_ = append(slices_, s)
	}
	// The combiner: each row's stats of every block, in block order.
	all := make([]SoftmaxStats, rows)
	var loss float64
	var count int
	for r, y := range labels {
		if y < 0 {
			continue
		}
		var bs []SoftmaxStats
		var vy float32
		for _, s := range slices_ {
			for k := range s.blocks {
				bs = append(bs, s.stats[k][r])
			}
			if v, ok := s.vy[r]; ok {
				vy = v
			}
		}
		all[r] = CombineStats(bs)
		loss += RowLoss(all[r], vy)
		count++
	}
	// Backward: each slice's gradients; the input gradient passed along.
	offs := Offsets(m.Cfg.Tensors())
	first := len(offs) - 2*len(m.out) // the output layer's tensors: w, b per block
	var dIn []float32
	bi := 0
	for _, s := range slices_ {
		for k, o := range s.blocks {
			w := o.hi - o.lo
			lg := s.logits[k]
			for r, y := range labels {
				row := lg[r*w : (r+1)*w]
				if y < 0 {
					clear(row)
					continue
				}
				label := -1
				if l, ok := s.label[r]; ok && l[0] == k {
					label = l[1]
				}
				BlockGrad(row, s.stats[k][r], all[r], label, scale)
			}
			dw := grads[offs[first+2*bi] : offs[first+2*bi]+H*w]
			db := grads[offs[first+2*bi+1] : offs[first+2*bi+1]+w]
			matmul(dw, in, true, lg, false, H, w, rows, true)
			addColSums(db, lg)
			part := make([]float32, rows*H)
			matmul(part, lg, false, o.w, true, rows, H, w, false)
			if dIn == nil {
				dIn = part
			} else {
				for j, v := range part {
					dIn[j] += v
				}
			}
			bi++
		}
	}
	return loss, count, dIn
}

// The gradient's norm is the same bits whether one process sums every
// tensor or stages each sum their own tensors and the sums are added in
// tensor order; with one tensor it is the plain sum of squares.
func TestGlobalNormBySplitTensors(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	g := make([]float32, 1000)
	for i := range g {
		g[i] = float32(rng.NormFloat64()) * float32(1+i%7)
	}
	sizes := []int{300, 17, 250, 1, 432}
	var parts []float64
	off := 0
	for _, n := range sizes { // each "stage" sums its own tensor, apart
		parts = append(parts, TensorSquares(g[off:off+n], nil)[0])
		off += n
	}
	if a, b := GlobalNorm(g, sizes), NormOf(parts); a != b {
		t.Fatalf("norm %v in one process, %v from the parts", a, b)
	}
	if !slices.Equal(TensorSquares(g, sizes), parts) {
		t.Fatal("TensorSquares differs from the parts")
	}
	var plain float64
	for _, v := range g {
		plain += float64(v) * float64(v)
	}
	if n := GlobalNorm(g, nil); math.Abs(n-math.Sqrt(plain)) > 1e-12*n {
		t.Fatalf("one tensor's norm %v, want %v", n, math.Sqrt(plain))
	}
}
