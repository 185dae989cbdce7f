package models

import "math"

// LSTM is one LSTM layer with input size In and hidden size Hidden. Its
// parameters are views into the model's flat parameter and gradient vectors:
// Wx (In x 4H), Wh (H x 4H) and B (4H), gates in the order i, f, g, o.
//
//	i = σ(x Wxi + h Whi + bi)   f = σ(...)   g = tanh(...)   o = σ(...)
//	c' = f*c + i*g              h' = o*tanh(c')
type LSTM[T Float] struct {
	In, Hidden int
	Wx, Wh, B  []T // parameters
	DWx, DWh   []T // their gradients
	DB         []T
}

// LSTMTensors lists the tensors of an LSTM layer named prefix.
func LSTMTensors(prefix string, in, hidden int) []Tensor {
	return []Tensor{
		{Name: prefix + ".wx", Shape: []int{in, 4 * hidden}},
		{Name: prefix + ".wh", Shape: []int{hidden, 4 * hidden}},
		{Name: prefix + ".b", Shape: []int{4 * hidden}},
	}
}

func newLSTM[T Float](in, hidden int, w, g *view[T]) *LSTM[T] {
	h4 := 4 * hidden
	return &LSTM[T]{
		In: in, Hidden: hidden,
		Wx: w.take(in * h4), Wh: w.take(hidden * h4), B: w.take(h4),
		DWx: g.take(in * h4), DWh: g.take(hidden * h4), DB: g.take(h4),
	}
}

// LSTMCache holds what the backward pass of one forward pass needs, and the
// backward pass's own buffers. A cache is reused from step to step: once its
// buffers have grown to the largest batch, a training step allocates nothing.
type LSTMCache[T Float] struct {
	Steps, Batch int
	X            []T // input, Steps*Batch x In (time-major)
	HS           []T // h0 then h_1..h_T: (Steps+1)*Batch x H
	CS           []T // c0 then c_1..c_T: (Steps+1)*Batch x H
	Gates        []T // activated gates: Steps*Batch x 4H
	TanhC        []T // tanh(c_t): Steps*Batch x H
	// Backward's buffers: gate gradients, running dh and dc, and dx.
	DA, DH, DC, DX []T
	own            []T // the input buffer Begin gives X (Forward keeps the caller's)
}

// grow returns s resized to n elements, reallocating only when its capacity
// is short. The contents are not cleared.
func grow[T Float](s []T, n int) []T {
	if cap(s) >= n {
		return s[:n]
	}
	return make([]T, n)
}

// Out returns the hidden states h_1..h_T, Steps*Batch x H.
func (c *LSTMCache[T]) Out(hidden int) []T { return c.HS[c.Batch*hidden:] }

// Final returns h_T and c_T, Batch x H each.
func (c *LSTMCache[T]) Final(hidden int) (h, cell []T) {
	n := c.Batch * hidden
	return c.HS[c.Steps*n:], c.CS[c.Steps*n:]
}

func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// Forward runs the layer over x (steps*batch x In, time-major) from the
// initial state (h0, c0), each batch x H, or zero when nil, filling c (a new
// cache when nil) and returning it. It is Begin and one Steps over every
// time step.
func (l *LSTM[T]) Forward(c *LSTMCache[T], x []T, steps, batch int, h0, c0 []T) *LSTMCache[T] {
	mustLen("lstm input", x, steps*batch*l.In)
	c = l.Begin(c, x, steps, batch, h0, c0)
	l.Steps(c, 0, steps)
	return c
}

// Begin starts a forward pass of steps time steps over batch sequences
// from the initial state (h0, c0) (zero when nil), to be run chunk by
// chunk of time steps with Steps as the input arrives (a pipelined stage
// receives it step by step). x is the input (steps*batch x In, time-major),
// kept as c.X; when nil, c.X is a buffer of the cache's own, to be filled
// chunk by chunk before Steps reads it. The chunks give the bits of one
// Forward: an input projection by rows is bits of the whole
// (internal/kernel/gemm's TestSubsetsGiveSameBits), the recurrence runs step
// by step either way.
func (l *LSTM[T]) Begin(c *LSTMCache[T], x []T, steps, batch int, h0, c0 []T) *LSTMCache[T] {
	H, H4 := l.Hidden, 4*l.Hidden
	if c == nil {
		c = &LSTMCache[T]{}
	}
	c.Steps, c.Batch, c.X = steps, batch, x
	if x == nil {
		c.own = grow(c.own, steps*batch*l.In)
		c.X = c.own
	}
	c.HS = grow(c.HS, (steps+1)*batch*H)
	c.CS = grow(c.CS, (steps+1)*batch*H)
	c.Gates = grow(c.Gates, steps*batch*H4)
	c.TanhC = grow(c.TanhC, steps*batch*H)
	if h0 != nil {
		copy(c.HS, h0)
	} else {
		clear(c.HS[:batch*H])
	}
	if c0 != nil {
		copy(c.CS, c0)
	} else {
		clear(c.CS[:batch*H])
	}
	return c
}

// Steps runs time steps [t0, t1) of the forward pass begun by Begin, whose
// input rows c.X[t0*batch:t1*batch] are in place; the outputs h_t of those
// steps are then c.Out(H)'s rows [t0*batch, t1*batch). Chunks must come in
// order and cover the steps.
func (l *LSTM[T]) Steps(c *LSTMCache[T], t0, t1 int) {
	H, H4, batch := l.Hidden, 4*l.Hidden, c.Batch
	// The chunk's input projections in one GEMM.
	rows := c.Gates[t0*batch*H4 : t1*batch*H4]
	for r := 0; r < (t1-t0)*batch; r++ {
		copy(rows[r*H4:(r+1)*H4], l.B)
	}
	matmul(rows, c.X[t0*batch*l.In:t1*batch*l.In], false, l.Wx, false, (t1-t0)*batch, H4, l.In, true)
	n := batch * H
	for t := t0; t < t1; t++ {
		g := c.Gates[t*batch*H4 : (t+1)*batch*H4]
		matmul(g, c.HS[t*n:(t+1)*n], false, l.Wh, false, batch, H4, H, true)
		cPrev, cNext := c.CS[t*n:(t+1)*n], c.CS[(t+1)*n:(t+2)*n]
		hNext, tc := c.HS[(t+1)*n:(t+2)*n], c.TanhC[t*n:(t+1)*n]
		if g32, ok := any(g).([]float32); ok {
			cellForwardFast(g32, any(cPrev).([]float32), any(cNext).([]float32), any(hNext).([]float32), any(tc).([]float32), H)
		} else {
			cellForward(g, cPrev, cNext, hNext, tc, H)
		}
	}
}

// Backward takes the gradient of the loss with respect to the layer's outputs
// dOut (steps*batch x H, or nil for none) and final state (dhT, dcT, each
// batch x H, or nil), adds the parameter gradients into DWx, DWh and DB, and
// returns the gradients with respect to the input x (nil unless wantDX) and the
// initial state (dh0, dc0). The returned slices live in c: use them before
// c's next Backward. It is BackBegin, one BackSteps over every time step,
// and BackFinish.
func (l *LSTM[T]) Backward(c *LSTMCache[T], dOut, dhT, dcT []T, wantDX bool) (dx, dh0, dc0 []T) {
	l.BackBegin(c, dhT, dcT)
	dx = l.BackSteps(c, dOut, 0, c.Steps, wantDX)
	dh0, dc0 = l.BackFinish(c)
	return dx, dh0, dc0
}

// BackBegin starts the backward pass of c's forward pass, from the
// gradient of the final state (dhT, dcT; zero when nil), to be run chunk by
// chunk of time steps, latest first, with BackSteps (a pipelined stage
// receives the gradient of its outputs step by step, in reverse), then
// BackFinish.
func (l *LSTM[T]) BackBegin(c *LSTMCache[T], dhT, dcT []T) {
	n := c.Batch * l.Hidden
	c.DA = grow(c.DA, c.Steps*c.Batch*4*l.Hidden) // gradients of the gate pre-activations
	c.DH, c.DC = grow(c.DH, n), grow(c.DC, n)
	if dhT != nil {
		copy(c.DH, dhT)
	} else {
		clear(c.DH)
	}
	if dcT != nil {
		copy(c.DC, dcT)
	} else {
		clear(c.DC)
	}
}

// BackSteps runs time steps t1-1 down to t0 of the backward pass, given
// the gradient of those steps' outputs (dOut: (t1-t0)*batch x H, or nil),
// and returns, with wantDX, the gradient of those steps' inputs ((t1-t0)*
// batch x In, living in c until its next pass). Chunks must come latest
// first and cover the steps.
func (l *LSTM[T]) BackSteps(c *LSTMCache[T], dOut []T, t0, t1 int, wantDX bool) []T {
	H, H4 := l.Hidden, 4*l.Hidden
	batch := c.Batch
	n := batch * H
	dA, dh, dc := c.DA, c.DH, c.DC
	for t := t1 - 1; t >= t0; t-- {
		if dOut != nil {
			addTo(dh, dOut[(t-t0)*n:(t-t0+1)*n])
		}
		g := c.Gates[t*batch*H4 : (t+1)*batch*H4]
		da := dA[t*batch*H4 : (t+1)*batch*H4]
		cPrev, tc := c.CS[t*n:(t+1)*n], c.TanhC[t*n:(t+1)*n]
		if g32, ok := any(g).([]float32); ok {
			cellBackwardFast(g32, any(cPrev).([]float32), any(tc).([]float32), any(dh).([]float32), any(dc).([]float32), any(da).([]float32), H)
		} else {
			cellBackward(g, cPrev, tc, dh, dc, da, H)
		}
		// dh_{t-1} = dA_t Wh^T
		matmul(dh, da, false, l.Wh, true, batch, H, H4, false)
	}
	if !wantDX {
		return nil
	}
	// The chunk's input gradients in one GEMM: rows of the whole product.
	c.DX = grow(c.DX, c.Steps*batch*l.In)
	dx := c.DX[t0*batch*l.In : t1*batch*l.In]
	matmul(dx, dA[t0*batch*H4:t1*batch*H4], false, l.Wx, true, (t1-t0)*batch, l.In, H4, false)
	return dx
}

// BackFinish adds the parameter gradients of the whole pass (sums over
// every time step, in one product each) and returns the gradient of the
// initial state (dh0, dc0), living in c.
func (l *LSTM[T]) BackFinish(c *LSTMCache[T]) (dh0, dc0 []T) {
	H4, n, rows := 4*l.Hidden, c.Batch*l.Hidden, c.Steps*c.Batch
	matmul(l.DWh, c.HS[:c.Steps*n], true, c.DA, false, l.Hidden, H4, rows, true)
	matmul(l.DWx, c.X, true, c.DA, false, l.In, H4, rows, true)
	for r := 0; r < rows; r++ {
		addTo(l.DB, c.DA[r*H4:(r+1)*H4])
	}
	return c.DH, c.DC
}

// cellBackward is the float64 math of one step's gates' gradients: dA from
// the gradient of h (dh) and of c (dc, which becomes dc_{t-1}).
func cellBackward[T Float](g, cPrev, tc, dh, dc, dA []T, H int) {
	H4 := 4 * H
	for b := 0; b < len(g)/H4; b++ {
		row, drow := g[b*H4:(b+1)*H4], dA[b*H4:(b+1)*H4]
		for j := 0; j < H; j++ {
			k := b*H + j
			i, f, gg, o := row[j], row[H+j], row[2*H+j], row[3*H+j]
			th := tc[k]
			do := dh[k] * th
			dck := dh[k]*o*(1-th*th) + dc[k]
			drow[j] = dck * gg * i * (1 - i)
			drow[H+j] = dck * cPrev[k] * f * (1 - f)
			drow[2*H+j] = dck * i * (1 - gg*gg)
			drow[3*H+j] = do * o * (1 - o)
			dc[k] = dck * f
		}
	}
}

// cellForward applies the gate nonlinearities to the pre-activations g
// (rows of 4H: i, f, g, o) in place and computes the new cell state, its
// tanh and the new hidden state, in float64 math: the reference for
// cellForward32, and the float64 model's path.
func cellForward[T Float](g, cPrev, cNext, hNext, tc []T, H int) {
	H4 := 4 * H
	for b := 0; b < len(g)/H4; b++ {
		row := g[b*H4 : (b+1)*H4]
		for j := 0; j < H; j++ {
			i := T(sigmoid(float64(row[j])))
			f := T(sigmoid(float64(row[H+j])))
			gg := T(math.Tanh(float64(row[2*H+j])))
			o := T(sigmoid(float64(row[3*H+j])))
			row[j], row[H+j], row[2*H+j], row[3*H+j] = i, f, gg, o
			k := b*H + j
			cn := f*cPrev[k] + i*gg
			cNext[k] = cn
			th := T(math.Tanh(float64(cn)))
			tc[k] = th
			hNext[k] = o * th
		}
	}
}

// cellForward32 is cellForward with float32 activation kernels.
func cellForward32(g, cPrev, cNext, hNext, tc []float32, H int) {
	H4 := 4 * H
	for b := 0; b < len(g)/H4; b++ {
		row := g[b*H4 : (b+1)*H4]
		ri, rf, rg, ro := row[:H], row[H:2*H], row[2*H:3*H], row[3*H:H4]
		cp, cn, hn, t := cPrev[b*H:(b+1)*H], cNext[b*H:(b+1)*H], hNext[b*H:(b+1)*H], tc[b*H:(b+1)*H]
		for j := range ri {
			i, f, gg, o := sigmoid32(ri[j]), sigmoid32(rf[j]), tanh32(rg[j]), sigmoid32(ro[j])
			ri[j], rf[j], rg[j], ro[j] = i, f, gg, o
			c := f*cp[j] + i*gg
			cn[j] = c
			th := tanh32(c)
			t[j] = th
			hn[j] = o * th
		}
	}
}
