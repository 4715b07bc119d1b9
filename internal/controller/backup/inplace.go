package backup

import (
	"context"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/walarchive"
)

// An in-place point-in-time Restore (spec.pointInTime) or its undo
// (spec.undo). The Restore controller checks it and reports it; the Database
// controller hands it to the primary's agent, which does the work and
// reports it in the Database's status.inPlaceRecovery.
//
//	Pending --checked, the primary available, no other in-place Restore--> InProgress
//	Pending --bad target, no archive, no window, undo of nothing--> Failed (nothing changed)
//	InProgress --the primary reports it Completed--> Completed
//	InProgress --the primary reports it Failed (before the swap: nothing changed)--> Failed

// undoMargin: an undo starts only this long before the directory it puts
// back is due to be deleted (it must not expire while the undo prepares).
const undoMargin = 10 * time.Minute

// inPlaceFacts is what the start of an in-place Restore depends on.
type inPlaceFacts struct {
	Now time.Time
	// Database is nil when it does not exist.
	Database *databasev1.Database
	// Backup is spec.backupRef's Backup (nil: none named, or not found).
	Backup        *databasev1.Backup
	BackupMissing bool
	// Undone is spec.undo's Restore (nil: not found).
	Undone *databasev1.Restore
	// Running is another in-place Restore of the Database that is InProgress.
	Running string
}

// inPlaceStart is decideInPlaceStart's answer.
type inPlaceStart struct {
	Phase           databasev1.RestorePhase
	Reason, Message string
	// BaseBackup is the base backup to start from ("": the newest usable).
	BaseBackup string
}

// decideInPlaceStart checks an in-place Restore before anything changes.
// It is pure.
func decideInPlaceStart(rs *databasev1.Restore, f inPlaceFacts) inPlaceStart {
	fail := func(reason, msg string) inPlaceStart {
		return inPlaceStart{Phase: databasev1.RestoreFailed, Reason: reason, Message: msg + " (nothing was changed)"}
	}
	wait := func(reason, msg string) inPlaceStart {
		return inPlaceStart{Phase: databasev1.RestorePending, Reason: reason, Message: msg}
	}
	db := f.Database
	if db == nil {
		return wait(databasev1.ReasonDatabaseNotFound, fmt.Sprintf("Waiting for Database %s to exist", rs.Spec.DatabaseRef.Name))
	}
	var start inPlaceStart
	if u := rs.Spec.Undo; u != "" {
		switch {
		case f.Undone == nil:
			return fail(databasev1.ReasonUndoNotPossible, fmt.Sprintf("spec.undo names Restore %s, which does not exist", u))
		case f.Undone.Spec.DatabaseRef.Name != db.Name:
			return fail(databasev1.ReasonUndoNotPossible, fmt.Sprintf("Restore %s restored Database %s, not %s", u, f.Undone.Spec.DatabaseRef.Name, db.Name))
		case f.Undone.Status.Phase != databasev1.RestoreCompleted || f.Undone.Status.PreviousData == "":
			return fail(databasev1.ReasonUndoNotPossible, fmt.Sprintf("Restore %s is not a Completed point-in-time Restore with a kept previous data directory", u))
		case f.Undone.Status.PreviousDataDropAfter != nil && !f.Now.Add(undoMargin).Before(f.Undone.Status.PreviousDataDropAfter.Time):
			return fail(databasev1.ReasonUndoNotPossible, fmt.Sprintf("the data directory Restore %s replaced is deleted at %s (its keepPreviousFor; an undo needs %s before it)", u,
				f.Undone.Status.PreviousDataDropAfter.UTC().Format(time.RFC3339), undoMargin))
		case f.Undone.Status.PreviousDataPod != db.Status.CurrentPrimary && db.Status.CurrentPrimary != "":
			return wait(databasev1.ReasonDatabaseNotReady, fmt.Sprintf("The data directory Restore %s replaced is on %s, and the primary is %s: "+
				"switch over to %s (kubectl pg switchover) to undo it", u, f.Undone.Status.PreviousDataPod, db.Status.CurrentPrimary, f.Undone.Status.PreviousDataPod))
		}
	} else {
		pit := rs.Spec.PointInTime
		if db.Spec.WALArchive == nil {
			return fail(databasev1.ReasonWALArchiveNotConfigured, fmt.Sprintf("Database %s has no WAL archive (spec.walArchive): there is nothing to recover a point in time from", db.Name))
		}
		if pit.Time != nil && pit.Time.After(f.Now) {
			return fail(databasev1.ReasonTargetNotRecoverable, fmt.Sprintf("%s is in the future", pit.Time.UTC().Format(time.RFC3339)))
		}
		w := db.Status.WALArchive
		if c := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionRecoverable); c != nil && c.Status == metav1.ConditionFalse &&
			c.Reason != databasev1.ReasonRecoverableUnknown {
			return fail(databasev1.ReasonTargetNotRecoverable, "The archive has no recoverable window: "+c.Message)
		}
		if pit.Time != nil && w != nil && w.FirstRecoverablePoint != nil && pit.Time.Before(w.FirstRecoverablePoint) {
			window := w.FirstRecoverablePoint.UTC().Format(time.RFC3339)
			if w.LastRecoverablePoint != nil {
				window += " to " + w.LastRecoverablePoint.UTC().Format(time.RFC3339)
			}
			return fail(databasev1.ReasonTargetNotRecoverable, fmt.Sprintf("%s is before the recoverable window (%s)", pit.Time.UTC().Format(time.RFC3339), window))
		}
		if rs.Spec.BackupRef.Name != "" {
			b := f.Backup
			switch {
			case f.BackupMissing:
				return wait(databasev1.ReasonBackupNotFound, fmt.Sprintf("Waiting for Backup %s to exist", rs.Spec.BackupRef.Name))
			case b.Spec.Method != databasev1.BackupMethodPhysical:
				return fail(databasev1.ReasonTargetNotRecoverable, fmt.Sprintf("Backup %s is a Logical Backup: a point-in-time Restore starts from a Physical one", b.Name))
			case b.Spec.DatabaseRef.Name != db.Name:
				return fail(databasev1.ReasonTargetNotRecoverable, fmt.Sprintf("Backup %s is of Database %s, not %s", b.Name, b.Spec.DatabaseRef.Name, db.Name))
			case b.Status.Phase != databasev1.BackupCompleted || b.Status.BaseBackup == nil:
				return wait(databasev1.ReasonBackupNotComplete, fmt.Sprintf("Waiting for Backup %s to complete", b.Name))
			}
			start.BaseBackup = b.Status.BaseBackup.Name
		}
	}
	if f.Running != "" {
		return wait(databasev1.ReasonRestoreInProgress, fmt.Sprintf("Waiting for Restore %s of Database %s to finish", f.Running, db.Name))
	}
	if ok, why := primaryAvailable(db); !ok || db.Status.CurrentPrimary == "" {
		if why == "" {
			why = fmt.Sprintf("Waiting for Database %s to report its primary", db.Name)
		}
		return wait(databasev1.ReasonDatabaseNotReady, why)
	}
	start.Phase, start.Reason = databasev1.RestoreInProgress, databasev1.ReasonRecoveryInProgress
	start.Message = fmt.Sprintf("Primary %s is asked to restore in place", db.Status.CurrentPrimary)
	return start
}

// targetString names a Restore's target as a human reads it.
func targetString(rs *databasev1.Restore) string {
	if rs.Spec.Undo != "" {
		return "undo of Restore " + rs.Spec.Undo
	}
	return walarchive.TargetRequest(rs.Spec.PointInTime.RecoveryTarget, "").String()
}

// reconcileInPlace moves an in-place Restore forward.
func (r *RestoreReconciler) reconcileInPlace(ctx context.Context, rs *databasev1.Restore) (ctrl.Result, error) {
	f := inPlaceFacts{Now: r.Clock.Now()}
	db := &databasev1.Database{}
	switch err := r.Get(ctx, types.NamespacedName{Namespace: rs.Namespace, Name: rs.Spec.DatabaseRef.Name}, db); {
	case apierrors.IsNotFound(err):
	case err != nil:
		return ctrl.Result{}, err
	default:
		f.Database = db
	}
	if rs.Status.Phase == databasev1.RestoreInProgress && f.Database != nil {
		followInPlace(rs, db, f.Now)
		if rs.Status.Phase == databasev1.RestoreInProgress {
			return ctrl.Result{RequeueAfter: 5 * time.Second}, nil
		}
		return ctrl.Result{}, nil
	}
	if rs.Spec.Undo != "" {
		u := &databasev1.Restore{}
		switch err := r.Get(ctx, types.NamespacedName{Namespace: rs.Namespace, Name: rs.Spec.Undo}, u); {
		case apierrors.IsNotFound(err):
		case err != nil:
			return ctrl.Result{}, err
		default:
			f.Undone = u
		}
	}
	if name := rs.Spec.BackupRef.Name; name != "" && rs.Spec.PointInTime != nil {
		b := &databasev1.Backup{}
		switch err := r.Get(ctx, types.NamespacedName{Namespace: rs.Namespace, Name: name}, b); {
		case apierrors.IsNotFound(err):
			f.BackupMissing = true
		case err != nil:
			return ctrl.Result{}, err
		default:
			f.Backup = b
		}
	}
	var list databasev1.RestoreList
	// Read from the API server, not the cache: a Restore started a moment
	// ago must be seen, or two could run.
	reader := client.Reader(r.Client)
	if r.APIReader != nil {
		reader = r.APIReader
	}
	if err := reader.List(ctx, &list, client.InNamespace(rs.Namespace)); err != nil {
		return ctrl.Result{}, err
	}
	for _, o := range list.Items {
		if o.Name != rs.Name && o.Spec.DatabaseRef.Name == rs.Spec.DatabaseRef.Name && o.Status.Phase == databasev1.RestoreInProgress {
			f.Running = o.Name
		}
	}
	d := decideInPlaceStart(rs, f)
	rs.Status.Phase = d.Phase
	conditionsFor(&rs.Status.Conditions, rs.Generation, false, d.Phase == databasev1.RestoreFailed, d.Reason, d.Message)
	if d.Phase == databasev1.RestoreInProgress {
		rs.Status.Recovery = &databasev1.RecoveryStatus{Target: targetString(rs), BaseBackup: d.BaseBackup}
		// The primary it is handed to: the replaced data directory is kept
		// on its volume.
		rs.Status.PreviousDataPod = db.Status.CurrentPrimary
		return ctrl.Result{RequeueAfter: 5 * time.Second}, nil
	}
	if d.Phase == databasev1.RestorePending {
		return ctrl.Result{RequeueAfter: waitRequeue}, nil
	}
	return ctrl.Result{}, nil
}

// followInPlace takes a running in-place Restore's state from the primary's
// report of it (the Database's status.inPlaceRecovery with its UID).
func followInPlace(rs *databasev1.Restore, db *databasev1.Database, now time.Time) {
	ip := db.Status.InPlaceRecovery
	took := rs.Status.PreviousDataPod
	if took != "" && db.Status.CurrentPrimary != "" && db.Status.CurrentPrimary != took &&
		(ip == nil || ip.ID != string(rs.UID) || ip.Phase == databasev1.RestoreInProgress) {
		// Failed over (or switched over) before the recovery ended: the new
		// primary has the data of before the restore.
		rs.Status.Phase = databasev1.RestoreFailed
		conditionsFor(&rs.Status.Conditions, rs.Generation, false, true, databasev1.ReasonRecoveryFailed,
			fmt.Sprintf("The primary changed from %s to %s before the in-place recovery ended: %s has the data of before the restore. "+
				"If %s had swapped its data directory, what it was restoring is kept there for 24h (.aborted-%s); create a new Restore to try again",
				took, db.Status.CurrentPrimary, db.Status.CurrentPrimary, took, rs.UID))
		return
	}
	if ip == nil || ip.ID != string(rs.UID) {
		conditionsFor(&rs.Status.Conditions, rs.Generation, false, false, databasev1.ReasonRecoveryInProgress,
			"Waiting for the primary to take the in-place recovery")
		return
	}
	rec := ip.RecoveryStatus
	if rs.Status.Recovery != nil {
		// What the Restore asked keeps what the report does not say yet
		// (the base backup named by backupRef is sent again from it).
		if rec.Target == "" {
			rec.Target = rs.Status.Recovery.Target
		}
		if rec.BaseBackup == "" {
			rec.BaseBackup = rs.Status.Recovery.BaseBackup
		}
	}
	rs.Status.Recovery = &rec
	switch ip.Phase {
	case databasev1.RestoreCompleted:
		rs.Status.Phase = databasev1.RestoreCompleted
		t := metav1.NewTime(now)
		rs.Status.RestoreTime = &t
		rs.Status.PreviousData, rs.Status.PreviousDataPod, rs.Status.PreviousDataDropAfter = ip.PreviousData, ip.Pod, ip.PreviousDataDropAfter
		msg := fmt.Sprintf("Restored in place to %s", rec.Target)
		if rec.BaseBackup != "" {
			msg += " from " + rec.BaseBackup
		}
		msg += fmt.Sprintf(": replay ended at %s", rec.ReachedLSN)
		if rec.ReachedTime != nil {
			msg += " (last transaction committed at " + rec.ReachedTime.UTC().Format(time.RFC3339Nano) + ")"
		}
		msg += fmt.Sprintf(", promoted on timeline %d; the standbys re-clone", rec.Timeline)
		if ip.PreviousData != "" && ip.PreviousDataDropAfter != nil {
			msg += fmt.Sprintf("; the previous data directory is kept on %s until %s (spec.undo: %s undoes this Restore)",
				ip.Pod, ip.PreviousDataDropAfter.UTC().Format(time.RFC3339), rs.Name)
		}
		conditionsFor(&rs.Status.Conditions, rs.Generation, true, false, databasev1.ReasonCompleted, msg)
	case databasev1.RestoreFailed:
		rs.Status.Phase = databasev1.RestoreFailed
		reason := databasev1.ReasonRecoveryFailed
		if strings.Contains(ip.Error, walarchive.ErrTargetNotRecoverable.Error()) || strings.HasPrefix(ip.Error, "refused: ") {
			reason = databasev1.ReasonTargetNotRecoverable
		}
		conditionsFor(&rs.Status.Conditions, rs.Generation, false, true, reason, ip.Error+" (nothing was changed)")
	default:
		conditionsFor(&rs.Status.Conditions, rs.Generation, false, false, databasev1.ReasonRecoveryInProgress,
			fmt.Sprintf("Primary %s: %s", ip.Pod, ip.Message))
	}
}
