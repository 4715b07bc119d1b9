package instance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/example/postgres-operator/internal/postgres"
	"github.com/example/postgres-operator/internal/testenv"
)

// These tests run real PostgreSQL (Debian's, found like the agent finds it) on
// loopback ports: a primary bootstrapped by the agent and a standby cloned by it.

type testInstance struct {
	t      *testing.T
	agent  *Agent
	cancel context.CancelFunc
	done   chan error
	cfg    Config
}

type testSecrets struct {
	dir, credentials, internal string
	appPassword, token         string
}

// testRoot returns a directory the postgres OS user can enter (t.TempDir's parents
// are private to root).
func testRoot(t *testing.T) string {
	t.Helper()
	if _, err := postgres.FindBinaries(""); err != nil {
		t.Skipf("no PostgreSQL binaries: %v (hack/ensure-postgres.sh installs them)", err)
	}
	dir, err := os.MkdirTemp("", "agent-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newSecrets(t *testing.T, root string) testSecrets {
	t.Helper()
	s := testSecrets{dir: root, credentials: filepath.Join(root, "credentials"), internal: filepath.Join(root, "internal"),
		appPassword: "app-Pa55:word'x", token: "test-token-0123456789"}
	files := map[string]string{
		filepath.Join(s.credentials, CredentialsUsernameFile):      "appuser",
		filepath.Join(s.credentials, CredentialsPasswordFile):      s.appPassword,
		filepath.Join(s.credentials, CredentialsDatabaseFile):      "appdb",
		filepath.Join(s.internal, InternalReplicationPasswordFile): "repl-secret-42",
		filepath.Join(s.internal, InternalAgentTokenFile):          s.token + "\n",
	}
	for p, v := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func startInstance(t *testing.T, s testSecrets, name, pod string, port, primaryPort int) *testInstance {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(s.dir, name), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		PGData:          filepath.Join(s.dir, name, "data", "pgdata"),
		CredentialsDir:  s.credentials,
		InternalDir:     s.internal,
		RunDir:          filepath.Join(s.dir, name, "run"),
		PodName:         pod,
		PrimaryHost:     "127.0.0.1",
		PrimaryPort:     primaryPort,
		Port:            port,
		AgentAddress:    "127.0.0.1",
		AgentPort:       0,
		ListenAddresses: "127.0.0.1",
		CloneRetry:      200 * time.Millisecond,
		Log:             slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if os.Getenv("TEST_VERBOSE") != "" {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	ctx, cancel := context.WithCancel(context.Background())
	ti := &testInstance{t: t, agent: NewAgent(cfg), cancel: cancel, done: make(chan error, 1), cfg: cfg}
	go func() { ti.done <- ti.agent.Run(ctx) }()
	t.Cleanup(func() { ti.stop() })
	return ti
}

func (ti *testInstance) stop() error {
	ti.cancel()
	select {
	case err := <-ti.done:
		ti.done <- err // keep it for a second stop
		return err
	case <-time.After(60 * time.Second):
		return errors.New("agent did not stop within 60s")
	}
}

func (ti *testInstance) url(path string) string {
	return "http://" + ti.agent.Addr().String() + path
}

func (ti *testInstance) get(path, token string) (int, string) {
	req, _ := http.NewRequest(http.MethodGet, ti.url(path), nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (ti *testInstance) status(token string) (*Status, error) {
	return NewClient(nil, token).GetStatus(context.Background(), "http://"+ti.agent.Addr().String())
}

func (ti *testInstance) mustStatus(t *testing.T, token string) *Status {
	t.Helper()
	st, err := ti.status(token)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return st
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s: %v", what, err)
}

// appConn connects over TCP as the application user with its password (SCRAM).
func appConn(ctx context.Context, port int, password, database string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=appuser dbname=%s sslmode=disable", port, database))
	if err != nil {
		return nil, err
	}
	cfg.Password = password
	return pgx.ConnectConfig(ctx, cfg)
}

func TestPrimaryAndStreamingStandby(t *testing.T) {
	root := testRoot(t)
	s := newSecrets(t, root)
	ctx := context.Background()
	pPort, sPort := testenv.FreePort(t), testenv.FreePort(t)

	primary := startInstance(t, s, "primary", "db-0", pPort, pPort)
	if code, _ := primary.get(PathHealthz, ""); code != http.StatusOK {
		t.Errorf("liveness during bootstrap = %d, want 200", code)
	}

	t.Run("primary bootstraps: application role logs in with the Secret's password and owns its database", func(t *testing.T) {
		waitUntil(t, 60*time.Second, "the application role to log in", func() error {
			c, err := appConn(ctx, pPort, s.appPassword, "appdb")
			if err != nil {
				return err
			}
			return c.Close(ctx)
		})
		c, err := appConn(ctx, pPort, s.appPassword, "appdb")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		var owner, checksums, method string
		if err := c.QueryRow(ctx, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()").Scan(&owner); err != nil {
			t.Fatal(err)
		}
		if owner != "appuser" {
			t.Errorf("appdb owner = %s", owner)
		}
		if err := c.QueryRow(ctx, "SHOW data_checksums").Scan(&checksums); err != nil || checksums != "on" {
			t.Errorf("data_checksums = %q (%v)", checksums, err)
		}
		if err := c.QueryRow(ctx, "SHOW password_encryption").Scan(&method); err != nil || method != "scram-sha-256" {
			t.Errorf("password_encryption = %q (%v)", method, err)
		}
		if _, err := appConn(ctx, pPort, "wrong", "appdb"); err == nil {
			t.Error("a wrong password was accepted")
		}
		if _, err := c.Exec(ctx, "CREATE TABLE items (id int PRIMARY KEY, name text)"); err != nil {
			t.Fatalf("the owner cannot create tables: %v", err)
		}
	})

	t.Run("probes: ready once postgres answers", func(t *testing.T) {
		for _, p := range []string{PathReadyz, PathStartup, PathHealthz} {
			if code, body := primary.get(p, ""); code != http.StatusOK {
				t.Errorf("%s = %d %s", p, code, body)
			}
		}
	})

	t.Run("status requires the token", func(t *testing.T) {
		for _, tok := range []string{"", "wrong-token", s.token + "x"} {
			if code, body := primary.get(PathStatus, tok); code != http.StatusUnauthorized || strings.Contains(body, "primary") {
				t.Errorf("token %q: %d %s", tok, code, body)
			}
		}
		st := primary.mustStatus(t, s.token)
		if st.Role != RolePrimary || !st.Running || st.InRecovery || !st.Writable || st.Pod != "db-0" {
			t.Errorf("primary status = %+v", st)
		}
		if !strings.HasPrefix(st.ServerVersion, "1") || st.ServerVersionNum < 100000 || st.Timeline != 1 || st.CurrentLSN == "" {
			t.Errorf("version/timeline/LSN = %q %d %d %q", st.ServerVersion, st.ServerVersionNum, st.Timeline, st.CurrentLSN)
		}
	})

	t.Run("replication role exists and cannot log in to databases over TCP", func(t *testing.T) {
		cfg, _ := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable", pPort, ReplicationUser))
		cfg.Password = "repl-secret-42"
		if c, err := pgx.ConnectConfig(ctx, cfg); err == nil {
			c.Close(ctx)
			t.Error("the replication role logged in to a database")
		}
	})

	standby := startInstance(t, s, "standby", "db-1", sPort, pPort)

	t.Run("standby clones the primary and streams: a row written on the primary is read on the standby", func(t *testing.T) {
		waitUntil(t, 90*time.Second, "the standby to stream", func() error {
			st, err := standby.status(s.token)
			if err != nil {
				return err
			}
			if st.Role != RoleReplica || st.WALReceiverStatus != "streaming" {
				return fmt.Errorf("standby status %+v", st)
			}
			return nil
		})
		c, err := appConn(ctx, pPort, s.appPassword, "appdb")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "INSERT INTO items VALUES (1, 'replicated')"); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 30*time.Second, "the row on the standby", func() error {
			sc, err := appConn(ctx, sPort, s.appPassword, "appdb")
			if err != nil {
				return err
			}
			defer sc.Close(ctx)
			var name string
			if err := sc.QueryRow(ctx, "SELECT name FROM items WHERE id = 1").Scan(&name); err != nil {
				return err
			}
			if name != "replicated" {
				return fmt.Errorf("name %q", name)
			}
			return nil
		})
		sc, err := appConn(ctx, sPort, s.appPassword, "appdb")
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close(ctx)
		if _, err := sc.Exec(ctx, "INSERT INTO items VALUES (2, 'x')"); err == nil {
			t.Error("the standby accepted a write")
		}
	})

	t.Run("primary reports the standby streaming with its lag", func(t *testing.T) {
		waitUntil(t, 30*time.Second, "pg_stat_replication", func() error {
			st, err := primary.status(s.token)
			if err != nil {
				return err
			}
			if len(st.Replicas) != 1 || st.Replicas[0].ApplicationName != "db-1" || st.Replicas[0].State != "streaming" || st.Replicas[0].ReplayLSN == "" {
				return fmt.Errorf("replicas %+v", st.Replicas)
			}
			if st.Replicas[0].LagBytes < 0 || st.Replicas[0].LagBytes > 16<<20 {
				return fmt.Errorf("lag %d", st.Replicas[0].LagBytes)
			}
			return nil
		})
		st := standby.mustStatus(t, s.token)
		if st.Writable || st.ReplayLSN == "" || st.ReceiveLSN == "" {
			t.Errorf("standby status %+v", st)
		}
	})

	t.Run("SIGTERM stops postgres with a fast shutdown and the agent returns nil", func(t *testing.T) {
		if err := standby.stop(); err != nil {
			t.Errorf("standby agent returned %v", err)
		}
		if _, err := os.Stat(standby.agent.pidFile()); !os.IsNotExist(err) {
			t.Errorf("postmaster.pid still exists after shutdown: %v", err)
		}
		if err := primary.stop(); err != nil {
			t.Errorf("primary agent returned %v", err)
		}
	})

	t.Run("restart on an existing data directory keeps the data", func(t *testing.T) {
		again := startInstance(t, s, "primary", "db-0", pPort, pPort)
		waitUntil(t, 60*time.Second, "the restarted primary", func() error {
			c, err := appConn(ctx, pPort, s.appPassword, "appdb")
			if err != nil {
				return err
			}
			defer c.Close(ctx)
			var name string
			return c.QueryRow(ctx, "SELECT name FROM items WHERE id = 1").Scan(&name)
		})
		conf, err := os.ReadFile(filepath.Join(again.cfg.PGData, "postgresql.conf"))
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(conf), "include_if_exists = 'postgresql.operator.conf'"); n != 1 {
			t.Errorf("include line appears %d times after a restart", n)
		}
		if err := again.stop(); err != nil {
			t.Error(err)
		}
	})
}

func TestPostgresRunsAsThePostgresUserWhenTheAgentIsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	root := testRoot(t)
	s := newSecrets(t, root)
	port := testenv.FreePort(t)
	in := startInstance(t, s, "p", "solo-0", port, port)
	waitUntil(t, 60*time.Second, "readiness", func() error {
		if code, body := in.get(PathReadyz, ""); code != http.StatusOK {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	st, err := os.Stat(in.cfg.PGData)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := user.Lookup("postgres")
	uid, _ := strconv.Atoi(u.Uid)
	if got := int(st.Sys().(*syscall.Stat_t).Uid); got != uid {
		t.Errorf("data directory owned by uid %d, want postgres (%d)", got, uid)
	}
}

func TestOrdinal(t *testing.T) {
	for pod, want := range map[string]int{"db-0": 0, "my-database-12": 12, "db": -1, "db-x": -1} {
		if got := Ordinal(pod); got != want {
			t.Errorf("Ordinal(%q) = %d, want %d", pod, got, want)
		}
	}
}
