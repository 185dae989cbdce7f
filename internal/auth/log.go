package auth

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/nats-io/nats-server/v2/server"

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
