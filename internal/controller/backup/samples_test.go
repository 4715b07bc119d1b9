package backup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// TestSamplesAreValid: every sample in config/samples (one per kind) is accepted
// by the API server with the CRDs' schemas and CEL rules (a server-side dry run).
func TestSamplesAreValid(t *testing.T) {
	ns := newNamespace(t)
	raw, err := os.ReadFile("../../../config/samples/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(raw, &k); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, f := range k.Resources {
		b, err := os.ReadFile(filepath.Join("../../../config/samples", f))
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(b, &u.Object); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		u.SetNamespace(ns)
		if err := k8s.Create(testCtx, u, client.DryRunAll); err != nil {
			t.Errorf("%s is refused: %v", f, err)
		}
		if strings.HasPrefix(u.GetAPIVersion(), "database.example.com/") {
			kinds[u.GetKind()] = true
		}
	}
	for _, kind := range []string{"Database", "Backup", "Restore"} {
		if !kinds[kind] {
			t.Errorf("no sample of %s", kind)
		}
	}
}
