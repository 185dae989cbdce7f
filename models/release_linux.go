package models

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// releasePages gives the pages of b (page-aligned, whole pages) back to the
// kernel: MADV_DONTNEED on private anonymous memory (which the Go heap is)
// makes them read as zeros and take memory again only when written. It
// reports whether it did; b is unchanged when not.
func releasePages[T Float](b []T) bool {
	bytes := unsafe.Slice((*byte)(unsafe.Pointer(&b[0])), len(b)*int(unsafe.Sizeof(b[0])))
	return unix.Madvise(bytes, unix.MADV_DONTNEED) == nil
}
