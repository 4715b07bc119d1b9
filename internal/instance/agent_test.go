package instance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/example/postgres-operator/internal/testenv"
)

// These tests run real PostgreSQL (Debian's, found like the agent finds it) on
// loopback ports: a primary bootstrapped by the agent and a standby cloned by it.

const (
	testAppUser      = "appuser"
	testAppDB        = "appdb"
	testReplPassword = "repl-secret-42"
)

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
		appPassword: `app-Pa55:word'x\y`, token: "test-token-0123456789"}
	files := map[string]string{
		filepath.Join(s.credentials, agentapi.CredentialsUsernameFile):      testAppUser,
		filepath.Join(s.credentials, agentapi.CredentialsPasswordFile):      s.appPassword,
		filepath.Join(s.credentials, agentapi.CredentialsDatabaseFile):      testAppDB,
		filepath.Join(s.internal, agentapi.InternalReplicationPasswordFile): testReplPassword,
		filepath.Join(s.internal, agentapi.InternalAgentTokenFile):          s.token + "\n",
	}
	for p, v := range files {
		writeTestFile(t, p, v)
	}
	return s
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func testConfig(s testSecrets, name, pod string, port, primaryPort int) Config {
	agentPort := 0
	if port != 0 {
		agentPort = freePort()
	}
	cfg := Config{
		AppUser:         testAppUser,
		AppDatabase:     testAppDB,
		PGData:          filepath.Join(s.dir, name, "data", "pgdata"),
		CredentialsDir:  s.credentials,
		InternalDir:     s.internal,
		RunDir:          filepath.Join(s.dir, name, "run"),
		PodName:         pod,
		PrimaryHost:     "127.0.0.1",
		PrimaryPort:     primaryPort,
		Port:            port,
		AgentAddress:    "127.0.0.1",
		AgentPort:       agentPort,
		ListenAddresses: "127.0.0.1",
		CloneRetry:      200 * time.Millisecond,
		SecretPoll:      200 * time.Millisecond,
		RestartBackoff:  100 * time.Millisecond,
		Log:             slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if os.Getenv("TEST_VERBOSE") != "" {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return cfg
}

func startInstance(t *testing.T, s testSecrets, name, pod string, port, primaryPort int) *testInstance {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(s.dir, name), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(s, name, pod, port, primaryPort)
	ctx, cancel := context.WithCancel(context.Background())
	ti := &testInstance{t: t, agent: NewAgent(cfg), cancel: cancel, done: make(chan error, 1), cfg: cfg}
	go func() { ti.done <- ti.agent.Run(ctx) }()
	t.Cleanup(func() { _ = ti.stop() })
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

func (ti *testInstance) baseURL() string { return "http://" + ti.agent.Addr().String() }

func get(url, token string) (int, string) {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
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

func (ti *testInstance) get(path, token string) (int, string) { return get(ti.baseURL()+path, token) }

func (ti *testInstance) status(token string) (*agentapi.Status, error) {
	return agentapi.NewClient(nil, token).GetStatus(context.Background(), ti.baseURL())
}

func (ti *testInstance) mustStatus(t *testing.T, token string) *agentapi.Status {
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

// appConn connects over TCP as the application user with a password (SCRAM).
func appConn(ctx context.Context, port int, password, database string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable", port, testAppUser, database))
	if err != nil {
		return nil, err
	}
	cfg.Password = password
	return pgx.ConnectConfig(ctx, cfg)
}

func waitForAppLogin(t *testing.T, port int, password string) {
	t.Helper()
	waitUntil(t, 60*time.Second, "the application role to log in", func() error {
		c, err := appConn(context.Background(), port, password, testAppDB)
		if err != nil {
			return err
		}
		return c.Close(context.Background())
	})
}

// serverMajor is the major version of the PostgreSQL binaries the agent uses.
func serverMajor(t *testing.T) string {
	t.Helper()
	bins, err := postgres.FindBinaries("")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bins.Postgres, "-V").Output() // "postgres (PostgreSQL) 15.14 (Debian ...)"
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	if len(f) < 3 {
		t.Fatalf("postgres -V: %q", out)
	}
	return strings.SplitN(f[2], ".", 2)[0]
}

func TestPrimaryAndStreamingStandby(t *testing.T) {
	root := testRoot(t)
	s := newSecrets(t, root)
	ctx := context.Background()
	pPort, sPort := testenv.FreePort(t), testenv.FreePort(t)

	primary := startInstance(t, s, "primary", "db-0", pPort, pPort)

	t.Run("while bootstrapping the agent is live and started but not ready", func(t *testing.T) {
		for _, p := range []string{agentapi.PathHealthz, agentapi.PathStartup} {
			if code, body := primary.get(p, ""); code != http.StatusOK || body != "ok" {
				t.Errorf("%s during bootstrap = %d %q, want 200 ok", p, code, body)
			}
		}
		if code, _ := primary.get(agentapi.PathReadyz, ""); code != http.StatusServiceUnavailable {
			t.Errorf("readiness during bootstrap = %d, want 503", code)
		}
	})

	t.Run("primary bootstraps: application role logs in with the Secret's password and owns its database", func(t *testing.T) {
		waitForAppLogin(t, pPort, s.appPassword)
		c, err := appConn(ctx, pPort, s.appPassword, testAppDB)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		var owner, checksums, method string
		if err := c.QueryRow(ctx, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()").Scan(&owner); err != nil {
			t.Fatal(err)
		}
		if owner != testAppUser {
			t.Errorf("%s owner = %s", testAppDB, owner)
		}
		if err := c.QueryRow(ctx, "SHOW data_checksums").Scan(&checksums); err != nil || checksums != "on" {
			t.Errorf("data_checksums = %q (%v)", checksums, err)
		}
		if err := c.QueryRow(ctx, "SHOW password_encryption").Scan(&method); err != nil || method != "scram-sha-256" {
			t.Errorf("password_encryption = %q (%v)", method, err)
		}
		var appSuper, replCanLogin, replReplication bool
		if err := c.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&appSuper); err != nil || appSuper {
			t.Errorf("application role superuser = %v (%v)", appSuper, err)
		}
		if err := c.QueryRow(ctx, "SELECT rolcanlogin, rolreplication FROM pg_roles WHERE rolname = $1", agentapi.ReplicationUser).
			Scan(&replCanLogin, &replReplication); err != nil || !replCanLogin || !replReplication {
			t.Errorf("replication role login=%v replication=%v (%v)", replCanLogin, replReplication, err)
		}
		if bad, err := appConn(ctx, pPort, "wrong", testAppDB); err == nil {
			bad.Close(ctx)
			t.Error("a wrong password was accepted")
		}
		if _, err := c.Exec(ctx, "CREATE TABLE items (id int PRIMARY KEY, name text)"); err != nil {
			t.Fatalf("the owner cannot create tables: %v", err)
		}
	})

	t.Run("postgres runs as the postgres OS user and owns the data directory", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("the agent drops privileges only when it runs as root")
		}
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		for _, p := range []string{primary.cfg.PGData, primary.cfg.RunDir, filepath.Join(primary.cfg.RunDir, "pgpass")} {
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if got := int(st.Sys().(*syscall.Stat_t).Uid); got != uid {
				t.Errorf("%s owned by uid %d, want postgres (%d)", p, got, uid)
			}
			if st.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s has mode %v, want private", p, st.Mode().Perm())
			}
		}
	})

	t.Run("quoting survives a real server, whatever standard_conforming_strings is", func(t *testing.T) {
		c, err := appConn(ctx, pPort, s.appPassword, testAppDB)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		for _, scs := range []string{"on", "off"} {
			if _, err := c.Exec(ctx, "SET standard_conforming_strings = "+scs); err != nil {
				t.Fatal(err)
			}
			for _, v := range []string{`plain`, `it's`, `back\slash`, `\'; SELECT 1; --`, `"quoted" name`, "ünïcode"} {
				var got string
				rows, err := c.Query(ctx, "SELECT "+postgres.QuoteLiteral(v)+" AS "+postgres.QuoteIdentifier(v), pgx.QueryExecModeExec) // parsed afresh under each setting
				if err != nil {
					t.Errorf("scs=%s %q: %v", scs, v, err)
					continue
				}
				name := string(rows.FieldDescriptions()[0].Name)
				for rows.Next() {
					if err := rows.Scan(&got); err != nil {
						t.Error(err)
					}
				}
				rows.Close()
				if got != v || name != v {
					t.Errorf("scs=%s: literal %q came back as %q, identifier as %q", scs, v, got, name)
				}
			}
		}
	})

	t.Run("probes: live and ready once postgres answers", func(t *testing.T) {
		// Readiness follows the probe loop's reading (every half second).
		waitUntil(t, 5*time.Second, "the probes", func() error {
			for _, p := range []string{agentapi.PathReadyz, agentapi.PathStartup, agentapi.PathHealthz} {
				if code, body := primary.get(p, ""); code != http.StatusOK {
					return fmt.Errorf("%s = %d %s", p, code, body)
				}
			}
			return nil
		})
	})

	t.Run("status requires the token and reports a writable primary", func(t *testing.T) {
		for _, tok := range []string{"", "wrong-token", s.token + "x"} {
			if code, body := primary.get(agentapi.PathStatus, tok); code != http.StatusUnauthorized || strings.Contains(body, "db-0") {
				t.Errorf("token %q: %d %s", tok, code, body)
			}
		}
		if _, err := primary.status("wrong-token"); err == nil || !strings.Contains(err.Error(), "401") {
			t.Errorf("client with a wrong token: %v, want an error naming 401", err)
		}
		st := primary.mustStatus(t, s.token)
		if st.Role != agentapi.RolePrimary || !st.Running || st.InRecovery || !st.Writable || st.WriteError != "" || st.Pod != "db-0" || st.Error != "" {
			t.Errorf("primary status = %+v", st)
		}
		major := serverMajor(t)
		if !strings.HasPrefix(st.ServerVersion, major+".") || st.ServerVersionNum/10000 != mustAtoi(t, major) || st.Timeline != 1 || st.CurrentLSN == "" {
			t.Errorf("version/timeline/LSN = %q %d %d %q, want version %s", st.ServerVersion, st.ServerVersionNum, st.Timeline, st.CurrentLSN, major)
		}
	})

	t.Run("the agent speaks this protocol under /v1 and the previous one at the root", func(t *testing.T) {
		for _, p := range []string{agentapi.PathReadyz, agentapi.PathStartup, agentapi.PathHealthz} {
			if code, body := primary.get(agentapi.Versioned(p), ""); code != http.StatusOK {
				t.Errorf("%s = %d %s", agentapi.Versioned(p), code, body)
			}
		}
		for _, prefix := range []string{agentapi.PathsFor(agentapi.ProtocolVersion), agentapi.PathsFor(agentapi.PreviousProtocolVersion)} {
			if code, body := primary.get(prefix+agentapi.PathStatus, ""); code != http.StatusUnauthorized || strings.Contains(body, "db-0") {
				t.Errorf("%s without the token: %d %s", prefix+agentapi.PathStatus, code, body)
			}
			c := agentapi.NewClient(nil, s.token)
			st, err := c.GetStatus(ctx, primary.baseURL()+prefix)
			if err != nil || st.Protocol != agentapi.ProtocolVersion || st.Role != agentapi.RolePrimary {
				t.Errorf("status at %q: %+v %v", prefix+agentapi.PathStatus, st, err)
			}
			// An instruction through each version's path: the primary's slots
			// (none: the set is already empty).
			if err := c.SetSlots(ctx, primary.baseURL()+prefix, nil); err != nil {
				t.Errorf("slots at %q: %v", prefix+agentapi.PathSlots, err)
			}
		}
		if code, _ := primary.get("/v2"+agentapi.PathStatus, s.token); code != http.StatusNotFound {
			t.Errorf("an unknown protocol's path answered %d, want 404", code)
		}
	})

	t.Run("replication role logs in only to the postgres database, for pg_rewind, and reads no table", func(t *testing.T) {
		cfg, _ := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable", pPort, agentapi.ReplicationUser, testAppDB))
		cfg.Password = testReplPassword
		if c, err := pgx.ConnectConfig(ctx, cfg); err == nil {
			c.Close(ctx)
			t.Error("the replication role logged in to the application database")
		}
		cfg, _ = pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable", pPort, agentapi.ReplicationUser))
		cfg.Password = testReplPassword
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatalf("pg_rewind's connection as the replication role: %v", err)
		}
		defer c.Close(ctx)
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_catalog.pg_authid").Scan(&n); err == nil {
			t.Error("the replication role read pg_authid")
		}
		if _, err := c.Exec(ctx, "SELECT pg_catalog.pg_ls_dir('global', false, false)"); err != nil {
			t.Errorf("pg_rewind's pg_ls_dir grant is missing: %v", err)
		}
	})

	setSlots(t, primary, s.token, agentapi.SlotName("db-1"))
	standby := startInstance(t, s, "standby", "db-1", sPort, pPort)

	t.Run("standby clones the primary and streams: a row written on the primary is read on the standby", func(t *testing.T) {
		waitUntil(t, 60*time.Second, "the standby to stream", func() error {
			st, err := standby.status(s.token)
			if err != nil {
				return err
			}
			if st.Role != agentapi.RoleReplica || st.WALReceiverStatus != "streaming" {
				return fmt.Errorf("standby status %+v", st)
			}
			return nil
		})
		c, err := appConn(ctx, pPort, s.appPassword, testAppDB)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "INSERT INTO items VALUES (1, 'replicated')"); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 30*time.Second, "the row on the standby", func() error {
			sc, err := appConn(ctx, sPort, s.appPassword, testAppDB)
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
		sc, err := appConn(ctx, sPort, s.appPassword, testAppDB)
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close(ctx)
		if _, err := sc.Exec(ctx, "INSERT INTO items VALUES (2, 'x')"); err == nil {
			t.Error("the standby accepted a write")
		}
		if _, err := os.Stat(filepath.Join(standby.cfg.PGData, "standby.signal")); err != nil {
			t.Errorf("standby.signal: %v", err)
		}
		if _, err := os.Stat(filepath.Join(primary.cfg.PGData, "standby.signal")); !os.IsNotExist(err) {
			t.Errorf("the primary has a standby.signal: %v", err)
		}
	})

	t.Run("standby is ready and reports its replay position", func(t *testing.T) {
		// Readiness follows the probe loop's reading (every half second).
		waitUntil(t, 5*time.Second, "standby readiness", func() error {
			if code, body := standby.get(agentapi.PathReadyz, ""); code != http.StatusOK {
				return fmt.Errorf("standby readiness = %d %s", code, body)
			}
			return nil
		})
		st := standby.mustStatus(t, s.token)
		if !st.Running || !st.InRecovery || st.Writable || st.ReplayLSN == "" || st.ReceiveLSN == "" || st.CurrentLSN != st.ReplayLSN || st.ReplayLagBytes < 0 || st.Error != "" {
			t.Errorf("standby status %+v", st)
		}
	})

	t.Run("primary reports the standby streaming with its lag", func(t *testing.T) {
		waitUntil(t, 30*time.Second, "pg_stat_replication", func() error {
			st, err := primary.status(s.token)
			if err != nil {
				return err
			}
			if len(st.Replicas) != 1 || st.Replicas[0].ApplicationName != "db-1" || st.Replicas[0].State != "streaming" ||
				st.Replicas[0].SyncState != "async" || st.Replicas[0].SentLSN == "" || st.Replicas[0].ReplayLSN == "" {
				return fmt.Errorf("replicas %+v", st.Replicas)
			}
			if st.Replicas[0].LagBytes < 0 || st.Replicas[0].LagBytes > 16<<20 {
				return fmt.Errorf("lag %d", st.Replicas[0].LagBytes)
			}
			return nil
		})
	})

	t.Run("cancellation stops postgres with a fast shutdown and the agent returns nil", func(t *testing.T) {
		for _, in := range []*testInstance{standby, primary} {
			start := time.Now()
			if err := in.stop(); err != nil {
				t.Errorf("%s agent returned %v", in.cfg.PodName, err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("%s took %v to stop", in.cfg.PodName, d)
			}
			if _, err := os.Stat(in.agent.pidFile()); !os.IsNotExist(err) {
				t.Errorf("%s: postmaster.pid still exists after shutdown: %v", in.cfg.PodName, err)
			}
		}
	})

	t.Run("restart keeps the data, rewrites the same configuration, applies a rotated password and stops on SIGTERM", func(t *testing.T) {
		owned := []string{operatorConfFile, "pg_hba.conf", "pg_ident.conf", "postgresql.conf"}
		before := map[string]string{}
		for _, f := range owned {
			b, err := os.ReadFile(filepath.Join(primary.cfg.PGData, f))
			if err != nil {
				t.Fatal(err)
			}
			before[f] = string(b)
		}
		const rotated = "rotated-Pa55word"
		writeTestFile(t, filepath.Join(s.credentials, agentapi.CredentialsPasswordFile), rotated+"\n")

		// The exported entry point, with the flags the pod passes.
		agentPort := testenv.FreePort(t)
		args := []string{
			"--app-user=" + testAppUser, "--app-database=" + testAppDB,
			"--pgdata=" + primary.cfg.PGData, "--credentials-dir=" + s.credentials, "--internal-dir=" + s.internal,
			"--run-dir=" + primary.cfg.RunDir, "--pod-name=db-0", "--primary-host=127.0.0.1",
			"--port=" + strconv.Itoa(pPort), "--agent-port=" + strconv.Itoa(agentPort), "--agent-address=127.0.0.1",
			"--listen-addresses=127.0.0.1", "--standalone",
			// Short, so that the single primary's one Lease write is older
			// than the renew deadline by the time of the SIGTERM below.
			"--lease-duration=3s", "--renew-deadline=2s", "--retry-period=500ms",
		}
		done := make(chan error, 1)
		runCtx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() { done <- Run(runCtx, args) }()
		base := fmt.Sprintf("http://127.0.0.1:%d", agentPort)
		waitUntil(t, 60*time.Second, "the restarted primary to be ready", func() error {
			if code, body := get(base+agentapi.PathReadyz, ""); code != http.StatusOK {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		})

		c, err := appConn(ctx, pPort, rotated, testAppDB)
		if err != nil {
			t.Fatalf("the rotated password does not log in: %v", err)
		}
		var name string
		if err := c.QueryRow(ctx, "SELECT name FROM items WHERE id = 1").Scan(&name); err != nil || name != "replicated" {
			t.Errorf("data written before the restart: %q (%v)", name, err)
		}
		c.Close(ctx)
		if old, err := appConn(ctx, pPort, s.appPassword, testAppDB); err == nil {
			old.Close(ctx)
			t.Error("the previous password still logs in")
		}
		for _, f := range owned {
			b, err := os.ReadFile(filepath.Join(primary.cfg.PGData, f))
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != before[f] {
				t.Errorf("%s changed across a restart:\n%s\n---\n%s", f, before[f], b)
			}
		}
		if n := strings.Count(before["postgresql.conf"], "include_if_exists = '"+operatorConfFile+"'"); n != 1 {
			t.Errorf("the include line appears %d times", n)
		}
		st, err := agentapi.NewClient(nil, s.token).GetStatus(ctx, base+"/")
		if err != nil || !st.Writable || st.Timeline != 1 {
			t.Errorf("status after restart: %+v (%v)", st, err)
		}

		time.Sleep(2500 * time.Millisecond) // beyond the renew deadline
		if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after SIGTERM, want nil", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return within 30s of SIGTERM")
		}
		if _, err := os.Stat(filepath.Join(primary.cfg.PGData, "postmaster.pid")); !os.IsNotExist(err) {
			t.Errorf("postmaster.pid still exists after SIGTERM: %v", err)
		}
		// A single instance's SIGTERM is a clean shutdown, never the fence's
		// immediate one: it writes the Lease once, so its stale renewal is no
		// reason to fence (it was, found by review: every graceful stop of a
		// single primary crashed it).
		bins, err := postgres.FindBinaries("")
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bins.PgControldata, "-D", primary.cfg.PGData).Output()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), "Database cluster state:               shut down\n") {
			t.Errorf("after SIGTERM the cluster state is not a clean shutdown:\n%s", out)
		}
	})
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAgentAnswersWhilePostgresIsDown(t *testing.T) {
	root := testRoot(t)
	s := newSecrets(t, root)
	// Nothing listens on the primary port: the standby keeps retrying its clone.
	closedPort := testenv.FreePort(t)
	in := startInstance(t, s, "waiting", "db-2", testenv.FreePort(t), closedPort)
	time.Sleep(300 * time.Millisecond) // at least one failed pg_basebackup

	// A clone may take hours: the probes that restart a container pass while it
	// runs; readiness does not.
	for _, p := range []string{agentapi.PathHealthz, agentapi.PathStartup} {
		if code, body := in.get(p, ""); code != http.StatusOK || body != "ok" {
			t.Errorf("%s while cloning = %d %q, want 200 ok", p, code, body)
		}
	}
	if code, _ := in.get(agentapi.PathReadyz, ""); code != http.StatusServiceUnavailable {
		t.Errorf("readiness while cloning = %d, want 503", code)
	}
	if code, body := in.get(agentapi.PathStatus, ""); code != http.StatusUnauthorized || strings.Contains(body, "db-2") {
		t.Errorf("status without a token = %d %q", code, body)
	}
	st := in.mustStatus(t, s.token)
	if st.Running || st.Error == "" || st.Pod != "db-2" || st.Role != "" || st.State != agentapi.StateCloning || st.Ready {
		t.Errorf("status while postgres is down = %+v, want not running with an error", st)
	}

	if err := in.stop(); err != nil {
		t.Errorf("cancelling during the clone: Run returned %v, want nil", err)
	}
	if entries, err := os.ReadDir(filepath.Dir(in.cfg.PGData)); err != nil || len(entries) != 0 {
		t.Errorf("an interrupted clone left %v (%v)", entries, err)
	}
}

func TestWriteConfig(t *testing.T) {
	tests := []struct {
		name        string
		pod         string
		wantSignal  bool
		wantInConf  []string
		wantOutConf []string
	}{
		{
			name:        "primary",
			pod:         "db-0",
			wantInConf:  []string{"listen_addresses = '127.0.0.1'", "port = 6543", "unix_socket_permissions = 0700", "wal_level = replica", "hot_standby = on", "wal_keep_size = '64MB'", "max_slot_wal_keep_size = '256MB'", "password_encryption = 'scram-sha-256'"},
			wantOutConf: []string{"primary_conninfo", "primary_slot_name"},
		},
		{
			name:       "standby streams from the primary host with the passfile",
			pod:        "db-1",
			wantSignal: true,
			wantInConf: []string{"primary_slot_name = 'pgop_db_1'", `primary_conninfo = 'host=''prim\\''ary'' port=7000 user=streaming_replica passfile=''` + "RUN" + `/pgpass'' application_name=''db-1'' connect_timeout=5 keepalives=1 keepalives_idle=10 keepalives_interval=5 keepalives_count=3 sslmode=prefer'`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			pgdata := filepath.Join(dir, "pgdata")
			writeTestFile(t, filepath.Join(pgdata, "postgresql.conf"), "shared_buffers = 128MB\n")
			writeTestFile(t, filepath.Join(pgdata, "pg_hba.conf"), "host all all all trust\n")
			a := NewAgent(Config{PGData: pgdata, RunDir: filepath.Join(dir, "run"), PodName: tc.pod, PrimaryHost: `prim'ary`,
				PrimaryPort: 7000, Port: 6543, ListenAddresses: "127.0.0.1", MaxSlotWALKeepSize: "256MB", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
			primary := tc.pod == "db-0"
			following := ""
			if !primary {
				following = "db-0"
			}
			for range 2 {
				if _, err := a.writeConfig(primary, following); err != nil {
					t.Fatal(err)
				}
			}
			read := func(f string) string {
				b, err := os.ReadFile(filepath.Join(pgdata, f))
				if err != nil {
					t.Fatal(err)
				}
				return string(b)
			}
			conf := read(operatorConfFile)
			for _, want := range tc.wantInConf {
				want = strings.ReplaceAll(want, "RUN", a.cfg.RunDir)
				if !strings.Contains(conf, want+"\n") {
					t.Errorf("%s lacks %q:\n%s", operatorConfFile, want, conf)
				}
			}
			for _, bad := range tc.wantOutConf {
				if strings.Contains(conf, bad) {
					t.Errorf("%s has %q", operatorConfFile, bad)
				}
			}
			if main := read("postgresql.conf"); strings.Count(main, "include_if_exists = 'postgresql.operator.conf'") != 1 || !strings.HasPrefix(main, "shared_buffers") {
				t.Errorf("postgresql.conf after two writes:\n%s", main)
			}
			hba := read("pg_hba.conf")
			if strings.Contains(hba, "trust") {
				t.Errorf("pg_hba.conf kept a trust line:\n%s", hba)
			}
			var rules []string
			for _, l := range strings.Split(hba, "\n") {
				if l = strings.Join(strings.Fields(l), " "); l != "" && !strings.HasPrefix(l, "#") {
					rules = append(rules, l)
				}
			}
			wantRules := []string{
				"local all postgres peer map=operator",
				"local postgres " + agentapi.MonitorUser + " peer map=operator",
				"local all " + agentapi.MonitorUser + " reject",
				"local all all scram-sha-256",
				"host replication streaming_replica all scram-sha-256",
				"host postgres streaming_replica all scram-sha-256",
				"host all streaming_replica all reject",
				"host all postgres all reject",
				"host all " + agentapi.MonitorUser + " all reject",
				"host all all all scram-sha-256",
			}
			if strings.Join(rules, "\n") != strings.Join(wantRules, "\n") {
				t.Errorf("pg_hba.conf rules:\n%s\nwant:\n%s", strings.Join(rules, "\n"), strings.Join(wantRules, "\n"))
			}
			if ident := read("pg_ident.conf"); !strings.Contains(ident, "operator  postgres  postgres\n") || !strings.Contains(ident, "operator  root  postgres\n") {
				t.Errorf("pg_ident.conf:\n%s", ident)
			}
			_, err := os.Stat(filepath.Join(pgdata, "standby.signal"))
			if got := err == nil; got != tc.wantSignal {
				t.Errorf("standby.signal present = %v, want %v", got, tc.wantSignal)
			}
		})
	}
}

func TestWriteConfigRefusesALineBreakInAValue(t *testing.T) {
	dir := t.TempDir()
	pgdata := filepath.Join(dir, "pgdata")
	writeTestFile(t, filepath.Join(pgdata, "postgresql.conf"), "")
	a := NewAgent(Config{PGData: pgdata, RunDir: dir, PodName: "db-0", Port: 5432, ListenAddresses: "*\nfsync = off",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if _, err := a.writeConfig(true, ""); err == nil {
		t.Error("a listen address with a line break was written")
	}
}

func TestValidateNamesRefusesReservedRolesDatabasesAndNonIdentifiers(t *testing.T) {
	tests := []struct {
		user, db string
		ok       bool
	}{
		{"app", "app", true},
		{"_a1", "b_2", true},
		{"app", strings.Repeat("d", 63), true},
		{"app", strings.Repeat("d", 64), false},
		// The maintenance database is the superuser's: never handed over.
		{"app", "postgres", false},
		{"app", "pg_db", false},
		{agentapi.MonitorUser, "app", false},
		{"App", "app", false},
		{"app", `a"b`, false},
		{"", "app", false},
		{"app", "", false},
		{"1app", "app", false},
		{"postgres", "app", false},
		{agentapi.ReplicationUser, "app", false},
		{"pg_monitor", "app", false},
		{"app", "template1", false},
		{"app", "template0", false},
	}
	for _, tc := range tests {
		if err := validateNames(tc.user, tc.db); (err == nil) != tc.ok {
			t.Errorf("validateNames(%q, %q) = %v, want ok=%v", tc.user, tc.db, err, tc.ok)
		}
	}
}

func TestRunRejectsBadFlagsAndPodNamesWithoutOrdinal(t *testing.T) {
	for _, args := range [][]string{
		{"--no-such-flag"},
		{"--pod-name=db", "--bin-dir=/nonexistent"},
		{"--pod-name=db-0", "stray"},
		{"--pod-name=db-0", "--app-user=app"},
		{"--pod-name=db-0", "--app-user=app", "--app-database=postgres"},
		{"--pod-name=db-0", "--app-user=postgres", "--app-database=app"},
	} {
		if err := Run(context.Background(), args); err == nil {
			t.Errorf("Run(%q) succeeded", args)
		}
	}
}

// Never start without the Lease: an agent given no --lease-name refuses to
// run unless the standalone mode is named explicitly.
func TestRunRequiresALeaseOrAnExplicitStandaloneMode(t *testing.T) {
	for args, want := range map[string]string{
		"--pod-name=db-0 --app-user=app --app-database=app":                                      "--lease-name is required",
		"--pod-name=db-0 --app-user=app --app-database=app --standalone --lease-name=db-primary": "exclude each other",
	} {
		err := Run(context.Background(), strings.Fields(args))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Run(%s) = %v, want an error containing %q", args, err, want)
		}
	}
}

func TestOrdinal(t *testing.T) {
	for pod, want := range map[string]int{"db-0": 0, "my-database-12": 12, "db": -1, "db-x": -1, "": -1} {
		if got := agentapi.Ordinal(pod); got != want {
			t.Errorf("Ordinal(%q) = %d, want %d", pod, got, want)
		}
	}
}

// freePort is testenv.FreePort outside a test's scope (ports are never reused).
func freePort() int { return testenv.FreePort(portTB{}) }

type portTB struct{ testing.TB }

func (portTB) Helper()           {}
func (portTB) Fatal(args ...any) { panic(fmt.Sprint(args...)) }
