package backup

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	databasev1 "github.com/example/postgres-operator/api/v1"
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
	rs := &databasev1.Restore{}
	testenv.Eventually(t, "restore "+string(phase)+"/"+reason, func() string {
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "test-restore"}, rs); err != nil {
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
	finishJob(t, getJob(t, ns, "test-backup-backup"), true, resultMessage(&enginepkg.Manifest{SizeBytes: 5}, ""))

	rs := waitRestore(t, ns, databasev1.RestoreInProgress, databasev1.ReasonJobRunning)
	job := getJob(t, ns, "test-restore-restore")
	args := strings.Join(job.Spec.Template.Spec.Containers[0].Command, " ")
	for _, want := range []string{"backup restore", "--location=pvc://mybackups", "--key=daily/" + ns + "/test-db/test-backup.dump.zst"} {
		if !strings.Contains(args, want) {
			t.Errorf("restore job command %q lacks %q", args, want)
		}
	}
	if job.Spec.Template.Spec.Containers[0].Image != "postgres:15.18" {
		t.Errorf("restore image %s", job.Spec.Template.Spec.Containers[0].Image)
	}
	if ref := metav1.GetControllerOf(job); ref == nil || ref.UID != rs.UID {
		t.Errorf("job not owned by the Restore")
	}
	finishJob(t, job, true, "")
	rs = waitRestore(t, ns, databasev1.RestoreCompleted, databasev1.ReasonCompleted)
	if rs.Status.RestoreTime == nil {
		t.Error("restoreTime not set")
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
	if args := strings.Join(job.Spec.Template.Spec.Containers[0].Command, " "); !strings.Contains(args, "test-backup-2000.dump.zst") {
		t.Errorf("restore of a schedule uses %q, want the newest run", args)
	}
}
