package wire

import "fmt"

// Headroom bounds what a push or pull message adds to its blocks' data
// (header fields, job name, msgpack framing), and PerBlock what each block adds
// (its map header, keys, id and bin header: 15 bytes, and up to 3 bytes of
// wider key headers that align its data; see fast.go). A message of blocks
// whose data adds up to at most maxPayload - Headroom - PerBlock*len(blocks)
// fits in maxPayload.
const (
	Headroom = 512
	PerBlock = 18
)

// FitBlock says whether a block of floats floats fits in a message of
// maxPayload bytes with its framing; if not, the error says the largest
// block that does.
func FitBlock(floats int, maxPayload int64) error {
	if most := (maxPayload - Headroom - PerBlock) / 4; int64(floats) > most {
		return fmt.Errorf("blocks of %d floats (%d bytes) do not fit in the NATS server's %d-byte messages (its max_payload): lower --block-size to at most %d floats, or raise max_payload",
			floats, 4*floats, maxPayload, most)
	}
	return nil
}

// Group cuts a list of blocks, given their data sizes in bytes, into
// messages of consecutive blocks that fit in maxPayload, and returns the
// end index of each message. The blocks may come in runs (run[i] is true
// where block i starts one; nil: every block starts one): a run that does
// not fit in the rest of a message starts the next one, so that a run that
// fits in one message is never cut across two; a longer run starts a
// message and fills as many as it needs. A block that alone does not fit
// is an error: the job's block size is too large for the server's
// max_payload.
func Group(sizes []int, run []bool, maxPayload int) ([]int, error) {
	budget := maxPayload - Headroom
	var ends []int
	used, count := 0, 0
	for i, s := range sizes {
		need := s + PerBlock
		if need > budget {
			return nil, fmt.Errorf("block of %d bytes does not fit in a %d-byte message: lower the block size", s, maxPayload)
		}
		if count > 0 && run != nil && run[i] {
			whole, blocks := 0, 0 // the run's bytes and blocks, up to what a message holds
			for j := i; j < len(sizes) && (j == i || !run[j]) && whole <= budget; j++ {
				whole += sizes[j] + PerBlock
				blocks++
			}
			if used+whole > budget || count+blocks > MaxBlocksPerMessage {
				ends = append(ends, i)
				used, count = 0, 0
			}
		}
		if used+need > budget || count == MaxBlocksPerMessage {
			ends = append(ends, i)
			used, count = 0, 0
		}
		used += need
		count++
	}
	if len(sizes) > 0 {
		ends = append(ends, len(sizes))
	}
	return ends, nil
}
