package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
)

// The agent's slog calls and the manager's logr calls write the same JSON
// line: time, level, msg, the key/values, and the error under "error".
func TestTheManagerAndTheAgentLogOneFormat(t *testing.T) {
	var agent, manager bytes.Buffer
	boom := errors.New("connection refused")
	New(&agent, slog.LevelInfo).Error("reading the Lease", "database", "db", ErrorKey, boom)
	Logr(&manager, slog.LevelInfo).WithName("database").Error(boom, "reading the Lease", "database", "db")
	for name, b := range map[string]*bytes.Buffer{"agent": &agent, "manager": &manager} {
		var line map[string]any
		if err := json.Unmarshal(b.Bytes(), &line); err != nil {
			t.Fatalf("%s: not one JSON line: %q", name, b.String())
		}
		if line["level"] != "ERROR" || line["msg"] != "reading the Lease" || line["database"] != "db" || line[ErrorKey] != "connection refused" || line["time"] == nil {
			t.Errorf("%s wrote %v", name, line)
		}
		if _, ok := line["err"]; ok {
			t.Errorf("%s: the error is under \"err\": %v", name, line)
		}
	}
}

// logr's V(1) is debug: dropped at info, written at debug.
func TestVerbosityFollowsTheLevel(t *testing.T) {
	var b bytes.Buffer
	Logr(&b, slog.LevelInfo).V(1).Info("detail")
	if b.Len() != 0 {
		t.Errorf("V(1) written at level info: %q", b.String())
	}
	Logr(&b, slog.LevelDebug).V(1).Info("detail")
	if b.Len() == 0 {
		t.Error("V(1) not written at level debug")
	}
}

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "WARN": slog.LevelWarn, "error": slog.LevelError} {
		if got, err := ParseLevel(in); err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseLevel("verbose"); err == nil {
		t.Error("ParseLevel accepted verbose")
	}
}
