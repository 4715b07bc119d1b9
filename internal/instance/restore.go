package instance

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/klauspost/compress/zstd"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
)

// Restores are applied by the primary's agent over the private socket, so that
// the result is exactly the database as it was dumped (owners, GRANTs, extensions
// a superuser installed) while nothing of the archive, which the application role
// wrote, runs as the superuser (pgRestore: the data is loaded as each table's
// owner):
//
//  1. the artifact (zstd-compressed pg_dump custom format) is received from the
//     restore Job and, when the volume has room, spooled decompressed next to the
//     data directory so pg_restore can run in parallel; else it is streamed into a
//     single pg_restore;
//  2. it is restored into a new scratch database; the application database is not
//     touched, and no client can connect to the scratch database;
//  3. the received bytes' SHA-256 must equal the manifest's (which the Job compared
//     with the Backup's status), and pg_restore must exit cleanly: else the scratch
//     database is dropped and nothing changed;
//  4. ANALYZE (vacuumdb --analyze-only, as parallel as the restore), then the swap: connections to the application database are refused
//     and its sessions terminated (bounded), then in one transaction the
//     application database is renamed to a pre-restore copy and the scratch
//     database takes its name, owner, settings and database-level grants.
//
// An interruption at any point (the Job killed, the agent or the pod killed) leaves
// either the old database (the scratch one is dropped now or on the next restore) or
// the restored one: the swap is a single transaction. The pre-restore copy accepts
// no connections and is dropped by the primary's agent once its time is up (a
// comment on it records when).

const (
	// ScratchPrefix names the databases restores are built in.
	ScratchPrefix = "pgo_restoring_"
	// preRestoreComment starts the comment on a pre-restore copy, followed by the
	// RFC 3339 time after which it is dropped.
	preRestoreComment = "postgres-operator pre-restore copy; dropped after "
)

// restoredComment is the comment the swap puts on the restored application
// database, in the swap's transaction: it records durably which restore it is,
// so that a retry of the same Restore never swaps twice (which would send the
// writes made since into a copy that is later dropped).
const restoredComment = "postgres-operator restored "

func restoredMarker(id string) string { return restoredComment + id }

var restoreIDPattern = regexp.MustCompile(`^[a-z0-9]{1,32}$`)

var errNotPrimary = errors.New("not a running primary")

func (a *Agent) handleRestore(w http.ResponseWriter, r *http.Request) {
	var req agentapi.RestoreRequest
	if err := json.Unmarshal([]byte(r.Header.Get(agentapi.HeaderRestoreRequest)), &req); err != nil {
		http.Error(w, "invalid "+agentapi.HeaderRestoreRequest+" header: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !restoreIDPattern.MatchString(req.ID) {
		http.Error(w, "invalid restore id (lower-case letters and digits, at most 32)", http.StatusBadRequest)
		return
	}
	if b, err := hex.DecodeString(req.SHA256); err != nil || len(b) != sha256.Size {
		http.Error(w, "invalid sha256", http.StatusBadRequest)
		return
	}
	ctx, end, err := a.beginRestore(r.Context(), req.ID)
	if err != nil {
		http.Error(w, err.Error(), http.StatusConflict)
		return
	}
	defer end()
	res, err := a.restore(ctx, req, r.Body)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, errNotPrimary) {
			code = http.StatusConflict
		}
		a.log.Warn("restore failed; the application database is unchanged", "id", req.ID, "error", err)
		http.Error(w, err.Error(), code)
		return
	}
	a.log.Info("restore swapped in", "id", req.ID, "previous", res.PreviousDatabase,
		"terminatedSessions", res.TerminatedSessions, "jobs", res.Jobs, "seconds", res.Seconds)
	writeJSON(w, http.StatusOK, res)
}

// restoreSlot is a running restore.
type restoreSlot struct {
	id     string
	cancel context.CancelFunc
	done   chan struct{}
}

// beginRestore admits one restore at a time. A retry of the running one (same ID:
// the Job's pod was replaced while the agent still worked on the previous
// attempt) cancels that attempt and waits, boundedly, for its cleanup.
func (a *Agent) beginRestore(ctx context.Context, id string) (context.Context, func(), error) {
	for {
		a.restoreMu.Lock()
		cur := a.currentRestore
		if cur == nil {
			rctx, cancel := context.WithCancel(ctx)
			slot := &restoreSlot{id: id, cancel: cancel, done: make(chan struct{})}
			a.currentRestore = slot
			a.restoreMu.Unlock()
			return rctx, func() {
				cancel()
				a.restoreMu.Lock()
				a.currentRestore = nil
				a.restoreMu.Unlock()
				close(slot.done)
			}, nil
		}
		a.restoreMu.Unlock()
		if cur.id != id {
			return nil, nil, fmt.Errorf("restore %s is running on this instance", cur.id)
		}
		cur.cancel()
		select {
		case <-cur.done:
		case <-time.After(60 * time.Second):
			return nil, nil, fmt.Errorf("the previous attempt of restore %s did not stop within 60s", id)
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// restoreInProgress is the ID of the running restore ("" when none).
func (a *Agent) restoreInProgress() string {
	a.restoreMu.Lock()
	defer a.restoreMu.Unlock()
	if a.currentRestore == nil {
		return ""
	}
	return a.currentRestore.id
}

func (a *Agent) runningPrimary() bool {
	rt := a.view()
	return rt.Primary && !rt.Exited && a.isTarget()
}

func (a *Agent) restore(ctx context.Context, req agentapi.RestoreRequest, body io.Reader) (*agentapi.RestoreResult, error) {
	start := time.Now()
	if !a.runningPrimary() {
		return nil, errNotPrimary
	}
	appDB, appUser := a.cfg.AppDatabase, a.cfg.AppUser
	if err := validateNames(appUser, appDB); err != nil {
		return nil, err
	}
	conn, err := a.connect(ctx, "postgres")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	if err := dropScratchDatabases(ctx, conn); err != nil {
		return nil, err
	}
	// Rule 6: idempotent. A Restore already swapped in is not restored again.
	var comment string
	if err := conn.QueryRow(ctx, `SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = $1`, appDB).Scan(&comment); err != nil {
		return nil, fmt.Errorf("reading database %s: %w", appDB, err)
	}
	if !req.VerifyOnly && strings.HasPrefix(comment, restoredMarker(req.ID)+" ") {
		a.log.Info("restore already swapped in: nothing to do", "id", req.ID)
		return &agentapi.RestoreResult{Database: appDB, AlreadyRestored: true, Seconds: time.Since(start).Seconds()}, nil
	}
	var encoding, collate, ctype string
	if err := conn.QueryRow(ctx, `SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = $1`,
		appDB).Scan(&encoding, &collate, &ctype); err != nil {
		return nil, fmt.Errorf("reading database %s: %w", appDB, err)
	}
	scratch := ScratchPrefix + req.ID
	qs := postgres.QuoteIdentifier(scratch)
	// Owned by the application role, like the database it replaces (the swap
	// gives it the live database's owner).
	if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE DATABASE %s OWNER %s TEMPLATE template0 ENCODING %s LC_COLLATE %s LC_CTYPE %s",
		qs, postgres.QuoteIdentifier(appUser), postgres.QuoteLiteral(encoding), postgres.QuoteLiteral(collate), postgres.QuoteLiteral(ctype))); err != nil {
		return nil, fmt.Errorf("creating the scratch database: %w", err)
	}
	swapped := false
	defer func() {
		if !swapped {
			// Nothing of the attempt stays (a killed agent's is dropped by the
			// next restore).
			dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := conn.Exec(dctx, "DROP DATABASE IF EXISTS "+qs+" WITH (FORCE)"); err != nil {
				a.log.Warn("dropping the scratch database", "database", scratch, "error", err)
			}
		}
	}()
	// No one else connects to it until the swap.
	if _, err := conn.Exec(ctx, "REVOKE ALL ON DATABASE "+qs+" FROM PUBLIC"); err != nil {
		return nil, err
	}

	phases := map[string]float64{"prepare": time.Since(start).Seconds()}
	t0 := time.Now()
	jobs, err := a.pgRestore(ctx, req, body, scratch)
	if err != nil {
		return nil, err
	}
	phases["restore"] = time.Since(t0).Seconds()
	t0 = time.Now()
	res := &agentapi.RestoreResult{Database: appDB, Jobs: jobs, Phases: phases}
	sc, err := a.connect(ctx, scratch)
	if err != nil {
		return nil, err
	}
	if unsafe, err := superuserObjects(ctx, sc); err != nil {
		sc.Close(context.Background())
		return nil, fmt.Errorf("checking the restored objects' owners: %w", err)
	} else if len(unsafe) > 0 {
		sc.Close(context.Background())
		return nil, fmt.Errorf("%w: %s", ErrUnsafeArchive, strings.Join(unsafe, "; "))
	}
	err = sc.QueryRow(ctx, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'`).Scan(&res.Tables)
	if err == nil && req.VerifyOnly {
		// A drill: count what was restored, then the scratch database goes
		// (deferred drop); the application database is never touched.
		res.RowCounts, err = rowCounts(ctx, sc)
		sc.Close(context.Background())
		if err != nil {
			return nil, fmt.Errorf("counting the restored rows: %w", err)
		}
		phases["count"] = time.Since(t0).Seconds()
		res.Seconds = time.Since(start).Seconds()
		return res, nil
	}
	sc.Close(context.Background())
	if err == nil {
		// Planner statistics are not in a dump: without them the first queries
		// after the swap would run on guesses. In parallel, like the restore.
		cmd := a.command(ctx, filepath.Join(a.bins.Dir, "vacuumdb"), "--analyze-only", "--quiet", "--no-password",
			"--jobs="+strconv.Itoa(jobs), "--host="+a.cfg.RunDir, "--port="+strconv.Itoa(a.cfg.Port), "--username=postgres", "--dbname="+scratch)
		stderr := &postgres.Tail{Max: 1 << 10}
		cmd.Stderr = stderr
		if rerr := cmd.Run(); rerr != nil {
			a.log.Warn("vacuumdb failed", "error", rerr, "stderr", stderr.String())
			err = fmt.Errorf("%w: %s", rerr, postgres.Summary(stderr.String()))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("analyzing the restored database: %w", err)
	}
	if !a.runningPrimary() {
		return nil, errNotPrimary
	}

	prev := ""
	var dropAfter time.Time
	name := appDB
	if len(name) > 63-len(agentapi.PreRestoreInfix)-15 {
		name = name[:63-len(agentapi.PreRestoreInfix)-15]
	}
	prev = name + agentapi.PreRestoreInfix + start.UTC().Format("20060102t150405")
	dropAfter = start.Add(time.Duration(req.KeepPreviousSeconds) * time.Second).UTC().Truncate(time.Second)
	timeout := time.Duration(req.SessionTimeoutSeconds) * time.Second
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	phases["analyze"] = time.Since(t0).Seconds()
	t0 = time.Now()
	n, err := a.swap(ctx, conn, appDB, scratch, prev, dropAfter, timeout)
	phases["swap"] = time.Since(t0).Seconds()
	res.TerminatedSessions = n
	if err != nil {
		return res, err
	}
	swapped = true
	res.PreviousDatabase, res.PreviousDropAfter = prev, dropAfter
	if req.KeepPreviousSeconds <= 0 {
		if _, err := conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+postgres.QuoteIdentifier(prev)+" WITH (FORCE)"); err != nil {
			a.log.Warn("dropping the pre-restore copy", "database", prev, "error", err)
		} else {
			res.PreviousDatabase, res.PreviousDropAfter = "", time.Time{}
		}
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// rowCounts counts the rows of every table (schema.table, quoted as pg_dump
// quotes them).
func rowCounts(ctx context.Context, conn *pgx.Conn) (map[string]int64, error) {
	rows, err := conn.Query(ctx, `SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'`)
	if err != nil {
		return nil, err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(names))
	for _, n := range names {
		var c int64
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+n).Scan(&c); err != nil {
			return nil, fmt.Errorf("counting %s: %w", n, err)
		}
		out[n] = c
	}
	return out, nil
}

// dropScratchDatabases drops what interrupted restores left.
func dropScratchDatabases(ctx context.Context, conn *pgx.Conn) error {
	rows, err := conn.Query(ctx, `SELECT datname FROM pg_database WHERE starts_with(datname, $1)`, ScratchPrefix)
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, n := range names {
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+postgres.QuoteIdentifier(n)+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("dropping %s, left by an interrupted restore: %w", n, err)
		}
	}
	return nil
}

// ErrUnsafeArchive: the archive would leave code that runs with superuser
// rights in the application database (rule 7 of the README's High availability
// section); the restore is refused and nothing is swapped.
var ErrUnsafeArchive = errors.New("the archive is refused: it creates objects that would run with superuser rights")

// superuserObjects lists what the restored database holds that would run with
// superuser rights, outside the extensions (whose scripts are the server's own):
// objects owned by a superuser role (a SECURITY DEFINER function of theirs is
// a path to superuser; so is a view, type or table whose owner's rights its
// code runs with), functions in an untrusted language (C, plpython3u: they run
// in the server process whoever owns them) and event triggers (they fire on
// every later DDL). At most 10 are named.
func superuserObjects(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, `
WITH ext AS (SELECT classid, objid FROM pg_catalog.pg_depend WHERE deptype = 'e'),
user_ns AS (SELECT oid FROM pg_catalog.pg_namespace
	WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\_toast%' AND nspname NOT LIKE 'pg\_temp%'),
su AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolsuper)
SELECT format('function %s owned by the superuser %s', p.oid::regprocedure, pg_catalog.pg_get_userbyid(p.proowner))
	FROM pg_catalog.pg_proc p WHERE p.pronamespace IN (SELECT oid FROM user_ns) AND p.proowner IN (SELECT oid FROM su)
	AND NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_catalog.pg_proc'::regclass AND objid = p.oid)
UNION ALL
SELECT format('function %s in the untrusted language %s', p.oid::regprocedure, l.lanname)
	FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
	WHERE p.pronamespace IN (SELECT oid FROM user_ns) AND NOT l.lanpltrusted
	AND NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_catalog.pg_proc'::regclass AND objid = p.oid)
UNION ALL
SELECT format('relation %s owned by the superuser %s', c.oid::regclass, pg_catalog.pg_get_userbyid(c.relowner))
	FROM pg_catalog.pg_class c WHERE c.relnamespace IN (SELECT oid FROM user_ns) AND c.relowner IN (SELECT oid FROM su)
	AND NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_catalog.pg_class'::regclass AND objid = c.oid)
UNION ALL
SELECT format('type %s owned by the superuser %s', t.oid::regtype, pg_catalog.pg_get_userbyid(t.typowner))
	FROM pg_catalog.pg_type t WHERE t.typnamespace IN (SELECT oid FROM user_ns) AND t.typowner IN (SELECT oid FROM su)
	AND t.typrelid = 0 AND t.typelem = 0
	AND NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_catalog.pg_type'::regclass AND objid = t.oid)
UNION ALL
SELECT format('event trigger %s', e.evtname) FROM pg_catalog.pg_event_trigger e
	WHERE NOT EXISTS (SELECT 1 FROM ext WHERE classid = 'pg_catalog.pg_event_trigger'::regclass AND objid = e.oid)
LIMIT 10`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// pgRestore restores the body into database scratch and checks its SHA-256;
// it returns the parallelism used.
//
// The archive was written by the application role, so nothing in it may run as
// the superuser: its data (whose COPY evaluates CHECK and domain constraints and
// generated columns, which can call the role's functions) is loaded as each
// table's owner (--use-set-session-authorization). The schema before and after
// the data is created by the superuser, so that objects of other owners and
// extensions a superuser installed are restored as they were: creating them runs
// no code of the archive, and PostgreSQL runs index expressions, materialized
// views and foreign-key checks as the table's owner. A streamed restore (one
// pass over the archive) creates everything as its owner.
func (a *Agent) pgRestore(ctx context.Context, req agentapi.RestoreRequest, body io.Reader, scratch string) (int, error) {
	hash := sha256.New()
	dec, err := zstd.NewReader(io.TeeReader(body, hash), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
	if err != nil {
		return 0, err
	}
	defer dec.Close()
	src := &errRecorder{r: dec}
	checkSum := func() error {
		// The rest of the stream (pg_restore may stop before its end) is
		// decompressed too: zstd checks every frame.
		if _, err := io.Copy(io.Discard, src); err != nil {
			return fmt.Errorf("the artifact is corrupted or truncated: %w", err)
		}
		if got := hex.EncodeToString(hash.Sum(nil)); got != req.SHA256 {
			return fmt.Errorf("checksum mismatch: received sha256 %s, manifest says %s (truncated or corrupted in transit)", got, req.SHA256)
		}
		return nil
	}
	jobs := max(req.Jobs, 1)
	spool := ""
	if jobs > 1 {
		dir := filepath.Join(filepath.Dir(a.cfg.PGData), ".restore-spool")
		if free, err := freeBytes(filepath.Dir(a.cfg.PGData)); err == nil && free > req.UncompressedBytes+req.UncompressedBytes/10+(256<<20) {
			spool = filepath.Join(dir, "archive.dump")
		} else {
			a.log.Info("not enough free space to spool the archive: restoring it streamed, with one job",
				"needBytes", req.UncompressedBytes, "freeBytes", free)
			jobs = 1
		}
		_ = os.RemoveAll(dir)
		if spool != "" {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return 0, err
			}
			if err := a.chown(dir); err != nil {
				return 0, err
			}
			defer os.RemoveAll(dir)
		}
	}
	args := []string{"--exit-on-error", "--no-password", "--host=" + a.cfg.RunDir, "--port=" + strconv.Itoa(a.cfg.Port),
		"--username=postgres", "--dbname=" + scratch}
	var stdin io.Reader
	if spool != "" {
		f, err := os.OpenFile(spool, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return 0, err
		}
		_, err = io.Copy(f, src)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			if src.err != nil {
				return 0, fmt.Errorf("the artifact is corrupted or truncated: %w", err)
			}
			return 0, fmt.Errorf("spooling the artifact: %w", err)
		}
		if err := checkSum(); err != nil {
			return 0, err
		}
		if err := a.chown(spool); err != nil {
			return 0, err
		}
	} else {
		stdin = src
	}
	run := func(args ...string) error {
		cmd := a.command(ctx, a.bins.PgRestore, args...)
		cmd.Stdin = stdin
		stderr := &postgres.Tail{Max: 2 << 10}
		cmd.Stderr = stderr
		err := cmd.Run()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("restore interrupted: %w", ctx.Err())
		}
		if src.err != nil {
			// pg_restore failed because its input did.
			return fmt.Errorf("the artifact is corrupted or truncated: %w", src.err)
		}
		if spool == "" {
			// Streamed: corrupted bytes may reach pg_restore before zstd or the
			// checksum can tell. Read the rest to say which it was.
			if cerr := checkSum(); cerr != nil {
				return cerr
			}
		}
		// pg_restore's messages can quote the archive's data: they go to the
		// agent's log, the caller gets only the last line's kind of failure.
		a.log.Warn("pg_restore failed", "error", err, "stderr", stderr.String())
		return fmt.Errorf("pg_restore: %w: %s", err, postgres.Summary(stderr.String()))
	}
	if spool != "" {
		j := "--jobs=" + strconv.Itoa(jobs)
		for _, pass := range [][]string{
			{"--section=pre-data", spool},
			{"--section=data", "--use-set-session-authorization", j, spool},
			{"--section=post-data", j, spool},
		} {
			if err := run(append(append([]string(nil), args...), pass...)...); err != nil {
				return 0, err
			}
		}
	} else if err := run(append(args, "--use-set-session-authorization")...); err != nil {
		return 0, err
	}
	if spool == "" {
		if err := checkSum(); err != nil {
			return 0, err
		}
	}
	return jobs, nil
}

// swap puts database scratch in the place of appDB. Connections to both are
// refused and their sessions terminated, for at most timeout; then one
// transaction renames appDB to prev and scratch to appDB, which takes appDB's
// owner, per-database settings and grants. It returns how many sessions it
// terminated.
func (a *Agent) swap(ctx context.Context, conn *pgx.Conn, appDB, scratch, prev string, dropAfter time.Time, timeout time.Duration) (int, error) {
	qa, qs, qp := postgres.QuoteIdentifier(appDB), postgres.QuoteIdentifier(scratch), postgres.QuoteIdentifier(prev)
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+qs+" WITH ALLOW_CONNECTIONS false"); err != nil {
		return 0, err
	}
	if _, err := conn.Exec(ctx, "ALTER DATABASE "+qa+" WITH ALLOW_CONNECTIONS false"); err != nil {
		return 0, err
	}
	reopened := false
	reopen := func() {
		if reopened {
			return
		}
		if _, err := conn.Exec(context.Background(), "ALTER DATABASE "+qa+" WITH ALLOW_CONNECTIONS true"); err != nil {
			a.log.Warn("allowing connections to the application database again", "error", err)
		}
	}
	defer reopen()
	terminated := 0
	deadline := time.Now().Add(timeout)
	for {
		var n, left int
		if err := conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)), count(*)
			FROM pg_stat_activity WHERE datname IN ($1, $2) AND pid <> pg_backend_pid()`, appDB, scratch).Scan(&n, &left); err != nil {
			return terminated, err
		}
		terminated += n
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			return terminated, fmt.Errorf("%d sessions of database %s did not end within %s of being terminated", left, appDB, timeout)
		}
		select {
		case <-ctx.Done():
			return terminated, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return terminated, err
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	var owner string
	var oldOID uint32
	if err := tx.QueryRow(ctx, `SELECT oid, pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1`, appDB).Scan(&oldOID, &owner); err != nil {
		return terminated, err
	}
	// Database-level settings and grants are not in a dump (no --create): carry
	// over the live database's.
	rows, err := tx.Query(ctx, `SELECT unnest(setconfig) FROM pg_db_role_setting WHERE setdatabase = $1 AND setrole = 0`, oldOID)
	if err != nil {
		return terminated, err
	}
	settings, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return terminated, err
	}
	rows, err = tx.Query(ctx, `SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END
		FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
		WHERE d.oid = $1 AND a.grantee <> d.datdba`, oldOID)
	if err != nil {
		return terminated, err
	}
	type grant struct{ priv, grantee string }
	grants, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (grant, error) {
		var g grant
		err := r.Scan(&g.priv, &g.grantee)
		return g, err
	})
	if err != nil {
		return terminated, err
	}
	stmts := []string{
		"ALTER DATABASE " + qa + " RENAME TO " + qp,
		"ALTER DATABASE " + qs + " RENAME TO " + qa,
		"ALTER DATABASE " + qa + " OWNER TO " + postgres.QuoteIdentifier(owner),
		"COMMENT ON DATABASE " + qa + " IS " + postgres.QuoteLiteral(restoredMarker(restoreIDOf(scratch))+" "+time.Now().UTC().Format(time.RFC3339)),
		"COMMENT ON DATABASE " + qp + " IS " + postgres.QuoteLiteral(preRestoreComment+dropAfter.Format(time.RFC3339)),
	}
	for _, s := range settings {
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			continue
		}
		stmts = append(stmts, "ALTER DATABASE "+qa+" SET "+postgres.QuoteIdentifier(k)+" = "+postgres.QuoteLiteral(v))
	}
	for _, g := range grants {
		stmts = append(stmts, "GRANT "+g.priv+" ON DATABASE "+qa+" TO "+g.grantee)
	}
	stmts = append(stmts, "ALTER DATABASE "+qa+" WITH ALLOW_CONNECTIONS true")
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return terminated, fmt.Errorf("swapping in the restored database (rolled back): %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return terminated, fmt.Errorf("swapping in the restored database: %w", err)
	}
	// The new appDB accepts connections; the copy under prev keeps refusing them.
	reopened = true
	return terminated, nil
}

// restoreIDOf is the restore ID a scratch database is named after.
func restoreIDOf(scratch string) string { return strings.TrimPrefix(scratch, ScratchPrefix) }

// reopenApplicationDatabase lets clients connect to the application database
// again if a swap closed it and never finished (its agent or its primary was
// killed, or a failover happened, after ALLOW_CONNECTIONS false committed): run
// at every start of a primary, before it is ready; a restore in progress runs
// only in this agent, after.
func reopenApplicationDatabase(ctx context.Context, conn *pgx.Conn, appDB string) (bool, error) {
	var allowed bool
	if err := conn.QueryRow(ctx, `SELECT datallowconn FROM pg_database WHERE datname = $1`, appDB).Scan(&allowed); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		return false, err
	}
	if allowed {
		return false, nil
	}
	_, err := conn.Exec(ctx, "ALTER DATABASE "+postgres.QuoteIdentifier(appDB)+" WITH ALLOW_CONNECTIONS true")
	return err == nil, err
}

// dropExpiredCopies drops pre-restore copies whose time is up, once a minute while
// this instance is the primary.
func (a *Agent) dropExpiredCopies(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.dropExpiredPrevious(time.Now())
		if !a.runningPrimary() || a.restoreInProgress() != "" {
			continue
		}
		if err := a.dropExpiredCopiesOnce(ctx, time.Now()); err != nil {
			a.log.Info("dropping expired pre-restore copies", "error", err)
		}
	}
}

func (a *Agent) dropExpiredCopiesOnce(ctx context.Context, now time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := a.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT datname, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database
		WHERE strpos(datname, $1) > 0`, agentapi.PreRestoreInfix)
	if err != nil {
		return err
	}
	type copyDB struct{ name, comment string }
	dbs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (copyDB, error) {
		var c copyDB
		err := r.Scan(&c.name, &c.comment)
		return c, err
	})
	if err != nil {
		return err
	}
	for _, d := range dbs {
		ts, ok := strings.CutPrefix(d.comment, preRestoreComment)
		if !ok {
			continue // not ours, or the user changed it to keep the copy
		}
		after, err := time.Parse(time.RFC3339, ts)
		if err != nil || now.Before(after) {
			continue
		}
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+postgres.QuoteIdentifier(d.name)+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("dropping %s: %w", d.name, err)
		}
		a.log.Info("dropped an expired pre-restore copy", "database", d.name)
	}
	return nil
}

func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// errRecorder remembers the first error other than EOF its reader returned.
type errRecorder struct {
	r   io.Reader
	err error
}

func (e *errRecorder) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}
