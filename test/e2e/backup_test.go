//go:build e2e

package e2e

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/example/postgres-operator/internal/testenv"
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

// s3Server is a Service and a pod of the S3-compatible server (versitygw) with
// bucket "backups", the root credentials of Secret s3-creds, and TLS from the
// tls.crt and tls.key of Secret tlsSecret when it is set.
func s3Server(name string, port int, tlsSecret string) string {
	args, mounts, volumes := fmt.Sprintf(`["--port", ":%d", "posix", "/data"]`, port), "", ""
	if tlsSecret != "" {
		args = fmt.Sprintf(`["--port", ":%d", "--cert", "/tls/tls.crt", "--key", "/tls/tls.key", "posix", "/data"]`, port)
		mounts = ", {name: tls, mountPath: /tls}"
		volumes = "\n  - {name: tls, secret: {secretName: " + tlsSecret + "}}"
	}
	return fmt.Sprintf(`
---
apiVersion: v1
kind: Service
metadata: {name: %[1]s}
spec:
  selector: {app: %[1]s}
  ports: [{name: s3, port: %[2]d}]
---
apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
  labels: {app: %[1]s}
spec:
  securityContext: {runAsUser: 999, runAsNonRoot: true, fsGroup: 999}
  initContainers:
  - name: bucket
    image: postgres:15
    command: ["mkdir", "-p", "/data/backups"]
    securityContext: `+restrictedContext+`
    volumeMounts: [{name: data, mountPath: /data}]
  containers:
  - name: s3
    image: versitygw:local
    imagePullPolicy: IfNotPresent
    env:
    - {name: ROOT_ACCESS_KEY, valueFrom: {secretKeyRef: {name: s3-creds, key: accessKeyId}}}
    - {name: ROOT_SECRET_KEY, valueFrom: {secretKeyRef: {name: s3-creds, key: secretAccessKey}}}
    args: %[3]s
    ports: [{containerPort: %[2]d}]
    readinessProbe: {tcpSocket: {port: %[2]d}}
    securityContext: `+restrictedContext+`
    volumeMounts: [{name: data, mountPath: /data}%[4]s]
  volumes:
  - {name: data, emptyDir: {}}%[5]s
`, name, port, args, mounts, volumes)
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
    securityContext: ` + restrictedContext + `
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
` + s3Server("s3", 7070, ""))
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
  verify: {schedule: "* * * * *"}   # restore drills, every minute
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
	// <prefix>/<namespace>/<database>/<database UID>/<run>-<run UID>.dump.zst
	dbUID := c.jsonpath("database/s3-db", "{.metadata.uid}")
	if !strings.HasPrefix(loc, "s3://backups/e2e/"+c.ns+"/s3-db/"+dbUID+"/s3-nightly-") {
		t.Errorf("backupLocation %q", loc)
	}
	// A restore drill restores a run into a scratch database on the primary and
	// compares every table's rows with the backup's counts.
	c.eventually(4*time.Minute, "a successful restore drill", func() string {
		got := c.jsonpath("backup/s3-nightly", `{.status.conditions[?(@.type=="Verified")].reason} {.status.lastVerification.restoreDuration} {.status.lastVerification.tables}`)
		if !strings.HasPrefix(got, "VerificationSucceeded ") || strings.HasSuffix(got, " ") {
			return got + " " + c.jsonpath("backup/s3-nightly", `{.status.conditions[?(@.type=="Verified")].message}`)
		}
		return ""
	})
	t.Logf("restore drill: %s", c.jsonpath("backup/s3-nightly", "{.status.lastVerification.message}"))
	// Stop the schedule from adding runs and drills while the restore runs.
	c.must("patch", "backup", "s3-nightly", "--type=merge", "-p", `{"spec":{"schedule":"0 0 1 1 *","verify":null}}`)
	c.eventually(2*time.Minute, "no drill or run active", func() string {
		if out := c.must("get", "jobs", "-o", "jsonpath={.items[*].status.active}"); strings.TrimSpace(out) != "" {
			return "active jobs: " + out
		}
		return ""
	})
	// Runs went on while the drill was awaited (retention 1): the newest
	// completed run now (names end with their slot's unix time).
	completed := strings.Fields(c.must("get", "backups", "-l", "database.example.com/schedule=s3-nightly", "--sort-by=.metadata.name",
		"-o", `jsonpath={.items[?(@.status.phase=="Completed")].status.backupLocation}`))
	if len(completed) == 0 {
		t.Fatal("no completed run")
	}
	loc = completed[len(completed)-1]

	if out, err := c.psql("s3-db-0", true, "TRUNCATE t; CREATE TABLE after_backup (x int)"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// A client sits idle in a transaction holding a lock on the restored table:
	// the restore must neither wait for it forever nor let it see a half state.
	idle := c.idleInTransaction("s3-db-0", "BEGIN; LOCK TABLE t IN ACCESS SHARE MODE; SELECT 'locked';")
	start := time.Now()
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
	t.Logf("restore with an idle-in-transaction client completed in %s", time.Since(start).Round(time.Second))
	if err := idle(); err == nil {
		t.Error("the idle-in-transaction session survived the restore")
	}
	if got := sum(); got != original {
		t.Errorf("data after restore %s, want %s", got, original)
	}
	if out, err := c.psql("s3-db-0", true, "SELECT count(*) FROM pg_class WHERE relname = 'after_backup'"); err != nil || strings.TrimSpace(out) != "0" {
		t.Errorf("a table created after the backup survived the restore: %v %s", err, out)
	}
	if got := c.jsonpath("restore/s3-restore", "{.status.backupLocation}"); got != loc {
		t.Errorf("restored %s, want the newest run %s", got, loc)
	}
	if n := c.jsonpath("restore/s3-restore", "{.status.terminatedSessions}"); n == "" || n == "0" {
		t.Errorf("terminatedSessions = %q, want the idle session counted", n)
	}
	prev := c.jsonpath("restore/s3-restore", "{.status.previousDatabase}")
	if out, err := c.psql("s3-db-0", false, "SELECT datallowconn FROM pg_database WHERE datname = '"+prev+"'"); err != nil || strings.TrimSpace(out) != "f" {
		t.Errorf("pre-restore copy %q: %v %s", prev, err, out)
	}
	c.eventually(time.Minute, "Restoring False", func() string {
		if got := c.jsonpath("database/s3-db", `{.status.conditions[?(@.type=="Restoring")].reason}`); got != "NoRestore" {
			return got
		}
		return ""
	})

	// Disaster recovery: a new Database from the bare artifact location, with no
	// Backup object. Another Database's artifact needs allowOtherDatabase.
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Database
metadata:
  name: s3-clone
spec:
  image: postgres:15
  databaseName: testdb
  username: admin
  storage:
    size: "1Gi"
`)
	c.must("wait", "--for=jsonpath={.status.phase}=Ready", "database/s3-clone", "--timeout=240s")
	source := `
  source:
    location: ` + loc + `
    s3:
      endpoint: http://s3:7070
      forcePathStyle: true
      credentialsSecret: {name: s3-creds}
`
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Restore
metadata:
  name: clone-refused
spec:
  databaseRef: {name: s3-clone}` + source)
	c.must("wait", "--for=jsonpath={.status.phase}=Failed", "restore/clone-refused", "--timeout=300s")
	if got := c.jsonpath("restore/clone-refused", `{.status.conditions[?(@.type=="Stalled")].reason}`); got != "ArtifactOfOtherDatabase" {
		t.Errorf("restore of another Database's artifact: reason %q", got)
	}
	// Rule 7: allowOtherDatabase lifts the identity check, not the signature.
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Restore
metadata:
  name: clone-unauthenticated
spec:
  databaseRef: {name: s3-clone}
  allowOtherDatabase: true` + source)
	c.must("wait", "--for=jsonpath={.status.phase}=Failed", "restore/clone-unauthenticated", "--timeout=300s")
	if got := c.jsonpath("restore/clone-unauthenticated", `{.status.conditions[?(@.type=="Stalled")].reason}`); got != "ManifestNotAuthenticated" {
		t.Errorf("restore of another Database's artifact without its writer's key: reason %q", got)
	}
	// The writer's manifest key, copied as a platform engineer would keep it.
	writerKey, err := base64.StdEncoding.DecodeString(c.jsonpath("secret/s3-db-internal", "{.data.manifest-key}"))
	if err != nil || len(writerKey) == 0 {
		t.Fatalf("the manifest key of s3-db: %v", err)
	}
	keyFile := filepath.Join(t.TempDir(), "manifest-key")
	if err := os.WriteFile(keyFile, writerKey, 0o600); err != nil {
		t.Fatal(err)
	}
	c.must("create", "secret", "generic", "s3-db-manifest-key", "--from-file=manifest-key="+keyFile)
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Restore
metadata:
  name: clone
spec:
  databaseRef: {name: s3-clone}
  allowOtherDatabase: true
  manifestKeySecret: s3-db-manifest-key
  keepPreviousFor: 0s` + source)
	c.must("wait", "--for=jsonpath={.status.phase}=Completed", "restore/clone", "--timeout=300s")
	out, err := c.psql("s3-clone-0", true, "SELECT count(*) || ':' || md5(string_agg(v, ',' ORDER BY id)) FROM t")
	if err != nil || strings.TrimSpace(out) != original {
		t.Errorf("clone data %q (%v), want %s", out, err, original)
	}
	if prev := c.jsonpath("restore/clone", "{.status.previousDatabase}"); prev != "" {
		t.Errorf("keepPreviousFor 0s kept %q", prev)
	}
	c.backupOverTLS("s3-db", sum, original)
}

// backupOverTLS backs db up to, and restores it from, an S3 server that speaks
// only TLS with a certificate of a private CA (s3.caSecret): the Jobs run in the
// postgres image, which has no CA bundle of its own.
func (c *cluster) backupOverTLS(db string, sum func() string, want string) {
	t := c.t
	t.Helper()
	tf := testenv.WriteTLS(t, t.TempDir(), nil, []string{"s3tls", "s3tls." + c.ns + ".svc", "s3tls." + c.ns + ".svc.cluster.local"})
	read := func(f string) string {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	indent := func(s string) string { return "    " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n    ") }
	c.mustApply(`
apiVersion: v1
kind: Secret
metadata: {name: s3tls-cert}
stringData:
  tls.crt: |
` + indent(read(tf.Cert)) + `
  tls.key: |
` + indent(read(tf.Key)) + `
---
apiVersion: v1
kind: Secret
metadata: {name: s3-private-ca}
stringData:
  ca.crt: |
` + indent(read(tf.CA)) + `
` + s3Server("s3tls", 7443, "s3tls-cert"))
	c.must("wait", "--for=condition=Ready", "pod/s3tls", "--timeout=120s")
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Backup
metadata: {name: tls-backup}
spec:
  databaseRef: {name: ` + db + `}
  storageLocation: s3://backups/tls
  s3:
    endpoint: https://s3tls:7443
    forcePathStyle: true
    credentialsSecret: {name: s3-creds}
    caSecret: {name: s3-private-ca, key: ca.crt}
`)
	c.must("wait", "--for=jsonpath={.status.phase}=Completed", "backup/tls-backup", "--timeout=300s")
	if out, err := c.psql(db+"-0", true, "DELETE FROM t WHERE id > 100"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Restore
metadata: {name: tls-restore}
spec:
  databaseRef: {name: ` + db + `}
  backupRef: {name: tls-backup}
  keepPreviousFor: 0s
`)
	c.must("wait", "--for=jsonpath={.status.phase}=Completed", "restore/tls-restore", "--timeout=300s")
	if got := sum(); got != want {
		t.Errorf("data after the restore over TLS %s, want %s", got, want)
	}
}

// idleInTransaction runs sql in a psql session on pod and leaves it open, idle
// in its transaction; the returned function sends one more statement, ends the
// input and returns psql's exit (an error when the server ended the session).
func (c *cluster) idleInTransaction(pod, sql string) func() error {
	c.t.Helper()
	cmd := exec.Command("kubectl", "-n", c.ns, "exec", "-i", pod, "-c", "postgres", "--", "sh", "-c",
		appPSQL+` -v ON_ERROR_STOP=1 -At`)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { stdin.Close(); _ = cmd.Process.Kill() })
	if _, err := io.WriteString(stdin, sql+"\n"); err != nil {
		c.t.Fatal(err)
	}
	c.eventually(30*time.Second, "the idle transaction to hold its lock", func() string {
		got, _ := c.psql(pod, false, "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'")
		if strings.TrimSpace(got) != "1" {
			return "idle in transaction: " + got + " " + out.String()
		}
		return ""
	})
	return func() error {
		_, _ = io.WriteString(stdin, "SELECT 1;\n")
		stdin.Close()
		return cmd.Wait()
	}
}
