package instance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/pki"
	"github.com/example/postgres-operator/internal/testenv"
)

type testPKI struct {
	ca, server, operator, restore pki.Pair
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	now := time.Now()
	ca, err := pki.NewCA("test-db-ca", now)
	if err != nil {
		t.Fatal(err)
	}
	p := testPKI{ca: ca}
	p.server = p.issueServer(t)
	if p.operator, err = pki.Issue(ca, pki.Leaf{CommonName: agentapi.ClientOperator, Client: true}, now); err != nil {
		t.Fatal(err)
	}
	if p.restore, err = pki.Issue(ca, pki.Leaf{CommonName: agentapi.ClientRestore, Client: true}, now); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p testPKI) issueServer(t *testing.T) pki.Pair {
	t.Helper()
	s, err := pki.Issue(p.ca, pki.Leaf{CommonName: "db", DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeTLSDir(t *testing.T, dir string, ca, server pki.Pair) {
	t.Helper()
	writeTestFile(t, filepath.Join(dir, agentapi.TLSCertFile), string(server.CertPEM))
	writeTestFile(t, filepath.Join(dir, agentapi.TLSKeyFile), string(server.KeyPEM))
	writeTestFile(t, filepath.Join(dir, agentapi.TLSCAFile), string(ca.CertPEM))
}

// httpsClient trusts the test CA only and presents client (none when nil).
func (p testPKI) httpsClient(t *testing.T, client *pki.Pair) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.ca.CertPEM)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if client != nil {
		c, err := tls.X509KeyPair(client.CertPEM, client.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

func (p testPKI) appConnTLS(ctx context.Context, t *testing.T, port int, password, sslmode string) (*pgx.Conn, error) {
	t.Helper()
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, p.ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=%s sslrootcert=%s",
		port, testAppUser, testAppDB, sslmode, caFile))
	if err != nil {
		return nil, err
	}
	cfg.Password = password
	return pgx.ConnectConfig(ctx, cfg)
}

func peerFingerprint(c *pgx.Conn) string {
	tc, ok := c.PgConn().Conn().(*tls.Conn)
	if !ok {
		return ""
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return ""
	}
	return pki.Fingerprint([]byte(pemOf(st.PeerCertificates[0])))
}

// TestTLSEverywhere: with a TLS directory PostgreSQL refuses network clients
// without TLS and serves verify-full clients of the Database's CA; the standby
// streams over verified TLS; the agent serves HTTPS and admits only client
// certificates of the CA, by role; a renewed certificate is served by both
// without a restart.
func TestTLSEverywhere(t *testing.T) {
	root := testRoot(t)
	s := newSecrets(t, root)
	p := newTestPKI(t)
	tlsDir := filepath.Join(root, "tls")
	writeTLSDir(t, tlsDir, p.ca, p.server)
	ctx := context.Background()
	pPort, sPort := testenv.FreePort(t), testenv.FreePort(t)
	// Secret copies in a directory of their own (memory-backed in a pod).
	// Like /dev/shm: world-writable and sticky.
	shm := filepath.Join(root, "shm")
	if err := os.Mkdir(shm, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shm, 0o1777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	secretDir := filepath.Join(shm, "postgres-operator")
	withTLS := func(c *Config) { c.TLSDir = tlsDir; c.SecretDir = secretDir }
	primary := startInstanceWith(t, s, "primary", "db-0", pPort, pPort, withTLS)
	base := "https://" + primary.agent.Addr().String()
	operator := agentapi.NewClient(p.httpsClient(t, &p.operator), "")

	waitUntil(t, 60*time.Second, "a verify-full login", func() error {
		c, err := p.appConnTLS(ctx, t, pPort, s.appPassword, "verify-full")
		if err != nil {
			return err
		}
		return c.Close(ctx)
	})

	t.Run("the key and the passfile are copied only into the secret directory", func(t *testing.T) {
		for _, f := range []string{"server.key", "server.crt", "ca.crt", "pgpass"} {
			st, err := os.Stat(filepath.Join(secretDir, f))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("%s has mode %v, want 0600", f, st.Mode().Perm())
			}
			if _, err := os.Stat(filepath.Join(primary.cfg.RunDir, f)); err == nil {
				t.Errorf("%s also in the run directory", f)
			}
		}
		if st, err := os.Stat(secretDir); err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("secret directory: %v %v", st.Mode(), err)
		}
	})

	t.Run("a network connection without TLS is refused", func(t *testing.T) {
		c, err := appConn(ctx, pPort, s.appPassword, testAppDB) // sslmode=disable
		if err == nil {
			c.Close(ctx)
			t.Fatal("a connection without TLS was accepted")
		}
	})

	t.Run("the agent admits only client certificates of the Database's CA", func(t *testing.T) {
		if _, err := agentapi.NewClient(p.httpsClient(t, nil), s.token).GetStatus(ctx, base); err == nil {
			t.Error("status without a client certificate (but with the token) was served")
		}
		if _, err := agentapi.NewClient(p.httpsClient(t, &p.restore), "").GetStatus(ctx, base); err == nil {
			t.Error("status with the restore Job's certificate was served")
		}
		other := newTestPKI(t)
		if _, err := agentapi.NewClient(p.httpsClient(t, &other.operator), "").GetStatus(ctx, base); err == nil {
			t.Error("status with an operator certificate of another CA was served")
		}
		if code, _ := get("http://"+primary.agent.Addr().String()+agentapi.PathStatus, s.token); code == 200 {
			t.Error("the agent answered plain HTTP")
		}
		if st, err := operator.GetStatus(ctx, base); err != nil || st.Role != agentapi.RolePrimary {
			t.Fatalf("status with the operator's certificate: %+v %v", st, err)
		}
		resp, err := p.httpsClient(t, nil).Get(base + agentapi.PathHealthz)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("the probe without a client certificate: %v %v", resp, err)
		} else {
			resp.Body.Close()
		}
	})

	// The slot the operator would create for the standby.
	if err := operator.SetSlots(ctx, base, []string{agentapi.SlotName("db-1")}); err != nil {
		t.Fatalf("setting slots with the operator's certificate: %v", err)
	}
	standby := startInstanceWith(t, s, "standby", "db-1", sPort, pPort, withTLS)
	t.Run("the standby streams over verified TLS", func(t *testing.T) {
		waitUntil(t, 90*time.Second, "the standby to stream", func() error {
			st, err := operator.GetStatus(ctx, "https://"+standby.agent.Addr().String())
			if err != nil {
				return err
			}
			if st.WALReceiverStatus != "streaming" {
				return fmt.Errorf("receiver %q", st.WALReceiverStatus)
			}
			return nil
		})
		c, err := primary.agent.connect(ctx, "postgres")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		var ssl bool
		if err := c.QueryRow(ctx, `SELECT s.ssl FROM pg_catalog.pg_stat_replication r JOIN pg_catalog.pg_stat_ssl s USING (pid)
			WHERE r.application_name = 'db-1'`).Scan(&ssl); err != nil || !ssl {
			t.Errorf("replication connection ssl = %v (%v)", ssl, err)
		}
		b, err := os.ReadFile(filepath.Join(standby.cfg.PGData, operatorConfFile))
		if err != nil {
			t.Fatal(err)
		}
		if !contains(string(b), "sslmode=verify-full") {
			t.Errorf("primary_conninfo does not verify the primary:\n%s", b)
		}
		for _, f := range []string{standby.agent.serverKeyPath(), standby.agent.caPath()} {
			if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v (%v), want 0600", f, st.Mode().Perm(), err)
			}
		}
	})

	t.Run("a renewed certificate is served without a restart", func(t *testing.T) {
		pid := primary.agent.view().Postmaster
		renewed := p.issueServer(t)
		writeTLSDir(t, tlsDir, p.ca, renewed)
		want := pki.Fingerprint(renewed.CertPEM)
		waitUntil(t, 30*time.Second, "PostgreSQL and the agent to serve the renewed certificate", func() error {
			c, err := p.appConnTLS(ctx, t, pPort, s.appPassword, "verify-full")
			if err != nil {
				return err
			}
			got := peerFingerprint(c)
			c.Close(ctx)
			if got != want {
				return fmt.Errorf("PostgreSQL serves %s", got)
			}
			conn, err := tls.Dial("tcp", primary.agent.Addr().String(), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // reading the served certificate only
			if err != nil {
				return err
			}
			defer conn.Close()
			if got := pki.Fingerprint([]byte(pemOf(conn.ConnectionState().PeerCertificates[0]))); got != want {
				return fmt.Errorf("the agent serves %s", got)
			}
			return nil
		})
		if now := primary.agent.view().Postmaster; now != pid {
			t.Errorf("PostgreSQL restarted (pid %d → %d) for a renewed certificate", pid, now)
		}
	})
}

func pemOf(c *x509.Certificate) string {
	return "-----BEGIN CERTIFICATE-----\n" + base64Lines(c.Raw) + "-----END CERTIFICATE-----\n"
}

func base64Lines(b []byte) string {
	s := base64.StdEncoding.EncodeToString(b)
	out := ""
	for len(s) > 64 {
		out += s[:64] + "\n"
		s = s[64:]
	}
	return out + s + "\n"
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// The agent's own connections to other instances (pgx: the rewind source
// check) verify the peer like libpq's (primary_conninfo, pg_rewind), without
// the libpq-only "no client certificate" file pgx cannot read.
func TestPeerConninfoParsesForTheAgentsOwnConnections(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("ns/db", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{TLSDir: dir, RunDir: dir}}
	if err := os.WriteFile(a.caPath(), ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(strings.Join(append([]string{"host=db-1.db-hl", "port=5432", "user=streaming_replica"}, a.sslVerify()...), " "))
	if err != nil {
		t.Fatalf("pgx refuses the peer conninfo: %v", err)
	}
	if cfg.TLSConfig == nil || cfg.TLSConfig.ServerName != "db-1.db-hl" || cfg.TLSConfig.InsecureSkipVerify && cfg.TLSConfig.VerifyPeerCertificate == nil {
		t.Errorf("TLS not verified: %+v", cfg.TLSConfig)
	}
}
