package backup

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
	enginepkg "github.com/example/postgres-operator/internal/backup"
	"github.com/example/postgres-operator/internal/testenv"
)

func resourceQty(s string) *resource.Quantity { q := resource.MustParse(s); return &q }

const oneShot = `
apiVersion: database.example.com/v1
kind: Backup
metadata:
  name: test-backup
spec:
  databaseRef:
    name: test-db
  storageLocation: pvc://mybackups/daily
`

func TestBackupWaitsForDatabaseAndStorageThenRunsAJobWithTheDatabaseImage(t *testing.T) {
	ns := newNamespace(t)
	mustApply(t, ns, oneShot)
	b := waitBackup(t, ns, "test-backup", databasev1.BackupPending, databasev1.ReasonDatabaseNotFound)
	if c := meta.FindStatusCondition(b.Status.Conditions, databasev1.ConditionReady); !strings.Contains(c.Message, "test-db") {
		t.Errorf("condition does not name the Database: %s", c.Message)
	}
	readyDatabase(t, ns, "test-db", false)
	waitBackup(t, ns, "test-backup", databasev1.BackupPending, databasev1.ReasonDatabaseNotReady)
	readyDatabase(t, ns, "test-db", true)
	waitBackup(t, ns, "test-backup", databasev1.BackupPending, databasev1.ReasonStorageNotFound)
	createPVC(t, ns, "mybackups")
	b = waitBackup(t, ns, "test-backup", databasev1.BackupInProgress, databasev1.ReasonJobRunning)

	if len(b.Finalizers) != 1 || b.Finalizers[0] != Finalizer {
		t.Errorf("finalizers = %v", b.Finalizers)
	}
	job := getJob(t, ns, "test-backup-backup")
	if ref := metav1.GetControllerOf(job); ref == nil || ref.UID != b.UID {
		t.Errorf("job not owned by the Backup: %+v", ref)
	}
	c := job.Spec.Template.Spec.Containers[0]
	if c.Image != "postgres:15.18" {
		t.Errorf("job image %s, want the Database's running image", c.Image)
	}
	args := strings.Join(c.Command, " ")
	key := artifactKeyOf(t, ns, "test-backup", "daily")
	for _, want := range []string{"backup run", "--location=pvc://mybackups", "--key=" + key, "--host=test-db." + ns + ".svc.cluster.local",
		"--database-uid=", "--database-object=" + ns + "/test-db"} {
		if !strings.Contains(args, want) {
			t.Errorf("job command %q lacks %q", args, want)
		}
	}
	if strings.Contains(strings.ToLower(args), "password") || len(c.Env) != 0 {
		t.Errorf("secrets in arguments or environment: %q %v", args, c.Env)
	}
	if b.Status.BackupLocation != "pvc://mybackups/"+key {
		t.Errorf("backupLocation = %s", b.Status.BackupLocation)
	}

	start := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	finishJob(t, job, true, resultMessage(&enginepkg.Manifest{SizeBytes: 1234, SHA256: strings.Repeat("a", 64), ServerVersion: "15.18",
		Format: enginepkg.Format, StartTime: start, EndTime: start.Add(1500 * time.Millisecond)}, ""))
	b = waitBackup(t, ns, "test-backup", databasev1.BackupCompleted, databasev1.ReasonCompleted)
	if b.Status.SizeBytes != 1234 || b.Status.SHA256 != strings.Repeat("a", 64) || b.Status.ServerVersion != "15.18" ||
		b.Status.Duration != "1.5s" || b.Status.BackupTime == nil || !b.Status.BackupTime.Time.Equal(start.Add(1500*time.Millisecond).Truncate(time.Second)) {
		t.Errorf("completed status = %+v", b.Status)
	}
	// One-shot specs are immutable.
	if err := apply(t, ns, strings.Replace(oneShot, "pvc://mybackups/daily", "pvc://other", 1)); err == nil ||
		!strings.Contains(err.Error(), "the spec of a one-shot Backup (without schedule) is immutable") {
		t.Errorf("changing a one-shot Backup: %v", err)
	}
}

func TestFailedJobFailsTheBackupWithTheReason(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, oneShot)
	job := getJob(t, ns, "test-backup-backup")
	finishJob(t, job, false, resultMessage(nil, "pg_dump failed: exit status 1: permission denied for table secrets"))
	b := waitBackup(t, ns, "test-backup", databasev1.BackupFailed, databasev1.ReasonJobFailed)
	c := meta.FindStatusCondition(b.Status.Conditions, databasev1.ConditionStalled)
	if c == nil || c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "permission denied for table secrets") {
		t.Errorf("Stalled = %+v", c)
	}
	if !strings.Contains(b.Status.Error, "permission denied for table secrets") {
		t.Errorf("status.error (the ERROR column) = %q, want the failure", b.Status.Error)
	}
}

func TestBackupWithoutLocationOrDefaultFailsSayingHowToSetOne(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	mustApply(t, ns, strings.Replace(oneShot, "  storageLocation: pvc://mybackups/daily\n", "", 1))
	b := waitBackup(t, ns, "test-backup", databasev1.BackupFailed, databasev1.ReasonNoStorageLocation)
	c := meta.FindStatusCondition(b.Status.Conditions, databasev1.ConditionReady)
	if !strings.Contains(c.Message, "spec.storageLocation") || !strings.Contains(c.Message, "--default-backup-location") {
		t.Errorf("message %q does not say how to set a location", c.Message)
	}
}

func TestDeletingACompletedBackupDeletesItsArtifactFirst(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, oneShot)
	finishJob(t, getJob(t, ns, "test-backup-backup"), true, resultMessage(&enginepkg.Manifest{SizeBytes: 1}, ""))
	b := waitBackup(t, ns, "test-backup", databasev1.BackupCompleted, "")
	if err := k8s.Delete(testCtx, b); err != nil {
		t.Fatal(err)
	}
	del := getJob(t, ns, "test-backup-delete")
	args := strings.Join(del.Spec.Template.Spec.Containers[0].Command, " ")
	if !strings.HasPrefix(args, "/manager backup delete") || !strings.Contains(args, "--key="+artifactKeyOf(t, ns, "test-backup", "daily")) ||
		del.Spec.Template.Spec.Containers[0].Image != "operator:test" {
		t.Errorf("delete job: %s %q", del.Spec.Template.Spec.Containers[0].Image, args)
	}
	if getBackup(t, ns, "test-backup").DeletionTimestamp == nil {
		t.Fatal("not being deleted")
	}
	finishJob(t, del, true, "")
	waitGone(t, ns, "test-backup")
}

const scheduled = `
apiVersion: database.example.com/v1
kind: Backup
metadata:
  name: nightly
spec:
  databaseRef:
    name: test-db
  storageLocation: pvc://mybackups
  schedule: "*/10 * * * *"
  retention: 2
`

// poke triggers a reconcile of the schedule after the fake clock moved.
func poke(t *testing.T, ns, name string) {
	t.Helper()
	b := getBackup(t, ns, name)
	patch := client.MergeFrom(b.DeepCopy())
	if b.Annotations == nil {
		b.Annotations = map[string]string{}
	}
	b.Annotations["test/poke"] = fmt.Sprint(time.Now().UnixNano())
	if err := k8s.Patch(testCtx, b, patch); err != nil {
		t.Fatal(err)
	}
}

func runs(t *testing.T, ns, parent string) []databasev1.Backup {
	t.Helper()
	var l databasev1.BackupList
	if err := k8s.List(testCtx, &l, client.InNamespace(ns), client.MatchingLabels{LabelSchedule: parent}); err != nil {
		t.Fatal(err)
	}
	var out []databasev1.Backup
	for _, b := range l.Items {
		if b.DeletionTimestamp == nil {
			out = append(out, b)
		}
	}
	return out
}

func waitRuns(t *testing.T, ns, parent string, want int) []databasev1.Backup {
	t.Helper()
	var got []databasev1.Backup
	testenv.Eventually(t, fmt.Sprintf("%d runs", want), func() string {
		got = runs(t, ns, parent)
		if len(got) != want {
			names := []string{}
			for _, r := range got {
				names = append(names, r.Name+":"+string(r.Status.Phase))
			}
			return fmt.Sprintf("runs %v", names)
		}
		return ""
	})
	return got
}

// complete marks a run Completed as its Job would have.
func complete(t *testing.T, run databasev1.Backup) {
	t.Helper()
	testenv.Eventually(t, "run completed", func() string {
		b := getBackup(t, run.Namespace, run.Name)
		if b.Status.Phase == databasev1.BackupInProgress || b.Status.Phase == "" || b.Status.Phase == databasev1.BackupPending {
			job := &batchv1.Job{}
			if err := k8s.Get(testCtx, types.NamespacedName{Namespace: b.Namespace, Name: b.Name + "-backup"}, job); err != nil {
				return err.Error()
			}
			if stateOf(job) == jobRunning {
				finishJob(t, job, true, resultMessage(&enginepkg.Manifest{SizeBytes: 10}, ""))
			}
			return "phase " + string(b.Status.Phase)
		}
		return ""
	})
}

func TestScheduleRunsOncePerSlotWithoutOverlapOrCatchUpAndKeepsRetention(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, scheduled)
	b := waitBackup(t, ns, "nightly", databasev1.BackupPending, databasev1.ReasonScheduled)
	if len(runs(t, ns, "nightly")) != 0 {
		t.Fatal("a run was created before the first slot")
	}

	// The first slot passes: exactly one run, named after the slot.
	stepPastSlotAfter(b.CreationTimestamp.Time)
	poke(t, ns, "nightly")
	first := waitRuns(t, ns, "nightly", 1)[0]
	testenv.Eventually(t, "lastScheduledTime of the run", func() string {
		b = getBackup(t, ns, "nightly")
		if b.Status.LastScheduledTime == nil || first.Name != fmt.Sprintf("nightly-%d", b.Status.LastScheduledTime.Unix()) {
			return fmt.Sprintf("run %s, lastScheduledTime %v", first.Name, b.Status.LastScheduledTime)
		}
		return ""
	})
	if ref := metav1.GetControllerOf(&first); ref == nil || ref.UID != b.UID {
		t.Errorf("run not owned by the schedule")
	}

	// The next slot while the first run is still in progress: skipped.
	waitBackup(t, ns, first.Name, databasev1.BackupInProgress, "")
	fake.Step(10 * time.Minute)
	poke(t, ns, "nightly")
	time.Sleep(500 * time.Millisecond)
	if n := len(runs(t, ns, "nightly")); n != 1 {
		t.Fatalf("%d runs: a run overlapped the active one", n)
	}
	complete(t, first)

	// Ten hours of downtime: one run, not sixty.
	fake.Step(10 * time.Hour)
	poke(t, ns, "nightly")
	second := waitRuns(t, ns, "nightly", 2)
	time.Sleep(300 * time.Millisecond)
	if n := len(runs(t, ns, "nightly")); n != 2 {
		t.Fatalf("%d runs after downtime", n)
	}
	for _, r := range second {
		complete(t, r)
	}

	// A third completed run: retention 2 deletes the oldest.
	fake.Step(10 * time.Minute)
	poke(t, ns, "nightly")
	waitRuns(t, ns, "nightly", 3)
	for _, r := range runs(t, ns, "nightly") {
		complete(t, r)
	}
	poke(t, ns, "nightly")
	kept := waitRuns(t, ns, "nightly", 2)
	for _, r := range kept {
		if r.Name == first.Name {
			t.Errorf("retention kept the oldest run %s", r.Name)
		}
	}
	testenv.Eventually(t, "backupCount 2", func() string {
		b := getBackup(t, ns, "nightly")
		if b.Status.BackupCount != 2 || b.Status.Phase != databasev1.BackupCompleted {
			return fmt.Sprintf("count %d phase %s", b.Status.BackupCount, b.Status.Phase)
		}
		return ""
	})
}

func TestBackupValidation(t *testing.T) {
	ns := newNamespace(t)
	for _, tc := range []struct{ from, to, want string }{
		{"storageLocation: pvc://mybackups/daily", "storageLocation: ftp://x/y", "storageLocation must be s3://bucket[/prefix] or pvc://claim[/path]"},
		{"storageLocation: pvc://mybackups/daily", "storageLocation: s3://B", "storageLocation must be s3://bucket[/prefix] or pvc://claim[/path]"},
		{"storageLocation: pvc://mybackups/daily", "storageLocation: pvc://mybackups\n  schedule: \"every day\"", "schedule must be a 5-field cron expression"},
		{"storageLocation: pvc://mybackups/daily", "storageLocation: pvc://mybackups\n  schedule: \"* * * *\"", "schedule must be a 5-field cron expression"},
		{"storageLocation: pvc://mybackups/daily", "storageLocation: pvc://mybackups\n  schedule: \"61 * * * *\"", "the minute field of schedule must be 0-59"},
		{"storageLocation: pvc://mybackups/daily", "storageLocation: pvc://mybackups\n  schedule: \"0 24 * * *\"", "the hour field of schedule must be 0-23"},
		{"storageLocation: pvc://mybackups/daily", "storageLocation: pvc://mybackups\n  schedule: \"0 0 0 * *\"", "the day-of-month field of schedule must be 1-31"},
		{"storageLocation: pvc://mybackups/daily", "storageLocation: pvc://mybackups\n  schedule: \"0 0 * 13 *\"", "the month field of schedule must be 1-12 or jan-dec"},
		{"storageLocation: pvc://mybackups/daily", "storageLocation: pvc://mybackups\n  schedule: \"0 0 * * 8\"", "the day-of-week field of schedule must be 0-7 or sun-sat"},
		{"storageLocation: pvc://mybackups/daily", "storageLocation: pvc://mybackups\n  schedule: \"@every\"", "schedule must be a 5-field cron expression"},
		{"databaseRef:\n    name: test-db", "databaseRef: {}", "databaseRef.name must name a Database"},
		{"storageLocation: pvc://mybackups/daily", "storageLocation: pvc://mybackups\n  retention: 0", "spec.retention in body should be greater than or equal to 1"},
		{"storageLocation: pvc://mybackups/daily", "storageLocation: pvc://mybackups\n  s3:\n    endpoint: http://x\n    credentialsSecret: {name: s}", "s3 settings apply only to an s3:// storageLocation"},
	} {
		manifest := strings.Replace(oneShot, tc.from, tc.to, 1)
		if err := apply(t, ns, manifest); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want %q", tc.to, err, tc.want)
		}
	}
}

// TestValidSchedulesAreAccepted: the per-field rules accept what cron accepts.
func TestValidSchedulesAreAccepted(t *testing.T) {
	ns := newNamespace(t)
	for i, sched := range []string{"0 3 * * *", "*/15 * * * *", "0,30 8-18/2 1-15 jan-jun mon-fri", "59 23 31 12 7", "0 0 ? * SUN", "@daily", "5  4 * * *"} {
		manifest := strings.Replace(strings.Replace(oneShot, "storageLocation: pvc://mybackups/daily", "storageLocation: pvc://mybackups\n  suspend: true\n  schedule: \""+sched+"\"", 1),
			"name: test-backup", fmt.Sprintf("name: valid-%d", i), 1)
		if err := apply(t, ns, manifest); err != nil {
			t.Errorf("schedule %q refused: %v", sched, err)
		}
	}
}

func TestS3BackupWaitsForItsCredentialsSecretThenMountsIt(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	mustApply(t, ns, strings.Replace(oneShot, "  storageLocation: pvc://mybackups/daily\n", `  storageLocation: s3://my-bucket/pg
  s3:
    endpoint: http://minio.storage.svc:9000
    forcePathStyle: true
    credentialsSecret: {name: s3-creds}
`, 1))
	waitBackup(t, ns, "test-backup", databasev1.BackupPending, databasev1.ReasonStorageNotFound)
	// A user Secret, without the operator's labels: not in the operator's cache.
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s3-creds", Namespace: ns},
		StringData: map[string]string{"accessKeyId": "a", "secretAccessKey": "b"}}
	if err := k8s.Create(testCtx, secret); err != nil {
		t.Fatal(err)
	}
	job := getJob(t, ns, "test-backup-backup")
	c := job.Spec.Template.Spec.Containers[0]
	args := strings.Join(c.Command, " ")
	for _, want := range []string{"--location=s3://my-bucket", "--key=" + artifactKeyOf(t, ns, "test-backup", "pg"),
		"--s3-endpoint=http://minio.storage.svc:9000", "--s3-path-style=true"} {
		if !strings.Contains(args, want) {
			t.Errorf("command %q lacks %q", args, want)
		}
	}
	mounted := false
	for _, v := range job.Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "s3-creds" {
			mounted = true
		}
	}
	if !mounted || strings.Contains(args, "secretAccessKey=") {
		t.Errorf("the S3 credentials must be a mounted Secret, not arguments")
	}
}

// A degraded standby (Database Verifying, not Ready) must not stop backups: they
// wait for the primary only.
func TestBackupRunsWhenOnlyAStandbyIsDegraded(t *testing.T) {
	ns := newNamespace(t)
	setDatabaseStatus(t, ns, "test-db", databasev1.PhaseVerifying, false)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, oneShot)
	waitBackup(t, ns, "test-backup", databasev1.BackupPending, databasev1.ReasonDatabaseNotReady)
	setDatabaseStatus(t, ns, "test-db", databasev1.PhaseVerifying, true)
	waitBackup(t, ns, "test-backup", databasev1.BackupInProgress, databasev1.ReasonJobRunning)
}

// An encrypted Backup waits for its key's Secret, then its Job mounts only the
// identity key of it and encrypts; a Restore of it gets the same key, and the
// manifest key of the Database.
func TestEncryptedBackupsWaitForTheirKeyAndMountOnlyIt(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, oneShot+"  encryption: {secretName: backup-key}\n")
	b := waitBackup(t, ns, "test-backup", databasev1.BackupPending, databasev1.ReasonEncryptionKeyNotFound)
	if c := meta.FindStatusCondition(b.Status.Conditions, databasev1.ConditionReady); !strings.Contains(c.Message, "backup-key") {
		t.Errorf("condition does not name the Secret: %s", c.Message)
	}
	key := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "backup-key", Namespace: ns},
		StringData: map[string]string{"identity": "AGE-SECRET-KEY-1TEST", "unrelated": "x"}}
	if err := k8s.Create(testCtx, key); err != nil {
		t.Fatal(err)
	}
	waitBackup(t, ns, "test-backup", databasev1.BackupInProgress, databasev1.ReasonJobRunning)
	job := getJob(t, ns, "test-backup-backup")
	mounted := func(job *batchv1.Job) map[string][]string {
		out := map[string][]string{}
		for _, v := range job.Spec.Template.Spec.Volumes {
			if v.Secret != nil {
				var items []string
				for _, it := range v.Secret.Items {
					items = append(items, it.Key)
				}
				out[v.Secret.SecretName] = items
			}
		}
		return out
	}
	if got := mounted(job); !slices.Equal(got["backup-key"], []string{"identity"}) || !slices.Equal(got["test-db-internal"], []string{"manifest-key"}) {
		t.Errorf("backup Job mounts %v", got)
	}
	if args := strings.Join(job.Spec.Template.Spec.Containers[0].Command, " "); !strings.Contains(args, "--encryption-dir=") ||
		!strings.Contains(args, "--manifest-key-dir=") {
		t.Errorf("backup command %s", args)
	}
	finishJob(t, job, true, resultMessage(&enginepkg.Manifest{SizeBytes: 5, SHA256: strings.Repeat("e", 64),
		Encryption: enginepkg.EncryptionAge}, ""))
	waitBackup(t, ns, "test-backup", databasev1.BackupCompleted, databasev1.ReasonCompleted)

	mustApply(t, ns, testRestore)
	waitRestore(t, ns, databasev1.RestoreInProgress, databasev1.ReasonJobRunning)
	if got := mounted(getJob(t, ns, "test-restore-restore")); !slices.Equal(got["backup-key"], []string{"identity"}) {
		t.Errorf("restore Job mounts %v", got)
	}
}
