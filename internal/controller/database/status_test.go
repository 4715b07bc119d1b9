package database

import (
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
)

func testDB(replicas int32) *databasev1.Database {
	return &databasev1.Database{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns", Generation: 3},
		Spec: databasev1.DatabaseSpec{
			Image: "postgres:15", Replicas: ptr.To(replicas), DatabaseName: "app", Username: "app",
			Storage: databasev1.StorageSpec{Size: "1Gi"},
		},
	}
}

func sts(replicas, ready, updated int32, current, update string) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Generation: 2},
		Spec:       appsv1.StatefulSetSpec{Replicas: ptr.To(replicas)},
		Status: appsv1.StatefulSetStatus{
			ObservedGeneration: 2, Replicas: replicas, ReadyReplicas: ready, UpdatedReplicas: updated,
			CurrentRevision: current, UpdateRevision: update,
		},
	}
}

func pods(names ...string) []corev1.Pod {
	out := make([]corev1.Pod, 0, len(names))
	for _, n := range names {
		out = append(out, corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	return out
}

func TestDeriveStatusPhases(t *testing.T) {
	healthy := map[string]InstanceReport{
		"db-0": primaryReport("db-0", map[string]int64{"db-1": 100}),
		"db-1": replicaReport("db-1"),
	}
	notWritable := primaryReport("db-0", map[string]int64{"db-1": 0})
	notWritable.Status.Writable, notWritable.Status.WriteError = false, "read-only"
	twoPrimaries := map[string]InstanceReport{"db-0": primaryReport("db-0", nil), "db-1": primaryReport("db-1", nil)}
	catchingUp := primaryReport("db-0", nil)
	catchingUp.Status.Replicas = []agentapi.ReplicaStatus{{ApplicationName: "db-1", State: "catchup"}}
	routed := map[string]bool{"db-0": true}

	tests := []struct {
		name        string
		obs         observation
		wantPhase   databasev1.Phase
		wantReason  string
		wantMessage string
	}{
		{"no statefulset yet", observation{}, databasev1.PhasePending, databasev1.ReasonCreating, ""},
		{"nothing ready", observation{StatefulSet: sts(2, 0, 0, "a", "a")}, databasev1.PhaseProvisioning, databasev1.ReasonInstancesStarting, "db-0"},
		{"scaling up", observation{StatefulSet: sts(2, 1, 1, "a", "a")}, databasev1.PhaseDeploying, databasev1.ReasonScaling, "1 of 2"},
		{"rolling update", observation{StatefulSet: sts(2, 2, 1, "a", "b"), Rollout: &rolloutDecision{State: rolloutReplaceStandby, Message: "replacing standby db-1"}},
			databasev1.PhaseDeploying, databasev1.ReasonRollingUpdate, "1 of 2 instances updated; replacing standby db-1"},
		{"statefulset spec not observed", observation{StatefulSet: func() *appsv1.StatefulSet { s := sts(2, 2, 2, "a", "a"); s.Generation = 3; return s }()},
			databasev1.PhaseDeploying, databasev1.ReasonRollingUpdate, "observe"},
		{"agent unreachable", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"),
			Instances: map[string]InstanceReport{"db-0": healthy["db-0"], "db-1": {Err: errors.New("connection refused")}}, RoutedPods: routed},
			databasev1.PhaseVerifying, databasev1.ReasonInstanceUnreachable, "db-1: connection refused"},
		{"agent not reported", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"),
			Instances: map[string]InstanceReport{"db-0": healthy["db-0"]}, RoutedPods: routed},
			databasev1.PhaseVerifying, databasev1.ReasonInstanceUnreachable, "db-1"},
		{"postgres down", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"),
			Instances: map[string]InstanceReport{"db-0": healthy["db-0"], "db-1": {Status: &agentapi.Status{Pod: "db-1", Error: "no socket"}}}, RoutedPods: routed},
			databasev1.PhaseVerifying, databasev1.ReasonInstanceUnreachable, "db-1: PostgreSQL is not accepting connections: no socket"},
		{"two primaries", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"), Instances: twoPrimaries},
			databasev1.PhaseVerifying, databasev1.ReasonPrimaryUnknown, "found 2: [db-0, db-1]"},
		{"primary not writable", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"),
			Instances: map[string]InstanceReport{"db-0": notWritable, "db-1": healthy["db-1"]}},
			databasev1.PhaseVerifying, databasev1.ReasonPrimaryNotWritable, "db-0 does not accept writes: read-only"},
		{"standby catching up", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"),
			Instances: map[string]InstanceReport{"db-0": catchingUp, "db-1": healthy["db-1"]}, RoutedPods: routed},
			databasev1.PhaseVerifying, databasev1.ReasonReplicaNotStreaming, "db-1 is not streaming from primary db-0 (catchup)"},
		{"standby lagging", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"),
			Instances: map[string]InstanceReport{"db-0": primaryReport("db-0", map[string]int64{"db-1": 65 << 20}), "db-1": healthy["db-1"]}, RoutedPods: routed},
			databasev1.PhaseVerifying, databasev1.ReasonReplicationLagHigh, "db-1 replay lag is 65Mi, above the 64Mi threshold"},
		{"service not routing to the primary yet", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"), Instances: healthy},
			databasev1.PhaseVerifying, databasev1.ReasonServiceNotRouting, "Service db does not route to primary db-0"},
		{"healthy", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"), Instances: healthy, RoutedPods: routed},
			databasev1.PhaseReady, databasev1.ReasonChecksPassed, "db-0 accepts writes; 1 standby"},
		{"a child with our name that we do not own", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Conflicts: []string{"Service ns/db exists and is not owned by Database db"}},
			databasev1.PhaseFailed, databasev1.ReasonChildConflict, "Service ns/db exists and is not owned"},
		{"primary data missing, a standby holds the data", observation{StatefulSet: sts(2, 1, 2, "a", "a"), Pods: pods("db-0", "db-1"),
			Instances: map[string]InstanceReport{"db-0": agentState("db-0", agentapi.StateDataMissing, "empty"), "db-1": healthy["db-1"]}},
			databasev1.PhaseFailed, databasev1.ReasonPrimaryDataMissing, "PVC data-db-0) although the Database was initialised (system identifier 7001); the operator refuses to create a new, empty database. The data is on standby db-1: to rebuild the primary from it, run kubectl annotate database db database.example.com/recover-primary-from=db-1"},
		{"primary data missing, no standby", observation{StatefulSet: sts(2, 0, 2, "a", "a"), Pods: pods("db-0"),
			Instances: map[string]InstanceReport{"db-0": agentState("db-0", agentapi.StateDataMissing, "empty")}},
			databasev1.PhaseFailed, databasev1.ReasonPrimaryDataMissing, "No standby holds a copy"},
		{"primary data foreign", observation{StatefulSet: sts(2, 1, 2, "a", "a"), Pods: pods("db-0", "db-1"),
			Instances: map[string]InstanceReport{"db-0": agentState("db-0", agentapi.StateForeignData, "belongs to another cluster"), "db-1": healthy["db-1"]}},
			databasev1.PhaseFailed, databasev1.ReasonPrimaryDataForeign, "db-0 (PVC data-db-0): belongs to another cluster"},
		{"data directory of another major", observation{StatefulSet: sts(2, 1, 2, "a", "b"), Pods: pods("db-0", "db-1"),
			Instances: map[string]InstanceReport{"db-0": healthy["db-0"], "db-1": func() InstanceReport {
				r := agentState("db-1", agentapi.StateVersionMismatch, "")
				r.Status.DataVersion, r.Status.BinaryVersion = 15, 17
				return r
			}()}},
			databasev1.PhaseFailed, databasev1.ReasonDataVersionMismatch, "Instance db-1: its data directory is PostgreSQL 15 but image (unknown) runs PostgreSQL 17"},
		{"primary being rebuilt", observation{StatefulSet: sts(2, 1, 2, "a", "a"), Pods: pods("db-0", "db-1"),
			Instances: map[string]InstanceReport{"db-0": agentState("db-0", agentapi.StateRecovering, "cloning db-1"), "db-1": healthy["db-1"]}},
			databasev1.PhaseDeploying, databasev1.ReasonRecoveringPrimary, "db-0: cloning db-1"},
		{"standby re-cloned", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"), Instances: healthy, RoutedPods: routed,
			Recloning: map[string]string{"db-1": "WAL removed"}},
			databasev1.PhaseVerifying, databasev1.ReasonStandbyRecloning, "db-1 is being re-cloned: WAL removed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			db := testDB(2)
			db.Status.SystemIdentifier = "7001"
			st := deriveStatus(db, tc.obs)
			if st.Phase != tc.wantPhase {
				t.Errorf("phase = %s, want %s", st.Phase, tc.wantPhase)
			}
			if st.Ready != (tc.wantPhase == databasev1.PhaseReady) || st.ObservedGeneration != 3 {
				t.Errorf("ready = %v observedGeneration = %d", st.Ready, st.ObservedGeneration)
			}
			c := meta.FindStatusCondition(st.Conditions, databasev1.ConditionReady)
			if c == nil || c.Reason != tc.wantReason || !strings.Contains(c.Message, tc.wantMessage) {
				t.Errorf("Ready condition = %+v, want reason %s message containing %q", c, tc.wantReason, tc.wantMessage)
			}
			stalled := meta.IsStatusConditionTrue(st.Conditions, databasev1.ConditionStalled)
			reconciling := meta.IsStatusConditionTrue(st.Conditions, databasev1.ConditionReconciling)
			if stalled != (tc.wantPhase == databasev1.PhaseFailed) {
				t.Errorf("Stalled = %v", stalled)
			}
			if reconciling != (tc.wantPhase != databasev1.PhaseFailed && tc.wantPhase != databasev1.PhaseReady) {
				t.Errorf("Reconciling = %v", reconciling)
			}
		})
	}
}

func TestDeriveStatusIsStableAndKeepsTransitionTimes(t *testing.T) {
	db := testDB(1)
	obs := observation{StatefulSet: sts(1, 1, 1, "a", "a"), Pods: pods("db-0"),
		Instances: map[string]InstanceReport{"db-0": primaryReport("db-0", nil)}, RoutedPods: map[string]bool{"db-0": true}}
	first := deriveStatus(db, obs)
	for i := range first.Conditions {
		first.Conditions[i].LastTransitionTime = metav1.Unix(1000, 0)
	}
	db.Status = first
	second := deriveStatus(db, obs)
	for _, c := range second.Conditions {
		if !c.LastTransitionTime.Equal(&first.Conditions[0].LastTransitionTime) {
			t.Errorf("condition %s transition time moved without a transition", c.Type)
		}
	}
}

func agentState(pod string, state agentapi.State, msg string) InstanceReport {
	return InstanceReport{Status: &agentapi.Status{Pod: pod, State: state, Message: msg, Error: "PostgreSQL is not running"}}
}

func TestObservationErrorKeepsTheLastPhaseAndIsReportedInReconciling(t *testing.T) {
	db := testDB(1)
	db.Status.Phase, db.Status.Ready, db.Status.Endpoint, db.Status.ObservedGeneration = databasev1.PhaseReady, true, "db.ns.svc.cluster.local:5432", 2
	err := errors.New("listing pods: timeout")
	st := deriveStatus(db, observation{ObserveErr: err, ReconcileErr: err, Now: time.Unix(5000, 0)})
	c := meta.FindStatusCondition(st.Conditions, databasev1.ConditionReconciling)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != databasev1.ReasonReconcileError || c.Message != "listing pods: timeout" {
		t.Errorf("Reconciling = %+v", c)
	}
	if st.Phase != databasev1.PhaseReady || !st.Ready || st.Endpoint != db.Status.Endpoint || st.ObservedGeneration != 2 {
		t.Errorf("phase %s ready %v endpoint %q generation %d: a missing observation must not rewrite what was known",
			st.Phase, st.Ready, st.Endpoint, st.ObservedGeneration)
	}
}

// A failing optional step (volume expansion, say) must not freeze the status: the
// database is still observed and judged, the error is reported in Reconciling, and
// Stalled once it has repeated for StallAfter on the same generation.
func TestFailingStepDoesNotFreezeTheStatusAndStallsWhenItPersists(t *testing.T) {
	db := testDB(1)
	healthy := observation{StatefulSet: sts(1, 1, 1, "a", "a"), Pods: pods("db-0"),
		Instances: map[string]InstanceReport{"db-0": primaryReport("db-0", nil)}, RoutedPods: map[string]bool{"db-0": true},
		StallAfter: 5 * time.Minute, ReadyGrace: 30 * time.Second}
	obs := healthy
	obs.Now = time.Unix(10000, 0)
	obs.ReconcileErr = errors.New("storage: expanding volume data-db-0: forbidden")
	st := deriveStatus(db, obs)
	if st.Phase != databasev1.PhaseReady || !st.Ready {
		t.Errorf("phase %s: a failing optional step must not hide a healthy database", st.Phase)
	}
	if c := meta.FindStatusCondition(st.Conditions, databasev1.ConditionReconciling); c == nil || c.Reason != databasev1.ReasonReconcileError || !strings.Contains(c.Message, "forbidden") {
		t.Errorf("Reconciling = %+v", c)
	}
	if meta.IsStatusConditionTrue(st.Conditions, databasev1.ConditionStalled) {
		t.Error("Stalled at the first failure")
	}
	db.Status = st
	obs.Now = obs.Now.Add(6 * time.Minute)
	st = deriveStatus(db, obs)
	if c := meta.FindStatusCondition(st.Conditions, databasev1.ConditionStalled); c == nil || c.Status != metav1.ConditionTrue || c.Reason != databasev1.ReasonReconcileError {
		t.Errorf("Stalled after 6 minutes of the same failure = %+v", c)
	}
	db.Status = st
	healthy.Now = obs.Now.Add(time.Minute)
	st = deriveStatus(db, healthy)
	if meta.IsStatusConditionTrue(st.Conditions, databasev1.ConditionStalled) || meta.IsStatusConditionTrue(st.Conditions, databasev1.ConditionReconciling) {
		t.Errorf("conditions after the step succeeded again: %+v", st.Conditions)
	}
}

// Ready leaves only when a failing check lasts ReadyGrace; the failing part is
// named at once by PrimaryAvailable or ReplicasHealthy.
func TestReadyHysteresis(t *testing.T) {
	db := testDB(2)
	routed := map[string]bool{"db-0": true}
	obsAt := func(sec int64, lag int64) observation {
		return observation{Now: time.Unix(sec, 0), ReadyGrace: 30 * time.Second, StallAfter: time.Hour,
			StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"), RoutedPods: routed,
			Instances: map[string]InstanceReport{"db-0": primaryReport("db-0", map[string]int64{"db-1": lag}), "db-1": replicaReport("db-1")}}
	}
	steps := []struct {
		at, lag          int64
		phase            databasev1.Phase
		reason           string
		replicasHealthy  metav1.ConditionStatus
		primaryAvailable metav1.ConditionStatus
	}{
		{0, 0, databasev1.PhaseReady, databasev1.ReasonChecksPassed, metav1.ConditionTrue, metav1.ConditionTrue},
		{10, 100 << 20, databasev1.PhaseReady, databasev1.ReasonDegraded, metav1.ConditionFalse, metav1.ConditionTrue},
		{30, 100 << 20, databasev1.PhaseReady, databasev1.ReasonDegraded, metav1.ConditionFalse, metav1.ConditionTrue},
		{35, 0, databasev1.PhaseReady, databasev1.ReasonChecksPassed, metav1.ConditionTrue, metav1.ConditionTrue},
		{50, 100 << 20, databasev1.PhaseReady, databasev1.ReasonDegraded, metav1.ConditionFalse, metav1.ConditionTrue},
		{81, 100 << 20, databasev1.PhaseVerifying, databasev1.ReasonReplicationLagHigh, metav1.ConditionFalse, metav1.ConditionTrue},
		{90, 0, databasev1.PhaseReady, databasev1.ReasonChecksPassed, metav1.ConditionTrue, metav1.ConditionTrue},
	}
	for _, s := range steps {
		st := deriveStatus(db, obsAt(s.at, s.lag))
		c := meta.FindStatusCondition(st.Conditions, databasev1.ConditionReady)
		if st.Phase != s.phase || c.Reason != s.reason {
			t.Errorf("t=%ds lag=%d: phase %s reason %s (%s), want %s %s", s.at, s.lag, st.Phase, c.Reason, c.Message, s.phase, s.reason)
		}
		if got := meta.FindStatusCondition(st.Conditions, databasev1.ConditionReplicasHealthy).Status; got != s.replicasHealthy {
			t.Errorf("t=%ds: ReplicasHealthy %s", s.at, got)
		}
		if got := meta.FindStatusCondition(st.Conditions, databasev1.ConditionPrimaryAvailable).Status; got != s.primaryAvailable {
			t.Errorf("t=%ds: PrimaryAvailable %s", s.at, got)
		}
		db.Status = st
	}
}

func TestIdentityIsRecordedOnceAndSaysWhetherDataWasAdopted(t *testing.T) {
	tests := []struct {
		name       string
		id         *identity
		wantReason string
		wantMsg    string
	}{
		{"initdb", &identity{SystemID: "7001", DataVersion: 15, Pod: "db-0"}, databasev1.ReasonBootstrapped, "initialised by initdb on db-0: system identifier 7001, PostgreSQL 15"},
		{"adopted", &identity{SystemID: "7002", DataVersion: 15, Pod: "db-0", Adopted: true}, databasev1.ReasonAdoptedExistingData, "Adopted the existing data directory found on db-0 (system identifier 7002, PostgreSQL 15)"},
		{"from the secret", &identity{SystemID: "7003", FromSecret: true}, databasev1.ReasonBootstrapped, "7003 recovered from Secret db-internal"},
		{"a cluster that ran before identities were recorded (operator upgrade)", &identity{SystemID: "7004", DataVersion: 15, Pod: "db-0", Existing: true},
			databasev1.ReasonBootstrapped, "Recorded system identifier 7004 (PostgreSQL 15) of the cluster already running on db-0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			db := testDB(1)
			st := deriveStatus(db, observation{Identity: tc.id, Now: time.Unix(1, 0)})
			c := meta.FindStatusCondition(st.Conditions, databasev1.ConditionInitialized)
			if st.SystemIdentifier != tc.id.SystemID || c == nil || c.Status != metav1.ConditionTrue || c.Reason != tc.wantReason || !strings.Contains(c.Message, tc.wantMsg) {
				t.Errorf("systemIdentifier %q Initialized %+v", st.SystemIdentifier, c)
			}
			// Recorded once: a later report does not change it.
			db.Status = st
			again := deriveStatus(db, observation{Identity: &identity{SystemID: "9999"}, Now: time.Unix(2, 0)})
			if again.SystemIdentifier != tc.id.SystemID {
				t.Errorf("system identifier changed to %s", again.SystemIdentifier)
			}
		})
	}
	st := deriveStatus(testDB(1), observation{})
	if c := meta.FindStatusCondition(st.Conditions, databasev1.ConditionInitialized); c == nil || c.Status != metav1.ConditionFalse || c.Reason != databasev1.ReasonNotInitialized {
		t.Errorf("Initialized before any report = %+v", c)
	}
}

func TestNewIdentityTellsInitdbAdoptionAndUpgradeApart(t *testing.T) {
	db := testDB(1)
	p := &agentapi.Status{Pod: "db-0", SystemIdentifier: "7", DataVersion: 15, Bootstrapped: true}
	if id := newIdentity(db, p); id.Adopted || id.Existing {
		t.Errorf("initdb: %+v", id)
	}
	p.Bootstrapped = false
	if id := newIdentity(db, p); !id.Adopted || id.Existing {
		t.Errorf("new Database on retained volumes: %+v", id)
	}
	db.Status.CurrentPrimary = "db-0"
	if id := newIdentity(db, p); id.Adopted || !id.Existing {
		t.Errorf("running before the upgrade: %+v", id)
	}
}

func TestRecloneReason(t *testing.T) {
	primary := func(mod func(*agentapi.Status)) *agentapi.Status {
		p := &agentapi.Status{Pod: "db-0", Role: agentapi.RolePrimary, Running: true, OldestWALLSN: "0/5000000", WALSegmentSize: 16 << 20,
			Slots: []agentapi.SlotStatus{{Name: "pgop_db_1", WALStatus: "reserved"}}}
		if mod != nil {
			mod(p)
		}
		return p
	}
	standby := func(mod func(*agentapi.Status)) *agentapi.Status {
		s := &agentapi.Status{Pod: "db-1", Role: agentapi.RoleReplica, Running: true, InRecovery: true, SystemIdentifier: "7001", ReplayLSN: "0/3000100"}
		if mod != nil {
			mod(s)
		}
		return s
	}
	tests := []struct {
		name             string
		primary, standby *agentapi.Status
		want             string
	}{
		{"streaming per the primary", primary(func(p *agentapi.Status) {
			p.Replicas = []agentapi.ReplicaStatus{{ApplicationName: "db-1", State: "streaming"}}
		}), standby(nil), ""},
		{"streaming per the standby", primary(nil), standby(func(s *agentapi.Status) { s.WALReceiverStatus = "streaming" }), ""},
		{"the primary answered that the WAL is gone", primary(nil), standby(func(s *agentapi.Status) { s.WALMissing = true }),
			"has already been removed (it stopped at 0/3000100; the primary's oldest WAL starts at 0/5000000)"},
		{"past the primary's fork point (it kept WAL an asynchronous failover gave up)", primary(func(p *agentapi.Status) { p.Timeline = 14 }),
			standby(func(s *agentapi.Status) { s.Timeline = 13; s.Diverged = true; s.ReplayLSN = "0/53705B0" }),
			"past the point where the primary's timeline 14 forked off (at 0/53705B0"},
		{"behind the primary's oldest WAL but still replaying locally (just restarted): no evidence, no re-clone", primary(nil), standby(nil), ""},
		{"slot lost", primary(func(p *agentapi.Status) { p.Slots[0].WALStatus = "lost"; p.OldestWALLSN = "0/1000000" }), standby(nil), "slot pgop_db_1 lost the WAL"},
		{"foreign data", primary(func(p *agentapi.Status) {
			p.Replicas = []agentapi.ReplicaStatus{{ApplicationName: "db-1", State: "streaming"}}
		}), standby(func(s *agentapi.Status) { s.SystemIdentifier = "8888" }), "belongs to another cluster (system identifier 8888"},
		{"diverged: on a timeline the primary never had", primary(func(p *agentapi.Status) { p.Timeline = 1 }),
			standby(func(s *agentapi.Status) { s.Timeline = 2; s.WALReceiverStatus = "streaming" }), "timeline 2, which the primary (timeline 1) never had"},
		{"following a newer timeline of the primary", primary(func(p *agentapi.Status) { p.Timeline = 3; p.OldestWALLSN = "0/1000000" }),
			standby(func(s *agentapi.Status) { s.Timeline = 2 }), ""},
		{"not running: the agent decides", primary(nil), standby(func(s *agentapi.Status) { s.Running = false }), ""},
		{"a primary is not re-cloned", primary(nil), standby(func(s *agentapi.Status) { s.Role = agentapi.RolePrimary }), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := recloneReason("7001", tc.primary, tc.standby)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("recloneReason = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSlotsNeedSync(t *testing.T) {
	want := []string{"pgop_db_1", "pgop_db_2"}
	tests := []struct {
		name string
		have []agentapi.SlotStatus
		sync bool
	}{
		{"none yet", nil, true},
		{"exact", []agentapi.SlotStatus{{Name: "pgop_db_1"}, {Name: "pgop_db_2"}}, false},
		{"one missing", []agentapi.SlotStatus{{Name: "pgop_db_1"}}, true},
		{"an extra inactive one (scaled down)", []agentapi.SlotStatus{{Name: "pgop_db_1"}, {Name: "pgop_db_2"}, {Name: "pgop_db_3"}}, true},
		{"an extra active one is left until its standby is gone", []agentapi.SlotStatus{{Name: "pgop_db_1"}, {Name: "pgop_db_2"}, {Name: "pgop_db_3", Active: true}}, false},
		{"a lost inactive one is recreated", []agentapi.SlotStatus{{Name: "pgop_db_1", WALStatus: "lost"}, {Name: "pgop_db_2"}}, true},
	}
	for _, tc := range tests {
		if got := slotsNeedSync(tc.have, want); got != tc.sync {
			t.Errorf("%s: slotsNeedSync = %v", tc.name, got)
		}
	}
}

func TestMaxSlotWALKeepSize(t *testing.T) {
	db := testDB(1)
	if got := maxSlotWALKeepSize(db, resource.MustParse("1Gi")); got != "256MB" {
		t.Errorf("default for 1Gi = %s, want a quarter, 256MB", got)
	}
	if got := maxSlotWALKeepSize(db, resource.MustParse("100Mi")); got != "64MB" {
		t.Errorf("default for 100Mi = %s, want the 64MB floor", got)
	}
	q := resource.MustParse("2Gi")
	db.Spec.MaxSlotWALKeepSize = &q
	if got := maxSlotWALKeepSize(db, resource.MustParse("1Gi")); got != "2048MB" {
		t.Errorf("explicit 2Gi = %s", got)
	}
}

func TestTransitionsAreEventsOnceWithWarningsForDegradations(t *testing.T) {
	cond := func(typ string, status metav1.ConditionStatus, reason string) metav1.Condition {
		return metav1.Condition{Type: typ, Status: status, Reason: reason, Message: typ + " " + reason}
	}
	ready := databasev1.DatabaseStatus{Phase: databasev1.PhaseReady, Conditions: []metav1.Condition{
		cond(databasev1.ConditionReady, metav1.ConditionTrue, databasev1.ReasonChecksPassed),
		cond(databasev1.ConditionPrimaryAvailable, metav1.ConditionTrue, databasev1.ReasonPrimaryAvailable),
		cond(databasev1.ConditionReplicasHealthy, metav1.ConditionTrue, databasev1.ReasonStandbysHealthy),
	}}
	degraded := databasev1.DatabaseStatus{Phase: databasev1.PhaseVerifying, Conditions: []metav1.Condition{
		cond(databasev1.ConditionReady, metav1.ConditionFalse, databasev1.ReasonReplicationLagHigh),
		cond(databasev1.ConditionPrimaryAvailable, metav1.ConditionTrue, databasev1.ReasonPrimaryAvailable),
		cond(databasev1.ConditionReplicasHealthy, metav1.ConditionFalse, databasev1.ReasonReplicationLagHigh),
	}}
	if got := transitions(ready, ready); len(got) != 0 {
		t.Errorf("no change gave %+v", got)
	}
	down := transitions(ready, degraded)
	var types []string
	for _, tr := range down {
		types = append(types, tr.Type+"/"+tr.Reason+"/"+tr.Log)
	}
	want := []string{"Warning/PhaseVerifying/phase changed", "/ReplicationLagHigh/consistency check failed", "Warning/ReplicationLagHigh/ReplicasHealthy is False"}
	if strings.Join(types, ",") != strings.Join(want, ",") {
		t.Errorf("Ready → degraded: %v, want %v", types, want)
	}
	up := transitions(degraded, ready)
	types = nil
	for _, tr := range up {
		types = append(types, tr.Type+"/"+tr.Reason+"/"+tr.Log)
	}
	want = []string{"Normal/PhaseReady/phase changed", "/ChecksPassed/consistency check passed", "Normal/StandbysStreaming/ReplicasHealthy recovered"}
	if strings.Join(types, ",") != strings.Join(want, ",") {
		t.Errorf("degraded → Ready: %v, want %v", types, want)
	}
}

func TestImageMajor(t *testing.T) {
	for image, want := range map[string]int{
		"postgres:15":                               15,
		"postgres:15.18":                            15,
		"postgres:17-bookworm":                      17,
		"docker.io/library/postgres:16.4":           16,
		"registry:5000/pg/postgres:14.2@sha256:abc": 14,
		"registry:5000/pg/postgres":                 0,
		"postgres":                                  0,
		"postgres:latest":                           0,
		"postgres@sha256:abc":                       0,
	} {
		if got := imageMajor(image); got != want {
			t.Errorf("imageMajor(%q) = %d, want %d", image, got, want)
		}
	}
}

func TestGeneratePasswordIsRandomAlphanumeric(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		p, err := generatePassword(32)
		if err != nil {
			t.Fatal(err)
		}
		if len(p) != 32 || strings.Trim(p, passwordAlphabet) != "" {
			t.Fatalf("password %q is not 32 alphanumeric characters", p)
		}
		if seen[p] {
			t.Fatal("a password repeated")
		}
		seen[p] = true
	}
}

func TestCredentialsURIEscapes(t *testing.T) {
	got := postgresURI("admin", "p@ss/w:rd", "db.ns.svc.cluster.local", "5432", "mydb", "")
	if got != "postgresql://admin:p%40ss%2Fw%3Ard@db.ns.svc.cluster.local:5432/mydb" {
		t.Errorf("uri = %s", got)
	}
	got = postgresURI("admin", "pw", "db.ns.svc.cluster.local", "5432", "mydb", "verify-full")
	if got != "postgresql://admin:pw@db.ns.svc.cluster.local:5432/mydb?sslmode=verify-full" {
		t.Errorf("uri with sslmode = %s", got)
	}
}

func TestRetainedDataConflictKeepsAFreshInitdbFromBeingRecorded(t *testing.T) {
	db := testDB(2)
	db.CreationTimestamp = metav1.Unix(2000, 0)
	pvc := func(name string, created int64) corev1.PersistentVolumeClaim {
		return corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.Unix(created, 0)}}
	}
	p := &agentapi.Status{Pod: "db-0", SystemIdentifier: "new", Bootstrapped: true}
	if why := retainedDataConflict(db, observation{PVCs: []corev1.PersistentVolumeClaim{pvc("data-db-0", 2001), pvc("data-db-1", 2002)}}, p); why != "" {
		t.Errorf("volumes of this Database flagged: %s", why)
	}
	why := retainedDataConflict(db, observation{PVCs: []corev1.PersistentVolumeClaim{pvc("data-db-0", 2001), pvc("data-db-1", 1000)}}, p)
	if !strings.Contains(why, "data-db-1 predate this Database") || !strings.Contains(why, "re-clones nothing") {
		t.Errorf("retained standby volume: %q", why)
	}
	obs := observation{Pods: pods("db-0", "db-1"), Instances: map[string]InstanceReport{
		"db-0": {Status: p}, "db-1": {Status: &agentapi.Status{Pod: "db-1", SystemIdentifier: "old"}}}}
	if why := retainedDataConflict(db, obs, p); !strings.Contains(why, "db-1 (system identifier old)") {
		t.Errorf("standby of another cluster: %q", why)
	}
	st := deriveStatus(db, observation{StatefulSet: sts(2, 1, 1, "a", "a"), IdentityConflict: why})
	if st.Phase != databasev1.PhaseFailed || st.SystemIdentifier != "" || meta.FindStatusCondition(st.Conditions, databasev1.ConditionStalled).Reason != databasev1.ReasonRetainedDataConflict {
		t.Errorf("status with a conflict: phase %s id %q %+v", st.Phase, st.SystemIdentifier, st.Conditions)
	}
}

func TestRecoveryNamesTheMostAdvancedStandby(t *testing.T) {
	standby := func(name, replay, receive string) InstanceReport {
		return InstanceReport{Status: &agentapi.Status{Pod: name, Role: agentapi.RoleReplica, Running: true, ReplayLSN: replay, ReceiveLSN: receive}}
	}
	obs := observation{Pods: pods("db-0", "db-1", "db-2"), Instances: map[string]InstanceReport{
		"db-0": agentState("db-0", agentapi.StateDataMissing, ""),
		"db-1": standby("db-1", "0/5000000", "0/5000000"),
		"db-2": standby("db-2", "0/4000000", "0/6000000"),
	}}
	if best, lsn := mostAdvancedStandby(obs, "db-0"); best != "db-2" || lsn != "0/6000000" {
		t.Errorf("most advanced = %s %s", best, lsn)
	}
	if why := mostAdvancedOther(obs, "db-0", "db-1"); !strings.Contains(why, "standby db-2 is further ahead") {
		t.Errorf("recovering from the lagging standby: %q", why)
	}
	if why := mostAdvancedOther(obs, "db-0", "db-2"); why != "" {
		t.Errorf("recovering from the most advanced: %q", why)
	}
	db := testDB(3)
	db.Status.SystemIdentifier = "7"
	obs.StatefulSet = sts(3, 2, 3, "a", "a")
	c := meta.FindStatusCondition(deriveStatus(db, obs).Conditions, databasev1.ConditionStalled)
	if c == nil || !strings.Contains(c.Message, "recover-primary-from=db-2") {
		t.Errorf("Stalled = %+v", c)
	}
}

// A change of primary in progress is the phase: FailingOver or SwitchingOver,
// with the state machine's message, and the target survives the status rewrite.
func TestDeriveStatusDuringAChangeOfPrimary(t *testing.T) {
	for _, kind := range []databasev1.PrimaryChangeKind{databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeSwitchover} {
		db := testDB(2)
		db.Status.TargetPrimary = "db-1"
		db.Status.PrimaryChange = &databasev1.PrimaryChange{Kind: kind, Phase: databasev1.PrimaryChangePromoting, From: "db-0", To: "db-1", Message: "Promoting db-1"}
		st := deriveStatus(db, observation{StatefulSet: sts(2, 2, 2, "a", "a")})
		want := databasev1.PhaseFailingOver
		if kind == databasev1.PrimaryChangeSwitchover {
			want = databasev1.PhaseSwitchingOver
		}
		c := meta.FindStatusCondition(st.Conditions, databasev1.ConditionReady)
		if st.Phase != want || c == nil || c.Message != "Promoting: Promoting db-1" || st.TargetPrimary != "db-1" || st.PrimaryChange == nil {
			t.Errorf("%s: phase %s, Ready %+v, target %q", kind, st.Phase, c, st.TargetPrimary)
		}
		if !meta.IsStatusConditionTrue(st.Conditions, databasev1.ConditionReconciling) {
			t.Errorf("%s: Reconciling is not True", kind)
		}
	}
}

// TestRestoringCondition: True naming the running Restore while one runs, False
// when none, and untouched when the Restores could not be listed.
func TestRestoringCondition(t *testing.T) {
	primary := primaryReport("db-0", nil)
	applying := primaryReport("db-0", nil)
	applying.Status.Restoring = "abc"
	for _, tc := range []struct {
		name        string
		obs         observation
		prev        *metav1.Condition
		want        metav1.ConditionStatus
		wantReason  string
		wantMessage string
	}{
		{"not listed: no condition", observation{}, nil, "", "", ""},
		{"not listed: the last one is kept", observation{}, &metav1.Condition{Type: databasev1.ConditionRestoring, Status: metav1.ConditionTrue, Reason: databasev1.ReasonRestoreRunning, Message: "old"},
			metav1.ConditionTrue, databasev1.ReasonRestoreRunning, "old"},
		{"none running", observation{RestoresObserved: true, Restores: map[string]string{}}, nil, metav1.ConditionFalse, databasev1.ReasonNoRestore, "No Restore"},
		{"one running", observation{RestoresObserved: true, Restores: map[string]string{"r1": "Backup nightly-1"},
			Pods: pods("db-0"), Instances: map[string]InstanceReport{"db-0": primary}},
			nil, metav1.ConditionTrue, databasev1.ReasonRestoreRunning, "Restore r1 is restoring Backup nightly-1"},
		{"the agent applies it", observation{RestoresObserved: true, Restores: map[string]string{"r1": "s3://b/k"},
			Pods: pods("db-0"), Instances: map[string]InstanceReport{"db-0": applying}},
			nil, metav1.ConditionTrue, databasev1.ReasonRestoreRunning, "the primary's agent is applying it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := testDB(1)
			if tc.prev != nil {
				db.Status.Conditions = []metav1.Condition{*tc.prev}
			}
			tc.obs.StatefulSet = sts(1, 1, 1, "a", "a")
			st := deriveStatus(db, tc.obs)
			c := meta.FindStatusCondition(st.Conditions, databasev1.ConditionRestoring)
			if tc.want == "" {
				if c != nil {
					t.Fatalf("Restoring = %+v, want none", c)
				}
				return
			}
			if c == nil || c.Status != tc.want || c.Reason != tc.wantReason || !strings.Contains(c.Message, tc.wantMessage) {
				t.Errorf("Restoring = %+v, want %s %s %q", c, tc.want, tc.wantReason, tc.wantMessage)
			}
		})
	}
}

// Rule 2: the status shows the primary's current synchronous standbys (sync or
// quorum members), none for asynchronous ones.
func TestStatusShowsTheCurrentSynchronousStandbys(t *testing.T) {
	db := testDB(3)
	primary := primaryReport("db-0", nil)
	primary.Status.Replicas = []agentapi.ReplicaStatus{
		{ApplicationName: "db-2", State: "streaming", SyncState: "quorum"},
		{ApplicationName: "db-1", State: "streaming", SyncState: "quorum"},
	}
	obs := observation{StatefulSet: sts(3, 3, 3, "a", "a"), Pods: pods("db-0", "db-1", "db-2"),
		Instances: map[string]InstanceReport{"db-0": primary, "db-1": replicaReport("db-1"), "db-2": replicaReport("db-2")}, RoutedPods: map[string]bool{"db-0": true}}
	if got := deriveStatus(db, obs).SynchronousStandbys; strings.Join(got, ",") != "db-1,db-2" {
		t.Errorf("synchronousStandbys %v, want db-1,db-2", got)
	}
	primary.Status.Replicas[0].SyncState, primary.Status.Replicas[1].SyncState = "async", "potential"
	if got := deriveStatus(db, obs).SynchronousStandbys; got != nil {
		t.Errorf("synchronousStandbys %v with asynchronous standbys, want none", got)
	}
}
