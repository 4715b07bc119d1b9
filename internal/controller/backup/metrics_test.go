package backup

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	databasev1 "github.com/example/postgres-operator/api/v1"
	enginepkg "github.com/example/postgres-operator/internal/backup"
	"github.com/example/postgres-operator/internal/metrics"
	"github.com/example/postgres-operator/internal/testenv"
)

// gatherBackup returns the operator's series for Backup ns/name, by metric name,
// read by the metrics collector from the API server.
func gatherBackup(t *testing.T, ns, name string) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(metrics.NewCollector(k8s))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.Metric {
			if label(m, "namespace") == ns && label(m, "backup") == name {
				out[f.GetName()] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.Label {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func TestAFailedBackupCountsAsAFailureAndReportsItsLastRunFailed(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	before := testutil.ToFloat64(metrics.BackupFailures.WithLabelValues(ns, "test-db"))
	mustApply(t, ns, oneShot)
	job := getJob(t, ns, "test-backup-backup")
	finishJob(t, job, false, resultMessage(nil, "pg_dump failed: exit status 1"))
	waitBackup(t, ns, "test-backup", databasev1.BackupFailed, databasev1.ReasonJobFailed)
	testenv.Eventually(t, "the failure counted", func() string {
		if got := testutil.ToFloat64(metrics.BackupFailures.WithLabelValues(ns, "test-db")); got != before+1 {
			return fmt.Sprintf("backup_failures_total %v, want %v", got, before+1)
		}
		return ""
	})
	m := gatherBackup(t, ns, "test-backup")
	if m["postgres_operator_backup_last_run_failed"] != 1 {
		t.Errorf("last_run_failed = %v, want 1 (%v)", m["postgres_operator_backup_last_run_failed"], m)
	}
	if _, ok := m["postgres_operator_backup_last_success_timestamp_seconds"]; ok {
		t.Error("a Backup that never succeeded reports a last success")
	}
	if m["postgres_operator_backup_created_timestamp_seconds"] <= 0 {
		t.Error("no creation time to judge a missing success from")
	}
}

func TestAScheduleReportsItsNewestSuccessItsIntervalAndNotItsRuns(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, scheduled)
	var m map[string]float64
	testenv.Eventually(t, "the schedule's series", func() string {
		m = gatherBackup(t, ns, "nightly")
		if got := m["postgres_operator_backup_schedule_interval_seconds"]; got != 600 {
			return fmt.Sprintf("interval of */10 * * * * = %v, want 600", got)
		}
		return ""
	})
	if _, ok := m["postgres_operator_backup_last_success_timestamp_seconds"]; ok {
		t.Error("a schedule without a completed run reports a last success")
	}

	stepPastSlotAfter(getBackup(t, ns, "nightly").CreationTimestamp.Time)
	poke(t, ns, "nightly")
	run := waitRuns(t, ns, "nightly", 1)[0]
	waitBackup(t, ns, run.Name, databasev1.BackupInProgress, "")
	end := time.Now().Add(-time.Minute).Truncate(time.Second)
	finishJob(t, getJob(t, ns, run.Name+"-backup"), true, resultMessage(&enginepkg.Manifest{
		SizeBytes: 4096, StartTime: end.Add(-90 * time.Second), EndTime: end}, ""))
	waitBackup(t, ns, run.Name, databasev1.BackupCompleted, "")
	poke(t, ns, "nightly")
	testenv.Eventually(t, "the schedule's last success", func() string {
		m = gatherBackup(t, ns, "nightly")
		if got := m["postgres_operator_backup_last_success_timestamp_seconds"]; got != float64(end.Unix()) {
			return fmt.Sprintf("last success %v, want %d", got, end.Unix())
		}
		return ""
	})
	for name, want := range map[string]float64{
		"postgres_operator_backup_last_duration_seconds": 90,
		"postgres_operator_backup_last_size_bytes":       4096,
		"postgres_operator_backup_last_run_failed":       0,
		"postgres_operator_backup_schedule_suspended":    0,
	} {
		if m[name] != want {
			t.Errorf("%s = %v, want %v", name, m[name], want)
		}
	}
	if runSeries := gatherBackup(t, ns, run.Name); len(runSeries) != 0 {
		t.Errorf("a run of a schedule has series of its own: %v", runSeries)
	}
}
