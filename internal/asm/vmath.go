package main

// vmath emits the vector math of internal/vmath.
func vmath() {}
