package paramserver

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/wire"
)

// MaxWaitingPulls bounds the pulls a shard holds until its clock catches up;
// past it, pulls are refused with TooLarge rather than growing memory.
const MaxWaitingPulls = 1 << 14

// Service serves one shard's Core on NATS: pushes on
// wire.PushSubject(job, shard) and pulls on wire.PullSubject(job, shard). A
// pull that asks for a clock the shard has not reached is answered when it
// does.
type Service struct {
	nc    *nats.Conn
	job   string
	shard int
	log   *slog.Logger

	mu      sync.Mutex // guards core and waiting
	core    *Core
	waiting []waitingPull

	subs    []*nats.Subscription
	refused [wire.NumKinds]atomic.Int64
	applied atomic.Int64 // steps applied
}

type waitingPull struct {
	reply string
	req   *wire.PullRequest
}

// Serve subscribes shard's subjects and serves core until Close.
func Serve(nc *nats.Conn, job string, shard int, core *Core, log *slog.Logger) (*Service, error) {
	s := &Service{nc: nc, job: job, shard: shard, core: core, log: log}
	for subj, h := range map[string]nats.MsgHandler{
		wire.PushSubject(job, shard): s.onPush,
		wire.PullSubject(job, shard): s.onPull,
	} {
		sub, err := nc.Subscribe(subj, h)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("subscribing %s: %w", subj, err)
		}
		s.subs = append(s.subs, sub)
	}
	if err := nc.Flush(); err != nil {
		s.Close()
		return nil, fmt.Errorf("subscribing shard %d: %w", shard, err)
	}
	return s, nil
}

// Close stops serving. Pulls still waiting are dropped; their senders retry.
func (s *Service) Close() {
	for _, sub := range s.subs {
		sub.Unsubscribe()
	}
}

// Refused returns how many messages were refused, by kind.
func (s *Service) Refused() map[wire.Kind]int64 {
	m := map[wire.Kind]int64{}
	for k := range s.refused {
		if n := s.refused[k].Load(); n > 0 {
			m[wire.Kind(k)] = n
		}
	}
	return m
}

// Clock is the number of steps the shard has applied.
func (s *Service) Clock() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.core.Clock()
}

func (s *Service) count(err error) wire.Kind {
	k := wire.ErrKind(err)
	s.refused[k].Add(1)
	s.log.Warn("refused message", "shard", s.shard, "kind", k, "err", err)
	return k
}

func (s *Service) respond(reply string, m any) {
	if reply == "" {
		return
	}
	data, err := wire.Encode(m)
	if err == nil {
		err = s.nc.Publish(reply, data)
	}
	if err != nil {
		s.log.Warn("reply failed", "shard", s.shard, "err", err)
	}
}

func (s *Service) onPush(m *nats.Msg) {
	req, err := wire.DecodePush(m.Data)
	if err == nil && req.Job != s.job {
		err = &wire.Error{Kind: wire.UnknownJob, Msg: fmt.Sprintf("job %q is not served here", req.Job)}
	}
	if err != nil {
		s.respond(m.Reply, &wire.Reply{V: wire.Version, Kind: s.count(err), Msg: err.Error()})
		return
	}
	s.mu.Lock()
	applied, err := s.core.Push(req)
	clock := s.core.Clock()
	var ready [][]byte
	var readyTo []string
	if applied {
		s.applied.Add(1)
		keep := s.waiting[:0]
		for _, w := range s.waiting {
			if w.req.MinClock <= clock {
				ready = append(ready, s.encodePullLocked(w.req))
				readyTo = append(readyTo, w.reply)
			} else {
				keep = append(keep, w)
			}
		}
		clear(s.waiting[len(keep):])
		s.waiting = keep
	}
	s.mu.Unlock()
	r := &wire.Reply{V: wire.Version, Clock: clock}
	if err != nil {
		r.Kind, r.Msg = s.count(err), err.Error()
	}
	s.respond(m.Reply, r)
	for i, data := range ready {
		if err := s.nc.Publish(readyTo[i], data); err != nil {
			s.log.Warn("pull reply failed", "shard", s.shard, "err", err)
		}
	}
}

func (s *Service) onPull(m *nats.Msg) {
	req, err := wire.DecodePull(m.Data)
	if err == nil && req.Job != s.job {
		err = &wire.Error{Kind: wire.UnknownJob, Msg: fmt.Sprintf("job %q is not served here", req.Job)}
	}
	if err != nil {
		s.respond(m.Reply, &wire.PullReply{V: wire.Version, Kind: s.count(err), Msg: err.Error()})
		return
	}
	if m.Reply == "" {
		return
	}
	s.mu.Lock()
	var data []byte
	if s.core.Clock() >= req.MinClock {
		data = s.encodePullLocked(req)
	} else if len(s.waiting) < MaxWaitingPulls {
		s.waiting = append(s.waiting, waitingPull{reply: m.Reply, req: req})
	} else {
		err = &wire.Error{Kind: wire.TooLarge, Msg: fmt.Sprintf("%d pulls already waiting", len(s.waiting))}
	}
	s.mu.Unlock()
	if err != nil {
		s.respond(m.Reply, &wire.PullReply{V: wire.Version, Kind: s.count(err), Msg: err.Error()})
	} else if data != nil {
		if err := s.nc.Publish(m.Reply, data); err != nil {
			s.log.Warn("pull reply failed", "shard", s.shard, "err", err)
		}
	}
}

// encodePullLocked builds the reply to req from the current parameters. The
// caller holds s.mu: the blocks view live parameters until encoded.
func (s *Service) encodePullLocked(req *wire.PullRequest) []byte {
	r := &wire.PullReply{V: wire.Version, Clock: s.core.Clock()}
	blocks, err := s.core.Read(req.IDs)
	if err != nil {
		r.Kind, r.Msg = s.count(err), err.Error()
	} else {
		r.Blocks = blocks
	}
	data, err := wire.Encode(r)
	if err != nil {
		data, _ = wire.Encode(&wire.PullReply{V: wire.Version, Kind: wire.Internal, Msg: err.Error()})
	}
	return data
}
