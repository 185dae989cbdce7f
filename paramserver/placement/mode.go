package placement

// Consistency modes: how the shards apply the ranks' pushes.
const (
	Sync  = "sync"  // BSP: step t applied once every rank pushed it, summed in rank order
	SSP   = "ssp"   // stale synchronous: apply on arrival; a pull at clock c waits for the slowest rank to reach c - staleness
	Async = "async" // Downpour: apply on arrival; pulls never wait
)
