//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/example/postgres-operator/internal/testenv"
)

// repoRoot is the repository's top directory (the tests run in test/e2e).
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// readmeBlock returns the shell block that follows the marker
// <!-- e2e:NAME --> in the README: what the README tells users to run.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)<!-- e2e:" + regexp.QuoteMeta(name) + " -->\\s*```sh\\n(.*?)```")
	m := re.FindSubmatch(b)
	if m == nil {
		t.Fatalf("README has no block marked e2e:%s", name)
	}
	return string(m[1])
}

// runReadme runs a README block verbatim with bash (errexit, pipefail) from the
// repository's root, with kubectl's current namespace set to the test's.
func (c *cluster) runReadme(name string, env ...string) string {
	c.t.Helper()
	raw, err := run(context.Background(), "", "config", "view", "--raw", "--minify")
	if err != nil {
		c.t.Fatalf("kubectl config view: %v\n%s", err, raw)
	}
	kubeconfig := filepath.Join(c.t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(raw), 0o600); err != nil {
		c.t.Fatal(err)
	}
	if out, err := run(context.Background(), "", "--kubeconfig", kubeconfig, "config", "set-context", "--current", "--namespace", c.ns); err != nil {
		c.t.Fatalf("setting the namespace: %v\n%s", err, out)
	}
	block := readmeBlock(c.t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", block)
	cmd.Dir = repoRoot(c.t)
	cmd.Env = append(append(os.Environ(), "KUBECONFIG="+kubeconfig), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("README block %s failed: %v\n%s\n--- the block:\n%s", name, err, out, block)
	}
	return klogLine.ReplaceAllString(string(out), "")
}

// scrapeURL reads a metrics endpoint (with an optional bearer token, any
// certificate) and parses the text format.
func scrapeURL(t *testing.T, url, token string) map[string]*dto.MetricFamily {
	t.Helper()
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // #nosec G402 -- the operator's self-signed metrics certificate
	}}
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	families, err := testenv.ParseMetrics(resp.Body)
	if err != nil {
		t.Fatalf("parsing %s: %v", url, err)
	}
	return families
}

// seriesValue is the value of name{labels...}; ok false when absent.
func seriesValue(families map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	return testenv.Sample(families, name, labels...)
}

// The README's Monitoring section: both endpoints answer with the key series of
// a Database with a standby and a backup schedule, and config/prometheus
// applies against the Prometheus Operator's CRDs.
func TestMonitoring(t *testing.T) {
	c := newCluster(t)
	c.mustApply(strings.Replace(myDatabase, "replicas: 1", "replicas: 2", 1) + `---
apiVersion: database.example.com/v1
kind: Backup
metadata:
  name: my-schedule
spec:
  databaseRef: {name: my-database}
  schedule: "* * * * *"
  retention: 1
`)
	c.waitPhase("my-database", "Ready", readyTimeout)
	c.eventually(4*time.Minute, "a completed run of the schedule", func() string {
		if n := c.jsonpath("backup/my-schedule", "{.status.backupCount}"); n == "" || n == "0" {
			return "backupCount " + n + ", phase " + c.jsonpath("backup/my-schedule", "{.status.phase}")
		}
		return ""
	})

	t.Run("the operator's Go memory limit follows its container's", func(t *testing.T) {
		// config/manager: limits.memory 256Mi; --memory-limit-ratio 0.9.
		logs, _ := run(context.Background(), "", "logs", "-n", operatorNamespace, "deploy/postgres-operator-controller-manager", "--tail=-1")
		if !strings.Contains(logs, "soft memory limit set from the container's limit") || !strings.Contains(logs, `"softLimitBytes":241591910`) {
			t.Errorf("the operator did not set its soft memory limit to 90%% of 256Mi; its log:\n%s", tailOf(logs, 2000))
		}
	})

	t.Run("the README's commands show both endpoints' key series", func(t *testing.T) {
		cleanup := func() {
			_, _ = run(context.Background(), "", "delete", "clusterrolebinding", "metrics-scraper", "--ignore-not-found")
			_, _ = run(context.Background(), "", "-n", operatorNamespace, "delete", "serviceaccount", "metrics-scraper", "--ignore-not-found")
		}
		cleanup()
		t.Cleanup(cleanup)
		out := c.runReadme("monitoring-scrape")
		for _, want := range []*regexp.Regexp{
			regexp.MustCompile(`(?m)^postgres_up 1$`),
			regexp.MustCompile(`(?m)^postgres_is_primary 1$`),
			regexp.MustCompile(`(?m)^postgres_replication_lag_bytes\{application_name="my-database-1"\} \d+`),
			regexp.MustCompile(`(?m)^postgres_database_size_bytes\{datname="mydb"\} [1-9]`),
			regexp.MustCompile(`(?m)^postgres_operator_database_ready\{database="my-database",namespace="` + c.ns + `"\} 1$`),
			regexp.MustCompile(`(?m)^postgres_operator_backup_last_success_timestamp_seconds\{backup="my-schedule",database="my-database",namespace="` + c.ns + `"\} [1-9]`),
		} {
			if !want.MatchString(out) {
				t.Errorf("the README's commands printed no line matching %s:\n%s", want, out)
			}
		}
	})

	t.Run("the standby's agent and the operator report the rest", func(t *testing.T) {
		ip := c.must("get", "pod", "my-database-1", "-o", "jsonpath={.status.podIP}")
		standby := scrapeURL(t, "http://"+net.JoinHostPort(ip, "9187")+"/metrics", "")
		for name, want := range map[string]float64{"postgres_up": 1, "postgres_is_primary": 0, "postgres_standby_streaming": 1} {
			if got, ok := seriesValue(standby, name); !ok || got != want {
				t.Errorf("standby %s = %v (present %v), want %v", name, got, ok, want)
			}
		}
		for _, name := range []string{"postgres_volume_available_bytes", "postgres_standby_replay_lag_bytes", "postgres_wal_bytes_total"} {
			if _, ok := seriesValue(standby, name); !ok {
				t.Errorf("standby: no %s", name)
			}
		}

		c.must("create", "serviceaccount", "scraper")
		c.must("create", "clusterrolebinding", c.ns+"-scraper", "--clusterrole=postgres-operator-metrics-reader",
			"--serviceaccount="+c.ns+":scraper")
		t.Cleanup(func() { _, _ = run(context.Background(), "", "delete", "clusterrolebinding", c.ns+"-scraper") })
		token := c.must("create", "token", "scraper")
		svc, err := run(context.Background(), "", "-n", operatorNamespace, "get", "service",
			"postgres-operator-controller-manager-metrics-service", "-o", "jsonpath={.spec.clusterIP}")
		if err != nil {
			t.Fatal(err)
		}
		op := scrapeURL(t, "https://"+net.JoinHostPort(strings.TrimSpace(svc), "8443")+"/metrics", token)
		db := []string{"namespace", c.ns, "database", "my-database"}
		for _, x := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"postgres_operator_database_ready", db, 1},
			{"postgres_operator_database_primary_available", db, 1},
			{"postgres_operator_database_instances", db, 2},
			{"postgres_operator_database_instances_ready", db, 2},
			{"postgres_operator_database_phase", append(db, "phase", "Ready"), 1},
			{"postgres_operator_database_phase", append(db, "phase", "Failed"), 0},
			{"postgres_operator_backup_schedule_interval_seconds", []string{"namespace", c.ns, "backup", "my-schedule"}, 60},
			{"postgres_operator_backup_last_run_failed", []string{"namespace", c.ns, "backup", "my-schedule"}, 0},
		} {
			if got, ok := seriesValue(op, x.name, x.labels...); !ok || got != x.want {
				t.Errorf("operator %s%v = %v (present %v), want %v", x.name, x.labels, got, ok, x.want)
			}
		}
		if got, ok := seriesValue(op, "postgres_operator_backup_last_size_bytes", "namespace", c.ns, "backup", "my-schedule"); !ok || got <= 0 {
			t.Errorf("operator backup_last_size_bytes = %v (present %v), want > 0", got, ok)
		}
		success, _ := seriesValue(op, "postgres_operator_backup_last_success_timestamp_seconds", "namespace", c.ns, "backup", "my-schedule")
		if age := time.Since(time.Unix(int64(success), 0)); age < 0 || age > 10*time.Minute {
			t.Errorf("last success %v ago, want within the test", age)
		}
		// Runs of the schedule report through it.
		for _, m := range op["postgres_operator_backup_created_timestamp_seconds"].GetMetric() {
			for _, l := range m.Label {
				if l.GetName() == "backup" && strings.HasPrefix(l.GetValue(), "my-schedule-") {
					t.Errorf("a run has series of its own: %s", l.GetValue())
				}
			}
		}
	})

	t.Run("config/prometheus applies against the Prometheus Operator's CRDs", func(t *testing.T) {
		cmd := exec.Command("hack/monitoring-crds.sh")
		cmd.Dir = repoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("hack/monitoring-crds.sh: %v\n%s", err, out)
		}
		t.Cleanup(func() {
			_, _ = run(context.Background(), "", "delete", "-k", filepath.Join(repoRoot(t), "config/prometheus"), "--ignore-not-found")
		})
		out := c.runReadme("monitoring-install")
		for _, want := range []string{"podmonitor.monitoring.coreos.com/postgres-operator-databases",
			"servicemonitor.monitoring.coreos.com/postgres-operator-controller-manager",
			"prometheusrule.monitoring.coreos.com/postgres-operator-alerts", "configmap/postgres-operator-dashboard"} {
			if !strings.Contains(out, want) {
				t.Errorf("after the README's install, %s is missing:\n%s", want, out)
			}
		}
	})
}

// tailOf is the last n bytes of s.
func tailOf(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
