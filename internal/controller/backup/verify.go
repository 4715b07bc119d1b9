package backup

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
	enginepkg "github.com/example/postgres-operator/internal/backup"
)

// Restore drills (spec.verify of a scheduled Backup): at each slot of
// spec.verify.schedule a Job restores the schedule's newest completed run into a
// scratch database on the primary (the agent's verify-only restore), compares
// every table's rows with the manifest's counts and drops it; the outcome goes
// to status.lastVerification and condition Verified.

// Labels of drill Jobs: the schedule they drill and the Database they use (a
// Restore of that Database waits for them: the agent restores one at a time).
const (
	LabelVerify         = "database.example.com/verify"
	LabelVerifyDatabase = "database.example.com/verify-database"
)

// reconcileVerify records finished drills and starts a due one; it returns how
// long until the next slot (0 when nothing is scheduled).
func (r *BackupReconciler) reconcileVerify(ctx context.Context, b *databasev1.Backup, loc *time.Location, now time.Time,
	runs []databasev1.Backup) (time.Duration, error) {
	if b.Spec.Verify == nil {
		return 0, nil
	}
	sched, err := cronParser.Parse(b.Spec.Verify.Schedule)
	if err != nil {
		setCondition(&b.Status.Conditions, b.Generation, databasev1.ConditionVerified, metav1.ConditionFalse, databasev1.ReasonInvalidSchedule,
			fmt.Sprintf("Invalid verify.schedule %q: %v", b.Spec.Verify.Schedule, err))
		return 0, nil
	}
	var jobs batchv1.JobList
	if err := r.List(ctx, &jobs, client.InNamespace(b.Namespace), client.MatchingLabels{LabelVerify: enginepkg.LabelValue(b.Name)}); err != nil {
		return 0, err
	}
	active := r.recordDrills(ctx, b, jobs.Items)
	next := sched.Next(now).Sub(now) + time.Second

	last := b.CreationTimestamp.Time.In(loc)
	if b.Status.LastVerificationScheduledTime != nil {
		last = b.Status.LastVerificationScheduledTime.Time.In(loc)
	}
	due := latestSlot(sched, last, now)
	if due.IsZero() || active {
		return next, nil
	}
	completed := byPhase(runs, databasev1.BackupCompleted)
	if len(completed) == 0 {
		// Nothing to drill yet: this slot passes.
		b.Status.LastVerificationScheduledTime = &metav1.Time{Time: due}
		return next, nil
	}
	run := completed[0]
	db := &databasev1.Database{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: b.Namespace, Name: b.Spec.DatabaseRef.Name}, db); err != nil {
		if apierrors.IsNotFound(err) {
			return waitRequeue, nil
		}
		return 0, err
	}
	if ok, _ := primaryAvailable(db); !ok || db.Status.CurrentPrimary == "" {
		return waitRequeue, nil // the slot stays due until the primary is back
	}
	if rs, err := restoreRunning(ctx, r, b.Namespace, db.Name); err != nil || rs != "" {
		return waitRequeue, err
	}
	if wait, err := encryptionWait(ctx, r.APIReader, b.Namespace, run.Spec.Encryption); err != nil || wait != "" {
		return waitRequeue, err // the slot stays due until the key is there
	}
	target, key, err := restoreTarget(&run, r.Defaults)
	if err != nil {
		return 0, err
	}
	rj := &enginepkg.RestoreJob{ID: "v" + shortUID(b.UID) + strconv.FormatInt(due.Unix(), 36),
		ExpectSHA256: run.Status.SHA256, DatabaseUID: string(db.UID), Jobs: 2, VerifyOnly: true}
	if err := agentAccess(ctx, r, db, rj, r.ClusterDomain); err != nil {
		return 0, err
	}
	job := enginepkg.BuildJob(enginepkg.JobSpec{ClusterDomain: r.ClusterDomain,
		Name: enginepkg.JobName(b.Name, fmt.Sprintf("verify-%d", due.Unix())), Namespace: b.Namespace, Action: "restore",
		Image: databaseImage(db), AgentImage: r.AgentImage, Target: target, Key: key, Owner: ownerRef(b, "Backup"),
		ManifestKeySecret: db.Name + "-internal", EncryptionSecret: encryptionSecret(run.Spec.Encryption),
		Labels: map[string]string{LabelManagedBy: ManagedBy, LabelVerify: enginepkg.LabelValue(b.Name),
			LabelVerifyDatabase: enginepkg.LabelValue(db.Name), "database.example.com/verified-run": enginepkg.LabelValue(run.Name)},
		Restore: rj,
	})
	if err := r.Create(ctx, job, client.FieldOwner(FieldOwner)); err != nil && !apierrors.IsAlreadyExists(err) {
		return 0, fmt.Errorf("creating the restore drill job: %w", err)
	}
	b.Status.LastVerificationScheduledTime = &metav1.Time{Time: due}
	return next, nil
}

// recordDrills writes the newest finished drill into status and condition
// Verified, removes older finished drill Jobs, and reports whether one runs.
func (r *BackupReconciler) recordDrills(ctx context.Context, b *databasev1.Backup, jobs []batchv1.Job) (active bool) {
	// Newest first: by creation, then by name (names end with the slot's unix
	// time; creation times have a resolution of a second).
	sort.Slice(jobs, func(i, j int) bool {
		ti, tj := jobs[i].CreationTimestamp.Time, jobs[j].CreationTimestamp.Time
		if !ti.Equal(tj) {
			return ti.After(tj)
		}
		return jobs[i].Name > jobs[j].Name
	})
	recorded := false
	for i := range jobs {
		job := &jobs[i]
		if !metav1.IsControlledBy(job, b) {
			continue
		}
		state := stateOf(job)
		if state == jobRunning {
			active = true
			continue
		}
		if recorded {
			_ = r.Delete(ctx, job, client.PropagationPolicy(metav1.DeletePropagationBackground))
			continue
		}
		recorded = true
		if b.Status.LastVerification != nil && b.Status.LastVerification.JobName == job.Name {
			continue
		}
		v := &databasev1.VerificationStatus{Time: metav1.NewTime(r.Clock.Now()), JobName: job.Name,
			BackupName: job.Labels["database.example.com/verified-run"]}
		if c := jobCompletion(job); c != nil {
			v.Time = *c
		}
		if state == jobSucceeded {
			v.Succeeded = true
			if res, err := jobResult(ctx, r, job); err == nil && res != nil && res.Restore != nil {
				v.RestoreDuration = (time.Duration(res.Restore.Seconds*1000) * time.Millisecond).String()
				v.Tables = int32(len(res.Restore.RowCounts))
			}
			v.Message = fmt.Sprintf("Run %s restored into a scratch database in %s; the rows of all %d tables match the backup's counts",
				v.BackupName, v.RestoreDuration, v.Tables)
		} else {
			v.Message = "Restore drill of run " + v.BackupName + " failed: " + jobFailureMessage(ctx, r, job)
		}
		b.Status.LastVerification = v
	}
	switch v := b.Status.LastVerification; {
	case v == nil:
		setCondition(&b.Status.Conditions, b.Generation, databasev1.ConditionVerified, metav1.ConditionFalse, databasev1.ReasonVerificationNotYetRun,
			"No restore drill has finished yet (spec.verify.schedule "+b.Spec.Verify.Schedule+")")
	case v.Succeeded:
		setCondition(&b.Status.Conditions, b.Generation, databasev1.ConditionVerified, metav1.ConditionTrue, databasev1.ReasonVerificationSucceeded, v.Message)
	default:
		setCondition(&b.Status.Conditions, b.Generation, databasev1.ConditionVerified, metav1.ConditionFalse, databasev1.ReasonVerificationFailed, v.Message)
	}
	return active
}

// drillRunning names a running drill Job that uses database ("" when none).
func drillRunning(ctx context.Context, c client.Reader, ns, database string) (string, error) {
	var jobs batchv1.JobList
	if err := c.List(ctx, &jobs, client.InNamespace(ns), client.MatchingLabels{LabelVerifyDatabase: enginepkg.LabelValue(database)}); err != nil {
		return "", fmt.Errorf("listing restore drills: %w", err)
	}
	for i := range jobs.Items {
		if stateOf(&jobs.Items[i]) == jobRunning {
			return jobs.Items[i].Name, nil
		}
	}
	return "", nil
}
