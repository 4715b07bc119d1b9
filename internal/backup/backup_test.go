package backup

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	databasev1 "github.com/example/postgres-operator/api/v1"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/instance"
	"github.com/example/postgres-operator/internal/objectstore"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/example/postgres-operator/internal/testenv"
)

// The tests back up and restore a real PostgreSQL (run by the instance agent, as in
// the pods) to a directory and to a real S3-compatible server (versitygw).

type pg struct {
	port     int
	password string
	passfile string
	root     string
	bins     postgres.Binaries
	agent    *instance.Agent
}

func startPostgres(t *testing.T) *pg {
	t.Helper()
	bins, err := postgres.FindBinaries("")
	if err != nil {
		t.Skipf("no PostgreSQL binaries: %v", err)
	}
	root, err := os.MkdirTemp("", "backup-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	p := &pg{port: testenv.FreePort(t), password: "app-password-1", root: root, bins: bins}
	files := map[string]string{
		"credentials/username": "appuser", "credentials/password": p.password, "credentials/database": "appdb",
		"internal/replication-password": "r", "internal/agent-token": "t",
	}
	for name, v := range files {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(name)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "db"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	logs := io.Discard
	if os.Getenv("TEST_VERBOSE") != "" {
		logs = os.Stderr
	}
	agent := instance.NewAgent(instance.Config{
		AppUser: "appuser", AppDatabase: "appdb",
		PGData: filepath.Join(root, "db", "data", "pgdata"), CredentialsDir: filepath.Join(root, "credentials"),
		InternalDir: filepath.Join(root, "internal"), RunDir: filepath.Join(root, "db", "run"), PodName: "db-0",
		Port: p.port, AgentAddress: "127.0.0.1", ListenAddresses: "127.0.0.1",
		Log: slog.New(slog.NewTextHandler(logs, nil)),
	})
	p.agent = agent
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Logf("agent: %v", err)
		}
	})
	conn, err := connFromFiles(filepath.Join(root, "credentials"), filepath.Join(root, "client"), "127.0.0.1", fmt.Sprint(p.port))
	if err != nil {
		t.Fatal(err)
	}
	p.passfile = conn.Passfile
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := p.connect(context.Background())
		if err == nil {
			c.Close(context.Background())
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres did not start: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = http.DefaultClient
	return p
}

func (p *pg) conn() Conn {
	return Conn{Host: "127.0.0.1", Port: fmt.Sprint(p.port), User: "appuser", Database: "appdb", Passfile: p.passfile}
}

func (p *pg) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=appuser dbname=appdb sslmode=disable", p.port))
	if err != nil {
		return nil, err
	}
	cfg.Password = p.password
	return pgx.ConnectConfig(ctx, cfg)
}

func (p *pg) exec(t *testing.T, sql string) {
	t.Helper()
	c, err := p.connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// seed creates pgbench's tables and a table of many types.
func (p *pg) seed(t *testing.T) {
	t.Helper()
	cmd := exec.Command(filepath.Join(p.bins.Dir, "pgbench"), "-i", "-s", "2", "-q", "--no-vacuum")
	cmd.Env = append(os.Environ(), p.conn().env()...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	p.exec(t, `CREATE TABLE kinds (
		id serial PRIMARY KEY, doc jsonb, blob bytea, amount numeric(20,6), at timestamptz,
		tags text[], big text, uid uuid DEFAULT gen_random_uuid());
		INSERT INTO kinds (doc, blob, amount, at, tags, big)
		SELECT jsonb_build_object('i', i, 'nested', jsonb_build_array(i, 'x')), decode(md5(i::text), 'hex'),
		       i * 1.000001, '2026-01-01'::timestamptz + i * interval '1 minute', ARRAY['a' || i, 'b'],
		       repeat(md5(i::text), 50)
		FROM generate_series(1, 2000) i`)
}

var tables = []string{"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history", "kinds"}

// checksums returns a per-table digest of every row.
func (p *pg) checksums(t *testing.T) map[string]string {
	t.Helper()
	c, err := p.connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	out := map[string]string{}
	for _, tbl := range tables {
		var sum *string
		q := fmt.Sprintf("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM %s t", tbl)
		if err := c.QueryRow(context.Background(), q).Scan(&sum); err != nil {
			out[tbl] = "error: " + err.Error()
			continue
		}
		if sum == nil {
			out[tbl] = "empty"
		} else {
			out[tbl] = *sum
		}
	}
	return out
}

func equalSums(a, b map[string]string) string {
	var diff []string
	for k, v := range a {
		if b[k] != v {
			diff = append(diff, fmt.Sprintf("%s: %s != %s", k, v, b[k]))
		}
	}
	return strings.Join(diff, "; ")
}

// startS3 runs a real S3 server and returns a store on a fresh bucket.
func startS3(t *testing.T) *objectstore.S3 {
	t.Helper()
	store, _ := testenv.StartS3(t, "backups")
	return store
}

func exists(store objectstore.Store, key string) bool {
	rc, err := store.Get(context.Background(), key)
	if err != nil {
		return false
	}
	rc.Close()
	return true
}

func TestBackupAndRestore(t *testing.T) {
	p := startPostgres(t)
	p.seed(t)
	original := p.checksums(t)
	ctx := context.Background()

	targets := []struct {
		name  string
		store func(t *testing.T) objectstore.Store
	}{
		{"directory", func(t *testing.T) objectstore.Store { return objectstore.Dir{Root: t.TempDir()} }},
		{"s3", func(t *testing.T) objectstore.Store { return startS3(t) }},
	}
	for _, target := range targets {
		t.Run(target.name, func(t *testing.T) {
			store := target.store(t)
			key := "ns/db/backup-1.dump.zst"
			m, err := Run(ctx, Options{PgDump: p.bins.PgDump, PgRestore: p.bins.PgRestore, Conn: p.conn(), Store: store, Key: key, Location: "test://" + key})
			if err != nil {
				t.Fatalf("backup: %v", err)
			}
			if m.SizeBytes <= 0 || m.UncompressedSize <= m.SizeBytes || len(m.SHA256) != 64 || !strings.HasPrefix(m.ServerVersion, "15") || m.Format != Format {
				t.Errorf("manifest = %+v", m)
			}
			stored, err := ReadManifest(ctx, store, key)
			if err != nil || stored.SHA256 != m.SHA256 {
				t.Fatalf("stored manifest %+v, %v", stored, err)
			}

			t.Run("round trip restores every table exactly", func(t *testing.T) {
				p.exec(t, "DELETE FROM pgbench_accounts WHERE aid % 3 = 0; UPDATE kinds SET doc = '{}'; DROP TABLE pgbench_history")
				if _, err := p.restore(ctx, store, key, target.name, 2); err != nil {
					t.Fatalf("restore: %v", err)
				}
				if d := equalSums(original, p.checksums(t)); d != "" {
					t.Errorf("tables differ after restore: %s", d)
				}
			})
		})
	}
}

// restore runs the Job's side of a restore against the test's agent.
func (p *pg) restore(ctx context.Context, store objectstore.Store, key, id string, jobs int) (*agentapi.RestoreResult, error) {
	return Restore(ctx, RestoreOptions{Store: store, Key: key, Agent: agentapi.NewClient(&http.Client{}, "t"),
		AgentURL: "http://" + p.agent.Addr().String(),
		Request:  agentapi.RestoreRequest{ID: id, Jobs: jobs, KeepPreviousSeconds: 3600, SessionTimeoutSeconds: 10}})
}

// super runs statements as the superuser over the agent's socket, in database db.
func (p *pg) super(t *testing.T, db, sql string) {
	t.Helper()
	c, err := p.superConnect(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (p *pg) superConnect(ctx context.Context, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Database = filepath.Join(p.root, "db", "run"), uint16(p.port), "postgres", db
	return pgx.ConnectConfig(ctx, cfg)
}

func TestCorruptedOrTruncatedArtifactsAreRefusedAndChangeNothing(t *testing.T) {
	p := startPostgres(t)
	p.seed(t)
	ctx := context.Background()
	root := t.TempDir()
	store := objectstore.Dir{Root: root}
	key := "b.dump.zst"
	if _, err := Run(ctx, Options{PgDump: p.bins.PgDump, PgRestore: p.bins.PgRestore, Conn: p.conn(), Store: store, Key: key}); err != nil {
		t.Fatal(err)
	}
	pristine, err := os.ReadFile(filepath.Join(root, key))
	if err != nil {
		t.Fatal(err)
	}
	p.exec(t, "DELETE FROM pgbench_accounts WHERE aid > 100")
	before := p.checksums(t)
	for name, damage := range map[string]func([]byte) []byte{
		"flipped byte": func(b []byte) []byte { c := bytes.Clone(b); c[len(c)/2] ^= 0xff; return c },
		"truncated":    func(b []byte) []byte { return bytes.Clone(b[:len(b)*2/3]) },
	} {
		for _, jobs := range []int{1, 2} {
			t.Run(fmt.Sprintf("%s, %d jobs", name, jobs), func(t *testing.T) {
				if err := os.WriteFile(filepath.Join(root, key), damage(pristine), 0o640); err != nil {
					t.Fatal(err)
				}
				_, err := p.restore(ctx, store, key, fmt.Sprintf("%s%d", strings.ReplaceAll(name, " ", ""), jobs), jobs)
				if err == nil || (!strings.Contains(err.Error(), "checksum mismatch") && !strings.Contains(err.Error(), "corrupted or truncated")) {
					t.Fatalf("restore of a damaged artifact: %v", err)
				}
				if d := equalSums(before, p.checksums(t)); d != "" {
					t.Errorf("the database changed: %s", d)
				}
			})
		}
	}
}

func TestAFailedDumpLeavesNoArtifact(t *testing.T) {
	p := startPostgres(t)
	ctx := context.Background()
	stores := map[string]objectstore.Store{"directory": objectstore.Dir{Root: t.TempDir()}, "s3": startS3(t)}
	for name, store := range stores {
		t.Run(name, func(t *testing.T) {
			conn := p.conn()
			conn.Database = "no_such_database"
			_, err := Run(ctx, Options{PgDump: p.bins.PgDump, PgRestore: p.bins.PgRestore, Conn: conn, Store: store, Key: "x.dump.zst"})
			if err == nil || !strings.Contains(err.Error(), "pg_dump failed") {
				t.Fatalf("backup of a missing database: %v", err)
			}
			if exists(store, "x.dump.zst") || exists(store, "x.dump.zst"+ManifestSuffix) {
				t.Error("a failed backup left an artifact or a manifest")
			}
			if d, ok := store.(objectstore.Dir); ok {
				entries, _ := os.ReadDir(d.Root)
				if len(entries) != 0 {
					t.Errorf("files left: %v", entries)
				}
			}
		})
	}
}

func TestParseLocation(t *testing.T) {
	for in, want := range map[string]string{
		"s3://my-bucket/a/b/":   "s3 my-bucket a/b",
		"s3://my-bucket":        "s3 my-bucket ",
		"pvc://backups/x":       "pvc backups x",
		"ftp://x/y":             "error",
		"s3://B/x":              "error",
		"pvc://Bad_Claim/x":     "error",
		"s3://my-bucket/../etc": "s3 my-bucket etc",
	} {
		l, err := objectstore.ParseLocation(in)
		got := "error"
		if err == nil {
			got = l.Scheme + " " + l.Bucket + " " + l.Prefix
		}
		if got != want {
			t.Errorf("ParseLocation(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestJobNamesAndLabelValuesFitForAnyObjectName(t *testing.T) {
	long := strings.Repeat("a", 62)
	longer := strings.Repeat("a", 61) + "b"
	names := map[string]bool{}
	for _, n := range []string{"short", long, longer, strings.Repeat("x", 253)} {
		for _, suffix := range []string{"backup", "delete", "restore"} {
			j := JobName(n, suffix)
			if len(j) > 63 || !strings.HasSuffix(j, "-"+suffix) || names[j] {
				t.Errorf("JobName(%d chars, %s) = %q (len %d, duplicate %v)", len(n), suffix, j, len(j), names[j])
			}
			names[j] = true
		}
		if v := LabelValue(n); len(v) > 63 || (len(n) <= 63 && v != n) {
			t.Errorf("LabelValue(%d chars) = %q", len(n), v)
		}
	}
	if JobName("short", "backup") != "short-backup" {
		t.Errorf("short names are kept as they are: %q", JobName("short", "backup"))
	}
	if LabelValue(strings.Repeat("y", 80)) == LabelValue(strings.Repeat("y", 79)+"z") {
		t.Error("two long names gave the same label value")
	}
}

// Backup and restore Jobs meet the restricted Pod Security Standard, write
// nothing outside their volumes, have bounded resources, and a restore Job
// against an agent that serves TLS mounts only its client certificate.
func TestJobsAreHardenedAndRestoreJobsUseTheClientCertificate(t *testing.T) {
	loc, err := objectstore.ParseLocation("pvc://claim")
	if err != nil {
		t.Fatal(err)
	}
	db := &databasev1.Database{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns"}}
	for _, s := range []JobSpec{
		{Name: "b", Namespace: "ns", Action: "run", Image: "postgres:15", Target: Target{Location: loc}, Database: db},
		{Name: "r", Namespace: "ns", Action: "restore", Image: "postgres:15", Target: Target{Location: loc},
			Restore: &RestoreJob{AgentURL: "https://db-0.db-hl.ns.svc.cluster.local:8000", TLSSecret: "db-restore-tls", InternalSecret: "db-internal"}},
	} {
		job := BuildJob(s)
		spec := job.Spec.Template.Spec
		if spec.SecurityContext.SeccompProfile == nil || spec.SecurityContext.RunAsNonRoot == nil || !*spec.SecurityContext.RunAsNonRoot {
			t.Errorf("%s: pod security context %+v", s.Name, spec.SecurityContext)
		}
		for _, c := range append(spec.InitContainers, spec.Containers...) {
			sc := c.SecurityContext
			if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
				t.Errorf("%s/%s: security context %+v", s.Name, c.Name, sc)
			}
			if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
				t.Errorf("%s/%s: no memory request or limit", s.Name, c.Name)
			}
		}
		if args := strings.Join(spec.Containers[0].Command, " "); !strings.Contains(args, "--run-dir="+agentapi.PodSecretDir) {
			t.Errorf("%s: the passfile is not in memory: %s", s.Name, args)
		}
		if s.Restore == nil {
			continue
		}
		args := strings.Join(spec.Containers[0].Command, " ")
		if !strings.Contains(args, "--agent-tls-dir="+AgentTLSDir) || strings.Contains(args, "--agent-token-dir") {
			t.Errorf("restore command %s", args)
		}
		for _, v := range spec.Volumes {
			if v.Secret != nil && v.Secret.SecretName != "db-restore-tls" {
				t.Errorf("restore Job mounts Secret %s", v.Secret.SecretName)
			}
		}
	}
}
