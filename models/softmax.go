package models

import "math"

// The output softmax over vocabulary blocks.
//
// A Seq2Seq model's output layer is cut into SoftmaxBlocks blocks of the
// target vocabulary, each with its own weights (hidden x block) and bias.
// A replica whose softmax is split over processes gives each slice whole
// blocks; what crosses a block's edge is defined here, in block order, so
// that any grouping of the blocks into slices computes the bits of the
// model in one process:
//
//   - a block's logits are its own product (a product over a subset of
//     columns gives the bits of those columns of the whole: see
//     internal/kernel/gemm's TestSubsetsGiveSameBits);
//   - each row's normalizer: every block takes its maximum m_b and its sum
//     z_b of exp(logit - m_b) (BlockStats); the row's maximum is M = max m_b
//     and its sum z = sum over b, from block 0 up, of z_b * exp(m_b - M)
//     (CombineStats);
//   - a block's gradient of the logits is its exponentials times
//     scale*exp(m_b - M)/z, less scale at the label (BlockGrad);
//   - the gradient of the layer's input is the sum over blocks of each
//     block's product, added in block order: block 0's, then += block 1's,
//     and so on (a split softmax passes the running sum from slice to
//     slice).
//
// With one block all of it is the plain softmax cross-entropy, bit for bit.

// SoftmaxStats are one row's normalizer over some blocks: the maximum
// logit and the sum of exponentials shifted by it.
type SoftmaxStats struct {
	Max float64
	Sum float64
}

// BlockStats replaces each logit of one row of a block with
// exp(logit - max) and returns the block's stats.
func BlockStats[T Float](row []T) SoftmaxStats {
	mx := row[0]
	for _, v := range row[1:] {
		if v > mx {
			mx = v
		}
	}
	if r32, ok := any(row).([]float32); ok {
		return SoftmaxStats{Max: float64(mx), Sum: expShift(r32, float32(mx))}
	}
	var z float64
	for j, v := range row {
		e := math.Exp(float64(v) - float64(mx))
		row[j] = T(e)
		z += e
	}
	return SoftmaxStats{Max: float64(mx), Sum: z}
}

// CombineStats combines one row's stats of blocks 0, 1, ... in that order.
func CombineStats(blocks []SoftmaxStats) SoftmaxStats {
	m := blocks[0].Max
	for _, b := range blocks[1:] {
		m = math.Max(m, b.Max)
	}
	var z float64
	for _, b := range blocks {
		z += b.Sum * math.Exp(b.Max-m)
	}
	return SoftmaxStats{Max: m, Sum: z}
}

// BlockGrad turns one row of a block's exponentials (BlockStats' output,
// with block's stats) into the gradient of scale * (the row's loss) with
// respect to its logits, given the row's combined stats; label is the
// target's index in the block, or -1 when the target is in another block.
func BlockGrad[T Float](row []T, block, all SoftmaxStats, label int, scale float64) {
	s := T(scale * math.Exp(block.Max-all.Max) / all.Sum)
	for j := range row {
		row[j] *= s
	}
	if label >= 0 {
		row[label] -= T(scale)
	}
}

// RowLoss is the cross-entropy of one row whose target's logit is y, from
// its combined stats.
func RowLoss[T Float](all SoftmaxStats, y T) float64 {
	return float64(T(all.Max)-y) + math.Log(all.Sum)
}

// blocksCE is the softmax cross-entropy of rows over vocab blocks: logits
// holds each block's rows x width matrix one after the other (widths[b]
// columns for block b), labels the target of each row (negative: padding,
// skipped). It returns the loss summed onto from, row by row, and the
// counted rows, and leaves in logits the gradient of scale * (summed loss).
// stats is scratch of at least len(widths).
func blocksCE[T Float](logits []T, widths []int, labels []int32, scale float64, stats []SoftmaxStats, from float64) (loss float64, count int) {
	rows, loss := len(labels), from
	for r, y := range labels {
		if y < 0 {
			off := 0
			for _, w := range widths {
				clear(logits[off+r*w : off+(r+1)*w])
				off += rows * w
			}
			continue
		}
		off, lo := 0, 0
		var vy T
		for b, w := range widths {
			row := logits[off+r*w : off+(r+1)*w]
			if int(y) >= lo && int(y) < lo+w {
				vy = row[int(y)-lo]
			}
			stats[b] = BlockStats(row)
			off, lo = off+rows*w, lo+w
		}
		all := CombineStats(stats[:len(widths)])
		loss += RowLoss(all, vy)
		count++
		off, lo = 0, 0
		for b, w := range widths {
			label := -1
			if int(y) >= lo && int(y) < lo+w {
				label = int(y) - lo
			}
			BlockGrad(logits[off+r*w:off+(r+1)*w], stats[b], all, label, scale)
			off, lo = off+rows*w, lo+w
		}
	}
	return loss, count
}
