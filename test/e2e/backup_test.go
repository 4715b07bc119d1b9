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
	c.serviceAnswers("test-db-0")
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

// The same flow against an S3-compatible object store running in the cluster
// (versitygw), with a schedule: the Restore of a scheduled Backup uses its newest
// completed run.
func TestBackupAndRestoreThroughS3(t *testing.T) {
	c := newCluster(t)
	c.mustApply(`
apiVersion: v1
kind: Secret
metadata:
  name: s3-creds
stringData:
  accessKeyId: e2e-access
  secretAccessKey: e2e-secret-key-123
---
apiVersion: v1
kind: Service
metadata:
  name: s3
spec:
  selector: {app: s3}
  ports: [{name: s3, port: 7070}]
---
apiVersion: v1
kind: Pod
metadata:
  name: s3
  labels: {app: s3}
spec:
  securityContext: {runAsUser: 999, runAsNonRoot: true, fsGroup: 999}
  initContainers:
  - name: bucket
    image: postgres:15
    command: ["mkdir", "-p", "/data/backups"]
    volumeMounts: [{name: data, mountPath: /data}]
  containers:
  - name: s3
    image: versitygw:local
    imagePullPolicy: IfNotPresent
    env:
    - {name: ROOT_ACCESS_KEY, valueFrom: {secretKeyRef: {name: s3-creds, key: accessKeyId}}}
    - {name: ROOT_SECRET_KEY, valueFrom: {secretKeyRef: {name: s3-creds, key: secretAccessKey}}}
    args: ["--port", ":7070", "posix", "/data"]
    ports: [{containerPort: 7070}]
    readinessProbe: {tcpSocket: {port: 7070}}
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - {name: data, emptyDir: {}}
`)
	c.mustApply(strings.ReplaceAll(`
apiVersion: database.example.com/v1
kind: Database
metadata:
  name: s3-db
spec:
  image: postgres:15
  databaseName: testdb
  username: admin
  storage:
    size: "1Gi"
`, "\t", ""))
	c.must("wait", "--for=condition=Ready", "pod/s3", "--timeout=120s")
	c.must("wait", "--for=jsonpath={.status.phase}=Ready", "database/s3-db", "--timeout=240s")
	c.serviceAnswers("s3-db-0")
	if out, err := c.psql("s3-db-0", true, "CREATE TABLE t(id int primary key, v text); INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 3000) i"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	sum := func() string {
		out, err := c.psql("s3-db-0", true, "SELECT count(*) || ':' || md5(string_agg(v, ',' ORDER BY id)) FROM t")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return strings.TrimSpace(out)
	}
	original := sum()

	// Every minute; the first run starts at the next minute.
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Backup
metadata:
  name: s3-nightly
spec:
  databaseRef: {name: s3-db}
  schedule: "* * * * *"
  retention: 1
  storageLocation: s3://backups/e2e
  s3:
    endpoint: http://s3:7070
    forcePathStyle: true
    credentialsSecret: {name: s3-creds}
`)
	c.eventually(3*time.Minute, "a completed scheduled run", func() string {
		if n := c.jsonpath("backup/s3-nightly", "{.status.backupCount}"); n != "1" {
			return "backupCount " + n + "; runs: " + c.jsonpath("backups", "{range .items[*]}{.metadata.name}={.status.phase} {end}")
		}
		return ""
	})
	loc := c.jsonpath("backup/s3-nightly", "{.status.backupLocation}")
	if !strings.HasPrefix(loc, "s3://backups/e2e/"+c.ns+"/s3-db/s3-nightly-") {
		t.Errorf("backupLocation %q", loc)
	}
	// Stop the schedule from adding runs while the restore runs.
	c.must("patch", "backup", "s3-nightly", "--type=merge", "-p", `{"spec":{"schedule":"0 0 1 1 *"}}`)

	if out, err := c.psql("s3-db-0", true, "TRUNCATE t"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Restore
metadata:
  name: s3-restore
spec:
  databaseRef: {name: s3-db}
  backupRef: {name: s3-nightly}
`)
	c.must("wait", "--for=jsonpath={.status.phase}=Completed", "restore/s3-restore", "--timeout=300s")
	if got := sum(); got != original {
		t.Errorf("data after restore %s, want %s", got, original)
	}
	if got := c.jsonpath("restore/s3-restore", "{.status.backupLocation}"); got != loc {
		t.Errorf("restored %s, want the newest run %s", got, loc)
	}
}
