package database

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/metrics"
)

func getLease(t *testing.T, ns string) *coordinationv1.Lease {
	t.Helper()
	l := &coordinationv1.Lease{}
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-primary"}, l); err != nil {
		t.Fatal(err)
	}
	return l
}

// labelledPrimaries lists the pods carrying role=primary.
func labelledPrimaries(t *testing.T, ns string) []string {
	t.Helper()
	var pods corev1.PodList
	if err := k8s.List(testCtx, &pods, client.InNamespace(ns), client.MatchingLabels{LabelRole: agentapi.RolePrimary}); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range pods.Items {
		out = append(out, p.Name)
	}
	return out
}

func stoppedReplica(pod string, lsn string) InstanceReport {
	r := replicaReport(pod)
	r.Status.WALReceiverStatus, r.Status.ReceiveLSN, r.Status.ReplayLSN, r.Status.Timeline = "", lsn, lsn, 1
	return r
}

// The instances' access: a ServiceAccount whose Role allows get and update of the
// one Lease, the Lease with the target, and the disruption budgets.
func TestInstancesGetALeaseOnlyRoleAndTheLeaseNamesTheTarget(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, 3, "7401", nil)
	var role rbacv1.Role
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-instance"}, &role); err != nil {
		t.Fatal(err)
	}
	if len(role.Rules) != 1 || strings.Join(role.Rules[0].Verbs, ",") != "get,update" || strings.Join(role.Rules[0].Resources, ",") != "leases" ||
		strings.Join(role.Rules[0].ResourceNames, ",") != "my-database-primary" {
		t.Errorf("instance role rules %+v: want get,update of lease my-database-primary only", role.Rules)
	}
	var rb rbacv1.RoleBinding
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-instance"}, &rb); err != nil ||
		rb.Subjects[0].Name != "my-database-instance" || rb.RoleRef.Name != "my-database-instance" {
		t.Errorf("role binding %+v %v", rb, err)
	}
	l := getLease(t, ns)
	if l.Annotations[agentapi.LeaseAnnotationTarget] != "my-database-0" || l.Annotations[agentapi.LeaseAnnotationInstances] != "3" {
		t.Errorf("lease annotations %v", l.Annotations)
	}
	if db := getDB(t, ns, "my-database"); db.Status.TargetPrimary != "my-database-0" || db.Status.CurrentPrimary != "my-database-0" || db.Status.Timeline != 1 {
		t.Errorf("status target %q current %q timeline %d", db.Status.TargetPrimary, db.Status.CurrentPrimary, db.Status.Timeline)
	}
	eventually(t, "disruption budgets", func() string {
		var all, primary policyv1.PodDisruptionBudget
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database"}, &all); err != nil {
			return err.Error()
		}
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-primary"}, &primary); err != nil {
			return err.Error()
		}
		if all.Spec.MaxUnavailable.IntValue() != 1 || all.Spec.Selector.MatchLabels[LabelRole] != agentapi.RoleReplica ||
			primary.Spec.MinAvailable.IntValue() != 1 || primary.Spec.Selector.MatchLabels[LabelRole] != agentapi.RolePrimary {
			return fmt.Sprintf("budgets %+v %+v", all.Spec, primary.Spec)
		}
		return ""
	})
	// One instance: nothing to protect, a node drain must not block.
	if err := applyYAML(t, ns, strings.Replace(seedManifest, "postgres:14", "postgres:15", 1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "budgets deleted with one instance", func() string {
		err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-primary"}, &policyv1.PodDisruptionBudget{})
		if !apierrors.IsNotFound(err) {
			return fmt.Sprintf("primary budget: %v", err)
		}
		return ""
	})
}

// Failover driven through scripted agents: the deleted primary loses its label at
// once, the target is cleared until the standbys stopped streaming, the one with
// the most WAL is chosen, and it is labelled primary only once it reports
// primary and the Lease names it.
func TestFailoverChoosesTheMostAdvancedStandbyAfterTheyStopped(t *testing.T) {
	ns := newNamespace(t)
	db := readyDatabase(t, ns, 3, "7402", nil)
	eventually(t, "primary label", func() string {
		if p := labelledPrimaries(t, ns); strings.Join(p, ",") != "my-database-0" {
			return fmt.Sprintf("primaries %v", p)
		}
		return ""
	})
	var pod0 corev1.Pod
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-0"}, &pod0); err != nil {
		t.Fatal(err)
	}
	instances.set(ns, "my-database-0", InstanceReport{Err: fmt.Errorf("connection refused")})
	if err := k8s.Delete(testCtx, &pod0, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	// Standbys still streaming: fencing, target cleared, nobody chosen.
	eventually(t, "fencing", func() string {
		d := getDB(t, ns, "my-database")
		if d.Status.Phase != databasev1.PhaseFailingOver || d.Status.PrimaryChange == nil || d.Status.PrimaryChange.Phase != databasev1.PrimaryChangeFencing || d.Status.TargetPrimary != "" {
			return fmt.Sprintf("phase %s change %+v target %q", d.Status.Phase, d.Status.PrimaryChange, d.Status.TargetPrimary)
		}
		if l := getLease(t, ns); l.Annotations[agentapi.LeaseAnnotationTarget] != "" || l.Annotations[agentapi.LeaseAnnotationChange] != agentapi.ChangeFailover {
			return fmt.Sprintf("lease annotations %v", l.Annotations)
		}
		return ""
	})
	if p := labelledPrimaries(t, ns); len(p) != 0 {
		t.Errorf("pods labelled primary while fencing: %v", p)
	}
	// The standbys stopped: my-database-2 received more.
	instances.set(ns, "my-database-1", stoppedReplica("my-database-1", "0/5000000"))
	instances.set(ns, "my-database-2", stoppedReplica("my-database-2", "0/6000000"))
	eventually(t, "candidate chosen", func() string {
		d := getDB(t, ns, "my-database")
		if d.Status.TargetPrimary != "my-database-2" || d.Status.PrimaryChange == nil || d.Status.PrimaryChange.Phase != databasev1.PrimaryChangePromoting {
			return fmt.Sprintf("target %q change %+v", d.Status.TargetPrimary, d.Status.PrimaryChange)
		}
		if l := getLease(t, ns); l.Annotations[agentapi.LeaseAnnotationTarget] != "my-database-2" {
			return fmt.Sprintf("lease annotations %v", l.Annotations)
		}
		return ""
	})
	// A report of "primary" without the Lease is not enough to be labelled.
	fake := primaryReport("my-database-2", nil)
	fake.Status.HoldsLease = false
	instances.set(ns, "my-database-2", fake)
	for range 5 {
		if p := labelledPrimaries(t, ns); len(p) != 0 {
			t.Fatalf("labelled primary without the Lease: %v", p)
		}
	}
	// The candidate takes the Lease and promotes.
	promotedReport := primaryReport("my-database-2", map[string]int64{"my-database-1": 0})
	promotedReport.Status.Timeline, promotedReport.Status.SystemIdentifier = 2, "7402"
	instances.set(ns, "my-database-2", promotedReport)
	instances.set(ns, "my-database-1", replicaReport("my-database-1"))
	eventually(t, "failover completed", func() string {
		d := getDB(t, ns, "my-database")
		if d.Status.PrimaryChange != nil || d.Status.LastPrimaryChange == nil || d.Status.LastPrimaryChange.Phase != databasev1.PrimaryChangeCompleted ||
			d.Status.LastPrimaryChange.To != "my-database-2" || d.Status.Timeline != 2 {
			return fmt.Sprintf("change %+v last %+v timeline %d", d.Status.PrimaryChange, d.Status.LastPrimaryChange, d.Status.Timeline)
		}
		if p := labelledPrimaries(t, ns); strings.Join(p, ",") != "my-database-2" {
			return fmt.Sprintf("primaries %v", p)
		}
		return findEvent(ns, corev1.EventTypeNormal, databasev1.ReasonFailoverCompleted, "my-database-2")
	})
	if got := testutil.ToFloat64(metrics.PrimaryChanges.WithLabelValues(ns, "my-database", "Failover", "Completed")); got != 1 {
		t.Errorf("primary_changes_total{kind=Failover,outcome=Completed} = %v, want 1", got)
	}
	if findEvent(ns, corev1.EventTypeWarning, databasev1.ReasonFailingOver, "my-database-0") != "" {
		t.Error("no FailingOver warning naming the failed primary")
	}
	// The slots move to the new primary.
	eventually(t, "slots on the new primary", func() string {
		if !slices.Contains(instances.given(ns), "my-database-2 slots pgop_my_database_0,pgop_my_database_1") {
			return fmt.Sprintf("instructions %v", instances.given(ns))
		}
		return ""
	})
	_ = db
}

// A switchover by annotation: refused with a reason for a bad target (the
// annotation is cleared), done for a streaming standby, the outcome recorded.
func TestSwitchoverAnnotationLifecycle(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, 2, "7403", nil)
	annotate := func(v string) {
		t.Helper()
		db := getDB(t, ns, "my-database")
		patch := client.MergeFrom(db.DeepCopy())
		if db.Annotations == nil {
			db.Annotations = map[string]string{}
		}
		db.Annotations[databasev1.AnnotationSwitchoverTo] = v
		if err := k8s.Patch(testCtx, db, patch); err != nil {
			t.Fatal(err)
		}
	}
	annotate("my-database-7")
	eventually(t, "refusal", func() string {
		if _, ok := getDB(t, ns, "my-database").Annotations[databasev1.AnnotationSwitchoverTo]; ok {
			return "annotation still set"
		}
		return findEvent(ns, corev1.EventTypeWarning, databasev1.ReasonSwitchoverRefused, "my-database-7 is not an instance")
	})
	if d := getDB(t, ns, "my-database"); d.Status.TargetPrimary != "my-database-0" {
		t.Errorf("target moved on a refused switchover: %q", d.Status.TargetPrimary)
	}

	annotate("my-database-1")
	eventually(t, "switching over", func() string {
		d := getDB(t, ns, "my-database")
		if d.Status.Phase != databasev1.PhaseSwitchingOver || d.Status.TargetPrimary != "my-database-1" {
			return fmt.Sprintf("phase %s target %q", d.Status.Phase, d.Status.TargetPrimary)
		}
		if l := getLease(t, ns); l.Annotations[agentapi.LeaseAnnotationTarget] != "my-database-1" || l.Annotations[agentapi.LeaseAnnotationChange] != agentapi.ChangeSwitchover {
			return fmt.Sprintf("lease %v", l.Annotations)
		}
		return ""
	})
	if p := labelledPrimaries(t, ns); len(p) != 0 {
		t.Errorf("the old primary keeps its label during the switchover: %v", p)
	}
	instances.set(ns, "my-database-0", replicaReport("my-database-0"))
	instances.set(ns, "my-database-1", primaryReport("my-database-1", map[string]int64{"my-database-0": 0}))
	eventually(t, "switchover completed", func() string {
		d := getDB(t, ns, "my-database")
		if _, ok := d.Annotations[databasev1.AnnotationSwitchoverTo]; ok {
			return "annotation still set"
		}
		if d.Status.LastPrimaryChange == nil || d.Status.LastPrimaryChange.Kind != databasev1.PrimaryChangeSwitchover || d.Status.LastPrimaryChange.Phase != databasev1.PrimaryChangeCompleted {
			return fmt.Sprintf("last %+v", d.Status.LastPrimaryChange)
		}
		if p := labelledPrimaries(t, ns); strings.Join(p, ",") != "my-database-1" {
			return fmt.Sprintf("primaries %v", p)
		}
		return findEvent(ns, corev1.EventTypeNormal, databasev1.ReasonSwitchoverComplete, "my-database-1")
	})
	if got := testutil.ToFloat64(metrics.PrimaryChanges.WithLabelValues(ns, "my-database", "Switchover", "Completed")); got != 1 {
		t.Errorf("primary_changes_total{kind=Switchover,outcome=Completed} = %v, want 1", got)
	}
}

// Scaling down never removes the primary's ordinal: the StatefulSet keeps it
// until a switchover to a lower ordinal completed.
func TestScaleDownWaitsForASwitchoverOffTheRemovedOrdinal(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, 3, "7404", nil)
	// Make my-database-2 the primary (as after a failover).
	db := getDB(t, ns, "my-database")
	before := db.DeepCopy()
	db.Status.TargetPrimary, db.Status.CurrentPrimary = "my-database-2", "my-database-2"
	if err := k8s.Status().Patch(testCtx, db, client.MergeFrom(before)); err != nil {
		t.Fatal(err)
	}
	instances.set(ns, "my-database-0", replicaReport("my-database-0"))
	instances.set(ns, "my-database-1", replicaReport("my-database-1"))
	instances.set(ns, "my-database-2", primaryReport("my-database-2", map[string]int64{"my-database-0": 0, "my-database-1": 0}))
	eventually(t, "my-database-2 labelled primary", func() string {
		if p := labelledPrimaries(t, ns); strings.Join(p, ",") != "my-database-2" {
			return fmt.Sprintf("primaries %v", p)
		}
		return ""
	})
	if err := applyYAML(t, ns, strings.Replace(seedManifest, "postgres:14", "postgres:15", 1)); err != nil { // replicas: 1
		t.Fatal(err)
	}
	eventually(t, "switchover to ordinal 0 requested, StatefulSet kept at 3", func() string {
		d := getDB(t, ns, "my-database")
		sts, err := getSTS(ns, "my-database")
		if err != nil {
			return err.Error()
		}
		if *sts.Spec.Replicas != 3 {
			return fmt.Sprintf("statefulset replicas %d before the switchover", *sts.Spec.Replicas)
		}
		if d.Status.TargetPrimary != "my-database-0" || d.Status.PrimaryChange == nil || d.Status.PrimaryChange.Kind != databasev1.PrimaryChangeSwitchover {
			return fmt.Sprintf("target %q change %+v", d.Status.TargetPrimary, d.Status.PrimaryChange)
		}
		return ""
	})
	// Rule 3: the Lease keeps the instance count until the switchover is done,
	// so the old primary keeps renewing and fencing (with "1" it would stop
	// both, and stay writable while the target takes the Lease).
	if l := getLease(t, ns); l.Annotations[agentapi.LeaseAnnotationInstances] != "3" {
		t.Errorf("the Lease's instances during the switchover off the removed ordinal: %q, want 3", l.Annotations[agentapi.LeaseAnnotationInstances])
	}
	instances.set(ns, "my-database-2", replicaReport("my-database-2"))
	instances.set(ns, "my-database-0", primaryReport("my-database-0", nil))
	eventually(t, "scaled down after the switchover", func() string {
		sts, err := getSTS(ns, "my-database")
		if err != nil {
			return err.Error()
		}
		if *sts.Spec.Replicas != 1 {
			return fmt.Sprintf("statefulset replicas %d", *sts.Spec.Replicas)
		}
		if l := getLease(t, ns); l.Annotations[agentapi.LeaseAnnotationInstances] != "1" {
			return fmt.Sprintf("the Lease's instances %q after the scale-down", l.Annotations[agentapi.LeaseAnnotationInstances])
		}
		return ""
	})
}

// The target is written with optimistic concurrency: a reconcile working from a
// stale Database fails instead of overwriting a newer target, and the Lease is
// not touched.
func TestTargetPrimaryIsWrittenWithOptimisticConcurrency(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, 2, "7405", nil)
	stale := getDB(t, ns, "my-database")
	fresh := stale.DeepCopy()
	fresh.Annotations = map[string]string{"touched": "yes"}
	if err := k8s.Update(testCtx, fresh); err != nil {
		t.Fatal(err)
	}
	r := &Reconciler{Client: k8s, APIReader: k8s}
	stale.Status.TargetPrimary = "" // as if the status had lost the target: the step wants to write it
	lease := getLease(t, ns)
	obs := &observation{Now: time.Now(), StatefulSet: mustSTS(t, ns), Lease: lease, Instances: map[string]InstanceReport{}}
	err := r.reconcileHA(testCtx, stale, obs)
	if !apierrors.IsConflict(err) {
		t.Fatalf("reconcileHA on a stale Database: %v, want a conflict", err)
	}
	if l := getLease(t, ns); l.ResourceVersion != lease.ResourceVersion && l.Annotations[agentapi.LeaseAnnotationTarget] != "my-database-0" {
		t.Errorf("the Lease was changed after a conflicting status write: %v", l.Annotations)
	}
}

func mustSTS(t *testing.T, ns string) *appsv1.StatefulSet {
	t.Helper()
	sts, err := getSTS(ns, "my-database")
	if err != nil {
		t.Fatal(err)
	}
	return sts
}

// Rule 1 through the reconciler: the primary dies without a clean shutdown, its
// last renewal recorded 0/6000000 on the Lease, the only standby stopped at
// 0/5000000 (16 MiB short, beyond maxLagOnFailover's 1Mi): the failover is
// Blocked, the old primary is the target again (on the status and on the Lease),
// the condition and an event name the standby and its lag. The annotation
// force-failover-to then promotes it, is removed, and an event records the
// bytes given up.
func TestFailoverIsBlockedWithoutTheOldPrimarysWALUntilForced(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, 2, "7406", nil)
	eventually(t, "primary label", func() string {
		if p := labelledPrimaries(t, ns); strings.Join(p, ",") != "my-database-0" {
			return fmt.Sprintf("primaries %v", p)
		}
		return ""
	})
	// The primary's last renewal (as its agent writes it).
	l := getLease(t, ns)
	l.Annotations[agentapi.LeaseAnnotationPrimaryLSN] = "0/6000000"
	if err := k8s.Update(testCtx, l); err != nil {
		t.Fatal(err)
	}
	var pod0 corev1.Pod
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-0"}, &pod0); err != nil {
		t.Fatal(err)
	}
	instances.set(ns, "my-database-0", InstanceReport{Err: fmt.Errorf("connection refused")})
	instances.set(ns, "my-database-1", stoppedReplica("my-database-1", "0/5000000"))
	if err := k8s.Delete(testCtx, &pod0, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "failover blocked", func() string {
		d := getDB(t, ns, "my-database")
		c := d.Status.PrimaryChange
		if c == nil || c.Phase != databasev1.PrimaryChangeBlocked || d.Status.TargetPrimary != "my-database-0" || c.PrimaryLSN != "0/6000000" {
			return fmt.Sprintf("target %q change %+v", d.Status.TargetPrimary, c)
		}
		if l := getLease(t, ns); l.Annotations[agentapi.LeaseAnnotationTarget] != "my-database-0" {
			return fmt.Sprintf("lease annotations %v", l.Annotations)
		}
		found := false
		for _, c := range d.Status.Conditions {
			found = found || c.Reason == databasev1.ReasonFailoverBlocked && strings.Contains(c.Message, "my-database-1 (received 0/5000000, lacks 16777216 bytes)")
		}
		if !found {
			return fmt.Sprintf("no condition with reason FailoverBlocked naming the standby and its lag: %+v", d.Status.Conditions)
		}
		return findEvent(ns, corev1.EventTypeWarning, databasev1.ReasonFailoverBlocked, "lacks 16777216 bytes")
	})
	if p := labelledPrimaries(t, ns); len(p) != 0 {
		t.Errorf("pods labelled primary while blocked: %v", p)
	}

	db := getDB(t, ns, "my-database")
	patch := client.MergeFrom(db.DeepCopy())
	if db.Annotations == nil {
		db.Annotations = map[string]string{}
	}
	db.Annotations[databasev1.AnnotationForceFailoverTo] = "my-database-1"
	if err := k8s.Patch(testCtx, db, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, "forced failover", func() string {
		d := getDB(t, ns, "my-database")
		if _, ok := d.Annotations[databasev1.AnnotationForceFailoverTo]; ok {
			return "annotation still set"
		}
		if d.Status.TargetPrimary != "my-database-1" || d.Status.PrimaryChange == nil || d.Status.PrimaryChange.Phase != databasev1.PrimaryChangePromoting {
			return fmt.Sprintf("target %q change %+v", d.Status.TargetPrimary, d.Status.PrimaryChange)
		}
		return findEvent(ns, corev1.EventTypeWarning, databasev1.ReasonForcedFailover, "gives up 16777216 bytes of WAL that my-database-0 acknowledged")
	})
}
