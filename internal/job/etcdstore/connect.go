package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Connect opens an etcd client and checks, within timeout, that the cluster
// answers, so that a wrong endpoint is a clear error and not a hang.
func Connect(ctx context.Context, endpoints []string, timeout time.Duration) (*clientv3.Client, error) {
	return ConnectAs(ctx, endpoints, timeout, "", "", nil)
}

// ConnectAs is Connect, logged in as user (with etcd's authentication on;
// "" for none), over TLS as tc says (nil: plain; the endpoints are then
// http:// ones).
func ConnectAs(ctx context.Context, endpoints []string, timeout time.Duration, user, password string, tc *tls.Config) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: timeout, Logger: zap.NewNop(), Username: user, Password: password, TLS: tc})
	if errors.Is(err, rpctypes.ErrAuthNotEnabled) && user != "root" {
		// An etcd without authentication takes anyone: credentials made
		// for one that has it are not an error.
		cli, err = clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: timeout, Logger: zap.NewNop(), TLS: tc})
	}
	if errors.Is(err, rpctypes.ErrAuthFailed) || errors.Is(err, rpctypes.ErrUserEmpty) {
		return nil, fmt.Errorf("etcd at %s refused the login of %q (give the role's own credentials with --creds): %w", strings.Join(endpoints, ","), user, err)
	}
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %w", strings.Join(endpoints, ","), err)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A request every logged-in user may make, and that the cluster answers
	// only with a quorum: the list of alarms. (Reading a key instead would
	// be refused for most roles, and a refusal is what the servers log as a
	// sign of trouble.)
	if _, err := cli.AlarmList(cctx); err != nil {
		if errors.Is(err, rpctypes.ErrUserEmpty) {
			cli.Close()
			return nil, fmt.Errorf("etcd at %s requires a login (give the role's credentials with --creds): %w", strings.Join(endpoints, ","), err)
		}
		cli.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if herr := tlsProblem(endpoints, tc, timeout); herr != nil {
			return nil, fmt.Errorf("etcd at %s: %w", strings.Join(endpoints, ","), herr)
		}
		return nil, fmt.Errorf("etcd at %s did not answer within %v (is it running? check --etcd): %w", strings.Join(endpoints, ","), timeout, err)
	}
	return cli, nil
}

// tlsProblem says why a TLS handshake with the first https endpoint fails
// (an authority the client does not trust, a name the certificate lacks),
// which the etcd client reports only as a timeout; nil when it succeeds or
// the endpoints are not https ones.
func tlsProblem(endpoints []string, tc *tls.Config, timeout time.Duration) error {
	for _, e := range endpoints {
		u, err := url.Parse(e)
		if err != nil || u.Scheme != "https" {
			continue
		}
		if tc == nil {
			tc = &tls.Config{}
		}
		tc = tc.Clone()
		tc.ServerName = u.Hostname()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", u.Host, tc)
		if err != nil {
			var netErr net.Error
			if errors.As(err, &netErr) {
				return nil // unreachable, not a TLS problem
			}
			return fmt.Errorf("TLS handshake: %w (give the cluster's authority with --tls-ca)", err)
		}
		c.Close()
		return nil
	}
	return nil
}
