package paramserver

import (
	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/wire"
)

// Pull offers a pull, identified by token. It reports whether the pull can be
// answered now (read the blocks with Read); otherwise the shard holds it and
// names it in a later Ready. A pull of a block the shard does not own, or
// of spans outside a block, is refused.
func (s *Shard) Pull(req *wire.PullRequest, token uint64) (bool, error) {
	if err := s.CheckPull(req); err != nil {
		return false, err
	}
	return s.offer(req, token), nil
}

// offer is Pull for a pull CheckPull let through.
func (s *Shard) offer(req *wire.PullRequest, token uint64) bool {
	if s.answerable(req) {
		return true
	}
	s.waiting = append(s.waiting, waiter{token: token, req: req, since: s.now})
	return false
}

// CheckPull says whether Pull would refuse req: a pull of a block the shard
// does not own, or of spans outside a block. Nothing in the shard changes
// that, so a pull it lets through is never refused later.
func (s *Shard) CheckPull(req *wire.PullRequest) error {
	if req.Spans != nil && len(req.Spans) != len(req.IDs) {
		return refuse(wire.Malformed, "%d span lists for %d block ids", len(req.Spans), len(req.IDs))
	}
	for k, id := range req.IDs {
		i, ok := s.pos[id]
		if !ok {
			return refuse(wire.UnknownBlock, "block %d is not on this shard", id)
		}
		if req.Spans != nil {
			if _, err := checkSpans(s.blocks[i], req.Spans[k], -1); err != nil {
				return err
			}
		}
	}
	return nil
}

// Waiting is the number of pulls held.
func (s *Shard) Waiting() int { return len(s.waiting) }

func (s *Shard) answerable(req *wire.PullRequest) bool {
	switch s.cfg.Mode {
	case job.Sync:
		for _, id := range req.IDs {
			if settled(s.blocks[s.pos[id]]) < req.MinClock { // on every copy (shard_repl.go)
				return false
			}
		}
		return true
	case job.SSP:
		c, bound := s.slowest()
		return !bound || c >= req.MinClock-s.cfg.Staleness
	}
	return true
}

// release moves the held pulls that can now be answered to the ready list.
func (s *Shard) release() {
	keep := s.waiting[:0]
	for _, w := range s.waiting {
		if s.ready1(w) {
			s.ready = append(s.ready, Answer{Token: w.token})
		} else {
			keep = append(keep, w)
		}
	}
	clear(s.waiting[len(keep):])
	s.waiting = keep
}

// Tick advances the shard's time by one tick: pulls held for PullTTL ticks
// are answered Expired, so that a sender who gave up leaves nothing behind.
func (s *Shard) Tick() {
	s.now++
	if s.version > 0 {
		s.resendStale()
	}
	if s.cfg.PullTTL == 0 {
		return
	}
	keep := s.waiting[:0]
	for _, w := range s.waiting {
		if s.now-w.since >= s.cfg.PullTTL {
			s.ready = append(s.ready, Answer{Token: w.token, Kind: wire.Expired})
		} else {
			keep = append(keep, w)
		}
	}
	clear(s.waiting[len(keep):])
	s.waiting = keep
}

// Ready returns the held pulls to answer now, and forgets them. Answer those
// with Kind OK from Read before the next call that changes the shard.
func (s *Shard) Ready() []Answer {
	r := s.ready
	s.ready = nil
	return r
}

// Read answers a pull that Pull or Ready let through: the parameters of the
// blocks it asks for, in order, as wire blocks viewing the shard's memory
// (encode them before the shard changes). A sync pull with Exact set gets
// each block's parameters at exactly MinClock steps, from the live block or
// its kept copy; it is refused with Gone when the block has moved past that
// step and keeps no copy of it.
func (s *Shard) Read(req *wire.PullRequest) ([]wire.Block, error) {
	exact := req.Exact && s.cfg.Mode == job.Sync
	if req.Spans != nil && len(req.Spans) != len(req.IDs) {
		return nil, refuse(wire.Malformed, "%d span lists for %d block ids", len(req.Spans), len(req.IDs))
	}
	out := make([]wire.Block, len(req.IDs))
	for k, id := range req.IDs {
		i, ok := s.pos[id]
		if !ok {
			return nil, refuse(wire.UnknownBlock, "block %d is not on this shard", id)
		}
		b := s.blocks[i]
		var spans []byte
		if req.Spans != nil {
			spans = req.Spans[k]
		}
		floats, err := checkSpans(b, spans, -1)
		if err != nil {
			return nil, err
		}
		w := b.w
		if exact && b.clock != req.MinClock {
			if b.keptAt != req.MinClock {
				return nil, refuse(wire.Gone, "block %d is at step %d and keeps no copy of step %d", id, b.clock, req.MinClock)
			}
			w = b.kept
		}
		if spans == nil {
			out[k] = wire.Block{ID: id, Data: wire.FloatBytes(w)}
			continue
		}
		// A sparse read copies: its parts are not contiguous.
		data := make([]byte, 0, 4*floats)
		wire.EachSpan(spans, func(off, n int) { data = wire.AppendFloats(data, w[off:off+n]) })
		out[k] = wire.Block{ID: id, Data: data}
	}
	return out, nil
}
