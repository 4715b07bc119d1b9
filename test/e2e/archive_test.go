//go:build e2e

package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// Continuous archiving on the real cluster, checked on the archive itself:
// turned on without restarting any pod, every WAL file written reaches the S3
// server (a segment fetched back from the archive inside the pod is byte for
// byte the one in pg_wal), and with the S3 server gone the Database stays
// Ready under writes while ContinuousArchiving turns False with the store's
// error within 2 minutes, then True again once the server is back and the
// backlog drained.
func TestContinuousArchivingToS3(t *testing.T) {
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
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Database
metadata:
  name: wal-db
spec:
  image: postgres:15
  databaseName: testdb
  username: admin
  storage:
    size: "1Gi"
`)
	c.must("wait", "--for=condition=Ready", "pod/s3", "--timeout=120s")
	c.waitPhase("wal-db", "Ready", readyTimeout)
	podUID := c.jsonpath("pod/wal-db-0", "{.metadata.uid}")
	if out, err := c.psql("wal-db-0", true, "CREATE TABLE t(id int primary key, v text); INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 1000) i"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}

	// On: a reload, not a restart.
	c.must("patch", "database", "wal-db", "--type=merge", "-p", `{"spec":{"walArchive":{"storageLocation":"s3://backups/wal-db","archiveTimeout":"10s",
		"s3":{"endpoint":"http://s3:7070","forcePathStyle":true,"credentialsSecret":{"name":"s3-creds"}}}}}`)
	c.eventually(3*time.Minute, "ContinuousArchiving True with a WAL file archived", func() string {
		if r := c.condition("wal-db", "ContinuousArchiving", "reason"); r != "Archiving" {
			return r + ": " + c.condition("wal-db", "ContinuousArchiving", "message")
		}
		return ""
	})
	if uid := c.jsonpath("pod/wal-db-0", "{.metadata.uid}"); uid != podUID {
		t.Errorf("turning the archive on replaced the pod")
	}
	if n := c.jsonpath("pod/wal-db-0", "{.status.containerStatuses[0].restartCount}"); n != "0" {
		t.Errorf("turning the archive on restarted the container (%s)", n)
	}

	// The archive holds what PostgreSQL wrote: a segment switched now is
	// archived within archiveTimeout and fetched back identical.
	c.mustPsql("wal-db-0", "INSERT INTO t VALUES (1001, 'x')")
	seg := strings.TrimSpace(c.mustPsql("wal-db-0", "SELECT pg_walfile_name(pg_current_wal_lsn())"))
	c.mustPsql("wal-db-0", "SELECT pg_switch_wal()")
	c.eventually(2*time.Minute, seg+" archived", func() string {
		if got := c.jsonpath("database/wal-db", "{.status.walArchive.lastArchivedWAL}"); got < seg {
			return "last archived " + got
		}
		return ""
	})
	fetched := c.must("exec", "wal-db-0", "-c", "postgres", "--", "sh", "-c",
		"cd /var/lib/postgresql/data/pgdata && /controller/manager wal-fetch --config-dir=/etc/postgres-operator/wal-archive "+seg+" /tmp/"+seg+" && "+
			"sha256sum /tmp/"+seg+" /var/lib/postgresql/data/pgdata/pg_wal/"+seg+" | cut -d' ' -f1 | uniq | wc -l; rm -f /tmp/"+seg)
	if strings.TrimSpace(fetched) != "1" {
		t.Errorf("the archived %s differs from pg_wal's: %s", seg, fetched)
	}

	// A Physical Backup: taken from the standby (a second instance added
	// now), streamed into the archive, read back and checked against its
	// backup manifest, and Completed once the WAL it needs is archived (the
	// primary's archive_timeout closes the segment the standby's backup
	// ended in).
	c.must("patch", "database", "wal-db", "--type=merge", "-p", `{"spec":{"replicas":2}}`)
	c.eventually(readyTimeout, "two ready instances", func() string {
		if r := c.jsonpath("database/wal-db", "{.status.readyReplicas}"); r != "2" {
			return "ready " + r
		}
		return ""
	})
	// No base backup yet: not recoverable, and the condition says what to do.
	c.eventually(2*time.Minute, "Recoverable False: NoBaseBackup", func() string {
		if r := c.condition("wal-db", "Recoverable", "reason"); r != "NoBaseBackup" {
			return r + ": " + c.condition("wal-db", "Recoverable", "message")
		}
		return ""
	})
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Backup
metadata:
  name: base-1
spec:
  databaseRef:
    name: wal-db
  method: Physical
`)
	c.eventually(5*time.Minute, "the Physical Backup Completed", func() string {
		p := c.jsonpath("backup/base-1", "{.status.phase}")
		if p == "Failed" {
			t.Fatalf("the Physical Backup failed: %s", c.jsonpath("backup/base-1", "{.status.error}"))
		}
		if p != "Completed" {
			return p + ": " + c.jsonpath("backup/base-1", `{.status.conditions[?(@.type=="Ready")].message}`)
		}
		return ""
	})
	if src := c.jsonpath("backup/base-1", "{.status.baseBackup.source}"); !strings.HasPrefix(src, "wal-db-1.") {
		t.Errorf("the base backup was taken from %q, want the standby wal-db-1", src)
	}
	files, _ := strconv.Atoi(c.jsonpath("backup/base-1", "{.status.baseBackup.files}"))
	endWAL := c.jsonpath("backup/base-1", "{.status.baseBackup.endWAL}")
	if files < 500 || endWAL == "" || c.jsonpath("backup/base-1", "{.status.baseBackup.systemIdentifier}") != c.jsonpath("database/wal-db", "{.status.systemIdentifier}") {
		t.Errorf("status.baseBackup: %s", c.jsonpath("backup/base-1", "{.status.baseBackup}"))
	}
	t.Logf("Physical Backup: %s in %s, %s", c.jsonpath("backup/base-1", "{.status.baseBackup}"), c.jsonpath("backup/base-1", "{.status.duration}"),
		c.jsonpath("backup/base-1", `{.status.conditions[?(@.type=="Ready")].message}`))
	// The base backup is in the archive: fetched back in the standby's pod
	// with the operator's own binary, its WAL's last segment too.
	fetched = c.must("exec", "wal-db-1", "-c", "postgres", "--", "sh", "-c",
		"cd /var/lib/postgresql/data/pgdata && /controller/manager wal-fetch --config-dir=/etc/postgres-operator/wal-archive "+endWAL+" /tmp/"+endWAL+" && echo fetched; rm -f /tmp/"+endWAL)
	if !strings.Contains(fetched, "fetched") {
		t.Errorf("the base backup's last WAL segment %s is not in the archive: %s", endWAL, fetched)
	}

	// The window: from the base backup's end to the last archived commit.
	c.mustPsql("wal-db-0", "INSERT INTO t VALUES (1002, 'after the base backup')")
	c.mustPsql("wal-db-0", "SELECT pg_switch_wal()")
	c.eventually(3*time.Minute, "Recoverable True with a window past the base backup", func() string {
		if r := c.condition("wal-db", "Recoverable", "reason"); r != "Recoverable" {
			return r + ": " + c.condition("wal-db", "Recoverable", "message")
		}
		first := c.jsonpath("database/wal-db", "{.status.walArchive.firstRecoverablePoint}")
		last := c.jsonpath("database/wal-db", "{.status.walArchive.lastRecoverablePoint}")
		if first < c.jsonpath("backup/base-1", "{.status.backupTime}") || last <= first {
			return "window " + first + " to " + last
		}
		return ""
	})
	t.Logf("Recoverable: %s", c.condition("wal-db", "Recoverable", "message"))

	// The store goes away under writes.
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			if _, err := c.psql("wal-db-0", false, "INSERT INTO t SELECT i, md5(i::text) FROM generate_series("+strconv.Itoa(2000+n*100)+", "+strconv.Itoa(2099+n*100)+") i; SELECT pg_switch_wal()"); err == nil {
				n++
			}
			time.Sleep(2 * time.Second)
		}
	}()
	c.must("delete", "pod", "s3", "--wait=true")
	down := time.Now()
	c.eventually(2*time.Minute, "ContinuousArchiving False with the store's error", func() string {
		if r := c.condition("wal-db", "ContinuousArchiving", "status"); r != "False" {
			return r + ": " + c.condition("wal-db", "ContinuousArchiving", "message")
		}
		return ""
	})
	t.Logf("ContinuousArchiving False %s after the store went: %s", time.Since(down).Round(time.Second), c.condition("wal-db", "ContinuousArchiving", "message"))
	if phase := c.jsonpath("database/wal-db", "{.status.phase}"); phase != "Ready" {
		t.Errorf("the Database is %s while its archive is down", phase)
	}
	if p := c.jsonpath("database/wal-db", "{.status.walArchive.pendingFiles}"); p == "" || p == "0" {
		t.Errorf("pending files while the store is down: %q", p)
	}
	close(stop)
	if n := <-done; n == 0 {
		t.Error("no write succeeded while the archive was down")
	}

	// Back: the backlog drains.
	c.mustApply(s3Server("s3", 7070, ""))
	c.must("wait", "--for=condition=Ready", "pod/s3", "--timeout=120s")
	c.eventually(4*time.Minute, "ContinuousArchiving True and nothing pending", func() string {
		r := c.condition("wal-db", "ContinuousArchiving", "reason")
		p := c.jsonpath("database/wal-db", "{.status.walArchive.pendingFiles}")
		if r != "Archiving" || p != "0" {
			return r + " pending " + p + ": " + c.condition("wal-db", "ContinuousArchiving", "message")
		}
		return ""
	})

	// Off: a reload again; the condition goes.
	c.must("patch", "database", "wal-db", "--type=merge", "-p", `{"spec":{"walArchive":null}}`)
	c.eventually(time.Minute, "ContinuousArchiving gone", func() string {
		if r := c.condition("wal-db", "ContinuousArchiving", "status"); r != "" {
			return r
		}
		return ""
	})
	if uid := c.jsonpath("pod/wal-db-0", "{.metadata.uid}"); uid != podUID {
		t.Errorf("turning the archive off replaced the pod")
	}
}

// mustPsql runs sql as the superuser over the pod's private socket.
func (c *cluster) mustPsql(pod, sql string) string {
	c.t.Helper()
	out, err := c.psql(pod, false, sql)
	if err != nil {
		c.t.Fatalf("%s: %v\n%s", sql, err, out)
	}
	return out
}
