package paramserver

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/downpour-ml/downpour/internal/job"

	"github.com/nats-io/nats.go"

	"github.com/downpour-ml/downpour/internal/wire"
)

// SupersededPlacements is how many of the placements before its own a
// shard answers (with Superseded).
const SupersededPlacements = 8

// MaxWaitingPulls bounds the pulls a shard holds until it can answer them;
// past it, pulls are refused with TooLarge rather than growing memory.
const MaxWaitingPulls = 1 << 14

// ServiceConfig places a shard on NATS and says where its snapshots go.
type ServiceConfig struct {
	Job   string
	Shard int
	// Placement is the version of the placement served: it names the
	// subjects and is recorded in snapshots; default 1.
	Placement int64
	Log       *slog.Logger
	// Tick is the period of the shard's clock (held pulls expire after
	// job.ShardConfig.PullTTL ticks); default 100ms.
	Tick time.Duration
	// Ticks, when set, is the shard's clock instead of a ticker of period
	// Tick: the shard ticks once for each value received (a test drives
	// time so).
	Ticks <-chan time.Time
	// SnapshotDir receives the shard's snapshots, one file per snapshot:
	// SnapshotFile(placement, shard, step). Empty: snapshots are refused.
	SnapshotDir string
	// SnapshotEvery (sync mode): snapshot at every multiple of this many
	// steps; 0 for only when asked on the snapshot subject.
	SnapshotEvery int64
	// OnSnapshot, when set, is called (from the writer goroutine) after a
	// snapshot has been written and synced.
	OnSnapshot func(path string, s *Snapshot)
	// Observer, when set, is told of the service's traffic, for metrics.
	Observer Observer
}

// Observer is told of a shard's traffic as it happens, for metrics. Its
// methods are called on the message path and must return at once.
type Observer interface {
	// Refused: a message refused with kind.
	Refused(kind wire.Kind)
	// Pushed: a push accepted from a rank lag steps behind the fastest
	// active rank (ssp and async; always 0 in sync mode).
	Pushed(lag int64)
	// SnapshotWritten: a snapshot of size bytes took d to write and sync.
	SnapshotWritten(d time.Duration, bytes int64)
}

// Service serves one Shard on NATS: pushes on wire.PushSubject, pulls on
// wire.PullSubject, snapshot requests on wire.SnapshotSubject. It is the
// shard's only IO: it owns the ticker, the reply subjects of held pulls and
// the snapshot files.
type Service struct {
	nc  *nats.Conn
	cfg ServiceConfig

	mu        sync.Mutex // guards shard, held, nextToken, closed
	shard     *Shard
	lens      map[uint32]int // the lengths of the blocks it serves pushes of, fixed at Serve
	held      map[uint64]heldPull
	nextToken uint64
	closed    bool

	subs    []*nats.Subscription
	stop    chan struct{}
	snapsCh chan *Snapshot
	wg      sync.WaitGroup
	refused [wire.NumKinds]atomic.Int64
	written atomic.Int64 // snapshots written
}

// heldPull is a pull held until the shard can answer it, or a push held
// until its updates are on every copy (push: answered with a wire.Reply),
// or a push that pulls, held for both.
type heldPull struct {
	reply string
	req   *wire.PullRequest
	push  bool
	clock int64 // a held push's answer
}

// outbox collects replies built under the lock, to send after it. Pooled
// buffers go back to the pool once sent.
type outbox struct {
	subjects []string
	data     [][]byte
	pooled   []*[]byte
}

func (o *outbox) add(subject string, data []byte) {
	o.subjects = append(o.subjects, subject)
	o.data = append(o.data, data)
}

// Serve subscribes the shard's subjects and serves shard until Close.
func Serve(nc *nats.Conn, shard *Shard, cfg ServiceConfig) (*Service, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Tick == 0 {
		cfg.Tick = 100 * time.Millisecond
	}
	if cfg.Placement == 0 {
		cfg.Placement = 1
	}
	s := &Service{nc: nc, cfg: cfg, shard: shard, held: map[uint64]heldPull{}, stop: make(chan struct{}),
		snapsCh: make(chan *Snapshot, 4), lens: map[uint32]int{}}
	for _, b := range shard.blocks {
		s.lens[b.ID] = b.Len
	}
	// Replication messages fit the server's max_payload, with room for
	// their envelope.
	payload := nc.MaxPayload()
	shard.SetReplicationLimit(int(min(int64(job.RunBytes), payload-min(64<<10, payload/4))))
	if cfg.SnapshotEvery > 0 {
		if cfg.SnapshotDir == "" {
			return nil, fmt.Errorf("shard %d: periodic snapshots need a snapshot directory", cfg.Shard)
		}
		if shard.cfg.Mode == job.Sync {
			// (A shard served again after a handover may have one pending.)
			next := (shard.Clock()/cfg.SnapshotEvery + 1) * cfg.SnapshotEvery
			if err := shard.RequestSnapshot(next); err != nil && !errors.Is(err, ErrSnapshotPending) {
				return nil, err
			}
		}
	}
	subjects := map[string]nats.MsgHandler{
		wire.PushSubject(cfg.Job, cfg.Placement, cfg.Shard):     s.onPush,
		wire.PullSubject(cfg.Job, cfg.Placement, cfg.Shard):     s.onPull,
		wire.SnapshotSubject(cfg.Job, cfg.Placement, cfg.Shard): s.onSnapshot,
	}
	if v := shard.Version(); v > 0 {
		if v != cfg.Placement {
			return nil, fmt.Errorf("shard %d follows the chains of placement %d, not %d", cfg.Shard, v, cfg.Placement)
		}
		subjects[wire.ReplSubject(cfg.Job, cfg.Placement, cfg.Shard)] = s.onRepl
	}
	for subj, h := range subjects {
		sub, err := nc.Subscribe(subj, h)
		if err != nil {
			s.unsubscribe()
			return nil, fmt.Errorf("subscribing %s: %w", subj, err)
		}
		s.subs = append(s.subs, sub)
	}
	// Pushes and pulls still addressed to this shard under the placements
	// this one replaced come from zombies (a worker fenced off but not yet
	// aware of it) or from workers that have not seen the new placement:
	// they are refused as Superseded, and counted, rather than met with
	// silence.
	for v := max(1, cfg.Placement-SupersededPlacements); v < cfg.Placement; v++ {
		for subj, pull := range map[string]bool{wire.PushSubject(cfg.Job, v, cfg.Shard): false, wire.PullSubject(cfg.Job, v, cfg.Shard): true} {
			sub, err := nc.Subscribe(subj, func(m *nats.Msg) {
				var o outbox
				s.refusal(m.Reply, &o, &wire.Error{Kind: wire.Superseded, Msg: fmt.Sprintf("placement %d is superseded by placement %d", v, cfg.Placement)}, pull)
				s.send(&o)
			})
			if err != nil {
				s.unsubscribe()
				return nil, fmt.Errorf("subscribing %s: %w", subj, err)
			}
			s.subs = append(s.subs, sub)
		}
	}
	if err := nc.Flush(); err != nil {
		s.unsubscribe()
		return nil, fmt.Errorf("subscribing shard %d: %w", cfg.Shard, err)
	}
	s.wg.Add(2)
	go s.ticker()
	go s.writer()
	return s, nil
}

func (s *Service) unsubscribe() {
	for _, sub := range s.subs {
		sub.Unsubscribe()
	}
}

// Close stops serving and waits until every snapshot taken has been
// written. Held pulls are dropped; their senders resend elsewhere.
func (s *Service) Close() {
	s.unsubscribe()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	s.wg.Wait()
}

// Idle marks rank r idle under epoch (see Shard.Idle): its holder was
// given up on.
func (s *Service) Idle(r int, epoch uint64) error {
	var o outbox
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("paramserver: the service is closed")
	}
	err := s.shard.Idle(r, epoch)
	s.drainLocked(&o)
	s.mu.Unlock()
	s.send(&o)
	return err
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

// Clock is the shard's clock (see Shard.Clock).
func (s *Service) Clock() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shard.Clock()
}

// Filled reports whether the shard holds every block's state (see
// Shard.Empty: a shard that rejoins its chains is filled from the others).
func (s *Service) Filled() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shard.Filled()
}

// Stats returns the shard's counts.
func (s *Service) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shard.Stats()
}

// SnapshotsWritten is the number of snapshot files written.
func (s *Service) SnapshotsWritten() int64 { return s.written.Load() }

func (s *Service) count(err error) wire.Kind {
	k := wire.ErrKind(err)
	s.refused[k].Add(1)
	if s.cfg.Observer != nil {
		s.cfg.Observer.Refused(k)
	}
	s.cfg.Log.Warn("refused message", "shard", s.cfg.Shard, "kind", k, "err", err)
	return k
}

func (s *Service) send(o *outbox) {
	for i, subj := range o.subjects {
		if err := s.nc.Publish(subj, o.data[i]); err != nil {
			s.cfg.Log.Warn("reply failed", "shard", s.cfg.Shard, "err", err)
		}
	}
	for _, b := range o.pooled {
		putBuf(b)
	}
}

func encode(m any) []byte {
	data, err := wire.Encode(m)
	if err != nil {
		data, _ = wire.Encode(&wire.Reply{V: wire.Version, Kind: wire.Internal, Msg: err.Error()})
	}
	return data
}

func (s *Service) refusal(reply string, o *outbox, err error, pull bool) {
	k := s.count(err)
	if reply == "" {
		return
	}
	if pull {
		o.add(reply, encode(&wire.PullReply{V: wire.Version, Kind: k, Msg: err.Error()}))
	} else {
		o.add(reply, encode(&wire.Reply{V: wire.Version, Kind: k, Msg: err.Error()}))
	}
}

func (s *Service) checkJob(job string) error {
	if job != s.cfg.Job {
		return &wire.Error{Kind: wire.UnknownJob, Msg: fmt.Sprintf("job %q is not served here", job)}
	}
	return nil
}

func (s *Service) onPush(m *nats.Msg) {
	var o outbox
	defer s.send(&o)
	var req *wire.PushRequest
	var err error
	if env := m.Header.Get(wire.EnvelopeHeader); env != "" {
		req, err = wire.DecodeSplitPush(env, m.Data, s.blockLen)
	} else {
		req, err = wire.DecodePush(m.Data)
	}
	if err == nil {
		err = s.checkJob(req.Job)
	}
	if err != nil {
		s.refusal(m.Reply, &o, err, false)
		return
	}
	s.mu.Lock()
	if s.closed { // a handler that was on its way when the service closed: the shard may be another's now
		s.mu.Unlock()
		return
	}
	var then *wire.PullRequest
	if req.Pull && m.Reply != "" {
		// Whatever would refuse the pull refuses the push with it, before
		// the push changes anything: an answer is all or nothing.
		then = req.ThenPull()
		err = s.canHoldLocked(then)
	}
	if err == nil {
		err = s.shard.Push(req)
	}
	clock := s.shard.Clock()
	var lag int64
	if err == nil && s.cfg.Observer != nil {
		lag = s.shard.Lag(int(req.Rank))
	}
	s.drainLocked(&o)
	held := false
	if err == nil && m.Reply != "" && (then != nil || s.shard.Version() > 0) {
		// The push's answer is its pull's (after the pulls this push
		// completed), or, where the shard keeps copies, waits until what
		// it made is on every copy: answered now or held like a pull.
		// (Checked above: taking the push and answering pulls only frees
		// room.)
		held = true
		s.nextToken++
		if s.shard.HoldPush(req, then, s.nextToken) {
			if then != nil {
				o.add(m.Reply, s.readLocked(then, &o))
			} else {
				held = false
			}
		} else {
			s.held[s.nextToken] = heldPull{reply: m.Reply, req: then, push: then == nil, clock: clock}
		}
	}
	s.drainLocked(&o)
	s.mu.Unlock()
	if err != nil {
		s.refusal(m.Reply, &o, err, req.Pull)
		return
	}
	if s.cfg.Observer != nil {
		s.cfg.Observer.Pushed(lag)
	}
	if m.Reply != "" && !held {
		o.add(m.Reply, encode(&wire.Reply{V: wire.Version, Clock: clock}))
	}
}

// blockLen is the length of a block the service serves pushes of. (The
// shard's own lookup may change under a handover, while a message is
// decoded outside the lock.)
func (s *Service) blockLen(id uint32) (int, bool) {
	n, ok := s.lens[id]
	return n, ok
}

// onRepl takes a replication message from another copy of some of the
// shard's blocks (see Shard.Replicate); a refusal is counted, and its
// sender sends again.
func (s *Service) onRepl(m *nats.Msg) {
	var o outbox
	defer s.send(&o)
	req, err := wire.DecodeRepl(m.Data)
	if err == nil {
		err = s.checkJob(req.Job)
	}
	if err == nil {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		err = s.shard.Replicate(req)
		s.drainLocked(&o)
		s.mu.Unlock()
	}
	if err != nil {
		s.count(err)
	}
}

func (s *Service) onPull(m *nats.Msg) {
	var o outbox
	defer s.send(&o)
	req, err := wire.DecodePull(m.Data)
	if err == nil {
		err = s.checkJob(req.Job)
	}
	if err != nil || m.Reply == "" {
		if err != nil {
			s.refusal(m.Reply, &o, err, true)
		}
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.pullLocked(m.Reply, req, &o)
}

// canHoldLocked says why pullLocked would refuse req, if it would.
func (s *Service) canHoldLocked(req *wire.PullRequest) error {
	if len(s.held) >= MaxWaitingPulls {
		return &wire.Error{Kind: wire.TooLarge, Msg: fmt.Sprintf("%d pulls already held", len(s.held))}
	}
	return s.shard.CheckPull(req)
}

// pullLocked answers req on reply now, or holds it until the shard can, or
// refuses it.
func (s *Service) pullLocked(reply string, req *wire.PullRequest, o *outbox) {
	if err := s.canHoldLocked(req); err != nil {
		s.refusal(reply, o, err, true)
		return
	}
	s.holdLocked(reply, req, o)
}

// holdLocked answers req, which canHoldLocked let through, on reply now,
// or holds it until the shard can.
func (s *Service) holdLocked(reply string, req *wire.PullRequest, o *outbox) {
	s.nextToken++
	if s.shard.offer(req, s.nextToken) {
		o.add(reply, s.readLocked(req, o))
	} else {
		s.held[s.nextToken] = heldPull{reply: reply, req: req}
	}
}

func (s *Service) onSnapshot(m *nats.Msg) {
	var o outbox
	defer s.send(&o)
	req, err := wire.DecodeSnapshotRequest(m.Data)
	if err == nil {
		err = s.checkJob(req.Job)
	}
	if err == nil && s.cfg.SnapshotDir == "" {
		err = &wire.Error{Kind: wire.Refused, Msg: "this shard has no snapshot directory"}
	}
	if err == nil {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		if err = s.shard.RequestSnapshot(req.Step); err != nil {
			err = &wire.Error{Kind: wire.Refused, Msg: err.Error()}
		}
		s.drainLocked(&o)
		s.mu.Unlock()
	}
	if err != nil {
		s.refusal(m.Reply, &o, err, false)
	} else if m.Reply != "" {
		o.add(m.Reply, encode(&wire.Reply{V: wire.Version, Clock: req.Step}))
	}
}

// drainLocked turns the shard's outputs into replies and snapshot writes.
func (s *Service) drainLocked(o *outbox) {
	for _, a := range s.shard.Ready() {
		h, ok := s.held[a.Token]
		if !ok {
			continue
		}
		delete(s.held, a.Token)
		switch {
		case h.push && a.Kind == wire.OK:
			o.add(h.reply, encode(&wire.Reply{V: wire.Version, Clock: h.clock}))
		case h.push:
			o.add(h.reply, encode(&wire.Reply{V: wire.Version, Kind: a.Kind, Msg: "held too long; resend"}))
		case a.Kind == wire.OK:
			o.add(h.reply, s.readLocked(h.req, o))
		default:
			o.add(h.reply, encode(&wire.PullReply{V: wire.Version, Kind: a.Kind, Msg: "held too long; resend"}))
		}
	}
	for _, out := range s.shard.Outgoing() {
		out.Msg.V, out.Msg.Job = wire.Version, s.cfg.Job
		o.add(wire.ReplSubject(s.cfg.Job, s.cfg.Placement, out.To), encode(out.Msg))
	}
	for _, snap := range s.shard.Snapshots() {
		if s.closed {
			break // the writer may be gone
		}
		snap.Job, snap.Shard, snap.Placement = s.cfg.Job, s.cfg.Shard, s.cfg.Placement
		s.snapsCh <- snap // the writer drains it; at most a few are ever queued
		if s.cfg.SnapshotEvery > 0 && s.shard.cfg.Mode == job.Sync {
			if err := s.shard.RequestSnapshot(snap.Step + s.cfg.SnapshotEvery); err != nil {
				s.cfg.Log.Error("scheduling the next snapshot", "shard", s.cfg.Shard, "err", err)
			}
		}
	}
}

// readLocked encodes the reply to a pull (from the live parameters, or an
// exact pull's kept copy) into a pooled buffer that o returns to the pool
// once sent.
func (s *Service) readLocked(req *wire.PullRequest, o *outbox) []byte {
	r := &wire.PullReply{V: wire.Version, Clock: s.shard.Clock()}
	blocks, err := s.shard.Read(req)
	if err != nil {
		r.Kind, r.Msg = s.count(err), err.Error()
	} else {
		r.Blocks = blocks
	}
	buf := getBuf()
	*buf = wire.AppendPullReply((*buf)[:0], r)
	o.pooled = append(o.pooled, buf)
	return *buf
}

func (s *Service) ticker() {
	defer s.wg.Done()
	ticks := s.cfg.Ticks
	if ticks == nil {
		t := time.NewTicker(s.cfg.Tick)
		defer t.Stop()
		ticks = t.C
	}
	for {
		select {
		case <-s.stop:
			return
		case <-ticks:
			var o outbox
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				return
			}
			s.shard.Tick()
			s.drainLocked(&o)
			s.mu.Unlock()
			s.send(&o)
		}
	}
}

// writer writes snapshots to files, in the order they were taken.
func (s *Service) writer() {
	defer s.wg.Done()
	for {
		select {
		case snap := <-s.snapsCh:
			s.write(snap)
		case <-s.stop:
			for {
				select {
				case snap := <-s.snapsCh:
					s.write(snap)
				default:
					return
				}
			}
		}
	}
}

func (s *Service) write(snap *Snapshot) {
	path := filepath.Join(s.cfg.SnapshotDir, SnapshotFile(snap.Placement, snap.Shard, snap.Step))
	start := time.Now()
	if err := WriteSnapshot(path, snap); err != nil {
		s.cfg.Log.Error("writing snapshot", "shard", s.cfg.Shard, "step", snap.Step, "err", err)
		return
	}
	took := time.Since(start)
	s.written.Add(1)
	s.cfg.Log.Info("snapshot written", "shard", s.cfg.Shard, "step", snap.Step, "path", path, "took", took)
	if s.cfg.Observer != nil {
		var size int64
		if st, err := os.Stat(path); err == nil {
			size = st.Size()
		}
		s.cfg.Observer.SnapshotWritten(took, size)
	}
	if s.cfg.OnSnapshot != nil {
		s.cfg.OnSnapshot(path, snap)
	}
}
