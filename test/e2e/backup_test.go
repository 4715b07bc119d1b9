//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"
)

// Lab 8.3 exercise 5 (and exercise 2's error scenarios) as written: a Backup
// without storageLocation goes to the deployment's default location (a PVC), and a
// Restore brings the data back.
func TestBackupAndRestore(t *testing.T) {
	c := newCluster(t)
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Database
metadata:
  name: test-db
spec:
  image: postgres:15
  replicas: 1
  databaseName: testdb
  username: admin
  storage:
    size: "1Gi"
`)
	c.must("wait", "--for=jsonpath={.status.phase}=Ready", "database/test-db", "--timeout=240s")
	if out, err := c.psql("test-db-0", true, `CREATE TABLE orders(id int primary key, item text, price numeric);
		INSERT INTO orders SELECT i, 'item-' || i, i * 1.5 FROM generate_series(1, 5000) i`); err != nil {
		t.Fatalf("seeding: %v\n%s", err, out)
	}
	checksum := func() string {
		out, err := c.psql("test-db-0", true, "SELECT count(*) || ':' || md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o")
		if err != nil {
			t.Fatalf("checksum: %v\n%s", err, out)
		}
		return strings.TrimSpace(out)
	}
	original := checksum()

	c.mustApply(`
apiVersion: database.example.com/v1
kind: Backup
metadata:
  name: test-backup
spec:
  databaseRef:
    name: test-db
`)
	c.must("get", "backup", "test-backup")
	c.must("wait", "--for=jsonpath={.status.phase}=Completed", "backup/test-backup", "--timeout=300s")
	loc := c.jsonpath("backup/test-backup", "{.status.backupLocation}")
	if !strings.HasPrefix(loc, "pvc://postgres-backups/") {
		t.Errorf("backupLocation = %q", loc)
	}
	if sha := c.jsonpath("backup/test-backup", "{.status.sha256}"); len(sha) != 64 {
		t.Errorf("sha256 = %q", sha)
	}
	if v := c.jsonpath("backup/test-backup", "{.status.serverVersion}"); !strings.HasPrefix(v, "15.") {
		t.Errorf("serverVersion = %q", v)
	}

	// Damage the data, then restore.
	if out, err := c.psql("test-db-0", true, "DELETE FROM orders WHERE id % 2 = 0; UPDATE orders SET item = 'lost'"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if checksum() == original {
		t.Fatal("the damage did not change the data")
	}
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Restore
metadata:
  name: test-restore
spec:
  databaseRef:
    name: test-db
  backupRef:
    name: test-backup
`)
	c.must("wait", "--for=jsonpath={.status.phase}=Completed", "restore/test-restore", "--timeout=300s")
	if rt := c.jsonpath("restore/test-restore", "{.status.restoreTime}"); rt == "" {
		t.Error("restoreTime is empty")
	}
	if got := checksum(); got != original {
		t.Errorf("data after restore %s, want %s", got, original)
	}

	// Error scenarios: both stay Pending and say why.
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Restore
metadata:
  name: test-restore-fail-db
spec:
  databaseRef:
    name: non-existent-db
  backupRef:
    name: test-backup
`)
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Restore
metadata:
  name: test-restore-fail-backup
spec:
  databaseRef:
    name: test-db
  backupRef:
    name: non-existent-backup
`)
	for name, reason := range map[string]string{"test-restore-fail-db": "DatabaseNotFound", "test-restore-fail-backup": "BackupNotFound"} {
		c.eventually(time.Minute, name+" pending", func() string {
			got := c.jsonpath("restore/"+name, `{.status.phase} {.status.conditions[?(@.type=="Ready")].reason}`)
			if got != "Pending "+reason {
				return got
			}
			return ""
		})
	}

	// The artifact and its manifest are on the volume; deleting the Backup deletes
	// them first (finalizer), then the Backup.
	key := strings.TrimPrefix(loc, "pvc://postgres-backups/")
	files := c.volumeFiles("postgres-backups")
	if !strings.Contains(files, key+"\n") || !strings.Contains(files, key+".manifest.json") {
		t.Errorf("artifact %s not on the volume:\n%s", key, files)
	}
	c.must("delete", "backup", "test-backup", "--timeout=180s")
	if files := c.volumeFiles("postgres-backups"); strings.Contains(files, key) {
		t.Errorf("artifact left after the Backup was deleted:\n%s", files)
	}
}

// volumeFiles lists the files of a PersistentVolumeClaim from a short-lived pod.
func (c *cluster) volumeFiles(claim string) string {
	c.t.Helper()
	name := "ls-" + claim
	c.mustApply(`
apiVersion: v1
kind: Pod
metadata:
  name: ` + name + `
spec:
  restartPolicy: Never
  securityContext: {runAsUser: 999, runAsNonRoot: true}
  containers:
  - name: ls
    image: postgres:15
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "cd /b && find . -type f | sed 's|^./||' | sort"]
    volumeMounts: [{name: b, mountPath: /b}]
  volumes:
  - name: b
    persistentVolumeClaim: {claimName: ` + claim + `}
`)
	c.must("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/"+name, "--timeout=120s")
	out := c.must("logs", name)
	c.must("delete", "pod", name, "--wait=true")
	return out + "\n"
}
