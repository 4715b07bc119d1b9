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
	"k8s.io/apimachinery/pkg/api/equality"
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
	first := metav1.NewTime(now.Add(-48 * time.Hour))
	v := statusView{
		Now: now,
		DB: &databasev1.Database{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders"},
			Spec:       databasev1.DatabaseSpec{Image: "postgres:17"},
			Status: databasev1.DatabaseStatus{
				Phase: databasev1.PhaseDeploying, CurrentPrimary: "orders-1", Timeline: 3, Instances: "2/3", PostgresVersion: "17.6",
				LastPrimaryChange: &databasev1.PrimaryChange{Kind: databasev1.PrimaryChangeFailover, From: "orders-0", To: "orders-1",
					Phase: databasev1.PrimaryChangeCompleted, FinishedAt: &finished},
				Conditions: []metav1.Condition{{Type: "Ready", Status: "False", Reason: "Scaling", Message: "2 of 3 instances ready"},
					{Type: databasev1.ConditionRecoverable, Status: "True", Reason: databasev1.ReasonRecoverable}},
				WALArchive: &databasev1.WALArchiveStatus{Location: "s3://b/orders", LastArchivedWAL: "000000030000000000000009", PendingFiles: 1,
					FirstRecoverablePoint: &first, LastRecoverablePoint: &finished, UsableBaseBackups: 2},
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
		`WAL archive: s3://b/orders, last archived 000000030000000000000009, 1 files pending`,
		`Recoverable window: \S+ to \S+ \(2 usable base backups; kubectl pg restore orders --to-time …\)`,
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

// The Restore each combination of restore's flags asks for, and the
// combinations refused before anything is created.
func TestRestoreSpecFromFlags(t *testing.T) {
	no := false
	at := metav1.NewTime(time.Date(2026, 12, 7, 11, 59, 30, 0, time.UTC))
	for _, tc := range []struct {
		name string
		f    restoreFlags
		want databasev1.RestoreSpec
		err  string
	}{
		{"a logical backup", restoreFlags{backup: "nightly"}, databasev1.RestoreSpec{BackupRef: corev1.LocalObjectReference{Name: "nightly"}}, ""},
		{"to a time", restoreFlags{toTime: "2026-12-07T11:59:30Z"},
			databasev1.RestoreSpec{PointInTime: &databasev1.RestorePointInTime{RecoveryTarget: databasev1.RecoveryTarget{Time: &at}}}, ""},
		{"to an LSN, exclusive, from a Physical Backup, kept 2h", restoreFlags{toLSN: "0/3000060", exclusive: true, backup: "base", keepPreviousFor: 2 * time.Hour},
			databasev1.RestoreSpec{BackupRef: corev1.LocalObjectReference{Name: "base"}, KeepPreviousFor: &metav1.Duration{Duration: 2 * time.Hour},
				PointInTime: &databasev1.RestorePointInTime{RecoveryTarget: databasev1.RecoveryTarget{LSN: "0/3000060", Inclusive: &no}}}, ""},
		{"to the end", restoreFlags{latest: true}, databasev1.RestoreSpec{PointInTime: &databasev1.RestorePointInTime{RecoveryTarget: databasev1.RecoveryTarget{Latest: true}}}, ""},
		{"an undo", restoreFlags{undo: "r1"}, databasev1.RestoreSpec{Undo: "r1"}, ""},
		{"nothing", restoreFlags{}, databasev1.RestoreSpec{}, "--backup is required"},
		{"two targets", restoreFlags{latest: true, toXID: "5"}, databasev1.RestoreSpec{}, "give one target"},
		{"an undo with a target", restoreFlags{undo: "r1", latest: true}, databasev1.RestoreSpec{}, "--undo takes no --backup and no target"},
		{"a time that is not RFC 3339", restoreFlags{toTime: "yesterday"}, databasev1.RestoreSpec{}, "want RFC 3339"},
		{"exclusive without a target", restoreFlags{backup: "b", exclusive: true}, databasev1.RestoreSpec{}, "--exclusive goes with a point-in-time target"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := restoreSpec("orders", tc.f)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want %q", err, tc.err)
				}
				return
			}
			tc.want.DatabaseRef.Name = "orders"
			if err != nil || !equality.Semantic.DeepEqual(got, tc.want) {
				t.Errorf("got %+v %v, want %+v", got, err, tc.want)
			}
		})
	}
	if m, err := backupMethod("physical"); err != nil || m != databasev1.BackupMethodPhysical {
		t.Errorf("--method physical: %s %v", m, err)
	}
	if _, err := backupMethod("snapshot"); err == nil {
		t.Error("--method snapshot was accepted")
	}
}
