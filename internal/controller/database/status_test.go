package database

import (
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/instance"
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
	catchingUp.Status.Replicas = []instance.ReplicaStatus{{ApplicationName: "db-1", State: "catchup"}}
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
		{"rolling update", observation{StatefulSet: sts(2, 2, 1, "a", "b")}, databasev1.PhaseDeploying, databasev1.ReasonRollingUpdate, "1 of 2"},
		{"statefulset spec not observed", observation{StatefulSet: func() *appsv1.StatefulSet { s := sts(2, 2, 2, "a", "a"); s.Generation = 3; return s }()},
			databasev1.PhaseDeploying, databasev1.ReasonRollingUpdate, "observe"},
		{"agent unreachable", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"),
			Instances: map[string]InstanceReport{"db-0": healthy["db-0"], "db-1": {Err: errors.New("connection refused")}}},
			databasev1.PhaseVerifying, databasev1.ReasonInstanceUnreachable, "db-1: connection refused"},
		{"agent not reported", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"),
			Instances: map[string]InstanceReport{"db-0": healthy["db-0"]}},
			databasev1.PhaseVerifying, databasev1.ReasonInstanceUnreachable, "db-1"},
		{"postgres down", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"),
			Instances: map[string]InstanceReport{"db-0": healthy["db-0"], "db-1": {Status: &instance.Status{Pod: "db-1", Error: "no socket"}}}},
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
			Instances: map[string]InstanceReport{"db-0": primaryReport("db-0", map[string]int64{"db-1": 17 << 20}), "db-1": healthy["db-1"]}, RoutedPods: routed},
			databasev1.PhaseVerifying, databasev1.ReasonReplicationLagHigh, "db-1 replay lag is 17Mi, above the 16Mi threshold"},
		{"service not routing to the primary yet", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"), Instances: healthy},
			databasev1.PhaseVerifying, databasev1.ReasonServiceNotRouting, "Service db does not route to primary db-0"},
		{"healthy", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Pods: pods("db-0", "db-1"), Instances: healthy, RoutedPods: routed},
			databasev1.PhaseReady, databasev1.ReasonChecksPassed, "db-0 accepts writes; 1 standby"},
		{"refused", observation{StatefulSet: sts(2, 2, 2, "a", "a"), Refusal: "major change"},
			databasev1.PhaseFailed, databasev1.ReasonMajorVersionUnsupported, "major change"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			db := testDB(2)
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

func TestReconcileErrorKeepsTheLastObservationAndIsReportedInReconciling(t *testing.T) {
	db := testDB(1)
	db.Status.Phase, db.Status.Ready, db.Status.Endpoint, db.Status.ObservedGeneration = databasev1.PhaseReady, true, "db.ns.svc.cluster.local:5432", 2
	st := deriveStatus(db, observation{ReconcileErr: errors.New("applying db: conflict")})
	c := meta.FindStatusCondition(st.Conditions, databasev1.ConditionReconciling)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != databasev1.ReasonReconcileError || c.Message != "applying db: conflict" {
		t.Errorf("Reconciling = %+v", c)
	}
	if st.Phase != databasev1.PhaseReady || !st.Ready || st.Endpoint != db.Status.Endpoint || st.ObservedGeneration != 2 {
		t.Errorf("phase %s ready %v endpoint %q generation %d: an error must not rewrite what was known",
			st.Phase, st.Ready, st.Endpoint, st.ObservedGeneration)
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

func TestChooseImage(t *testing.T) {
	running := func(img string) *appsv1.StatefulSet {
		s := sts(1, 1, 1, "a", "a")
		s.Spec.Template.Spec.Containers = []corev1.Container{{Name: containerPostgres, Image: img}}
		return s
	}
	tests := []struct {
		name, spec    string
		sts           *appsv1.StatefulSet
		serverVersion string
		want          string
		refused       bool
	}{
		{"new database", "postgres:17", nil, "", "postgres:17", false},
		{"unchanged", "postgres:15", running("postgres:15"), "", "postgres:15", false},
		{"minor update", "postgres:15.18", running("postgres:15"), "", "postgres:15.18", false},
		{"major update refused", "postgres:17", running("postgres:15"), "", "postgres:15", true},
		{"major downgrade refused", "postgres:14", running("postgres:15.2"), "", "postgres:15.2", true},
		{"unknown running tag, server says 15", "postgres:17", running("postgres@sha256:abc"), "15.18", "postgres@sha256:abc", true},
		{"unknown target tag allowed", "postgres:latest", running("postgres:15"), "", "postgres:latest", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			db := testDB(1)
			db.Spec.Image = tc.spec
			db.Status.PostgresVersion = tc.serverVersion
			got, refusal := chooseImage(db, tc.sts)
			if got != tc.want || (refusal != "") != tc.refused {
				t.Errorf("chooseImage = %q, %q; want %q refused=%v", got, refusal, tc.want, tc.refused)
			}
		})
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
	got := postgresURI("admin", "p@ss/w:rd", "db.ns.svc.cluster.local", "5432", "mydb")
	if got != "postgresql://admin:p%40ss%2Fw%3Ard@db.ns.svc.cluster.local:5432/mydb" {
		t.Errorf("uri = %s", got)
	}
}
