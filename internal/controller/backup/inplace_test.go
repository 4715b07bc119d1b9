package backup

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/testenv"
)

// What an in-place Restore does before anything changes: every refusal
// names its reason, and it starts only with the primary available.
func TestDecideInPlaceStart(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { v := metav1.NewTime(now.Add(d)); return &v }
	ready := func() *databasev1.Database {
		return &databasev1.Database{
			ObjectMeta: metav1.ObjectMeta{Name: "db"},
			Spec:       databasev1.DatabaseSpec{WALArchive: &databasev1.WALArchiveSpec{}},
			Status: databasev1.DatabaseStatus{CurrentPrimary: "db-0",
				WALArchive: &databasev1.WALArchiveStatus{FirstRecoverablePoint: at(-time.Hour), LastRecoverablePoint: at(-time.Minute)},
				Conditions: []metav1.Condition{{Type: databasev1.ConditionPrimaryAvailable, Status: metav1.ConditionTrue},
					{Type: databasev1.ConditionRecoverable, Status: metav1.ConditionTrue, Reason: databasev1.ReasonRecoverable}}},
		}
	}
	with := func(f func(db *databasev1.Database)) *databasev1.Database { db := ready(); f(db); return db }
	pit := func(t databasev1.RecoveryTarget) *databasev1.Restore {
		return &databasev1.Restore{ObjectMeta: metav1.ObjectMeta{Name: "r"}, Spec: databasev1.RestoreSpec{DatabaseRef: corev1.LocalObjectReference{Name: "db"},
			PointInTime: &databasev1.RestorePointInTime{RecoveryTarget: t}}}
	}
	withBackup := func(rs *databasev1.Restore) *databasev1.Restore { rs.Spec.BackupRef.Name = "base"; return rs }
	undo := &databasev1.Restore{ObjectMeta: metav1.ObjectMeta{Name: "u"}, Spec: databasev1.RestoreSpec{DatabaseRef: corev1.LocalObjectReference{Name: "db"}, Undo: "r"}}
	done := func(f func(r *databasev1.Restore)) *databasev1.Restore {
		r := &databasev1.Restore{ObjectMeta: metav1.ObjectMeta{Name: "r"}, Spec: databasev1.RestoreSpec{DatabaseRef: corev1.LocalObjectReference{Name: "db"}},
			Status: databasev1.RestoreStatus{Phase: databasev1.RestoreCompleted, PreviousData: ".previous-x", PreviousDataPod: "db-0", PreviousDataDropAfter: at(time.Hour)}}
		if f != nil {
			f(r)
		}
		return r
	}
	physical := &databasev1.Backup{ObjectMeta: metav1.ObjectMeta{Name: "base"}, Spec: databasev1.BackupSpec{DatabaseRef: corev1.LocalObjectReference{Name: "db"}, Method: databasev1.BackupMethodPhysical},
		Status: databasev1.BackupStatus{Phase: databasev1.BackupCompleted, BaseBackup: &databasev1.BaseBackupStatus{Name: "20261207T110000Z"}}}
	logical := &databasev1.Backup{ObjectMeta: metav1.ObjectMeta{Name: "base"}, Spec: databasev1.BackupSpec{DatabaseRef: corev1.LocalObjectReference{Name: "db"}, Method: databasev1.BackupMethodLogical}}
	for _, tc := range []struct {
		name   string
		rs     *databasev1.Restore
		f      inPlaceFacts
		phase  databasev1.RestorePhase
		reason string
		msg    string
		base   string
	}{
		{"a time inside the window starts", pit(databasev1.RecoveryTarget{Time: at(-30 * time.Minute)}), inPlaceFacts{Database: ready()},
			databasev1.RestoreInProgress, databasev1.ReasonRecoveryInProgress, "db-0", ""},
		{"latest starts", pit(databasev1.RecoveryTarget{Latest: true}), inPlaceFacts{Database: ready()}, databasev1.RestoreInProgress, databasev1.ReasonRecoveryInProgress, "", ""},
		{"a time before the window is refused naming it", pit(databasev1.RecoveryTarget{Time: at(-2 * time.Hour)}), inPlaceFacts{Database: ready()},
			databasev1.RestoreFailed, databasev1.ReasonTargetNotRecoverable, "before the recoverable window (2026-12-07T11:00:00Z to 2026-12-07T11:59:00Z) (nothing was changed)", ""},
		{"a time in the future is refused", pit(databasev1.RecoveryTarget{Time: at(time.Hour)}), inPlaceFacts{Database: ready()},
			databasev1.RestoreFailed, databasev1.ReasonTargetNotRecoverable, "in the future", ""},
		{"no WAL archive is refused", pit(databasev1.RecoveryTarget{Latest: true}), inPlaceFacts{Database: with(func(db *databasev1.Database) { db.Spec.WALArchive = nil })},
			databasev1.RestoreFailed, databasev1.ReasonWALArchiveNotConfigured, "spec.walArchive", ""},
		{"no window (no base backup) is refused", pit(databasev1.RecoveryTarget{Latest: true}), inPlaceFacts{Database: with(func(db *databasev1.Database) {
			db.Status.Conditions[1] = metav1.Condition{Type: databasev1.ConditionRecoverable, Status: metav1.ConditionFalse, Reason: databasev1.ReasonNoBaseBackup, Message: "take a Backup with method: Physical"}
		})}, databasev1.RestoreFailed, databasev1.ReasonTargetNotRecoverable, "take a Backup with method: Physical", ""},
		{"a window not surveyed yet does not refuse", pit(databasev1.RecoveryTarget{Latest: true}), inPlaceFacts{Database: with(func(db *databasev1.Database) {
			db.Status.Conditions[1] = metav1.Condition{Type: databasev1.ConditionRecoverable, Status: metav1.ConditionFalse, Reason: databasev1.ReasonRecoverableUnknown}
		})}, databasev1.RestoreInProgress, databasev1.ReasonRecoveryInProgress, "", ""},
		{"the Database missing waits", pit(databasev1.RecoveryTarget{Latest: true}), inPlaceFacts{}, databasev1.RestorePending, databasev1.ReasonDatabaseNotFound, "", ""},
		{"the primary unavailable waits", pit(databasev1.RecoveryTarget{Latest: true}), inPlaceFacts{Database: with(func(db *databasev1.Database) {
			db.Status.Conditions[0].Status = metav1.ConditionFalse
		})}, databasev1.RestorePending, databasev1.ReasonDatabaseNotReady, "", ""},
		{"another Restore running waits", pit(databasev1.RecoveryTarget{Latest: true}), inPlaceFacts{Database: ready(), Running: "other"},
			databasev1.RestorePending, databasev1.ReasonRestoreInProgress, "other", ""},
		{"a named Physical Backup is the base", withBackup(pit(databasev1.RecoveryTarget{Latest: true})), inPlaceFacts{Database: ready(), Backup: physical},
			databasev1.RestoreInProgress, databasev1.ReasonRecoveryInProgress, "", "20261207T110000Z"},
		{"a named Logical Backup is refused", withBackup(pit(databasev1.RecoveryTarget{Latest: true})), inPlaceFacts{Database: ready(), Backup: logical},
			databasev1.RestoreFailed, databasev1.ReasonTargetNotRecoverable, "Logical", ""},
		{"a named Backup missing waits", withBackup(pit(databasev1.RecoveryTarget{Latest: true})), inPlaceFacts{Database: ready(), BackupMissing: true},
			databasev1.RestorePending, databasev1.ReasonBackupNotFound, "", ""},
		{"an undo of a completed restore whose directory is kept on the primary starts", undo, inPlaceFacts{Database: ready(), Undone: done(nil)},
			databasev1.RestoreInProgress, databasev1.ReasonRecoveryInProgress, "", ""},
		{"an undo of nothing is refused", undo, inPlaceFacts{Database: ready()}, databasev1.RestoreFailed, databasev1.ReasonUndoNotPossible, "does not exist", ""},
		{"an undo of a restore without a previous directory is refused", undo, inPlaceFacts{Database: ready(), Undone: done(func(r *databasev1.Restore) { r.Status.PreviousData = "" })},
			databasev1.RestoreFailed, databasev1.ReasonUndoNotPossible, "kept previous data directory", ""},
		{"an undo after the directory was deleted is refused", undo, inPlaceFacts{Database: ready(), Undone: done(func(r *databasev1.Restore) { r.Status.PreviousDataDropAfter = at(-time.Second) })},
			databasev1.RestoreFailed, databasev1.ReasonUndoNotPossible, "is deleted at", ""},
		{"an undo too close to the deletion is refused (it must not expire while the undo prepares)", undo,
			inPlaceFacts{Database: ready(), Undone: done(func(r *databasev1.Restore) { r.Status.PreviousDataDropAfter = at(5 * time.Minute) })},
			databasev1.RestoreFailed, databasev1.ReasonUndoNotPossible, "an undo needs 10m0s before it", ""},
		{"an undo whose directory is on a standby waits, saying to switch over", undo, inPlaceFacts{Database: ready(), Undone: done(func(r *databasev1.Restore) { r.Status.PreviousDataPod = "db-1" })},
			databasev1.RestorePending, databasev1.ReasonDatabaseNotReady, "switch over to db-1", ""},
		{"an undo of another Database's restore is refused", undo, inPlaceFacts{Database: ready(), Undone: done(func(r *databasev1.Restore) { r.Spec.DatabaseRef.Name = "other" })},
			databasev1.RestoreFailed, databasev1.ReasonUndoNotPossible, "not db", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.f.Now = now
			got := decideInPlaceStart(tc.rs, tc.f)
			if got.Phase != tc.phase || got.Reason != tc.reason || !strings.Contains(got.Message, tc.msg) || got.BaseBackup != tc.base {
				t.Errorf("got %+v, want %s %s %q base %q", got, tc.phase, tc.reason, tc.msg, tc.base)
			}
		})
	}
}

// A running in-place Restore takes its outcome from the primary's report
// with its UID, and only from it.
func TestFollowInPlace(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	keep := metav1.NewTime(now.Add(24 * time.Hour))
	rs := func() *databasev1.Restore {
		return &databasev1.Restore{ObjectMeta: metav1.ObjectMeta{Name: "r", UID: "uid-1"}, Status: databasev1.RestoreStatus{Phase: databasev1.RestoreInProgress,
			PreviousDataPod: "db-0", Recovery: &databasev1.RecoveryStatus{Target: "time 2026-12-07T11:30:00Z", BaseBackup: "named"}}}
	}
	for _, tc := range []struct {
		name   string
		ip     *databasev1.InPlaceRecoveryStatus
		phase  databasev1.RestorePhase
		reason string
	}{
		{"no report yet", nil, databasev1.RestoreInProgress, databasev1.ReasonRecoveryInProgress},
		{"another Restore's report", &databasev1.InPlaceRecoveryStatus{ID: "uid-0", Phase: databasev1.RestoreCompleted}, databasev1.RestoreInProgress, databasev1.ReasonRecoveryInProgress},
		{"in progress", &databasev1.InPlaceRecoveryStatus{ID: "uid-1", Pod: "db-0", Phase: databasev1.RestoreInProgress, Message: "restoring"}, databasev1.RestoreInProgress, databasev1.ReasonRecoveryInProgress},
		{"completed", &databasev1.InPlaceRecoveryStatus{ID: "uid-1", Pod: "db-0", Phase: databasev1.RestoreCompleted, PreviousData: ".previous-uid-1", PreviousDataDropAfter: &keep,
			RecoveryStatus: databasev1.RecoveryStatus{BaseBackup: "b", ReachedLSN: "0/5000100", Timeline: 2}}, databasev1.RestoreCompleted, databasev1.ReasonCompleted},
		{"refused", &databasev1.InPlaceRecoveryStatus{ID: "uid-1", Phase: databasev1.RestoreFailed, RecoveryStatus: databasev1.RecoveryStatus{Error: "refused: the target is outside the archive's recoverable window: x"}},
			databasev1.RestoreFailed, databasev1.ReasonTargetNotRecoverable},
		{"failed otherwise", &databasev1.InPlaceRecoveryStatus{ID: "uid-1", Phase: databasev1.RestoreFailed, RecoveryStatus: databasev1.RecoveryStatus{Error: "the archive did not receive WAL segment"}},
			databasev1.RestoreFailed, databasev1.ReasonRecoveryFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rs()
			followInPlace(r, &databasev1.Database{Status: databasev1.DatabaseStatus{CurrentPrimary: "db-0", InPlaceRecovery: tc.ip}}, now)
			c := findReady(r.Status.Conditions)
			if r.Status.Phase != tc.phase || c == nil || c.Reason != tc.reason {
				t.Fatalf("got %s %+v, want %s %s", r.Status.Phase, c, tc.phase, tc.reason)
			}
			if tc.phase == databasev1.RestoreCompleted {
				if r.Status.PreviousData != ".previous-uid-1" || r.Status.PreviousDataPod != "db-0" || !r.Status.PreviousDataDropAfter.Equal(&keep) ||
					r.Status.Recovery.Timeline != 2 || r.Status.Recovery.Target != "time 2026-12-07T11:30:00Z" {
					t.Errorf("status %+v recovery %+v", r.Status, r.Status.Recovery)
				}
				if r.Status.Recovery.BaseBackup != "b" {
					t.Errorf("base backup %q: the report's", r.Status.Recovery.BaseBackup)
				}
				if !strings.Contains(c.Message, "spec.undo: r undoes") {
					t.Errorf("the message does not say how to undo: %s", c.Message)
				}
			}
		})
	}
}

// A primary change before the recovery ended fails the Restore (it would
// wait forever for a report the new primary never makes), and the base
// backup backupRef named is kept while the report has none.
func TestFollowInPlaceAcrossAPrimaryChange(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	rs := &databasev1.Restore{ObjectMeta: metav1.ObjectMeta{Name: "r", UID: "uid-1"}, Status: databasev1.RestoreStatus{Phase: databasev1.RestoreInProgress,
		PreviousDataPod: "db-0", Recovery: &databasev1.RecoveryStatus{Target: "latest", BaseBackup: "named"}}}
	followInPlace(rs, &databasev1.Database{Status: databasev1.DatabaseStatus{CurrentPrimary: "db-0",
		InPlaceRecovery: &databasev1.InPlaceRecoveryStatus{ID: "uid-1", Pod: "db-0", Phase: databasev1.RestoreInProgress, Message: "restoring"}}}, now)
	if rs.Status.Phase != databasev1.RestoreInProgress || rs.Status.Recovery.BaseBackup != "named" {
		t.Fatalf("phase %s base %q", rs.Status.Phase, rs.Status.Recovery.BaseBackup)
	}
	followInPlace(rs, &databasev1.Database{Status: databasev1.DatabaseStatus{CurrentPrimary: "db-1",
		InPlaceRecovery: &databasev1.InPlaceRecoveryStatus{ID: "uid-1", Pod: "db-0", Phase: databasev1.RestoreInProgress}}}, now)
	c := findReady(rs.Status.Conditions)
	if rs.Status.Phase != databasev1.RestoreFailed || c.Reason != databasev1.ReasonRecoveryFailed || !strings.Contains(c.Message, "from db-0 to db-1") {
		t.Errorf("phase %s %+v", rs.Status.Phase, c)
	}
}

func findReady(cs []metav1.Condition) *metav1.Condition {
	for i := range cs {
		if cs[i].Type == databasev1.ConditionReady {
			return &cs[i]
		}
	}
	return nil
}

// An in-place Restore on the API server: refused before anything changes
// without an archive; with one, InProgress once the primary is available,
// then Completed from the Database's report of it (its UID), recording the
// previous data directory an undo puts back; the undo then starts.
func TestAnInPlaceRestoreFollowsThePrimarysReportAndCanBeUndone(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	const pitr = "  pointInTime:\n    latest: true\n  keepPreviousFor: 2h\n"
	mustApply(t, ns, strings.Replace(testRestore, "  backupRef:\n    name: test-backup\n", pitr, 1))
	rs := waitRestore(t, ns, databasev1.RestoreFailed, databasev1.ReasonWALArchiveNotConfigured)
	if !strings.Contains(rs.Status.Error, "nothing was changed") {
		t.Errorf("error %q", rs.Status.Error)
	}

	db := &databasev1.Database{}
	testenv.Eventually(t, "an archive on the Database", func() string {
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "test-db"}, db); err != nil {
			return err.Error()
		}
		db.Spec.WALArchive = &databasev1.WALArchiveSpec{StorageLocation: "s3://archive/x"}
		if err := k8s.Update(testCtx, db); err != nil {
			return err.Error()
		}
		return ""
	})
	mustApply(t, ns, strings.Replace(strings.Replace(testRestore, "  backupRef:\n    name: test-backup\n", pitr, 1), "test-restore", "to-latest", 1))
	rs = waitRestoreNamed(t, ns, "to-latest", databasev1.RestoreInProgress, databasev1.ReasonRecoveryInProgress)
	if rs.Status.Recovery == nil || rs.Status.Recovery.Target != "the end of the archive" {
		t.Errorf("recovery %+v", rs.Status.Recovery)
	}
	keep := metav1.NewTime(time.Now().Add(30 * 24 * time.Hour).Truncate(time.Second)) // the suite's clock runs ahead
	testenv.Eventually(t, "the primary's report", func() string {
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "test-db"}, db); err != nil {
			return err.Error()
		}
		db.Status.InPlaceRecovery = &databasev1.InPlaceRecoveryStatus{ID: string(rs.UID), Pod: "test-db-0", Phase: databasev1.RestoreCompleted,
			RecoveryStatus: databasev1.RecoveryStatus{BaseBackup: "b1", Target: "the end of the archive", ReachedLSN: "0/9000000", Timeline: 2},
			PreviousData:   ".previous-" + string(rs.UID), PreviousDataDropAfter: &keep}
		if err := k8s.Status().Update(testCtx, db); err != nil {
			return err.Error()
		}
		return ""
	})
	rs = waitRestoreNamed(t, ns, "to-latest", databasev1.RestoreCompleted, databasev1.ReasonCompleted)
	if rs.Status.PreviousData != ".previous-"+string(rs.UID) || rs.Status.PreviousDataPod != "test-db-0" || rs.Status.Recovery.Timeline != 2 {
		t.Errorf("status %+v", rs.Status)
	}

	mustApply(t, ns, strings.Replace(strings.Replace(testRestore, "  backupRef:\n    name: test-backup\n", "  undo: to-latest\n", 1), "test-restore", "undo", 1))
	u := waitRestoreNamed(t, ns, "undo", databasev1.RestoreInProgress, databasev1.ReasonRecoveryInProgress)
	if u.Status.Recovery == nil || u.Status.Recovery.Target != "undo of Restore to-latest" {
		t.Errorf("undo recovery %+v", u.Status.Recovery)
	}
}
