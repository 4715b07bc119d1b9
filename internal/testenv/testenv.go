// Package testenv starts the real kube-apiserver and etcd (envtest) that the
// controller test suites run against, and holds their polling helper.
package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/yaml"
)

// RepoRoot is the repository root, found from this file's location.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// New returns an envtest environment with the project's CRDs and the binaries
// built by hack/k8s-binaries.sh (KUBEBUILDER_ASSETS when set).
func New() (*envtest.Environment, error) {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		out, err := exec.Command(filepath.Join(RepoRoot(), "hack", "k8s-binaries.sh"), "etcd", "kube-apiserver").Output()
		if err != nil {
			return nil, fmt.Errorf("hack/k8s-binaries.sh: %w", err)
		}
		assets = strings.TrimSpace(string(out))
	}
	return &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd", "bases")},
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

// ApplyYAML server-side applies a manifest into ns the way `kubectl apply
// --server-side` does.
func ApplyYAML(ctx context.Context, c client.Client, ns, manifest string) error {
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(manifest), &u.Object); err != nil {
		return fmt.Errorf("parsing manifest: %w", err)
	}
	u.SetNamespace(ns)
	return c.Patch(ctx, u, client.Apply, client.FieldOwner("kubectl"), client.ForceOwnership)
}

// StartManager runs mgr until stop is called; stop returns the manager's error.
func StartManager(mgr manager.Manager) (ctx context.Context, stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	return ctx, func() error {
		cancel()
		return <-done
	}
}

// FreePort returns a TCP port that was free on the loopback interface.
func FreePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		// Never hand out the same port twice in one test binary: a port returned
		// earlier may not be bound yet by the server it was meant for.
		if !handedOut[p] {
			handedOut[p] = true
			return p
		}
	}
}

var (
	portsMu   sync.Mutex
	handedOut = map[int]bool{}
)
