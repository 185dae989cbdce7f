package memstore

import (
	"testing"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/job/storetest"
)

// The in-memory store keeps the store's contract.
func TestContract(t *testing.T) {
	c := New()
	storetest.Run(t, func(t *testing.T, name string) job.Store { return c.Job(name) })
}
