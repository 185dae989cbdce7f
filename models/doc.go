// Package models holds the math of downpour: dense tensors on gonum's BLAS,
// the layers (embedding, LSTM, softmax cross-entropy) and the models built
// from them (a Seq2Seq LSTM encoder-decoder).
//
// Everything here is pure computation: no network, no files, no clocks. A
// model keeps all of its parameters in one flat slice and all of its gradients
// in another of the same length, so that the parameter server can cut them into
// blocks without knowing what they mean:
//
//	m := models.NewSeq2Seq[float32](cfg)
//	m.Init(seed)                       // or copy pulled parameters into m.Params()
//	loss, tokens := m.Loss(batch, true) // forward and backward; gradients in m.Grads()
//	models.ClipGlobalNorm(m.Grads(), 5)
//
// The types are generic over float32 (training) and float64 (finite-difference
// gradient checks in tests).
package models
