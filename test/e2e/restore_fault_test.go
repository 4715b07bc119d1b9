//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const faultDB = `
apiVersion: database.example.com/v1
kind: Database
metadata:
  name: fault-db
spec:
  image: postgres:15
  databaseName: testdb
  username: admin
  storage:
    size: "2Gi"
`

// oneShotBackup is a Backup of db to the default location.
func oneShotBackup(name, db string) string {
	return `
apiVersion: database.example.com/v1
kind: Backup
metadata:
  name: ` + name + `
spec:
  databaseRef: {name: ` + db + `}
`
}

// TestARestoreWhoseJobIsKilledLeavesTheOldDatabaseThenCompletes kills the restore
// Job's pod (grace 0) while the primary is building the restored database: readers
// only ever see the old content or the restored one, never a mix or an empty
// table; the Job's retry completes the restore and nothing of the killed attempt
// is left.
func TestARestoreWhoseJobIsKilledLeavesTheOldDatabaseThenCompletes(t *testing.T) {
	c := newCluster(t)
	c.mustApply(faultDB)
	c.must("wait", "--for=jsonpath={.status.phase}=Ready", "database/fault-db", "--timeout=240s")
	c.serviceAnswers("fault-db-0")
	// Big enough that the restore takes a few seconds.
	if out, err := c.psql("fault-db-0", true, `CREATE TABLE big (id int PRIMARY KEY, v text);
		INSERT INTO big SELECT i, md5(i::text) || md5((i+1)::text) FROM generate_series(1, 1500000) i`); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	c.mustApply(oneShotBackup("fault-backup", "fault-db"))
	c.must("wait", "--for=jsonpath={.status.phase}=Completed", "backup/fault-backup", "--timeout=300s")
	// After the backup: the "old" content has 10 rows.
	if out, err := c.psql("fault-db-0", true, "DELETE FROM big WHERE id > 10"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}

	// Readers, all along.
	ctx, stop := context.WithCancel(context.Background())
	seen := make(chan map[string]int, 1)
	go func() {
		counts := map[string]int{}
		for ctx.Err() == nil {
			out, err := c.psql("fault-db-0", true, "SELECT count(*) FROM big")
			if err == nil {
				counts[strings.TrimSpace(out)]++
			}
			time.Sleep(300 * time.Millisecond)
		}
		seen <- counts
	}()

	c.mustApply(`
apiVersion: database.example.com/v1
kind: Restore
metadata:
  name: fault-restore
spec:
  databaseRef: {name: fault-db}
  backupRef: {name: fault-backup}
`)
	scratch := func() string {
		out, _ := c.psql("fault-db-0", false, `SELECT count(*) FROM pg_database WHERE datname LIKE 'pgo\_restoring\_%'`)
		return strings.TrimSpace(out)
	}
	c.eventually(3*time.Minute, "the primary to build the restored database", func() string {
		if n := scratch(); n != "1" {
			return "scratch databases: " + n
		}
		return ""
	})
	c.must("delete", "pod", "-l", "batch.kubernetes.io/job-name=fault-restore-restore", "--grace-period=0", "--force", "--wait=false")
	if out, err := c.psql("fault-db-0", true, "SELECT count(*) FROM big"); err != nil || strings.TrimSpace(out) != "10" {
		t.Errorf("right after the kill the database is not the old one: %v %q", err, out)
	}
	c.must("wait", "--for=jsonpath={.status.phase}=Completed", "restore/fault-restore", "--timeout=300s")
	stop()
	counts := <-seen
	for k := range counts {
		if k != "10" && k != "1500000" {
			t.Errorf("a reader saw %s rows (old 10, restored 1500000): %v", k, counts)
		}
	}
	if out, err := c.psql("fault-db-0", true, "SELECT count(*) FROM big"); err != nil || strings.TrimSpace(out) != "1500000" {
		t.Errorf("after the restore: %v %q", err, out)
	}
	if n := scratch(); n != "0" {
		t.Errorf("%s scratch databases left", n)
	}
	if failed := c.jsonpath("job/fault-restore-restore", "{.status.failed}"); failed == "" || failed == "0" {
		t.Errorf("the Job records no failed pod (failed=%q): the kill did not hit a running restore", failed)
	}
	t.Logf("reads during the restore: %v", counts)
}

// TestDeletingANamespaceWithBackupsFinishes: a namespace holding a Completed and
// an InProgress Backup (and its Database) is gone within two minutes: no
// finalizer waits for a Job the terminating namespace cannot run.
func TestDeletingANamespaceWithBackupsFinishes(t *testing.T) {
	c := newCluster(t)
	c.mustApply(faultDB)
	c.must("wait", "--for=jsonpath={.status.phase}=Ready", "database/fault-db", "--timeout=240s")
	c.serviceAnswers("fault-db-0")
	if out, err := c.psql("fault-db-0", true, `CREATE TABLE big AS SELECT i, md5(i::text) v FROM generate_series(1, 2000000) i`); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	c.mustApply(oneShotBackup("done", "fault-db"))
	c.must("wait", "--for=jsonpath={.status.phase}=Completed", "backup/done", "--timeout=300s")
	c.mustApply(oneShotBackup("running", "fault-db"))
	c.must("wait", "--for=jsonpath={.status.phase}=InProgress", "backup/running", "--timeout=120s")
	start := time.Now()
	if out, err := run(context.Background(), "", "delete", "namespace", c.ns, "--timeout=120s"); err != nil {
		t.Fatalf("namespace %s not gone within 2 minutes: %v\n%s\n%s", c.ns, err, out,
			func() string { o, _ := c.kubectl("get", "backups", "-o", "yaml"); return o }())
	}
	t.Logf("namespace deleted in %s", time.Since(start).Round(time.Second))
}

// Rule 6 (finding 3, reproduced in the cluster before the fix): an application
// session whose backend is stopped holds the swap — it has closed the
// application database to connections and waits for that session to end — when
// the primary is killed and force-deleted. After the failover the application
// database must accept connections again, with its old or its restored content
// (on the previous code it refused every connection 5 minutes later), the
// Restore must end (Completed or Failed, never stuck) and the Database be Ready.
func TestAPrimaryKilledDuringARestoreSwapLeavesTheApplicationDatabaseOpen(t *testing.T) {
	c := newCluster(t)
	primary, _ := c.twoInstances()
	ctx := context.Background()
	if out, err := c.psql(primary, true, "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 1000)"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	c.mustApply(oneShotBackup("swap-backup", "ha"))
	c.must("wait", "--for=jsonpath={.status.phase}=Completed", "backup/swap-backup", "--timeout=300s")
	if out, err := c.psql(primary, true, "DELETE FROM items WHERE id > 10"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}

	// The held session, its backend stopped on this host.
	held, err := pgx.Connect(ctx, c.connString("ha", c.jsonpath("pod/"+primary, "{.status.podIP}")))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(context.Background())
	var backend int
	if err := held.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&backend); err != nil {
		t.Fatal(err)
	}
	hostPID := 0
	for _, pid := range podProcesses(c, primary, func([]string) bool { return true }) {
		if nsPID(pid) == backend {
			hostPID = pid
		}
	}
	if hostPID == 0 {
		t.Fatalf("no process of %s has PID %d in its namespace", primary, backend)
	}
	if err := syscall.Kill(hostPID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}

	c.mustApply(`
apiVersion: database.example.com/v1
kind: Restore
metadata:
  name: swap-restore
spec:
  databaseRef: {name: ha}
  backupRef: {name: swap-backup}
`)
	// The swap closed the application database and waits for the session.
	c.eventually(3*time.Minute, "the swap to close the application database", func() string {
		out, err := c.kubectl("exec", primary, "-c", "postgres", "--", "psql", "-h", "/controller/run", "-U", "postgres", "-d", "postgres", "-Atc",
			"SELECT datallowconn FROM pg_database WHERE datname = 'app'")
		if err != nil {
			return fmt.Sprintf("%v %s", err, out)
		}
		if strings.TrimSpace(out) != "f" {
			return "datallowconn " + strings.TrimSpace(out)
		}
		return ""
	})
	c.killAgent(primary)
	c.must("delete", "pod", primary, "--grace-period=0", "--force")
	next := c.waitNewPrimary("ha", primary, 3*time.Minute)

	c.eventually(3*time.Minute, "the application database to accept connections on the new primary", func() string {
		out, err := c.psql(next, true, "SELECT count(*) FROM items")
		if err != nil {
			return fmt.Sprintf("%v %s", err, out)
		}
		return ""
	})
	if out, err := c.psql(next, true, "SELECT count(*) FROM items"); err != nil || (strings.TrimSpace(out) != "10" && strings.TrimSpace(out) != "1000") {
		t.Errorf("after the failover the application database has %q rows (%v): neither the old 10 nor the restored 1000", out, err)
	}
	c.eventually(8*time.Minute, "the Restore to end", func() string {
		if p := c.jsonpath("restore/swap-restore", "{.status.phase}"); p != "Completed" && p != "Failed" {
			return "phase " + p
		}
		return ""
	})
	c.waitChecksPassed("ha", 5*time.Minute)
	t.Logf("Restore %s: %s", c.jsonpath("restore/swap-restore", "{.status.phase}"),
		c.jsonpath("restore/swap-restore", `{.status.conditions[?(@.type=="Ready")].message}`))
}

// nsPID is the PID of host process pid in its own (innermost) PID namespace.
func nsPID(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return 0
			}
			n, _ := strconv.Atoi(f[len(f)-1])
			return n
		}
	}
	return 0
}
