package database

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/walarchive"
)

// recoveryObs is what the recovery source step found for a Database
// bootstrapped by a point-in-time recovery.
type recoveryObs struct {
	// Ready: the <name>-recovery-source Secret holds the source and target.
	Ready bool
	// Reason and Message say why not.
	Reason, Message string
}

// recoverySource is a point-in-time bootstrap's source, resolved.
type recoverySource struct {
	Location string
	S3       *databasev1.S3Config
	Enc      *databasev1.BackupEncryption
	SystemID string
	// Window is the source Database's recoverable window, when known.
	Window *databasev1.WALArchiveStatus
}

// resolveRecoverySource resolves spec.bootstrap.pointInTime's source: a
// Database's WAL archive or a bare location.
func (r *Reconciler) resolveRecoverySource(ctx context.Context, db *databasev1.Database) (recoverySource, string, error) {
	p := db.Spec.Bootstrap.PointInTime
	if p.DatabaseRef == nil {
		s3 := p.S3
		if s3 == nil {
			s3 = r.ArchiveDefaults.S3
		}
		if s3 == nil {
			return recoverySource{}, databasev1.ReasonRecoverySourceNotFound,
				fmt.Errorf("spec.bootstrap.pointInTime.storageLocation %s needs s3 settings (the operator has no default ones)", p.StorageLocation)
		}
		return recoverySource{Location: p.StorageLocation, S3: s3, Enc: p.Encryption, SystemID: p.SystemIdentifier}, "", nil
	}
	src := &databasev1.Database{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: db.Namespace, Name: p.DatabaseRef.Name}, src); err != nil {
		if apierrors.IsNotFound(err) {
			return recoverySource{}, databasev1.ReasonRecoverySourceNotFound, fmt.Errorf("the source Database %s does not exist", p.DatabaseRef.Name)
		}
		return recoverySource{}, "", err
	}
	if src.Spec.WALArchive == nil || src.Status.SystemIdentifier == "" {
		return recoverySource{}, databasev1.ReasonRecoverySourceNotFound,
			fmt.Errorf("the source Database %s has no WAL archive (spec.walArchive) or no recorded system identifier", src.Name)
	}
	loc, s3, err := resolveArchive(src, r.ArchiveDefaults)
	if err != nil {
		return recoverySource{}, databasev1.ReasonRecoverySourceNotFound, fmt.Errorf("the source Database %s: %w", src.Name, err)
	}
	return recoverySource{Location: loc, S3: s3, Enc: src.Spec.WALArchive.Encryption, SystemID: src.Status.SystemIdentifier,
		Window: src.Status.WALArchive}, "", nil
}

// checkTarget refuses a time target outside the source Database's window
// (a bare archive's is checked by the agent, before it restores anything).
func checkTarget(t databasev1.RecoveryTarget, w *databasev1.WALArchiveStatus) error {
	if t.Time == nil || w == nil || w.FirstRecoverablePoint == nil || w.LastRecoverablePoint == nil {
		return nil
	}
	window := w.FirstRecoverablePoint.UTC().Format(time.RFC3339) + " to " + w.LastRecoverablePoint.UTC().Format(time.RFC3339)
	if t.Time.Before(w.FirstRecoverablePoint) {
		return fmt.Errorf("%s is before the source's recoverable window (%s)", t.Time.UTC().Format(time.RFC3339), window)
	}
	// The window's end is rounded down to the second and is only as recent
	// as the source's last status: a later target is checked by the agent
	// against the archive itself.
	return nil
}

// reconcileRecoverySource writes the <name>-recovery-source Secret the
// instances of a Database bootstrapped by a point-in-time recovery mount:
// the source archive's configuration, its credentials and the target.
// Until it exists their agents wait (never initdb).
func (r *Reconciler) reconcileRecoverySource(ctx context.Context, db *databasev1.Database, obs *observation) error {
	if db.Spec.Bootstrap == nil || db.Spec.Bootstrap.PointInTime == nil {
		return nil
	}
	key := types.NamespacedName{Namespace: db.Namespace, Name: agentapi.RecoverySourceSecretName(db.Name)}
	live := &corev1.Secret{}
	err := r.Get(ctx, key, live)
	switch {
	case apierrors.IsNotFound(err):
		live = nil
	case err != nil:
		return fmt.Errorf("getting secret %s: %w", key.Name, err)
	case !metav1.IsControlledBy(live, db):
		conflict(obs, "Secret", live, db)
		obs.Recovery = &recoveryObs{Reason: databasev1.ReasonRecoverySourceNotFound,
			Message: "Secret " + key.Name + " exists and is not owned by the Database"}
		return nil
	}
	if db.Status.SystemIdentifier != "" && live != nil {
		// Recovered: the source may change or go; what was written stays.
		obs.Recovery = &recoveryObs{Ready: true}
		return nil
	}
	p := db.Spec.Bootstrap.PointInTime
	src, reason, err := r.resolveRecoverySource(ctx, db)
	if err == nil {
		if terr := checkTarget(p.RecoveryTarget, src.Window); terr != nil {
			reason, err = databasev1.ReasonTargetNotRecoverable, terr
		}
	}
	if err != nil {
		if reason == "" {
			return err
		}
		obs.Recovery = &recoveryObs{Reason: reason, Message: err.Error()}
		return nil
	}
	data, err := r.storeSecretData(ctx, db.Namespace, walarchive.Config{Location: src.Location, Endpoint: src.S3.Endpoint,
		Region: src.S3.Region, ForcePathStyle: src.S3.ForcePathStyle}, src.S3, src.Enc)
	if err != nil {
		obs.Recovery = &recoveryObs{Reason: databasev1.ReasonRecoverySourceNotFound, Message: err.Error()}
		return nil
	}
	target, err := json.Marshal(walarchive.TargetRequest(p.RecoveryTarget, src.SystemID))
	if err != nil {
		return err
	}
	data[walarchive.RecoveryTargetFile] = target
	obs.Recovery = &recoveryObs{Ready: true}
	return r.applyOwnedSecret(ctx, db, key, live, data)
}

// decideRecovered derives status.recovery and the Recovered condition of a
// Database bootstrapped by a point-in-time recovery, from the step's finding
// and the primary's report. It is pure.
func decideRecovered(o *recoveryObs, primary *agentapi.Status, prev *databasev1.RecoveryStatus) (*databasev1.RecoveryStatus, metav1.ConditionStatus, string, string) {
	if prev != nil && prev.Error == "" && prev.Timeline != 0 {
		return prev, metav1.ConditionTrue, databasev1.ReasonRecovered, recoveredMessage(prev)
	}
	if o != nil && !o.Ready {
		return &databasev1.RecoveryStatus{Error: o.Message}, metav1.ConditionFalse, o.Reason, o.Message
	}
	if primary == nil || primary.Recovery == nil {
		return prev, metav1.ConditionFalse, databasev1.ReasonRecoveryInProgress, "Waiting for the first instance to restore a base backup of the source"
	}
	rr := primary.Recovery
	st := &databasev1.RecoveryStatus{BaseBackup: rr.BaseBackup, Target: rr.Target, ReachedLSN: rr.ReachedLSN, Timeline: rr.Timeline, Error: rr.Error}
	if rr.ReachedTime != nil {
		t := metav1.NewTime(*rr.ReachedTime)
		st.ReachedTime = &t
	}
	switch {
	case rr.Error != "":
		return st, metav1.ConditionFalse, databasev1.ReasonTargetNotRecoverable, "Nothing was restored: " + rr.Error
	case rr.Done:
		return st, metav1.ConditionTrue, databasev1.ReasonRecovered, recoveredMessage(st)
	default:
		return st, metav1.ConditionFalse, databasev1.ReasonRecoveryInProgress,
			fmt.Sprintf("Replaying the archive to %s from base backup %s: %s", rr.Target, rr.BaseBackup, primary.Message)
	}
}

func recoveredMessage(st *databasev1.RecoveryStatus) string {
	msg := fmt.Sprintf("Recovered to %s from base backup %s: replay ended at %s", st.Target, st.BaseBackup, st.ReachedLSN)
	if st.ReachedTime != nil {
		msg += " (last transaction committed at " + st.ReachedTime.UTC().Format(time.RFC3339) + ")"
	}
	return msg + fmt.Sprintf(", promoted on timeline %d", st.Timeline)
}
