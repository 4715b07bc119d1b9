package instance

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/testenv"
)

func writeUserConfig(t *testing.T, dir string, c agentapi.UserConfig) string {
	t.Helper()
	b, h, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(dir, agentapi.UserConfigFile+".tmp"), string(b))
	// Atomically, as the kubelet swaps a ConfigMap volume's files.
	if err := os.Rename(filepath.Join(dir, agentapi.UserConfigFile+".tmp"), filepath.Join(dir, agentapi.UserConfigFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestUserConfigValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  agentapi.UserConfig
		want string
	}{
		{"ordinary settings", agentapi.UserConfig{Parameters: map[string]string{"work_mem": "64MB", "pg_stat_statements.max": "1000"},
			PgHBA: []string{"hostssl mydb app 10.0.0.0/8 scram-sha-256"}, SharedPreloadLibraries: []string{"pg_stat_statements"}}, ""},
		{"a managed setting", agentapi.UserConfig{Parameters: map[string]string{"wal_level": "minimal"}}, "managed by the operator"},
		{"a name that is no setting", agentapi.UserConfig{Parameters: map[string]string{"Work-Mem": "1"}}, "not a setting name"},
		{"a value over two lines", agentapi.UserConfig{Parameters: map[string]string{"work_mem": "1MB\nport = 1"}}, "line break"},
		{"an hba line of no type", agentapi.UserConfig{PgHBA: []string{"all all 0.0.0.0/0 trust"}}, "not one local/host"},
		{"an hba line for the superuser", agentapi.UserConfig{PgHBA: []string{"host all postgres 0.0.0.0/0 trust"}}, "reserves"},
		{"an hba line for the replication role", agentapi.UserConfig{PgHBA: []string{"host replication " + agentapi.ReplicationUser + " 0.0.0.0/0 trust"}}, "reserves"},
		{"a library path", agentapi.UserConfig{SharedPreloadLibraries: []string{"/tmp/evil.so"}}, "not a library name"},
	} {
		err := c.cfg.Validate()
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: Validate() = %v, want %q", c.name, err, c.want)
		}
	}
}

// spec.postgresql on a real server: settings at start, a reloadable change by a
// reload (no restart), a change that needs a restart reported as pending, an
// invalid value reported (and not applied), a refused file ignored with its
// reason, and pg_hba lines matched before the operator's final rule.
func TestUserConfigIsAppliedByReloadAndReportsPendingRestarts(t *testing.T) {
	root := testRoot(t)
	s := newSecrets(t, root)
	ctx := context.Background()
	port := testenv.FreePort(t)
	confDir := filepath.Join(root, "config")
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	h1 := writeUserConfig(t, confDir, agentapi.UserConfig{Parameters: map[string]string{"work_mem": "12MB", "log_line_prefix": "it's %m "}})

	cfg := testConfig(s, "primary", "db-0", port, port)
	cfg.ConfigDir = confDir
	if err := os.MkdirAll(filepath.Join(root, "primary"), 0o755); err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	ti := &testInstance{t: t, agent: NewAgent(cfg), cancel: cancel, done: make(chan error, 1), cfg: cfg}
	go func() { ti.done <- ti.agent.Run(actx) }()
	t.Cleanup(func() { _ = ti.stop() })
	waitForAppLogin(t, port, s.appPassword)

	show := func(name string) string {
		t.Helper()
		c, err := ti.agent.connect(ctx, "postgres")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		var v string
		if err := c.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	started := show("work_mem") // forces a connection
	_ = started
	startTime := func() string {
		c, err := ti.agent.connect(ctx, "postgres")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		var v time.Time
		if err := c.QueryRow(ctx, "SELECT pg_postmaster_start_time()").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v.String()
	}
	t.Run("the settings are in effect from the start", func(t *testing.T) {
		if got := show("work_mem"); got != "12MB" {
			t.Errorf("work_mem = %s", got)
		}
		if got := show("log_line_prefix"); got != "it's %m " {
			t.Errorf("log_line_prefix = %q", got)
		}
		if st := ti.mustStatus(t, s.token); st.ConfigHash != h1 || len(st.PendingRestart) != 0 || st.ConfigError != "" {
			t.Errorf("status: hash %q (want %q), pending %v, error %q", st.ConfigHash, h1, st.PendingRestart, st.ConfigError)
		}
	})
	before := startTime()

	t.Run("a reloadable change is applied by a reload, without a restart", func(t *testing.T) {
		h2 := writeUserConfig(t, confDir, agentapi.UserConfig{Parameters: map[string]string{"work_mem": "24MB"}})
		waitUntil(t, 20*time.Second, "work_mem 24MB", func() error {
			if got := show("work_mem"); got != "24MB" {
				return fmt.Errorf("work_mem %s", got)
			}
			if st := ti.mustStatus(t, s.token); st.ConfigHash != h2 {
				return fmt.Errorf("hash %s", st.ConfigHash)
			}
			return nil
		})
		if got := startTime(); got != before {
			t.Errorf("PostgreSQL restarted (%s → %s)", before, got)
		}
	})

	t.Run("a change that needs a restart is reported as pending", func(t *testing.T) {
		writeUserConfig(t, confDir, agentapi.UserConfig{Parameters: map[string]string{"work_mem": "24MB", "max_connections": "77"}})
		waitUntil(t, 20*time.Second, "max_connections pending a restart", func() error {
			if st := ti.mustStatus(t, s.token); !slices.Contains(st.PendingRestart, "max_connections") {
				return fmt.Errorf("pending %v", st.PendingRestart)
			}
			return nil
		})
		if got := show("max_connections"); got == "77" {
			t.Error("max_connections changed without a restart")
		}
		if st := ti.mustStatus(t, s.token); len(st.ConfigErrors) != 0 {
			t.Errorf("a setting waiting for a restart reported as an error: %v", st.ConfigErrors)
		}
	})

	t.Run("an invalid value is reported and not applied", func(t *testing.T) {
		writeUserConfig(t, confDir, agentapi.UserConfig{Parameters: map[string]string{"work_mem": "lots"}})
		waitUntil(t, 20*time.Second, "the invalid value reported", func() error {
			st := ti.mustStatus(t, s.token)
			if !slices.ContainsFunc(st.ConfigErrors, func(e string) bool { return strings.Contains(e, "work_mem") }) {
				return fmt.Errorf("config errors %v", st.ConfigErrors)
			}
			return nil
		})
		if got := show("work_mem"); got != "24MB" {
			t.Errorf("work_mem = %s after an invalid value, want the previous 24MB", got)
		}
	})

	t.Run("a file the agent refuses is not applied and the reason is reported", func(t *testing.T) {
		b, _ := json.Marshal(agentapi.UserConfig{Parameters: map[string]string{"port": "1"}})
		writeTestFile(t, filepath.Join(confDir, agentapi.UserConfigFile), string(b))
		waitUntil(t, 20*time.Second, "the refusal reported", func() error {
			if st := ti.mustStatus(t, s.token); !strings.Contains(st.ConfigError, "port is managed by the operator") || st.ConfigHash != "" {
				return fmt.Errorf("config error %q, hash %q", st.ConfigError, st.ConfigHash)
			}
			return nil
		})
		if got := show("port"); got != fmt.Sprint(port) {
			t.Errorf("port = %s", got)
		}
	})

	t.Run("pg_hba lines come before the operator's final rule", func(t *testing.T) {
		writeUserConfig(t, confDir, agentapi.UserConfig{PgHBA: []string{"host all " + testAppUser + " 127.0.0.1/32 reject"}})
		waitUntil(t, 20*time.Second, "the application role refused", func() error {
			c, err := appConn(ctx, port, s.appPassword, testAppDB)
			if err == nil {
				c.Close(ctx)
				return fmt.Errorf("the application role still logs in")
			}
			if !strings.Contains(err.Error(), "pg_hba.conf rejects") {
				return err
			}
			return nil
		})
		hba, err := os.ReadFile(filepath.Join(cfg.PGData, "pg_hba.conf"))
		if err != nil {
			t.Fatal(err)
		}
		text := string(hba)
		user, final := strings.Index(text, "reject\n# "), strings.LastIndex(text, "all          all                all      scram-sha-256")
		if i := strings.Index(text, "127.0.0.1/32 reject"); i < 0 || i > final || i < strings.Index(text, agentapi.MonitorUser+"  all      reject") || user < 0 {
			t.Errorf("the user's line is not between the operator's rules and its final rule:\n%s", text)
		}
		// The superuser over the socket is untouched.
		show("work_mem")
		writeUserConfig(t, confDir, agentapi.UserConfig{})
		waitForAppLogin(t, port, s.appPassword)
	})
}
