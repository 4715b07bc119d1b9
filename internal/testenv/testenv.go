// Package testenv starts the real kube-apiserver and etcd (envtest) that the
// controller test suites run against, and holds their polling helper.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// repoRoot is the repository root, found from this file's location.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// New returns an envtest environment with the project's CRDs and the binaries
// built by hack/k8s-binaries.sh (KUBEBUILDER_ASSETS when set).
func New() (*envtest.Environment, error) {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		out, err := exec.Command(filepath.Join(repoRoot(), "hack", "k8s-binaries.sh"), "etcd", "kube-apiserver").Output()
		if err != nil {
			return nil, fmt.Errorf("hack/k8s-binaries.sh: %w", err)
		}
		assets = strings.TrimSpace(string(out))
	}
	return &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(repoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}, nil
}

// Timeout bounds Eventually.
const Timeout = 20 * time.Second

// Eventually polls cond until it returns "" or Timeout passes, then fails the test
// with cond's last explanation.
func Eventually(t testing.TB, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	last := ""
	for time.Now().Before(deadline) {
		if last = cond(); last == "" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s: %s", what, last)
}
