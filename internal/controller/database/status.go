package database

import (
	"fmt"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/instance"
)

// observation is everything Reconcile saw; deriveStatus turns it into a status.
type observation struct {
	// StatefulSet is nil until it exists.
	StatefulSet *appsv1.StatefulSet
	// Pods are the instance pods, ordered by name.
	Pods []corev1.Pod
	// Instances maps pod name to what its agent reported.
	Instances map[string]InstanceReport
	// Refusal explains why the spec cannot be applied (e.g. a major version change);
	// empty when there is none.
	Refusal string
	// ReconcileErr is an error of this reconcile, reported in the Ready condition.
	ReconcileErr error
	// RunningImage is the image the StatefulSet runs.
	RunningImage string
	// RoutedPods are the pods the read-write Service's EndpointSlices list as ready
	// endpoints: where connections to status.endpoint actually go.
	RoutedPods map[string]bool
}

// verdict is a phase with the reason and message that explain it.
type verdict struct {
	Phase   databasev1.Phase
	Reason  string
	Message string
}

// deriveStatus computes the status of db from what was observed. It is pure: the
// same inputs give the same status, and conditions keep their transition times when
// their status does not change.
func deriveStatus(db *databasev1.Database, obs observation) databasev1.DatabaseStatus {
	if obs.ReconcileErr != nil {
		// What was observed is incomplete: keep the last known state of the database
		// (phase, readiness) and report the operator's error in Reconciling, rather
		// than guess a phase from half an observation. observedGeneration is not
		// advanced: the current spec has not been applied.
		st := *db.Status.DeepCopy()
		setCondition(&st, db.Generation, databasev1.ConditionReconciling, metav1.ConditionTrue, databasev1.ReasonReconcileError, obs.ReconcileErr.Error())
		return st
	}
	st := databasev1.DatabaseStatus{
		ObservedGeneration: db.Generation,
		SecretName:         credentialsSecretName(db),
		Selector:           labels.SelectorFromSet(selectorLabels(db)).String(),
		Image:              obs.RunningImage,
		Conditions:         append([]metav1.Condition(nil), db.Status.Conditions...),
	}
	if obs.StatefulSet != nil {
		st.Replicas = obs.StatefulSet.Status.Replicas
		st.ReadyReplicas = obs.StatefulSet.Status.ReadyReplicas
		st.Endpoint = endpoint(db)
		st.ReadOnlyEndpoint = readOnlyEndpoint(db)
	}
	if p := primaryOf(obs); p != nil {
		st.CurrentPrimary = p.Pod
		st.PostgresVersion = p.ServerVersion
	}

	v := decide(db, obs)
	st.Phase = v.Phase
	st.Ready = v.Phase == databasev1.PhaseReady

	ready := metav1.ConditionFalse
	if st.Ready {
		ready = metav1.ConditionTrue
	}
	setCondition(&st, db.Generation, databasev1.ConditionReady, ready, v.Reason, v.Message)

	switch v.Phase {
	case databasev1.PhaseReady:
		setCondition(&st, db.Generation, databasev1.ConditionReconciling, metav1.ConditionFalse, databasev1.ReasonSucceeded, "The Database matches its spec")
		setCondition(&st, db.Generation, databasev1.ConditionStalled, metav1.ConditionFalse, databasev1.ReasonSucceeded, "No blocking problem")
	case databasev1.PhaseFailed:
		setCondition(&st, db.Generation, databasev1.ConditionReconciling, metav1.ConditionFalse, v.Reason, "Waiting for a change of the spec")
		setCondition(&st, db.Generation, databasev1.ConditionStalled, metav1.ConditionTrue, v.Reason, v.Message)
	default:
		setCondition(&st, db.Generation, databasev1.ConditionReconciling, metav1.ConditionTrue, v.Reason, v.Message)
		setCondition(&st, db.Generation, databasev1.ConditionStalled, metav1.ConditionFalse, databasev1.ReasonSucceeded, "No blocking problem")
	}
	return st
}

func setCondition(st *databasev1.DatabaseStatus, gen int64, typ string, status metav1.ConditionStatus, reason, message string) {
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type:               typ,
		Status:             status,
		Reason:             reason,
		Message:            message,
		ObservedGeneration: gen,
	})
}

// decide walks the phases in order and stops at the first that is not complete.
func decide(db *databasev1.Database, obs observation) verdict {
	if obs.Refusal != "" {
		return verdict{databasev1.PhaseFailed, databasev1.ReasonMajorVersionUnsupported, obs.Refusal}
	}
	sts := obs.StatefulSet
	if sts == nil {
		return verdict{databasev1.PhasePending, databasev1.ReasonCreating, "Creating the Secrets, Services and StatefulSet"}
	}
	want := replicas(db)
	s := sts.Status
	if s.ReadyReplicas == 0 {
		return verdict{databasev1.PhaseProvisioning, databasev1.ReasonInstancesStarting,
			fmt.Sprintf("Waiting for the primary %s-0 to start", sts.Name)}
	}
	stsReplicas := want
	if sts.Spec.Replicas != nil {
		stsReplicas = *sts.Spec.Replicas
	}
	if s.ObservedGeneration < sts.Generation || stsReplicas != want {
		return verdict{databasev1.PhaseDeploying, databasev1.ReasonRollingUpdate, "Waiting for the StatefulSet controller to observe the new spec"}
	}
	if s.UpdateRevision != "" && s.CurrentRevision != s.UpdateRevision {
		return verdict{databasev1.PhaseDeploying, databasev1.ReasonRollingUpdate,
			fmt.Sprintf("Rolling update: %d of %d instances updated (standbys first, primary last)", s.UpdatedReplicas, want)}
	}
	if s.ReadyReplicas != want || s.Replicas != want {
		return verdict{databasev1.PhaseDeploying, databasev1.ReasonScaling,
			fmt.Sprintf("%d of %d instances ready", s.ReadyReplicas, want)}
	}
	if v, ok := verify(db, obs); !ok {
		return v
	}
	return verdict{databasev1.PhaseReady, databasev1.ReasonChecksPassed,
		fmt.Sprintf("Primary %s accepts writes; %d standby(s) streaming within the lag threshold", primaryOf(obs).Pod, want-1)}
}

// primaryOf returns the status of the one instance that reports itself primary, or
// nil when none or more than one does.
func primaryOf(obs observation) *instance.Status {
	var p *instance.Status
	for _, pod := range obs.Pods {
		r, ok := obs.Instances[pod.Name]
		if !ok || r.Err != nil || r.Status == nil || r.Status.Role != instance.RolePrimary {
			continue
		}
		if p != nil {
			return nil
		}
		p = r.Status
	}
	return p
}

func maxLagBytes(db *databasev1.Database) int64 {
	if db.Spec.MaxReplicationLag != nil {
		return db.Spec.MaxReplicationLag.Value()
	}
	return 16 << 20
}

// verify is the consistency check: exactly one primary, it accepts a write, and
// every other instance streams from it with replay lag under the threshold.
func verify(db *databasev1.Database, obs observation) (verdict, bool) {
	fail := func(reason, format string, args ...any) (verdict, bool) {
		return verdict{databasev1.PhaseVerifying, reason, fmt.Sprintf(format, args...)}, false
	}
	names := make([]string, 0, len(obs.Pods))
	for _, p := range obs.Pods {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	for _, n := range names {
		r, ok := obs.Instances[n]
		switch {
		case !ok:
			return fail(databasev1.ReasonInstanceUnreachable, "Instance %s has not reported its status yet", n)
		case r.Err != nil:
			return fail(databasev1.ReasonInstanceUnreachable, "Instance %s: %v", n, r.Err)
		case r.Status == nil || !r.Status.Running:
			msg := ""
			if r.Status != nil && r.Status.Error != "" {
				msg = ": " + r.Status.Error
			}
			return fail(databasev1.ReasonInstanceUnreachable, "Instance %s: PostgreSQL is not accepting connections%s", n, msg)
		}
	}
	var primaries []string
	for _, n := range names {
		if obs.Instances[n].Status.Role == instance.RolePrimary {
			primaries = append(primaries, n)
		}
	}
	if len(primaries) != 1 {
		return fail(databasev1.ReasonPrimaryUnknown, "Expected exactly one primary, found %d: [%s]", len(primaries), strings.Join(primaries, ", "))
	}
	primary := obs.Instances[primaries[0]].Status
	if !primary.Writable {
		return fail(databasev1.ReasonPrimaryNotWritable, "Primary %s does not accept writes: %s", primary.Pod, primary.WriteError)
	}
	streaming := make(map[string]instance.ReplicaStatus, len(primary.Replicas))
	for _, rs := range primary.Replicas {
		streaming[rs.ApplicationName] = rs
	}
	limit := maxLagBytes(db)
	for _, n := range names {
		if n == primary.Pod {
			continue
		}
		rs, ok := streaming[n]
		if !ok || rs.State != "streaming" {
			state := "not connected"
			if ok {
				state = rs.State
			}
			return fail(databasev1.ReasonReplicaNotStreaming, "Standby %s is not streaming from primary %s (%s)", n, primary.Pod, state)
		}
		if rs.LagBytes > limit {
			return fail(databasev1.ReasonReplicationLagHigh, "Standby %s replay lag is %s, above the %s threshold",
				n, resource.NewQuantity(rs.LagBytes, resource.BinarySI).String(), resource.NewQuantity(limit, resource.BinarySI).String())
		}
	}
	if !obs.RoutedPods[primary.Pod] {
		return fail(databasev1.ReasonServiceNotRouting, "Service %s does not route to primary %s yet", readWriteServiceName(db), primary.Pod)
	}
	return verdict{}, true
}
