package backup

import (
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	databasev1 "github.com/example/postgres-operator/api/v1"
	enginepkg "github.com/example/postgres-operator/internal/backup"
	"github.com/example/postgres-operator/internal/testenv"
)

func waitGone(t *testing.T, ns, name string) {
	t.Helper()
	testenv.Eventually(t, "backup "+name+" gone", func() string {
		err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: name}, &databasev1.Backup{})
		if apierrors.IsNotFound(err) {
			return ""
		}
		if err != nil {
			return err.Error()
		}
		return "still there"
	})
}

// Deleting a Backup while its Job runs stops the Job and lets the Backup go (it
// used to wait forever for a phase change nobody would make).
func TestDeletingAnInProgressBackupStopsItsJobAndFinishes(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, oneShot)
	b := waitBackup(t, ns, "test-backup", databasev1.BackupInProgress, databasev1.ReasonJobRunning)
	getJob(t, ns, "test-backup-backup")
	if err := k8s.Delete(testCtx, b); err != nil {
		t.Fatal(err)
	}
	waitGone(t, ns, "test-backup")
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "test-backup-backup"}, &batchv1.Job{}); !apierrors.IsNotFound(err) {
		t.Errorf("the running Job was not stopped: %v", err)
	}
}

// A Backup re-created under the name of an earlier one never takes over the
// earlier one's finished Job: that Job is removed and a Job of its own runs.
func TestARecreatedBackupDoesNotTakeOverAFinishedJobOfTheSameName(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	foreign := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: "test-backup-backup", Namespace: ns, Labels: map[string]string{LabelManagedBy: ManagedBy}},
		Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "c", Image: "x"}}}}},
	}
	if err := k8s.Create(testCtx, foreign); err != nil {
		t.Fatal(err)
	}
	finishJob(t, foreign, true, resultMessage(&enginepkg.Manifest{SizeBytes: 99}, ""))
	mustApply(t, ns, oneShot)
	b := waitBackup(t, ns, "test-backup", databasev1.BackupInProgress, databasev1.ReasonJobRunning)
	job := getJob(t, ns, "test-backup-backup")
	if ref := metav1.GetControllerOf(job); ref == nil || ref.UID != b.UID || job.UID == foreign.UID {
		t.Fatalf("the Backup runs the earlier Job (controller %+v)", ref)
	}
	for i := 0; i < 5; i++ {
		if p := getBackup(t, ns, "test-backup").Status.Phase; p == databasev1.BackupCompleted {
			t.Fatal("completed from a Job it did not run")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A Backup whose name makes its backup and delete Job names exceed 63 characters
// still gets two distinct, valid Job names and label values, runs and is deleted.
func TestLongBackupNamesGetDistinctValidJobs(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	name := strings.Repeat("b", 62)
	mustApply(t, ns, strings.Replace(oneShot, "name: test-backup", "name: "+name, 1))
	job := getJob(t, ns, enginepkg.JobName(name, "backup"))
	if len(job.Name) > 63 || len(job.Labels["database.example.com/backup"]) > 63 {
		t.Fatalf("job name %q labels %v", job.Name, job.Labels)
	}
	finishJob(t, job, true, resultMessage(&enginepkg.Manifest{SizeBytes: 1}, ""))
	b := waitBackup(t, ns, name, databasev1.BackupCompleted, "")
	if err := k8s.Delete(testCtx, b); err != nil {
		t.Fatal(err)
	}
	del := getJob(t, ns, enginepkg.JobName(name, "delete"))
	if del.Name == job.Name || metav1.GetControllerOf(del).UID != b.UID {
		t.Fatalf("delete job %q (backup job %q)", del.Name, job.Name)
	}
	finishJob(t, del, true, "")
	waitGone(t, ns, name)
}

// Deleting the namespace of a completed Backup never hangs: no Job can be created
// in a terminating namespace, so the Backup is released and the artifact left in
// place (with a Warning event where events can still be written).
func TestABackupInATerminatingNamespaceIsReleased(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, oneShot)
	finishJob(t, getJob(t, ns, "test-backup-backup"), true, resultMessage(&enginepkg.Manifest{SizeBytes: 1}, ""))
	b := waitBackup(t, ns, "test-backup", databasev1.BackupCompleted, "")
	if err := k8s.Delete(testCtx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	// envtest runs no namespace controller: delete the Backup as it would.
	if err := k8s.Delete(testCtx, b); err != nil {
		t.Fatal(err)
	}
	waitGone(t, ns, "test-backup")
}
