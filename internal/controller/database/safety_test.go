package database

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
)

// readyDatabase brings a seed Database with the given replicas to Ready through
// scripted pods and agent reports; the primary reports system identifier sysID.
func readyDatabase(t *testing.T, ns string, replicaCount int32, sysID string, edit func(string) string) *databasev1.Database {
	t.Helper()
	manifest := strings.Replace(strings.Replace(seedManifest, "postgres:14", "postgres:15", 1), "replicas: 1", fmt.Sprintf("replicas: %d", replicaCount), 1)
	if edit != nil {
		manifest = edit(manifest)
	}
	if err := applyYAML(t, ns, manifest); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "my-database", databasev1.PhaseProvisioning)
	db := getDB(t, ns, "my-database")
	standbys := map[string]int64{}
	for i := int32(0); i < replicaCount; i++ {
		pod := createPod(t, db, int(i))
		if i == 0 {
			routeService(t, db, pod)
			continue
		}
		name := fmt.Sprintf("my-database-%d", i)
		standbys[name] = 0
		r := replicaReport(name)
		r.Status.SystemIdentifier = sysID
		instances.set(ns, name, r)
	}
	p := primaryReport("my-database-0", standbys)
	p.Status.SystemIdentifier, p.Status.DataVersion, p.Status.Bootstrapped = sysID, 15, true
	instances.set(ns, "my-database-0", p)
	setStatefulSetStatus(t, ns, "my-database", replicaCount, replicaCount, true)
	return waitPhase(t, ns, "my-database", databasev1.PhaseReady)
}

// findEvent returns "" when namespace ns has an event of that type and reason
// whose message contains msg, else what is missing.
func findEvent(ns, typ, reason, msg string) string {
	var events corev1.EventList
	if err := k8s.List(testCtx, &events, client.InNamespace(ns)); err != nil {
		return err.Error()
	}
	for _, e := range events.Items {
		if e.Type == typ && e.Reason == reason && strings.Contains(e.Message, msg) {
			return ""
		}
	}
	return fmt.Sprintf("no %s event %s (%q) among %d", typ, reason, msg, len(events.Items))
}

func condition(t *testing.T, ns, typ string) *metav1.Condition {
	t.Helper()
	return meta.FindStatusCondition(getDB(t, ns, "my-database").Status.Conditions, typ)
}

func TestIdentityIsRecordedInStatusAndGivenToTheAgents(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, 1, "7301", nil)
	eventually(t, "identity recorded", func() string {
		db := getDB(t, ns, "my-database")
		c := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionInitialized)
		if db.Status.SystemIdentifier != "7301" || db.Status.DataVersion != 15 || c == nil || c.Status != metav1.ConditionTrue || c.Reason != databasev1.ReasonBootstrapped {
			return fmt.Sprintf("systemIdentifier %q dataVersion %d Initialized %+v", db.Status.SystemIdentifier, db.Status.DataVersion, c)
		}
		return ""
	})
	var internal corev1.Secret
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-internal"}, &internal); err != nil {
		t.Fatal(err)
	}
	if got := string(internal.Data[agentapi.InternalSystemIDFile]); got != "7301" {
		t.Errorf("internal Secret system-identifier = %q: the agents would not know the Database is initialised", got)
	}
	// A deleted internal Secret comes back with the identity, so the agents still
	// know the Database is initialised, and a Warning says it was regenerated.
	oldToken := string(internal.Data[agentapi.InternalAgentTokenFile])
	if err := k8s.Delete(testCtx, &internal); err != nil {
		t.Fatal(err)
	}
	eventually(t, "internal Secret recreated with the identity", func() string {
		var now corev1.Secret
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-internal"}, &now); err != nil {
			return err.Error()
		}
		if string(now.Data[agentapi.InternalSystemIDFile]) != "7301" || string(now.Data[agentapi.InternalAgentTokenFile]) == oldToken {
			return "recreated without the identity, or with the old token"
		}
		return findEvent(ns, corev1.EventTypeWarning, "InternalSecretRegenerated", "")
	})
	// The identity never changes afterwards, whatever an instance reports.
	p := primaryReport("my-database-0", nil)
	p.Status.SystemIdentifier = "9999"
	instances.set(ns, "my-database-0", p)
	for i := 0; i < 5; i++ {
		if id := getDB(t, ns, "my-database").Status.SystemIdentifier; id != "7301" {
			t.Fatalf("system identifier changed to %s", id)
		}
	}
}

func TestAdoptedVolumesAreReported(t *testing.T) {
	ns := newNamespace(t)
	manifest := strings.Replace(seedManifest, "postgres:14", "postgres:15", 1)
	if err := applyYAML(t, ns, manifest); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "my-database", databasev1.PhaseProvisioning)
	db := getDB(t, ns, "my-database")
	routeService(t, db, createPod(t, db, 0))
	p := primaryReport("my-database-0", nil)
	p.Status.SystemIdentifier, p.Status.DataVersion, p.Status.Bootstrapped = "7302", 15, false // found, not created
	instances.set(ns, "my-database-0", p)
	setStatefulSetStatus(t, ns, "my-database", 1, 1, true)
	eventually(t, "adoption reported", func() string {
		c := condition(t, ns, databasev1.ConditionInitialized)
		if c == nil || c.Reason != databasev1.ReasonAdoptedExistingData || !strings.Contains(c.Message, "7302") || !strings.Contains(c.Message, "PostgreSQL 15") {
			return fmt.Sprintf("%+v", c)
		}
		return ""
	})
}

func TestDriftOfChildrenIsCorrected(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, 1, "7303", nil)
	// kubectl scale statefulset my-database --replicas=0
	sts, err := getSTS(ns, "my-database")
	if err != nil {
		t.Fatal(err)
	}
	sts.Spec.Replicas = ptr.To(int32(0))
	if err := k8s.Update(testCtx, sts); err != nil {
		t.Fatal(err)
	}
	// kubectl edit service my-database: a selector that routes elsewhere.
	var svc corev1.Service
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database"}, &svc); err != nil {
		t.Fatal(err)
	}
	svc.Spec.Selector = map[string]string{"app": "something-else"}
	if err := k8s.Update(testCtx, &svc); err != nil {
		t.Fatal(err)
	}
	eventually(t, "drift corrected", func() string {
		sts, err := getSTS(ns, "my-database")
		if err != nil {
			return err.Error()
		}
		var svc corev1.Service
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database"}, &svc); err != nil {
			return err.Error()
		}
		if *sts.Spec.Replicas != 1 || svc.Spec.Selector[LabelRole] != agentapi.RolePrimary || svc.Spec.Selector["app"] != "database" {
			return fmt.Sprintf("replicas %d selector %v", *sts.Spec.Replicas, svc.Spec.Selector)
		}
		return ""
	})
}

func TestChildrenWithOurNamesThatWeDoNotOwnAreNeverAdopted(t *testing.T) {
	ns := newNamespace(t)
	foreign := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "my-database-ro", Namespace: ns},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "billing"}, Ports: []corev1.ServicePort{{Port: 80}}},
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "my-database-credentials", Namespace: ns}, StringData: map[string]string{"password": "theirs"}}
	for _, o := range []client.Object{foreign, secret} {
		if err := k8s.Create(testCtx, o); err != nil {
			t.Fatal(err)
		}
	}
	if err := applyYAML(t, ns, seedManifest); err != nil {
		t.Fatal(err)
	}
	db := waitPhase(t, ns, "my-database", databasev1.PhaseFailed)
	c := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionStalled)
	if c == nil || c.Status != metav1.ConditionTrue || c.Reason != databasev1.ReasonChildConflict ||
		!strings.Contains(c.Message, "Service "+ns+"/my-database-ro exists and is not owned by Database my-database") ||
		!strings.Contains(c.Message, "Secret "+ns+"/my-database-credentials exists and is not owned") {
		t.Errorf("Stalled = %+v", c)
	}
	var svc corev1.Service
	if err := k8s.Get(testCtx, client.ObjectKeyFromObject(foreign), &svc); err != nil {
		t.Fatal(err)
	}
	if len(svc.OwnerReferences) != 0 || svc.Spec.Selector["app"] != "billing" {
		t.Errorf("the foreign Service was taken over: owners %v selector %v", svc.OwnerReferences, svc.Spec.Selector)
	}
	var sec corev1.Secret
	if err := k8s.Get(testCtx, client.ObjectKeyFromObject(secret), &sec); err != nil {
		t.Fatal(err)
	}
	if len(sec.OwnerReferences) != 0 || string(sec.Data["password"]) != "theirs" {
		t.Errorf("the foreign Secret was changed: owners %v", sec.OwnerReferences)
	}
}

func TestStorageThatCannotGrowIsReportedWithoutTouchingReadiness(t *testing.T) {
	ns := newNamespace(t)
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: ns + "-fixed"}, Provisioner: "example.com/fixed", AllowVolumeExpansion: ptr.To(false)}
	if err := k8s.Create(testCtx, sc); err != nil {
		t.Fatal(err)
	}
	withClass := func(m string) string {
		return strings.Replace(m, "size: 10Gi", "size: 10Gi\n    storageClass: "+sc.Name, 1)
	}
	db := readyDatabase(t, ns, 1, "7304", withClass)
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data-my-database-0", Namespace: ns, Labels: selectorLabels(db)},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, StorageClassName: &sc.Name,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")}}},
	}
	if err := k8s.Create(testCtx, pvc); err != nil {
		t.Fatal(err)
	}
	pvc.Status.Phase = corev1.ClaimBound
	pvc.Status.Capacity = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")}
	if err := k8s.Status().Update(testCtx, pvc); err != nil {
		t.Fatal(err)
	}
	if err := applyYAML(t, ns, strings.Replace(withClass(strings.Replace(seedManifest, "postgres:14", "postgres:15", 1)), "size: 10Gi", "size: 20Gi", 1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "StorageResized False ExpansionNotSupported", func() string {
		c := condition(t, ns, databasev1.ConditionStorageResized)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != databasev1.ReasonExpansionNotSupported ||
			!strings.Contains(c.Message, "data-my-database-0") || !strings.Contains(c.Message, sc.Name) {
			return fmt.Sprintf("%+v", c)
		}
		return ""
	})
	db = getDB(t, ns, "my-database")
	if db.Status.Phase != databasev1.PhaseReady || !db.Status.Ready || db.Status.ObservedGeneration != db.Generation {
		t.Errorf("phase %s ready %v observedGeneration %d/%d: a volume that cannot grow must not hide a healthy database",
			db.Status.Phase, db.Status.Ready, db.Status.ObservedGeneration, db.Generation)
	}
	if err := k8s.Get(testCtx, client.ObjectKeyFromObject(pvc), pvc); err != nil {
		t.Fatal(err)
	}
	if got := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; got.String() != "10Gi" {
		t.Errorf("PVC request patched to %s on a class that cannot expand", got.String())
	}
	// Role labelling still runs: a restarted primary is labelled again.
	var pod corev1.Pod
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-0"}, &pod); err != nil {
		t.Fatal(err)
	}
	delete(pod.Labels, LabelRole)
	if err := k8s.Update(testCtx, &pod); err != nil {
		t.Fatal(err)
	}
	eventually(t, "role label restored", func() string {
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-0"}, &pod); err != nil {
			return err.Error()
		}
		if pod.Labels[LabelRole] != agentapi.RolePrimary {
			return fmt.Sprintf("labels %v", pod.Labels)
		}
		return ""
	})
}

func TestSlotsAreKeptPerStandbyAndStandbysThatCannotCatchUpAreRecloned(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, 2, "7305", nil)
	eventually(t, "slot for the standby", func() string {
		if !slices.Contains(instances.given(ns), "my-database-0 slots pgop_my_database_1") {
			return fmt.Sprintf("instructions %v", instances.given(ns))
		}
		return ""
	})
	// The primary has the slot; the standby stopped at a position whose WAL the
	// primary no longer has.
	p := primaryReport("my-database-0", nil)
	p.Status.SystemIdentifier, p.Status.DataVersion = "7305", 15
	p.Status.Slots = []agentapi.SlotStatus{{Name: "pgop_my_database_1", WALStatus: "reserved"}}
	p.Status.OldestWALLSN, p.Status.WALSegmentSize = "0/9000000", 16<<20
	instances.set(ns, "my-database-0", p)
	s := replicaReport("my-database-1")
	s.Status.SystemIdentifier, s.Status.WALReceiverStatus, s.Status.ReplayLSN = "7305", "", "0/3000060"
	instances.set(ns, "my-database-1", s)
	for i := 0; i < 10; i++ {
		if slices.Contains(instances.given(ns), "my-database-1 reclone") {
			t.Fatal("re-cloned on a position comparison alone (a standby replaying local WAL after a restart looks the same)")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A new report, as the agent's next answer: the reconciler may still be
	// reading the previous one.
	st := *s.Status
	st.WALMissing = true
	s.Status = &st
	instances.set(ns, "my-database-1", s)
	eventually(t, "re-clone instruction", func() string {
		if !slices.Contains(instances.given(ns), "my-database-1 reclone") {
			return fmt.Sprintf("instructions %v", instances.given(ns))
		}
		return ""
	})
	eventually(t, "StandbyRecloning event", func() string {
		return findEvent(ns, corev1.EventTypeWarning, databasev1.ReasonStandbyRecloning, "removed")
	})
	// Scale down: the primary is told to keep no slot.
	if err := applyYAML(t, ns, strings.Replace(seedManifest, "postgres:14", "postgres:15", 1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "slots dropped on scale-down", func() string {
		if !slices.Contains(instances.given(ns), "my-database-0 slots ") {
			return fmt.Sprintf("instructions %v", instances.given(ns))
		}
		return ""
	})
}

func TestMissingPrimaryDataStallsAndTheAnnotationRebuildsItFromAStandby(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, 2, "7306", nil)
	eventually(t, "identity recorded", func() string {
		if id := getDB(t, ns, "my-database").Status.SystemIdentifier; id != "7306" {
			return id
		}
		return ""
	})
	instances.set(ns, "my-database-0", InstanceReport{Status: &agentapi.Status{Pod: "my-database-0", State: agentapi.StateDataMissing,
		Message: "the data directory is empty", Error: "PostgreSQL is not running"}})
	db := waitPhase(t, ns, "my-database", databasev1.PhaseFailed)
	c := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionStalled)
	if c == nil || c.Reason != databasev1.ReasonPrimaryDataMissing || !strings.Contains(c.Message, "PVC data-my-database-0") ||
		!strings.Contains(c.Message, "kubectl annotate database my-database database.example.com/recover-primary-from=my-database-1") {
		t.Errorf("Stalled = %+v", c)
	}
	if pa := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionPrimaryAvailable); pa == nil || pa.Status != metav1.ConditionFalse {
		t.Errorf("PrimaryAvailable = %+v", pa)
	}
	eventually(t, "role label removed from the refusing primary", func() string {
		var pod corev1.Pod
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database-0"}, &pod); err != nil {
			return err.Error()
		}
		if _, ok := pod.Labels[LabelRole]; ok {
			return fmt.Sprintf("labels %v", pod.Labels)
		}
		return ""
	})
	if slices.ContainsFunc(instances.given(ns), func(s string) bool { return strings.Contains(s, "recover") }) {
		t.Fatal("recovery started without the annotation")
	}
	db = getDB(t, ns, "my-database")
	patch := client.MergeFrom(db.DeepCopy())
	db.Annotations = map[string]string{databasev1.AnnotationRecoverPrimaryFrom: "my-database-1"}
	if err := k8s.Patch(testCtx, db, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, "recover instruction", func() string {
		if !slices.Contains(instances.given(ns), "my-database-0 recover my-database-1") {
			return fmt.Sprintf("instructions %v", instances.given(ns))
		}
		return ""
	})
	// Rebuilt: the annotation is removed, so that a later loss does not rebuild
	// from a then stale standby by itself.
	p := primaryReport("my-database-0", map[string]int64{"my-database-1": 0})
	p.Status.SystemIdentifier = "7306"
	instances.set(ns, "my-database-0", p)
	eventually(t, "annotation removed", func() string {
		if v, ok := getDB(t, ns, "my-database").Annotations[databasev1.AnnotationRecoverPrimaryFrom]; ok {
			return "still " + v
		}
		return ""
	})
}

func TestEditedPasswordRefreshesTheURIAndADeletedSecretIsRecreatedWithAWarning(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, 1, "7307", nil)
	eventually(t, "identity recorded", func() string {
		if id := getDB(t, ns, "my-database").Status.SystemIdentifier; id != "7307" {
			return id
		}
		return ""
	})
	key := types.NamespacedName{Namespace: ns, Name: "my-database-credentials"}
	var sec corev1.Secret
	if err := k8s.Get(testCtx, key, &sec); err != nil {
		t.Fatal(err)
	}
	sec.Data["password"] = []byte("Chosen-By-The-User-1")
	if err := k8s.Update(testCtx, &sec); err != nil {
		t.Fatal(err)
	}
	eventually(t, "uri refreshed", func() string {
		if err := k8s.Get(testCtx, key, &sec); err != nil {
			return err.Error()
		}
		if !strings.Contains(string(sec.Data["uri"]), ":Chosen-By-The-User-1@") || !strings.Contains(string(sec.Data["jdbc-uri"]), "password=Chosen-By-The-User-1") ||
			!strings.Contains(string(sec.Data["pgpass"]), ":Chosen-By-The-User-1\n") || !strings.Contains(string(sec.Data["ro-uri"]), ":Chosen-By-The-User-1@") {
			return "derived keys not refreshed"
		}
		return ""
	})
	old := string(sec.Data["password"])
	if err := k8s.Delete(testCtx, &sec); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Secret recreated with a new password and a Warning event", func() string {
		var now corev1.Secret
		if err := k8s.Get(testCtx, key, &now); err != nil {
			return err.Error()
		}
		if string(now.Data["password"]) == old || len(now.Data["password"]) != 32 {
			return "password not regenerated"
		}
		return findEvent(ns, corev1.EventTypeWarning, "CredentialsRegenerated", "")
	})
}
