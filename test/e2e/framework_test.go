//go:build e2e

// Package e2e runs the spec's kubectl scenarios against a real cluster (the local
// one of `make cluster-up`, or any cluster in $KUBECONFIG with the operator
// deployed and the images postgres:15, postgres:15.18 and postgres:17 pullable).
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

const operatorNamespace = "postgres-operator-system"

func TestMain(m *testing.M) {
	if os.Getenv("KUBECONFIG") == "" {
		fmt.Fprintln(os.Stderr, "e2e: KUBECONFIG is not set (make e2e sets it)")
		os.Exit(1)
	}
	out, err := run(context.Background(), "", "rollout", "status", "-n", operatorNamespace,
		"deploy/postgres-operator-controller-manager", "--timeout=180s")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: the operator is not running: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	if stuck := podsStuckTerminating(4*time.Minute, 3*time.Minute); stuck != "" {
		fmt.Fprintf(os.Stderr, "e2e: pods stuck terminating (the local cluster leaks under churn):\n%s", stuck)
		code = 1
	}
	os.Exit(code)
}

// podsStuckTerminating waits up to wait for every pod being deleted to be gone
// and lists those whose deletion started more than older ago ("" when none).
func podsStuckTerminating(wait, older time.Duration) string {
	deadline := time.Now().Add(wait)
	for {
		out, err := run(context.Background(), "", "get", "pods", "-A", "-o",
			`jsonpath={range .items[?(@.metadata.deletionTimestamp)]}{.metadata.namespace}/{.metadata.name} {.metadata.deletionTimestamp}{"\n"}{end}`)
		var stuck []string
		if err == nil {
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				f := strings.Fields(line)
				if len(f) != 2 {
					continue
				}
				if at, err := time.Parse(time.RFC3339, f[1]); err == nil && time.Since(at) > older {
					stuck = append(stuck, fmt.Sprintf("%s deleted %s ago", f[0], time.Since(at).Round(time.Second)))
				}
			}
		}
		if err == nil && strings.TrimSpace(out) == "" {
			return ""
		}
		if time.Now().After(deadline) {
			if err != nil {
				return "listing pods: " + err.Error()
			}
			return strings.Join(stuck, "\n")
		}
		time.Sleep(5 * time.Second)
	}
}

// run executes kubectl with stdin and returns combined output.
func run(ctx context.Context, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kubectl", args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	return klogLine.ReplaceAllString(buf.String(), ""), err
}

// klogLine matches kubectl's own log lines (e.g. "E1201 22:26:11.897913 25045
// websocket.go:296] Unknown stream id 1, discarding message"), which it may write
// into the output of `kubectl exec` and which are not the command's output.
var klogLine = regexp.MustCompile(`(?m)^[EWI]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ \]]+:\d+\] .*\n?`)

// cluster is one test's namespace.
type cluster struct {
	t  *testing.T
	ns string
}

// newCluster creates a namespace for the test, deleted at the end; on failure it
// first dumps what is needed to debug.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' {
			return r
		}
		return '-' // subtests: "TestChaos/async"
	}, strings.ToLower(strings.TrimPrefix(t.Name(), "Test")))
	if len(name) > 40 {
		name = name[:40]
	}
	c := &cluster{t: t, ns: fmt.Sprintf("e2e-%s-%s", name, hex.EncodeToString(b))}
	c.must("create", "namespace", c.ns)
	// Every pod of the suite (instances, Jobs, the test's own) must meet the
	// restricted Pod Security Standard: the API server refuses any other.
	c.must("label", "namespace", c.ns, "pod-security.kubernetes.io/enforce=restricted",
		"pod-security.kubernetes.io/enforce-version=latest")
	t.Cleanup(func() {
		if t.Failed() {
			c.dump()
		}
		if os.Getenv("E2E_KEEP") == "" {
			_, _ = run(context.Background(), "", "delete", "namespace", c.ns, "--wait=false")
		}
	})
	return c
}

func (c *cluster) kubectl(args ...string) (string, error) {
	return run(context.Background(), "", append([]string{"-n", c.ns}, args...)...)
}

func (c *cluster) must(args ...string) string {
	c.t.Helper()
	out, err := c.kubectl(args...)
	if err != nil {
		c.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(out)
}

// apply is `kubectl apply -f - <<EOF`.
func (c *cluster) apply(manifest string) (string, error) {
	return run(context.Background(), manifest, "-n", c.ns, "apply", "-f", "-")
}

func (c *cluster) mustApply(manifest string) {
	c.t.Helper()
	if out, err := c.apply(manifest); err != nil {
		c.t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
}

// jsonpath is `kubectl get <obj> -o jsonpath=<path>`, "" when it fails.
func (c *cluster) jsonpath(obj, path string) string {
	out, err := c.kubectl("get", obj, "-o", "jsonpath="+path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// eventually polls cond every second until it returns "" or timeout passes.
func (c *cluster) eventually(timeout time.Duration, what string, cond func() string) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		if last = cond(); last == "" {
			return
		}
		time.Sleep(time.Second)
	}
	c.t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, last)
}

func (c *cluster) waitPhase(db, phase string, timeout time.Duration) {
	c.t.Helper()
	c.eventually(timeout, db+" phase "+phase, func() string {
		if got := c.jsonpath("database/"+db, "{.status.phase}"); got != phase {
			return fmt.Sprintf("phase %q; Ready condition: %s", got,
				c.jsonpath("database/"+db, `{.status.conditions[?(@.type=="Ready")].message}`))
		}
		// Ready kept by the grace period while a check fails is not what a test
		// waiting for Ready after a disruption means.
		if phase == "Ready" {
			if r := c.jsonpath("database/"+db, `{.status.conditions[?(@.type=="Ready")].reason}`); r == "Degraded" {
				return "Ready within the grace period of a failing check: " +
					c.jsonpath("database/"+db, `{.status.conditions[?(@.type=="Ready")].message}`)
			}
		}
		return ""
	})
}

// psql runs a query in a pod's postgres container. With viaService it connects as
// the application user to the read-write Service (DNS + kube-proxy); otherwise as
// the local superuser over the pod's own socket, to the application database.
func (c *cluster) psql(pod string, viaService bool, sql string) (string, error) {
	if viaService {
		return c.kubectl("exec", pod, "-c", "postgres", "--", "sh", "-c",
			appPSQL+` -v ON_ERROR_STOP=1 -Atc "$0"`, sql)
	}
	return c.kubectl("exec", pod, "-c", "postgres", "--", "sh", "-c",
		`psql -h /controller/run -U postgres -d "$(cat /etc/postgres-operator/credentials/database)" -v ON_ERROR_STOP=1 -Atc "$0"`, sql)
}

// appPSQL is psql as an application connects: the credentials Secret's uri
// (sslmode=verify-full) with its ca.crt as the root certificate.
const appPSQL = `PGSSLROOTCERT=/etc/postgres-operator/credentials/ca.crt psql "$(cat /etc/postgres-operator/credentials/uri)"`

// restrictedContext is the container securityContext the restricted Pod
// Security Standard requires, for the test's own pods.
const restrictedContext = `{allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}, runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}`

// serviceAnswers waits until the read-write Service answers from pod: Ready means
// the Service's EndpointSlice lists the primary; kube-proxy programs the node
// asynchronously, a moment later.
func (c *cluster) serviceAnswers(pod string) {
	c.t.Helper()
	// 3 minutes: the first test after the reduced scale benchmark once waited
	// more than 30 s for kube-proxy on this 2-core machine, and a later CI run
	// saw a Service time out for 90 s.
	c.eventually(3*time.Minute, "the read-write Service to answer", func() string {
		if out, err := c.psql(pod, true, "SELECT 1"); err != nil {
			return fmt.Sprintf("%v %s", err, out)
		}
		return ""
	})
}

func (c *cluster) dump() {
	c.t.Logf("=== dump of namespace %s", c.ns)
	for _, args := range [][]string{
		{"get", "database,statefulset,pod,svc,pvc,secret", "-o", "wide"},
		{"get", "database", "-o", "yaml"},
		{"describe", "pods"},
		{"get", "events", "--sort-by=.lastTimestamp"},
	} {
		out, _ := c.kubectl(args...)
		c.t.Logf("$ kubectl %s\n%s", strings.Join(args, " "), out)
	}
	pods, _ := c.kubectl("get", "pods", "-o", "jsonpath={.items[*].metadata.name}")
	for _, p := range strings.Fields(pods) {
		out, _ := c.kubectl("logs", p, "--all-containers", "--tail=80")
		c.t.Logf("$ kubectl logs %s\n%s", p, out)
	}
	out, _ := run(context.Background(), "", "logs", "-n", operatorNamespace, "-l", "control-plane=controller-manager", "--tail=150")
	c.t.Logf("operator logs:\n%s", out)
}
