package backup

import (
	"slices"

	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	enginepkg "github.com/example/postgres-operator/internal/backup"
	"github.com/example/postgres-operator/internal/testenv"
)

const testRestore = `
apiVersion: database.example.com/v1
kind: Restore
metadata:
  name: test-restore
spec:
  databaseRef:
    name: test-db
  backupRef:
    name: test-backup
`

func waitRestore(t *testing.T, ns string, phase databasev1.RestorePhase, reason string) *databasev1.Restore {
	t.Helper()
	return waitRestoreNamed(t, ns, "test-restore", phase, reason)
}

func waitRestoreNamed(t *testing.T, ns, name string, phase databasev1.RestorePhase, reason string) *databasev1.Restore {
	t.Helper()
	rs := &databasev1.Restore{}
	testenv.Eventually(t, "restore "+string(phase)+"/"+reason, func() string {
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: name}, rs); err != nil {
			return err.Error()
		}
		c := meta.FindStatusCondition(rs.Status.Conditions, databasev1.ConditionReady)
		if rs.Status.Phase != phase || (reason != "" && (c == nil || c.Reason != reason)) {
			return string(rs.Status.Phase) + " " + strings.TrimSpace(func() string {
				if c != nil {
					return c.Reason + ": " + c.Message
				}
				return ""
			}())
		}
		return ""
	})
	return rs
}

func TestRestoreWaitsForDatabaseAndBackupThenRestoresWithAJob(t *testing.T) {
	ns := newNamespace(t)
	mustApply(t, ns, testRestore)
	waitRestore(t, ns, databasev1.RestorePending, databasev1.ReasonDatabaseNotFound)
	readyDatabase(t, ns, "test-db", true)
	waitRestore(t, ns, databasev1.RestorePending, databasev1.ReasonBackupNotFound)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, oneShot)
	waitRestore(t, ns, databasev1.RestorePending, databasev1.ReasonBackupNotComplete)
	finishJob(t, getJob(t, ns, "test-backup-backup"), true, resultMessage(&enginepkg.Manifest{SizeBytes: 5, SHA256: strings.Repeat("c", 64)}, ""))

	rs := waitRestore(t, ns, databasev1.RestoreInProgress, databasev1.ReasonJobRunning)
	job := getJob(t, ns, "test-restore-restore")
	db := &databasev1.Database{}
	if err := k8s.Get(testCtx, client.ObjectKey{Namespace: ns, Name: "test-db"}, db); err != nil {
		t.Fatal(err)
	}
	args := strings.Join(job.Spec.Template.Spec.Containers[0].Command, " ")
	for _, want := range []string{"backup restore", "--location=pvc://mybackups", "--key=" + artifactKeyOf(t, ns, "test-backup", "daily"),
		// the primary's agent, by its pod DNS name
		"--agent-url=https://test-db-0.test-db-hl." + ns + ".svc.cluster.local:8000",
		// authenticated by the Database's restore client certificate
		"--agent-tls-dir=/etc/postgres-operator/agent-tls",
		"--restore-id=" + strings.ReplaceAll(string(rs.UID), "-", ""),
		// the checksum the Backup recorded, compared with the manifest's
		"--expect-sha256=" + strings.Repeat("c", 64),
		"--database-uid=" + string(db.UID), "--allow-other-database=false",
		"--jobs=2", "--keep-previous-seconds=86400"} {
		if !strings.Contains(args, want) {
			t.Errorf("restore job command %q lacks %q", args, want)
		}
	}
	// Only the restore client certificate and the manifest key are mounted: no
	// application or superuser credentials, no agent token.
	var secrets []string
	for _, v := range job.Spec.Template.Spec.Volumes {
		if v.Secret == nil {
			continue
		}
		secrets = append(secrets, v.Secret.SecretName)
		if v.Secret.SecretName == "test-db-internal" && (len(v.Secret.Items) != 1 || v.Secret.Items[0].Key != agentapi.InternalManifestKeyFile) {
			t.Errorf("the restore Job mounts more of the internal Secret than the manifest key: %+v", v.Secret.Items)
		}
	}
	if !slices.Equal(secrets, []string{"test-db-restore-tls", "test-db-internal"}) {
		t.Errorf("the restore Job mounts Secrets %v, want test-db-restore-tls and the manifest key of test-db-internal", secrets)
	}
	if !strings.Contains(args, "--manifest-key-dir=") {
		t.Error("the restore Job does not authenticate the manifest")
	}
	if job.Spec.Template.Spec.Containers[0].Image != "postgres:15.18" {
		t.Errorf("restore image %s", job.Spec.Template.Spec.Containers[0].Image)
	}
	if ref := metav1.GetControllerOf(job); ref == nil || ref.UID != rs.UID {
		t.Errorf("job not owned by the Restore")
	}
	dropAfter := time.Date(2026, 12, 3, 4, 0, 0, 0, time.UTC)
	finishJob(t, job, true, restoreResultMessage(&agentapi.RestoreResult{Database: "app", PreviousDatabase: "app_prerestore_20261202t040000",
		PreviousDropAfter: dropAfter, TerminatedSessions: 3, Jobs: 2, Tables: 12, Seconds: 4.2}))
	rs = waitRestore(t, ns, databasev1.RestoreCompleted, databasev1.ReasonCompleted)
	if rs.Status.RestoreTime == nil {
		t.Error("restoreTime not set")
	}
	if rs.Status.PreviousDatabase != "app_prerestore_20261202t040000" || rs.Status.PreviousDatabaseDropAfter == nil ||
		!rs.Status.PreviousDatabaseDropAfter.Time.Equal(dropAfter) || rs.Status.TerminatedSessions != 3 || rs.Status.Duration != "4.2s" {
		t.Errorf("status = %+v", rs.Status)
	}
	if c := meta.FindStatusCondition(rs.Status.Conditions, databasev1.ConditionReady); c == nil ||
		!strings.Contains(c.Message, "kept as database app_prerestore_20261202t040000") || !strings.Contains(c.Message, "3 sessions were terminated") {
		t.Errorf("Ready = %+v", c)
	}
	if err := apply(t, ns, strings.Replace(testRestore, "name: test-backup", "name: other", 1)); err == nil ||
		!strings.Contains(err.Error(), "the spec of a Restore is immutable") {
		t.Errorf("changing a Restore: %v", err)
	}
}

func TestFailedRestoreSaysTheDatabaseIsUnchanged(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, oneShot)
	finishJob(t, getJob(t, ns, "test-backup-backup"), true, resultMessage(&enginepkg.Manifest{SizeBytes: 5}, ""))
	mustApply(t, ns, testRestore)
	finishJob(t, getJob(t, ns, "test-restore-restore"), false,
		resultMessage(nil, "refusing to restore: checksum mismatch: the artifact is corrupted or truncated"))
	rs := waitRestore(t, ns, databasev1.RestoreFailed, databasev1.ReasonJobFailed)
	c := meta.FindStatusCondition(rs.Status.Conditions, databasev1.ConditionStalled)
	if c == nil || !strings.Contains(c.Message, "checksum mismatch") || !strings.Contains(c.Message, "database is unchanged") {
		t.Errorf("Stalled = %+v", c)
	}
	if !strings.Contains(rs.Status.Error, "checksum mismatch") {
		t.Errorf("status.error (the ERROR column) = %q, want the failure", rs.Status.Error)
	}
}

func TestRestoreOfAScheduleUsesItsNewestCompletedRun(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	// Suspended: the schedule's own runs (the shared fake clock has moved) must
	// not run now, or the Restore would rightly wait for them.
	mustApply(t, ns, strings.Replace(strings.Replace(scheduled, "name: nightly", "name: test-backup", 1), "retention: 2", "retention: 2\n  suspend: true", 1))
	// Two runs complete; the restore must use the newer.
	for _, name := range []string{"test-backup-1000", "test-backup-2000"} {
		run := &databasev1.Backup{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{LabelSchedule: "test-backup"}},
			Spec: databasev1.BackupSpec{DatabaseRef: databasev1.Backup{}.Spec.DatabaseRef}}
		run.Spec.DatabaseRef.Name = "test-db"
		run.Spec.StorageLocation = "pvc://mybackups"
		if err := k8s.Create(testCtx, run); err != nil {
			t.Fatal(err)
		}
		finishJob(t, getJob(t, ns, name+"-backup"), true, resultMessage(&enginepkg.Manifest{SizeBytes: 5}, ""))
		waitBackup(t, ns, name, databasev1.BackupCompleted, "")
	}
	mustApply(t, ns, testRestore)
	job := getJob(t, ns, "test-restore-restore")
	if args := strings.Join(job.Spec.Template.Spec.Containers[0].Command, " "); !strings.Contains(args, "/test-backup-2000-") {
		t.Errorf("restore of a schedule uses %q, want the newest run", args)
	}
}

func TestRestoreValidation(t *testing.T) {
	ns := newNamespace(t)
	for _, tc := range []struct{ from, to, want string }{
		{"databaseRef:\n    name: test-db", "databaseRef: {}", "databaseRef.name must name a Database"},
		{"  backupRef:\n    name: test-backup\n", "", "set exactly one of backupRef (a Backup) and source (a bare artifact location)"},
		{"  backupRef:\n    name: test-backup\n", "  backupRef:\n    name: test-backup\n  source:\n    location: s3://bucket/a/b.dump.zst\n", "set exactly one of backupRef"},
		{"  backupRef:\n    name: test-backup\n", "  source:\n    location: s3://bucket\n", "source.location must be s3://bucket/key or pvc://claim/key"},
		{"  backupRef:\n    name: test-backup\n", "  backupRef:\n    name: test-backup\n  parallelJobs: 0\n", "should be greater than or equal to 1"},
		// In-place point-in-time Restores and undos.
		{"  backupRef:\n    name: test-backup\n", "  pointInTime:\n    latest: true\n    lsn: 0/3000000\n", "set exactly one target: time, lsn, xid, restorePoint or latest: true"},
		{"  backupRef:\n    name: test-backup\n", "  pointInTime:\n    inclusive: false\n", "set exactly one target"},
		{"  backupRef:\n    name: test-backup\n", "  pointInTime:\n    lsn: \"3000000\"\n", "spec.pointInTime.lsn in body should match"},
		{"  backupRef:\n    name: test-backup\n", "  pointInTime:\n    xid: abc\n", "spec.pointInTime.xid in body should match"},
		{"  backupRef:\n    name: test-backup\n", "  pointInTime:\n    latest: true\n  source:\n    location: s3://bucket/a/b.dump.zst\n", "pointInTime restores from the Database's own WAL archive"},
		{"  backupRef:\n    name: test-backup\n", "  undo: earlier\n  backupRef:\n    name: test-backup\n", "undo names an earlier point-in-time Restore and takes no backupRef"},
		{"  backupRef:\n    name: test-backup\n", "  undo: earlier\n  pointInTime:\n    latest: true\n", "undo names an earlier point-in-time Restore"},
	} {
		if err := apply(t, ns, strings.Replace(testRestore, tc.from, tc.to, 1)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want %q", tc.to, err, tc.want)
		}
	}
}

// TestRestoreFromABareLocationNeedsNoBackupObject: disaster recovery from an
// artifact URL; the Job checks the manifest alone (no recorded checksum), and an
// artifact another Database wrote fails with its own reason unless allowed.
func TestRestoreFromABareLocationNeedsNoBackupObject(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	const loc = "pvc://old-backups/prod/db/0b1c/nightly-1796223000-abcd1234.dump.zst"
	mustApply(t, ns, strings.Replace(testRestore, "  backupRef:\n    name: test-backup\n", "  source:\n    location: "+loc+"\n  keepPreviousFor: 1h\n  parallelJobs: 4\n", 1))
	rs := waitRestore(t, ns, databasev1.RestoreInProgress, databasev1.ReasonJobRunning)
	if rs.Status.BackupLocation != loc || rs.Status.BackupName != "" {
		t.Errorf("status = %+v", rs.Status)
	}
	job := getJob(t, ns, "test-restore-restore")
	args := strings.Join(job.Spec.Template.Spec.Containers[0].Command, " ")
	for _, want := range []string{"--location=pvc://old-backups", "--key=prod/db/0b1c/nightly-1796223000-abcd1234.dump.zst",
		"--expect-sha256= ", "--jobs=4", "--keep-previous-seconds=3600", "--allow-other-database=false"} {
		if !strings.Contains(args+" ", want) {
			t.Errorf("restore job command %q lacks %q", args, want)
		}
	}
	finishJob(t, job, false, resultMessage(nil, enginepkg.ErrOtherDatabase+": Database prod/db (UID 0b1c) wrote it, not this one"))
	rs = waitRestore(t, ns, databasev1.RestoreFailed, databasev1.ReasonArtifactOfOtherDatabase)
	if c := meta.FindStatusCondition(rs.Status.Conditions, databasev1.ConditionStalled); c == nil || !strings.Contains(c.Message, "prod/db") {
		t.Errorf("Stalled = %+v", c)
	}
}

// Rule 7: a Restore of another Database's artifact names that Database's
// manifest key; it waits for the Secret (ManifestKeyNotFound, naming it), then
// its Job mounts only that key and authenticates the manifest with it. Without
// a key the Job gets no --allow-unauthenticated unless the Restore asks.
func TestARestoreNamingTheWritersManifestKeyWaitsForItAndMountsOnlyIt(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, oneShot)
	finishJob(t, getJob(t, ns, "test-backup-backup"), true, resultMessage(&enginepkg.Manifest{SizeBytes: 5, SHA256: strings.Repeat("c", 64)}, ""))
	mustApply(t, ns, testRestore+"  allowOtherDatabase: true\n  manifestKeySecret: old-cluster-key\n")
	rs := waitRestore(t, ns, databasev1.RestorePending, databasev1.ReasonManifestKeyNotFound)
	if c := meta.FindStatusCondition(rs.Status.Conditions, databasev1.ConditionReady); !strings.Contains(c.Message, "old-cluster-key") {
		t.Errorf("the condition does not name the Secret: %s", c.Message)
	}
	if err := k8s.Create(testCtx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "old-cluster-key", Namespace: ns},
		StringData: map[string]string{agentapi.InternalManifestKeyFile: "the-writers-key", "agent-token": "not-for-the-job"}}); err != nil {
		t.Fatal(err)
	}
	waitRestore(t, ns, databasev1.RestoreInProgress, databasev1.ReasonJobRunning)
	job := getJob(t, ns, "test-restore-restore")
	args := strings.Join(job.Spec.Template.Spec.Containers[0].Command, " ")
	for _, want := range []string{"--allow-other-database=true", "--manifest-key-dir=" + enginepkg.ManifestKeyDir,
		"--trusted-manifest-key-dir=" + enginepkg.TrustedManifestKeyDir} {
		if !strings.Contains(args, want) {
			t.Errorf("restore job command %q lacks %q", args, want)
		}
	}
	if strings.Contains(args, "--allow-unauthenticated") {
		t.Errorf("restore job command %q skips the signature", args)
	}
	found := false
	for _, v := range job.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "old-cluster-key" {
			found = true
			if len(v.Secret.Items) != 1 || v.Secret.Items[0].Key != agentapi.InternalManifestKeyFile {
				t.Errorf("the Job mounts more of the key Secret than manifest-key: %+v", v.Secret.Items)
			}
		}
	}
	if !found {
		t.Error("the Job does not mount the writer's manifest key")
	}
	finishJob(t, job, false, resultMessage(nil, enginepkg.ErrUnauthenticated+": its manifest's signature verifies with neither this Database's key nor spec.manifestKeySecret's"))
	waitRestore(t, ns, databasev1.RestoreFailed, databasev1.ReasonManifestNotAuthenticated)
}
