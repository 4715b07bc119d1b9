package plugin

import (
	"bytes"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	databasev1 "github.com/example/postgres-operator/api/v1"
)

func TestParseLagReadsEachStandbysBytesAndSeconds(t *testing.T) {
	raw := []byte(`# TYPE postgres_replication_lag_bytes gauge
postgres_replication_lag_bytes{application_name="db-1"} 4096
postgres_replication_lag_bytes{application_name="db-2"} 0
# TYPE postgres_replication_lag_seconds gauge
postgres_replication_lag_seconds{application_name="db-1"} 1.5
# TYPE postgres_up gauge
postgres_up 1
`)
	got, err := parseLag(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got["db-1"] != (lag{Bytes: 4096, Seconds: 1.5}) || got["db-2"] != (lag{}) || len(got) != 2 {
		t.Errorf("parseLag = %+v", got)
	}
	if _, err := parseLag([]byte("not { metrics")); err == nil {
		t.Error("garbage parsed")
	}
}

func pod(name, role string, ready bool, restarts int32) corev1.Pod {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	return corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{labelRole: role}},
		Spec:       corev1.PodSpec{NodeName: "node-a"},
		Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}},
			ContainerStatuses: []corev1.ContainerStatus{{RestartCount: restarts}}},
	}
}

func TestRenderStatusShowsInstancesLagConditionsAndBackups(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	done := metav1.NewTime(now.Add(-time.Hour))
	finished := metav1.NewTime(now.Add(-10 * time.Minute))
	v := statusView{
		Now: now,
		DB: &databasev1.Database{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders"},
			Spec:       databasev1.DatabaseSpec{Image: "postgres:17"},
			Status: databasev1.DatabaseStatus{
				Phase: databasev1.PhaseDeploying, CurrentPrimary: "orders-1", Timeline: 3, Instances: "2/3", PostgresVersion: "17.6",
				LastPrimaryChange: &databasev1.PrimaryChange{Kind: databasev1.PrimaryChangeFailover, From: "orders-0", To: "orders-1",
					Phase: databasev1.PrimaryChangeCompleted, FinishedAt: &finished},
				Conditions: []metav1.Condition{{Type: "Ready", Status: "False", Reason: "Scaling", Message: "2 of 3 instances ready"}},
			},
		},
		Pods: []corev1.Pod{pod("orders-0", "replica", false, 4), pod("orders-1", "primary", true, 0), pod("orders-2", "replica", true, 0)},
		Lag:  map[string]lag{"orders-2": {Bytes: 8192, Seconds: 0.25}},
		Backups: []databasev1.Backup{{
			ObjectMeta: metav1.ObjectMeta{Name: "nightly"},
			Spec:       databasev1.BackupSpec{Schedule: "@daily"},
			Status: databasev1.BackupStatus{Phase: databasev1.BackupFailed, BackupTime: &done, SizeBytes: 3 << 20, Duration: "12s",
				Error: "Schedule \"@daily\": the latest run failed: pg_dump: out of memory"},
		}},
	}
	var b bytes.Buffer
	renderStatus(&b, v)
	out := b.String()
	for _, want := range []string{
		`Database shop/orders: phase Deploying, ready false, image postgres:17 \(PostgreSQL 17.6\)`,
		`Primary: orders-1, timeline 3; instances 2/3`,
		`Last primary change: Failover orders-0 → orders-1, Completed 10m0s ago`,
		`(?m)^orders-0\s+replica\s+false\s+4\s+not streaming\s+-\s+node-a`,
		`(?m)^orders-1\s+primary\s+true\s+0\s+-\s+-\s+node-a`,
		`(?m)^orders-2\s+replica\s+true\s+0\s+8192\s+250ms\s+node-a`,
		`(?m)^Ready\s+False\s+Scaling\s+`,
		`(?m)^nightly\s+@daily\s+Failed\s+1h0m0s ago\s+3.0 MiB\s+12s\s+Schedule "@daily": the latest run failed: pg_dump: out of memory`,
		`Not ready: 2 of 3 instances ready`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("status lacks %s:\n%s", want, out)
		}
	}

	v.LagErr = "lag unknown (forbidden)"
	b.Reset()
	renderStatus(&b, v)
	if !strings.Contains(b.String(), "lag unknown (forbidden)") || strings.Contains(b.String(), "not streaming") {
		t.Errorf("without the primary's metrics the lag must read unknown, not 'not streaming':\n%s", b.String())
	}
}

func TestKubectlGetsTheUsersConnectionFlags(t *testing.T) {
	o := &options{flags: genericclioptions.NewConfigFlags(true)}
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	o.flags.AddFlags(fs)
	if err := fs.Parse([]string{"--kubeconfig=/tmp/kc", "--context=prod", "-n", "shop", "--as=alice"}); err != nil {
		t.Fatal(err)
	}
	got := o.kubectlFlags()
	for _, want := range []string{"--kubeconfig=/tmp/kc", "--context=prod", "--as=alice"} {
		if !slices.Contains(got, want) {
			t.Errorf("kubectl flags %v lack %s", got, want)
		}
	}
	if ns := *o.flags.Namespace; ns != "shop" {
		t.Errorf("namespace flag = %q", ns)
	}
}

func TestRestoreNeedsABackup(t *testing.T) {
	cmd := NewCommand(&bytes.Buffer{}, &bytes.Buffer{})
	cmd.SetArgs([]string{"restore", "orders"})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "--backup is required") {
		t.Errorf("restore without --backup: %v", err)
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "-", 512: "512 B", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
