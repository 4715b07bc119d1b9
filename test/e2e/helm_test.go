//go:build e2e

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The README's Helm block, as it is: the chart installs the operator (adopting
// what the kustomize install created), runs a Database, and `helm uninstall`
// keeps the CRDs and the Database; the kustomize install then takes it over.
func TestHelmChartInstallAndUninstallKeepsData(t *testing.T) {
	helmBin := os.Getenv("HELM")
	if helmBin == "" {
		t.Fatal("HELM is not set (make e2e builds the pinned Helm and sets it)")
	}
	c := newCluster(t)
	img, err := run(context.Background(), "", "-n", operatorNamespace, "get", "deploy", "postgres-operator-controller-manager",
		"-o", "jsonpath={.spec.template.spec.containers[0].image}")
	img = strings.TrimSpace(img)
	if err != nil || !strings.Contains(img, ":") {
		t.Fatalf("the deployed operator's image: %q %v", img, err)
	}
	repo, tag := img[:strings.LastIndex(img, ":")], img[strings.LastIndex(img, ":")+1:]

	// One operator at a time: the kustomize install steps aside, and is put back
	// at the end by the README's install.yaml block (its cluster roles too,
	// which the chart adopted and removed).
	c.must("-n", operatorNamespace, "scale", "deploy/postgres-operator-controller-manager", "--replicas=0")
	t.Cleanup(func() {
		_, _ = exec.Command(helmBin, "uninstall", "postgres-operator", "--namespace", "postgres-operator", "--wait").CombinedOutput()
		_, _ = run(context.Background(), "", "delete", "namespace", "postgres-operator", "--ignore-not-found", "--wait=false")
		// The README's install.yaml block puts it back.
		t.Logf("README install.yaml block:\n%s", c.runReadme("install-yaml", "IMG="+img))
	})
	c.eventually(time.Minute, "the kustomize operator to stop", func() string {
		if out, _ := run(context.Background(), "", "-n", operatorNamespace, "get", "pods", "-l", "control-plane=controller-manager", "-o", "name"); strings.TrimSpace(out) != "" {
			return out
		}
		return ""
	})

	out := c.runReadme("helm-install", "IMAGE_REPOSITORY="+repo, "IMAGE_TAG="+tag,
		"PATH="+filepath.Dir(helmBin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Logf("README helm block:\n%s", out)
	for _, want := range []string{"STATUS: deployed", "database.database.example.com/my-database condition met",
		`release "postgres-operator" uninstalled`, "databases.database.example.com"} {
		if !strings.Contains(out, want) {
			t.Errorf("the README's Helm block printed no %q", want)
		}
	}
	if got := c.jsonpath("database/my-database", "{.metadata.name}"); got != "my-database" {
		t.Fatalf("the Database is gone after helm uninstall")
	}
	if out, _ := run(context.Background(), "", "-n", "postgres-operator", "get", "deploy", "-o", "name"); strings.TrimSpace(out) != "" {
		t.Errorf("helm uninstall left %s", out)
	}
	if phase := c.jsonpath("pod/my-database-0", "{.status.phase}"); phase != "Running" {
		t.Errorf("the instance is %q after the operator's uninstall, want Running", phase)
	}
	if out, err := c.psql("my-database-0", false, "CREATE TABLE kept AS SELECT 1 AS x"); err != nil {
		t.Errorf("the instance does not serve without the operator: %v %s", err, out)
	}
}
