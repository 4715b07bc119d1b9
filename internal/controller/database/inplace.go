package database

import (
	"context"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/walarchive"
)

// inPlaceObs is the in-place recovery the target primary reports.
type inPlaceObs struct {
	Pod    string
	Report agentapi.RecoveryResult
}

// reconcileInPlaceRecovery hands an in-place point-in-time Restore that the
// Restore controller checked (InProgress) to the primary's agent, until the
// agent reports it under its ID. One at a time; the agent's answer is
// idempotent.
func (r *Reconciler) reconcileInPlaceRecovery(ctx context.Context, db *databasev1.Database, obs *observation) error {
	target := db.Status.TargetPrimary
	rep, ok := obs.Instances[target]
	if ok && rep.Err == nil && rep.Status != nil && rep.Status.Recovery != nil && rep.Status.Recovery.ID != "" {
		obs.InPlace = &inPlaceObs{Pod: target, Report: *rep.Status.Recovery}
	}
	var list databasev1.RestoreList
	if err := r.List(ctx, &list, client.InNamespace(db.Namespace)); err != nil {
		return fmt.Errorf("listing restores: %w", err)
	}
	// The oldest first, and only it: a later one waits until it finished
	// (its Restore then reads the outcome before another report replaces it).
	sort.Slice(list.Items, func(i, j int) bool {
		a, b := list.Items[i].CreationTimestamp, list.Items[j].CreationTimestamp
		if !a.Equal(&b) {
			return a.Before(&b)
		}
		return list.Items[i].Name < list.Items[j].Name
	})
	for i := range list.Items {
		rs := &list.Items[i]
		if rs.Spec.DatabaseRef.Name != db.Name || rs.Status.Phase != databasev1.RestoreInProgress || (rs.Spec.PointInTime == nil && rs.Spec.Undo == "") {
			continue
		}
		id := string(rs.UID)
		if obs.InPlace != nil && (obs.InPlace.Report.ID == id || (!obs.InPlace.Report.Done && obs.InPlace.Report.Error == "")) {
			return nil // taken (finished or not), or another one runs
		}
		if !ok || rep.Err != nil || rep.Status == nil || !rep.Status.Running || rep.Status.Role != agentapi.RolePrimary || !rep.Status.Writable {
			return nil // the Restore waits for the primary
		}
		req, err := r.inPlaceRequest(ctx, rs)
		if err != nil {
			return err
		}
		pod := obs.pod(target)
		if pod == nil {
			return nil
		}
		if err := r.Instances.RecoverInPlace(ctx, pod, obs.Agent, req); err != nil {
			return fmt.Errorf("asking primary %s to restore in place for Restore %s: %w", target, rs.Name, err)
		}
		logf.FromContext(ctx).Info("in-place recovery handed to the primary", "restore", rs.Name, "primary", target, "undo", req.Undo)
		if r.Recorder != nil {
			r.Recorder.Eventf(db, rs, corev1.EventTypeNormal, "RestoringInPlace", "Restore",
				"Primary %s restores the Database in place for Restore %s", target, rs.Name)
		}
		return nil
	}
	return nil
}

// inPlaceRequest is what the agent is asked for a Restore.
func (r *Reconciler) inPlaceRequest(ctx context.Context, rs *databasev1.Restore) (agentapi.InPlaceRecoveryRequest, error) {
	keep := 24 * time.Hour
	if rs.Spec.KeepPreviousFor != nil {
		keep = rs.Spec.KeepPreviousFor.Duration
	}
	req := agentapi.InPlaceRecoveryRequest{ID: string(rs.UID), KeepPreviousSeconds: int64(keep / time.Second), Inclusive: true}
	if rs.Spec.Undo != "" {
		u := &databasev1.Restore{}
		if err := r.Get(ctx, types.NamespacedName{Namespace: rs.Namespace, Name: rs.Spec.Undo}, u); err != nil {
			if apierrors.IsNotFound(err) {
				return req, fmt.Errorf("the Restore %s that %s undoes is gone", rs.Spec.Undo, rs.Name)
			}
			return req, err
		}
		req.Undo = string(u.UID)
		return req, nil
	}
	t := walarchive.TargetRequest(rs.Spec.PointInTime.RecoveryTarget, "")
	req.Time, req.LSN, req.XID, req.RestorePoint, req.Latest, req.Inclusive = t.Time, t.LSN, t.XID, t.RestorePoint, t.Latest, t.Inclusive
	if rs.Status.Recovery != nil {
		req.BaseBackup = rs.Status.Recovery.BaseBackup
	}
	return req, nil
}

// decideInPlace is status.inPlaceRecovery from the primary's report, or the
// previous one. It is pure.
func decideInPlace(o *inPlaceObs, prev *databasev1.InPlaceRecoveryStatus) *databasev1.InPlaceRecoveryStatus {
	if o == nil {
		return prev
	}
	rr := o.Report
	st := &databasev1.InPlaceRecoveryStatus{ID: rr.ID, Pod: o.Pod, Phase: databasev1.RestoreInProgress, Message: rr.Message,
		RecoveryStatus: databasev1.RecoveryStatus{BaseBackup: rr.BaseBackup, Target: rr.Target, ReachedLSN: rr.ReachedLSN, Timeline: rr.Timeline, Error: rr.Error},
		PreviousData:   rr.PreviousData}
	if rr.ReachedTime != nil {
		t := metav1.NewTime(*rr.ReachedTime)
		st.ReachedTime = &t
	}
	if rr.KeepUntil != nil {
		t := metav1.NewTime(*rr.KeepUntil)
		st.PreviousDataDropAfter = &t
	}
	switch {
	case rr.Error != "":
		st.Phase = databasev1.RestoreFailed
	case rr.Done:
		st.Phase, st.Message = databasev1.RestoreCompleted, ""
	}
	return st
}
