// Package logging is the one log format of the operator's manager, its
// instance agent and its Jobs: JSON lines on stderr with "time", "level" and
// "msg", then key/value pairs; the error of a failure goes under "error" as an
// error value (never pre-formatted into the message), and secrets never go in
// at all. The manager's logr calls (controller-runtime's and ours) go through
// the same handler.
package logging

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/go-logr/logr"
)

// ErrorKey is the key of the error of a failure. logr's Error(err, msg)
// writes "err"; the handler renames it, so that every component's errors are
// found under one key.
const ErrorKey = "error"

// Handler returns the JSON handler writing to w at level and above.
func Handler(w io.Writer, level slog.Leveler) slog.Handler {
	return slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == "err" {
			a.Key = ErrorKey
		}
		return a
	}})
}

// New returns a logger writing JSON lines to w at level and above.
func New(w io.Writer, level slog.Leveler) *slog.Logger { return slog.New(Handler(w, level)) }

// Logr returns the same handler as a logr.Logger (the manager's, for
// controller-runtime). logr's V(n) is slog level -n: V(1) is logged only at
// level debug.
func Logr(w io.Writer, level slog.Leveler) logr.Logger {
	return logr.FromSlogHandler(Handler(w, level))
}

// ParseLevel parses "debug", "info", "warn" or "error".
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}
