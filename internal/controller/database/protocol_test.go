package database

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/pki"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/example/postgres-operator/internal/testenv"
)

// previousRelease is the last commit before the versioned contract
// (protocol 0: unversioned paths, no protocol annotation or status field).
// Its agent is built from the repository's history and run for real.
const previousRelease = "2dea8187c0f609949b82f9fe755066245773052f"

// TestTheOperatorReadsAgentsOfThisReleaseAndThePrevious runs real agents (the
// previous release's, built from git history, and this one's) in standalone
// mode on a real PostgreSQL and reaches each as the operator does, by its
// pod: the previous release's pod (no annotation) at the unversioned paths,
// this release's (annotated) under /v1, which the previous agent does not
// serve. And an operator or restore Job of the previous release (unversioned
// paths) still reaches this release's agent.
func TestTheOperatorReadsAgentsOfThisReleaseAndThePrevious(t *testing.T) {
	if _, err := postgres.FindBinaries(""); err != nil {
		t.Skipf("no PostgreSQL binaries: %v (hack/ensure-postgres.sh installs them)", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("the agent runs PostgreSQL as the postgres user: run as root")
	}
	if ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(agentapi.AgentPort)); err != nil {
		t.Skipf("agent port %d is busy: %v", agentapi.AgentPort, err)
	} else {
		_ = ln.Close()
	}
	root := testenv.RepoRoot()
	previous := buildPreviousAgent(t, root)
	current := filepath.Join(t.TempDir(), "manager")
	if out, err := goBuild(root, current); err != nil {
		t.Fatalf("building this release: %v\n%s", err, out)
	}

	const token = "agent-token-0123456789"
	pod := func(annotations map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "db-0", Annotations: annotations},
			// An agent run outside a pod: no TLS directory, the token.
			Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: agentapi.ContainerName, Command: []string{"/manager", "instance"}}}},
			Status: corev1.PodStatus{PodIP: "127.0.0.1"}}
	}
	c := NewHTTPInstanceClient()
	auth := AgentAuth{Tokens: []string{token}}
	base := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(agentapi.AgentPort))

	t.Run("the previous release's agent, read at the unversioned paths", func(t *testing.T) {
		stop := startAgentBinary(t, previous, token, "")
		defer stop()
		p := pod(nil)
		st := waitForStatus(t, c, p, auth)
		if st.Role != agentapi.RolePrimary || !st.Running || st.Protocol != agentapi.PreviousProtocolVersion {
			t.Errorf("status = %+v", st)
		}
		if err := c.SetSlots(context.Background(), p, auth, nil); err != nil {
			t.Errorf("an instruction to the previous agent: %v", err)
		}
		// The previous agent knows no /v1: reaching it there would fail.
		if code := httpGet(t, base+agentapi.Versioned(agentapi.PathStatus), token); code != http.StatusNotFound {
			t.Errorf("the previous agent answered %d at /v1 (the test would not tell the paths apart)", code)
		}
	})

	t.Run("this release's agent, read under /v1 and still at the unversioned paths", func(t *testing.T) {
		// This protocol is HTTPS with client certificates: the Database's CA,
		// the instances' server certificate, the operator's client.
		now := time.Now()
		db := &databasev1.Database{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns", UID: "u1"}}
		ca, err := pki.NewCA("ns/db", now)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := pki.Issue(ca, serverLeaf(db, ""), now)
		if err != nil {
			t.Fatal(err)
		}
		httpc, err := (&Reconciler{}).agentTLS(db, ca, now)
		if err != nil {
			t.Fatal(err)
		}
		auth := AgentAuth{HTTPS: httpc}
		tlsDir := t.TempDir()
		for name, b := range map[string][]byte{agentapi.TLSCertFile: leaf.CertPEM, agentapi.TLSKeyFile: leaf.KeyPEM, agentapi.TLSCAFile: ca.CertPEM} {
			if err := os.WriteFile(filepath.Join(tlsDir, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		stop := startAgentBinary(t, current, token, tlsDir)
		defer stop()
		p := pod(map[string]string{agentapi.ProtocolAnnotation: strconv.Itoa(agentapi.ProtocolVersion)})
		st := waitForStatus(t, c, p, auth)
		if st.Role != agentapi.RolePrimary || !st.Running || st.Protocol != agentapi.ProtocolVersion {
			t.Errorf("status = %+v", st)
		}
		if err := c.SetSlots(context.Background(), p, auth, nil); err != nil {
			t.Errorf("an instruction under /v1: %v", err)
		}
		// What an operator or a restore Job of the previous release sends.
		old := agentapi.NewClient(httpc, "")
		base := "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(agentapi.AgentPort))
		if st, err := old.GetStatus(context.Background(), base); err != nil || st.Role != agentapi.RolePrimary {
			t.Errorf("the previous release's request: %+v %v", st, err)
		}
		if err := old.SetSlots(context.Background(), base, nil); err != nil {
			t.Errorf("the previous release's instruction: %v", err)
		}
	})
}

// buildPreviousAgent builds the binary of previousRelease from the
// repository's history, once per commit (cached outside the repository).
func buildPreviousAgent(t *testing.T, root string) string {
	t.Helper()
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(home, ".cache", "postgres-operator", "previous-agent-"+previousRelease[:12], "manager")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	src := t.TempDir()
	archive := exec.Command("git", "-C", root, "archive", "--format=tar", previousRelease)
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	untar.Stdin = pipe
	var stderr strings.Builder
	archive.Stderr = &stderr
	if err := untar.Start(); err != nil {
		t.Fatal(err)
	}
	if err := archive.Run(); err != nil {
		t.Fatalf("git archive %s (the previous release must be in the clone's history): %v %s", previousRelease, err, stderr.String())
	}
	if err := untar.Wait(); err != nil {
		t.Fatalf("unpacking the previous release: %v", err)
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := bin + ".tmp"
	if out, err := goBuild(src, tmp); err != nil {
		t.Fatalf("building the previous release: %v\n%s", err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

func goBuild(dir, out string) ([]byte, error) {
	cmd := exec.Command("go", "build", "-o", out, "./cmd")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd.CombinedOutput()
}

// startAgentBinary runs bin's instance subcommand in standalone mode as pod
// db-0 (the primary) with its agent at 127.0.0.1:AgentPort (HTTPS with the
// certificates of tlsDir when set), and returns how to stop it.
func startAgentBinary(t *testing.T, bin, token, tlsDir string) func() {
	t.Helper()
	dir, err := os.MkdirTemp("", "protocol-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"credentials/" + agentapi.CredentialsUsernameFile:      "app",
		"credentials/" + agentapi.CredentialsPasswordFile:      "app-password-1",
		"credentials/" + agentapi.CredentialsDatabaseFile:      "app",
		"internal/" + agentapi.InternalReplicationPasswordFile: "repl-password-1",
		"internal/" + agentapi.InternalAgentTokenFile:          token,
	}
	for name, v := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "db"), 0o755); err != nil {
		t.Fatal(err)
	}
	port := testenv.FreePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "instance", "--standalone", "--pod-name=db-0",
		"--app-user=app", "--app-database=app",
		"--pgdata="+filepath.Join(dir, "db", "pgdata"), "--run-dir="+filepath.Join(dir, "db", "run"),
		"--credentials-dir="+filepath.Join(dir, "credentials"), "--internal-dir="+filepath.Join(dir, "internal"),
		"--port="+strconv.Itoa(port), "--listen-addresses=127.0.0.1",
		"--agent-address=127.0.0.1", "--agent-port="+strconv.Itoa(agentapi.AgentPort), "--metrics-port=-1")
	if tlsDir != "" {
		cmd.Args = append(cmd.Args, agentapi.TLSDirArg(tlsDir), "--secret-dir="+filepath.Join(dir, "secret"))
	}
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	return func() {
		cancel()
		if err := cmd.Wait(); err != nil && !errors.Is(err, context.Canceled) && t.Failed() {
			t.Logf("agent %s: %v\n%s", bin, err, logs.String())
		}
		if t.Failed() {
			t.Logf("agent %s log:\n%s", bin, logs.String())
		}
	}
}

// waitForStatus reads the pod's agent through the operator's client until it
// reports a running primary (initdb takes a few seconds).
func waitForStatus(t *testing.T, c *HTTPInstanceClient, pod *corev1.Pod, auth AgentAuth) *agentapi.Status {
	t.Helper()
	var last InstanceReport
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		last = c.Statuses(context.Background(), []corev1.Pod{*pod}, auth)[pod.Name]
		if last.Err == nil && last.Status != nil && last.Status.Running && last.Status.Role == agentapi.RolePrimary {
			return last.Status
		}
	}
	t.Fatalf("the agent never reported a running primary: %+v %v", last.Status, last.Err)
	return nil
}

func httpGet(t *testing.T, url, token string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(fmt.Errorf("GET %s: %w", url, err))
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}
