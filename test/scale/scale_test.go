//go:build scale

package scale

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// The reduced form of make bench-scale, in make check (make test-scale): 50
// Databases on kwok's fake nodes with scripted agents, asserting that the
// operator converges, then goes quiet: no write at steady state, none after a
// restart, and a bounded number of requests per Database. A hot loop (a
// status that flips, an apply that never sticks, a watch that re-triggers
// itself) fails it.

func startBench(t *testing.T) (*ControlPlane, string, *os.File) {
	t.Helper()
	ctrllog.SetLogger(logr.Discard())
	bin, kwok := os.Getenv("SCALE_K8S_BIN"), os.Getenv("KWOK")
	if bin == "" || kwok == "" {
		t.Fatal("SCALE_K8S_BIN and KWOK must be set (make test-scale)")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	operator := filepath.Join(t.TempDir(), "operator")
	build := exec.Command("go", "build", "-o", operator, "./test/scale/operator")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the benchmark's operator: %v\n%s", err, out)
	}
	log, err := os.Create(filepath.Join(t.TempDir(), "components.log"))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := StartControlPlane(context.Background(), ControlPlaneOptions{Bin: bin, Kwok: kwok,
		KwokStages: filepath.Join(filepath.Dir(kwok), "stages"), CRDs: filepath.Join(root, "config", "crd", "bases"), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cp.Stop()
		if t.Failed() {
			if b, err := os.ReadFile(log.Name()); err == nil && len(b) > 0 {
				t.Logf("last components' output:\n%s", tail(b, 4000))
			}
		}
		log.Close()
	})
	return cp, operator, log
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func TestFiftyDatabasesConvergeThenTheOperatorIsQuiet(t *testing.T) {
	cp, operator, log := startBench(t)
	const n = 50
	r, err := Run(context.Background(), cp, Options{
		Databases: n, Namespaces: 2, Agents: "scripted", Steady: 30 * time.Second,
		Unrelated: 400, UnrelatedSize: 100 << 10,
		ImageChange: true, Restart: true, Delete: true, Converge: 4 * time.Minute,
		Operator: operator, Out: testWriter{t}, Log: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]Convergence{"creation": r.Create, "image change": r.ImageChange, "deletion": r.Delete} {
		if c.N != n || len(c.Missing) > 0 {
			t.Errorf("%s: %d of %d Databases converged; not: %v", name, c.N, n, c.Missing)
		}
	}
	// Creation costs a bounded number of requests per Database (about 40
	// measured: children, events, status patches).
	if per := float64(r.CreateRequests.Sum(func(RequestKey) bool { return true })) / n; per > 80 {
		t.Errorf("%.1f requests per Database from creation to quiet; want at most 80: %v", per, r.CreateRequests)
	}
	// The rolling update replaces each pod once: the 1-instance Databases'
	// only pod, and the 3-instance ones' two standbys and then, after a
	// switchover, the old primary. A pod replaced again (a rollout that loses
	// its place, a failover during the rollout) shows here.
	deletes := map[string]int64{}
	for k, v := range r.ImageChangeRequests {
		if k.Verb == "delete" && k.Resource == "pods" {
			deletes[k.Class] += v
		}
	}
	if want := map[string]int64{"single": n / 2, "ha": 3 * n / 2}; deletes["single"] != want["single"] || deletes["ha"] != want["ha"] {
		t.Errorf("the image change deleted %v pods, want %v (each pod once)", deletes, want)
	}
	if r.SteadyWrites["all"] != 0 {
		t.Errorf("the operator wrote %d times in a %0.fs steady state (1-instance: %d, 3-instance: %d): %v",
			r.SteadyWrites["all"], r.SteadySeconds, r.SteadyWrites["single"], r.SteadyWrites["ha"], r.SteadyAll)
	}
	// Reads at steady state: the live Lease read of each reconcile (one per
	// 30 s per Database) and nothing that grows with time.
	if perSec := float64(r.SteadyAll.Sum(func(RequestKey) bool { return true })) / r.SteadySeconds / n; perSec > 0.2 {
		t.Errorf("%.3f requests per second per Database at steady state; want at most 0.2: %v", perSec, r.SteadyAll)
	}
	if r.LeaseWritesPerSecond == 0 {
		t.Error("the simulated agents renewed no Lease: the steady state measured nothing of them")
	}
	if n := r.RestartWrites.Sum(func(RequestKey) bool { return true }); n != 0 || r.Resync == 0 {
		t.Errorf("restart: re-synced in %s with %d writes for unchanged Databases, want 0: %v", r.Resync, n, r.RestartWrites)
	}
	if r.UnrelatedRSS > 10<<20 {
		t.Errorf("the operator grew by %.1f MiB when unrelated Secrets and ConfigMaps appeared; want at most 10", mib(r.UnrelatedRSS))
	}
	if r.UnrelatedCacheRequests.Sum(func(k RequestKey) bool { return k.Class == "unrelated" }) != 0 {
		t.Errorf("the operator made requests in the unrelated namespace: %v", r.UnrelatedCacheRequests)
	}
}

func TestWithUnreachableAgentsTheChildrenConvergeAndTheOperatorWritesNothingMore(t *testing.T) {
	cp, operator, log := startBench(t)
	const n = 10
	r, err := Run(context.Background(), cp, Options{
		Databases: n, Namespaces: 1, Agents: "unreachable", Steady: 20 * time.Second, Converge: 3 * time.Minute,
		Operator: operator, Out: testWriter{t}, Log: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.Create.N != n {
		t.Errorf("%d of %d Databases got their pods with the agents unreachable; not: %v", r.Create.N, n, r.Create.Missing)
	}
	if r.SteadyWrites["all"] != 0 {
		t.Errorf("with the agents unreachable the operator wrote %d times at steady state: %v", r.SteadyWrites["all"], r.SteadyAll)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
