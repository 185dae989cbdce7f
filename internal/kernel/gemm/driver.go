package gemm

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// problem is one call of Sgemm after its checks, with C already scaled by
// beta unless beta is 0 (store).
type problem struct {
	aT, bT  bool
	m, n, k int
	alpha   float32
	a       []float32
	lda     int
	b       []float32
	ldb     int
	c       []float32
	ldc     int
	store   bool // the first block of K stores into C instead of adding to it
}

// The work of a call, in the loops of GotoBLAS:
//
//	for each block of mc rows of A (i0):          the A panel, shared
//	  for each block of kc steps of K (p0):
//	    pack A[i0:i0+mc, p0:p0+kc]                phase 1, split by panels
//	    for each unit (columns j0:j1, rows):      phase 2, split by units
//	      for each nc columns: pack B[p0:p0+kc, cols] (the unit's own)
//	        for each mr rows: for each nr columns: kernel
//
// A step is one (i0, p0); its two phases run one after the other, and the
// next step starts only when the last one is done (it repacks A). Units are
// handed out from one counter to whoever asks next, the caller and any
// helpers it recruited, so no thread waits for another to start. Where a
// unit runs changes no bit of the result.

// layout is how a call is cut into steps and units.
type layout struct {
	steps     int // blocks of rows times blocks of K
	kblocks   int
	kc        int  // the length of the blocks of K (the last may be shorter)
	directB   bool // kernels read B in place instead of from packed panels
	colsUnit  int  // columns of C per unit, a multiple of nr
	colUnits  int
	rowSplits int // each block of rows is cut into this many ranges
}

// directRows is the most rows of C for which kernels read B (not
// transposed) in place: with few rows, each value of B serves few
// multiply-adds and packing it would cost more than it saves (G1's
// 100x1200x1200: 5% faster on one thread). Not where the rows of B are a
// multiple of 1 KiB apart: they would share sets of the L1 cache (W2's
// 128x2048x512: 8% slower in place).
const directRows = 256

// minFlopsPerThread keeps small products on one thread, where handing work
// to another would cost more than it saves.
const minFlopsPerThread = 1 << 22

// plan cuts pr into steps and units for up to threads threads. Nothing it
// decides changes a bit of the result but the length of K's blocks, which
// depends on K alone.
func plan(p *path, pr *problem, threads int) layout {
	l := layout{kblocks: (pr.k + kc - 1) / kc}
	l.kc = (pr.k + l.kblocks - 1) / l.kblocks
	l.directB = !pr.bT && pr.m <= directRows && pr.ldb%256 != 0
	l.steps = (pr.m + p.mc - 1) / p.mc * l.kblocks
	panels := (pr.n + p.nr - 1) / p.nr
	// Units of at most nc columns, as many as a multiple of the threads.
	units := (panels*p.nr + p.nc - 1) / p.nc
	units = (units + threads - 1) / threads * threads
	units = min(units, panels)
	l.colsUnit = (panels + units - 1) / units * p.nr
	l.colUnits = (pr.n + l.colsUnit - 1) / l.colsUnit
	l.rowSplits = 1
	if l.colUnits < threads { // few columns: split rows too
		rowPanels := (min(pr.m, p.mc) + p.mr - 1) / p.mr
		l.rowSplits = min((threads+l.colUnits-1)/l.colUnits, rowPanels)
	}
	return l
}

// job is one call in flight. The caller owns it; helpers touch it only
// between the caller recruiting them and their release.
type job struct {
	p  *path
	pr problem
	l  layout

	// phase1 and phase2 hold each step's unit counts; starts[u] is where
	// phase u (2*step, 2*step+1) starts in the sequence of all units.
	starts []int
	total  int
	next   atomic.Int64 // the next unit to hand out
	done   atomic.Int64 // units finished

	apack []float32 // the A panel of the current step (phase 1 writes, phase 2 reads)
	own   scratch   // the caller's
	hired []*helper
}

// scratch is one thread's own buffers.
type scratch struct {
	bpack []float32 // a block of B: kc x nc
	tile  []float32 // an edge tile of C: mr x nr
}

func (s *scratch) fit(p *path) {
	if n := kc * p.nc; len(s.bpack) < n {
		s.bpack = make([]float32, n)
	}
	if n := p.mr * p.nr; len(s.tile) < n {
		s.tile = make([]float32, n)
	}
}

// jobs are the idle jobs, with their buffers (a megabyte or two each): as
// many as calls have run at once, reused last in first out, so that one
// goroutine's GEMMs always find the same buffers. (A sync.Pool would let a
// goroutine that moved to another processor miss its job and allocate
// another, and drop them all at a GC.)
var jobs struct {
	mu   sync.Mutex // guards free
	free []*job
}

func getJob() *job {
	jobs.mu.Lock()
	defer jobs.mu.Unlock()
	if n := len(jobs.free); n > 0 {
		j := jobs.free[n-1]
		jobs.free = jobs.free[:n-1]
		return j
	}
	return new(job)
}

func putJob(j *job) {
	jobs.mu.Lock()
	jobs.free = append(jobs.free, j)
	jobs.mu.Unlock()
}

func run(p *path, pr *problem) {
	flops := 2 * float64(pr.m) * float64(pr.n) * float64(pr.k)
	runThreads(p, pr, min(runtime.GOMAXPROCS(0), max(1, int(flops/minFlopsPerThread))))
}

// runThreads computes pr with the caller and up to threads-1 helpers.
func runThreads(p *path, pr *problem, threads int) {
	j := getJob()
	j.p, j.pr, j.l = p, *pr, plan(p, pr, threads)
	j.schedule()
	j.own.fit(p)
	if n := min(pr.m, p.mc) * kc; len(j.apack) < n {
		j.apack = make([]float32, n)
	}
	j.next.Store(0)
	j.done.Store(0)
	if threads > 1 {
		j.hired = team.hire(j, threads-1, j.hired[:0])
	}
	j.work(&j.own)
	for _, h := range j.hired {
		for h.busy.Load() { // until it has let go of j
			runtime.Gosched()
		}
	}
	j.hired = j.hired[:0]
	j.pr = problem{} // drop the caller's slices
	putJob(j)
}

// schedule counts the units of every phase.
func (j *job) schedule() {
	j.starts = j.starts[:0]
	j.total = 0
	for s := range j.l.steps {
		j.starts = append(j.starts, j.total)
		j.total += j.packUnits(s)
		j.starts = append(j.starts, j.total)
		j.total += j.l.colUnits * j.rowSplits(s)
	}
	j.starts = append(j.starts, j.total)
}

// rows returns the first row and the count of the block of step s.
func (j *job) rows(s int) (int, int) {
	i0 := s / j.l.kblocks * j.p.mc
	return i0, min(j.p.mc, j.pr.m-i0)
}

// depth returns the first step of K and the count of step s.
func (j *job) depth(s int) (int, int) {
	p0 := s % j.l.kblocks * j.l.kc
	return p0, min(j.l.kc, j.pr.k-p0)
}

// packGroup is how many panels of A one unit of phase 1 packs.
const packGroup = 8

func (j *job) packUnits(s int) int {
	_, rows := j.rows(s)
	panels := (rows + j.p.mr - 1) / j.p.mr
	return (panels + packGroup - 1) / packGroup
}

func (j *job) rowSplits(s int) int {
	_, rows := j.rows(s)
	return min(j.l.rowSplits, (rows+j.p.mr-1)/j.p.mr)
}

// work hands out units until none is left.
func (j *job) work(s *scratch) {
	phase := 0
	for {
		u := int(j.next.Add(1) - 1)
		if u >= j.total {
			return
		}
		for j.starts[phase+1] <= u {
			phase++
		}
		for int(j.done.Load()) < j.starts[phase] { // the phases before are not all done
			runtime.Gosched()
		}
		step, local := phase/2, u-j.starts[phase]
		if phase%2 == 0 {
			j.packA(step, local)
		} else {
			j.compute(step, local, s)
		}
		j.done.Add(1)
	}
}

// packA packs unit g of phase 1 of step s: panels g*packGroup onwards.
func (j *job) packA(s, g int) {
	i0, rows := j.rows(s)
	p0, depth := j.depth(s)
	mr := j.p.mr
	for q := g * packGroup; q < min((g+1)*packGroup, (rows+mr-1)/mr); q++ {
		r := min(mr, rows-q*mr)
		dst := j.apack[q*mr*depth : q*mr*depth+r*depth]
		packA(dst, &j.pr, i0+q*mr, r, p0, depth)
	}
}

// compute runs unit u of phase 2 of step s.
func (j *job) compute(s, u int, sc *scratch) {
	i0, rows := j.rows(s)
	p0, depth := j.depth(s)
	mr, nr := j.p.mr, j.p.nr
	splits := j.rowSplits(s)
	col, part := u/splits, u%splits
	panels := (rows + mr - 1) / mr
	per := (panels + splits - 1) / splits
	r0, r1 := part*per*mr, min((part+1)*per*mr, rows)
	c0, c1 := col*j.l.colsUnit, min((col+1)*j.l.colsUnit, j.pr.n)
	accumulate := p0 > 0 || !j.pr.store
	pr := &j.pr
	direct := j.l.directB
	for jc := c0; jc < c1; jc += j.p.nc {
		w := min(j.p.nc, c1-jc)
		last := w / nr * nr // where a narrower panel starts, if any
		switch {
		case !direct:
			packB(sc.bpack, pr, p0, depth, jc, w, nr)
		case last < w: // in place but for the last panel, padded with zeros
			packB(sc.bpack, pr, p0, depth, jc+last, w-last, nr)
		}
		for ir := r0; ir < r1; ir += mr {
			r := min(mr, r1-ir)
			a := &j.apack[ir*depth]
			kern := j.p.kernels[r-1]
			for jr := 0; jr < w; jr += nr {
				b, ldb := &sc.bpack[jr*depth], nr
				if direct {
					b, ldb = &pr.b[p0*pr.ldb+jc+jr], pr.ldb
					if jr == last {
						b, ldb = &sc.bpack[0], nr
					}
				}
				ci := (i0+ir)*pr.ldc + jc + jr
				if cols := w - jr; cols < nr {
					edge(kern, depth, a, b, ldb, pr.c[ci:], pr.ldc, r, cols, nr, pr.alpha, accumulate, sc.tile)
					continue
				}
				kern(depth, a, b, ldb, &pr.c[ci], pr.ldc, pr.alpha, accumulate)
			}
		}
	}
}

// edge computes a tile narrower than nr through a full-width buffer: the
// kernel stores alpha*sum there, then it is stored or added, so the bits
// are those of the full tile.
func edge(kern kernel, depth int, a, b *float32, ldb int, c []float32, ldc, r, cols, nr int, alpha float32, accumulate bool, tile []float32) {
	kern(depth, a, b, ldb, &tile[0], nr, alpha, false)
	for i := range r {
		row, t := c[i*ldc:i*ldc+cols], tile[i*nr:i*nr+cols]
		if accumulate {
			for j, v := range t {
				row[j] += v
			}
		} else {
			copy(row, t)
		}
	}
}

// packA writes rows i0..i0+r of op(A), steps p0..p0+depth, as dst[p*r+i].
func packA(dst []float32, pr *problem, i0, r, p0, depth int) {
	if pr.aT { // op(A)[i][p] = a[p*lda+i]: r contiguous values per step
		for p := range depth {
			copy(dst[p*r:p*r+r], pr.a[(p0+p)*pr.lda+i0:])
		}
		return
	}
	// op(A)[i][p] = a[i*lda+p]: the panel is the transpose of r rows of A.
	transposeInto(dst, r, pr.a[i0*pr.lda+p0:], pr.lda, r, depth)
}

// transposeInto sets dst[p*ldd+i] = src[i*lds+p] for i < rows, p < depth:
// by blocks of 8 or 4 rows and 8 steps in assembly, the rest one by one.
func transposeInto(dst []float32, ldd int, src []float32, lds int, rows, depth int) {
	_ = dst[(depth-1)*ldd+rows-1]
	_ = src[(rows-1)*lds+depth-1]
	i := 0
	for ; i < rows; i += 4 {
		h := 4
		if rows-i >= 8 {
			h = 8
		} else if rows-i < 4 {
			break
		}
		p := 0
		for ; p+8 <= depth; p += 8 {
			if h == 8 {
				transpose8x8(&src[i*lds+p], lds, &dst[p*ldd+i], ldd)
			} else {
				transpose4x8(&src[i*lds+p], lds, &dst[p*ldd+i], ldd)
			}
		}
		for ii := i; ii < i+h; ii++ {
			for q := p; q < depth; q++ {
				dst[q*ldd+ii] = src[ii*lds+q]
			}
		}
		i += h - 4
	}
	for ; i < rows; i++ {
		for p, v := range src[i*lds : i*lds+depth] {
			dst[p*ldd+i] = v
		}
	}
}

// packB writes columns j0..j0+w of op(B), steps p0..p0+depth, in panels of
// nr columns (the last padded with zeros): panel q holds dst[q*nr*depth +
// p*nr + j].
func packB(dst []float32, pr *problem, p0, depth, j0, w, nr int) {
	for q := 0; q*nr < w; q++ {
		cols := min(nr, w-q*nr)
		panel := dst[q*nr*depth : (q+1)*nr*depth]
		jq := j0 + q*nr
		if !pr.bT { // op(B)[p][j] = b[p*ldb+j]: nr contiguous values per step
			src := pr.b[p0*pr.ldb+jq:]
			if cols == nr {
				_ = src[(depth-1)*pr.ldb+nr-1]
				copyPanel(nr, &src[0], pr.ldb, &panel[0], depth)
				continue
			}
			for p := range depth {
				out := panel[p*nr : p*nr+nr]
				copy(out, src[p*pr.ldb:][:cols])
				clear(out[cols:])
			}
			continue
		}
		// op(B)[p][j] = b[j*ldb+p]: the panel is the transpose of cols rows of B.
		transposeInto(panel, nr, pr.b[jq*pr.ldb+p0:], pr.ldb, cols, depth)
		if cols < nr {
			for p := range depth {
				clear(panel[p*nr+cols : p*nr+nr])
			}
		}
	}
}

// helper is a goroutine that works on the jobs of callers that recruit it.
type helper struct {
	busy atomic.Bool // set by the caller that recruits it, cleared when it lets go of the job
	jobs chan *job
	own  scratch
}

// crew is a set of helpers: at most GOMAXPROCS-1 of them (the most any
// caller asked for), started on demand, never stopped.
type crew struct {
	mu      sync.Mutex // guards helpers
	helpers []*helper
}

// team is the process's crew.
var team crew

// hire recruits up to n idle helpers for j and appends them to hired.
func (t *crew) hire(j *job, n int, hired []*helper) []*helper {
	t.mu.Lock()
	for len(t.helpers) < n {
		h := &helper{jobs: make(chan *job, 1)}
		t.helpers = append(t.helpers, h)
		go h.loop()
	}
	for _, h := range t.helpers {
		if len(hired) == n {
			break
		}
		if h.busy.CompareAndSwap(false, true) {
			hired = append(hired, h)
			h.jobs <- j
		}
	}
	t.mu.Unlock()
	return hired
}

func (h *helper) loop() {
	for j := range h.jobs {
		h.own.fit(j.p)
		j.work(&h.own)
		h.busy.Store(false)
	}
}
