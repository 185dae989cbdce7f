// Package models holds the math of downpour: dense tensors on gonum's BLAS
// (or OpenBLAS, or the AVX-512 kernels of internal/kernel/gemm), the layers
// (embedding, LSTM, softmax cross-entropy; the GAN's maxout and dropout) and the two
// models built from them: the Seq2Seq LSTM encoder-decoder of Sutskever et
// al. (seq2seq.go; greedy and beam decoding, BLEU and held-out evaluation)
// and the Generative Adversarial Net of Goodfellow et al. (gan.go: the
// authors' MNIST generator and maxout discriminator, their losses and
// sampling; parzen.go: the paper's Parzen-window log-likelihood).
//
// Everything here is pure computation: no network, no files, no clocks. A
// model keeps all of its parameters in one flat slice and all of its gradients
// in another of the same length, so that the parameter server can cut them into
// blocks without knowing what they mean:
//
//	m := models.NewSeq2Seq[float32](cfg)
//	m.Init(seed)                       // or copy pulled parameters into m.Params()
//	loss, tokens := m.Loss(batch, true) // forward and backward; gradients in m.Grads()
//	m.ClipGrads(5)                      // by global norm, tensor by tensor
//
// and likewise models.NewGAN[float32](cfg), whose Step gives D's and G's
// losses and gradients from one forward pass (the authors' simultaneous
// update).
//
// The types are generic over float32 (training) and float64 (finite-difference
// gradient checks in tests).
package models
