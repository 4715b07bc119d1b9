package database

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/metrics"
)

// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;create;update;patch
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch;delete

func leaseName(db *databasev1.Database) string           { return db.Name + "-primary" }
func instanceAccountName(db *databasev1.Database) string { return db.Name + "-instance" }
func primaryPDBName(db *databasev1.Database) string      { return db.Name + "-primary" }

// Failover timings with their defaults (the CRD defaults them too).
func leaseDuration(db *databasev1.Database) time.Duration {
	return secondsOr(db.Spec.Failover.LeaseDurationSeconds, 15)
}
func renewDeadline(db *databasev1.Database) time.Duration {
	return secondsOr(db.Spec.Failover.RenewDeadlineSeconds, 10)
}
func retryPeriod(db *databasev1.Database) time.Duration {
	return secondsOr(db.Spec.Failover.RetryPeriodSeconds, 2)
}
func failoverDelay(db *databasev1.Database) time.Duration {
	return time.Duration(db.Spec.Failover.FailoverDelaySeconds) * time.Second
}

// maxLagOnFailover is spec.failover.maxLagOnFailover in bytes (default 1Mi).
func maxLagOnFailover(db *databasev1.Database) int64 {
	if q := db.Spec.Failover.MaxLagOnFailover; q != nil {
		return max(0, q.Value())
	}
	return 1 << 20
}

// promoteTimeout bounds the Promoting phase (rule 4): a switchover's old
// primary checkpoints and stops (at most ~20 s plus its shutdown), a failover's
// candidate may wait a lease duration for an expired Lease, then pg_promote
// waits up to 60 s. 2.5 min at the defaults.
func promoteTimeout(db *databasev1.Database) time.Duration {
	return 2*leaseDuration(db) + 120*time.Second
}

func secondsOr(v int32, def int) time.Duration {
	if v <= 0 {
		return time.Duration(def) * time.Second
	}
	return time.Duration(v) * time.Second
}

// buildInstanceAccess returns the instance pods' ServiceAccount and the Role and
// RoleBinding that let it get and update the Database's primary Lease, and
// nothing else.
func buildInstanceAccess(db *databasev1.Database) (*corev1ac.ServiceAccountApplyConfiguration, *rbacv1ac.RoleApplyConfiguration, *rbacv1ac.RoleBindingApplyConfiguration) {
	sa := corev1ac.ServiceAccount(instanceAccountName(db), db.Namespace).
		WithLabels(podLabels(db)).
		WithOwnerReferences(ownerReference(db)).
		WithAutomountServiceAccountToken(false)
	role := rbacv1ac.Role(instanceAccountName(db), db.Namespace).
		WithLabels(podLabels(db)).
		WithOwnerReferences(ownerReference(db)).
		WithRules(rbacv1ac.PolicyRule().
			WithAPIGroups(coordinationv1.GroupName).
			WithResources("leases").
			WithResourceNames(leaseName(db)).
			WithVerbs("get", "update"))
	rb := rbacv1ac.RoleBinding(instanceAccountName(db), db.Namespace).
		WithLabels(podLabels(db)).
		WithOwnerReferences(ownerReference(db)).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup(rbacv1.GroupName).WithKind("Role").WithName(instanceAccountName(db))).
		WithSubjects(rbacv1ac.Subject().WithKind(rbacv1.ServiceAccountKind).WithName(instanceAccountName(db)).WithNamespace(db.Namespace))
	return sa, role, rb
}

// reconcileAccess applies the instances' ServiceAccount, Role and RoleBinding and
// creates the primary Lease; obs.Lease is the Lease as the API server has it
// (read directly: Leases are renewed every few seconds and are not cached).
func (r *Reconciler) reconcileAccess(ctx context.Context, db *databasev1.Database, obs *observation) error {
	sa, role, rb := buildInstanceAccess(db)
	var errs []error
	key := types.NamespacedName{Namespace: db.Namespace, Name: instanceAccountName(db)}
	liveSA, liveRole, liveRB := &corev1.ServiceAccount{}, &rbacv1.Role{}, &rbacv1.RoleBinding{}
	for _, c := range []struct {
		kind string
		ac   applyConfiguration
		live client.Object
		rv   func() *string
	}{
		{"ServiceAccount", sa, liveSA, func() *string { return sa.ResourceVersion }},
		{"Role", role, liveRole, func() *string { return role.ResourceVersion }},
		{"RoleBinding", rb, liveRB, func() *string { return rb.ResourceVersion }},
	} {
		live := c.live
		if err := r.Get(ctx, key, c.live); apierrors.IsNotFound(err) {
			live = nil
		} else if err != nil {
			errs = append(errs, fmt.Errorf("getting %s %s: %w", c.kind, key.Name, err))
			continue
		} else if !metav1.IsControlledBy(c.live, db) {
			conflict(obs, c.kind, c.live, db)
			continue
		}
		if err := r.applyIfChanged(ctx, c.kind, c.ac, live, c.rv); err != nil {
			errs = append(errs, err)
		}
	}

	lease := &coordinationv1.Lease{}
	err := r.reader().Get(ctx, types.NamespacedName{Namespace: db.Namespace, Name: leaseName(db)}, lease)
	switch {
	case apierrors.IsNotFound(err):
		lease = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: leaseName(db), Namespace: db.Namespace, Labels: podLabels(db),
			Annotations: leaseAnnotations(agentapi.LeaseIntent{Instances: int(replicas(db)), Synchronous: int(db.Spec.SynchronousReplicas)}),
			OwnerReferences: []metav1.OwnerReference{{APIVersion: databasev1.GroupVersion.String(), Kind: "Database", Name: db.Name, UID: db.UID,
				Controller: ptrTo(true), BlockOwnerDeletion: ptrTo(true)}}}}
		if err := r.Create(ctx, lease, client.FieldOwner(FieldOwner)); err != nil {
			errs = append(errs, fmt.Errorf("creating the primary Lease: %w", err))
		} else {
			obs.Lease = lease
		}
	case err != nil:
		errs = append(errs, fmt.Errorf("getting the primary Lease: %w", err))
	case !metav1.IsControlledBy(lease, db):
		conflict(obs, "Lease", lease, db)
	default:
		obs.Lease = lease
	}
	return errors.Join(errs...)
}

func ptrTo[T any](v T) *T { return &v }

func (r *Reconciler) reader() client.Reader {
	if r.APIReader != nil {
		return r.APIReader
	}
	return r.Client
}

// leaseAnnotations are the annotations of a new Lease with the intent i.
func leaseAnnotations(i agentapi.LeaseIntent) map[string]string {
	a := map[string]string{}
	i.ApplyTo(a)
	return a
}

// observeLease reads what the state machines need of the Lease.
func observeLease(l *coordinationv1.Lease) leaseObs {
	if l == nil {
		return leaseObs{}
	}
	o := leaseObs{Exists: true}
	if l.Spec.HolderIdentity != nil {
		o.Holder = *l.Spec.HolderIdentity
	}
	if l.Spec.RenewTime != nil {
		o.RenewTime = l.Spec.RenewTime.Time
	}
	if l.Spec.LeaseDurationSeconds != nil {
		o.Duration = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	report := agentapi.ReadLeaseReport(l.Annotations)
	if o.Holder == "" {
		o.FinalLSN = report.FinalLSN
	}
	o.PrimaryLSN, o.ReleasedBy = report.PrimaryLSN, report.ReleasedBy
	return o
}

// observePods summarises the instance pods for the state machines.
func observePods(obs observation) map[string]podObs {
	out := map[string]podObs{}
	update := ""
	if obs.StatefulSet != nil {
		update = obs.StatefulSet.Status.UpdateRevision
	}
	for _, p := range obs.Pods {
		o := podObs{UID: string(p.UID), Terminating: p.DeletionTimestamp != nil, Updated: update != "" && p.Labels["controller-revision-hash"] == update}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				o.Ready = true
			}
		}
		out[p.Name] = o
	}
	return out
}

// reconcileHA runs the change-of-primary state machine: it records the target
// primary and the change in progress in the status (with optimistic
// concurrency), mirrors the target on the Lease for the agents, and labels the
// instances: primary only for the target that reports primary and holds the
// Lease; a failed primary's label goes at once.
func (r *Reconciler) reconcileHA(ctx context.Context, db *databasev1.Database, obs *observation) error {
	if obs.StatefulSet == nil || obs.Lease == nil || obs.ObserveErr != nil {
		return nil
	}
	log := logf.FromContext(ctx)
	in := haInput{
		Now: obs.Now, StatefulSet: statefulSetName(db), Replicas: int(replicas(db)), FailoverDelay: failoverDelay(db),
		Synchronous: int(db.Spec.SynchronousReplicas), MaxLagBytes: maxLagBytes(db), FencingTimeout: renewDeadline(db) + 5*time.Second, Target: db.Status.TargetPrimary, CurrentPrimary: db.Status.CurrentPrimary, Change: db.Status.PrimaryChange,
		Lease: observeLease(obs.Lease), Pods: observePods(*obs), Reports: obs.Instances,
		MaxLagOnFailover: maxLagOnFailover(db), ForceFailoverTo: db.Annotations[databasev1.AnnotationForceFailoverTo], PromoteTimeout: promoteTimeout(db),
	}
	annotation := db.Annotations[databasev1.AnnotationSwitchoverTo]
	switch {
	case annotation != "":
		in.SwitchoverTo, in.SwitchoverWhy = annotation, "requested by annotation "+databasev1.AnnotationSwitchoverTo
	case in.Target != "" && agentapi.Ordinal(in.Target) >= in.Replicas:
		in.SwitchoverTo, in.SwitchoverWhy = databasev1.SwitchoverAuto, fmt.Sprintf("scale-down to %d instances removes the primary's ordinal", in.Replicas)
	default:
		if ro := decideRollout(rolloutInputFrom(db, *obs, in)); ro.Switchover {
			in.SwitchoverTo, in.SwitchoverWhy = databasev1.SwitchoverAuto, "rolling update: the primary is the last instance on the old revision"
		}
	}
	d := decideHA(in)
	if d.changed(in) {
		before := db.DeepCopy()
		db.Status.TargetPrimary = d.Target
		db.Status.PrimaryChange = d.Change
		if d.Finished != nil {
			db.Status.LastPrimaryChange = d.Finished
		}
		if err := r.Status().Patch(ctx, db, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner)); err != nil {
			before.DeepCopyInto(db)
			return fmt.Errorf("recording target primary %q: %w", d.Target, err)
		}
		log.Info("target primary recorded", "target", d.Target, "from", before.Status.TargetPrimary)
		if d.Finished != nil {
			metrics.PrimaryChanges.WithLabelValues(db.Namespace, db.Name, string(d.Finished.Kind), string(d.Finished.Phase)).Inc()
		}
		r.haEvents(db, before.Status.PrimaryChange, d.Change, d.Finished)
		if d.Forced != nil {
			lost := "an unknown amount of"
			if d.Forced.LostBytes >= 0 {
				lost = strconv.FormatInt(d.Forced.LostBytes, 10) + " bytes of"
			}
			r.event(db, corev1.EventTypeWarning, databasev1.ReasonForcedFailover, "Failover",
				fmt.Sprintf("Promoting %s on request (%s) gives up %s WAL that %s acknowledged", d.Forced.Pod, databasev1.AnnotationForceFailoverTo, lost, in.Change.From))
			log.Info("forced failover", "to", d.Forced.Pod, "lostBytes", d.Forced.LostBytes)
		}
	}
	var errs []error
	if force := in.ForceFailoverTo; force != "" && (d.Forced != nil || d.Finished != nil || (in.Change == nil && d.Change == nil)) {
		// Used, or nothing to force: the annotation goes (a later failover
		// never inherits a stale acceptance of loss).
		if d.Forced == nil {
			r.event(db, corev1.EventTypeWarning, databasev1.ReasonForcedFailover, "Failover",
				fmt.Sprintf("Annotation %s=%s removed unused: no failover is blocked", databasev1.AnnotationForceFailoverTo, force))
		}
		if err := r.removeAnnotation(ctx, db, databasev1.AnnotationForceFailoverTo); err != nil {
			errs = append(errs, err)
		}
	}
	if annotation != "" && (d.SwitchoverRefused != "" || d.Finished != nil || (d.Change == nil && in.Change == nil)) {
		if d.SwitchoverRefused != "" && in.SwitchoverTo != "" {
			r.event(db, corev1.EventTypeWarning, databasev1.ReasonSwitchoverRefused, "Switchover",
				fmt.Sprintf("Switchover to %s refused: %s", annotation, d.SwitchoverRefused))
			log.Info("switchover refused", "to", annotation, "reason", d.SwitchoverRefused)
		}
		if err := r.removeAnnotation(ctx, db, databasev1.AnnotationSwitchoverTo); err != nil {
			errs = append(errs, err)
		}
	} else if d.SwitchoverRefused != "" && in.SwitchoverWhy != "" {
		obs.SwitchoverBlocked = fmt.Sprintf("Switchover (%s) not possible yet: %s", in.SwitchoverWhy, d.SwitchoverRefused)
	}
	if err := r.syncLease(ctx, db, obs, db.Status.TargetPrimary, d.LeaseChange); err != nil {
		errs = append(errs, err)
	}
	obs.Unlabel = d.Unlabel
	if err := r.labelRoles(ctx, db, obs); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeAnnotation removes a one-shot request annotation from the Database
// (used, refused or no longer needed).
func (r *Reconciler) removeAnnotation(ctx context.Context, db *databasev1.Database, key string) error {
	patch := client.MergeFrom(db.DeepCopy())
	delete(db.Annotations, key)
	if err := r.Patch(ctx, db, patch); err != nil {
		return fmt.Errorf("removing annotation %s: %w", key, err)
	}
	return nil
}

func (r *Reconciler) event(db *databasev1.Database, typ, reason, action, msg string) {
	if r.Recorder != nil {
		r.Recorder.Eventf(db, nil, typ, reason, action, "%s", msg)
	}
}

// haEvents emits one event per change of the state machine's phase.
func (r *Reconciler) haEvents(db *databasev1.Database, old, cur, finished *databasev1.PrimaryChange) {
	for _, e := range primaryChangeEvents(old, cur, finished) {
		r.event(db, e.Type, e.Reason, e.Action, e.Message)
	}
}

// primaryChangeEvents lists the events of a transition of the state machine.
func primaryChangeEvents(old, cur, finished *databasev1.PrimaryChange) []transition {
	var out []transition
	if cur != nil && (old == nil || old.Phase != cur.Phase || old.To != cur.To) {
		typ, reason := corev1.EventTypeWarning, databasev1.ReasonFailingOver
		switch {
		case cur.Phase == databasev1.PrimaryChangeBlocked:
			reason = databasev1.ReasonFailoverBlocked
		case cur.Kind == databasev1.PrimaryChangeSwitchover:
			typ, reason = corev1.EventTypeNormal, databasev1.ReasonSwitchingOver
		}
		out = append(out, transition{Type: typ, Reason: reason, Action: string(cur.Phase), Message: cur.Message})
	}
	if finished != nil {
		typ, reason := corev1.EventTypeNormal, databasev1.ReasonFailoverCompleted
		switch {
		case finished.Phase == databasev1.PrimaryChangeAborted:
			reason = databasev1.ReasonPrimaryChangeAbort
		case finished.Kind == databasev1.PrimaryChangeSwitchover:
			reason = databasev1.ReasonSwitchoverComplete
		}
		out = append(out, transition{Type: typ, Reason: reason, Action: string(finished.Phase), Message: finished.Message})
	}
	return out
}

// leaseInstances is the instance count the Lease carries: the larger of
// spec.replicas and the StatefulSet's replicas, so that a scale-down that must
// first move the primary off a removed ordinal keeps the primary fencing (and
// renewing every retry period) until the switchover completed and the
// StatefulSet shrank (rule 3: never two writable primaries).
func leaseInstances(db *databasev1.Database, obs *observation) int {
	n := int(replicas(db))
	if obs.StatefulSet != nil && obs.StatefulSet.Spec.Replicas != nil {
		n = max(n, int(*obs.StatefulSet.Spec.Replicas))
	}
	return n
}

// syncLease mirrors the target primary, the number of instances and the kind of
// change on the Lease, with optimistic concurrency (the agents renew it
// concurrently: a conflict is retried on a fresh read).
func (r *Reconciler) syncLease(ctx context.Context, db *databasev1.Database, obs *observation, target, change string) error {
	want := agentapi.LeaseIntent{Target: target, Instances: leaseInstances(db, obs), Change: change, Synchronous: int(db.Spec.SynchronousReplicas)}
	for attempt := 0; attempt < 3; attempt++ {
		l := obs.Lease
		if want.Matches(l.Annotations) {
			return nil
		}
		upd := l.DeepCopy()
		if upd.Annotations == nil {
			upd.Annotations = map[string]string{}
		}
		want.ApplyTo(upd.Annotations)
		err := r.Patch(ctx, upd, client.MergeFromWithOptions(l, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner))
		if err == nil {
			obs.Lease = upd
			return nil
		}
		if !apierrors.IsConflict(err) {
			return fmt.Errorf("setting the target primary on the Lease: %w", err)
		}
		fresh := &coordinationv1.Lease{}
		if err := r.reader().Get(ctx, client.ObjectKeyFromObject(l), fresh); err != nil {
			return fmt.Errorf("re-reading the Lease: %w", err)
		}
		obs.Lease = fresh
	}
	return errors.New("setting the target primary on the Lease: conflicts with the agents' renewals; retrying")
}

// roleFor is the role label a pod should carry ("" for none) and whether the
// operator knows enough to decide (an unreachable pod keeps its label, unless it
// is a failed primary).
func roleFor(db *databasev1.Database, obs observation, pod *corev1.Pod) (string, bool) {
	for _, u := range obs.Unlabel {
		if u == pod.Name {
			return "", true
		}
	}
	rep, ok := obs.Instances[pod.Name]
	if !ok || rep.Err != nil || rep.Status == nil {
		return "", false
	}
	st := rep.Status
	switch {
	case refusing(st.State):
		return "", true
	case st.Role == agentapi.RolePrimary:
		holder := ""
		if obs.Lease != nil && obs.Lease.Spec.HolderIdentity != nil {
			holder = *obs.Lease.Spec.HolderIdentity
		}
		if pod.Name == db.Status.TargetPrimary && st.HoldsLease && holder == agentapi.LeaseHolder(pod.Name, string(pod.UID)) {
			return agentapi.RolePrimary, true
		}
		if pod.Name == db.Status.TargetPrimary && legacyPrimary(st) {
			// Started by an agent of the previous version, which knows no Lease:
			// it keeps serving until the rolling update replaces it.
			return agentapi.RolePrimary, true
		}
		return "", true
	case st.Role == agentapi.RoleReplica:
		return agentapi.RoleReplica, true
	}
	return "", false
}

// legacyPrimary reports whether st is a primary run by an agent of the previous
// version of the operator, which reports no Lease fields (an agent of this version
// running a primary always reports its target).
func legacyPrimary(st *agentapi.Status) bool {
	return st != nil && st.Role == agentapi.RolePrimary && st.State == agentapi.StateRunning && st.Target == "" && !st.HoldsLease && !st.Fenced && st.LeaseError == ""
}

// labelRoles sets each pod's role label to roleFor, touching only pods whose
// label differs.
func (r *Reconciler) labelRoles(ctx context.Context, db *databasev1.Database, obs *observation) error {
	for i := range obs.Pods {
		pod := &obs.Pods[i]
		role, known := roleFor(db, *obs, pod)
		if !known || pod.Labels[LabelRole] == role || pod.DeletionTimestamp != nil && role != "" {
			continue
		}
		patch := client.MergeFrom(pod.DeepCopy())
		if role == "" {
			delete(pod.Labels, LabelRole)
		} else {
			if pod.Labels == nil {
				pod.Labels = map[string]string{}
			}
			pod.Labels[LabelRole] = role
		}
		if err := r.Patch(ctx, pod, patch, client.FieldOwner(FieldOwner)); err != nil {
			return fmt.Errorf("labelling pod %s as %q: %w", pod.Name, role, err)
		}
		logf.FromContext(ctx).Info("instance role label changed", "pod", pod.Name, "role", role)
	}
	return nil
}

// buildDisruptionBudgets returns, for a Database with standbys, a budget that lets
// at most one standby go down voluntarily and one that protects the primary (a
// node drain waits for a switchover). They select disjoint pods (role=replica,
// role=primary): the eviction API refuses a pod that matches two budgets.
func buildDisruptionBudgets(db *databasev1.Database) []*policyv1ac.PodDisruptionBudgetApplyConfiguration {
	all := policyv1ac.PodDisruptionBudget(db.Name, db.Namespace).
		WithLabels(podLabels(db)).
		WithOwnerReferences(ownerReference(db)).
		WithSpec(policyv1ac.PodDisruptionBudgetSpec().
			WithMaxUnavailable(intstr.FromInt32(1)).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(withRole(selectorLabels(db), agentapi.RoleReplica))))
	primary := policyv1ac.PodDisruptionBudget(primaryPDBName(db), db.Namespace).
		WithLabels(podLabels(db)).
		WithOwnerReferences(ownerReference(db)).
		WithSpec(policyv1ac.PodDisruptionBudgetSpec().
			WithMinAvailable(intstr.FromInt32(1)).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(withRole(selectorLabels(db), agentapi.RolePrimary))))
	return []*policyv1ac.PodDisruptionBudgetApplyConfiguration{all, primary}
}

// reconcileDisruptionBudgets applies the budgets while the Database has standbys
// and deletes them otherwise (a single instance must stay drainable).
func (r *Reconciler) reconcileDisruptionBudgets(ctx context.Context, db *databasev1.Database, obs *observation) error {
	var errs []error
	for _, pdb := range buildDisruptionBudgets(db) {
		live := &policyv1.PodDisruptionBudget{}
		err := r.Get(ctx, types.NamespacedName{Namespace: db.Namespace, Name: *pdb.Name}, live)
		switch {
		case err == nil && !metav1.IsControlledBy(live, db):
			conflict(obs, "PodDisruptionBudget", live, db)
			continue
		case err != nil && !apierrors.IsNotFound(err):
			errs = append(errs, fmt.Errorf("getting PodDisruptionBudget %s: %w", *pdb.Name, err))
			continue
		}
		exists := err == nil
		if replicas(db) <= 1 {
			if exists {
				if err := r.Delete(ctx, live); err != nil && !apierrors.IsNotFound(err) {
					errs = append(errs, fmt.Errorf("deleting PodDisruptionBudget %s: %w", *pdb.Name, err))
				}
			}
			continue
		}
		var l client.Object
		if exists {
			l = live
		}
		if err := r.applyIfChanged(ctx, "PodDisruptionBudget", pdb, l, func() *string { return pdb.ResourceVersion }); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
