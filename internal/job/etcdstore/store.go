package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/downpour-ml/downpour/internal/job"
	"github.com/downpour-ml/downpour/internal/metrics"
)

// Client is a connection to the etcd cluster that holds the jobs.
type Client struct {
	cli *clientv3.Client
}

// NewClient wraps an etcd client (see Connect and ConnectAs).
func NewClient(cli *clientv3.Client) *Client { return &Client{cli: cli} }

// Job is the store of job name.
func (c *Client) Job(name string) *Store { return New(c.cli, name) }

// Close closes the connection.
func (c *Client) Close() error { return c.cli.Close() }

// Jobs lists the names of the jobs the cluster holds, sorted.
func (c *Client) Jobs(ctx context.Context) ([]string, error) {
	s := New(c.cli, "")
	var names []string
	err := s.do(ctx, func(ctx context.Context) error {
		r, err := s.kv.Get(ctx, jobsRoot, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return err
		}
		names = names[:0]
		for _, kv := range r.Kvs {
			if n, ok := strings.CutSuffix(strings.TrimPrefix(string(kv.Key), jobsRoot), "/spec"); ok && !strings.Contains(n, "/") {
				names = append(names, n)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing jobs: %w", err)
	}
	slices.Sort(names) // "a-b/spec" comes before "a/spec" as keys
	return names, nil
}

// Store is a job's store in etcd (job.Store): its records under the keys
// of Keys. Every call retries transient failures (Transient: an election,
// a timed-out request, a lost connection) with backoff and jitter for up
// to Bound; a call that waits re-reads and watches again instead.
type Store struct {
	cli  *clientv3.Client
	kv   clientv3.KV // the client's; a test puts failures in front of it
	name string
	keys Keys
	// Bound is how long a call keeps retrying; default 2 minutes, longer
	// than any etcd election.
	Bound time.Duration
	// Attempt bounds one try of a call that does not wait; default 5 s.
	Attempt time.Duration
}

var _ job.Store = (*Store)(nil)

// New is the store of job name on cli.
func New(cli *clientv3.Client, name string) *Store {
	return &Store{cli: cli, kv: cli, name: name, keys: KeysFor(name), Bound: 2 * time.Minute, Attempt: 5 * time.Second}
}

// Name is the job's.
func (s *Store) Name() string { return s.name }

// retryable says whether a try that failed with err may be made again:
// etcd was electing, a member was lost, or the try ran out of its time.
func retryable(err error) bool {
	if Transient(err) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	st, ok := status.FromError(err)
	return ok && (st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded)
}

// do runs op until it succeeds, fails for good, ctx ends or the bound
// passes, each try within s.Attempt, waiting between tries with
// exponential backoff (50 ms doubling to 2 s) and full jitter.
func (s *Store) do(ctx context.Context, op func(ctx context.Context) error) error {
	deadline := time.Now().Add(s.Bound)
	wait := 50 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), s.Attempt)
		err := op(actx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !retryable(err) || time.Now().Add(wait).After(deadline) {
			return err
		}
		metrics.StoreRetries.Inc()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait/2 + rand.N(wait/2+1)):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// waitAgain runs a wait (a read and a watch) until it ends for good: a
// wait a transient failure ended is started afresh, which misses nothing,
// since each wait reads what it waits for before it watches.
func (s *Store) waitAgain(ctx context.Context, wait func() error) error {
	for {
		err := wait()
		if err == nil || ctx.Err() != nil || !Transient(err) {
			return err
		}
		metrics.StoreRetries.Inc()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// get reads key's value (nil: none) and the revision it was read at.
func (s *Store) get(ctx context.Context, key string) ([]byte, int64, error) {
	var val []byte
	var rev int64
	err := s.do(ctx, func(ctx context.Context) error {
		r, err := s.kv.Get(ctx, key)
		if err != nil {
			return err
		}
		val, rev = nil, r.Header.Revision
		if len(r.Kvs) > 0 {
			val = r.Kvs[0].Value
		}
		return nil
	})
	return val, rev, err
}

// put writes key (idempotent: a retry writes the same value).
func (s *Store) put(ctx context.Context, key, val string, opts ...clientv3.OpOption) error {
	return s.do(ctx, func(ctx context.Context) error {
		_, err := s.kv.Put(ctx, key, val, opts...)
		return err
	})
}

func putJSON(key string, v any) clientv3.Op {
	b, _ := json.Marshal(v)
	return clientv3.OpPut(key, string(b))
}

// Find waits, up to timeout, for the job's spec and placement.
func (s *Store) Find(ctx context.Context, timeout time.Duration) (*job.Spec, *job.Placement, error) {
	var specData, placeData []byte
	err := s.waitAgain(ctx, func() error {
		var err error
		specData, err = Wait(ctx, s.cli, s.keys.Spec(), timeout)
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("job %s not found (start its coordinator first): %w", s.name, err)
	}
	spec, err := job.DecodeSpec(specData)
	if err != nil {
		return nil, nil, err
	}
	err = s.waitAgain(ctx, func() error {
		var err error
		placeData, err = Wait(ctx, s.cli, s.keys.Placement(), timeout)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	p, err := job.DecodePlacement(placeData)
	if err != nil {
		return nil, nil, err
	}
	if spec.CorpusDigest != "" {
		var parts *clientv3.GetResponse
		err := s.do(ctx, func(ctx context.Context) error {
			var err error
			parts, err = s.kv.Get(ctx, s.keys.Corpus(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
			return err
		})
		if err != nil {
			return nil, nil, fmt.Errorf("reading job %s's corpus summary: %w", s.name, err)
		}
		var b []byte
		for _, kv := range parts.Kvs {
			b = append(b, kv.Value...)
		}
		if err := spec.AttachCorpus(b); err != nil {
			return nil, nil, err
		}
	}
	return spec, p, nil
}

// Placement is the job's current placement and the revision that wrote it.
func (s *Store) Placement(ctx context.Context) (*job.Placement, int64, error) {
	var kv *mvccpb.KeyValue
	err := s.do(ctx, func(ctx context.Context) error {
		r, err := s.kv.Get(ctx, s.keys.Placement())
		if err != nil {
			return err
		}
		kv = nil
		if len(r.Kvs) > 0 {
			kv = r.Kvs[0]
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("reading the placement: %w", err)
	}
	if kv == nil {
		return nil, 0, fmt.Errorf("job %s has no placement", s.name)
	}
	p, err := job.DecodePlacement(kv.Value)
	if err != nil {
		return nil, 0, err
	}
	return p, kv.ModRevision, nil
}

// NextPlacement waits for a placement newer than version (nil once the
// job is done). It watches the job's state and placement keys only.
func (s *Store) NextPlacement(ctx context.Context, version int64) (*job.Placement, int64, error) {
	var next *job.Placement
	var rev int64
	var bad error
	err := s.waitAgain(ctx, func() error {
		next, rev, bad = nil, 0, nil
		return WaitKeys(ctx, s.cli, []string{s.keys.State(), s.keys.Placement()}, 1<<62, func(kvs map[string]*mvccpb.KeyValue) bool {
			if kv := kvs[s.keys.State()]; kv != nil && string(kv.Value) == job.StateDone {
				return true
			}
			kv := kvs[s.keys.Placement()]
			if kv == nil {
				return false
			}
			p, err := job.DecodePlacement(kv.Value)
			if err != nil {
				bad = err
				return true
			}
			if p.Version > version {
				next, rev = p, kv.ModRevision
				return true
			}
			return false
		})
	})
	switch {
	case err == nil:
		return next, rev, bad
	case ctx.Err() != nil:
		return nil, 0, ctx.Err()
	default:
		return nil, 0, fmt.Errorf("watching job %s: %w", s.name, err)
	}
}

// Grant starts a lease of ttl seconds kept alive in the background.
func (s *Store) Grant(ctx context.Context, ttl int64) (job.Lease, error) {
	var l *Lease
	err := s.do(ctx, func(ctx context.Context) error {
		var err error
		l, err = Grant(ctx, s.cli, ttl)
		return err
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

// leaseID is the etcd lease of l, which must be this package's.
func leaseID(l job.Lease) clientv3.LeaseID { return l.(*Lease).ID }
