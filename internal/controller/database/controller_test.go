package database

import (
	"fmt"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/testenv"
	"github.com/example/postgres-operator/internal/upgrade"
)

func eventually(t *testing.T, what string, cond func() string) {
	t.Helper()
	testenv.Eventually(t, what, cond)
}

var nsCounter int

func newNamespace(t *testing.T) string {
	t.Helper()
	nsCounter++
	name := fmt.Sprintf("t%d-%s", nsCounter, strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")))
	if len(name) > 60 {
		name = name[:60]
	}
	name = strings.TrimRight(strings.ReplaceAll(name, "_", "-"), "-")
	if err := k8s.Create(testCtx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	return name
}

// applyYAML server-side applies a manifest the way `kubectl apply --server-side` does.
func applyYAML(t *testing.T, ns, manifest string) error {
	t.Helper()
	return testenv.ApplyYAML(testCtx, k8s, ns, manifest)
}

const seedManifest = `
apiVersion: database.example.com/v1
kind: Database
metadata:
  name: my-database
spec:
  image: postgres:14
  replicas: 1
  databaseName: mydb
  username: admin
  storage:
    size: 10Gi
`

func getDB(t *testing.T, ns, name string) *databasev1.Database {
	t.Helper()
	db := &databasev1.Database{}
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: name}, db); err != nil {
		t.Fatal(err)
	}
	return db
}

func getSTS(ns, name string) (*appsv1.StatefulSet, error) {
	sts := &appsv1.StatefulSet{}
	err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: name}, sts)
	return sts, err
}

func waitPhase(t *testing.T, ns, name string, phase databasev1.Phase) *databasev1.Database {
	t.Helper()
	var db *databasev1.Database
	eventually(t, "phase "+string(phase), func() string {
		db = getDB(t, ns, name)
		if db.Status.Phase != phase {
			return fmt.Sprintf("phase %q, conditions %+v", db.Status.Phase, db.Status.Conditions)
		}
		return ""
	})
	return db
}

// setStatefulSetStatus plays the StatefulSet controller: n pods ready and updated.
func setStatefulSetStatus(t *testing.T, ns, name string, ready, updated int32, rolled bool) {
	t.Helper()
	eventually(t, "statefulset status update", func() string {
		sts, err := getSTS(ns, name)
		if err != nil {
			return err.Error()
		}
		sts.Status.ObservedGeneration = sts.Generation
		sts.Status.Replicas = *sts.Spec.Replicas
		sts.Status.ReadyReplicas = ready
		sts.Status.AvailableReplicas = ready
		sts.Status.UpdatedReplicas = updated
		sts.Status.CurrentRevision = "rev-1"
		sts.Status.UpdateRevision = "rev-1"
		if !rolled {
			sts.Status.UpdateRevision = "rev-2"
		}
		if err := k8s.Status().Update(testCtx, sts); err != nil {
			return err.Error()
		}
		return ""
	})
}

// createPod plays the StatefulSet controller and kubelet: a running pod with an IP.
func createPod(t *testing.T, db *databasev1.Database, ordinal int) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s-%d", db.Name, ordinal),
			Namespace: db.Namespace,
			Labels:    withRevision(podLabels(db), "rev-1"),
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "postgres", Image: "postgres:15",
			Command: []string{agentBinaryPath, "instance", agentapi.TLSDirArg(agentapi.DefaultTLSDir)}}}},
	}
	if err := k8s.Create(testCtx, pod); err != nil {
		t.Fatal(err)
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP = fmt.Sprintf("10.0.0.%d", ordinal+10)
	if err := k8s.Status().Update(testCtx, pod); err != nil {
		t.Fatal(err)
	}
	return pod
}

// routeService plays the EndpointSlice controller: the read-write Service of db
// routes to pod.
func routeService(t *testing.T, db *databasev1.Database, pod *corev1.Pod) {
	t.Helper()
	labels := podLabels(db)
	labels[discoveryv1.LabelServiceName] = db.Name
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: db.Name + "-rw", Namespace: db.Namespace, Labels: labels},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{pod.Status.PodIP},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: pod.Name, Namespace: pod.Namespace}}},
	}
	if err := k8s.Create(testCtx, slice); err != nil {
		t.Fatal(err)
	}
}

func withRevision(l map[string]string, rev string) map[string]string {
	l["controller-revision-hash"] = rev
	return l
}

// primaryReport is what the agent of a primary that holds the Lease reports (the
// fake agents take the Lease for it, as the real ones do).
func primaryReport(pod string, standbys map[string]int64) InstanceReport {
	st := &agentapi.Status{Pod: pod, Role: agentapi.RolePrimary, Running: true, Writable: true, ServerVersion: "15.18", HoldsLease: true, Target: pod, Timeline: 1}
	for name, lag := range standbys {
		st.Replicas = append(st.Replicas, agentapi.ReplicaStatus{ApplicationName: name, State: "streaming", LagBytes: lag})
	}
	return InstanceReport{Status: st}
}

func replicaReport(pod string) InstanceReport {
	return InstanceReport{Status: &agentapi.Status{Pod: pod, Role: agentapi.RoleReplica, Running: true, InRecovery: true, WALReceiverStatus: "streaming"}}
}

func TestCreateMakesSecretsServicesStatefulSetOwnedByTheDatabase(t *testing.T) {
	ns := newNamespace(t)
	if err := applyYAML(t, ns, seedManifest); err != nil {
		t.Fatalf("the seed manifest must apply unchanged: %v", err)
	}
	db := waitPhase(t, ns, "my-database", databasev1.PhaseProvisioning)

	if db.Status.Endpoint != "my-database."+ns+".svc.cluster.local:5432" {
		t.Errorf("endpoint = %q", db.Status.Endpoint)
	}
	if db.Status.SecretName != "my-database-credentials" || db.Status.ObservedGeneration != db.Generation {
		t.Errorf("status = %+v", db.Status)
	}
	if c := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionReconciling); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Reconciling condition = %+v", c)
	}

	// Secrets: application credentials with every key, and the internal credentials.
	var creds corev1.Secret
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-credentials"}, &creds); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"username", "password", "database", "host", "port", "uri", "ro-host", "ro-uri", "jdbc-uri", "pgpass"} {
		if len(creds.Data[k]) == 0 {
			t.Errorf("credentials key %q is empty", k)
		}
	}
	if string(creds.Data["username"]) != "admin" || string(creds.Data["database"]) != "mydb" || string(creds.Data["port"]) != "5432" {
		t.Errorf("credentials = username %q database %q port %q", creds.Data["username"], creds.Data["database"], creds.Data["port"])
	}
	if len(creds.Data["password"]) < 32 {
		t.Errorf("password has %d characters, want >= 32", len(creds.Data["password"]))
	}
	var internal corev1.Secret
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-internal"}, &internal); err != nil {
		t.Fatal(err)
	}
	if len(internal.Data[agentapi.InternalReplicationPasswordFile]) < 32 || len(internal.Data[agentapi.InternalAgentTokenFile]) < 32 {
		t.Errorf("internal secret lacks replication password or agent token")
	}
	if string(internal.Data[agentapi.InternalReplicationPasswordFile]) == string(creds.Data["password"]) {
		t.Errorf("replication and application passwords must differ")
	}

	// Services: rw selects the primary, ro the replicas, headless all.
	wantSel := map[string]string{
		"my-database":    "primary",
		"my-database-ro": "replica",
		"my-database-hl": "",
	}
	for name, role := range wantSel {
		var svc corev1.Service
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: name}, &svc); err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		if svc.Spec.Selector[LabelRole] != role || svc.Spec.Selector[LabelDatabase] != "my-database" {
			t.Errorf("service %s selector = %v", name, svc.Spec.Selector)
		}
		if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 5432 || svc.Spec.Ports[0].Name != "postgres" {
			t.Errorf("service %s ports = %+v", name, svc.Spec.Ports)
		}
		assertOwned(t, &svc, db)
	}

	sts, err := getSTS(ns, "my-database")
	if err != nil {
		t.Fatal(err)
	}
	assertOwned(t, sts, db)
	assertOwned(t, &creds, db)
	assertOwned(t, &internal, db)
	if *sts.Spec.Replicas != 1 || sts.Spec.ServiceName != "my-database-hl" {
		t.Errorf("statefulset replicas %d service %q", *sts.Spec.Replicas, sts.Spec.ServiceName)
	}
	pod := sts.Spec.Template.Spec
	if pod.Containers[0].Image != "postgres:14" || pod.Containers[0].Command[0] != agentBinaryPath {
		t.Errorf("postgres container = %s %v", pod.Containers[0].Image, pod.Containers[0].Command)
	}
	if pod.InitContainers[0].Image != "postgres-operator:test" {
		t.Errorf("init container image = %s", pod.InitContainers[0].Image)
	}
	for _, e := range pod.Containers[0].Env {
		if strings.Contains(strings.ToLower(e.Name), "password") || e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			t.Errorf("secret passed as environment variable %s", e.Name)
		}
	}
	if got := sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests[corev1.ResourceStorage]; got.String() != "10Gi" {
		t.Errorf("volume size = %s", got.String())
	}
	if p := sts.Spec.PersistentVolumeClaimRetentionPolicy; p == nil || p.WhenDeleted != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
		t.Errorf("volumes must be retained when the Database is deleted: %+v", p)
	}
	for _, k := range []string{"app", "database", "name"} {
		if sts.Spec.Template.Labels[k] == "" {
			t.Errorf("pod template lacks label %q the spec's selectors use", k)
		}
	}
}

func assertOwned(t *testing.T, obj metav1.Object, db *databasev1.Database) {
	t.Helper()
	ref := metav1.GetControllerOf(obj)
	if ref == nil || ref.UID != db.UID || ref.Kind != "Database" || ref.BlockOwnerDeletion == nil || !*ref.BlockOwnerDeletion {
		t.Errorf("%s is not controlled by Database %s: %+v", obj.GetName(), db.Name, ref)
	}
}

func TestApplyingThreeTimesKeepsOneOfEachChildAndTheSamePassword(t *testing.T) {
	ns := newNamespace(t)
	for i := 0; i < 3; i++ {
		if err := applyYAML(t, ns, seedManifest); err != nil {
			t.Fatal(err)
		}
		waitPhase(t, ns, "my-database", databasev1.PhaseProvisioning)
	}
	var creds corev1.Secret
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-credentials"}, &creds); err != nil {
		t.Fatal(err)
	}
	password := string(creds.Data["password"])
	time.Sleep(500 * time.Millisecond) // several reconciles at the test's requeue interval

	var stss appsv1.StatefulSetList
	var svcs corev1.ServiceList
	var secrets corev1.SecretList
	for _, l := range []client.ObjectList{&stss, &svcs, &secrets} {
		if err := k8s.List(testCtx, l, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
	}
	// Secrets: credentials, internal, and the TLS ones (CA, server, restore client).
	if len(stss.Items) != 1 || len(svcs.Items) != 3 || len(secrets.Items) != 5 {
		t.Errorf("got %d statefulsets, %d services, %d secrets; want 1, 3, 5", len(stss.Items), len(svcs.Items), len(secrets.Items))
	}
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-credentials"}, &creds); err != nil {
		t.Fatal(err)
	}
	if string(creds.Data["password"]) != password {
		t.Errorf("the password changed between reconciles")
	}
	if db := getDB(t, ns, "my-database"); db.Generation != 1 {
		t.Errorf("re-applying the same spec changed the generation to %d", db.Generation)
	}
}

func TestReplicasAndImageChangesFlowToTheStatefulSet(t *testing.T) {
	ns := newNamespace(t)
	if err := applyYAML(t, ns, strings.Replace(seedManifest, "postgres:14", "postgres:15", 1)); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "my-database", databasev1.PhaseProvisioning)

	db := getDB(t, ns, "my-database")
	patch := client.MergeFrom(db.DeepCopy())
	db.Spec.Replicas = ptr.To[int32](2)
	db.Spec.Image = "postgres:15.18"
	if err := k8s.Patch(testCtx, db, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, "statefulset to follow", func() string {
		sts, err := getSTS(ns, "my-database")
		if err != nil {
			return err.Error()
		}
		if *sts.Spec.Replicas != 2 || sts.Spec.Template.Spec.Containers[0].Image != "postgres:15.18" {
			return fmt.Sprintf("replicas %d image %s", *sts.Spec.Replicas, sts.Spec.Template.Spec.Containers[0].Image)
		}
		return ""
	})
}

func TestScaleSubresourceChangesReplicas(t *testing.T) {
	ns := newNamespace(t)
	if err := applyYAML(t, ns, seedManifest); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "my-database", databasev1.PhaseProvisioning)
	db := getDB(t, ns, "my-database")
	scale := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"replicas": int64(3)}}}
	scale.SetGroupVersionKind(databasev1.GroupVersion.WithKind("Scale"))
	if err := k8s.SubResource("scale").Patch(testCtx, db, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"replicas":3}}`))); err != nil {
		t.Fatalf("kubectl scale equivalent failed: %v", err)
	}
	eventually(t, "statefulset scaled to 3", func() string {
		sts, err := getSTS(ns, "my-database")
		if err != nil {
			return err.Error()
		}
		if *sts.Spec.Replicas != 3 {
			return fmt.Sprintf("replicas %d", *sts.Spec.Replicas)
		}
		return ""
	})
}

func TestPhasesFollowInstancesAndConsistencyChecks(t *testing.T) {
	ns := newNamespace(t)
	manifest := strings.Replace(strings.Replace(seedManifest, "postgres:14", "postgres:15", 1), "replicas: 1", "replicas: 2", 1)
	if err := applyYAML(t, ns, manifest); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "my-database", databasev1.PhaseProvisioning)
	db := getDB(t, ns, "my-database")

	// The primary pod runs; the standby does not exist yet.
	primaryPod := createPod(t, db, 0)
	instances.set(ns, "my-database-0", primaryReport("my-database-0", nil))
	setStatefulSetStatus(t, ns, "my-database", 1, 1, true)
	db = waitPhase(t, ns, "my-database", databasev1.PhaseDeploying)
	if c := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionReady); c == nil || c.Status != metav1.ConditionFalse || c.Reason != databasev1.ReasonScaling {
		t.Errorf("Ready condition while scaling = %+v", c)
	}

	// Both pods ready and the Service routes, but the standby is not streaming
	// yet: Verifying, naming it.
	routeService(t, db, primaryPod)
	createPod(t, db, 1)
	instances.set(ns, "my-database-1", replicaReport("my-database-1"))
	setStatefulSetStatus(t, ns, "my-database", 2, 2, true)
	db = waitPhase(t, ns, "my-database", databasev1.PhaseVerifying)
	c := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionReady)
	if c == nil || c.Reason != databasev1.ReasonReplicaNotStreaming || !strings.Contains(c.Message, "my-database-1") {
		t.Errorf("Ready condition = %+v; want ReplicaNotStreaming naming my-database-1", c)
	}

	// Pods are labelled with the role their agent reports.
	eventually(t, "role labels", func() string {
		for name, role := range map[string]string{"my-database-0": "primary", "my-database-1": "replica"} {
			var pod corev1.Pod
			if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: name}, &pod); err != nil {
				return err.Error()
			}
			if pod.Labels[LabelRole] != role {
				return fmt.Sprintf("%s role label %q", name, pod.Labels[LabelRole])
			}
		}
		return ""
	})

	// Streaming within the threshold: Ready.
	instances.set(ns, "my-database-0", primaryReport("my-database-0", map[string]int64{"my-database-1": 1024}))
	db = waitPhase(t, ns, "my-database", databasev1.PhaseReady)
	if !db.Status.Ready || db.Status.CurrentPrimary != "my-database-0" || db.Status.PostgresVersion != "15.18" {
		t.Errorf("ready status = %+v", db.Status)
	}
	for typ, want := range map[string]metav1.ConditionStatus{
		databasev1.ConditionReady: metav1.ConditionTrue, databasev1.ConditionReconciling: metav1.ConditionFalse, databasev1.ConditionStalled: metav1.ConditionFalse,
	} {
		if c := meta.FindStatusCondition(db.Status.Conditions, typ); c == nil || c.Status != want {
			t.Errorf("condition %s = %+v, want %s", typ, c, want)
		}
	}

	// Lag above the threshold: leaves Ready (after the grace period) with a reason
	// naming the standby; the primary stays available.
	instances.set(ns, "my-database-0", primaryReport("my-database-0", map[string]int64{"my-database-1": 100 << 20}))
	db = waitPhase(t, ns, "my-database", databasev1.PhaseVerifying)
	c = meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionReady)
	if c.Reason != databasev1.ReasonReplicationLagHigh || !strings.Contains(c.Message, "my-database-1") {
		t.Errorf("Ready condition = %+v; want ReplicationLagHigh naming my-database-1", c)
	}
	if !meta.IsStatusConditionTrue(db.Status.Conditions, databasev1.ConditionPrimaryAvailable) ||
		meta.IsStatusConditionTrue(db.Status.Conditions, databasev1.ConditionReplicasHealthy) {
		t.Errorf("a lagging standby must show in ReplicasHealthy, not PrimaryAvailable: %+v", db.Status.Conditions)
	}

	// Primary stops accepting writes.
	bad := primaryReport("my-database-0", map[string]int64{"my-database-1": 0})
	bad.Status.Writable, bad.Status.WriteError = false, "cannot execute INSERT in a read-only transaction"
	instances.set(ns, "my-database-0", bad)
	eventually(t, "PrimaryNotWritable", func() string {
		c := meta.FindStatusCondition(getDB(t, ns, "my-database").Status.Conditions, databasev1.ConditionReady)
		if c == nil || c.Reason != databasev1.ReasonPrimaryNotWritable || !strings.Contains(c.Message, "my-database-0") {
			return fmt.Sprintf("%+v", c)
		}
		return ""
	})

	// Healthy again; then a rolling update is reported as Deploying.
	instances.set(ns, "my-database-0", primaryReport("my-database-0", map[string]int64{"my-database-1": 0}))
	waitPhase(t, ns, "my-database", databasev1.PhaseReady)
	setStatefulSetStatus(t, ns, "my-database", 2, 1, false)
	// The operator replaces pods itself (OnDelete): the standby it deletes first
	// makes the checks fail for a moment (Ready kept as Degraded for the grace
	// period) before the rolling update is the phase.
	eventually(t, "Deploying with reason RollingUpdate", func() string {
		db = getDB(t, ns, "my-database")
		c := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionReady)
		if db.Status.Phase != databasev1.PhaseDeploying || c == nil || c.Reason != databasev1.ReasonRollingUpdate {
			return fmt.Sprintf("phase %s, Ready %+v", db.Status.Phase, c)
		}
		return ""
	})
}

// A higher major starts an upgrade whose preflight waits for a healthy
// Database, with the StatefulSet kept on the old image and no Job; a lower
// major is refused (Stalled DowngradeRefused) and reverting clears both.
func TestMajorVersionChangeWaitsForHealthAndADowngradeIsRefused(t *testing.T) {
	ns := newNamespace(t)
	if err := applyYAML(t, ns, strings.Replace(seedManifest, "postgres:14", "postgres:15", 1)); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "my-database", databasev1.PhaseProvisioning)
	if err := applyYAML(t, ns, strings.Replace(seedManifest, "postgres:14", "postgres:17", 1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "an upgrade waiting for a healthy Database", func() string {
		db := getDB(t, ns, "my-database")
		c := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionUpgrading)
		if db.Status.Upgrade == nil || db.Status.Upgrade.Phase != databasev1.UpgradePreflight || c == nil || c.Status != metav1.ConditionTrue ||
			!strings.Contains(c.Message, "waiting for every instance to be healthy") || db.Status.Upgrade.Job != "" {
			return fmt.Sprintf("upgrade %+v, condition %+v", db.Status.Upgrade, c)
		}
		return ""
	})
	sts, err := getSTS(ns, "my-database")
	if err != nil {
		t.Fatal(err)
	}
	if img := sts.Spec.Template.Spec.Containers[0].Image; img != "postgres:15" {
		t.Errorf("statefulset image changed to %s before the upgrade ran", img)
	}

	if err := applyYAML(t, ns, strings.Replace(seedManifest, "postgres:14", "postgres:13", 1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a refused downgrade", func() string {
		db := getDB(t, ns, "my-database")
		c := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionStalled)
		if c == nil || c.Status != metav1.ConditionTrue || c.Reason != databasev1.ReasonDowngradeRefused || !strings.Contains(c.Message, "PostgreSQL 13") ||
			db.Status.Upgrade != nil {
			return fmt.Sprintf("Stalled %+v, upgrade %+v", c, db.Status.Upgrade)
		}
		return ""
	})
	if sts, _ := getSTS(ns, "my-database"); sts.Spec.Template.Spec.Containers[0].Image != "postgres:15" {
		t.Errorf("statefulset image after a refused downgrade = %s", sts.Spec.Template.Spec.Containers[0].Image)
	}
	// Reverting clears it.
	if err := applyYAML(t, ns, strings.Replace(seedManifest, "postgres:14", "postgres:15", 1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "no upgrade, not stalled", func() string {
		db := getDB(t, ns, "my-database")
		c := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionStalled)
		u := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionUpgrading)
		if c == nil || c.Status != metav1.ConditionFalse || u == nil || u.Reason != databasev1.ReasonNoUpgrade {
			return fmt.Sprintf("Stalled %+v, Upgrading %+v", c, u)
		}
		return ""
	})
}

func TestSteadyStateWritesNothing(t *testing.T) {
	ns := newNamespace(t)
	if err := applyYAML(t, ns, strings.Replace(seedManifest, "postgres:14", "postgres:15", 1)); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "my-database", databasev1.PhaseProvisioning)
	db := getDB(t, ns, "my-database")
	routeService(t, db, createPod(t, db, 0))
	instances.set(ns, "my-database-0", primaryReport("my-database-0", nil))
	setStatefulSetStatus(t, ns, "my-database", 1, 1, true)
	waitPhase(t, ns, "my-database", databasev1.PhaseReady)
	// Let the role label and the last status write settle.
	time.Sleep(time.Second)

	before, _ := writes.snapshot()
	callsBefore := instances.calls.Load()
	time.Sleep(3 * time.Second) // ~15 reconciles at the test's 200ms requeue
	after, log := writes.snapshot()
	calls := instances.calls.Load() - callsBefore
	if calls < 5 {
		t.Fatalf("only %d reconciles ran during the idle period; the test proves nothing", calls)
	}
	if after != before {
		t.Errorf("%d API writes at steady state over %d reconciles: %v", after-before, calls, log[before:])
	}
}

func TestDeletingTheDatabaseLeavesGarbageCollectionToOwnerReferences(t *testing.T) {
	// envtest runs no garbage collector: this proves the Database is not held by a
	// finalizer and every child carries the owner reference the collector follows
	// (the e2e suite proves the collection itself on a real cluster).
	ns := newNamespace(t)
	if err := applyYAML(t, ns, seedManifest); err != nil {
		t.Fatal(err)
	}
	db := waitPhase(t, ns, "my-database", databasev1.PhaseProvisioning)
	if len(db.Finalizers) != 0 {
		t.Errorf("finalizers = %v", db.Finalizers)
	}
	if err := k8s.Delete(testCtx, db); err != nil {
		t.Fatal(err)
	}
	eventually(t, "database gone", func() string {
		err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database"}, &databasev1.Database{})
		if !apierrors.IsNotFound(err) {
			return fmt.Sprintf("get: %v", err)
		}
		return ""
	})
}

// finishUpgradeJob plays the Job controller and the kubelet for an upgrade
// Job: its pod ends with the result as its termination message.
func finishUpgradeJob(t *testing.T, ns, job string, res upgrade.Result) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: job + "-pod", Namespace: ns,
			Labels: map[string]string{batchv1.JobNameLabel: job, LabelUpgrade: "my-database", LabelManagedBy: ManagedByValue}},
		Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: containerUpgrade, Image: "postgres:17"}}},
	}
	if err := k8s.Create(testCtx, pod); err != nil {
		t.Fatal(err)
	}
	phase := corev1.PodSucceeded
	if !res.OK {
		phase = corev1.PodFailed
	}
	pod.Status.Phase = phase
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: containerUpgrade, State: corev1.ContainerState{
		Terminated: &corev1.ContainerStateTerminated{Message: string(upgrade.Encode(res))}}}}
	if err := k8s.Status().Update(testCtx, pod); err != nil {
		t.Fatal(err)
	}
}

// The operator's side of a major upgrade, with the Jobs' results played: the
// preflight Job on the primary's node and volume with the old image collecting
// and the new one checking; then the StatefulSet at 0 replicas, the upgrade
// Job once no instance pod is left, and after it the new system identifier in
// status and in the internal Secret before the StatefulSet runs the new image.
func TestMajorUpgradeRunsItsJobsAndRecordsTheNewIdentity(t *testing.T) {
	ns := newNamespace(t)
	if err := applyYAML(t, ns, strings.Replace(seedManifest, "postgres:14", "postgres:15", 1)); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "my-database", databasev1.PhaseProvisioning)
	db := getDB(t, ns, "my-database")
	pod := createPod(t, db, 0)
	routeService(t, db, pod)
	instances.set(ns, "my-database-0", primaryReport("my-database-0", nil))
	setStatefulSetStatus(t, ns, "my-database", 1, 1, true)
	waitPhase(t, ns, "my-database", databasev1.PhaseReady)

	if err := applyYAML(t, ns, strings.Replace(seedManifest, "postgres:14", "postgres:17", 1)); err != nil {
		t.Fatal(err)
	}
	check := "my-database-upgrade-check-g2-1"
	var job batchv1.Job
	eventually(t, "the preflight Job", func() string {
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: check}, &job); err != nil {
			return err.Error()
		}
		return ""
	})
	spec := job.Spec.Template.Spec
	if len(spec.InitContainers) != 2 || spec.InitContainers[1].Image != "postgres:15" || spec.Containers[0].Image != "postgres:17" ||
		!strings.Contains(strings.Join(spec.Containers[0].Command, " "), "upgrade check") {
		t.Errorf("preflight Job containers: init %+v main %+v", spec.InitContainers, spec.Containers)
	}
	if spec.Volumes[0].PersistentVolumeClaim == nil || spec.Volumes[0].PersistentVolumeClaim.ClaimName != "data-my-database-0" {
		t.Errorf("preflight Job volume %+v", spec.Volumes[0])
	}
	if a := spec.Affinity; a == nil || a.PodAffinity == nil || a.PodAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0].LabelSelector.MatchLabels["statefulset.kubernetes.io/pod-name"] != "my-database-0" {
		t.Errorf("preflight Job affinity %+v", spec.Affinity)
	}
	if _, ok := job.Spec.Template.Labels[LabelDatabase]; ok {
		t.Errorf("the Job's pods carry the instance label %s: the Services would select them", LabelDatabase)
	}
	if sts, _ := getSTS(ns, "my-database"); sts.Spec.Template.Spec.Containers[0].Image != "postgres:15" || *sts.Spec.Replicas != 1 {
		t.Errorf("the StatefulSet changed during the preflight")
	}

	finishUpgradeJob(t, ns, check, upgrade.Result{OK: true, Action: "check", Message: "passed"})
	eventually(t, "the instances stopping", func() string {
		db := getDB(t, ns, "my-database")
		sts, err := getSTS(ns, "my-database")
		if err != nil || db.Status.Upgrade == nil || db.Status.Upgrade.Phase != databasev1.UpgradeStopping || *sts.Spec.Replicas != 0 {
			return fmt.Sprintf("upgrade %+v", db.Status.Upgrade)
		}
		return ""
	})
	if err := k8s.Delete(testCtx, pod); err != nil {
		t.Fatal(err)
	}
	run := "my-database-upgrade-run-g2-1"
	eventually(t, "the upgrade Job", func() string {
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: run}, &job); err != nil {
			return err.Error()
		}
		if db := getDB(t, ns, "my-database"); db.Status.Phase != databasev1.PhaseUpgrading || db.Status.Ready {
			return fmt.Sprintf("phase %s", db.Status.Phase)
		}
		return ""
	})
	if !strings.Contains(strings.Join(job.Spec.Template.Spec.Containers[0].Command, " "), "upgrade run --pgdata=/var/lib/postgresql/data/pgdata --old=/old --method=link") {
		t.Errorf("upgrade Job command %v", job.Spec.Template.Spec.Containers[0].Command)
	}
	now := time.Now().UTC()
	finishUpgradeJob(t, ns, run, upgrade.Result{OK: true, Action: "upgrade", SystemIdentifier: "7311", RebuiltIndexes: 3,
		CollationChange: "glibc 2.36 → 2.41", Message: "upgraded", Steps: []upgrade.Step{{Name: "pg_upgrade", Started: now, Finished: now}}})
	eventually(t, "starting on the new image with the new identity", func() string {
		db := getDB(t, ns, "my-database")
		sts, err := getSTS(ns, "my-database")
		var internal corev1.Secret
		_ = k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-internal"}, &internal)
		if err != nil || db.Status.Upgrade == nil || db.Status.Upgrade.Phase != databasev1.UpgradeStarting || db.Status.SystemIdentifier != "7311" ||
			db.Status.DataVersion != 17 || string(internal.Data[agentapi.InternalSystemIDFile]) != "7311" ||
			sts.Spec.Template.Spec.Containers[0].Image != "postgres:17" || *sts.Spec.Replicas != 1 {
			return fmt.Sprintf("upgrade %+v id %s/%s data %d sts %s×%d", db.Status.Upgrade, db.Status.SystemIdentifier,
				internal.Data[agentapi.InternalSystemIDFile], db.Status.DataVersion, sts.Spec.Template.Spec.Containers[0].Image, *sts.Spec.Replicas)
		}
		return ""
	})
	if u := getDB(t, ns, "my-database").Status.Upgrade; u.RebuiltIndexes != 3 || u.CollationChange == "" || len(u.Steps) < 2 || u.StoppedAt == nil {
		t.Errorf("status.upgrade %+v", u)
	}
}
