package job

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/downpour-ml/downpour/models"
)

// The W2 workload of the benchmarks: 4 layers, hidden and embedding 512,
// vocabularies 16000 and 8000.
var w2 = models.Seq2SeqConfig{SrcVocab: 16000, TgtVocab: 8000, Embed: 512, Hidden: 512, Layers: 4}

// testTensors are three small tensors of awkward sizes.
var testTensors = []models.Tensor{{Name: "a", Shape: []int{7, 5}}, {Name: "b", Shape: []int{13}}, {Name: "c", Shape: []int{3, 3}}}

func loads(p *Placement) []int {
	l := make([]int, p.Shards)
	for _, b := range p.Blocks {
		l[b.Shard] += b.Len
	}
	return l
}

// Bytes per shard stay within 5% of the mean for the W2 model, whatever the
// shard count and block size.
func TestPlacementBalanceW2(t *testing.T) {
	ts := w2.Tensors()
	for _, bs := range []int{16 << 10, 64 << 10, 256 << 10} {
		for _, shards := range []int{2, 3, 4, 8} {
			p := Place(ts, bs, shards)
			q, err := DecodePlacement(p.Encode())
			if err != nil {
				t.Fatal(err)
			}
			l := loads(q)
			ratio := float64(slices.Max(l)) / (float64(p.Size()) / float64(shards))
			t.Logf("W2, %d-float blocks, %d shards: max/mean bytes %.4f", bs, shards, ratio)
			if ratio > 1.05 {
				t.Errorf("W2, %d-float blocks, %d shards: max/mean %.4f > 1.05", bs, shards, ratio)
			}
		}
	}
}

// With an injected hash the placement is exactly what the hash prefers, until
// a shard is full.
func TestPlacementFollowsInjectedHash(t *testing.T) {
	ts := []models.Tensor{{Name: "x", Shape: []int{40}}}
	prefer := func(b uint32, s int) uint64 { // block b prefers shard b%3, then (b+1)%3, ...
		return uint64(3 - (s-int(b)%3+3)%3)
	}
	p := PlaceWith(ts, 4, 3, prefer, 0.5)
	var got []int
	for _, b := range p.Blocks {
		got = append(got, b.Shard)
	}
	if want := []int{0, 1, 2, 0, 1, 2, 0, 1, 2, 0}; !slices.Equal(got, want) {
		t.Fatalf("placement %v, want %v", got, want)
	}
	// Everything prefers shard 0: it fills to capacity ceil(1.0*40/2) = 20
	// elements (5 blocks), the rest spill to shard 1.
	p = PlaceWith(ts, 4, 2, func(b uint32, s int) uint64 { return uint64(2 - s) }, 0)
	if l := loads(p); !slices.Equal(l, []int{20, 20}) {
		t.Fatalf("loads %v, want [20 20]", l)
	}
}

// PlaceRuns moves runs of consecutive blocks of a tensor as one: each goes
// where the hash sends its first block.
func TestPlaceRunsKeepsRunsTogether(t *testing.T) {
	ts := []models.Tensor{{Name: "x", Shape: []int{40}}, {Name: "y", Shape: []int{8}}}
	prefer := func(b uint32, s int) uint64 { // block b prefers shard (b/3)%2
		if int(b/3)%2 == s {
			return 1
		}
		return 0
	}
	p := PlaceRuns(ts, 4, 2, 3, prefer, 0.5)
	var got []int
	for _, b := range p.Blocks {
		got = append(got, b.Shard)
	}
	// x's runs are blocks 0-2, 3-5, 6-8, 9; y's (a run never spans two
	// tensors) 10-11.
	if want := []int{0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1}; !slices.Equal(got, want) {
		t.Fatalf("placement %v, want %v", got, want)
	}
}

// Place keeps W2's blocks in runs that fill a message: a dense push sends
// each run straight from the gradient.
func TestPlaceKeepsW2InRuns(t *testing.T) {
	const bs = 16 << 10
	for _, shards := range []int{2, 3, 4, 8} {
		p := Place(w2.Tensors(), bs, shards)
		breaks := 0 // where a tensor's next block is on another shard
		for i, b := range p.Blocks[1:] {
			if prev := p.Blocks[i]; prev.Tensor == b.Tensor && prev.Shard != b.Shard {
				breaks++
			}
		}
		perRun := RunBytes / (4 * bs)
		t.Logf("%d shards: %d blocks, %d shard changes within tensors", shards, len(p.Blocks), breaks)
		if breaks > len(p.Blocks)/perRun {
			t.Errorf("%d shards: %d shard changes within tensors among %d blocks; runs of %d allow at most %d", shards, breaks, len(p.Blocks), perRun, len(p.Blocks)/perRun)
		}
	}
}

// Adding a shard moves about its share of the bytes, not everything.
func TestPlacementStableWhenAddingAShard(t *testing.T) {
	ts := w2.Tensors()
	for _, shards := range []int{2, 3, 4, 7} {
		a, b := Place(ts, 64<<10, shards), Place(ts, 64<<10, shards+1)
		moved := 0
		for i := range a.Blocks {
			if a.Blocks[i].Shard != b.Blocks[i].Shard {
				moved += a.Blocks[i].Len
			}
		}
		frac := float64(moved) / float64(a.Size())
		share := 1 / float64(shards+1)
		t.Logf("%d -> %d shards: %.1f%% of the bytes move (the new shard's share is %.1f%%)", shards, shards+1, 100*frac, 100*share)
		if frac > share+0.15 {
			t.Errorf("%d -> %d shards: %.2f of the bytes moved", shards, shards+1, frac)
		}
	}
}

func TestPlacementDeterministic(t *testing.T) {
	ts := w2.Tensors()
	if !slices.Equal(Place(ts, 1000, 3).Encode(), Place(ts, 1000, 3).Encode()) {
		t.Fatal("placement is not deterministic")
	}
	// A block larger than a shard's share still lands somewhere.
	p := Place([]models.Tensor{{Name: "big", Shape: []int{100}}, {Name: "s", Shape: []int{3}}}, 100, 4)
	if _, err := DecodePlacement(p.Encode()); err != nil {
		t.Fatal(err)
	}
}

func TestDecodePlacementRejects(t *testing.T) {
	p := Place(testTensors, 4, 2)
	for name, mut := range map[string]func(*Placement){
		"gap":                      func(p *Placement) { p.Blocks[1].Offset++ },
		"shard":                    func(p *Placement) { p.Blocks[0].Shard = 2 },
		"short":                    func(p *Placement) { p.Blocks = p.Blocks[:len(p.Blocks)-1] },
		"too long":                 func(p *Placement) { p.Blocks[0].Len = 5 },
		"no shards":                func(p *Placement) { p.Shards = 0 },
		"version 0":                func(p *Placement) { p.Version = 0 },
		"start < 0":                func(p *Placement) { p.Start = -1 },
		"tensor":                   func(p *Placement) { p.Blocks[0].Tensor = 9 },
		"copies":                   func(p *Placement) { p.Copies = 3 },
		"backup on its primary":    func(p *Placement) { p.Blocks[0].Backups = []int{p.Blocks[0].Shard} },
		"backup twice":             func(p *Placement) { p.Blocks[0].Backups = []int{1 - p.Blocks[0].Shard, 1 - p.Blocks[0].Shard} },
		"backup outside":           func(p *Placement) { p.Blocks[0].Backups = []int{2} },
		"too many backups":         func(p *Placement) { p.Copies = 1; p.Blocks[0].Backups = []int{1 - p.Blocks[0].Shard} },
		"primary down":             func(p *Placement) { p.Down = []int{p.Blocks[0].Shard} },
		"all down":                 func(p *Placement) { p.Down = []int{0, 1} },
		"down twice":               func(p *Placement) { p.Down = []int{1, 1} },
		"down, not handed over":    func(p *Placement) { p.Blocks[0].Shard = 0; p.Down = []int{1} },
		"since, not handed over":   func(p *Placement) { p.Since = 1; p.Version = 2 },
		"handed over from itself":  func(p *Placement) { p.HandedOver, p.Since = true, p.Version },
		"filling, not handed over": func(p *Placement) { p.Filling = []int{1 - p.Blocks[0].Shard} },
		"filling a primary":        func(p *Placement) { p.Version, p.HandedOver, p.Since, p.Filling = 2, true, 1, []int{p.Blocks[0].Shard} },
	} {
		q, _ := DecodePlacement(p.Encode())
		q.Copies = 2 // a backup is allowed unless the case says otherwise
		mut(q)
		if _, err := DecodePlacement(q.Encode()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := DecodePlacement([]byte("{")); err == nil {
		t.Error("accepted bad JSON")
	}
}

func FuzzDecodePlacement(f *testing.F) {
	f.Add(Place(testTensors, 4, 2).Encode())
	f.Add(PlaceCopies(testTensors, 4, 3, 2).Encode())
	if q, err := PlaceCopies(testTensors, 4, 3, 2).Handover(1); err == nil {
		f.Add(q.Encode())
		if r, err := q.Rejoin(1); err == nil {
			f.Add(r.Encode())
		}
	}
	f.Add([]byte(`{"shards":1,"block_size":1,"tensors":[{"name":"x","shape":[-1]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := DecodePlacement(data)
		if err != nil {
			return
		}
		for s := 0; s < p.Shards && s < 64; s++ {
			for _, b := range p.OnShard(s) {
				if b.Shard != s || b.Len < 1 {
					t.Fatal(fmt.Sprint("bad block ", b))
				}
			}
			for _, b := range p.Held(s) {
				if !p.Live(s) || b.Shard != s && !slices.Contains(b.Backups, s) {
					t.Fatal(fmt.Sprint("shard ", s, " holds a block it has no copy of: ", b))
				}
			}
		}
	})
}

// With copies, every block lies on that many distinct shards; the primary
// bytes of every shard stay within 5% of their mean, and the backup bytes
// within 8% of theirs (a run's backup may not go to its primary, which
// leaves less choice), for the W2 model at 16Ki-float blocks.
func TestPlaceCopiesBalanced(t *testing.T) {
	ts := w2.Tensors()
	for _, c := range []struct{ shards, copies int }{{2, 2}, {3, 2}, {4, 2}, {8, 2}, {3, 3}, {5, 3}} {
		p := PlaceCopies(ts, 16<<10, c.shards, c.copies)
		q, err := DecodePlacement(p.Encode())
		if err != nil {
			t.Fatal(err)
		}
		primary, backup := make([]int, c.shards), make([]int, c.shards)
		for _, b := range q.Blocks {
			held := append([]int{b.Shard}, b.Backups...)
			slices.Sort(held)
			if len(slices.Compact(held)) != c.copies {
				t.Fatalf("%d shards, %d copies: block %d is on shards %d and %v", c.shards, c.copies, b.ID, b.Shard, b.Backups)
			}
			primary[b.Shard] += b.Len
			for _, s := range b.Backups {
				backup[s] += b.Len
			}
		}
		pr := float64(slices.Max(primary)) / (float64(p.Size()) / float64(c.shards))
		br := float64(slices.Max(backup)) / (float64((c.copies-1)*p.Size()) / float64(c.shards))
		t.Logf("W2, %d shards, %d copies: max/mean primary bytes %.4f, backup bytes %.4f", c.shards, c.copies, pr, br)
		if pr > 1.05 || br > 1.08 {
			t.Errorf("%d shards, %d copies: max/mean primary %.4f (bound 1.05), backup %.4f (bound 1.08)", c.shards, c.copies, pr, br)
		}
		// One copy is today's placement, exactly.
		if c.copies == 2 && !slices.Equal(primaries(q), primaries(Place(ts, 16<<10, c.shards))) {
			t.Errorf("%d shards: the primaries moved when backups were added", c.shards)
		}
	}
	if !slices.Equal(PlaceCopies(ts, 1000, 3, 2).Encode(), PlaceCopies(ts, 1000, 3, 2).Encode()) {
		t.Fatal("placement with copies is not deterministic")
	}
	if p := PlaceCopies(ts, 1000, 3, 1); p.Copies != 0 || !slices.Equal(p.Encode(), Place(ts, 1000, 3).Encode()) {
		t.Fatal("one copy is not Place")
	}
}

func primaries(p *Placement) []int {
	var s []int
	for _, b := range p.Blocks {
		s = append(s, b.Shard)
	}
	return s
}

// A handover promotes the first backup of each block the dead shard was
// primary of, drops the dead shard from every backup list, keeps Start and
// From and moves the version on; a second death is handed over while a
// copy is left, and the loss of a block's last copy is ErrCopiesLost.
func TestPlacementHandover(t *testing.T) {
	p := PlaceCopies(w2.Tensors(), 64<<10, 4, 3)
	p.Version, p.Start, p.From = 5, 300, []string{"a", "b", "c", "d"}
	q, err := p.Handover(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodePlacement(q.Encode()); err != nil {
		t.Fatal(err)
	}
	if q.Version != 6 || !q.HandedOver || q.Lineage() != 5 || q.Start != 300 || !slices.Equal(q.From, p.From) || !slices.Equal(q.Down, []int{1}) || q.LiveShards() != 3 {
		t.Fatalf("handover: version %d, handed over %v, start %d, from %v, down %v", q.Version, q.HandedOver, q.Start, q.From, q.Down)
	}
	promoted := 0
	for i, b := range p.Blocks {
		nb := q.Blocks[i]
		want := append([]int{b.Shard}, b.Backups...)
		want = slices.DeleteFunc(want, func(s int) bool { return s == 1 })
		if got := append([]int{nb.Shard}, nb.Backups...); !slices.Equal(got, want) {
			t.Fatalf("block %d: copies %v after the handover, want %v (were %d %v)", b.ID, got, want, b.Shard, b.Backups)
		}
		if b.Shard == 1 {
			promoted++
		}
	}
	if promoted == 0 {
		t.Fatal("shard 1 was primary of nothing")
	}
	// p is unchanged.
	for _, b := range p.Blocks {
		if len(b.Backups) != 2 {
			t.Fatalf("the handover changed the placement it was made from: block %d backups %v", b.ID, b.Backups)
		}
	}
	r, err := q.Handover(3)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Down, []int{1, 3}) || r.Version != 7 || r.Lineage() != 5 {
		t.Fatalf("second handover: down %v, version %d", r.Down, r.Version)
	}
	if _, err := r.Handover(3); err == nil {
		t.Fatal("a shard already down handed over again")
	}
	alone := -1 // a shard left with the last copy of some block
	for i, b := range r.Blocks {
		want := slices.DeleteFunc(append([]int{p.Blocks[i].Shard}, p.Blocks[i].Backups...), func(s int) bool { return s == 1 || s == 3 })
		if got := append([]int{b.Shard}, b.Backups...); !slices.Equal(got, want) {
			t.Fatalf("block %d after shards 1 and 3 died: copies %v, want %v", b.ID, got, want)
		}
		if len(b.Backups) == 0 {
			alone = b.Shard
		}
	}
	if alone < 0 {
		t.Fatal("two deaths of 4 shards with 3 copies left every block two copies")
	}
	if _, err := r.Handover(alone); !errors.Is(err, ErrCopiesLost) {
		t.Fatalf("a block's last copy lost: %v, want ErrCopiesLost", err)
	}
	if _, err := Place(testTensors, 4, 2).Handover(0); !errors.Is(err, ErrCopiesLost) {
		t.Fatalf("a placement of one copy handed over: %v", err)
	}
	// A rollback places every shard afresh, with the job's copies.
	back, err := r.Reshard(4, 400, []string{"w", "x", "y", "z"})
	if err != nil {
		t.Fatal(err)
	}
	if back.HandedOver || len(back.Down) != 0 || back.Copies != 3 || back.Version != 8 {
		t.Fatalf("rollback after handovers: %+v", back)
	}
	if _, err := r.Reshard(2, 400, []string{"w", "x"}); err == nil {
		t.Fatal("3 copies placed on 2 shards")
	}
}

// A shard that comes back rejoins as the last copy of what it held in the
// lineage's first placement, being filled; until it is filled a handover
// does not promote it: where it is a block's only other copy, the block is
// lost. Once filled it is a copy like any other.
func TestPlacementRejoin(t *testing.T) {
	p := PlaceCopies(w2.Tensors(), 64<<10, 3, 2)
	q, err := p.Handover(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Rejoin(0); err == nil {
		t.Fatal("a live shard rejoined")
	}
	r, err := q.Rejoin(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodePlacement(r.Encode()); err != nil {
		t.Fatal(err)
	}
	if r.Version != q.Version+1 || r.Lineage() != p.Version || len(r.Down) != 0 || !slices.Equal(r.Filling, []int{1}) {
		t.Fatalf("rejoined: version %d, lineage %d, down %v, filling %v", r.Version, r.Lineage(), r.Down, r.Filling)
	}
	for i, b := range r.Blocks {
		held := p.Blocks[i].Shard == 1 || slices.Contains(p.Blocks[i].Backups, 1)
		want := append([]int{q.Blocks[i].Shard}, q.Blocks[i].Backups...)
		if held {
			want = append(want, 1)
		}
		if got := append([]int{b.Shard}, b.Backups...); !slices.Equal(got, want) {
			t.Fatalf("block %d after the rejoin: copies %v, want %v", b.ID, got, want)
		}
	}
	// Its blocks' other copy dies while it is being filled: the blocks
	// whose copies were that shard and it are lost.
	var other int = -1
	for _, b := range r.Blocks {
		if len(b.Backups) == 1 && b.Backups[0] == 1 {
			other = b.Shard
			break
		}
	}
	if other < 0 {
		t.Fatal("no block is on shard 1 and one other alone")
	}
	if _, err := r.Handover(other); !errors.Is(err, ErrCopiesLost) {
		t.Fatalf("the only filled copy died while the other was filling: %v, want ErrCopiesLost", err)
	}
	f, err := r.Filled(1)
	if err != nil {
		t.Fatal(err)
	}
	if f.Version != r.Version+1 || len(f.Filling) != 0 {
		t.Fatalf("filled: version %d, filling %v", f.Version, f.Filling)
	}
	// Filled, it is again the primary of the blocks it was the primary of.
	if _, err := DecodePlacement(f.Encode()); err != nil {
		t.Fatal(err)
	}
	for i, b := range f.Blocks {
		if p.Blocks[i].Shard == 1 && b.Shard != 1 || p.Blocks[i].Shard != 1 && b.Shard != r.Blocks[i].Shard {
			t.Fatalf("block %d: primary %d once shard 1 is filled (first %d, while filling %d)", b.ID, b.Shard, p.Blocks[i].Shard, r.Blocks[i].Shard)
		}
		base := append([]int{p.Blocks[i].Shard}, p.Blocks[i].Backups...)
		if got := append([]int{b.Shard}, b.Backups...); len(got) != 2 || slices.Contains(base, 1) != slices.Contains(got, 1) {
			t.Fatalf("block %d: copies %v once shard 1 is filled", b.ID, got)
		}
	}
	if _, err := f.Filled(1); err == nil {
		t.Fatal("a shard filled twice")
	}
	g, err := f.Handover(other)
	if err != nil {
		t.Fatalf("once filled, shard 1 takes over: %v", err)
	}
	for i, b := range g.Blocks {
		if f.Blocks[i].Shard == other && len(f.Blocks[i].Backups) > 0 && b.Shard != f.Blocks[i].Backups[0] {
			t.Fatalf("block %d: primary %d after the handover, want its first backup %d", b.ID, b.Shard, f.Blocks[i].Backups[0])
		}
	}
	// A shard being filled that dies is simply down again.
	h, err := r.Handover(1)
	if err != nil || !slices.Equal(h.Down, []int{1}) || len(h.Filling) != 0 {
		t.Fatalf("the filling shard died: down %v, filling %v, %v", h.Down, h.Filling, err)
	}
}
