package backup

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	enginepkg "github.com/example/postgres-operator/internal/backup"
	"github.com/example/postgres-operator/internal/testenv"
	"github.com/example/postgres-operator/internal/walarchive"
)

func instancePod(name, role string, ready, deleting bool) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{labelDatabase: "db", labelRole: role}}}
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}
	if deleting {
		now := metav1.Now()
		p.DeletionTimestamp = &now
	}
	return p
}

// A Physical Backup starts only when the WAL it needs will reach the
// archive, and copies a ready standby when there is one.
func TestDecidePhysicalSource(t *testing.T) {
	archiving := func(status metav1.ConditionStatus) []metav1.Condition {
		return []metav1.Condition{{Type: databasev1.ConditionContinuousArchiving, Status: status, Reason: "ArchiveFailing", Message: "connection refused"}}
	}
	db := func(archive bool, sysid string, conds []metav1.Condition) *databasev1.Database {
		d := &databasev1.Database{ObjectMeta: metav1.ObjectMeta{Name: "db"}}
		if archive {
			d.Spec.WALArchive = &databasev1.WALArchiveSpec{}
		}
		d.Status.SystemIdentifier, d.Status.Conditions, d.Status.CurrentPrimary = sysid, conds, "db-0"
		return d
	}
	primary := instancePod("db-0", "primary", true, false)
	for _, tc := range []struct {
		name       string
		db         *databasev1.Database
		pods       []corev1.Pod
		pod        string
		reason, in string
	}{
		{"no WAL archive", db(false, "7", archiving(metav1.ConditionTrue)), nil, "", databasev1.ReasonWALArchiveNotConfigured, "spec.walArchive"},
		{"no system identifier yet", db(true, "", archiving(metav1.ConditionTrue)), nil, "", databasev1.ReasonDatabaseNotReady, "system identifier"},
		{"archiving fails", db(true, "7", archiving(metav1.ConditionFalse)), nil, "", databasev1.ReasonWALArchiveNotReady, "connection refused"},
		{"archiving not reported", db(true, "7", nil), nil, "", databasev1.ReasonWALArchiveNotReady, "ContinuousArchiving"},
		{"alone: the primary", db(true, "7", archiving(metav1.ConditionTrue)), []corev1.Pod{primary}, "db-0", "", ""},
		{"a ready standby", db(true, "7", archiving(metav1.ConditionTrue)),
			[]corev1.Pod{primary, instancePod("db-2", "replica", true, false), instancePod("db-1", "replica", false, false)}, "db-2", "", ""},
		{"the first of the ready standbys", db(true, "7", archiving(metav1.ConditionTrue)),
			[]corev1.Pod{primary, instancePod("db-2", "replica", true, false), instancePod("db-1", "replica", true, false)}, "db-1", "", ""},
		{"a standby being deleted is not used", db(true, "7", archiving(metav1.ConditionTrue)),
			[]corev1.Pod{primary, instancePod("db-1", "replica", true, true)}, "db-0", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := decidePhysicalSource(tc.db, tc.pods)
			if got.Pod != tc.pod || got.Reason != tc.reason || !strings.Contains(got.Message, tc.in) {
				t.Errorf("got %+v, want pod %q reason %q mentioning %q", got, tc.pod, tc.reason, tc.in)
			}
		})
	}
}

const physicalBackup = `
apiVersion: database.example.com/v1
kind: Backup
metadata:
  name: test-backup
spec:
  databaseRef:
    name: test-db
  method: Physical
`

// archivingDatabase creates test-db with a WAL archive, its primary
// test-db-0 and a ready standby test-db-1, and sets ContinuousArchiving.
func archivingDatabase(t *testing.T, ns string, archiving metav1.ConditionStatus) {
	t.Helper()
	db := &databasev1.Database{ObjectMeta: metav1.ObjectMeta{Name: "test-db", Namespace: ns},
		Spec: databasev1.DatabaseSpec{Image: "postgres:15", DatabaseName: "app", Username: "app", Storage: databasev1.StorageSpec{Size: "1Gi"},
			WALArchive: &databasev1.WALArchiveSpec{StorageLocation: "s3://wal/prod",
				S3: &databasev1.S3Config{Endpoint: "http://s3.example:9000", CredentialsSecret: corev1.LocalObjectReference{Name: "s3"}}}}}
	if err := k8s.Create(testCtx, db); err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
	testenv.Eventually(t, "database status", func() string {
		if err := k8s.Get(testCtx, client.ObjectKeyFromObject(db), db); err != nil {
			return err.Error()
		}
		db.Status.Phase, db.Status.Ready, db.Status.Image = databasev1.PhaseReady, true, "postgres:15.18"
		db.Status.CurrentPrimary, db.Status.SystemIdentifier = "test-db-0", "7412345678901234567"
		db.Status.WALArchive = &databasev1.WALArchiveStatus{Location: "s3://wal/prod"}
		meta.SetStatusCondition(&db.Status.Conditions, metav1.Condition{Type: databasev1.ConditionPrimaryAvailable, Status: metav1.ConditionTrue, Reason: "Test", Message: "test"})
		meta.SetStatusCondition(&db.Status.Conditions, metav1.Condition{Type: databasev1.ConditionContinuousArchiving, Status: archiving, Reason: "Test", Message: "set by the test"})
		if err := k8s.Status().Update(testCtx, db); err != nil {
			return err.Error()
		}
		return ""
	})
	for i, role := range []string{"primary", "replica"} {
		name := "test-db-" + string(rune('0'+i))
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{labelDatabase: "test-db", labelRole: role, LabelManagedBy: ManagedBy}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: agentapi.ContainerName, Image: "postgres:15.18"}}}}
		if err := k8s.Create(testCtx, pod); err != nil && !strings.Contains(err.Error(), "already exists") {
			t.Fatal(err)
		}
		pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		if err := k8s.Status().Update(testCtx, pod); err != nil {
			t.Fatal(err)
		}
	}
}

// A Physical Backup waits until its Database archives WAL, then runs
// pg_basebackup against a standby with the Database's image, mounting the
// WAL archive's Secret and only the replication password; the Job's verified
// result becomes status.baseBackup. Deleting it deletes the base backup, or,
// once the Database's archive Secret is gone, says what is left.
func TestAPhysicalBackupWaitsForTheArchiveThenCopiesAStandbyIntoIt(t *testing.T) {
	ns := newNamespace(t)
	db := &databasev1.Database{ObjectMeta: metav1.ObjectMeta{Name: "test-db", Namespace: ns},
		Spec: databasev1.DatabaseSpec{Image: "postgres:15", DatabaseName: "app", Username: "app", Storage: databasev1.StorageSpec{Size: "1Gi"}}}
	if err := k8s.Create(testCtx, db); err != nil {
		t.Fatal(err)
	}
	setDatabaseStatus(t, ns, "test-db", databasev1.PhaseReady, true)
	mustApply(t, ns, physicalBackup)
	b := waitBackup(t, ns, "test-backup", databasev1.BackupPending, databasev1.ReasonWALArchiveNotConfigured)
	if c := meta.FindStatusCondition(b.Status.Conditions, databasev1.ConditionReady); !strings.Contains(c.Message, "spec.walArchive") {
		t.Errorf("condition %q does not say what to set", c.Message)
	}
	if err := k8s.Delete(testCtx, db); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "database gone", func() string {
		if err := k8s.Get(testCtx, client.ObjectKeyFromObject(db), db); err == nil {
			return "still there"
		}
		return ""
	})
	archivingDatabase(t, ns, metav1.ConditionFalse)
	waitBackup(t, ns, "test-backup", databasev1.BackupPending, databasev1.ReasonWALArchiveNotReady)
	archivingDatabase(t, ns, metav1.ConditionTrue)
	b = waitBackup(t, ns, "test-backup", databasev1.BackupInProgress, databasev1.ReasonJobRunning)

	job := getJob(t, ns, "test-backup-backup")
	c := job.Spec.Template.Spec.Containers[0]
	args := strings.Join(c.Command, " ")
	name := "test-backup-" + shortUID(b.UID)
	for _, want := range []string{"backup run --method=physical", "--system-id=7412345678901234567", "--base-name=" + name,
		"--host=test-db-1.test-db-hl." + ns + ".svc.cluster.local", "--wal-archive-dir=" + agentapi.WALArchiveDir,
		"--replication-password-dir=", "--ca-file=", "--wal-timeout=7m0s"} {
		if !strings.Contains(args, want) {
			t.Errorf("job command %q lacks %q", args, want)
		}
	}
	if strings.Contains(args, "--location=") || strings.Contains(strings.ToLower(args), "password=") || len(c.Env) != 0 || c.Image != "postgres:15.18" {
		t.Errorf("job: image %s, command %q, env %v", c.Image, args, c.Env)
	}
	secrets := map[string][]corev1.KeyToPath{}
	for _, v := range job.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			secrets[v.Secret.SecretName] = v.Secret.Items
		}
	}
	if _, ok := secrets["test-db-wal-archive"]; !ok {
		t.Errorf("the WAL archive Secret is not mounted: %v", secrets)
	}
	if items := secrets["test-db-internal"]; len(items) != 1 || items[0].Key != agentapi.InternalReplicationPasswordFile {
		t.Errorf("from the internal Secret, mounted %v; want only the replication password", items)
	}
	if b.Status.BackupLocation != "s3://wal/prod/7412345678901234567/base/"+name+"/" || b.Status.Method != databasev1.BackupMethodPhysical {
		t.Errorf("status: location %q method %q", b.Status.BackupLocation, b.Status.Method)
	}

	start := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	res, _ := json.Marshal(enginepkg.Result{Base: &walarchive.BaseBackup{Name: name, SystemID: "7412345678901234567", PGVersion: "15",
		Timeline: 2, StartLSN: "0/5000028", EndLSN: "0/5000100", StartWAL: "000000020000000000000005", EndWAL: "000000020000000000000005",
		StartTime: start, EndTime: start.Add(2 * time.Second), Files: 987, Size: 40 << 20, StoredBytes: 5 << 20, SHA256: strings.Repeat("b", 64),
		Format: walarchive.BaseFormat, Source: "test-db-1"}})
	finishJob(t, job, true, string(res))
	b = waitBackup(t, ns, "test-backup", databasev1.BackupCompleted, databasev1.ReasonCompleted)
	bb := b.Status.BaseBackup
	if bb == nil || bb.Name != name || bb.Timeline != 2 || bb.StartWAL != "000000020000000000000005" || bb.Files != 987 ||
		bb.UncompressedBytes != 40<<20 || b.Status.SizeBytes != 5<<20 || b.Status.Duration != "2s" || b.Status.Format != walarchive.BaseFormat {
		t.Errorf("completed status %+v base %+v", b.Status, bb)
	}
	if c := meta.FindStatusCondition(b.Status.Conditions, databasev1.ConditionReady); !strings.Contains(c.Message, "987 files") {
		t.Errorf("Ready message %q", c.Message)
	}

	t.Run("a Restore of it is refused with a reason", func(t *testing.T) {
		mustApply(t, ns, testRestore)
		rs := waitRestore(t, ns, databasev1.RestoreFailed, databasev1.ReasonPhysicalRestoreUnsupported)
		if c := meta.FindStatusCondition(rs.Status.Conditions, databasev1.ConditionReady); !strings.Contains(c.Message, "Physical") {
			t.Errorf("message %q", c.Message)
		}
	})

	t.Run("deleting it deletes the base backup", func(t *testing.T) {
		if err := k8s.Create(testCtx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "test-db-wal-archive", Namespace: ns}}); err != nil {
			t.Fatal(err)
		}
		if err := k8s.Delete(testCtx, b); err != nil {
			t.Fatal(err)
		}
		del := getJob(t, ns, "test-backup-delete")
		args := strings.Join(del.Spec.Template.Spec.Containers[0].Command, " ")
		for _, want := range []string{"/manager backup delete --method=physical", "--base-name=" + name, "--system-id=7412345678901234567"} {
			if !strings.Contains(args, want) {
				t.Errorf("delete job %q lacks %q", args, want)
			}
		}
		finishJob(t, del, true, "")
		waitGone(t, ns, "test-backup")
	})
}

// Without the Database's WAL archive Secret no Job can reach the store: the
// Backup goes, and an event names what is left.
func TestDeletingAPhysicalBackupWhoseArchiveIsGoneLeavesItWithAnEvent(t *testing.T) {
	ns := newNamespace(t)
	archivingDatabase(t, ns, metav1.ConditionTrue)
	mustApply(t, ns, physicalBackup)
	job := getJob(t, ns, "test-backup-backup")
	b := getBackup(t, ns, "test-backup")
	res, _ := json.Marshal(enginepkg.Result{Base: &walarchive.BaseBackup{Name: "test-backup-" + shortUID(b.UID), SystemID: "7412345678901234567"}})
	finishJob(t, job, true, string(res))
	b = waitBackup(t, ns, "test-backup", databasev1.BackupCompleted, "")
	if err := k8s.Delete(testCtx, b); err != nil {
		t.Fatal(err)
	}
	waitGone(t, ns, "test-backup")
	testenv.Eventually(t, "an ArtifactNotDeleted event", func() string {
		var evs corev1.EventList
		if err := k8s.List(testCtx, &evs, client.InNamespace(ns)); err != nil {
			return err.Error()
		}
		for _, e := range evs.Items {
			if e.Reason == "ArtifactNotDeleted" && strings.Contains(e.Message, "WAL archive Secret is gone") {
				return ""
			}
		}
		return "none yet"
	})
}

func TestPhysicalBackupValidation(t *testing.T) {
	ns := newNamespace(t)
	for _, tc := range []struct{ add, want string }{
		{"  storageLocation: pvc://x\n", "a Physical Backup goes to the Database's spec.walArchive location"},
		{"  encryption: {secretName: k}\n", "a Physical Backup goes to the Database's spec.walArchive location"},
		{"  schedule: \"@daily\"\n  verify: {schedule: \"@weekly\"}\n", "verify (restore drills) is not available for Physical Backups yet"},
		{"  method: Snapshot\n", "Unsupported value: \"Snapshot\""},
	} {
		manifest := physicalBackup + tc.add
		if strings.Contains(tc.add, "method:") {
			manifest = strings.Replace(physicalBackup, "  method: Physical\n", tc.add, 1)
		}
		if err := apply(t, ns, manifest); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want %q", tc.add, err, tc.want)
		}
	}
}
