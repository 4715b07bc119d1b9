package upgrade

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// seed fills the old cluster with what an upgrade must carry: an ICU database,
// text indexes under libc and ICU collations, a view, a sequence, a large
// object, an extension whose version changes between the majors, and n tables.
func (h *harness) seed(n int) {
	h.t.Helper()
	h.sql(oldImage, "postgres", `CREATE DATABASE app`)
	h.sql(oldImage, "postgres", `CREATE DATABASE icu LOCALE_PROVIDER icu ICU_LOCALE 'de-DE' LOCALE 'C.UTF-8' TEMPLATE template0`)
	for _, db := range []string{"app", "icu"} {
		h.sql(oldImage, db, `CREATE TABLE words (id serial PRIMARY KEY, w text, d text COLLATE "de-x-icu");
INSERT INTO words (w, d) SELECT md5(i::text) || 'Äpfel', 'straße' || i FROM generate_series(1, 5000) i;
CREATE INDEX words_w ON words (w);
CREATE INDEX words_d ON words (d);
CREATE VIEW long_words AS SELECT * FROM words WHERE length(w) > 10;
CREATE SEQUENCE counter START 42;
SELECT nextval('counter');
SELECT lo_from_bytea(4242, 'large object payload');
CREATE EXTENSION pg_stat_statements;`)
	}
	if n > 0 {
		h.sql(oldImage, "app", `DO $$ BEGIN FOR i IN 1..`+itoa(n)+` LOOP
EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text)', i);
EXECUTE format('INSERT INTO t%s SELECT g, md5(g::text) FROM generate_series(1, 10) g', i);
END LOOP; END $$;`)
	}
}

func itoa(i int) string {
	return strconv.Itoa(i)
}

// fingerprint is what must be equal before and after: every table's rows (by
// checksum), the view, the sequence, the large object and the table count.
func (h *harness) fingerprint(image string) string {
	h.t.Helper()
	var b strings.Builder
	for _, db := range []string{"app", "icu"} {
		b.WriteString(h.sql(image, db, `SELECT
 (SELECT md5(string_agg(x::text, ',' ORDER BY x.id)) FROM words x),
 (SELECT count(*) FROM long_words),
 (SELECT last_value FROM counter),
 (SELECT convert_from(lo_get(4242), 'UTF8')),
 (SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace),
 (SELECT string_agg(w, ',' ORDER BY w COLLATE "C") FROM (SELECT w FROM words ORDER BY w LIMIT 3) s),
 (SELECT string_agg(d, ',') FROM (SELECT d FROM words ORDER BY d LIMIT 3) s)`))
		b.WriteString("\n")
	}
	b.WriteString(h.sql(image, "app", `SELECT md5(string_agg(c, ',' ORDER BY c)) FROM (
 SELECT format('%s:%s', relname, (xpath('/row/c/text()', query_to_xml(format('SELECT md5(string_agg(t::text, '','' ORDER BY t.id)) AS c FROM %I t', relname), false, true, '')))[1]::text) c
 FROM pg_class WHERE relname ~ '^t[0-9]+$' AND relkind = 'r') s`))
	return b.String()
}

// An upgrade with --link of a cluster with data checksums, an ICU database,
// collation-dependent indexes, an extension and 1,000 tables: the new cluster
// runs PostgreSQL 17 with the same settings and the same data, the indexes that
// depend on the changed C library and ICU are rebuilt, no collation version
// mismatch is left, and the extension to update is reported.
func TestUpgradeLinkCarriesDataSettingsAndCollations(t *testing.T) {
	h := newHarness(t)
	h.initOld(true)
	h.seed(1000)
	before := h.fingerprint(oldImage)

	lock := h.lockFile()
	res, err := h.upgrade("check", "--method=link")
	if err != nil || !res.OK {
		t.Fatalf("check: %v %+v", err, res)
	}
	if got := h.lockFile(); got != lock {
		t.Fatalf("the check touched the live server's postmaster.pid:\nbefore %q\nafter  %q", lock, got)
	}
	if res.Settings == nil || !res.Settings.Checksums || res.Settings.Encoding != "UTF8" || res.Settings.WALSegmentMB != 16 {
		t.Errorf("settings read by the check: %+v", res.Settings)
	}
	if _, err := os.Stat(filepath.Join(h.vol, "upgrade", "check")); !os.IsNotExist(err) {
		t.Errorf("the check left its scratch cluster: %v", err)
	}
	if got := h.sql(oldImage, "postgres", "SELECT 1"); got != "1" {
		t.Fatalf("the old server stopped serving during the check: %q", got)
	}

	h.stop(oldImage)
	res, err = h.upgrade("run", "--method=link")
	if err != nil || !res.OK {
		t.Fatalf("run: %v %+v", err, res)
	}
	if res.FromMajor != 15 || res.ToMajor != 17 || res.SystemIdentifier == "" || res.OldDirectory != "" {
		t.Errorf("result: %+v", res)
	}
	if !strings.Contains(res.CollationChange, "glibc 2.36 → 2.41") || !strings.Contains(res.CollationChange, "ICU 72 → 76") {
		t.Errorf("collation change = %q", res.CollationChange)
	}
	// words_w (C.UTF-8 default collation) and words_d (ICU) in app and icu; the
	// icu database's default is ICU too.
	if res.RebuiltIndexes < 4 {
		t.Errorf("rebuilt %d indexes, want at least 4", res.RebuiltIndexes)
	}
	if !strings.Contains(strings.Join(res.ExtensionsToUpdate, ";"), "pg_stat_statements 1.10 → 1.11") {
		t.Errorf("extensions to update = %v", res.ExtensionsToUpdate)
	}
	for _, d := range []string{"upgrade", "pgdata.pg15"} {
		if _, err := os.Stat(filepath.Join(h.vol, d)); !os.IsNotExist(err) {
			t.Errorf("%s left on the volume after a link upgrade: %v", d, err)
		}
	}

	h.start(newImage)
	if v := h.sql(newImage, "postgres", "SHOW server_version_num"); !strings.HasPrefix(v, "17") {
		t.Errorf("server_version_num = %s", v)
	}
	if c := h.sql(newImage, "postgres", "SHOW data_checksums"); c != "on" {
		t.Errorf("data_checksums = %s", c)
	}
	if after := h.fingerprint(newImage); after != before {
		t.Errorf("data differs after the upgrade:\nbefore %s\nafter  %s", before, after)
	}
	if loc := h.sql(newImage, "postgres", "SELECT datlocprovider::text || ' ' || coalesce(datlocale, '') FROM pg_database WHERE datname = 'icu'"); loc != "i de-DE" {
		t.Errorf("icu database locale = %q", loc)
	}
	if m := h.sql(newImage, "postgres", "SELECT count(*) FROM pg_database WHERE datcollversion IS DISTINCT FROM pg_database_collation_actual_version(oid)"); m != "0" {
		t.Errorf("%s databases with a collation version mismatch", m)
	}
	// amcheck verifies every B-tree of the user tables against its heap (it
	// raises an error on an index out of order).
	for _, db := range []string{"app", "icu"} {
		n := h.sql(newImage, db, `CREATE EXTENSION IF NOT EXISTS amcheck;
SELECT count(bt_index_check(oid, true)) FROM (SELECT c.oid FROM pg_class c JOIN pg_am a ON a.oid = c.relam
 WHERE a.amname = 'btree' AND c.relkind = 'i' AND c.relnamespace = 'public'::regnamespace OFFSET 0) s`)
		if n == "0" {
			t.Errorf("%s: no index checked", db)
		}
	}
}

// lockFile is the live server's postmaster.pid: a second postmaster started on
// the same directory (pg_upgrade probing a lock it cannot see is live) would
// rewrite it.
func (h *harness) lockFile() string {
	b, err := os.ReadFile(filepath.Join(h.vol, "pgdata", "postmaster.pid"))
	if err != nil {
		h.t.Fatalf("reading postmaster.pid: %v", err)
	}
	return string(b)
}

// A failing pg_upgrade --check (a function whose library was built for
// PostgreSQL 15) names the library and leaves the old cluster running and
// unchanged.
func TestUpgradeCheckFailureLeavesTheOldClusterUntouched(t *testing.T) {
	h := newHarness(t)
	h.initOld(true)
	h.seed(0)
	h.must(oldImage, "cp", "/usr/lib/postgresql/15/lib/plpgsql.so", volume+"/legacy_handler.so")
	h.sql(oldImage, "app", `CREATE FUNCTION legacy_handler() RETURNS language_handler AS '`+volume+`/legacy_handler.so', 'plpgsql_call_handler' LANGUAGE C`)
	before := h.fingerprint(oldImage)
	control := h.must(oldImage, "pg_controldata", pgdata)
	lock := h.lockFile()

	res, err := h.upgrade("check", "--method=link")
	if err == nil || res.OK {
		t.Fatalf("check passed: %+v", res)
	}
	if !strings.Contains(res.Message, "legacy_handler.so") {
		t.Errorf("the message does not name the library: %s", res.Message)
	}
	if after := h.fingerprint(oldImage); after != before {
		t.Errorf("data changed")
	}
	if got := h.lockFile(); got != lock {
		t.Errorf("the check touched the live server's postmaster.pid:\nbefore %q\nafter  %q", lock, got)
	}
	if got := h.must(oldImage, "pg_controldata", pgdata); strings.Contains(got, "shut down") || !strings.Contains(got, "in production") {
		t.Errorf("the old cluster is no longer running:\n%s\nbefore:\n%s", got, control)
	}
	if _, err := os.Stat(filepath.Join(h.vol, "upgrade", "check")); !os.IsNotExist(err) {
		t.Errorf("the check left its scratch cluster: %v", err)
	}
}

// runnable says whether the data directory is one an instance could start: the
// old cluster complete (PG_VERSION 15 with its pg_control) or the new one. The
// agent starts nothing else (a PostgreSQL 15 directory without pg_control is
// refused as unusable), so no kill leaves a half-upgraded directory started.
func (h *harness) runnable() string {
	v, err := os.ReadFile(filepath.Join(h.vol, "pgdata", "PG_VERSION"))
	if err != nil {
		return "no data directory"
	}
	_, cerr := os.Stat(filepath.Join(h.vol, "pgdata", "global", "pg_control"))
	switch strings.TrimSpace(string(v)) {
	case "15":
		if cerr != nil {
			return "PostgreSQL 15 without pg_control (not startable)"
		}
		return "15"
	case "17":
		return "17"
	}
	return "PG_VERSION " + string(v)
}

// A kill at any step of the upgrade (the Job's pod deleted with grace 0; here
// the process stops right after the step) leaves either the intact old cluster
// or the new one in PGDATA, and the next run finishes the upgrade with the data
// intact; a rollback before the swap gives back a working old cluster.
func TestUpgradeKilledAtEachStepResumesOrRollsBack(t *testing.T) {
	tests := []struct {
		step   string
		method Method
		// rollback: after the kill, roll back instead of resuming.
		rollback bool
		// beforeSwap: what PGDATA holds right after the kill.
		want string
	}{
		{StepShutdown, MethodLink, false, "15"},
		{StepInitdb, MethodLink, false, "15"},
		{StepPgUpgrade, MethodLink, false, "PostgreSQL 15 without pg_control (not startable)"},
		{StepPgUpgrade, MethodLink, true, "PostgreSQL 15 without pg_control (not startable)"},
		{StepPgUpgrade, MethodCopy, true, "15"},
		{StepSwap, MethodCopy, false, "17"},
		{StepCollations, MethodLink, false, "17"},
		{StepAnalyze, MethodCopy, false, "17"},
	}
	for _, tc := range tests {
		name := string(tc.step) + "/" + string(tc.method)
		if tc.rollback {
			name += "/rollback"
		}
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			h.initOld(true)
			h.seed(0)
			before := h.fingerprint(oldImage)
			h.stop(oldImage)
			res, err := h.upgrade("run", "--method="+string(tc.method), "--fail-after="+string(tc.step))
			if err == nil || res.OK {
				t.Fatalf("the run did not stop after %s: %+v", tc.step, res)
			}
			if got := h.runnable(); got != tc.want {
				t.Fatalf("after a kill after %s PGDATA holds %s, want %s", tc.step, got, tc.want)
			}
			if tc.rollback {
				res, err := h.upgrade("rollback", "--method="+string(tc.method))
				if err != nil || !res.OK || !res.RolledBack {
					t.Fatalf("rollback: %v %+v", err, res)
				}
				if got := h.runnable(); got != "15" {
					t.Fatalf("after the rollback PGDATA holds %s", got)
				}
				h.start(oldImage)
				if after := h.fingerprint(oldImage); after != before {
					t.Errorf("data differs after the rollback")
				}
				return
			}
			res, err = h.upgrade("run", "--method="+string(tc.method))
			if err != nil || !res.OK {
				t.Fatalf("resumed run: %v %+v", err, res)
			}
			if tc.method == MethodCopy {
				if res.OldDirectory != pgdata+".pg15" {
					t.Errorf("old directory = %q", res.OldDirectory)
				}
				if v, _ := os.ReadFile(filepath.Join(h.vol, "pgdata.pg15", "PG_VERSION")); strings.TrimSpace(string(v)) != "15" {
					t.Errorf("the kept old directory is not PostgreSQL 15: %q", v)
				}
			}
			h.start(newImage)
			if after := h.fingerprint(newImage); after != before {
				t.Errorf("data differs after the resumed upgrade:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// Once the new directory is in place a rollback is refused (the old directory
// of a link upgrade shares files the new server may have changed).
func TestUpgradeRollbackRefusedPastThePointOfNoReturn(t *testing.T) {
	h := newHarness(t)
	h.initOld(false)
	h.stop(oldImage)
	if _, err := h.upgrade("run", "--method=link", "--fail-after="+StepSwap); err == nil {
		t.Fatal("the run did not stop")
	}
	res, err := h.upgrade("rollback")
	if err == nil || res.OK || !res.PastPointOfNoReturn || !strings.Contains(res.Message, "point of no return") {
		t.Fatalf("rollback after the swap: %v %+v", err, res)
	}
	if got := h.runnable(); got != "17" {
		t.Errorf("PGDATA holds %s", got)
	}
}

// An old primary killed with its pod (no shutdown checkpoint, a stale
// postmaster.pid) is crash-recovered and shut down cleanly before pg_upgrade,
// which refuses anything else; no acknowledged row is lost.
func TestUpgradeAfterAnUncleanShutdown(t *testing.T) {
	h := newHarness(t)
	h.initOld(true)
	h.seed(0)
	h.sql(oldImage, "app", "INSERT INTO words (w, d) VALUES ('last acknowledged', 'x')")
	// A sequence skips ahead in crash recovery (its WAL pre-logs 32 values):
	// compared without it.
	unsequenced := func(image string) string {
		return regexp.MustCompile(`\|\d+\|large object`).ReplaceAllString(h.fingerprint(image), "|large object")
	}
	before := unsequenced(oldImage)
	h.must(oldImage, "pg_ctl", "stop", "-D", pgdata, "-m", "immediate")
	res, err := h.upgrade("run")
	if err != nil || !res.OK {
		t.Fatalf("run: %v %+v", err, res)
	}
	h.start(newImage)
	if after := unsequenced(newImage); after != before {
		t.Errorf("data differs:\nbefore %s\nafter  %s", before, after)
	}
}
