// Package lint proves the rules of .golangci.yml that keep the architecture:
// a deliberately wrong import fails golangci-lint, the right one passes.
package lint

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/example/postgres-operator"

// TestTheLinterKeepsTheOperatorOffTheAgentRuntime writes throwaway packages
// into the tree (removed afterwards) and runs the pinned golangci-lint on
// each: the controllers and the backup Jobs may import the contract
// (internal/agentapi) but not the agent runtime (internal/instance), except in
// tests, which start real agents; the contract imports neither.
func TestTheLinterKeepsTheOperatorOffTheAgentRuntime(t *testing.T) {
	bin := os.Getenv("GOLANGCI_LINT")
	if bin == "" {
		t.Skip("GOLANGCI_LINT is not set (make test sets it to the pinned binary)")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	// Probes a killed run left behind would break `make lint`: remove them.
	for _, dir := range []string{"internal/controller", "internal/backup", "internal/agentapi"} {
		stale, _ := filepath.Glob(filepath.Join(root, dir, "zzlintprobe*"))
		for _, s := range stale {
			_ = os.RemoveAll(s)
		}
	}
	for _, tc := range []struct {
		name, dir, file, imp string
		wantFail             bool
	}{
		{"a controller importing the agent runtime", "internal/controller", "probe.go", "internal/instance", true},
		{"the backup Jobs importing the agent runtime", "internal/backup", "probe.go", "internal/instance", true},
		{"the contract importing the agent runtime", "internal/agentapi", "probe.go", "internal/instance", true},
		{"the contract importing a controller", "internal/agentapi", "probe.go", "internal/controller/database", true},
		{"a controller importing the contract", "internal/controller", "probe.go", "internal/agentapi", false},
		{"a controller's test starting a real agent", "internal/controller", "probe_test.go", "internal/instance", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			suffix := make([]byte, 4)
			if _, err := rand.Read(suffix); err != nil {
				t.Fatal(err)
			}
			pkg := "zzlintprobe" + hex.EncodeToString(suffix)
			dir := filepath.Join(root, tc.dir, pkg)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.RemoveAll(dir) })
			src := "package " + pkg + "\n\nimport _ \"" + module + "/" + tc.imp + "\"\n"
			if err := os.WriteFile(filepath.Join(dir, tc.file), []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			if strings.HasSuffix(tc.file, "_test.go") {
				// A package needs a non-test file.
				if err := os.WriteFile(filepath.Join(dir, "doc.go"), []byte("package "+pkg+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command(bin, "run", "--config", filepath.Join(root, ".golangci.yml"), "--enable-only", "depguard", "./"+filepath.Join(tc.dir, pkg)+"/")
			cmd.Dir = root
			out, err := cmd.CombinedOutput()
			switch {
			case tc.wantFail && err == nil:
				t.Errorf("golangci-lint passed an import of %s from %s:\n%s", tc.imp, tc.dir, out)
			case tc.wantFail && !strings.Contains(string(out), "depguard"):
				t.Errorf("golangci-lint failed, but not on the depguard rule: %v\n%s", err, out)
			case !tc.wantFail && err != nil:
				t.Errorf("golangci-lint refused an allowed import of %s from %s: %v\n%s", tc.imp, tc.dir, err, out)
			}
		})
	}
}
