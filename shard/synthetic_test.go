package shard

import (
	"slices"
	"testing"

	"github.com/downpour-ml/downpour/models"
)

func example(b *models.SeqBatch, e int) (src, tgtIn, tgtOut []int32) {
	for t := 0; t < b.SrcLen; t++ {
		src = append(src, b.Src[t*b.Size+e])
	}
	for t := 0; t < b.TgtLen; t++ {
		tgtIn = append(tgtIn, b.TgtIn[t*b.Size+e])
		tgtOut = append(tgtOut, b.TgtOut[t*b.Size+e])
	}
	return
}

func TestSyntheticTasks(t *testing.T) {
	for _, name := range Tasks {
		task, err := NewSynthetic(name, 3, 6)
		if err != nil {
			t.Fatal(err)
		}
		b := task.Batch(1, 0, 0, 5)
		if err := b.Validate(models.Seq2SeqConfig{SrcVocab: SyntheticVocab, TgtVocab: SyntheticVocab, Embed: 1, Hidden: 1, Layers: 1}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b.SrcLen < 3 || b.SrcLen > 6 || b.TgtLen != b.SrcLen+1 {
			t.Fatalf("%s: lengths %d -> %d", name, b.SrcLen, b.TgtLen)
		}
		for e := 0; e < b.Size; e++ {
			src, in, out := example(b, e)
			want := slices.Clone(src)
			switch name {
			case "reverse":
				slices.Reverse(want)
			case "sort":
				slices.Sort(want)
			case "translate": // by hand: map each word, then swap neighbours
				for i := range want {
					want[i] = FirstSymbol + []int32{7, 2, 9, 0, 5, 3, 8, 1, 6, 4}[want[i]-FirstSymbol]
				}
				for i := 0; i+1 < len(want); i += 2 {
					want[i], want[i+1] = want[i+1], want[i]
				}
			}
			if !slices.Equal(out[:len(out)-1], want) || out[len(out)-1] != EOS {
				t.Fatalf("%s: source %v, labels %v", name, src, out)
			}
			if in[0] != Go || !slices.Equal(in[1:], out[:len(out)-1]) {
				t.Fatalf("%s: decoder input %v is not <go> + labels %v", name, in, out)
			}
		}
	}
}

func TestSyntheticDeterministicPerShardAndStep(t *testing.T) {
	task, _ := NewSynthetic("reverse", 2, 9)
	a, b := task.Batch(7, 1, 42, 8), task.Batch(7, 1, 42, 8)
	if !slices.Equal(a.Src, b.Src) || !slices.Equal(a.TgtOut, b.TgtOut) {
		t.Fatal("same (seed, shard, step) gave different batches")
	}
	for _, c := range []*models.SeqBatch{task.Batch(7, 2, 42, 8), task.Batch(7, 1, 43, 8), task.Batch(8, 1, 42, 8)} {
		if slices.Equal(a.Src, c.Src) {
			t.Fatal("a different shard, step or seed gave the same batch")
		}
	}
}

func TestNewSyntheticRejects(t *testing.T) {
	for _, c := range []struct {
		name     string
		min, max int
	}{{"nope", 1, 2}, {"copy", 0, 2}, {"copy", 5, 4}, {"copy", 1, 5000}} {
		if _, err := NewSynthetic(c.name, c.min, c.max); err == nil {
			t.Errorf("NewSynthetic(%q, %d, %d) accepted", c.name, c.min, c.max)
		}
	}
}
