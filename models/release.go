package models

import (
	"os"
	"unsafe"
)

// zeroRelease sets b to zeros and, where b covers whole pages of memory,
// gives those pages back to the operating system instead of writing them
// (release_linux.go): they read as zeros and take memory again only once
// written. It is for large tensors of which a step writes a few rows (an
// embedding table's gradient, or its parameters where every step pulls
// the rows it reads): cleared the plain way every page stays resident,
// and over the steps every page is touched.
func zeroRelease[T Float](b []T) {
	if len(b) == 0 {
		return
	}
	size := int(unsafe.Sizeof(b[0]))
	start := uintptr(unsafe.Pointer(&b[0]))
	end := start + uintptr(len(b)*size)
	lo, hi := alignUp(start, pageSize), end&^(pageSize-1) // (a power of two)
	if hi <= lo || hi-lo < releaseMin {
		clear(b)
		return
	}
	// Whole elements before lo and from hi on are cleared by hand; the
	// pages between are released. A page boundary falls on an element's
	// boundary (the element's size divides the page size, and b is aligned
	// to it).
	head := int(lo-start) / size
	tail := int(hi-start) / size
	clear(b[:head])
	clear(b[tail:])
	if !releasePages(b[head:tail]) {
		clear(b[head:tail])
	}
}

// pageSize is the system's: the kernel rounds a release's length up to
// whole pages, so a smaller one would release memory past b.
var pageSize = uintptr(os.Getpagesize())

// releaseMin is the least span released: below it (every table of the
// W1 and W2 shapes) a plain clear is as cheap and no page faults follow.
const releaseMin = 64 << 20

func alignUp(p, a uintptr) uintptr { return (p + a - 1) &^ (a - 1) }
