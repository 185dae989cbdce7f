package job

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrFenced is returned by a member that is no longer one: its lease
// ended (a long freeze, a partition), and the coordinator has given up on
// it.
var ErrFenced = errors.New("fenced off")

// Member is a worker's or a shard's hold on its job: the job as found in
// its store, and the lease the membership is held under. Both roles live
// the same life: Join, claim a seat (a rank, a shard index), then one era
// per placement of the job (Eras) until the job is done.
type Member struct {
	Store     Store
	Spec      *Spec
	Placement *Placement // as found
	Lease     Lease
	stop      context.CancelCauseFunc
}

// Join finds the job in st (waiting up to wait for it to exist) and takes
// a lease of ttl seconds. The context it returns ends when the lease is
// lost, with ErrFenced as its cause: whatever the member is doing or
// waiting for then stops. Close ends both.
func Join(ctx context.Context, st Store, ttl int64, wait time.Duration) (*Member, context.Context, error) {
	spec, p, err := st.Find(ctx, wait)
	if err != nil {
		return nil, nil, err
	}
	lease, err := st.Grant(ctx, ttl)
	if err != nil {
		return nil, nil, err
	}
	fctx, stop := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-lease.Lost():
			stop(fmt.Errorf("%w: lost the etcd lease: this member is no longer one of the job", ErrFenced))
		case <-fctx.Done():
		}
	}()
	return &Member{Store: st, Spec: spec, Placement: p, Lease: lease, stop: stop}, fctx, nil
}

// Close ends the membership: the lease ends at once (what was written
// under it vanishes).
func (m *Member) Close() {
	m.stop(nil)
	m.Lease.Close()
}

// Fenced is err, or the fencing (ErrFenced) that ended ctx, if it did.
func Fenced(ctx context.Context, err error) error {
	if c := context.Cause(ctx); errors.Is(c, ErrFenced) {
		return c
	}
	return err
}

// An Era serves or trains under placement p (written at revision rev)
// until the job is re-placed (it returns the next placement and its
// revision), is done (nil), or the era fails.
type Era func(ctx context.Context, p *Placement, rev int64) (*Placement, int64, error)

// Eras runs era under p and then under each placement that replaces it,
// until an era returns no next placement (the job is done) or an error.
// between, when set, is called with each next placement before its era:
// an error from it (a seat lost) ends the member.
func Eras(ctx context.Context, p *Placement, rev int64, era Era, between func(next *Placement) error) error {
	for {
		next, nextRev, err := era(ctx, p, rev)
		if err != nil || next == nil {
			return err
		}
		if between != nil {
			if err := between(next); err != nil {
				return err
			}
		}
		p, rev = next, nextRev
	}
}
