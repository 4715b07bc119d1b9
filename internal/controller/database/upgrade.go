package database

import (
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/upgrade"
)

// The major version upgrade. Raising spec.image's major starts it; its state is
// status.upgrade.phase:
//
//	(idle)          no upgrade runs; a lower major is refused (DowngradeRefused)
//	Preflight       pg_upgrade --check in a Job against the live primary
//	PreflightFailed the old version keeps serving; a spec change retries
//	BackingUp       the safety-net Backup (spec.upgrade.backup) runs
//	BackupFailed    the old version keeps serving; a spec change retries
//	Stopping        the StatefulSet is scaled to 0 (the old image); waits for no pod
//	Upgrading       the upgrade Job runs on the primary's volume (resumable: a
//	                killed Job is replaced, up to maxUpgradeAttempts)
//	RollingBack     the rollback Job puts the old directory back (a revert of
//	                spec.image while Upgrading, or attempts exhausted)
//	Starting        the new image, all replicas: the primary starts on the new
//	                data, standbys re-clone it
//	Succeeded       the primary reports the new major and the Database is Ready
//	RolledBack      the old version serves again; a spec change retries
//	Failed          neither forward nor back worked; instances stay stopped until
//	                the spec changes (retried then)
//
// Every transition is decided by decideUpgrade from observations; the reconcile
// step only carries out its decision (create a Job or a Backup, scale).

const maxUpgradeAttempts = 3

// jobObs is what the operator sees of one upgrade Job.
type jobObs struct {
	Name string
	// Done: the Job finished (its pod terminated); Result is the pod's
	// termination message when it wrote one (nil when it was killed).
	Done   bool
	Result *upgrade.Result
	// Failure explains a Job that ended without a result.
	Failure string
}

// backupObs is what the operator sees of the safety-net Backup.
type backupObs struct {
	Phase   databasev1.BackupPhase
	Message string
}

type upgradeInput struct {
	Now        time.Time
	Generation int64
	Spec       databasev1.UpgradeSpec
	// WantImage and its major; RunningImage (the StatefulSet's) and the data
	// directory's major (0: unknown).
	WantImage    string
	WantMajor    int
	RunningImage string
	DataMajor    int
	Prev         *databasev1.UpgradeStatus
	// Unhealthy explains why the Database is not healthy ("" when it is).
	Unhealthy string
	// Primary is the current primary pod; PrimaryChanging: a failover or
	// switchover is in progress (status.primaryChange).
	Primary         string
	PrimaryChanging bool
	// Pods counts the instance pods that exist.
	Pods int
	// Job is the Job named by Prev.Job (nil: absent); BusyJobs counts the
	// Database's upgrade Jobs whose pods still run.
	Job      *jobObs
	BusyJobs int
	// Backup is the safety-net Backup (nil: absent).
	Backup *backupObs
	// SecretSynced: the internal Secret holds status.systemIdentifier (the
	// instances check their data against it when they start).
	SecretSynced bool
	// Started: the primary reports the target major and the Database is Ready.
	Started bool
}

type upgradeDecision struct {
	// Status is the new status.upgrade (nil: none).
	Status *databasev1.UpgradeStatus
	// Image for the StatefulSet; Stopped: 0 replicas.
	Image   string
	Stopped bool
	// Suspend the failover, recovery and rollout steps (no instance runs).
	Suspend bool
	// Refusal explains a refused spec (a downgrade), with Reason.
	Refusal, RefusalReason string
	// CreateJob is the kind of Job to create ("check", "run", "rollback") under
	// Status.Job's name; DeleteJob a Job to stop.
	CreateJob string
	DeleteJob string
	// CreateBackup: create the safety-net Backup.
	CreateBackup bool
	// SystemID and DataMajor to record (an upgraded data directory).
	SystemID  string
	DataMajor int32
	// Events on the transitions of this decision.
	Events []string
}

// activeUpgrade says whether a phase is in progress (not an outcome).
func activeUpgrade(p databasev1.UpgradePhase) bool {
	switch p {
	case databasev1.UpgradePreflight, databasev1.UpgradeBackingUp, databasev1.UpgradeStopping, databasev1.UpgradeUpgrading,
		databasev1.UpgradeRollingBack, databasev1.UpgradeStarting, databasev1.UpgradeFailed:
		return true
	}
	return false
}

// stoppedUpgrade says whether the instances are down in this phase.
func stoppedUpgrade(p databasev1.UpgradePhase) bool {
	switch p {
	case databasev1.UpgradeStopping, databasev1.UpgradeUpgrading, databasev1.UpgradeRollingBack, databasev1.UpgradeFailed:
		return true
	}
	return false
}

func upgradeMethod(s databasev1.UpgradeSpec) databasev1.UpgradeMethod {
	if s.Method == "" {
		return databasev1.UpgradeLink
	}
	return s.Method
}

// upgradeJobName is the Job of a phase: <db>-upgrade-<kind>-g<generation>-<attempt>.
func upgradeJobName(db, kind string, gen int64, attempt int32) string {
	return fmt.Sprintf("%s-upgrade-%s-g%d-%d", db, kind, gen, attempt)
}

// decideUpgrade is the upgrade's transition function. db is the Database's name.
func decideUpgrade(db string, in upgradeInput) upgradeDecision {
	d := upgradeDecision{Image: in.WantImage, Status: in.Prev}
	prev := in.Prev
	if prev == nil || !activeUpgrade(prev.Phase) {
		switch {
		case in.WantMajor == 0 || in.DataMajor == 0 || in.WantMajor == in.DataMajor:
			if prev != nil && prev.Phase != databasev1.UpgradeSucceeded && prev.Phase != databasev1.UpgradeRolledBack {
				// A failed preflight or backup whose spec was reverted: nothing
				// is pending any more.
				d.Status = nil
			}
			return d
		case in.WantMajor < in.DataMajor:
			d.Image = in.RunningImage
			d.RefusalReason = databasev1.ReasonDowngradeRefused
			d.Refusal = fmt.Sprintf("spec.image %s is PostgreSQL %d but the data directory is PostgreSQL %d: a major version cannot be downgraded in place "+
				"(pg_upgrade only goes up); the instances keep running %s. Set spec.image back to a %d image, or restore a logical Backup into a new Database",
				in.WantImage, in.WantMajor, in.DataMajor, in.RunningImage, in.DataMajor)
			return d
		}
		if prev != nil && prev.Generation == in.Generation && prev.ToImage == in.WantImage &&
			(prev.Phase == databasev1.UpgradePreflightFailed || prev.Phase == databasev1.UpgradeBackupFailed || prev.Phase == databasev1.UpgradeRolledBack) {
			// Waits for a change of the spec.
			d.Image = in.RunningImage
			return d
		}
		prev = &databasev1.UpgradeStatus{
			Phase: databasev1.UpgradePreflight, Generation: in.Generation,
			FromImage: in.RunningImage, ToImage: in.WantImage, FromMajor: int32(in.DataMajor), ToMajor: int32(in.WantMajor), // #nosec G115 -- majors
			Method: upgradeMethod(in.Spec), Primary: in.Primary, StartedAt: metav1.NewTime(in.Now),
			Message: "pg_upgrade --check against the live primary",
		}
		d.Events = append(d.Events, fmt.Sprintf("Major upgrade from PostgreSQL %d (%s) to %d (%s) started: preflight", in.DataMajor, in.RunningImage, in.WantMajor, in.WantImage))
		in.Job = nil
	}
	st := prev.DeepCopy()
	d.Status = st
	d.Image = st.FromImage
	reverted := in.WantMajor != 0 && in.WantMajor == int(st.FromMajor)
	retargeted := in.WantMajor != 0 && in.WantMajor != int(st.ToMajor) && !reverted
	to := func(p databasev1.UpgradePhase, msg string) {
		st.Phase, st.Message, st.Attempt, st.Job = p, msg, 0, ""
		d.Events = append(d.Events, fmt.Sprintf("Major upgrade %s: %s", p, msg))
	}
	step := func(name string, started time.Time) {
		st.Steps = append(st.Steps, databasev1.UpgradeStep{Name: name, StartedAt: metav1.NewTime(started), FinishedAt: metav1.NewTime(in.Now)})
	}
	startJob := func(kind string) {
		st.Attempt++
		st.Job = upgradeJobName(db, kind, st.Generation, st.Attempt)
	}
	// jobResult returns the Job's result once it is done (nil, false while it runs).
	jobDone := func() (*upgrade.Result, string, bool) {
		if in.Job == nil || !in.Job.Done {
			return nil, "", false
		}
		return in.Job.Result, in.Job.Failure, true
	}

	switch st.Phase {
	case databasev1.UpgradePreflight, databasev1.UpgradeBackingUp:
		if reverted || retargeted {
			if st.Job != "" {
				d.DeleteJob = st.Job
			}
			d.Status, d.Image = nil, in.WantImage
			if retargeted {
				d.Image = in.RunningImage // the next reconcile starts over for the new target
			}
			d.Events = append(d.Events, fmt.Sprintf("Major upgrade to %s abandoned before anything stopped: spec.image is now %s", st.ToImage, in.WantImage))
			return d
		}
		// Rule 8: the upgrade runs on the current primary's volume. Never
		// stop the instances while the primary changes; a primary that moved
		// during the preflight or the safety-net Backup re-targets the
		// upgrade (the preflight runs again against it; the logical Backup
		// holds for any instance).
		if in.PrimaryChanging || in.Primary == "" {
			st.Message = fmt.Sprintf("waiting: the primary is changing (a failover or switchover); the upgrade continues on the new primary (%s)", st.Phase)
			return d
		}
		if in.Primary != st.Primary {
			d.Events = append(d.Events, fmt.Sprintf("Major upgrade: the primary moved from %s to %s during the %s; the upgrade now runs on %s's volume", st.Primary, in.Primary, st.Phase, in.Primary))
			st.Primary = in.Primary
			if st.Phase == databasev1.UpgradePreflight && st.Job != "" {
				if in.Job != nil && !in.Job.Done {
					d.DeleteJob = st.Job
				}
				st.Job, st.Attempt = "", 0
				st.Message = "pg_upgrade --check against the new primary " + in.Primary
			}
			return d
		}
		if st.Phase == databasev1.UpgradeBackingUp {
			return decideBackup(in, st, d, to, step)
		}
		if st.Job == "" || (in.Job == nil && in.BusyJobs == 0 && st.Attempt > 0) {
			if in.Unhealthy != "" {
				st.Message = "waiting for every instance to be healthy before the preflight: " + in.Unhealthy
				return d
			}
			if st.Job == "" {
				startJob("check")
				st.Primary = in.Primary
			}
			d.CreateJob = "check"
			return d
		}
		res, failure, done := jobDone()
		if !done {
			return d
		}
		switch {
		case res != nil && res.OK:
			step("preflight", st.StartedAt.Time)
			if in.Spec.Backup != nil {
				st.SafetyBackup = safetyBackupName(db, st.Generation)
				to(databasev1.UpgradeBackingUp, fmt.Sprintf("the safety-net Backup %s runs before the instances stop", st.SafetyBackup))
				d.CreateBackup = true
				return d
			}
			to(databasev1.UpgradeStopping, res.Message+"; stopping every instance")
			d.Stopped, d.Suspend = true, true
		case res != nil:
			to(databasev1.UpgradePreflightFailed, "the preflight failed, PostgreSQL "+fmt.Sprint(st.FromMajor)+" keeps running: "+res.Message)
		default:
			to(databasev1.UpgradePreflightFailed, "the preflight Job failed without a result: "+failure)
		}
		return d

	case databasev1.UpgradeStopping:
		if reverted || retargeted {
			d.Status, d.Image = nil, in.RunningImage
			d.Events = append(d.Events, fmt.Sprintf("Major upgrade to %s abandoned while stopping: spec.image is now %s; the instances start again on %s", st.ToImage, in.WantImage, in.RunningImage))
			return d
		}
		d.Stopped, d.Suspend = true, true
		if in.Pods > 0 {
			st.Message = fmt.Sprintf("waiting for %d instance(s) to stop", in.Pods)
			return d
		}
		now := metav1.NewTime(in.Now)
		st.StoppedAt = &now
		to(databasev1.UpgradeUpgrading, fmt.Sprintf("every instance stopped; initdb and pg_upgrade --%s on %s's volume", st.Method, st.Primary))
		startJob("run")
		d.CreateJob = "run"
		return d

	case databasev1.UpgradeUpgrading, databasev1.UpgradeRollingBack:
		d.Stopped, d.Suspend = true, true
		kind := "run"
		if st.Phase == databasev1.UpgradeRollingBack {
			kind = "rollback"
		}
		if st.Phase == databasev1.UpgradeUpgrading && reverted {
			if in.Job != nil && !in.Job.Done {
				d.DeleteJob = in.Job.Name
			}
			to(databasev1.UpgradeRollingBack, fmt.Sprintf("spec.image was set back to %s: putting the PostgreSQL %d data directory back", in.WantImage, st.FromMajor))
			kind = "rollback"
		}
		if st.Job == "" || in.Job == nil {
			// A Job to create: only once no earlier one runs on the volume.
			if in.BusyJobs > 0 {
				st.Message = "waiting for the previous upgrade Job's pod to end"
				return d
			}
			if st.Job == "" {
				startJob(kind)
			}
			d.CreateJob = kind
			return d
		}
		res, failure, done := jobDone()
		if !done {
			return d
		}
		if res != nil && res.OK {
			if st.Phase == databasev1.UpgradeRollingBack {
				to(databasev1.UpgradeRolledBack, fmt.Sprintf("the PostgreSQL %d data directory is back; the instances start on %s", st.FromMajor, st.FromImage))
				d.Stopped, d.Suspend = false, false
				finish(st, in.Now)
				return d
			}
			for _, s := range res.Steps {
				st.Steps = append(st.Steps, databasev1.UpgradeStep{Name: s.Name, StartedAt: metav1.NewTime(s.Started), FinishedAt: metav1.NewTime(s.Finished)})
			}
			st.OldDirectory, st.CollationChange = res.OldDirectory, res.CollationChange
			st.RebuiltIndexes = int32(res.RebuiltIndexes) // #nosec G115 -- a count
			st.IndexesToRebuild, st.ExtensionsToUpdate = res.IndexesToRebuild, res.ExtensionsToUpdate
			d.SystemID, d.DataMajor = res.SystemIdentifier, st.ToMajor
			to(databasev1.UpgradeStarting, fmt.Sprintf("%s; the primary starts on %s, the standbys re-clone it", res.Message, st.ToImage))
			d.Image = st.ToImage
			// The next reconcile scales up, once the internal Secret holds the new
			// system identifier.
			return d
		}
		why := failure
		if res != nil {
			why = res.Message
		}
		switch {
		case res != nil && res.RolledBack:
			to(databasev1.UpgradeRolledBack, fmt.Sprintf("the upgrade failed and was rolled back, PostgreSQL %d runs again: %s", st.FromMajor, why))
			d.Stopped, d.Suspend = false, false
			finish(st, in.Now)
		case st.Phase == databasev1.UpgradeRollingBack && res != nil && res.PastPointOfNoReturn:
			to(databasev1.UpgradeUpgrading, "too late to roll back (the new data directory is in place): finishing the upgrade; "+why)
			startJob("run")
			d.CreateJob = "run"
		case st.Attempt < maxUpgradeAttempts:
			st.Message = fmt.Sprintf("attempt %d ended (%s): resuming", st.Attempt, why)
			d.Events = append(d.Events, "Major upgrade "+string(st.Phase)+": "+st.Message)
			startJob(kind)
			if in.BusyJobs == 0 {
				d.CreateJob = kind
			}
		case st.Phase == databasev1.UpgradeUpgrading && (res == nil || !res.PastPointOfNoReturn):
			to(databasev1.UpgradeRollingBack, fmt.Sprintf("%d attempts failed (%s): rolling back", maxUpgradeAttempts, why))
			startJob("rollback")
			d.CreateJob = "rollback"
		default:
			to(databasev1.UpgradeFailed, fmt.Sprintf("%d attempts failed: %s; the instances stay stopped. Fix the cause and change the spec to retry (see the README)", maxUpgradeAttempts, why))
		}
		return d

	case databasev1.UpgradeFailed:
		d.Stopped, d.Suspend = true, true
		if in.Generation != st.Generation {
			// Retried after a change of the spec; the next reconcile creates the
			// Job once no earlier one runs.
			st.Generation = in.Generation
			if reverted {
				to(databasev1.UpgradeRollingBack, "retrying the rollback after a spec change")
			} else {
				to(databasev1.UpgradeUpgrading, "retrying the upgrade after a spec change")
			}
		}
		return d

	case databasev1.UpgradeStarting:
		d.Image = st.ToImage
		if !in.SecretSynced {
			d.Stopped, d.Suspend = true, true
			st.Message = "recording the new system identifier before the instances start"
			return d
		}
		if in.Started {
			to(databasev1.UpgradeSucceeded, fmt.Sprintf("PostgreSQL %d serves on %s", st.ToMajor, st.ToImage))
			finish(st, in.Now)
			if st.StoppedAt != nil {
				st.Downtime = in.Now.Sub(st.StoppedAt.Time).Round(time.Second).String()
			}
			step("start", lastStepEnd(st))
			if in.WantMajor != 0 && in.WantMajor < int(st.ToMajor) {
				d.Image = st.ToImage
			} else {
				d.Image = in.WantImage
			}
		}
		return d
	}
	return d
}

// safetyBackupName is the Backup an upgrade takes before the instances stop.
func safetyBackupName(db string, gen int64) string {
	return fmt.Sprintf("%s-pre-upgrade-g%d", db, gen)
}

// lastStepEnd is when the last recorded step ended (the start when none).
func lastStepEnd(st *databasev1.UpgradeStatus) time.Time {
	if n := len(st.Steps); n > 0 {
		return st.Steps[n-1].FinishedAt.Time
	}
	return st.StartedAt.Time
}

func finish(st *databasev1.UpgradeStatus, now time.Time) {
	t := metav1.NewTime(now)
	st.FinishedAt = &t
}

// decideBackup advances the BackingUp phase.
func decideBackup(in upgradeInput, st *databasev1.UpgradeStatus, d upgradeDecision,
	to func(databasev1.UpgradePhase, string), step func(string, time.Time)) upgradeDecision {
	switch {
	case in.Backup == nil:
		d.CreateBackup = true
	case in.Backup.Phase == databasev1.BackupCompleted:
		step("backup", lastStepEnd(st))
		to(databasev1.UpgradeStopping, fmt.Sprintf("safety-net Backup %s completed; stopping every instance", st.SafetyBackup))
		d.Stopped, d.Suspend = true, true
	case in.Backup.Phase == databasev1.BackupFailed:
		to(databasev1.UpgradeBackupFailed, fmt.Sprintf("the safety-net Backup %s failed, nothing was stopped: %s", st.SafetyBackup, in.Backup.Message))
	}
	return d
}

// upgradeConditions sets the Upgrading (and CollationIndexesStale) conditions
// from status.upgrade and the decision of this reconcile. It returns the phase
// while the instances are down for an upgrade (nil otherwise) and the stall of
// a refused or failed one (nil when there is none).
func upgradeConditions(db *databasev1.Database, obs observation, st *databasev1.DatabaseStatus,
	set func(typ string, status metav1.ConditionStatus, reason, message string)) (*verdict, *conditionVerdict) {
	u := st.Upgrade
	if obs.Refusal != "" {
		reason := obs.RefusalReason
		if reason == "" {
			reason = databasev1.ReasonMajorVersionUnsupported
		}
		set(databasev1.ConditionUpgrading, metav1.ConditionFalse, reason, obs.Refusal)
		return nil, &conditionVerdict{metav1.ConditionTrue, reason, obs.Refusal}
	}
	if u == nil {
		set(databasev1.ConditionUpgrading, metav1.ConditionFalse, databasev1.ReasonNoUpgrade,
			"No major version upgrade is running; raising the major of spec.image starts one")
		return nil, nil
	}
	if len(u.IndexesToRebuild) > 0 && u.Phase == databasev1.UpgradeSucceeded {
		set(databasev1.ConditionCollationIndexesStale, metav1.ConditionTrue, databasev1.ReasonIndexesStale,
			fmt.Sprintf("%s changed and spec.upgrade.rebuildCollationIndexes is false: their order may be wrong until rebuilt. In each database run "+
				"REINDEX INDEX CONCURRENTLY for %s, then ALTER DATABASE <name> REFRESH COLLATION VERSION", u.CollationChange, strings.Join(u.IndexesToRebuild, ", ")))
	} else if meta.FindStatusCondition(st.Conditions, databasev1.ConditionCollationIndexesStale) != nil {
		set(databasev1.ConditionCollationIndexesStale, metav1.ConditionFalse, databasev1.ReasonIndexesCurrent, "No index is known to need a rebuild")
	}
	msg := fmt.Sprintf("PostgreSQL %d → %d (%s, %s): %s: %s", u.FromMajor, u.ToMajor, u.ToImage, u.Method, u.Phase, u.Message)
	pending := u.Generation == db.Generation && image(db) == u.ToImage
	switch u.Phase {
	case databasev1.UpgradeSucceeded:
		done := msg
		if u.Downtime != "" {
			done += "; downtime " + u.Downtime
		}
		set(databasev1.ConditionUpgrading, metav1.ConditionFalse, databasev1.ReasonUpgradeSucceeded, done)
		return nil, nil
	case databasev1.UpgradePreflightFailed, databasev1.UpgradeBackupFailed, databasev1.UpgradeRolledBack:
		reason := map[databasev1.UpgradePhase]string{
			databasev1.UpgradePreflightFailed: databasev1.ReasonUpgradePreflightFailed,
			databasev1.UpgradeBackupFailed:    databasev1.ReasonUpgradeBackupFailed,
			databasev1.UpgradeRolledBack:      databasev1.ReasonUpgradeRolledBack,
		}[u.Phase]
		set(databasev1.ConditionUpgrading, metav1.ConditionFalse, reason, msg)
		if pending {
			return nil, &conditionVerdict{metav1.ConditionTrue, reason, msg +
				". The old version keeps serving; fix the cause and change the spec (or set spec.image back) to retry"}
		}
		return nil, nil
	case databasev1.UpgradeFailed:
		set(databasev1.ConditionUpgrading, metav1.ConditionTrue, databasev1.ReasonUpgradeFailed, msg)
		return &verdict{databasev1.PhaseFailed, databasev1.ReasonUpgradeFailed, msg}, nil
	}
	set(databasev1.ConditionUpgrading, metav1.ConditionTrue, databasev1.ReasonUpgradeInProgress, msg)
	if stoppedUpgrade(u.Phase) || u.Phase == databasev1.UpgradeStarting {
		return &verdict{databasev1.PhaseUpgrading, databasev1.ReasonUpgradeInProgress, msg}, nil
	}
	return nil, nil
}
