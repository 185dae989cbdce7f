//go:build !linux

package models

// releasePages is Linux's alone; elsewhere the caller clears b.
func releasePages[T Float](b []T) bool { return false }
