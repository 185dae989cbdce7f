package models

import (
	"math"
	"sort"
)

// Decoding: the encoder reads a source sentence, then the decoder emits the
// translation token by token from the start symbol, greedily or by a
// left-to-right beam search (Sutskever et al.: a beam of 2 gives most of the
// gain). Decoding runs the same layers as training, one time step at a time.

// Special are the ids decoding needs: the decoder's start symbol and the end
// of sentence.
type Special struct {
	Go, EOS int32
}

// state is the decoder's (h, c) of every layer for a set of hypotheses,
// batch x H each.
type state[T Float] struct {
	h, c [][]T
}

// encode runs the encoder over a batch of equal-length sources (time-major
// ids, as in SeqBatch) and returns the final state of every layer.
func (m *Seq2Seq[T]) encode(src []int32, srcLen, batch int) state[T] {
	E, H := m.Cfg.Embed, m.Cfg.Hidden
	x := make([]T, srcLen*batch*E)
	Embedding(x, m.srcEmb, E, src)
	var st state[T]
	in := x
	for _, layer := range m.enc {
		c := layer.Forward(nil, in, srcLen, batch, nil, nil)
		h, cell := c.Final(H)
		st.h = append(st.h, append([]T(nil), h...))
		st.c = append(st.c, append([]T(nil), cell...))
		in = c.Out(H)
	}
	return st
}

// step feeds one token per hypothesis to the decoder and returns the new
// state and the log-probabilities of the next token (batch x vocab).
func (m *Seq2Seq[T]) step(st state[T], tokens []int32) (state[T], []float64) {
	E, H, V := m.Cfg.Embed, m.Cfg.Hidden, m.Cfg.TgtVocab
	batch := len(tokens)
	x := make([]T, batch*E)
	Embedding(x, m.tgtEmb, E, tokens)
	var next state[T]
	in := x
	for l, layer := range m.dec {
		c := layer.Forward(nil, in, 1, batch, st.h[l], st.c[l])
		h, cell := c.Final(H)
		next.h = append(next.h, append([]T(nil), h...))
		next.c = append(next.c, append([]T(nil), cell...))
		in = c.Out(H)
	}
	logits := make([]T, batch*V) // row-major: each block's columns in place
	for _, o := range m.out {
		n := o.hi - o.lo
		part := make([]T, batch*n)
		o.logits(part, in, batch, H)
		for r := 0; r < batch; r++ {
			copy(logits[r*V+o.lo:r*V+o.hi], part[r*n:(r+1)*n])
		}
	}
	lp := make([]float64, batch*V)
	for r := 0; r < batch; r++ {
		row := logits[r*V : (r+1)*V]
		lse := logSumExp(row)
		for j, v := range row {
			lp[r*V+j] = float64(v) - lse
		}
	}
	return next, lp
}

// Greedy translates a batch of equal-length sources (time-major ids) by
// taking the most probable token at each step, until every sentence has
// emitted EOS or maxLen tokens. The outputs exclude EOS.
func (m *Seq2Seq[T]) Greedy(src []int32, srcLen, batch int, sp Special, maxLen int) [][]int32 {
	V := m.Cfg.TgtVocab
	st := m.encode(src, srcLen, batch)
	tokens := make([]int32, batch)
	for i := range tokens {
		tokens[i] = sp.Go
	}
	out := make([][]int32, batch)
	done := make([]bool, batch)
	for t := 0; t < maxLen; t++ {
		var lp []float64
		st, lp = m.step(st, tokens)
		live := false
		for i := 0; i < batch; i++ {
			best := argmax(lp[i*V : (i+1)*V])
			tokens[i] = int32(best)
			if done[i] {
				continue
			}
			if int32(best) == sp.EOS {
				done[i] = true
				continue
			}
			out[i] = append(out[i], int32(best))
			live = true
		}
		if !live {
			break
		}
	}
	return out
}

func argmax(xs []float64) int {
	best := 0
	for j, v := range xs {
		if v > xs[best] {
			best = j
		}
	}
	return best
}

// Hypothesis is a decoded sentence (without EOS) and its log-probability
// (including EOS when it ended with one).
type Hypothesis struct {
	Tokens  []int32
	LogProb float64
	Ended   bool // emitted EOS
}

// Beam translates one source sentence with a left-to-right beam search of
// width beam: at each step every live hypothesis is extended by every token,
// the best beam extensions stay; one that emits EOS leaves the beam for the
// finished list. The search stops when no live hypothesis can beat the best
// finished one (log-probabilities only fall), or after maxLen tokens. It
// returns the finished hypotheses best first (or, if none finished, the live
// ones).
func (m *Seq2Seq[T]) Beam(src []int32, sp Special, beam, maxLen int) []Hypothesis {
	V := m.Cfg.TgtVocab
	st := m.encode(src, len(src), 1)
	live := []Hypothesis{{}}
	var finished []Hypothesis
	tokens := []int32{sp.Go}
	for t := 0; t < maxLen && len(live) > 0; t++ {
		var lp []float64
		st, lp = m.step(st, tokens)
		type cand struct {
			from  int
			token int32
			score float64
		}
		var cands []cand
		for i, h := range live {
			row := lp[i*V : (i+1)*V]
			for _, j := range topK(row, beam+1) {
				cands = append(cands, cand{i, int32(j), h.LogProb + row[j]})
			}
		}
		sort.SliceStable(cands, func(a, b int) bool { return cands[a].score > cands[b].score })
		var next []Hypothesis
		var from []int
		for _, c := range cands {
			if len(next) == beam {
				break
			}
			toks := append(append([]int32(nil), live[c.from].Tokens...), c.token)
			if c.token == sp.EOS {
				finished = append(finished, Hypothesis{Tokens: toks[:len(toks)-1], LogProb: c.score, Ended: true})
				continue
			}
			next = append(next, Hypothesis{Tokens: toks, LogProb: c.score})
			from = append(from, c.from)
		}
		live = next
		if len(finished) >= beam || len(live) == 0 {
			break
		}
		if len(finished) > 0 && bestScore(finished) >= live[0].LogProb {
			break
		}
		st = gather(st, from, m.Cfg.Hidden)
		tokens = tokens[:0]
		for _, h := range live {
			tokens = append(tokens, h.Tokens[len(h.Tokens)-1])
		}
	}
	out := finished
	if len(out) == 0 {
		out = live
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].LogProb > out[b].LogProb })
	return out
}

func bestScore(hs []Hypothesis) float64 {
	b := math.Inf(-1)
	for _, h := range hs {
		b = math.Max(b, h.LogProb)
	}
	return b
}

// topK returns the indices of the k largest values, largest first.
func topK(xs []float64, k int) []int {
	idx := make([]int, 0, k+1)
	for j, v := range xs {
		if len(idx) == k && v <= xs[idx[k-1]] {
			continue
		}
		pos := sort.Search(len(idx), func(i int) bool { return xs[idx[i]] < v })
		idx = append(idx, 0)
		copy(idx[pos+1:], idx[pos:])
		idx[pos] = j
		if len(idx) > k {
			idx = idx[:k]
		}
	}
	return idx
}

// gather picks the rows from of every layer's state.
func gather[T Float](st state[T], from []int, H int) state[T] {
	var out state[T]
	for l := range st.h {
		h := make([]T, len(from)*H)
		c := make([]T, len(from)*H)
		for i, f := range from {
			copy(h[i*H:(i+1)*H], st.h[l][f*H:(f+1)*H])
			copy(c[i*H:(i+1)*H], st.c[l][f*H:(f+1)*H])
		}
		out.h = append(out.h, h)
		out.c = append(out.c, c)
	}
	return out
}

// LogProb is the log-probability the model gives to target (followed by
// EOS) after source, computed through the training forward pass.
func (m *Seq2Seq[T]) LogProb(src, target []int32, sp Special) float64 {
	b := &SeqBatch{Size: 1, SrcLen: len(src), TgtLen: len(target) + 1, Src: src}
	b.TgtIn = append([]int32{sp.Go}, target...)
	b.TgtOut = append(append([]int32(nil), target...), sp.EOS)
	loss, _ := m.Loss(b, false)
	return -loss
}
