package models

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// resident counts the pages of b in memory (mincore).
func resident(t *testing.T, b []float32) int {
	t.Helper()
	start := uintptr(unsafe.Pointer(&b[0]))
	lo := alignUp(start, pageSize)
	hi := (start + uintptr(len(b)*4)) &^ (pageSize - 1)
	mem := unsafe.Slice((*byte)(unsafe.Pointer(&b[(lo-start)/4])), hi-lo)
	vec := make([]byte, (hi-lo)/pageSize)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// Released pages leave memory, and only those written again come back:
// the gradient of a large table holds a step's rows, not the table.
func TestZeroReleaseGivesPagesBack(t *testing.T) {
	b := make([]float32, releaseMin/4*2)
	for i := range b {
		b[i] = 1
	}
	pages := resident(t, b)
	if pages < len(b)*4/int(pageSize)-2 {
		t.Fatalf("%d pages resident after writing %d bytes", pages, len(b)*4)
	}
	zeroRelease(b)
	if got := resident(t, b); got != 0 {
		t.Fatalf("%d of %d pages still resident after the release", got, pages)
	}
	written := 0
	for i := 0; i < len(b); i += len(b) / 10 {
		b[i] = 2
		written++
	}
	if got := resident(t, b); got > written {
		t.Fatalf("%d pages resident after writing %d elements", got, written)
	}

	// A model's table gradient after a step: the batch's rows' pages.
	cfg := bigVocab()
	m := NewSeq2Seq[float32](cfg)
	m.Init(1)
	bt := &SeqBatch{Size: 1, SrcLen: 3, TgtLen: 2, Src: []int32{7, 70000, 7}, TgtIn: []int32{1, 2}, TgtOut: []int32{2, 3}}
	for range 2 {
		m.Loss(bt, true)
		if got := resident(t, m.dSrcEmb); got > 4 {
			t.Fatalf("the source table's gradient holds %d pages for 2 rows", got)
		}
	}
}
