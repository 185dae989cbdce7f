// Package layers holds the test that keeps the project's layering: the
// table of layers in docs/design.md, checked against the packages'
// imports. It has no code of its own.
package layers
