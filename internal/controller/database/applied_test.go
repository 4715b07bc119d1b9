package database

import (
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"k8s.io/utils/ptr"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/scheme"
)

// freshReconciler is an operator that just started: nothing in memory, its
// writes counted.
func freshReconciler(t *testing.T) (*Reconciler, *writeCounter) {
	t.Helper()
	w := &writeCounter{}
	cfg := rest.CopyConfig(restCfg)
	cfg.WrapTransport = w.wrap
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}
	return &Reconciler{Client: c, APIReader: c, Instances: instances, AgentImage: "postgres-operator:test"}, w
}

func TestARestartedOperatorWritesNothingForAnUnchangedDatabase(t *testing.T) {
	ns := newNamespace(t)
	db := readyDatabase(t, ns, 3, "7000000000000000042", nil)
	time.Sleep(time.Second) // the role labels and the last status write
	r, w := freshReconciler(t)
	if _, err := r.Reconcile(testCtx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(db)}); err != nil {
		t.Fatal(err)
	}
	if n, log := w.snapshot(); n != 0 {
		t.Errorf("a restarted operator wrote %d times for an unchanged Database: %v", n, log)
	}
	// Every child carries the hash of its configuration.
	var sts appsv1.StatefulSet
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: "my-database"}, &sts); err != nil {
		t.Fatal(err)
	}
	if sts.Annotations[AnnotationAppliedHash] == "" {
		t.Errorf("StatefulSet annotations = %v; want %s", sts.Annotations, AnnotationAppliedHash)
	}
}

// The StatefulSet controller writes a StatefulSet's status whenever one of its
// pods changes, which moves its resourceVersion: the operator checks the live
// object still holds its configuration instead of applying it again (make
// bench-scale: 4 StatefulSet applies per Database for one image change,
// before). Drift of the spec is still corrected.
func TestAStatefulSetWhoseStatusAloneChangedIsNotAppliedAgain(t *testing.T) {
	ns := newNamespace(t)
	db := readyDatabase(t, ns, 3, "7000000000000000043", nil)
	time.Sleep(time.Second)
	r, w := freshReconciler(t)
	req := ctrl.Request{NamespacedName: client.ObjectKeyFromObject(db)}
	stsPath := "/apis/apps/v1/namespaces/" + ns + "/statefulsets/my-database"
	applies := func(from int) int {
		_, log := w.snapshot()
		n := 0
		for _, l := range log[from:] {
			if l == "PATCH "+stsPath {
				n++
			}
		}
		return n
	}
	if _, err := r.Reconcile(testCtx, req); err != nil {
		t.Fatal(err)
	}
	key := types.NamespacedName{Namespace: ns, Name: "my-database"}
	var sts appsv1.StatefulSet
	if err := k8s.Get(testCtx, key, &sts); err != nil {
		t.Fatal(err)
	}
	rv := sts.ResourceVersion
	sts.Status.ObservedGeneration = sts.Generation
	sts.Status.CurrentRevision = "my-database-status-moved"
	if err := k8s.Status().Update(testCtx, &sts); err != nil {
		t.Fatal(err)
	}
	if sts.ResourceVersion == rv {
		t.Fatal("the status update did not move the resourceVersion")
	}
	from, _ := w.snapshot()
	if _, err := r.Reconcile(testCtx, req); err != nil {
		t.Fatal(err)
	}
	if n := applies(from); n != 0 {
		t.Errorf("the StatefulSet was applied %d times after only its status changed", n)
	}

	// Drift of the spec is applied again (by this reconciler or the suite's
	// manager, whichever comes first: both run this code).
	patch := client.MergeFrom(sts.DeepCopy())
	sts.Spec.Replicas = ptr.To(int32(0))
	if err := k8s.Patch(testCtx, &sts, patch); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Reconcile(testCtx, req); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := k8s.Get(testCtx, key, &sts); err != nil {
			t.Fatal(err)
		}
		if *sts.Spec.Replicas == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas = %d 10 s after they drifted, want 3", *sts.Spec.Replicas)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The memory-less path of applyIfChanged on the real API server: a child
// applied by one operator process is left alone by the next while it holds
// the configuration, and applied again once a field of it drifted (the hash
// annotation stays: drift does not touch it).
func TestARestartedOperatorCorrectsDriftMadeWhileItWasDown(t *testing.T) {
	ns := newNamespace(t)
	key := types.NamespacedName{Namespace: ns, Name: "child"}
	ac := func() *corev1ac.ConfigMapApplyConfiguration {
		return corev1ac.ConfigMap(key.Name, ns).WithLabels(map[string]string{"a": "b"}).WithData(map[string]string{"k": "v"})
	}
	live := func() *corev1.ConfigMap {
		var cm corev1.ConfigMap
		if err := k8s.Get(testCtx, key, &cm); err != nil {
			t.Fatal(err)
		}
		return &cm
	}
	apply := func(what string, want int) {
		t.Helper()
		r, w := freshReconciler(t)
		var l *corev1.ConfigMap
		if want == 0 || what != "create" {
			l = live()
		}
		if err := r.applyIfChanged(testCtx, "ConfigMap", ac(), l, func() *string { return nil }); err != nil {
			t.Fatal(err)
		}
		if n, log := w.snapshot(); n != want {
			t.Errorf("%s: %d writes %v, want %d", what, n, log, want)
		}
	}
	apply("create", 1)
	apply("restart, unchanged", 0)
	cm := live()
	patch := client.MergeFrom(cm.DeepCopy())
	cm.Data["k"] = "drifted"
	if err := k8s.Patch(testCtx, cm, patch); err != nil {
		t.Fatal(err)
	}
	apply("restart after drift", 1)
	if got := live().Data["k"]; got != "v" {
		t.Errorf("data = %q after the restarted operator's apply; want v", got)
	}
	apply("restart after the correction", 0)
}

func TestAppliedDifferenceNamesTheFirstFieldLiveDoesNotHold(t *testing.T) {
	cases := []struct {
		name       string
		want, have map[string]any
		diff       string
	}{
		{"equal", map[string]any{"a": 1}, map[string]any{"a": 1}, ""},
		{"live has more (defaults)", map[string]any{"a": 1}, map[string]any{"a": 1, "b": 2}, ""},
		{"value differs", map[string]any{"s": map[string]any{"x": "1"}}, map[string]any{"s": map[string]any{"x": "2"}}, ".s.x"},
		{"missing", map[string]any{"a": 1, "b": 2}, map[string]any{"a": 1}, ".b"},
		{"empty map absent", map[string]any{"e": map[string]any{}}, map[string]any{}, ""},
		{"list longer in live", map[string]any{"l": []any{1}}, map[string]any{"l": []any{1, 2}}, ".l"},
		{"list element", map[string]any{"l": []any{map[string]any{"n": "a"}}}, map[string]any{"l": []any{map[string]any{"n": "b", "x": 1}}}, ".l[0].n"},
		{"type fields of embedded objects ignored", map[string]any{"t": []any{map[string]any{"kind": "PersistentVolumeClaim", "apiVersion": "v1", "x": 1}}},
			map[string]any{"t": []any{map[string]any{"x": 1}}}, ""},
		{"namespace of embedded objects ignored", map[string]any{"t": []any{map[string]any{"metadata": map[string]any{"namespace": "a"}}}},
			map[string]any{"t": []any{map[string]any{"metadata": map[string]any{}}}}, ""},
		{"own namespace compared", map[string]any{"metadata": map[string]any{"namespace": "a"}}, map[string]any{"metadata": map[string]any{}}, ".metadata.namespace"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := appliedDifference(c.want, c.have); got != c.diff {
				t.Errorf("appliedDifference = %q, want %q", got, c.diff)
			}
		})
	}
}

// The reconciler's caches hold only existing Databases: once a Database is
// deleted, its applied records, agent tokens and agent client are dropped
// (issue 24: every deleted or re-created Database leaked an entry), and a
// re-created one of the same name starts with none of the old tokens.
func TestADeletedDatabaseLeavesNothingInTheReconcilersCaches(t *testing.T) {
	ns := newNamespace(t)
	db := readyDatabase(t, ns, 1, "7000000000000000044", nil)
	r, _ := freshReconciler(t)
	key := client.ObjectKeyFromObject(db)
	if _, err := r.Reconcile(testCtx, ctrl.Request{NamespacedName: key}); err != nil {
		t.Fatal(err)
	}
	held := func() (applied int, tokens bool) {
		r.applied.Range(func(k, _ any) bool {
			if strings.Contains(k.(string), "/"+ns+"/") {
				applied++
			}
			return true
		})
		_, tokens = r.tokens.Load(key)
		return applied, tokens
	}
	if a, tok := held(); a == 0 || !tok {
		t.Fatalf("after a reconcile the caches hold %d applied records and tokens %v: the test proves nothing", a, tok)
	}
	if got := r.rememberToken(&databasev1.Database{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: db.Name, UID: "another-incarnation"}}, "new-token"); len(got) != 1 {
		t.Errorf("a re-created Database inherited the previous tokens: %d of them", len(got))
	}
	if err := k8s.Delete(testCtx, db); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Reconcile(testCtx, ctrl.Request{NamespacedName: key}); err != nil {
		t.Fatal(err)
	}
	if a, tok := held(); a != 0 || tok {
		t.Errorf("after the deletion the caches still hold %d applied records and tokens %v", a, tok)
	}
	if _, ok := r.agentClients.Load(key); ok {
		t.Error("the agent client of the deleted Database is still held")
	}
}
