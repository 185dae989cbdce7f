package auth

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/downpour-ml/downpour/internal/metrics"
)

// ServerLog is a NATS server logger that writes to log and counts the
// refusals it reports (downpour_nats_refused_total, by kind:
// authentication, publish, subscribe): an unknown client, or a known one
// reaching beyond its permissions, shows in the log and in the metrics.
func ServerLog(log *slog.Logger) server.Logger { return serverLog{log} }

type serverLog struct{ log *slog.Logger }

// refusalKind says which refusal a server log line reports, if any.
func refusalKind(line string) string {
	switch {
	case strings.Contains(line, "authentication error"), strings.Contains(line, "Authorization Violation"):
		return "authentication"
	case strings.Contains(line, "Publish Violation"):
		return "publish"
	case strings.Contains(line, "Subscription Violation"):
		return "subscribe"
	}
	return ""
}

func (l serverLog) line(level slog.Level, format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	if k := refusalKind(msg); k != "" {
		metrics.NATSRefused.WithLabelValues(k).Inc()
		l.log.Warn("NATS refused a client", "kind", k, "server", msg)
		return
	}
	l.log.Log(context.Background(), level, "NATS server", "msg", msg)
}

func (l serverLog) Noticef(format string, v ...any) { l.line(slog.LevelDebug, format, v...) }
func (l serverLog) Warnf(format string, v ...any)   { l.line(slog.LevelWarn, format, v...) }
func (l serverLog) Fatalf(format string, v ...any)  { l.line(slog.LevelError, format, v...) }
func (l serverLog) Errorf(format string, v ...any)  { l.line(slog.LevelError, format, v...) }
func (l serverLog) Debugf(format string, v ...any)  { l.line(slog.LevelDebug, format, v...) }
func (l serverLog) Tracef(format string, v ...any)  { l.line(slog.LevelDebug, format, v...) }

// EtcdServerOptions are interceptors for an etcd server's gRPC service that
// log and count the requests it refuses (downpour_etcd_refused_total, by
// kind: authentication for a failed or missing login, permission for a
// key beyond the user's role), which etcd itself neither logs nor counts.
func EtcdServerOptions(log *slog.Logger) []grpc.ServerOption {
	seen := func(method string, ctx context.Context, err error) {
		k := etcdRefusalKind(err)
		if k == "" {
			return
		}
		metrics.EtcdRefused.WithLabelValues(k).Inc()
		from := ""
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			from = p.Addr.String()
		}
		log.Warn("etcd refused a client", "kind", k, "method", method, "from", from, "err", status.Convert(err).Message())
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			resp, err := h(ctx, req)
			seen(info.FullMethod, ctx, err)
			return resp, err
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			err := h(srv, ss)
			seen(info.FullMethod, ss.Context(), err)
			return err
		}),
	}
}

// etcdRefusalKind says which refusal an etcd server's answer is, if any.
func etcdRefusalKind(err error) string {
	if err == nil {
		return ""
	}
	st := status.Convert(err)
	switch {
	case st.Code() == codes.PermissionDenied:
		return "permission"
	case st.Message() == rpctypes.ErrorDesc(rpctypes.ErrGRPCAuthFailed), st.Message() == rpctypes.ErrorDesc(rpctypes.ErrGRPCUserEmpty):
		return "authentication"
	}
	return ""
}
