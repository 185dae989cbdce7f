package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors an etcd leader change causes are transient, however they arrive
// (typed, wrapped, or as a watch's cancel reason in a gRPC status); denials
// and cancellations are not.
func TestTransient(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{rpctypes.ErrNoLeader, true},
		{rpctypes.ErrLeaderChanged, true},
		{fmt.Errorf("reading: %w", rpctypes.ErrTimeoutDueToLeaderFail), true},
		{rpctypes.ErrGRPCLeaderChanged, true},
		{status.Error(codes.Unavailable, "etcdserver: no leader"), true},
		{rpctypes.ErrCompacted, true},
		{rpctypes.ErrPermissionDenied, false},
		{rpctypes.ErrInvalidAuthToken, false},
		{context.Canceled, false},
		{errors.New("etcd watch closed"), false},
	} {
		if got := Transient(c.err); got != c.want {
			t.Errorf("Transient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
