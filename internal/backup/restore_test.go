package backup

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/objectstore"
)

// These tests restore real artifacts into a real PostgreSQL through its agent,
// the way the restore Job does, and check the database, not just the answer.

// query returns the first column of each row of sql, run as the superuser in db.
func (p *pg) query(t *testing.T, db, sql string) []string {
	t.Helper()
	c, err := p.superConnect(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	rows, err := c.Query(context.Background(), sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var v any
		err := r.Scan(&v)
		return fmt.Sprint(v), err
	})
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

func (p *pg) backup(t *testing.T, store objectstore.Store, key string) *Manifest {
	t.Helper()
	m, err := Run(context.Background(), Options{PgDump: p.bins.PgDump, PgRestore: p.bins.PgRestore, Conn: p.conn(), Store: store, Key: key})
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	return m
}

// TestRestoreIsExactlyTheDatabaseAtBackupTime: objects created after the backup
// (including ones that depend on dumped objects) are gone, GRANTs and owners are
// as they were, extensions a superuser installed work, and the database's own
// settings and grants carry over; the previous content is kept as a pre-restore
// copy that accepts no connections.
func TestRestoreIsExactlyTheDatabaseAtBackupTime(t *testing.T) {
	p := startPostgres(t)
	ctx := context.Background()
	p.super(t, "postgres", `CREATE ROLE reader NOLOGIN; CREATE ROLE other_owner NOLOGIN;
		ALTER DATABASE appdb SET work_mem = '7MB'; GRANT CONNECT ON DATABASE appdb TO reader`)
	p.super(t, "appdb", `CREATE EXTENSION hstore; CREATE EXTENSION postgres_fdw;
		CREATE TABLE public.owned_elsewhere (id int PRIMARY KEY); ALTER TABLE public.owned_elsewhere OWNER TO other_owner;
		GRANT SELECT ON public.owned_elsewhere TO appuser`)
	p.exec(t, `CREATE TABLE items (id int PRIMARY KEY, attrs hstore, name text);
		INSERT INTO items SELECT i, hstore('k', i::text), 'item ' || i FROM generate_series(1, 5000) i;
		GRANT SELECT ON items TO reader;
		CREATE VIEW item_names AS SELECT name FROM items`)
	store := objectstore.Dir{Root: t.TempDir()}
	p.backup(t, store, "exact.dump.zst")
	wantRows := p.query(t, "appdb", "SELECT md5(string_agg(i::text, ',' ORDER BY id)) FROM items i")

	// After the backup: dependent objects, independent ones, lost grants, changed rows.
	p.exec(t, `CREATE VIEW later_view AS SELECT id FROM items;
		CREATE TABLE later_child (item int REFERENCES items(id));
		CREATE TABLE later_table (x int); INSERT INTO later_table VALUES (1);
		REVOKE SELECT ON items FROM reader;
		DELETE FROM items WHERE id > 100`)

	res, err := p.restore(ctx, store, "exact.dump.zst", "exact1", 2)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if res.Jobs != 2 || res.Database != "appdb" || !strings.HasPrefix(res.PreviousDatabase, "appdb"+agentapi.PreRestoreInfix) {
		t.Errorf("result = %+v", res)
	}
	if got := p.query(t, "appdb", "SELECT md5(string_agg(i::text, ',' ORDER BY id)) FROM items i"); got[0] != wantRows[0] {
		t.Errorf("items differ from the backup: %v, want %v", got, wantRows)
	}
	for _, tc := range []struct{ what, sql, want string }{
		{"objects created after the backup are gone", `SELECT count(*) FROM pg_class WHERE relname IN ('later_view', 'later_child', 'later_table')`, "0"},
		{"the view of the backup is back", `SELECT count(*) FROM pg_views WHERE viewname = 'item_names'`, "1"},
		{"the revoked GRANT is back", `SELECT has_table_privilege('reader', 'items', 'SELECT')`, "true"},
		{"owners are as they were", `SELECT tableowner FROM pg_tables WHERE tablename = 'owned_elsewhere'`, "other_owner"},
		{"the application's objects belong to it", `SELECT tableowner FROM pg_tables WHERE tablename = 'items'`, "appuser"},
		{"the superuser's extension works", `SELECT (attrs -> 'k') FROM items WHERE id = 4242`, "4242"},
		{"an untrusted extension is restored", `SELECT count(*) FROM pg_extension WHERE extname = 'postgres_fdw'`, "1"},
		{"the database belongs to the application", `SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'appdb'`, "appuser"},
		{"database settings carry over", `SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = 'appdb'`, "work_mem=7MB"},
		{"database grants carry over", `SELECT has_database_privilege('reader', 'appdb', 'CONNECT')`, "true"},
		{"planner statistics exist", `SELECT count(*) > 0 FROM pg_stats WHERE tablename = 'items'`, "true"},
		{"no scratch database is left", `SELECT count(*) FROM pg_database WHERE datname LIKE 'pgo\_restoring\_%'`, "0"},
	} {
		if got := p.query(t, "appdb", tc.sql); len(got) != 1 || got[0] != tc.want {
			t.Errorf("%s: %s = %v, want %s", tc.what, tc.sql, got, tc.want)
		}
	}
	// The application user can work in the restored database at once.
	p.exec(t, "INSERT INTO items VALUES (9999, NULL, 'after')")

	// The previous content is kept, closed to connections, with its drop time.
	prev := res.PreviousDatabase
	if got := p.query(t, "postgres", fmt.Sprintf(`SELECT datallowconn::text || ' ' || shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = '%s'`, prev)); len(got) != 1 ||
		!strings.HasPrefix(got[0], "false postgres-operator pre-restore copy; dropped after ") {
		t.Errorf("pre-restore copy %s: %v", prev, got)
	}
	p.super(t, "postgres", fmt.Sprintf(`ALTER DATABASE %q WITH ALLOW_CONNECTIONS true`, prev))
	if got := p.query(t, prev, "SELECT count(*) FROM later_table"); got[0] != "1" {
		t.Errorf("the pre-restore copy lost its content: %v", got)
	}
}

// TestRestoreTerminatesBlockingSessionsWithinABound: an idle-in-transaction client
// holding a lock on a restored table neither blocks the restore nor is waited
// for; it is terminated and counted, and readers never see a half-restored table.
func TestRestoreTerminatesBlockingSessionsWithinABound(t *testing.T) {
	p := startPostgres(t)
	p.seed(t)
	ctx := context.Background()
	store := objectstore.Dir{Root: t.TempDir()}
	p.backup(t, store, "busy.dump.zst")
	original := p.checksums(t)
	p.exec(t, "DELETE FROM kinds WHERE id > 10")

	idle, err := p.connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close(context.Background())
	if _, err := idle.Exec(ctx, "BEGIN; LOCK TABLE kinds IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	// Readers during the restore see the old rows or the new, never a mix.
	var stop atomic.Bool
	var badReads atomic.Int64
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for !stop.Load() {
			c, err := p.connect(ctx)
			if err != nil {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			var n int
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if err := c.QueryRow(qctx, "SELECT count(*) FROM pgbench_branches").Scan(&n); err == nil && n != 2 {
				badReads.Add(1)
			}
			cancel()
			c.Close(context.Background())
		}
	}()
	start := time.Now()
	res, err := p.restore(ctx, store, "busy.dump.zst", "busy", 2)
	took := time.Since(start)
	stop.Store(true)
	<-readerDone
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if res.TerminatedSessions < 1 {
		t.Errorf("terminated %d sessions, want the idle transaction's at least", res.TerminatedSessions)
	}
	if took > 60*time.Second {
		t.Errorf("restore took %s with an idle transaction", took)
	}
	if badReads.Load() != 0 {
		t.Errorf("%d reads saw a half-restored table", badReads.Load())
	}
	if _, err := idle.Exec(ctx, "SELECT 1"); err == nil {
		t.Error("the idle transaction survived the swap")
	}
	if d := equalSums(original, p.checksums(t)); d != "" {
		t.Errorf("tables differ after restore: %s", d)
	}
}

// failingStore serves the artifact but breaks the read of it half way, as
// when the restore Job is killed mid-stream.
type failingStore struct {
	objectstore.Store
	gets atomic.Int64
	cut  int64
}

func (f *failingStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := f.Store.Get(ctx, key)
	if err != nil || strings.HasSuffix(key, ManifestSuffix) || f.gets.Add(1) != 1 {
		return rc, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(rc, f.cut), errReader{}), rc}, nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset (job killed)") }

// TestARestoreInterruptedMidwayLeavesTheOldDatabase: the stream breaks half way,
// or the agent receives bytes that do not match the manifest: the application
// database is exactly the old one, nothing of the attempt is left, and the next
// restore works.
func TestARestoreInterruptedMidwayLeavesTheOldDatabase(t *testing.T) {
	p := startPostgres(t)
	p.seed(t)
	ctx := context.Background()
	root := t.TempDir()
	store := objectstore.Dir{Root: root}
	m := p.backup(t, store, "cut.dump.zst")
	original := p.checksums(t)
	p.exec(t, "DELETE FROM pgbench_accounts WHERE aid > 1000; CREATE TABLE after_backup (x int)")
	before := p.checksums(t)
	unchanged := func(t *testing.T) {
		t.Helper()
		// The agent may still be cleaning up after the client gave up (as after
		// a killed Job): wait until it reports no restore.
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, err := agentapi.NewClient(nil, "t").GetStatus(ctx, "http://"+p.agent.Addr().String())
			if err == nil && st.Restoring == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the agent still restores: %+v %v", st, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if d := equalSums(before, p.checksums(t)); d != "" {
			t.Errorf("the database changed: %s", d)
		}
		if got := p.query(t, "appdb", "SELECT count(*) FROM pg_class WHERE relname = 'after_backup'"); got[0] != "1" {
			t.Error("the old database was replaced")
		}
		if got := p.query(t, "postgres", `SELECT count(*) FROM pg_database WHERE datname LIKE 'pgo\_restoring\_%' OR datname LIKE '%\_prerestore\_%'`); got[0] != "0" {
			t.Errorf("%s databases left by the attempt", got[0])
		}
	}
	for _, jobs := range []int{1, 2} {
		t.Run(fmt.Sprintf("stream cut with %d jobs", jobs), func(t *testing.T) {
			fs := &failingStore{Store: store, cut: m.SizeBytes / 2}
			_, err := Restore(ctx, RestoreOptions{Store: fs, Key: "cut.dump.zst", Agent: agentapi.NewClient(&http.Client{}, "t"),
				AgentURL: "http://" + p.agent.Addr().String(), Request: agentapi.RestoreRequest{ID: fmt.Sprintf("cut%d", jobs), Jobs: jobs, KeepPreviousSeconds: 60}})
			if err == nil {
				t.Fatal("a restore whose stream broke succeeded")
			}
			unchanged(t)
		})
	}
	t.Run("bytes that do not match the manifest", func(t *testing.T) {
		pristine, err := os.ReadFile(filepath.Join(root, "cut.dump.zst"))
		if err != nil {
			t.Fatal(err)
		}
		forged := bytes.Clone(pristine)
		forged[len(forged)/2] ^= 0x01
		for _, jobs := range []int{1, 2} {
			_, err := agentapi.NewClient(&http.Client{}, "t").Restore(ctx, "http://"+p.agent.Addr().String(),
				agentapi.RestoreRequest{ID: "forged", SHA256: m.SHA256, UncompressedBytes: m.UncompressedSize, Jobs: jobs}, bytes.NewReader(forged))
			if err == nil || !strings.Contains(err.Error(), "500") {
				t.Fatalf("the agent did not refuse bytes that do not match the manifest (%d jobs): %v", jobs, err)
			}
			unchanged(t)
		}
	})
	t.Run("the next restore works", func(t *testing.T) {
		if _, err := p.restore(ctx, store, "cut.dump.zst", "after", 2); err != nil {
			t.Fatal(err)
		}
		if d := equalSums(original, p.checksums(t)); d != "" {
			t.Errorf("tables differ after restore: %s", d)
		}
	})
}

// TestRestoreOfThousandsOfTables: no single transaction, so the lock table is no
// limit (one transaction ran out of locks at about 1,200 tables).
func TestRestoreOfThousandsOfTables(t *testing.T) {
	p := startPostgres(t)
	ctx := context.Background()
	p.exec(t, `DO $$ BEGIN FOR i IN 1..2000 LOOP
		EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text); INSERT INTO t%s VALUES (1, %L)', i, i, 'v' || i);
		END LOOP; END $$`)
	store := objectstore.Dir{Root: t.TempDir()}
	p.backup(t, store, "many.dump.zst")
	p.exec(t, "DROP TABLE t1, t2, t3")
	res, err := p.restore(ctx, store, "many.dump.zst", "many", 2)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if res.Tables != 2000 {
		t.Errorf("restored %d tables, want 2000", res.Tables)
	}
	if got := p.query(t, "appdb", "SELECT v FROM t2"); len(got) != 1 || got[0] != "v2" {
		t.Errorf("t2 = %v", got)
	}
}

// TestTheAgentRefusesRestoresItCannotDo: bad requests and a second concurrent
// restore are refused with a reason.
func TestTheAgentRefusesRestoresItCannotDo(t *testing.T) {
	p := startPostgres(t)
	ctx := context.Background()
	c := agentapi.NewClient(&http.Client{}, "t")
	url := "http://" + p.agent.Addr().String()
	for _, tc := range []struct {
		name string
		req  agentapi.RestoreRequest
		want string
	}{
		{"bad id", agentapi.RestoreRequest{ID: "Bad-ID", SHA256: strings.Repeat("a", 64)}, "invalid restore id"},
		{"bad checksum", agentapi.RestoreRequest{ID: "ok", SHA256: "abc"}, "invalid sha256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Restore(ctx, url, tc.req, strings.NewReader("x"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := agentapi.NewClient(&http.Client{}, "wrong").Restore(ctx, url, agentapi.RestoreRequest{ID: "x"}, strings.NewReader("")); !errors.Is(err, agentapi.ErrUnauthorized) {
		t.Errorf("wrong token: %v", err)
	}
}

// TestARestoreDrillComparesRowCountsAndChangesNothing: the backup's verification
// counts every table's rows into the manifest; a drill restores the artifact
// into a scratch database, compares, drops it, and leaves the application
// database alone; a drill whose counts differ fails and says where.
func TestARestoreDrillComparesRowCountsAndChangesNothing(t *testing.T) {
	p := startPostgres(t)
	p.seed(t)
	ctx := context.Background()
	root := t.TempDir()
	store := objectstore.Dir{Root: root}
	m := p.backup(t, store, "drill.dump.zst")
	if m.Tables["public.kinds"] != 2000 || m.Tables["public.pgbench_branches"] != 2 || m.Tables["public.pgbench_accounts"] != 200000 {
		t.Fatalf("manifest row counts = %v", m.Tables)
	}
	p.exec(t, "DELETE FROM kinds WHERE id > 10; CREATE TABLE after_backup (x int)")
	before := p.checksums(t)
	drill := func(id string) (*agentapi.RestoreResult, error) {
		return Restore(ctx, RestoreOptions{Store: store, Key: "drill.dump.zst", Agent: agentapi.NewClient(&http.Client{}, "t"),
			AgentURL: "http://" + p.agent.Addr().String(), Request: agentapi.RestoreRequest{ID: id, Jobs: 2, VerifyOnly: true}})
	}
	res, err := drill("drill1")
	if err != nil {
		t.Fatalf("drill: %v", err)
	}
	if res.RowCounts["public.kinds"] != 2000 || res.PreviousDatabase != "" || res.Seconds <= 0 {
		t.Errorf("drill result = %+v", res)
	}
	if d := equalSums(before, p.checksums(t)); d != "" {
		t.Errorf("a drill changed the database: %s", d)
	}
	if got := p.query(t, "postgres", `SELECT count(*) FROM pg_database WHERE datname LIKE 'pgo\_restoring\_%' OR datname LIKE '%\_prerestore\_%'`); got[0] != "0" {
		t.Errorf("%s databases left by the drill", got[0])
	}

	// A manifest that disagrees with the archive: the drill fails, naming it.
	forged := *m
	forged.Tables = map[string]int64{}
	for k, v := range m.Tables {
		forged.Tables[k] = v
	}
	forged.Tables["public.kinds"] = 1999
	b, _ := json.Marshal(forged)
	if err := os.WriteFile(filepath.Join(root, "drill.dump.zst"+ManifestSuffix), b, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := drill("drill2"); err == nil || !strings.Contains(err.Error(), "public.kinds has 2000 rows, the backup 1999") {
		t.Errorf("drill against wrong counts: %v", err)
	}
	if d := equalSums(before, p.checksums(t)); d != "" {
		t.Errorf("a failed drill changed the database: %s", d)
	}
}

func TestCopyTargetAndScriptRowCounts(t *testing.T) {
	for in, want := range map[string]string{
		`public.t (a, b) FROM stdin;`:       "public.t",
		`public."my table" (a) FROM stdin;`: `public."my table"`,
		`"Sch ema"."T" FROM stdin;`:         `"Sch ema"."T"`,
	} {
		if got := copyTarget(in); got != want {
			t.Errorf("copyTarget(%q) = %q, want %q", in, got, want)
		}
	}
	script := "--\n-- Dumped from database version 15.18 (Debian)\n--\nCOPY public.a (x) FROM stdin;\n1\n2\n\\.\n" +
		"COPY public.\"b c\" (x) FROM stdin;\n" + strings.Repeat("y", 300<<10) + "\n3\n\\.\nCOPY public.empty (x) FROM stdin;\n\\.\n"
	v, tables := scanScript(bufio.NewReaderSize(strings.NewReader(script), 4096))
	if v != "15.18 (Debian)" || tables["public.a"] != 2 || tables[`public."b c"`] != 2 || tables["public.empty"] != 0 || len(tables) != 3 {
		t.Errorf("scanScript = %q %v", v, tables)
	}
}

// A manifest signed with the Database's key restores; one another Database
// signed restores only with that Database's key (spec.manifestKeySecret), even
// with allowOtherDatabase; one edited after signing, or an unsigned one no
// Backup vouches for, is refused before the agent is called, unless the restore
// explicitly allows unauthenticated manifests.
func TestRestoreAuthenticatesTheManifest(t *testing.T) {
	p := startPostgres(t)
	ctx := context.Background()
	p.exec(t, `CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 100)`)
	root := t.TempDir()
	store := objectstore.Dir{Root: root}
	key, other := []byte("this-database-key"), []byte("another-database-key")
	m, err := Run(ctx, Options{PgDump: p.bins.PgDump, PgRestore: p.bins.PgRestore, Conn: p.conn(), Store: store,
		Key: "signed.dump.zst", DatabaseUID: "uid-1", ManifestKey: key})
	if err != nil {
		t.Fatal(err)
	}
	if m.HMAC == "" || !m.Authentic(key) || m.Authentic(other) {
		t.Fatalf("manifest HMAC %q: authentic with its key %v, with another %v", m.HMAC, m.Authentic(key), m.Authentic(other))
	}
	unsigned := p.backup(t, store, "unsigned.dump.zst")

	n := 0
	drill := func(o RestoreOptions) error {
		n++
		o.Store, o.Agent, o.AgentURL = store, agentapi.NewClient(&http.Client{}, "t"), "http://"+p.agent.Addr().String()
		o.Request = agentapi.RestoreRequest{ID: fmt.Sprintf("auth%d", n), Jobs: 1, VerifyOnly: true}
		_, err := Restore(ctx, o)
		return err
	}
	refused := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), ErrUnauthenticated) {
			t.Errorf("%s: %v, want %q", what, err, ErrUnauthenticated)
		}
	}
	if err := drill(RestoreOptions{Key: "signed.dump.zst", ManifestKey: key, ExpectDatabaseUID: "uid-1"}); err != nil {
		t.Errorf("a manifest signed by the Database: %v", err)
	}
	refused("signed by another Database", drill(RestoreOptions{Key: "signed.dump.zst", ManifestKey: other}))
	// Rule 7: allowOtherDatabase lifts the identity check, never the
	// signature: another Database's manifest is authenticated with that
	// Database's key (spec.manifestKeySecret), or restored only with an
	// explicit allowUnauthenticated.
	refused("another Database's artifact with allowOtherDatabase and no key of its writer",
		drill(RestoreOptions{Key: "signed.dump.zst", ManifestKey: other, AllowOtherDatabase: true}))
	refused("another Database's artifact with a key that is not its writer's",
		drill(RestoreOptions{Key: "signed.dump.zst", ManifestKey: other, TrustedManifestKey: []byte("a-third-key"), AllowOtherDatabase: true}))
	if err := drill(RestoreOptions{Key: "signed.dump.zst", ManifestKey: other, TrustedManifestKey: key, AllowOtherDatabase: true}); err != nil {
		t.Errorf("another Database's artifact with its writer's key: %v", err)
	}
	if err := drill(RestoreOptions{Key: "signed.dump.zst", ManifestKey: other, AllowOtherDatabase: true, AllowUnauthenticated: true}); err != nil {
		t.Errorf("another Database's artifact with allowUnauthenticated: %v", err)
	}
	// The writer's key does not stand in for the identity check.
	if err := drill(RestoreOptions{Key: "signed.dump.zst", ManifestKey: other, TrustedManifestKey: key, ExpectDatabaseUID: "uid-9"}); err == nil || !strings.Contains(err.Error(), ErrOtherDatabase) {
		t.Errorf("another Database's artifact with its writer's key but no allowOtherDatabase: %v, want %q", err, ErrOtherDatabase)
	}
	refused("unsigned, nothing vouches for it", drill(RestoreOptions{Key: "unsigned.dump.zst", ManifestKey: key}))
	refused("unsigned, nothing vouches for it, another Database's allowed",
		drill(RestoreOptions{Key: "unsigned.dump.zst", ManifestKey: key, AllowOtherDatabase: true}))
	if err := drill(RestoreOptions{Key: "unsigned.dump.zst", ManifestKey: key, AllowUnauthenticated: true}); err != nil {
		t.Errorf("an unsigned manifest with allowUnauthenticated: %v", err)
	}
	if err := drill(RestoreOptions{Key: "unsigned.dump.zst", ManifestKey: key, ExpectSHA256: unsigned.SHA256}); err != nil {
		t.Errorf("an unsigned manifest whose checksum the Backup recorded: %v", err)
	}

	// Edited after signing: the Database it names.
	path := filepath.Join(root, "signed.dump.zst"+ManifestSuffix)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, bytes.Replace(b, []byte(`"uid-1"`), []byte(`"uid-2"`), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	refused("edited after signing", drill(RestoreOptions{Key: "signed.dump.zst", ManifestKey: key, ExpectDatabaseUID: "uid-2"}))
}

// An encrypted Backup: the stored artifact is age ciphertext, verified through
// decryption; a restore needs the identity, refuses another one, and a forged
// byte of ciphertext fails it without changing the database.
func TestEncryptedArtifactsRestoreOnlyWithTheirKey(t *testing.T) {
	p := startPostgres(t)
	ctx := context.Background()
	p.exec(t, `CREATE TABLE items (id int PRIMARY KEY, body text); INSERT INTO items SELECT g, 'secret row ' || g FROM generate_series(1, 2000) g`)
	root := t.TempDir()
	store := objectstore.Dir{Root: root}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	// The identity as a Secret holds it: age-keygen's output with comments.
	parsed, err := ParseIdentity("# created: now\n# public key: " + id.Recipient().String() + "\n" + id.String() + "\n")
	if err != nil || parsed.String() != id.String() {
		t.Fatalf("ParseIdentity: %v", err)
	}
	m, err := Run(ctx, Options{PgDump: p.bins.PgDump, PgRestore: p.bins.PgRestore, Conn: p.conn(), Store: store,
		Key: "enc.dump.zst", Identity: parsed})
	if err != nil {
		t.Fatal(err)
	}
	if m.Encryption != EncryptionAge || m.Recipient != id.Recipient().String() || m.PlainSHA256 == "" || m.PlainSHA256 == m.SHA256 || m.Tables["public.items"] != 2000 {
		t.Fatalf("manifest %+v", m)
	}
	raw, err := os.ReadFile(filepath.Join(root, "enc.dump.zst"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, []byte("age-encryption.org/v1")) || bytes.Contains(raw, []byte("secret row")) {
		t.Fatal("the stored artifact is not age ciphertext")
	}

	n := 0
	drill := func(ident *age.X25519Identity) error {
		n++
		_, err := Restore(ctx, RestoreOptions{Store: store, Key: "enc.dump.zst", Identity: ident, ExpectSHA256: m.SHA256,
			Agent: agentapi.NewClient(&http.Client{}, "t"), AgentURL: "http://" + p.agent.Addr().String(),
			Request: agentapi.RestoreRequest{ID: fmt.Sprintf("enc%d", n), Jobs: 1, VerifyOnly: true}})
		return err
	}
	if err := drill(parsed); err != nil {
		t.Errorf("restore with the identity: %v", err)
	}
	if err := drill(nil); err == nil || !strings.Contains(err.Error(), ErrEncryptionKey) {
		t.Errorf("restore without the identity: %v", err)
	}
	other, _ := age.GenerateX25519Identity()
	if err := drill(other); err == nil || !strings.Contains(err.Error(), ErrEncryptionKey) {
		t.Errorf("restore with another identity: %v", err)
	}

	// One forged byte in the middle of the ciphertext (the manifest is left
	// as it is, so only decryption can tell): the restore fails.
	before := p.checksums(t)
	raw[len(raw)/2] ^= 0x01
	if err := os.WriteFile(filepath.Join(root, "enc.dump.zst"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := drill(parsed); err == nil {
		t.Error("a forged artifact was restored")
	}
	if d := equalSums(before, p.checksums(t)); d != "" {
		t.Errorf("a failed restore changed the database: %s", d)
	}
}

// Rule 7: no archive runs as the superuser. An archive whose function is a
// superuser's SECURITY DEFINER function (callable by the application: a path to
// superuser), or one that carries a C-language function (it runs in the server
// process whoever owns it), is refused with a reason naming the object, and the
// application database is left as it was. On the previous code both were
// restored: the pre-data ran as the superuser and kept the owner.
func TestRestoreRefusesArchivesThatWouldRunAsTheSuperuser(t *testing.T) {
	p := startPostgres(t)
	ctx := context.Background()
	p.exec(t, `CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 10)`)
	store := objectstore.Dir{Root: t.TempDir()}
	for i, tc := range []struct{ name, setup, undo, want string }{
		{"a superuser's SECURITY DEFINER function",
			`CREATE FUNCTION public.escalate() RETURNS void LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'; ALTER FUNCTION public.escalate() OWNER TO postgres; GRANT EXECUTE ON FUNCTION public.escalate() TO PUBLIC`,
			`DROP FUNCTION public.escalate()`,
			"function public.escalate() owned by the superuser postgres"},
		{"a C-language function owned by the application",
			`CREATE FUNCTION public.native() RETURNS language_handler AS '$libdir/plpgsql', 'plpgsql_call_handler' LANGUAGE c; ALTER FUNCTION public.native() OWNER TO appuser`,
			`DROP FUNCTION public.native()`,
			"function public.native() in the untrusted language c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p.super(t, "appdb", tc.setup)
			key := fmt.Sprintf("unsafe-%d.dump.zst", i)
			p.backup(t, store, key)
			p.super(t, "appdb", tc.undo)
			p.exec(t, "INSERT INTO items VALUES (100)")
			defer p.exec(t, "DELETE FROM items WHERE id = 100")
			_, err := p.restore(ctx, store, key, fmt.Sprintf("unsafe%d", i), 2)
			if err == nil || !strings.Contains(err.Error(), "the archive is refused") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("restore: %v, want a refusal naming %q", err, tc.want)
			}
			if got := p.query(t, "appdb", "SELECT count(*) FROM items WHERE id = 100"); got[0] != "1" {
				t.Errorf("the application database changed after a refused restore: %v", got)
			}
			if got := p.query(t, "appdb", "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgo\\_restoring\\_%'"); got[0] != "0" {
				t.Errorf("scratch databases left: %v", got)
			}
		})
	}
}

// Rule 6: a retried Restore never swaps twice. The same restore ID again (a
// Job retried after its first attempt swapped but before the answer arrived)
// changes nothing: the rows written since the swap stay. Before, the second
// attempt swapped again and those rows went into a pre-restore copy that is
// dropped later. Another ID restores as usual.
func TestARetriedRestoreNeverSwapsTwice(t *testing.T) {
	p := startPostgres(t)
	ctx := context.Background()
	p.exec(t, `CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 10)`)
	store := objectstore.Dir{Root: t.TempDir()}
	p.backup(t, store, "retry.dump.zst")
	if res, err := p.restore(ctx, store, "retry.dump.zst", "retryone", 1); err != nil || res.AlreadyRestored {
		t.Fatalf("first restore: %+v %v", res, err)
	}
	p.exec(t, "INSERT INTO items VALUES (11)")
	res, err := p.restore(ctx, store, "retry.dump.zst", "retryone", 1)
	if err != nil || !res.AlreadyRestored {
		t.Fatalf("the retried restore: %+v %v, want already restored", res, err)
	}
	if got := p.query(t, "appdb", "SELECT count(*) FROM items"); got[0] != "11" {
		t.Errorf("rows after the retried restore: %v, want the 11 written since the swap", got)
	}
	time.Sleep(1100 * time.Millisecond) // the pre-restore copy is named to the second
	if res, err := p.restore(ctx, store, "retry.dump.zst", "retrytwo", 1); err != nil || res.AlreadyRestored {
		t.Fatalf("another restore: %+v %v", res, err)
	}
	if got := p.query(t, "appdb", "SELECT count(*) FROM items"); got[0] != "10" {
		t.Errorf("rows after another restore: %v, want the backup's 10", got)
	}
}
