package coordinator

import (
	"context"
	"errors"
	"fmt"

	"github.com/downpour-ml/downpour/internal/job/etcdstore"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ErrNotLeader is returned when a write is refused because this coordinator
// no longer leads its job (another one was elected while it was cut off or
// frozen).
var ErrNotLeader = errors.New("no longer the job's leader")

// Leadership is a coordinator's won election for a job: while it holds,
// every write of the coordinator is guarded by it, so a deposed leader
// changes nothing.
type Leadership struct {
	session  *concurrency.Session
	election *concurrency.Election
}

// Campaign blocks until this process (id) leads the coordination of job
// name, or ctx ends. Standby coordinators wait here; when the leader dies its
// session's lease (ttl seconds) runs out and the oldest standby wins.
func Campaign(ctx context.Context, cli *clientv3.Client, name, id string, ttl int) (*Leadership, error) {
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl))
	if err != nil {
		return nil, fmt.Errorf("starting an etcd session: %w", err)
	}
	e := concurrency.NewElection(s, etcdstore.KeysFor(name).Leader())
	if err := e.Campaign(ctx, id); err != nil {
		s.Close()
		return nil, fmt.Errorf("campaigning to lead job %s: %w", name, err)
	}
	return &Leadership{session: s, election: e}, nil
}

// Lost is closed when the leadership's session ends.
func (l *Leadership) Lost() <-chan struct{} { return l.session.Done() }

// Resign gives the leadership up (a standby takes over at once).
func (l *Leadership) Resign(ctx context.Context) {
	l.election.Resign(ctx)
	l.session.Close()
}

// guard is the comparison every write of the leader is made under.
func (l *Leadership) guard() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(l.election.Key()), "=", l.election.Rev())
}

// Leader returns the id of the job's current leader, or "" when none.
func Leader(ctx context.Context, cli *clientv3.Client, name string) (string, error) {
	r, err := cli.Get(ctx, etcdstore.KeysFor(name).Leader(), append(clientv3.WithFirstCreate(), clientv3.WithPrefix())...)
	if err != nil {
		return "", err
	}
	if len(r.Kvs) == 0 {
		return "", nil
	}
	return string(r.Kvs[0].Value), nil
}

// write commits ops if cmps hold and this coordinator still leads (when it
// was elected); it reports whether cmps held.
func write(ctx context.Context, cli *clientv3.Client, l *Leadership, cmps []clientv3.Cmp, ops ...clientv3.Op) (bool, error) {
	all := cmps
	if l != nil {
		all = append(append([]clientv3.Cmp(nil), cmps...), l.guard())
	}
	r, err := cli.Txn(ctx).If(all...).Then(ops...).Commit()
	if err != nil {
		return false, err
	}
	if r.Succeeded {
		return true, nil
	}
	if l != nil { // which comparison failed?
		g, err := cli.Txn(ctx).If(l.guard()).Commit()
		if err != nil {
			return false, err
		}
		if !g.Succeeded {
			return false, ErrNotLeader
		}
	}
	return false, nil
}
