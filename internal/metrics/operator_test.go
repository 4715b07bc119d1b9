package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	databasev1 "github.com/example/postgres-operator/api/v1"
)

func TestScheduleInterval(t *testing.T) {
	monday := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		schedule, zone string
		want           time.Duration
		ok             bool
	}{
		{"*/10 * * * *", "", 10 * time.Minute, true},
		{"@hourly", "", time.Hour, true},
		{"@daily", "", 24 * time.Hour, true},
		{"0 3 * * *", "Europe/Paris", 24 * time.Hour, true},
		// Weekdays only: the weekend's gap is the one alerts must allow.
		{"0 2 * * 1-5", "", 72 * time.Hour, true},
		{"@weekly", "", 7 * 24 * time.Hour, true},
		{"not a schedule", "", 0, false},
		{"@daily", "Nowhere/Invalid", 0, false},
	} {
		got, ok := ScheduleInterval(c.schedule, c.zone, monday)
		if got != c.want || ok != c.ok {
			t.Errorf("ScheduleInterval(%q, %q) = %v, %v; want %v, %v", c.schedule, c.zone, got, ok, c.want, c.ok)
		}
	}
}

func collect(f func(emit func(prometheus.Metric))) map[string][]*dto.Metric {
	out := map[string][]*dto.Metric{}
	f(func(m prometheus.Metric) {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			panic(err)
		}
		name := m.Desc().String()
		out[name] = append(out[name], &pb)
	})
	return out
}

func value(ms map[string][]*dto.Metric, metric string, labels map[string]string) (float64, bool) {
	for desc, list := range ms {
		if !containsName(desc, metric) {
			continue
		}
	next:
		for _, m := range list {
			for k, v := range labels {
				found := false
				for _, l := range m.Label {
					if l.GetName() == k && l.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// containsName matches Desc.String(), `Desc{fqName: "name", ...}`.
func containsName(desc, metric string) bool { return strings.Contains(desc, `fqName: "`+metric+`"`) }

func TestDatabaseMetrics(t *testing.T) {
	db := &databasev1.Database{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders"},
		Spec:       databasev1.DatabaseSpec{Image: "postgres:17", Replicas: ptr.To[int32](3)},
		Status: databasev1.DatabaseStatus{
			Phase: databasev1.PhaseFailingOver, ReadyReplicas: 2, Timeline: 4, PostgresVersion: "17.6",
			Conditions: []metav1.Condition{
				{Type: databasev1.ConditionReady, Status: metav1.ConditionFalse},
				{Type: databasev1.ConditionPrimaryAvailable, Status: metav1.ConditionTrue},
			},
		},
	}
	ms := collect(func(emit func(prometheus.Metric)) { DatabaseMetrics(db, emit) })
	id := map[string]string{"namespace": "shop", "database": "orders"}
	for _, c := range []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{"postgres_operator_database_ready", id, 0},
		{"postgres_operator_database_primary_available", id, 1},
		{"postgres_operator_database_instances", id, 3},
		{"postgres_operator_database_instances_ready", id, 2},
		{"postgres_operator_database_timeline", id, 4},
		{"postgres_operator_database_phase", map[string]string{"database": "orders", "phase": "FailingOver"}, 1},
		{"postgres_operator_database_phase", map[string]string{"database": "orders", "phase": "Ready"}, 0},
		{"postgres_operator_database_info", map[string]string{"image": "postgres:17", "version": "17.6"}, 1},
	} {
		got, ok := value(ms, c.metric, c.labels)
		if !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.metric, c.labels, got, ok, c.want)
		}
	}
	if n := len(ms[descDBPhase.String()]); n != len(phases) {
		t.Errorf("%d phase series, want one per phase (%d)", n, len(phases))
	}
}

func TestBackupMetrics(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	done := metav1.NewTime(now.Add(-2 * time.Hour))
	controller := true
	for _, c := range []struct {
		name   string
		backup databasev1.Backup
		want   map[string]float64
		absent []string
	}{{
		name: "a completed one-shot Backup reports its success, duration and size",
		backup: databasev1.Backup{ObjectMeta: metav1.ObjectMeta{Name: "b"},
			Status: databasev1.BackupStatus{Phase: databasev1.BackupCompleted, BackupTime: &done, Duration: "1m30s", SizeBytes: 1000}},
		want: map[string]float64{"postgres_operator_backup_last_success_timestamp_seconds": float64(done.Unix()),
			"postgres_operator_backup_last_duration_seconds": 90, "postgres_operator_backup_last_size_bytes": 1000,
			"postgres_operator_backup_last_run_failed": 0},
		absent: []string{"postgres_operator_backup_schedule_interval_seconds"},
	}, {
		name: "a schedule whose latest run failed reports it, and its last success",
		backup: databasev1.Backup{ObjectMeta: metav1.ObjectMeta{Name: "nightly"},
			Spec: databasev1.BackupSpec{Schedule: "@daily", Suspend: true},
			Status: databasev1.BackupStatus{Phase: databasev1.BackupFailed, BackupTime: &done, Conditions: []metav1.Condition{
				{Type: databasev1.ConditionReady, Status: metav1.ConditionFalse, Reason: databasev1.ReasonLastRunFailed}}}},
		want: map[string]float64{"postgres_operator_backup_last_run_failed": 1,
			"postgres_operator_backup_schedule_interval_seconds": 86400, "postgres_operator_backup_schedule_suspended": 1,
			"postgres_operator_backup_last_success_timestamp_seconds": float64(done.Unix())},
	}, {
		name: "a run of a schedule has no series of its own",
		backup: databasev1.Backup{ObjectMeta: metav1.ObjectMeta{Name: "nightly-1", OwnerReferences: []metav1.OwnerReference{
			{Kind: "Backup", Name: "nightly", Controller: &controller}}},
			Status: databasev1.BackupStatus{Phase: databasev1.BackupFailed}},
		absent: []string{"postgres_operator_backup_last_run_failed", "postgres_operator_backup_created_timestamp_seconds"},
	}} {
		t.Run(c.name, func(t *testing.T) {
			ms := collect(func(emit func(prometheus.Metric)) { BackupMetrics(&c.backup, now, emit) })
			for metric, want := range c.want {
				if got, ok := value(ms, metric, nil); !ok || got != want {
					t.Errorf("%s = %v (found %v), want %v", metric, got, ok, want)
				}
			}
			for _, metric := range c.absent {
				if _, ok := value(ms, metric, nil); ok {
					t.Errorf("%s reported", metric)
				}
			}
		})
	}
}
