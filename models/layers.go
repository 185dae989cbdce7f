package models

import "math"

// Embedding looks rows of table (vocab x dim) up by id into dst
// (len(ids) x dim). Ids must be in range: it panics otherwise (the data layer
// validates ids against the vocabulary).
func Embedding[T Float](dst, table []T, dim int, ids []int32) {
	for r, id := range ids {
		copy(dst[r*dim:(r+1)*dim], table[int(id)*dim:(int(id)+1)*dim])
	}
}

// EmbeddingBackward adds the rows of d (len(ids) x dim) into the gradient
// table dTable at their ids.
func EmbeddingBackward[T Float](dTable, d []T, dim int, ids []int32) {
	for r, id := range ids {
		row := dTable[int(id)*dim : (int(id)+1)*dim]
		for j, v := range d[r*dim : (r+1)*dim] {
			row[j] += v
		}
	}
}

// SoftmaxCrossEntropy computes, for each row of logits (rows x vocab), the
// cross-entropy of softmax(row) against labels[row]; rows whose label is
// negative are padding and are skipped. It returns the summed loss and the
// number of counted rows, and overwrites logits with the gradient of
// scale * (summed loss) with respect to them. float32 logits go through
// float32 exponentials (tested against the float64 path). It is the
// one-block case of the output layer's blocked softmax (softmax.go).
func SoftmaxCrossEntropy[T Float](logits []T, vocab int, labels []int32, scale float64) (loss float64, count int) {
	return blocksCE(logits, []int{vocab}, labels, scale, make([]SoftmaxStats, 1), 0)
}

// logSumExp is log(sum(exp(row))), computed stably in float64.
func logSumExp[T Float](row []T) float64 {
	mx := math.Inf(-1)
	for _, v := range row {
		mx = math.Max(mx, float64(v))
	}
	var z float64
	for _, v := range row {
		z += math.Exp(float64(v) - mx)
	}
	return mx + math.Log(z)
}

// addColSums adds the column sums of m (rows x len(db)) into db.
func addColSums[T Float](db, m []T) {
	n := len(db)
	for r := 0; r+n <= len(m); r += n {
		for j, v := range m[r : r+n] {
			db[j] += v
		}
	}
}
