package database

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
)

// reconcileStorage grows PersistentVolumeClaims whose request is below
// spec.storage.size, after checking that their StorageClass allows expansion and
// that they are bound; obs.Storage says how it went.
func (r *Reconciler) reconcileStorage(ctx context.Context, db *databasev1.Database, obs *observation) error {
	want, err := resource.ParseQuantity(db.Spec.Storage.Size)
	if err != nil {
		return fmt.Errorf("parsing storage.size: %w", err)
	}
	var pvcs corev1.PersistentVolumeClaimList
	if err := r.List(ctx, &pvcs, client.InNamespace(db.Namespace), client.MatchingLabels(selectorLabels(db))); err != nil {
		return fmt.Errorf("listing volumes: %w", err)
	}
	obs.PVCs = pvcs.Items
	var unsupported, unbound, resizing, failed []string
	var firstErr error
	classes := map[string]*storagev1.StorageClass{}
	for i := range pvcs.Items {
		pvc := &pvcs.Items[i]
		if agentapi.Ordinal(pvc.Name) >= int(replicas(db)) {
			continue // a retained volume of a scaled-down instance
		}
		have := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
		if have.Cmp(want) >= 0 {
			if capacity, ok := pvc.Status.Capacity[corev1.ResourceStorage]; ok && capacity.Cmp(want) < 0 {
				resizing = append(resizing, pvc.Name)
			}
			continue
		}
		if pvc.Status.Phase != corev1.ClaimBound {
			unbound = append(unbound, pvc.Name)
			continue
		}
		className := ""
		if pvc.Spec.StorageClassName != nil {
			className = *pvc.Spec.StorageClassName
		}
		sc, seen := classes[className]
		if !seen && className != "" {
			sc = &storagev1.StorageClass{}
			if err := r.Get(ctx, types.NamespacedName{Name: className}, sc); err != nil {
				if !apierrors.IsNotFound(err) {
					return fmt.Errorf("getting storage class %s: %w", className, err)
				}
				sc = nil
			}
			classes[className] = sc
		}
		if sc == nil || sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion {
			unsupported = append(unsupported, fmt.Sprintf("%s (StorageClass %q, %s)", pvc.Name, className, have.String()))
			continue
		}
		patch := client.MergeFrom(pvc.DeepCopy())
		pvc.Spec.Resources.Requests[corev1.ResourceStorage] = want
		if err := r.Patch(ctx, pvc, patch, client.FieldOwner(FieldOwner)); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", pvc.Name, err))
			if firstErr == nil {
				firstErr = fmt.Errorf("expanding volume %s to %s: %w", pvc.Name, want.String(), err)
			}
			continue
		}
		logf.FromContext(ctx).Info("expanding volume", "pvc", pvc.Name, "from", have.String(), "to", want.String())
		resizing = append(resizing, pvc.Name)
	}
	switch {
	case len(unsupported) > 0:
		obs.Storage = &conditionVerdict{metav1.ConditionFalse, databasev1.ReasonExpansionNotSupported,
			fmt.Sprintf("spec.storage.size is %s but the StorageClass of these volumes does not allow expansion (allowVolumeExpansion is not true): %s. "+
				"The volumes keep their size; the database is unaffected", want.String(), strings.Join(unsupported, ", "))}
	case len(failed) > 0:
		obs.Storage = &conditionVerdict{metav1.ConditionFalse, databasev1.ReasonExpansionFailed,
			"Expanding volumes failed: " + strings.Join(failed, "; ")}
	case len(unbound) > 0:
		obs.Storage = &conditionVerdict{metav1.ConditionFalse, databasev1.ReasonVolumeNotBound,
			fmt.Sprintf("Waiting for volumes to be bound before expanding them to %s: %s", want.String(), strings.Join(unbound, ", "))}
	case len(resizing) > 0:
		obs.Storage = &conditionVerdict{metav1.ConditionFalse, databasev1.ReasonStorageResizing,
			fmt.Sprintf("Expanding volumes to %s: %s", want.String(), strings.Join(resizing, ", "))}
	default:
		obs.Storage = &conditionVerdict{metav1.ConditionTrue, databasev1.ReasonStorageResized,
			fmt.Sprintf("Every volume has the requested size %s", want.String())}
	}
	return firstErr
}

// reconcileIdentity records the cluster's system identifier the first time a
// primary reports it (initdb, or the adoption of retained volumes), or recovers it
// from the internal Secret when the status lost it. It is written into the
// internal Secret at once: from then on no agent runs initdb.
func (r *Reconciler) reconcileIdentity(ctx context.Context, db *databasev1.Database, obs *observation) error {
	if db.Status.SystemIdentifier != "" {
		return nil
	}
	p := primaryOf(*obs)
	if obs.SecretSystemID != "" {
		if p != nil && p.SystemIdentifier == obs.SecretSystemID {
			// Recorded in the Secret by an earlier reconcile whose status write this
			// one does not see yet: the same facts as then.
			obs.Identity = newIdentity(db, p)
			return nil
		}
		obs.Identity = &identity{SystemID: obs.SecretSystemID, FromSecret: true}
		return nil
	}
	if p == nil || !p.Running || p.SystemIdentifier == "" {
		return nil
	}
	if p.Bootstrapped {
		if why := retainedDataConflict(db, *obs, p); why != "" {
			// Recording this identity would make every retained standby volume
			// "foreign" and re-clone it: the only copy of the earlier data.
			obs.IdentityConflict = why
			return nil
		}
	}
	obs.Identity = newIdentity(db, p)
	internal := &corev1.Secret{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: db.Namespace, Name: internalSecretName(db)}, internal); err != nil {
		return fmt.Errorf("getting the internal secret: %w", err)
	}
	if !metav1.IsControlledBy(internal, db) {
		return nil
	}
	if err := r.recordSystemID(ctx, internal, p.SystemIdentifier); err != nil {
		return err
	}
	logf.FromContext(ctx).Info("system identifier written to the internal Secret for the agents", "systemIdentifier", p.SystemIdentifier, "pod", p.Pod, "adopted", !p.Bootstrapped)
	return nil
}

// retainedDataConflict explains why a cluster the primary has just initialised
// must not be recorded: standby volumes older than the Database (kept from an
// earlier Database of the same name) or standbys reporting another cluster's data.
func retainedDataConflict(db *databasev1.Database, obs observation, p *agentapi.Status) string {
	var old []string
	for _, pvc := range obs.PVCs {
		if agentapi.Ordinal(pvc.Name) > 0 && pvc.CreationTimestamp.Before(&db.CreationTimestamp) {
			old = append(old, pvc.Name)
		}
	}
	for _, n := range podNames(obs) {
		if r := obs.Instances[n]; n != p.Pod && r.Status != nil && r.Status.SystemIdentifier != "" && r.Status.SystemIdentifier != p.SystemIdentifier {
			old = append(old, fmt.Sprintf("%s (system identifier %s)", n, r.Status.SystemIdentifier))
		}
	}
	if len(old) == 0 {
		return ""
	}
	sort.Strings(old)
	return fmt.Sprintf("Primary %s found an empty volume and initialised a new cluster (system identifier %s), but %s predate this Database and may hold "+
		"the data of an earlier one: the operator records no identity and re-clones nothing. To start fresh, delete those PVCs; to keep the old data, "+
		"leave them and do not write to this Database", p.Pod, p.SystemIdentifier, strings.Join(old, ", "))
}

// newIdentity describes the identity a primary reports for the first time: made
// by our initdb, found on the volume of a new Database (adopted), or that of a
// cluster that already ran before the operator recorded identities (an upgrade).
func newIdentity(db *databasev1.Database, p *agentapi.Status) *identity {
	id := &identity{SystemID: p.SystemIdentifier, DataVersion: p.DataVersion, Pod: p.Pod}
	switch {
	case p.Bootstrapped:
	case db.Status.CurrentPrimary != "":
		id.Existing = true
	default:
		id.Adopted = true
	}
	return id
}

// desiredSlots are the replication slots the primary keeps: one per other
// ordinal of the spec.
func desiredSlots(db *databasev1.Database, primary string) []string {
	var out []string
	for i := int32(0); i < replicas(db); i++ {
		if pod := fmt.Sprintf("%s-%d", statefulSetName(db), i); pod != primary {
			out = append(out, agentapi.SlotName(pod))
		}
	}
	return out
}

// slotsNeedSync reports whether the primary's managed slots differ from want, or a
// wanted one lost its WAL and is not in use (the agent recreates it).
func slotsNeedSync(have []agentapi.SlotStatus, want []string) bool {
	w := map[string]bool{}
	for _, n := range want {
		w[n] = true
	}
	seen := 0
	for _, s := range have {
		if !w[s.Name] {
			if !s.Active {
				return true
			}
			continue
		}
		if s.WALStatus == "lost" && !s.Active {
			return true
		}
		seen++
	}
	return seen != len(want)
}

// pod is the instance pod of that name (nil: none).
func (o *observation) pod(name string) *corev1.Pod {
	for i := range o.Pods {
		if o.Pods[i].Name == name {
			return &o.Pods[i]
		}
	}
	return nil
}

// recloneReason says why a running standby can never catch up by streaming and
// must be re-cloned, or "" when it can. It is pure: the operator acts on what the
// primary and the standby report.
func recloneReason(systemID string, primary, standby *agentapi.Status) string {
	if standby == nil || primary == nil || !standby.Running || standby.Role != agentapi.RoleReplica {
		return ""
	}
	if systemID != "" && standby.SystemIdentifier != "" && standby.SystemIdentifier != systemID {
		return fmt.Sprintf("its data directory belongs to another cluster (system identifier %s, the Database's is %s)", standby.SystemIdentifier, systemID)
	}
	if standby.Timeline > 0 && primary.Timeline > 0 && standby.Timeline > primary.Timeline {
		return fmt.Sprintf("it is on timeline %d, which the primary (timeline %d) never had: its history diverged", standby.Timeline, primary.Timeline)
	}
	for _, r := range primary.Replicas {
		if r.ApplicationName == standby.Pod && r.State == "streaming" {
			return ""
		}
	}
	if standby.WALReceiverStatus == "streaming" {
		return ""
	}
	slot := agentapi.SlotName(standby.Pod)
	for _, s := range primary.Slots {
		if s.Name == slot && s.WALStatus == "lost" {
			return fmt.Sprintf("its replication slot %s lost the WAL it needs (more than max_slot_wal_keep_size behind)", slot)
		}
	}
	// The evidence is the primary's own answer, as the standby logged it: a
	// position comparison alone would also flag a standby that is still replaying
	// its local WAL after a restart.
	if standby.Diverged {
		return fmt.Sprintf("its recovery went past the point where the primary's timeline %d forked off (at %s it holds WAL the primary never had, given up by an asynchronous failover): it cannot follow",
			primary.Timeline, agentapi.LaterLSN(standby.ReplayLSN, standby.ReceiveLSN))
	}
	if standby.WALMissing {
		pos := agentapi.LaterLSN(standby.ReplayLSN, standby.ReceiveLSN)
		return fmt.Sprintf("the primary answered that the WAL it needs has already been removed (it stopped at %s; the primary's oldest WAL starts at %s)", pos, primary.OldestWALLSN)
	}
	return ""
}

// reconcileReplication keeps one replication slot per standby on the primary,
// re-clones standbys that can never catch up, and recreates an instance stuck on
// a data-version mismatch once the spec's image was set back.
func (r *Reconciler) reconcileReplication(ctx context.Context, db *databasev1.Database, obs *observation) error {
	log := logf.FromContext(ctx)
	var errs []error
	pods := map[string]*corev1.Pod{}
	for i := range obs.Pods {
		pods[obs.Pods[i].Name] = &obs.Pods[i]
	}
	if p := primaryOf(*obs); p != nil && p.Running && pods[p.Pod] != nil {
		want := desiredSlots(db, p.Pod)
		if slotsNeedSync(p.Slots, want) {
			if err := r.Instances.SetSlots(ctx, pods[p.Pod], obs.Agent, want); err != nil {
				errs = append(errs, fmt.Errorf("setting replication slots on %s: %w", p.Pod, err))
			} else {
				log.Info("replication slots synchronised", "primary", p.Pod, "slots", strings.Join(want, ","))
			}
		}
		for _, n := range podNames(*obs) {
			rep := obs.Instances[n]
			if n == p.Pod || rep.Err != nil || rep.Status == nil {
				continue
			}
			why := recloneReason(db.Status.SystemIdentifier, p, rep.Status)
			if why == "" {
				continue
			}
			if err := r.Instances.Reclone(ctx, pods[n], obs.Agent); err != nil {
				errs = append(errs, fmt.Errorf("asking standby %s to re-clone: %w", n, err))
				continue
			}
			if obs.Recloning == nil {
				obs.Recloning = map[string]string{}
			}
			obs.Recloning[n] = why
			log.Info("re-cloning standby", "pod", n, "reason", why)
			if r.Recorder != nil {
				r.Recorder.Eventf(db, nil, corev1.EventTypeWarning, databasev1.ReasonStandbyRecloning, "Reclone",
					"Standby %s is re-cloned from primary %s: %s", n, p.Pod, why)
			}
		}
	}
	// An instance that refused to start on a data directory of another major runs
	// an image the StatefulSet no longer asks for once spec.image was set back: the
	// StatefulSet controller would wait for it to become ready forever.
	if obs.StatefulSet != nil {
		want := runningImage(obs.StatefulSet)
		for _, n := range podNames(*obs) {
			rep := obs.Instances[n]
			pod := pods[n]
			if rep.Err != nil || rep.Status == nil || rep.Status.State != agentapi.StateVersionMismatch || pod.DeletionTimestamp != nil {
				continue
			}
			if img := podImage(*obs, n); img == want {
				continue
			}
			if err := r.Delete(ctx, pod, client.Preconditions{UID: &pod.UID}); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("recreating pod %s with image %s: %w", n, want, err))
				continue
			}
			log.Info("recreating an instance stuck on a data version mismatch with the reverted image", "pod", n, "image", want)
			if r.Recorder != nil {
				r.Recorder.Eventf(db, nil, corev1.EventTypeNormal, "RecreatingInstance", "Recreate",
					"Pod %s refused to start with image %s (data directory of another major); recreating it with %s", n, podImage(*obs, n), want)
			}
		}
	}
	return errors.Join(errs...)
}

// reconcileRecovery acts on the recover-primary-from annotation: a primary whose
// data directory is missing is rebuilt by cloning the named standby.
func (r *Reconciler) reconcileRecovery(ctx context.Context, db *databasev1.Database, obs *observation) error {
	source := db.Annotations[databasev1.AnnotationRecoverPrimaryFrom]
	if source == "" {
		return nil
	}
	primaryPod := db.Status.TargetPrimary
	rep, ok := obs.Instances[primaryPod]
	if ok && rep.Err == nil && rep.Status != nil && rep.Status.Running && rep.Status.Role == agentapi.RolePrimary && rep.Status.Writable {
		// Done (or never needed): the annotation must not rebuild the primary from a
		// then stale standby after some later loss.
		if err := r.removeAnnotation(ctx, db, databasev1.AnnotationRecoverPrimaryFrom); err != nil {
			return err
		}
		logf.FromContext(ctx).Info("primary available: recovery annotation removed", "primary", primaryPod)
		if r.Recorder != nil {
			r.Recorder.Eventf(db, nil, corev1.EventTypeNormal, "RecoveryComplete", "Recover",
				"Primary %s accepts writes; annotation %s removed", primaryPod, databasev1.AnnotationRecoverPrimaryFrom)
		}
		return nil
	}
	if !ok || rep.Err != nil || rep.Status == nil || rep.Status.State != agentapi.StateDataMissing {
		return nil
	}
	src, ok := obs.Instances[source]
	switch {
	case source == primaryPod || agentapi.Ordinal(source) < 0 || !strings.HasPrefix(source, statefulSetName(db)+"-"):
		obs.RecoveryError = fmt.Sprintf("Annotation %s=%q does not name a standby pod of this Database", databasev1.AnnotationRecoverPrimaryFrom, source)
		return nil
	case !ok || src.Err != nil || src.Status == nil || !src.Status.Running || src.Status.Role != agentapi.RoleReplica:
		obs.RecoveryError = fmt.Sprintf("Annotation %s=%q: that standby is not running", databasev1.AnnotationRecoverPrimaryFrom, source)
		return nil
	case mostAdvancedOther(*obs, primaryPod, source) != "":
		obs.RecoveryError = mostAdvancedOther(*obs, primaryPod, source)
		return nil
	case src.Status.SystemIdentifier != db.Status.SystemIdentifier:
		obs.RecoveryError = fmt.Sprintf("Annotation %s=%q: that standby's system identifier %s is not the Database's %s",
			databasev1.AnnotationRecoverPrimaryFrom, source, src.Status.SystemIdentifier, db.Status.SystemIdentifier)
		return nil
	}
	pod := obs.pod(primaryPod)
	if pod == nil {
		return nil
	}
	if err := r.Instances.Recover(ctx, pod, obs.Agent, source); err != nil {
		return fmt.Errorf("asking %s to rebuild from %s: %w", primaryPod, source, err)
	}
	logf.FromContext(ctx).Info("rebuilding the primary from a standby", "primary", primaryPod, "source", source)
	if r.Recorder != nil {
		r.Recorder.Eventf(db, nil, corev1.EventTypeNormal, databasev1.ReasonRecoveringPrimary, "Recover",
			"Rebuilding primary %s, whose data directory was missing, by cloning standby %s", primaryPod, source)
	}
	return nil
}

// mostAdvancedOther explains why source must not be the recovery source: another
// running standby has WAL it lacks.
func mostAdvancedOther(obs observation, primaryPod, source string) string {
	best, bestLSN := mostAdvancedStandby(obs, primaryPod)
	if best == "" || best == source {
		return ""
	}
	src := obs.Instances[source].Status
	srcLSN := agentapi.LaterLSN(src.ReplayLSN, src.ReceiveLSN)
	if agentapi.LaterLSN(srcLSN, bestLSN) == srcLSN {
		return "" // as far as the most advanced
	}
	return fmt.Sprintf("Annotation %s=%q: standby %s is further ahead (%s, %s is at %s); rebuilding from %s would lose the transactions only %s has. Name %s instead",
		databasev1.AnnotationRecoverPrimaryFrom, source, best, bestLSN, source, srcLSN, source, best, best)
}
