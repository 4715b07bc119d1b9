// Package chart tests the Helm chart in dist/chart: its copies of config/ are
// current, it lints, and it renders what the kustomize install has, for
// several values.
package chart

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

const (
	root  = "../.."
	chart = root + "/dist/chart"
)

// TestChartFilesAreThoseOfConfig: the chart's files/ are byte-for-byte the
// config/ files they copy (make chart refreshes them).
func TestChartFilesAreThoseOfConfig(t *testing.T) {
	crds, err := filepath.Glob(root + "/config/crd/bases/*.yaml")
	if err != nil || len(crds) == 0 {
		t.Fatalf("no CRDs in config: %v", err)
	}
	pairs := map[string]string{
		"config/rbac/role.yaml":                 "files/manager-role.yaml",
		"config/prometheus/podmonitor.yaml":     "files/podmonitor.yaml",
		"config/prometheus/servicemonitor.yaml": "files/servicemonitor.yaml",
		"config/prometheus/prometheusrule.yaml": "files/prometheusrule.yaml",
		"config/prometheus/dashboard.json":      "files/dashboard.json",
	}
	for _, c := range crds {
		pairs["config/crd/bases/"+filepath.Base(c)] = "files/crds/" + filepath.Base(c)
	}
	for src, dst := range pairs {
		a, err := os.ReadFile(filepath.Join(root, src))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(chart, dst))
		if err != nil {
			t.Errorf("%s: %v (run make chart)", dst, err)
			continue
		}
		if !bytes.Equal(a, b) {
			t.Errorf("dist/chart/%s differs from %s: run make chart", dst, src)
		}
	}
	copies, _ := filepath.Glob(chart + "/files/crds/*.yaml")
	if len(copies) != len(crds) {
		t.Errorf("the chart has %d CRDs, config %d", len(copies), len(crds))
	}
}

func helm(t *testing.T) string {
	t.Helper()
	h := os.Getenv("HELM")
	if h == "" {
		t.Skip("HELM is not set (make test builds the pinned Helm and sets it)")
	}
	return h
}

// render runs helm template with args and returns the objects by kind/name.
func render(t *testing.T, args ...string) map[string]*unstructured.Unstructured {
	t.Helper()
	cmd := exec.Command(helm(t), append([]string{"template", "pgo", chart, "--namespace", "pgo-system"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, stderr.String())
	}
	objs := map[string]*unstructured.Unstructured{}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding the rendered chart: %v", err)
		}
		if len(u.Object) == 0 {
			continue
		}
		key := u.GetKind() + "/" + u.GetName()
		if prev, dup := objs[key]; dup {
			if prev.GetNamespace() == u.GetNamespace() {
				t.Errorf("%s rendered twice", key)
			}
			key += "@" + u.GetNamespace()
		}
		objs[key] = u
	}
	return objs
}

func readYAML(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestChartLints(t *testing.T) {
	out, err := exec.Command(helm(t), "lint", "--strict", chart).CombinedOutput()
	if err != nil {
		t.Errorf("helm lint: %v\n%s", err, out)
	}
}

func deploymentArgs(t *testing.T, objs map[string]*unstructured.Unstructured) []string {
	t.Helper()
	d := objs["Deployment/pgo-postgres-operator-controller-manager"]
	if d == nil {
		t.Fatal("no Deployment")
	}
	containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	var args []string
	for _, a := range containers[0].(map[string]any)["args"].([]any) {
		args = append(args, a.(string))
	}
	return args
}

func TestDefaultValuesRenderTheKustomizeInstall(t *testing.T) {
	objs := render(t, "--set", "image.repository=registry.example.com/pgo", "--set", "image.tag=v1.2.3")
	for _, want := range []string{
		"CustomResourceDefinition/databases.database.example.com", "CustomResourceDefinition/backups.database.example.com",
		"CustomResourceDefinition/restores.database.example.com", "ServiceAccount/pgo-postgres-operator-controller-manager",
		"ClusterRole/pgo-postgres-operator-manager-role", "ClusterRoleBinding/pgo-postgres-operator-manager-rolebinding",
		"Role/pgo-postgres-operator-leader-election", "RoleBinding/pgo-postgres-operator-leader-election",
		"ClusterRole/pgo-postgres-operator-metrics-reader", "Deployment/pgo-postgres-operator-controller-manager",
		"Service/pgo-postgres-operator-metrics",
	} {
		if objs[want] == nil {
			t.Errorf("%s not rendered", want)
		}
	}
	for key, o := range objs {
		if strings.HasPrefix(key, "CustomResourceDefinition/") {
			if o.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
				t.Errorf("%s is not kept on uninstall", key)
			}
			want := readYAML(t, filepath.Join(root, "config/crd/bases", "database.example.com_"+strings.TrimSuffix(o.GetName(), ".database.example.com")+".yaml"))
			if !reflect.DeepEqual(o.Object["spec"], want["spec"]) {
				t.Errorf("%s: the rendered spec differs from config/crd/bases", key)
			}
		}
		if strings.HasPrefix(key, "Monitor") || strings.Contains(key, "Monitor/") || strings.HasPrefix(key, "PrometheusRule/") {
			t.Errorf("%s rendered while monitoring is off", key)
		}
	}
	role := readYAML(t, filepath.Join(root, "config/rbac/role.yaml"))
	if got := objs["ClusterRole/pgo-postgres-operator-manager-role"].Object["rules"]; !reflect.DeepEqual(got, role["rules"]) {
		t.Errorf("the manager role's rules differ from config/rbac/role.yaml")
	}
	args := deploymentArgs(t, objs)
	for _, want := range []string{"manager", "--leader-elect", "--cluster-domain=cluster.local", "--metrics-bind-address=:8443",
		"--default-backup-location=pvc://postgres-backups", "--default-backup-pvc-size=2Gi"} {
		if !slices.Contains(args, want) {
			t.Errorf("args %v lack %s", args, want)
		}
	}
	d := objs["Deployment/pgo-postgres-operator-controller-manager"]
	containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	if img := containers[0].(map[string]any)["image"]; img != "registry.example.com/pgo:v1.2.3" {
		t.Errorf("image = %v", img)
	}
	if sc, _, _ := unstructured.NestedBool(d.Object, "spec", "template", "spec", "securityContext", "runAsNonRoot"); !sc {
		t.Error("the manager may run as root")
	}
}

func TestWatchNamespacesBindTheManagerRoleOnlyThere(t *testing.T) {
	objs := render(t, "--set", "watchNamespaces={team-a,team-b}", "--set", "clusterDomain=corp.example")
	if objs["ClusterRoleBinding/pgo-postgres-operator-manager-rolebinding"] != nil {
		t.Error("a namespace-scoped install binds the manager role cluster-wide")
	}
	var bound []string
	for key, o := range objs {
		if strings.HasPrefix(key, "RoleBinding/") && o.GetName() == "pgo-postgres-operator-manager" {
			bound = append(bound, o.GetNamespace())
		}
	}
	slices.Sort(bound)
	if !slices.Equal(bound, []string{"team-a", "team-b"}) {
		t.Errorf("manager role bound in %v, want team-a and team-b", bound)
	}
	if objs["ClusterRoleBinding/pgo-postgres-operator-cluster-reader"] == nil {
		t.Error("no cluster-reader binding (StorageClasses, metrics token checks)")
	}
	args := deploymentArgs(t, objs)
	for _, want := range []string{"--watch-namespaces=team-a,team-b", "--cluster-domain=corp.example"} {
		if !slices.Contains(args, want) {
			t.Errorf("args %v lack %s", args, want)
		}
	}
}

func TestCRDsCanBeLeftOutOrNotKept(t *testing.T) {
	for key := range render(t, "--set", "crds.install=false") {
		if strings.HasPrefix(key, "CustomResourceDefinition/") {
			t.Errorf("%s rendered with crds.install=false", key)
		}
	}
	for key, o := range render(t, "--set", "crds.keep=false") {
		if strings.HasPrefix(key, "CustomResourceDefinition/") && o.GetAnnotations()["helm.sh/resource-policy"] != "" {
			t.Errorf("%s kept with crds.keep=false", key)
		}
	}
}

func TestMonitoringRendersConfigPrometheus(t *testing.T) {
	objs := render(t, "--set", "monitoring.podMonitor.enabled=true", "--set", "monitoring.serviceMonitor.enabled=true",
		"--set", "monitoring.prometheusRule.enabled=true", "--set", "monitoring.grafanaDashboard.enabled=true")
	rule := objs["PrometheusRule/pgo-postgres-operator-alerts"]
	if rule == nil {
		t.Fatal("no PrometheusRule")
	}
	if want := readYAML(t, filepath.Join(root, "config/prometheus/prometheusrule.yaml")); !reflect.DeepEqual(rule.Object["spec"], want["spec"]) {
		t.Error("the chart's alert rules differ from config/prometheus (templating must not touch {{ $labels }})")
	}
	if pm := objs["PodMonitor/pgo-postgres-operator-databases"]; pm == nil || pm.GetNamespace() != "pgo-system" {
		t.Errorf("PodMonitor = %v", pm)
	}
	sm := objs["ServiceMonitor/pgo-postgres-operator-controller-manager"]
	if sm == nil {
		t.Fatal("no ServiceMonitor")
	}
	sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
	svc := objs["Service/pgo-postgres-operator-metrics"]
	for k, v := range sel {
		if svc.GetLabels()[k] != v {
			t.Errorf("the ServiceMonitor selects %s=%s, which the metrics Service lacks", k, v)
		}
	}
	cm := objs["ConfigMap/pgo-postgres-operator-dashboard"]
	if cm == nil || cm.GetLabels()["grafana_dashboard"] != "1" {
		t.Fatalf("dashboard ConfigMap = %v", cm)
	}
	dash, _ := os.ReadFile(filepath.Join(root, "config/prometheus/dashboard.json"))
	if got, _, _ := unstructured.NestedString(cm.Object, "data", "dashboard.json"); strings.TrimSpace(got) != strings.TrimSpace(string(dash)) {
		t.Error("the dashboard ConfigMap differs from config/prometheus/dashboard.json")
	}
}
