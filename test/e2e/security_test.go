//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"
)

// The security gate: TLS is required and verifiable with the Secret's CA, the
// agent admits only the operator's client certificate, probes cost no
// backend, a canary password is found nowhere it should not be, and the
// Secret-driven escalation to superuser fails. The namespace enforces the
// restricted Pod Security Standard (as every test's does).
func TestSecurityGate(t *testing.T) {
	c := newCluster(t)
	c.mustApply(myDatabase)
	c.waitPhase("my-database", "Ready", readyTimeout)
	c.serviceAnswers("my-database-0")
	host := "my-database." + c.ns + ".svc.cluster.local"

	// TLS: a connection without it is refused; verify-full with the Secret's
	// ca.crt succeeds and is encrypted.
	out, err := c.kubectl("exec", "my-database-0", "-c", "postgres", "--", "sh", "-c",
		`PGSSLMODE=disable PGCONNECT_TIMEOUT=5 psql "host=`+host+` user=admin dbname=mydb password=$(cat /etc/postgres-operator/credentials/password)" -Atc "SELECT 1"`)
	if err == nil || !strings.Contains(out, "no encryption") {
		t.Errorf("a connection without TLS was not refused: %v %s", err, out)
	}
	if got, err := c.psql("my-database-0", true, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"); err != nil || strings.TrimSpace(got) != "t" {
		t.Errorf("verify-full connection with ca.crt: %v %q", err, got)
	}
	// A client that trusts another CA refuses the server.
	out, err = c.kubectl("exec", "my-database-0", "-c", "postgres", "--", "sh", "-c",
		`PGSSLROOTCERT=/etc/ssl/certs/ca-certificates.crt PGCONNECT_TIMEOUT=5 psql "$(cat /etc/postgres-operator/credentials/uri)" -Atc "SELECT 1"`)
	if err == nil {
		t.Errorf("verify-full with another CA's bundle connected: %s", out)
	}
	// The standby streams over TLS.
	c.must("scale", "database/my-database", "--replicas=2")
	c.eventually(readyTimeout, "a standby streaming over TLS", func() string {
		out, err := c.kubectl("exec", "my-database-0", "-c", "postgres", "--", "psql", "-h", "/controller/run", "-U", "postgres", "-Atc",
			"SELECT r.application_name || ':' || s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)")
		if strings.TrimSpace(out) != "my-database-1:true" {
			return fmt.Sprintf("%v %s", err, out)
		}
		return ""
	})

	// The agent: /status without a client certificate is refused; probes are
	// answered without one, and 200 of them open no backend.
	ip := c.must("get", "pod", "my-database-0", "-o", "jsonpath={.status.podIP}")
	base := "https://" + net.JoinHostPort(ip, "8000")
	insecure := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // #nosec G402 -- the test probes as an anonymous client
	get := func(path string) (int, error) {
		resp, err := insecure.Get(base + path)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	if code, err := get("/status"); err != nil || code != http.StatusUnauthorized {
		t.Errorf("/status without a client certificate: %d %v", code, err)
	}
	// Plain HTTP gets at most Go's "HTTP request to an HTTPS server" answer.
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + net.JoinHostPort(ip, "8000") + "/status"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("the agent answered plain HTTP with %s", resp.Status)
		}
	}
	sessions := func() int {
		out, err := c.psql("my-database-0", false, "SELECT sum(sessions) FROM pg_stat_database")
		n, perr := strconv.Atoi(strings.TrimSpace(out))
		if err != nil || perr != nil {
			t.Fatalf("counting sessions: %v %v %s", err, perr, out)
		}
		return n
	}
	before := sessions()
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for g := 0; g < 20; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				if code, err := get([]string{"/readyz", "/healthz", "/startupz"}[i%3]); err != nil || code != http.StatusOK {
					mu.Lock()
					failed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	after := sessions()
	t.Logf("200 anonymous probe requests: %d failed, sessions %d → %d", failed, before, after)
	if failed > 0 {
		t.Errorf("%d of 200 probe requests failed", failed)
	}
	// The operator's status reads and the count queries themselves open a few
	// sessions meanwhile; one per probe would be 200.
	if after-before > 20 {
		t.Errorf("200 probe requests opened %d sessions", after-before)
	}

	// Rotation: the server certificate's Secret deleted, a new certificate from
	// the same CA is issued, and PostgreSQL and the agent serve it without a
	// restart, while the Database stays Ready and clients keep verifying it.
	c.waitPhase("my-database", "Ready", readyTimeout) // the scale-up settled
	pgAddr, agentAddr := net.JoinHostPort(ip, "5432"), net.JoinHostPort(ip, "8000")
	oldPG, err1 := servedSerial(pgAddr, true)
	oldAgent, err2 := servedSerial(agentAddr, false)
	if err1 != nil || err2 != nil {
		t.Fatalf("reading the served certificates: %v %v", err1, err2)
	}
	restarts := c.jsonpath("pod/my-database-0", "{.status.containerStatuses[0].restartCount}")
	c.must("delete", "secret", "my-database-server-tls")
	c.eventually(4*time.Minute, "the reissued certificate to be served", func() string {
		if phase := c.jsonpath("database/my-database", "{.status.phase}"); phase != "Ready" {
			t.Errorf("phase %s during the rotation", phase)
		}
		pg, err1 := servedSerial(pgAddr, true)
		agent, err2 := servedSerial(agentAddr, false)
		if err1 != nil || err2 != nil || pg == oldPG || agent == oldAgent {
			return fmt.Sprintf("PostgreSQL serves %s (was %s), the agent %s (was %s): %v %v", pg, oldPG, agent, oldAgent, err1, err2)
		}
		return ""
	})
	if got := c.jsonpath("pod/my-database-0", "{.status.containerStatuses[0].restartCount}"); got != restarts {
		t.Errorf("the instance restarted for the rotation: %s → %s restarts", restarts, got)
	}
	if _, err := c.psql("my-database-0", true, "SELECT 1"); err != nil {
		t.Errorf("verify-full after the rotation: %v", err)
	}

	// The operator's metrics: HTTPS, only for a token allowed to GET /metrics.
	opIP, err := run(context.Background(), "", "get", "pod", "-n", operatorNamespace, "-l", "control-plane=controller-manager",
		"-o", "jsonpath={.items[0].status.podIP}")
	if err != nil {
		t.Fatal(err)
	}
	metricsURL := "https://" + net.JoinHostPort(strings.TrimSpace(opIP), "8443") + "/metrics"
	metrics := func(token string) int {
		req, _ := http.NewRequest(http.MethodGet, metricsURL, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := insecure.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := metrics(""); code != http.StatusUnauthorized && code != http.StatusForbidden {
		t.Errorf("anonymous metrics request: %d", code)
	}
	c.must("create", "serviceaccount", "scraper")
	crb := c.ns + "-scraper"
	if out, err := run(context.Background(), "", "create", "clusterrolebinding", crb,
		"--clusterrole=postgres-operator-metrics-reader", "--serviceaccount="+c.ns+":scraper"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	t.Cleanup(func() { _, _ = run(context.Background(), "", "delete", "clusterrolebinding", crb) })
	token := c.must("create", "token", "scraper")
	c.eventually(time.Minute, "metrics for the metrics-reader token", func() string {
		if code := metrics(token); code != http.StatusOK {
			return fmt.Sprintf("status %d", code)
		}
		return ""
	})

	// The Secret-driven escalation: whoever can edit the credentials Secret
	// names the maintenance database and prepares traps for the superuser in the
	// application database. The agent takes names from the spec and pins
	// search_path: the application role stays unprivileged.
	c.must("patch", "secret", "my-database-credentials", "--type", "merge", "-p", `{"stringData":{"database":"postgres","username":"postgres"}}`)
	if _, err := c.psql("my-database-0", true, `
CREATE TABLE public.postgres_operator_heartbeat (id int PRIMARY KEY, at timestamptz);
CREATE FUNCTION public.escalate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'ALTER ROLE admin SUPERUSER'; RETURN NEW; END $$;
CREATE TRIGGER escalate BEFORE INSERT OR UPDATE ON public.postgres_operator_heartbeat FOR EACH ROW EXECUTE FUNCTION public.escalate();
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'ALTER ROLE admin SUPERUSER'; RETURN clock_timestamp(); END $$;
CREATE FUNCTION public.txid_current() RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'ALTER ROLE admin SUPERUSER'; RETURN 1; END $$;
CREATE FUNCTION public.pg_current_wal_lsn() RETURNS pg_lsn LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'ALTER ROLE admin SUPERUSER'; RETURN '0/0'; END $$;`); err != nil {
		t.Fatalf("preparing the traps as the application role: %v", err)
	}
	// Several status reads (each with the write check), probes and Secret
	// polls, then a failover: the new primary's agent runs its start-up and
	// promotion statements in the trapped database.
	time.Sleep(15 * time.Second)
	c.must("delete", "pod", "my-database-0")
	c.waitNewPrimary("my-database", "my-database-0", 3*time.Minute)
	c.waitPhase("my-database", "Ready", readyTimeout)
	for _, q := range []string{
		"SELECT rolsuper FROM pg_roles WHERE rolname = 'admin'",
		"SELECT pg_get_userbyid(datdba) = 'admin' FROM pg_database WHERE datname = 'postgres'",
	} {
		if got, err := c.psql("my-database-0", false, q); err != nil || strings.TrimSpace(got) != "f" {
			t.Errorf("%s: %q %v", q, got, err)
		}
	}

	// A canary password, set by a rotation through the Secret, appears nowhere
	// but in the Secret.
	canary := "Canary-" + strings.ToLower(c.ns[len(c.ns)-6:]) + "-Zq81"
	c.must("patch", "secret", "my-database-credentials", "--type", "merge", "-p",
		`{"stringData":{"password":"`+canary+`","database":"mydb","username":"admin"}}`)
	c.eventually(3*time.Minute, "the canary password to log in", func() string {
		out, err := c.kubectl("exec", "my-database-0", "-c", "postgres", "--", "sh", "-c",
			`PGSSLROOTCERT=/etc/postgres-operator/credentials/ca.crt psql "host=`+host+` user=admin dbname=mydb password=`+canary+` sslmode=verify-full" -Atc "SELECT 1"`)
		if err != nil {
			return fmt.Sprintf("%v %s", err, out)
		}
		return ""
	})
	// An encrypted backup and its restore handle the credentials too.
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	c.must("create", "secret", "generic", "backup-key", "--from-literal=identity="+id.String())
	primary := c.primary("my-database")
	if _, err := c.psql(primary, true, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (1), (2), (3)"); err != nil {
		t.Fatal(err)
	}
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Backup
metadata: {name: canary-backup}
spec: {databaseRef: {name: my-database}, encryption: {secretName: backup-key}}
`)
	c.waitCompleted("backup/canary-backup", 5*time.Minute)
	if _, err := c.psql(primary, true, "INSERT INTO kept VALUES (4)"); err != nil {
		t.Fatal(err)
	}
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Restore
metadata: {name: canary-restore}
spec: {databaseRef: {name: my-database}, backupRef: {name: canary-backup}, keepPreviousFor: 0s}
`)
	c.waitCompleted("restore/canary-restore", 5*time.Minute)
	if got, err := c.psql(primary, true, "SELECT count(*) FROM kept"); err != nil || strings.TrimSpace(got) != "3" {
		t.Errorf("rows after restoring the encrypted backup: %q %v", got, err)
	}
	places := map[string]string{}
	add := func(what string, args ...string) {
		out, err := run(context.Background(), "", args...)
		if err != nil {
			t.Errorf("collecting %s: %v", what, err)
		}
		places[what] = out
	}
	add("operator logs", "logs", "-n", operatorNamespace, "deploy/postgres-operator-controller-manager", "--tail=-1")
	for _, p := range strings.Fields(c.must("get", "pods", "-o", "jsonpath={.items[*].metadata.name}")) {
		add("logs of "+p, "-n", c.ns, "logs", p, "--all-containers", "--tail=-1")
	}
	add("events", "get", "events", "-A", "-o", "yaml")
	add("databases, backups, restores", "get", "databases,backups,restores", "-A", "-o", "yaml")
	add("pods and Jobs (args, env)", "-n", c.ns, "get", "pods,jobs,statefulsets", "-o", "yaml")
	stmts, err := c.psql("my-database-0", false, "SELECT string_agg(query, E'\\n') FROM pg_stat_activity")
	if err != nil {
		t.Errorf("pg_stat_activity: %v", err)
	}
	places["pg_stat_activity"] = stmts
	logs, err := c.kubectl("exec", "my-database-0", "-c", "postgres", "--", "sh", "-c",
		`cat "$PGDATA"/log/* 2>/dev/null; true`)
	if err != nil {
		t.Errorf("PostgreSQL log files: %v", err)
	}
	places["PostgreSQL log files"] = logs
	b64 := base64.StdEncoding.EncodeToString([]byte(canary))
	for what, text := range places {
		if n := strings.Count(text, canary); n > 0 {
			t.Errorf("the canary password appears %d times in %s", n, what)
		}
		if strings.Contains(what, "pods") && strings.Contains(text, b64) {
			t.Errorf("the canary password appears base64-encoded in %s", what)
		}
	}
	t.Logf("canary searched in %d places", len(places))
}

// servedSerial returns the serial number of the certificate served at addr:
// PostgreSQL's after an SSLRequest, or the agent's HTTPS one.
func servedSerial(addr string, postgres bool) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if postgres {
		// SSLRequest: length 8, code 80877103; the server answers 'S'.
		if _, err := conn.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
			return "", err
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(conn, b); err != nil || b[0] != 'S' {
			return "", fmt.Errorf("no TLS offered: %q %w", b, err)
		}
	}
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true}) // #nosec G402 -- only reads which certificate is served
	if err := tc.Handshake(); err != nil {
		return "", err
	}
	return tc.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

// waitCompleted waits for a Backup or Restore to reach phase Completed, saying
// what its Ready condition reports meanwhile.
func (c *cluster) waitCompleted(obj string, timeout time.Duration) {
	c.t.Helper()
	c.eventually(timeout, obj+" to complete", func() string {
		if p := c.jsonpath(obj, "{.status.phase}"); p != "Completed" {
			return "phase " + p + ": " + c.jsonpath(obj, `{.status.conditions[?(@.type=="Ready")].message}`)
		}
		return ""
	})
}
