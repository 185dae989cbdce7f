package models_test

import (
	"fmt"

	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/shard"
)

// One training step's math on one batch: the loss and the gradient in the
// model's one flat gradient slice, clipped by global norm as the paper does.
func ExampleSeq2Seq_Loss() {
	cfg := models.Seq2SeqConfig{SrcVocab: shard.SyntheticVocab, TgtVocab: shard.SyntheticVocab, Embed: 8, Hidden: 16, Layers: 2}
	m := models.NewSeq2Seq[float32](cfg)
	m.Init(1)
	task, _ := shard.NewSynthetic("reverse", 3, 5)
	batch := task.Batch(1, 0, 0, 4)
	loss, tokens := m.Loss(batch, true) // forward and backward
	norm := m.ClipGrads(5)
	fmt.Println(len(m.Grads()) == len(m.Params()), tokens > 0, loss > 0, norm > 0)
	// Output: true true true true
}
