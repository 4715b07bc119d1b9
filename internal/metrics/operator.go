// Package metrics holds the operator's Prometheus series: gauges computed at each
// scrape from the cached Databases and Backups (so a deleted object leaves no
// stale series and a restarted operator reports at once), and counters of the
// transitions the reconcilers make.
package metrics

import (
	"context"
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
)

const namespace = "postgres_operator"

// Counters the reconcilers increment.
var (
	// PrimaryChanges counts finished changes of primary by kind (Failover,
	// Switchover) and outcome (Completed, Aborted).
	PrimaryChanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "primary_changes_total",
		Help: "Finished changes of primary, by kind (Failover, Switchover) and outcome (Completed, Aborted).",
	}, []string{"namespace", "database", "kind", "outcome"})
	// BackupFailures counts backup runs (one-shot Backups and runs of a
	// schedule) that ended Failed, by Database.
	BackupFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "backup_failures_total",
		Help: "Backups (one-shot or runs of a schedule) that ended Failed.",
	}, []string{"namespace", "database"})
)

func d(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
}

var (
	dbLabels      = []string{"namespace", "database"}
	backupLabels  = []string{"namespace", "backup", "database"}
	descDBReady   = d("database_ready", "1 when the Database is Ready.", dbLabels...)
	descDBPhase   = d("database_phase", "1 for the Database's current phase, 0 for the others.", append(dbLabels, "phase")...)
	descDBPrimary = d("database_primary_available",
		"1 when the Database's primary is up and serving writes (condition PrimaryAvailable).", dbLabels...)
	descDBInstances      = d("database_instances", "Instances the Database asks for (spec.replicas).", dbLabels...)
	descDBReadyInstances = d("database_instances_ready", "Instances that are ready.", dbLabels...)
	descDBTimeline       = d("database_timeline", "The primary's timeline (one more per promotion).", dbLabels...)
	descDBInfo           = d("database_info", "Always 1; labels: image and PostgreSQL version.",
		append(dbLabels, "image", "version")...)

	descBackupLastSuccess = d("backup_last_success_timestamp_seconds",
		"When the Backup's newest completed artifact was written (a schedule: its newest completed run).", backupLabels...)
	descBackupDuration = d("backup_last_duration_seconds", "How long the newest completed backup took.", backupLabels...)
	descBackupSize     = d("backup_last_size_bytes", "Size of the newest completed artifact (compressed).", backupLabels...)
	descBackupFailed   = d("backup_last_run_failed",
		"1 when the Backup failed (a schedule: when its latest finished run failed).", backupLabels...)
	descBackupCreated = d("backup_created_timestamp_seconds",
		"When the Backup was created: the age a schedule without any completed run is judged from.", backupLabels...)
	descBackupInterval = d("backup_schedule_interval_seconds",
		"A schedule's longest gap between two consecutive slots (over its next 8): alerts fire when the last success is older than 1.5 times this.",
		backupLabels...)
	descBackupSuspended = d("backup_schedule_suspended", "1 when a schedule is suspended (spec.suspend).", backupLabels...)
)

// phases are the Database phases reported by database_phase.
var phases = []databasev1.Phase{
	databasev1.PhasePending, databasev1.PhaseProvisioning, databasev1.PhaseDeploying, databasev1.PhaseVerifying,
	databasev1.PhaseReady, databasev1.PhaseFailed, databasev1.PhaseFailingOver, databasev1.PhaseUpgrading,
	databasev1.PhaseSwitchingOver,
}

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Collector reports every Database's and Backup's state, read from reader (the
// manager's cache) at each scrape.
type Collector struct {
	Reader client.Reader
	// Now is the clock schedule intervals are computed from; time.Now when nil.
	Now func() time.Time
	// Errors counts scrapes whose listing failed.
	Errors prometheus.Counter
}

// NewCollector returns a Collector reading from reader.
func NewCollector(reader client.Reader) *Collector {
	return &Collector{Reader: reader, Errors: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "metrics_list_errors_total",
		Help: "Scrapes that could not list Databases or Backups from the cache.",
	})}
}

// Register adds the collector and the counters to reg.
func Register(reg prometheus.Registerer, reader client.Reader) error {
	for _, c := range []prometheus.Collector{NewCollector(reader), PrimaryChanges, BackupFailures} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, x := range []*prometheus.Desc{descDBReady, descDBPhase, descDBPrimary, descDBInstances,
		descDBReadyInstances, descDBTimeline, descDBInfo, descBackupLastSuccess, descBackupDuration,
		descBackupSize, descBackupFailed, descBackupCreated, descBackupInterval, descBackupSuspended} {
		ch <- x
	}
	c.Errors.Describe(ch)
}

func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	defer c.Errors.Collect(ch)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var dbs databasev1.DatabaseList
	if err := c.Reader.List(ctx, &dbs); err != nil {
		c.Errors.Inc()
	} else {
		for i := range dbs.Items {
			DatabaseMetrics(&dbs.Items[i], func(m prometheus.Metric) { ch <- m })
		}
	}
	var backups databasev1.BackupList
	if err := c.Reader.List(ctx, &backups); err != nil {
		c.Errors.Inc()
		return
	}
	now := time.Now()
	if c.Now != nil {
		now = c.Now()
	}
	for i := range backups.Items {
		BackupMetrics(&backups.Items[i], now, func(m prometheus.Metric) { ch <- m })
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// DatabaseMetrics emits the series of one Database.
func DatabaseMetrics(db *databasev1.Database, emit func(prometheus.Metric)) {
	l := []string{db.Namespace, db.Name}
	gauge := func(desc *prometheus.Desc, v float64, extra ...string) {
		emit(prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, append(append([]string{}, l...), extra...)...))
	}
	gauge(descDBReady, boolValue(meta.IsStatusConditionTrue(db.Status.Conditions, databasev1.ConditionReady)))
	for _, p := range phases {
		gauge(descDBPhase, boolValue(db.Status.Phase == p), string(p))
	}
	gauge(descDBPrimary, boolValue(meta.IsStatusConditionTrue(db.Status.Conditions, databasev1.ConditionPrimaryAvailable)))
	replicas := int32(1)
	if db.Spec.Replicas != nil {
		replicas = *db.Spec.Replicas
	}
	gauge(descDBInstances, float64(replicas))
	gauge(descDBReadyInstances, float64(db.Status.ReadyReplicas))
	gauge(descDBTimeline, float64(db.Status.Timeline))
	image := db.Status.Image
	if image == "" {
		image = db.Spec.Image
	}
	gauge(descDBInfo, 1, image, db.Status.PostgresVersion)
}

// isRun reports whether b is a run of a scheduled Backup: its schedule reports
// for it.
func isRun(b *databasev1.Backup) bool {
	for _, o := range b.OwnerReferences {
		if o.Kind == "Backup" && o.Controller != nil && *o.Controller {
			return true
		}
	}
	return false
}

// BackupMetrics emits the series of one Backup: a schedule or a one-shot Backup
// (runs of a schedule are reported through their schedule).
func BackupMetrics(b *databasev1.Backup, now time.Time, emit func(prometheus.Metric)) {
	if isRun(b) {
		return
	}
	l := []string{b.Namespace, b.Name, b.Spec.DatabaseRef.Name}
	gauge := func(desc *prometheus.Desc, v float64) {
		emit(prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, l...))
	}
	gauge(descBackupCreated, float64(b.CreationTimestamp.Unix()))
	if b.Status.BackupTime != nil {
		gauge(descBackupLastSuccess, float64(b.Status.BackupTime.Unix()))
		if dur, err := time.ParseDuration(b.Status.Duration); err == nil {
			gauge(descBackupDuration, dur.Seconds())
		}
		gauge(descBackupSize, float64(b.Status.SizeBytes))
	}
	failed := b.Status.Phase == databasev1.BackupFailed
	if b.Spec.Schedule != "" {
		ready := meta.FindStatusCondition(b.Status.Conditions, databasev1.ConditionReady)
		failed = failed || (ready != nil && ready.Reason == databasev1.ReasonLastRunFailed)
		gauge(descBackupSuspended, boolValue(b.Spec.Suspend))
		if interval, ok := ScheduleInterval(b.Spec.Schedule, b.Spec.TimeZone, now); ok {
			gauge(descBackupInterval, interval.Seconds())
		}
	}
	gauge(descBackupFailed, boolValue(failed))
}

// ScheduleInterval is the longest gap between consecutive slots of a cron
// schedule over its next 8 slots after now (a weekday schedule's gap over the
// weekend counts), in the schedule's time zone (UTC when empty).
func ScheduleInterval(schedule, timeZone string, now time.Time) (time.Duration, bool) {
	s, err := cronParser.Parse(schedule)
	if err != nil {
		return 0, false
	}
	loc := time.UTC
	if timeZone != "" {
		if loc, err = time.LoadLocation(timeZone); err != nil {
			return 0, false
		}
	}
	var longest time.Duration
	prev := s.Next(now.In(loc))
	if prev.IsZero() {
		return 0, false
	}
	for range 8 {
		next := s.Next(prev)
		if next.IsZero() {
			break
		}
		longest = max(longest, next.Sub(prev))
		prev = next
	}
	return longest, longest > 0
}

// fqName matches the name in prometheus.Desc's String().
var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// DescribedNames returns the names of the series c describes.
func DescribedNames(c prometheus.Collector) []string {
	ch := make(chan *prometheus.Desc)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	var names []string
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			names = append(names, m[1])
		}
	}
	return names
}

// Names returns the names of the operator's series.
func Names() []string {
	var names []string
	for _, c := range []prometheus.Collector{NewCollector(nil), PrimaryChanges, BackupFailures} {
		names = append(names, DescribedNames(c)...)
	}
	return names
}
