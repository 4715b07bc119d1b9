//go:build e2e

package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// upgradeSeed is the data a major upgrade must carry: text indexes under the
// default (C.UTF-8, libc) and an ICU collation, a view, a sequence, a large
// object and an extension whose version changes between 15 and 17.
const upgradeSeed = `
CREATE TABLE words (id serial PRIMARY KEY, w text, d text COLLATE "de-x-icu");
INSERT INTO words (w, d) SELECT md5(i::text) || 'Äpfel', 'straße' || i FROM generate_series(1, 20000) i;
CREATE INDEX words_w ON words (w);
CREATE INDEX words_d ON words (d);
CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(12,2));
INSERT INTO orders SELECT g, 'customer ' || (g % 97), g * 1.25 FROM generate_series(1, 50000) g;
CREATE INDEX orders_customer ON orders (customer);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 1000;
CREATE SEQUENCE invoice_no START 1000;
SELECT nextval('invoice_no'), nextval('invoice_no');
SELECT lo_from_bytea(4242, 'a large object survives the upgrade');
`

// upgradeFingerprint is what must be equal before and after: a checksum of
// every user table's rows, the view, the sequence, the large object, and an
// index-ordered scan under each collation.
const upgradeFingerprint = `SELECT string_agg(c, ' ' ORDER BY c COLLATE "C") FROM (
 SELECT relname || '=' || (xpath('/row/c/text()', query_to_xml(format('SELECT md5(string_agg(t::text, '','' ORDER BY t::text)) AS c FROM %I t', relname), false, true, '')))[1]::text c
 FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace
 UNION ALL SELECT 'view=' || count(*) FROM big_orders
 UNION ALL SELECT 'seq=' || last_value FROM invoice_no
 UNION ALL SELECT 'lo=' || convert_from(lo_get(4242), 'UTF8')
 UNION ALL SELECT 'w=' || string_agg(w, ',') FROM (SELECT w FROM words ORDER BY w LIMIT 3) s
 UNION ALL SELECT 'd=' || string_agg(d, ',') FROM (SELECT d FROM words ORDER BY d LIMIT 3) s) x`

// Lab 8.3's rolling update with a change of major, as the spec's exercise does
// it (postgres:14 → postgres:15 there; our local postgres:15 → postgres:17,
// bookworm → trixie: other glibc and ICU). A preflight failure (a function
// whose library was built for 15) leaves 15 serving and Ready with a condition
// naming the library; a downgrade is refused; once fixed, the patch upgrades
// both instances in place: Ready on 17, every pod on the new image, the standby
// streaming, every table's checksum equal, the collation-dependent indexes
// rebuilt, and Backup and Restore work afterwards (the pre-upgrade safety-net
// Backup restores into the upgraded Database).
func TestMajorUpgradeInPlace(t *testing.T) {
	c := newCluster(t)
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Database
metadata:
  name: upgrade-test
spec:
  image: postgres:15
  replicas: 2
  databaseName: testdb
  username: admin
  storage:
    size: "1Gi"
  upgrade:
    backup: {}
`)
	c.waitPhase("upgrade-test", "Ready", readyTimeout)
	primary := c.primary("upgrade-test")
	c.serviceAnswers(primary)
	// The application's objects are the application user's (the Backups run
	// as it); the extension needs the superuser.
	if out, err := c.psql(primary, true, upgradeSeed); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := c.psql(primary, false, "CREATE EXTENSION pg_stat_statements"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	// A C function whose library is PostgreSQL 15's: pg_upgrade --check finds
	// it cannot be loaded by 17.
	c.must("exec", primary, "-c", "postgres", "--", "cp", "/usr/lib/postgresql/15/lib/plpgsql.so", "/var/lib/postgresql/data/legacy_handler.so")
	if _, err := c.psql(primary, false, `CREATE FUNCTION legacy_handler() RETURNS language_handler AS '/var/lib/postgresql/data/legacy_handler.so', 'plpgsql_call_handler' LANGUAGE C`); err != nil {
		t.Fatal(err)
	}
	before, err := c.psql(primary, false, upgradeFingerprint)
	if err != nil || !strings.Contains(before, "words=") {
		t.Fatalf("fingerprint: %v %s", err, before)
	}

	// The spec's step: patch the image.
	c.must("patch", "database", "upgrade-test", "--type=merge", "-p", `{"spec":{"image":"postgres:17"}}`)
	c.eventually(5*time.Minute, "a failed preflight", func() string {
		if p := c.jsonpath("database/upgrade-test", "{.status.upgrade.phase}"); p != "PreflightFailed" {
			return "upgrade phase " + p + ": " + c.jsonpath("database/upgrade-test", "{.status.upgrade.message}")
		}
		return ""
	})
	stalled := c.condition("upgrade-test", "Stalled", "reason") + ": " + c.condition("upgrade-test", "Stalled", "message")
	if !strings.HasPrefix(stalled, "UpgradePreflightFailed") || !strings.Contains(stalled, "legacy_handler.so") {
		t.Errorf("Stalled = %s", stalled)
	}
	c.waitPhase("upgrade-test", "Ready", time.Minute)
	for _, pod := range []string{"upgrade-test-0", "upgrade-test-1"} {
		if img := c.jsonpath("pod/"+pod, "{.spec.containers[0].image}"); img != "postgres:15" {
			t.Errorf("%s runs %s after a failed preflight", pod, img)
		}
	}
	if v, err := c.psql(primary, true, "SHOW server_version_num"); err != nil || !strings.HasPrefix(strings.TrimSpace(v), "15") {
		t.Errorf("server after a failed preflight: %q %v", v, err)
	}

	// A downgrade is refused.
	c.must("patch", "database", "upgrade-test", "--type=merge", "-p", `{"spec":{"image":"postgres:14"}}`)
	c.eventually(time.Minute, "a refused downgrade", func() string {
		if r := c.condition("upgrade-test", "Stalled", "reason"); r != "DowngradeRefused" {
			return "Stalled reason " + r
		}
		return ""
	})
	if img := c.jsonpath("statefulset/upgrade-test", "{.spec.template.spec.containers[0].image}"); img != "postgres:15" {
		t.Errorf("statefulset image after a refused downgrade: %s", img)
	}

	// Fixed: the same patch upgrades.
	if _, err := c.psql(primary, false, "DROP FUNCTION legacy_handler()"); err != nil {
		t.Fatal(err)
	}
	c.must("exec", primary, "-c", "postgres", "--", "rm", "/var/lib/postgresql/data/legacy_handler.so")
	started := time.Now()
	c.must("patch", "database", "upgrade-test", "--type=merge", "-p", `{"spec":{"image":"postgres:17"}}`)
	sawUpgrading := false
	c.eventually(10*time.Minute, "the upgrade to succeed", func() string {
		if c.jsonpath("database/upgrade-test", "{.status.phase}") == "Upgrading" {
			sawUpgrading = true
		}
		if p := c.jsonpath("database/upgrade-test", "{.status.upgrade.phase}"); p != "Succeeded" {
			return "upgrade phase " + p + ": " + c.jsonpath("database/upgrade-test", "{.status.upgrade.message}")
		}
		return ""
	})
	t.Logf("upgrade took %s; status.upgrade: %s", time.Since(started).Round(time.Second), c.jsonpath("database/upgrade-test", "{.status.upgrade}"))
	if !sawUpgrading {
		t.Errorf("phase Upgrading was never observed")
	}
	c.waitPhase("upgrade-test", "Ready", readyTimeout)
	c.eventually(2*time.Minute, "all pods updated", func() string {
		got := c.jsonpath("statefulset/upgrade-test", "{.status.updatedReplicas}/{.spec.replicas} {.status.readyReplicas} {.spec.template.spec.containers[0].image}")
		if got != "2/2 2 postgres:17" {
			return got
		}
		return ""
	})
	for _, pod := range []string{"upgrade-test-0", "upgrade-test-1"} {
		if img := c.jsonpath("pod/"+pod, "{.spec.containers[0].image}"); img != "postgres:17" {
			t.Errorf("%s runs %s", pod, img)
		}
	}
	primary = c.primary("upgrade-test")
	c.serviceAnswers(primary)
	if v, err := c.psql(primary, true, "SHOW server_version_num"); err != nil || !strings.HasPrefix(strings.TrimSpace(v), "17") {
		t.Errorf("server_version_num after the upgrade: %q %v", v, err)
	}
	for field, want := range map[string]string{
		"{.status.dataVersion}":                               "17",
		"{.status.upgrade.fromMajor}":                         "15",
		"{.status.upgrade.toMajor}":                           "17",
		"{.status.upgrade.method}":                            "Link",
		"{.status.upgrade.safetyBackup}":                      "upgrade-test-pre-upgrade-g",
		"{.status.upgrade.collationChange}":                   "glibc 2.36 → 2.41; ICU 72 → 76",
		"{.status.upgrade.extensionsToUpdate[0]}":             "pg_stat_statements 1.10 → 1.11",
		`{.status.conditions[?(@.type=="Upgrading")].reason}`: "UpgradeSucceeded",
	} {
		if got := c.jsonpath("database/upgrade-test", field); !strings.Contains(got, want) {
			t.Errorf("%s = %q, want %q", field, got, want)
		}
	}
	if !strings.HasPrefix(c.jsonpath("database/upgrade-test", "{.status.postgresVersion}"), "17.") {
		t.Errorf("postgresVersion = %s", c.jsonpath("database/upgrade-test", "{.status.postgresVersion}"))
	}
	if n := c.jsonpath("database/upgrade-test", "{.status.upgrade.rebuiltIndexes}"); n == "" || n == "0" {
		t.Errorf("rebuiltIndexes = %q", n)
	}
	if d := c.jsonpath("database/upgrade-test", "{.status.upgrade.downtime}"); d == "" {
		t.Errorf("no downtime recorded")
	} else {
		t.Logf("downtime recorded by the operator: %s", d)
	}
	// The agent's metrics on 17 (checkpoints moved to pg_stat_checkpointer).
	ip := c.must("get", "pod", primary, "-o", "jsonpath={.status.podIP}")
	m := scrapeURL(t, "http://"+net.JoinHostPort(ip, "9187")+"/metrics", "")
	if up, _ := seriesValue(m, "postgres_up"); up != 1 {
		t.Errorf("postgres_up on 17 = %v", up)
	}
	if _, ok := seriesValue(m, "postgres_info", "role", "primary"); !ok {
		t.Error("no postgres_info{role=primary} on 17")
	}
	if _, ok := seriesValue(m, "postgres_checkpoints_requested_total"); !ok {
		t.Error("no checkpoints on 17")
	}
	after, err := c.psql(primary, false, upgradeFingerprint)
	if err != nil || after != before {
		t.Errorf("data differs after the upgrade (%v):\nbefore %s\nafter  %s", err, before, after)
	}
	if m, err := c.psql(primary, false, "SELECT count(*) FROM pg_database WHERE datcollversion IS DISTINCT FROM pg_database_collation_actual_version(oid)"); err != nil || strings.TrimSpace(m) != "0" {
		t.Errorf("databases with a collation version mismatch: %q %v", m, err)
	}
	// The standby re-cloned the new primary and streams.
	c.waitChecksPassed("upgrade-test", 2*time.Minute)
	standby := "upgrade-test-1"
	if primary == standby {
		standby = "upgrade-test-0"
	}
	if s, err := c.psql(primary, false, "SELECT application_name || ':' || state FROM pg_stat_replication"); err != nil || strings.TrimSpace(s) != standby+":streaming" {
		t.Errorf("replication after the upgrade: %q %v", s, err)
	}
	if v, err := c.psql(standby, false, "SELECT current_setting('server_version_num')::int / 10000 || ':' || pg_is_in_recovery()"); err != nil || strings.TrimSpace(v) != "17:true" {
		t.Errorf("standby: %q %v", v, err)
	}
	if got, err := c.psql(standby, false, "SELECT count(*) FROM orders"); err != nil || strings.TrimSpace(got) != "50000" {
		t.Errorf("rows on the standby: %q %v", got, err)
	}

	// Backup and Restore afterwards: a new Backup, and the pre-upgrade
	// safety-net Backup (taken by 15) restored into 17.
	safety := c.jsonpath("database/upgrade-test", "{.status.upgrade.safetyBackup}")
	c.waitCompleted("backup/"+safety, time.Minute)
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Backup
metadata: {name: after-upgrade}
spec: {databaseRef: {name: upgrade-test}}
`)
	c.waitCompleted("backup/after-upgrade", 5*time.Minute)
	if v := c.jsonpath("backup/after-upgrade", "{.status.serverVersion}"); !strings.HasPrefix(v, "17") {
		t.Errorf("backup serverVersion = %q", v)
	}
	c.mustApply(fmt.Sprintf(`
apiVersion: database.example.com/v1
kind: Restore
metadata: {name: restore-safety-net}
spec: {databaseRef: {name: upgrade-test}, backupRef: {name: %s}, keepPreviousFor: 0s}
`, safety))
	c.waitCompleted("restore/restore-safety-net", 5*time.Minute)
	restored, err := c.psql(primary, true, "SELECT count(*) FROM orders")
	if err != nil || strings.TrimSpace(restored) != "50000" {
		t.Errorf("rows after restoring the safety-net backup: %q %v", restored, err)
	}

	// kubectl: the postgres category lists the three kinds; READY is ready/total.
	// (A fresh discovery cache: kubectl's may predate the CRDs' categories.)
	all := c.must("--cache-dir", t.TempDir(), "get", "postgres")
	for _, want := range []string{"database.database.example.com/upgrade-test", "backup.database.example.com/after-upgrade", "restore.database.example.com/restore-safety-net", "2/2"} {
		if !strings.Contains(all, want) {
			t.Errorf("kubectl get postgres lacks %q:\n%s", want, all)
		}
	}
	// The connection details: ro-uri reaches a standby, pgpass and jdbc-uri are there.
	if v, err := c.kubectl("exec", primary, "-c", "postgres", "--", "sh", "-c",
		`PGSSLROOTCERT=/etc/postgres-operator/credentials/ca.crt psql "$(cat /etc/postgres-operator/credentials/ro-uri)" -Atc "SELECT pg_is_in_recovery()"`); err != nil || strings.TrimSpace(v) != "t" {
		t.Errorf("ro-uri: %q %v", v, err)
	}
	for _, key := range []string{"jdbc-uri", "pgpass"} {
		if v := c.jsonpath("secret/upgrade-test-credentials", "{.data."+key+"}"); v == "" {
			t.Errorf("credentials Secret has no %s", key)
		}
	}
}
