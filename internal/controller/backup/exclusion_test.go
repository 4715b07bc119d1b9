package backup

import (
	"strings"
	"testing"
	"time"

	"github.com/robfig/cron/v3"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"

	databasev1 "github.com/example/postgres-operator/api/v1"
	enginepkg "github.com/example/postgres-operator/internal/backup"
	"github.com/example/postgres-operator/internal/testenv"
)

// A Backup and a Restore of the same Database never run at once: a backup that
// overlaps a restore could dump a half-restored database.
func TestBackupsAndRestoresOfOneDatabaseAreMutuallyExclusive(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, oneShot)
	finishJob(t, getJob(t, ns, "test-backup-backup"), true, resultMessage(&enginepkg.Manifest{SizeBytes: 1}, ""))
	waitBackup(t, ns, "test-backup", databasev1.BackupCompleted, "")

	// A restore runs: a new Backup of the same Database waits for it.
	mustApply(t, ns, testRestore)
	restoreJob := getJob(t, ns, "test-restore-restore")
	waitRestore(t, ns, databasev1.RestoreInProgress, "")
	mustApply(t, ns, strings.Replace(oneShot, "name: test-backup", "name: during-restore", 1))
	waitBackup(t, ns, "during-restore", databasev1.BackupPending, databasev1.ReasonRestoreInProgress)
	finishJob(t, restoreJob, true, "")
	waitRestore(t, ns, databasev1.RestoreCompleted, "")
	backupJob := getJob(t, ns, "during-restore-backup")

	// That backup runs: a new Restore waits for it.
	waitBackup(t, ns, "during-restore", databasev1.BackupInProgress, "")
	mustApply(t, ns, strings.Replace(testRestore, "name: test-restore", "name: test-restore-2", 1))
	testenv.Eventually(t, "second restore waits", func() string {
		rs := &databasev1.Restore{}
		if err := k8s.Get(testCtx, objKey(ns, "test-restore-2"), rs); err != nil {
			return err.Error()
		}
		if c := meta.FindStatusCondition(rs.Status.Conditions, databasev1.ConditionReady); c == nil || c.Reason != databasev1.ReasonBackupInProgress {
			return "phase " + string(rs.Status.Phase)
		}
		return ""
	})
	finishJob(t, backupJob, true, resultMessage(&enginepkg.Manifest{SizeBytes: 1}, ""))
	getJob(t, ns, "test-restore-2-restore")
}

// A Restore of a scheduled Backup records the run it chose when it found one (a
// run completing later does not move it), and retention does not delete that run
// while the Restore is unfinished.
func TestARestoreKeepsTheScheduledRunItChoseAndRetentionSparesIt(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, strings.Replace(strings.Replace(scheduled, "name: nightly", "name: test-backup", 1), "retention: 2", "retention: 1", 1))
	fake.Step(10 * time.Minute)
	poke(t, ns, "test-backup")
	first := waitRuns(t, ns, "test-backup", 1)[0]
	complete(t, first)
	// A second run is in progress when the Restore is created: the Restore
	// chooses the first (the newest completed) and waits for the backup.
	fake.Step(10 * time.Minute)
	poke(t, ns, "test-backup")
	var second databasev1.Backup
	for _, r := range waitRuns(t, ns, "test-backup", 2) {
		if r.Name != first.Name {
			second = r
		}
	}
	waitBackup(t, ns, second.Name, databasev1.BackupInProgress, "")
	mustApply(t, ns, testRestore)
	waitRestore(t, ns, databasev1.RestorePending, databasev1.ReasonBackupInProgress)
	rs := &databasev1.Restore{}
	if err := k8s.Get(testCtx, objKey(ns, "test-restore"), rs); err != nil || rs.Status.BackupName != first.Name {
		t.Fatalf("status.backupName %q, want %s (%v)", rs.Status.BackupName, first.Name, err)
	}
	// The second run completes: retention 1 would delete the first, which the
	// Restore uses; the Restore still restores the first.
	complete(t, second)
	restoreJob := getJob(t, ns, "test-restore-restore")
	if args := strings.Join(restoreJob.Spec.Template.Spec.Containers[0].Command, " "); !strings.Contains(args, "/"+first.Name+"-") {
		t.Fatalf("restore job %q does not restore %s", args, first.Name)
	}
	poke(t, ns, "test-backup")
	time.Sleep(time.Second)
	found := false
	for _, r := range runs(t, ns, "test-backup") {
		found = found || r.Name == first.Name
	}
	if !found {
		t.Fatal("retention deleted the run an unfinished Restore restores from")
	}
	// Once the Restore finished, retention applies again.
	finishJob(t, restoreJob, true, "")
	waitRestore(t, ns, databasev1.RestoreCompleted, "")
	poke(t, ns, "test-backup")
	if got := waitRuns(t, ns, "test-backup", 1); got[0].Name != second.Name {
		t.Errorf("retention kept %s, want the newest %s", got[0].Name, second.Name)
	}
}

// A suspended schedule creates no runs; an unknown time zone fails the Backup
// with a reason.
func TestScheduleSuspendAndTimeZone(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, strings.Replace(scheduled, "retention: 2", "retention: 2\n  suspend: true", 1))
	fake.Step(30 * time.Minute)
	poke(t, ns, "nightly")
	testenv.Eventually(t, "Suspended condition", func() string {
		c := meta.FindStatusCondition(getBackup(t, ns, "nightly").Status.Conditions, databasev1.ConditionReady)
		if c == nil || c.Reason != databasev1.ReasonSuspended {
			return "no Suspended condition"
		}
		return ""
	})
	if n := len(runs(t, ns, "nightly")); n != 0 {
		t.Errorf("%d runs while suspended", n)
	}
	mustApply(t, ns, strings.Replace(strings.Replace(scheduled, "name: nightly", "name: zoned", 1), "retention: 2", "retention: 2\n  timeZone: Mars/Olympus_Mons", 1))
	waitBackup(t, ns, "zoned", databasev1.BackupFailed, databasev1.ReasonInvalidSchedule)
}

// Schedules are evaluated in UTC, or in spec.timeZone: 03:00 in Tokyo is 18:00 UTC.
func TestLatestSlotInATimeZone(t *testing.T) {
	sched, err := cronParser.Parse("0 3 * * *")
	if err != nil {
		t.Fatal(err)
	}
	tokyo, err := time.LoadLocation("Asia/Tokyo")
	if err != nil {
		t.Skipf("no tz database: %v", err)
	}
	last := time.Date(2026, 12, 2, 17, 0, 0, 0, time.UTC)
	now := time.Date(2026, 12, 2, 18, 30, 0, 0, time.UTC)
	if due := latestSlot(sched, last.In(tokyo), now.In(tokyo)); !due.Equal(time.Date(2026, 12, 2, 18, 0, 0, 0, time.UTC)) {
		t.Errorf("Tokyo: due %v, want 18:00 UTC", due)
	}
	if due := latestSlot(sched, last, now); !due.IsZero() {
		t.Errorf("UTC: due %v, want none before 03:00 UTC", due)
	}
	var _ cron.Schedule = sched //nolint:staticcheck // asserts latestSlot takes any cron.Schedule
}

func objKey(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}
