//go:build e2e

package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Point-in-time recovery into a new Database on the real cluster, checked row
// by row: a source archives its WAL and takes a Physical Backup; rows are
// committed one by one with the server's clock read between each; a new
// Database recovered to a time between two commits holds exactly the rows
// committed before it, on a new timeline, and its standby clones it; one
// recovered to the end of the archive holds every row; a target before the
// window is refused before anything is restored (no cluster is created).
func TestPointInTimeRecoveryIntoANewDatabase(t *testing.T) {
	c := newCluster(t)
	c.mustApply(`
apiVersion: v1
kind: Secret
metadata:
  name: s3-creds
stringData:
  accessKeyId: e2e-access
  secretAccessKey: e2e-secret-key-123
` + s3Server("s3", 7070, ""))
	c.must("wait", "--for=condition=Ready", "pod/s3", "--timeout=120s")
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Database
metadata:
  name: src
spec:
  image: postgres:15
  databaseName: testdb
  username: admin
  storage:
    size: "1Gi"
  walArchive:
    storageLocation: s3://backups/src
    archiveTimeout: 10s
    s3:
      endpoint: http://s3:7070
      forcePathStyle: true
      credentialsSecret:
        name: s3-creds
`)
	c.waitPhase("src", "Ready", readyTimeout)
	// A new cluster's first segment is not switched by archive_timeout
	// (seen on PostgreSQL 15 here): switch it.
	c.mustPsql("src-0", "CREATE TABLE t(id int primary key, at timestamptz not null default clock_timestamp()); SELECT pg_switch_wal()")
	c.eventually(3*time.Minute, "the source archiving", func() string {
		if r := c.condition("src", "ContinuousArchiving", "reason"); r != "Archiving" {
			return r + ": " + c.condition("src", "ContinuousArchiving", "message")
		}
		return ""
	})
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Backup
metadata:
  name: src-base
spec:
  databaseRef:
    name: src
  method: Physical
`)
	c.eventually(5*time.Minute, "the Physical Backup Completed", func() string {
		p := c.jsonpath("backup/src-base", "{.status.phase}")
		if p == "Failed" {
			t.Fatalf("the Physical Backup failed: %s", c.jsonpath("backup/src-base", "{.status.error}"))
		}
		if p != "Completed" {
			return p
		}
		return ""
	})

	// Rows 1..8, one transaction each, the server's clock read after each.
	const rows = 8
	between := commitRowsWithClock(c, "src-0", rows)
	c.mustPsql("src-0", "SELECT pg_switch_wal()")
	c.eventually(3*time.Minute, "the window to cover the last row", func() string {
		if last := c.jsonpath("database/src", "{.status.walArchive.lastRecoverablePoint}"); last < between[rows-2][:19] {
			return "last recoverable point " + last + ": " + c.condition("src", "Recoverable", "message")
		}
		return ""
	})
	t.Logf("source window: %s; rows committed between %v", c.condition("src", "Recoverable", "message"), between)

	clone := func(name, target string) {
		c.mustApply(fmt.Sprintf(`
apiVersion: database.example.com/v1
kind: Database
metadata:
  name: %s
spec:
  image: postgres:15
  databaseName: testdb
  username: admin
  replicas: %d
  storage:
    size: "1Gi"
  bootstrap:
    pointInTime:
      databaseRef:
        name: src
      %s
`, name, map[bool]int{true: 2, false: 1}[name == "at-time"], target))
	}
	ids := func(pod string) string { return rowIDs(c, pod) }

	t.Run("to a time between two commits: exactly the rows committed before it, and a standby", func(t *testing.T) {
		const k = 5
		clone("at-time", "time: \""+between[k-1]+"\"")
		c.waitPhase("at-time", "Ready", 2*readyTimeout)
		c.eventually(time.Minute, "Recovered True", func() string {
			if r := c.condition("at-time", "Recovered", "reason"); r != "Recovered" {
				return r + ": " + c.condition("at-time", "Recovered", "message")
			}
			return ""
		})
		primary := c.jsonpath("database/at-time", "{.status.currentPrimary}")
		if got := ids(primary); got != seqIDs(k) {
			t.Errorf("recovered rows %s, want %s", got, seqIDs(k))
		}
		if tl, _ := strconv.Atoi(c.jsonpath("database/at-time", "{.status.recovery.timeline}")); tl < 2 {
			t.Errorf("recovery status %s: want a new timeline", c.jsonpath("database/at-time", "{.status.recovery}"))
		}
		if c.jsonpath("database/at-time", "{.status.systemIdentifier}") != c.jsonpath("database/src", "{.status.systemIdentifier}") {
			t.Error("the recovered cluster is not the source's")
		}
		t.Logf("%s", c.condition("at-time", "Recovered", "message"))
		// The standby cloned the recovered primary and streams.
		c.eventually(readyTimeout, "two ready instances", func() string {
			if r := c.jsonpath("database/at-time", "{.status.readyReplicas}"); r != "2" {
				return "ready " + r
			}
			return ""
		})
		standby := "at-time-0"
		if primary == standby {
			standby = "at-time-1"
		}
		c.eventually(time.Minute, "the standby to hold the recovered rows", func() string {
			if got := ids(standby); got != seqIDs(k) {
				return got
			}
			return ""
		})
		// Writable, and the source is untouched.
		c.mustPsql(primary, "INSERT INTO t (id) VALUES (100)")
		if got := ids("src-0"); got != seqIDs(rows) {
			t.Errorf("the source's rows changed: %s", got)
		}
	})

	t.Run("to the end of the archive: every row", func(t *testing.T) {
		clone("at-end", "latest: true")
		c.waitPhase("at-end", "Ready", 2*readyTimeout)
		if got := ids("at-end-0"); got != seqIDs(rows) {
			t.Errorf("recovered rows %s, want %s", got, seqIDs(rows))
		}
	})

	t.Run("a target before the window is refused and nothing is created", func(t *testing.T) {
		clone("too-early", "time: \"2020-01-01T00:00:00Z\"")
		c.eventually(2*time.Minute, "Recovered False: TargetNotRecoverable", func() string {
			if r := c.condition("too-early", "Recovered", "reason"); r != "TargetNotRecoverable" {
				return r + ": " + c.condition("too-early", "Recovered", "message")
			}
			return ""
		})
		if msg := c.condition("too-early", "Recovered", "message"); !strings.Contains(msg, "window") {
			t.Errorf("the refusal does not name the window: %s", msg)
		}
		if id := c.jsonpath("database/too-early", "{.status.systemIdentifier}"); id != "" {
			t.Errorf("a cluster was created (%s)", id)
		}
	})

	t.Run("bad input is refused with a message", func(t *testing.T) {
		for _, tc := range []struct{ target, want string }{
			{"latest: true\n      lsn: 0/3000000", "set exactly one target"},
			{"inclusive: false", "set exactly one target"},
		} {
			out, err := c.apply(fmt.Sprintf(`
apiVersion: database.example.com/v1
kind: Database
metadata:
  name: bad
spec:
  image: postgres:15
  databaseName: testdb
  username: admin
  storage:
    size: "1Gi"
  bootstrap:
    pointInTime:
      databaseRef:
        name: src
      %s
`, tc.target))
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("%q: %v %s; want %q", tc.target, err, out, tc.want)
			}
		}
	})
}

// An in-place point-in-time Restore on the real cluster, checked row by
// row: rows committed one by one with the server's clock read between each;
// a Restore to a time between two commits leaves exactly the rows committed
// before it, on a new timeline, and the standby follows (it re-clones); a
// row written after it is kept only in the replaced data directory, and the
// undo Restore brings back every row of before the restore; a target
// before the window is refused before anything changes.
func TestPointInTimeRestoreInPlaceAndUndo(t *testing.T) {
	c := newCluster(t)
	c.mustApply(`
apiVersion: v1
kind: Secret
metadata:
  name: s3-creds
stringData:
  accessKeyId: e2e-access
  secretAccessKey: e2e-secret-key-123
` + s3Server("s3", 7070, ""))
	c.must("wait", "--for=condition=Ready", "pod/s3", "--timeout=120s")
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Database
metadata:
  name: pit
spec:
  image: postgres:15
  databaseName: testdb
  username: admin
  replicas: 2
  storage:
    size: "1Gi"
  walArchive:
    storageLocation: s3://backups/pit
    archiveTimeout: 10s
    s3:
      endpoint: http://s3:7070
      forcePathStyle: true
      credentialsSecret:
        name: s3-creds
`)
	c.waitPhase("pit", "Ready", readyTimeout)
	primary := c.jsonpath("database/pit", "{.status.currentPrimary}")
	c.mustPsql(primary, "CREATE TABLE t(id int primary key); SELECT pg_switch_wal()")
	c.eventually(3*time.Minute, "archiving", func() string {
		if r := c.condition("pit", "ContinuousArchiving", "reason"); r != "Archiving" {
			return r + ": " + c.condition("pit", "ContinuousArchiving", "message")
		}
		return ""
	})
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Backup
metadata:
  name: pit-base
spec:
  databaseRef:
    name: pit
  method: Physical
`)
	c.eventually(5*time.Minute, "the Physical Backup Completed", func() string {
		if p := c.jsonpath("backup/pit-base", "{.status.phase}"); p != "Completed" {
			return p + " " + c.jsonpath("backup/pit-base", "{.status.error}")
		}
		return ""
	})
	const rows = 8
	between := commitRowsWithClock(c, primary, rows)
	c.mustPsql(primary, "SELECT pg_switch_wal()")
	c.eventually(3*time.Minute, "the window to cover the last row", func() string {
		if last := c.jsonpath("database/pit", "{.status.walArchive.lastRecoverablePoint}"); last < between[rows-2][:19] {
			return "last recoverable point " + last + ": " + c.condition("pit", "Recoverable", "message")
		}
		return ""
	})
	ids := func(pod string) string { return rowIDs(c, pod) }
	restore := func(name, spec string) {
		c.mustApply(fmt.Sprintf(`
apiVersion: database.example.com/v1
kind: Restore
metadata:
  name: %s
spec:
  databaseRef:
    name: pit
  %s
`, name, spec))
	}
	waitRestore := func(name string, d time.Duration) {
		c.eventually(d, "Restore "+name+" Completed", func() string {
			p := c.jsonpath("restore/"+name, "{.status.phase}")
			if p == "Failed" {
				t.Fatalf("Restore %s failed: %s", name, c.jsonpath("restore/"+name, "{.status.error}"))
			}
			if p != "Completed" {
				return p + ": " + c.jsonpath("restore/"+name, "{.status.conditions[?(@.type==\"Ready\")].message}")
			}
			return ""
		})
	}
	standbyHolds := func(want string) {
		c.eventually(readyTimeout, "the standby to hold "+want, func() string {
			if r := c.jsonpath("database/pit", "{.status.readyReplicas}"); r != "2" {
				return "ready " + r
			}
			p := c.jsonpath("database/pit", "{.status.currentPrimary}")
			standby := map[bool]string{true: "pit-1", false: "pit-0"}[p == "pit-0"]
			out, err := c.psql(standby, false, "SELECT id FROM t ORDER BY id")
			if err != nil {
				return err.Error()
			}
			if got := strings.Join(strings.Fields(out), ","); got != want {
				return "standby holds " + got
			}
			return ""
		})
	}

	t.Run("a target before the window is refused and nothing changes", func(t *testing.T) {
		restore("too-early", "pointInTime:\n    time: \"2020-01-01T00:00:00Z\"")
		c.eventually(time.Minute, "Failed: TargetNotRecoverable", func() string {
			if r := c.jsonpath("restore/too-early", "{.status.conditions[?(@.type==\"Ready\")].reason}"); r != "TargetNotRecoverable" {
				return r
			}
			return ""
		})
		if msg := c.jsonpath("restore/too-early", "{.status.error}"); !strings.Contains(msg, "window") {
			t.Errorf("the refusal does not name the window: %s", msg)
		}
		if got := ids(primary); got != seqIDs(rows) {
			t.Errorf("rows %s after a refused Restore, want %s", got, seqIDs(rows))
		}
	})

	t.Run("a restore point that is not in the archive: PostgreSQL gives up, the data directory of before is put back", func(t *testing.T) {
		restore("no-such-point", "pointInTime:\n    restorePoint: never-created")
		c.eventually(2*readyTimeout, "Failed: RecoveryFailed", func() string {
			if r := c.jsonpath("restore/no-such-point", "{.status.conditions[?(@.type==\"Ready\")].reason}"); r != "RecoveryFailed" {
				return r + ": " + c.jsonpath("restore/no-such-point", "{.status.conditions[?(@.type==\"Ready\")].message}")
			}
			return ""
		})
		t.Logf("%s", c.jsonpath("restore/no-such-point", "{.status.error}"))
		if msg := c.jsonpath("restore/no-such-point", "{.status.error}"); !strings.Contains(msg, "put back") {
			t.Errorf("the failure does not say the data directory was put back: %s", msg)
		}
		c.waitPhase("pit", "Ready", readyTimeout)
		primary = c.jsonpath("database/pit", "{.status.currentPrimary}")
		if got := ids(primary); got != seqIDs(rows) {
			t.Errorf("rows after a failed restore %s, want %s", got, seqIDs(rows))
		}
		standbyHolds(seqIDs(rows))
	})

	const k = 5
	t.Run("to a time between two commits: exactly the rows before it, a new timeline, the standby follows", func(t *testing.T) {
		restore("to-five", "pointInTime:\n    time: \""+between[k-1]+"\"")
		waitRestore("to-five", 2*readyTimeout)
		c.waitPhase("pit", "Ready", readyTimeout)
		primary = c.jsonpath("database/pit", "{.status.currentPrimary}")
		if got := ids(primary); got != seqIDs(k) {
			t.Errorf("rows after the restore %s, want %s", got, seqIDs(k))
		}
		if tl, _ := strconv.Atoi(c.jsonpath("restore/to-five", "{.status.recovery.timeline}")); tl < 2 {
			t.Errorf("recovery status %s: want a new timeline", c.jsonpath("restore/to-five", "{.status.recovery}"))
		}
		if c.jsonpath("restore/to-five", "{.status.previousData}") == "" {
			t.Errorf("no previous data directory recorded: %s", c.jsonpath("restore/to-five", "{.status}"))
		}
		t.Logf("%s", c.jsonpath("restore/to-five", "{.status.conditions[?(@.type==\"Ready\")].message}"))
		standbyHolds(seqIDs(k))
		c.mustPsql(primary, "INSERT INTO t (id) VALUES (100)")
	})

	t.Run("undo: every row of before the restore is back, the standby follows", func(t *testing.T) {
		restore("undo-five", "undo: to-five")
		waitRestore("undo-five", 2*readyTimeout)
		c.waitPhase("pit", "Ready", readyTimeout)
		primary = c.jsonpath("database/pit", "{.status.currentPrimary}")
		if got := ids(primary); got != seqIDs(rows) {
			t.Errorf("rows after the undo %s, want %s", got, seqIDs(rows))
		}
		t.Logf("%s", c.jsonpath("restore/undo-five", "{.status.conditions[?(@.type==\"Ready\")].message}"))
		standbyHolds(seqIDs(rows))
		// Writable on its new timeline.
		c.mustPsql(primary, "INSERT INTO t (id) VALUES (200)")
	})

	t.Run("bad input is refused with a message", func(t *testing.T) {
		for _, tc := range []struct{ spec, want string }{
			{"pointInTime:\n    latest: true\n    lsn: 0/3000000", "set exactly one target"},
			{"undo: to-five\n  backupRef:\n    name: pit-base", "undo names an earlier point-in-time Restore"},
		} {
			out, err := c.apply(fmt.Sprintf(`
apiVersion: database.example.com/v1
kind: Restore
metadata:
  name: bad
spec:
  databaseRef:
    name: pit
  %s
`, tc.spec))
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("%q: %v %s; want %q", tc.spec, err, out, tc.want)
			}
		}
	})
}

// commitRowsWithClock commits rows 1..n into t on pod, one transaction each,
// and returns the server's clock read after each commit (a second apart:
// the window's bounds are whole seconds).
func commitRowsWithClock(c *cluster, pod string, n int) []string {
	var between []string
	for id := 1; id <= n; id++ {
		// Two psql runs: one -c string is one transaction, whose clock
		// would be read before its commit.
		c.mustPsql(pod, fmt.Sprintf("INSERT INTO t (id) VALUES (%d)", id))
		out := c.mustPsql(pod, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
		between = append(between, strings.TrimSpace(out))
		time.Sleep(1100 * time.Millisecond)
	}
	return between
}

// rowIDs is t's ids on pod, in order, comma-separated.
func rowIDs(c *cluster, pod string) string {
	return strings.Join(strings.Fields(c.mustPsql(pod, "SELECT id FROM t ORDER BY id")), ",")
}

// seqIDs is "1,2,…,n".
func seqIDs(n int) string {
	var s []string
	for i := 1; i <= n; i++ {
		s = append(s, strconv.Itoa(i))
	}
	return strings.Join(s, ",")
}
