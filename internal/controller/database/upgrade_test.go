package database

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/upgrade"
)

func TestDecideUpgradeTransitions(t *testing.T) {
	now := time.Date(2026, 12, 2, 20, 0, 0, 0, time.UTC)
	at := func(p databasev1.UpgradePhase, mut ...func(*databasev1.UpgradeStatus)) *databasev1.UpgradeStatus {
		st := &databasev1.UpgradeStatus{Phase: p, Generation: 2, FromImage: "postgres:15", ToImage: "postgres:17", FromMajor: 15, ToMajor: 17,
			Method: databasev1.UpgradeLink, Primary: "db-0", StartedAt: metav1.NewTime(now.Add(-time.Minute))}
		for _, m := range mut {
			m(st)
		}
		return st
	}
	job := func(name string) func(*databasev1.UpgradeStatus) {
		return func(st *databasev1.UpgradeStatus) { st.Job, st.Attempt = name, 1 }
	}
	base := func(mut ...func(*upgradeInput)) upgradeInput {
		in := upgradeInput{Now: now, Generation: 2, WantImage: "postgres:17", WantMajor: 17, RunningImage: "postgres:15", DataMajor: 15,
			Primary: "db-0", Pods: 2, SecretSynced: true}
		for _, m := range mut {
			m(&in)
		}
		return in
	}
	done := func(res *upgrade.Result) func(*upgradeInput) {
		return func(in *upgradeInput) {
			in.Job = &jobObs{Name: "j", Done: true, Result: res, Failure: "BackoffLimitExceeded"}
		}
	}
	tests := []struct {
		name string
		in   upgradeInput
		// want: the phase after (""= no status), the image, stopped, the Job to create, a refusal reason.
		phase     databasev1.UpgradePhase
		image     string
		stopped   bool
		createJob string
		refusal   string
		msg       string
	}{
		{"same major: nothing to do", base(func(in *upgradeInput) { in.WantImage, in.WantMajor = "postgres:15.18", 15 }),
			"", "postgres:15.18", false, "", "", ""},
		{"tag without a major: applied, the agents refuse it", base(func(in *upgradeInput) { in.WantImage, in.WantMajor = "postgres:latest", 0 }),
			"", "postgres:latest", false, "", "", ""},
		{"downgrade refused, the old image kept", base(func(in *upgradeInput) { in.WantImage, in.WantMajor = "postgres:14", 14 }),
			"", "postgres:15", false, "", databasev1.ReasonDowngradeRefused, ""},
		{"higher major on an unhealthy Database: preflight waits", base(func(in *upgradeInput) { in.Unhealthy = "1 of 2 instances ready" }),
			databasev1.UpgradePreflight, "postgres:15", false, "", "", "waiting for every instance to be healthy"},
		{"higher major on a healthy Database: the check Job", base(),
			databasev1.UpgradePreflight, "postgres:15", false, "check", "", ""},
		{"preflight running", base(func(in *upgradeInput) {
			in.Prev = at(databasev1.UpgradePreflight, job("db-upgrade-check-g2-1"))
			in.Job = &jobObs{Name: "j"}
		}),
			databasev1.UpgradePreflight, "postgres:15", false, "", "", ""},
		{"preflight failed: the old version keeps serving", base(func(in *upgradeInput) {
			in.Prev = at(databasev1.UpgradePreflight, job("j"))
			done(&upgrade.Result{Message: "missing library legacy.so"})(in)
		}), databasev1.UpgradePreflightFailed, "postgres:15", false, "", "", "legacy.so"},
		{"a failed preflight waits for a spec change", base(func(in *upgradeInput) { in.Prev = at(databasev1.UpgradePreflightFailed) }),
			databasev1.UpgradePreflightFailed, "postgres:15", false, "", "", ""},
		{"a spec change after a failed preflight starts over", base(func(in *upgradeInput) { in.Generation = 3; in.Prev = at(databasev1.UpgradePreflightFailed) }),
			databasev1.UpgradePreflight, "postgres:15", false, "check", "", ""},
		{"reverting after a failed preflight clears it", base(func(in *upgradeInput) {
			in.WantImage, in.WantMajor, in.Generation = "postgres:15", 15, 3
			in.Prev = at(databasev1.UpgradePreflightFailed)
		}), "", "postgres:15", false, "", "", ""},
		{"preflight passed: stop every instance", base(func(in *upgradeInput) {
			in.Prev = at(databasev1.UpgradePreflight, job("j"))
			done(&upgrade.Result{OK: true, Message: "passed"})(in)
		}), databasev1.UpgradeStopping, "postgres:15", true, "", "", ""},
		{"preflight passed with a safety-net backup configured", base(func(in *upgradeInput) {
			in.Spec.Backup = &databasev1.UpgradeBackup{}
			in.Prev = at(databasev1.UpgradePreflight, job("j"))
			done(&upgrade.Result{OK: true})(in)
		}), databasev1.UpgradeBackingUp, "postgres:15", false, "", "", "db-pre-upgrade-g2"},
		{"backup completed: stop", base(func(in *upgradeInput) {
			in.Prev = at(databasev1.UpgradeBackingUp, func(st *databasev1.UpgradeStatus) { st.SafetyBackup = "b" })
			in.Backup = &backupObs{Phase: databasev1.BackupCompleted}
		}), databasev1.UpgradeStopping, "postgres:15", true, "", "", ""},
		// Rule 8: an upgrade runs on the current primary.
		{"a failover during the preflight: its result is not acted upon, nothing stops", base(func(in *upgradeInput) {
			in.Prev = at(databasev1.UpgradePreflight, job("j"))
			in.PrimaryChanging = true
			done(&upgrade.Result{OK: true, Message: "passed"})(in)
		}), databasev1.UpgradePreflight, "postgres:15", false, "", "", "the primary is changing"},
		{"a failover during the safety-net Backup: nothing stops while the primary changes", base(func(in *upgradeInput) {
			in.Prev = at(databasev1.UpgradeBackingUp, func(st *databasev1.UpgradeStatus) { st.SafetyBackup = "b" })
			in.Primary, in.PrimaryChanging = "", true
			in.Backup = &backupObs{Phase: databasev1.BackupCompleted}
		}), databasev1.UpgradeBackingUp, "postgres:15", false, "", "", "the primary is changing"},
		{"the primary moved during the preflight: the preflight runs again against the new one", base(func(in *upgradeInput) {
			in.Prev = at(databasev1.UpgradePreflight, job("j"))
			in.Primary = "db-1"
			done(&upgrade.Result{OK: true, Message: "passed"})(in)
		}), databasev1.UpgradePreflight, "postgres:15", false, "", "", "against the new primary db-1"},
		{"the primary moved during the safety-net Backup: re-targeted, not stopped yet", base(func(in *upgradeInput) {
			in.Prev = at(databasev1.UpgradeBackingUp, func(st *databasev1.UpgradeStatus) { st.SafetyBackup = "b" })
			in.Primary = "db-1"
			in.Backup = &backupObs{Phase: databasev1.BackupCompleted}
		}), databasev1.UpgradeBackingUp, "postgres:15", false, "", "", ""},
		{"backup failed: nothing stopped", base(func(in *upgradeInput) {
			in.Prev = at(databasev1.UpgradeBackingUp, func(st *databasev1.UpgradeStatus) { st.SafetyBackup = "b" })
			in.Backup = &backupObs{Phase: databasev1.BackupFailed, Message: "bucket gone"}
		}), databasev1.UpgradeBackupFailed, "postgres:15", false, "", "", "bucket gone"},
		{"stopping: pods remain", base(func(in *upgradeInput) { in.Prev = at(databasev1.UpgradeStopping) }),
			databasev1.UpgradeStopping, "postgres:15", true, "", "", "waiting for 2"},
		{"stopped: the upgrade Job", base(func(in *upgradeInput) { in.Pods = 0; in.Prev = at(databasev1.UpgradeStopping) }),
			databasev1.UpgradeUpgrading, "postgres:15", true, "run", "", ""},
		{"reverted while stopping: abandoned, the old image starts again", base(func(in *upgradeInput) {
			in.WantImage, in.WantMajor = "postgres:15", 15
			in.Prev = at(databasev1.UpgradeStopping)
		}), "", "postgres:15", false, "", "", ""},
		{"upgrade Job running", base(func(in *upgradeInput) {
			in.Pods = 0
			in.Prev = at(databasev1.UpgradeUpgrading, job("j"))
			in.Job = &jobObs{Name: "j"}
		}), databasev1.UpgradeUpgrading, "postgres:15", true, "", "", ""},
		{"upgrade done: starting on the new image, scaled up once the identity is recorded", base(func(in *upgradeInput) {
			in.Pods = 0
			in.Prev = at(databasev1.UpgradeUpgrading, job("j"))
			done(&upgrade.Result{OK: true, SystemIdentifier: "99"})(in)
		}), databasev1.UpgradeStarting, "postgres:17", true, "", "", ""},
		{"starting waits for the Secret to hold the new identity", base(func(in *upgradeInput) {
			in.Pods, in.SecretSynced = 0, false
			in.Prev = at(databasev1.UpgradeStarting)
		}), databasev1.UpgradeStarting, "postgres:17", true, "", "", "new system identifier"},
		{"starting: all replicas on the new image", base(func(in *upgradeInput) { in.Prev = at(databasev1.UpgradeStarting) }),
			databasev1.UpgradeStarting, "postgres:17", false, "", "", ""},
		{"the new primary serves: succeeded", base(func(in *upgradeInput) {
			in.Started = true
			in.Prev = at(databasev1.UpgradeStarting, func(st *databasev1.UpgradeStatus) { t := metav1.NewTime(now.Add(-30 * time.Second)); st.StoppedAt = &t })
		}), databasev1.UpgradeSucceeded, "postgres:17", false, "", "", ""},
		{"after success the data is the new major: same image, nothing to do", base(func(in *upgradeInput) {
			in.DataMajor, in.RunningImage = 17, "postgres:17"
			in.Prev = at(databasev1.UpgradeSucceeded)
		}), databasev1.UpgradeSucceeded, "postgres:17", false, "", "", ""},
		{"after success a downgrade is refused", base(func(in *upgradeInput) {
			in.DataMajor, in.RunningImage, in.WantImage, in.WantMajor = 17, "postgres:17", "postgres:15", 15
			in.Prev = at(databasev1.UpgradeSucceeded)
		}), databasev1.UpgradeSucceeded, "postgres:17", false, "", databasev1.ReasonDowngradeRefused, ""},
		{"a killed upgrade Job is resumed by another", base(func(in *upgradeInput) {
			in.Pods = 0
			in.Prev = at(databasev1.UpgradeUpgrading, job("j"))
			done(nil)(in)
		}), databasev1.UpgradeUpgrading, "postgres:15", true, "run", "", "attempt 1 ended"},
		{"the next attempt waits for the killed pod to end", base(func(in *upgradeInput) {
			in.Pods, in.BusyJobs = 0, 1
			in.Prev = at(databasev1.UpgradeUpgrading, job("j"))
			done(nil)(in)
		}), databasev1.UpgradeUpgrading, "postgres:15", true, "", "", ""},
		{"a Job that rolled back itself: the old version runs again", base(func(in *upgradeInput) {
			in.Pods = 0
			in.Prev = at(databasev1.UpgradeUpgrading, job("j"))
			done(&upgrade.Result{RolledBack: true, Message: "pg_upgrade failed"})(in)
		}), databasev1.UpgradeRolledBack, "postgres:15", false, "", "", "pg_upgrade failed"},
		{"attempts exhausted before the point of no return: roll back", base(func(in *upgradeInput) {
			in.Pods = 0
			in.Prev = at(databasev1.UpgradeUpgrading, job("j"), func(st *databasev1.UpgradeStatus) { st.Attempt = maxUpgradeAttempts })
			done(nil)(in)
		}), databasev1.UpgradeRollingBack, "postgres:15", true, "rollback", "", ""},
		{"attempts exhausted past the point of no return: failed, stopped", base(func(in *upgradeInput) {
			in.Pods = 0
			in.Prev = at(databasev1.UpgradeUpgrading, job("j"), func(st *databasev1.UpgradeStatus) { st.Attempt = maxUpgradeAttempts })
			done(&upgrade.Result{PastPointOfNoReturn: true, Message: "disk full"})(in)
		}), databasev1.UpgradeFailed, "postgres:15", true, "", "", "disk full"},
		{"reverted while the Job runs: it is stopped, then rolled back", base(func(in *upgradeInput) {
			in.Pods, in.WantImage, in.WantMajor, in.Generation = 0, "postgres:15", 15, 3
			in.Prev = at(databasev1.UpgradeUpgrading, job("j"))
			in.Job, in.BusyJobs = &jobObs{Name: "j"}, 1
		}), databasev1.UpgradeRollingBack, "postgres:15", true, "", "", "waiting for the previous upgrade Job"},
		{"rollback done", base(func(in *upgradeInput) {
			in.Pods = 0
			in.Prev = at(databasev1.UpgradeRollingBack, job("j"))
			done(&upgrade.Result{OK: true, RolledBack: true})(in)
		}), databasev1.UpgradeRolledBack, "postgres:15", false, "", "", ""},
		{"rollback too late: forward", base(func(in *upgradeInput) {
			in.Pods = 0
			in.Prev = at(databasev1.UpgradeRollingBack, job("j"))
			done(&upgrade.Result{PastPointOfNoReturn: true, Message: "already 17"})(in)
		}), databasev1.UpgradeUpgrading, "postgres:15", true, "run", "", "too late"},
		{"failed: retried on a spec change", base(func(in *upgradeInput) {
			in.Pods, in.Generation = 0, 3
			in.Prev = at(databasev1.UpgradeFailed)
		}), databasev1.UpgradeUpgrading, "postgres:15", true, "", "", "retrying"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := decideUpgrade("db", tc.in)
			var phase databasev1.UpgradePhase
			if d.Status != nil {
				phase = d.Status.Phase
			}
			if phase != tc.phase || d.Image != tc.image || d.Stopped != tc.stopped || d.CreateJob != tc.createJob || d.RefusalReason != tc.refusal {
				t.Fatalf("got phase %q image %s stopped %v createJob %q refusal %q; want %q %s %v %q %q (status %+v)",
					phase, d.Image, d.Stopped, d.CreateJob, d.RefusalReason, tc.phase, tc.image, tc.stopped, tc.createJob, tc.refusal, d.Status)
			}
			if tc.msg != "" && (d.Status == nil || !strings.Contains(d.Status.Message+" "+d.Status.SafetyBackup, tc.msg)) {
				t.Errorf("message %+v does not contain %q", d.Status, tc.msg)
			}
			if d.Stopped && !d.Suspend {
				t.Errorf("instances stopped but failover not suspended")
			}
			if d.CreateJob != "" && (d.Status == nil || d.Status.Job == "") {
				t.Errorf("a Job to create without a name")
			}
		})
	}
}

// The upgrade's identity: an upgraded data directory's system identifier and
// major become the Database's.
func TestUpgradeRecordsTheNewIdentity(t *testing.T) {
	in := upgradeInput{Now: time.Now(), Generation: 2, WantImage: "postgres:17", WantMajor: 17, RunningImage: "postgres:15", DataMajor: 15,
		Prev: &databasev1.UpgradeStatus{Phase: databasev1.UpgradeUpgrading, Generation: 2, FromImage: "postgres:15", ToImage: "postgres:17",
			FromMajor: 15, ToMajor: 17, Job: "j", Attempt: 1},
		Job: &jobObs{Name: "j", Done: true, Result: &upgrade.Result{OK: true, SystemIdentifier: "7311", RebuiltIndexes: 4,
			ExtensionsToUpdate: []string{"app.pg_stat_statements 1.10 → 1.11"}, Steps: []upgrade.Step{{Name: "pg_upgrade"}}}}}
	d := decideUpgrade("db", in)
	if d.SystemID != "7311" || d.DataMajor != 17 {
		t.Fatalf("identity %q %d", d.SystemID, d.DataMajor)
	}
	db := testDB(2)
	db.Generation = 2
	db.Spec.Image = "postgres:17"
	st := deriveStatus(db, observation{Now: time.Now(), Upgrade: &d, ReadyGrace: time.Second, StallAfter: time.Minute})
	if st.SystemIdentifier != "7311" || st.DataVersion != 17 || st.Upgrade == nil || st.Upgrade.RebuiltIndexes != 4 ||
		len(st.Upgrade.Steps) != 1 || st.Phase != databasev1.PhaseUpgrading {
		t.Errorf("status: id %s data %d phase %s upgrade %+v", st.SystemIdentifier, st.DataVersion, st.Phase, st.Upgrade)
	}
}

// Rule 8 across reconciles: a switchover during the safety-net Backup moves the
// primary from db-0 to db-1; the upgrade is re-targeted (an event says so) and
// the instances stop only after, with the upgrade Job on db-1's volume.
func TestAnUpgradeFollowsThePrimaryThatMovedDuringItsBackup(t *testing.T) {
	now := time.Date(2026, 12, 2, 20, 0, 0, 0, time.UTC)
	in := upgradeInput{Now: now, Generation: 2, WantImage: "postgres:17", WantMajor: 17, RunningImage: "postgres:15", DataMajor: 15,
		Primary: "db-1", Pods: 2, SecretSynced: true, Backup: &backupObs{Phase: databasev1.BackupCompleted},
		Prev: &databasev1.UpgradeStatus{Phase: databasev1.UpgradeBackingUp, Generation: 2, FromImage: "postgres:15", ToImage: "postgres:17", FromMajor: 15, ToMajor: 17,
			Method: databasev1.UpgradeLink, Primary: "db-0", SafetyBackup: "b", StartedAt: metav1.NewTime(now.Add(-time.Minute))}}
	d := decideUpgrade("db", in)
	if d.Status.Primary != "db-1" || d.Stopped || len(d.Events) != 1 || !strings.Contains(d.Events[0], "moved from db-0 to db-1") {
		t.Fatalf("first reconcile: primary %q stopped %v events %v", d.Status.Primary, d.Stopped, d.Events)
	}
	in.Prev = d.Status
	d = decideUpgrade("db", in)
	if d.Status.Phase != databasev1.UpgradeStopping || !d.Stopped {
		t.Fatalf("second reconcile: %+v", d.Status)
	}
	in.Prev, in.Pods = d.Status, 0
	d = decideUpgrade("db", in)
	if d.Status.Phase != databasev1.UpgradeUpgrading || d.CreateJob != "run" || !strings.Contains(d.Status.Message, "db-1's volume") {
		t.Errorf("the upgrade Job: %+v create %q", d.Status, d.CreateJob)
	}
}
