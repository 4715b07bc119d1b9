package backup

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	databasev1 "github.com/example/postgres-operator/api/v1"
	enginepkg "github.com/example/postgres-operator/internal/backup"
	"github.com/example/postgres-operator/internal/metrics"
)

const waitRequeue = 10 * time.Second

// BackupReconciler reconciles Backups: one-shot Backups run a Job; scheduled ones
// create a child Backup per schedule slot and apply the retention.
type BackupReconciler struct{ Runner }

// +kubebuilder:rbac:groups=database.example.com,resources=backups,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=database.example.com,resources=backups/status,verbs=get;patch;update
// +kubebuilder:rbac:groups=database.example.com,resources=backups/finalizers,verbs=update
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims,verbs=get;list;watch;create;patch

// Reconcile moves one Backup forward.
func (r *BackupReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	b := &databasev1.Backup{}
	if err := r.Get(ctx, req.NamespacedName, b); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !b.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(ctx, b)
	}
	orig := b.DeepCopy()
	before := b.Status.DeepCopy()
	var res ctrl.Result
	var err error
	if b.Spec.Schedule != "" {
		res, err = r.reconcileSchedule(ctx, b)
	} else {
		res, err = r.reconcileRun(ctx, b)
	}
	b.Status.ObservedGeneration = b.Generation
	b.Status.Error = failureMessage(b.Status.Phase == databasev1.BackupFailed, b.Status.Conditions)
	if !equality.Semantic.DeepEqual(*before, b.Status) {
		if perr := r.Status().Patch(ctx, b, client.MergeFrom(orig), client.FieldOwner(FieldOwner)); perr != nil {
			return ctrl.Result{}, errors.Join(err, fmt.Errorf("writing status: %w", perr))
		}
		phaseEvent(ctx, r.Recorder, b, "Backup", string(before.Phase), string(b.Status.Phase), b.Status.Conditions)
		if b.Spec.Schedule == "" && before.Phase != databasev1.BackupFailed && b.Status.Phase == databasev1.BackupFailed {
			metrics.BackupFailures.WithLabelValues(b.Namespace, b.Spec.DatabaseRef.Name).Inc()
		}
	}
	return res, err
}

func (r *BackupReconciler) pending(b *databasev1.Backup, reason, msg string) (ctrl.Result, error) {
	b.Status.Phase = databasev1.BackupPending
	conditionsFor(&b.Status.Conditions, b.Generation, false, false, reason, msg)
	return ctrl.Result{RequeueAfter: waitRequeue}, nil
}

func (r *BackupReconciler) failed(b *databasev1.Backup, reason, msg string) (ctrl.Result, error) {
	b.Status.Phase = databasev1.BackupFailed
	conditionsFor(&b.Status.Conditions, b.Generation, false, true, reason, msg)
	return ctrl.Result{}, nil
}

// artifactKey is where a Backup's artifact goes inside its location:
// <namespace>/<database>/<database UID>/<backup>-<backup UID prefix>.dump.zst.
// The Database's UID keeps clusters (and re-created Databases) that share a bucket
// apart; the Backup's keeps a re-created Backup of the same name from overwriting
// an artifact its predecessor left.
func artifactKey(b *databasev1.Backup, db *databasev1.Database, t enginepkg.Target) string {
	return t.Location.Key(fmt.Sprintf("%s/%s/%s/%s-%s.dump.zst", b.Namespace, db.Name, db.UID, b.Name, shortUID(b.UID)))
}

func shortUID(uid types.UID) string {
	s := strings.ReplaceAll(string(uid), "-", "")
	return s[:min(len(s), 8)]
}

// reconcileRun drives a one-shot Backup: wait for the Database and storage, run
// the Job, report its result.
func (r *BackupReconciler) reconcileRun(ctx context.Context, b *databasev1.Backup) (ctrl.Result, error) {
	if b.Status.Phase == databasev1.BackupCompleted || b.Status.Phase == databasev1.BackupFailed {
		return ctrl.Result{}, nil
	}
	physical := b.Spec.Method == databasev1.BackupMethodPhysical
	b.Status.Method = databasev1.BackupMethodLogical
	var target enginepkg.Target
	var isDefault bool
	if physical {
		b.Status.Method = databasev1.BackupMethodPhysical
	} else {
		var ok bool
		var err error
		target, isDefault, ok, err = resolveTarget(b, r.Defaults)
		if err != nil {
			return r.failed(b, databasev1.ReasonNoStorageLocation, err.Error())
		}
		if !ok {
			return r.failed(b, databasev1.ReasonNoStorageLocation,
				"No storage location: set spec.storageLocation (s3://bucket/prefix with spec.s3, or pvc://claim/path) "+
					"or start the operator with --default-backup-location")
		}
	}
	jobName := enginepkg.JobName(b.Name, "backup")
	job := &batchv1.Job{}
	err := r.Get(ctx, types.NamespacedName{Namespace: b.Namespace, Name: jobName}, job)
	if err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	if err == nil && !metav1.IsControlledBy(job, b) {
		// A Job of an earlier Backup of the same name: its result is not ours.
		return r.removeForeignJob(ctx, b, job)
	}
	if apierrors.IsNotFound(err) {
		// Not started yet: everything it needs must be there.
		db := &databasev1.Database{}
		if err := r.Get(ctx, types.NamespacedName{Namespace: b.Namespace, Name: b.Spec.DatabaseRef.Name}, db); err != nil {
			if apierrors.IsNotFound(err) {
				return r.pending(b, databasev1.ReasonDatabaseNotFound, fmt.Sprintf("Waiting for Database %s to exist", b.Spec.DatabaseRef.Name))
			}
			return ctrl.Result{}, err
		}
		if ok, why := primaryAvailable(db); !ok {
			return r.pending(b, databasev1.ReasonDatabaseNotReady, why)
		}
		if rs, err := restoreRunning(ctx, r, b.Namespace, db.Name); err != nil || rs != "" {
			if err != nil {
				return ctrl.Result{}, err
			}
			return r.pending(b, databasev1.ReasonRestoreInProgress, fmt.Sprintf("Waiting for Restore %s of Database %s to finish", rs, db.Name))
		}
		var spec enginepkg.JobSpec
		var location string
		if physical {
			ps, src, err := r.physicalJob(ctx, b, db, jobName)
			if err != nil {
				return ctrl.Result{}, err
			}
			if ps == nil {
				return r.pending(b, src.Reason, src.Message)
			}
			spec, location = *ps, physicalLocation(db, ps.Physical.BaseName)
		} else {
			if wait, err := r.ensureStorage(ctx, b.Namespace, target, isDefault); err != nil || wait != "" {
				if err != nil {
					return ctrl.Result{}, err
				}
				return r.pending(b, databasev1.ReasonStorageNotFound, wait)
			}
			if wait, err := encryptionWait(ctx, r.APIReader, b.Namespace, b.Spec.Encryption); err != nil || wait != "" {
				if err != nil {
					return ctrl.Result{}, err
				}
				return r.pending(b, databasev1.ReasonEncryptionKeyNotFound, wait)
			}
			spec = enginepkg.JobSpec{ClusterDomain: r.ClusterDomain,
				Name: jobName, Namespace: b.Namespace, Action: "run", Image: databaseImage(db), AgentImage: r.AgentImage,
				Database: db, Target: target, Key: artifactKey(b, db, target), Owner: ownerRef(b, "Backup"),
				ManifestKeySecret: db.Name + "-internal", EncryptionSecret: encryptionSecret(b.Spec.Encryption),
				Labels: map[string]string{LabelManagedBy: ManagedBy, "database.example.com/backup": enginepkg.LabelValue(b.Name)},
			}
			location = target.Location.URL(artifactKey(b, db, target))
		}
		if err := r.patchFinalizer(ctx, b, controllerutil.AddFinalizer); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
		}
		job = enginepkg.BuildJob(spec)
		if err := r.Create(ctx, job, client.FieldOwner(FieldOwner)); err != nil && !apierrors.IsAlreadyExists(err) {
			return ctrl.Result{}, fmt.Errorf("creating backup job: %w", err)
		}
		// Recorded once: deletion and restores use this, never a recomputed one.
		b.Status.BackupLocation = location
		logf.FromContext(ctx).Info("backup job created", "job", jobName, "location", b.Status.BackupLocation)
	}
	b.Status.JobName = jobName
	if b.Status.BackupLocation == "" {
		// A Job created before the location was recorded: its --key says.
		b.Status.BackupLocation = jobLocation(job, target)
	}
	switch stateOf(job) {
	case jobSucceeded:
		res, err := jobResult(ctx, r, job)
		if err != nil {
			return ctrl.Result{}, err
		}
		b.Status.Phase = databasev1.BackupCompleted
		now := metav1.NewTime(r.Clock.Now())
		b.Status.BackupTime = &now
		if physical {
			if res == nil || res.Base == nil {
				// A run's result is its proof: without it nothing says the
				// base backup was verified.
				return r.failed(b, databasev1.ReasonJobFailed, "Job "+jobName+" succeeded without reporting its base backup")
			}
			completePhysical(b, res.Base)
			conditionsFor(&b.Status.Conditions, b.Generation, true, false, databasev1.ReasonCompleted,
				fmt.Sprintf("The base backup was read back and its %d files checked against PostgreSQL's backup manifest; its WAL %s to %s is archived",
					res.Base.Files, res.Base.StartWAL, res.Base.EndWAL))
			return ctrl.Result{}, nil
		}
		if res != nil && res.Manifest != nil {
			m := res.Manifest
			b.Status.SizeBytes, b.Status.SHA256, b.Status.ServerVersion, b.Status.Format = m.SizeBytes, m.SHA256, m.ServerVersion, m.Format
			b.Status.Duration = m.EndTime.Sub(m.StartTime).Round(time.Millisecond).String()
			t := metav1.NewTime(m.EndTime)
			b.Status.BackupTime = &t
		}
		conditionsFor(&b.Status.Conditions, b.Generation, true, false, databasev1.ReasonCompleted,
			"The artifact was written and verified (checksum and pg_restore --list)")
		return ctrl.Result{}, nil
	case jobFailed:
		return r.failed(b, databasev1.ReasonJobFailed, jobFailureMessage(ctx, r, job))
	default:
		b.Status.Phase = databasev1.BackupInProgress
		what := "pg_dump"
		if physical {
			what = "pg_basebackup"
		}
		conditionsFor(&b.Status.Conditions, b.Generation, false, false, databasev1.ReasonJobRunning, "Job "+jobName+" is running "+what)
		return ctrl.Result{}, nil
	}
}

// jobLocation is the artifact URL of a backup Job, from its --key argument.
func jobLocation(job *batchv1.Job, t enginepkg.Target) string {
	for _, c := range job.Spec.Template.Spec.Containers {
		for _, a := range c.Command {
			if k, ok := strings.CutPrefix(a, "--key="); ok {
				return t.Location.URL(k)
			}
		}
	}
	return ""
}

// ensureStorage checks the claim of a pvc:// target, creating the default one.
func (r *BackupReconciler) ensureStorage(ctx context.Context, ns string, t enginepkg.Target, isDefault bool) (string, error) {
	switch t.Location.Scheme {
	case "pvc":
		pvc := &corev1.PersistentVolumeClaim{}
		err := r.Get(ctx, types.NamespacedName{Namespace: ns, Name: t.Location.Bucket}, pvc)
		if err == nil {
			return "", nil
		}
		if !apierrors.IsNotFound(err) {
			return "", err
		}
		if !isDefault {
			return fmt.Sprintf("Waiting for PersistentVolumeClaim %s (spec.storageLocation) to exist", t.Location.Bucket), nil
		}
		size, err := resource.ParseQuantity(r.Defaults.PVCSize)
		if err != nil {
			size = resource.MustParse("5Gi")
		}
		pvc = &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: t.Location.Bucket, Namespace: ns, Labels: map[string]string{LabelManagedBy: ManagedBy}},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
			},
		}
		if r.Defaults.PVCStorageClass != "" {
			pvc.Spec.StorageClassName = &r.Defaults.PVCStorageClass
		}
		// Not owned by any Backup: it holds the artifacts of all of them.
		if err := r.Create(ctx, pvc, client.FieldOwner(FieldOwner)); err != nil && !apierrors.IsAlreadyExists(err) {
			return "", fmt.Errorf("creating the default backup volume %s: %w", pvc.Name, err)
		}
		return "", nil
	case "s3":
		s := &corev1.Secret{}
		err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: ns, Name: t.S3.CredentialsSecret.Name}, s)
		if apierrors.IsNotFound(err) {
			return fmt.Sprintf("Waiting for the S3 credentials Secret %s", t.S3.CredentialsSecret.Name), nil
		}
		return "", err
	}
	return "", nil
}

// reconcileDelete removes the artifact a Backup wrote (and only that), then lets
// the Backup go.
func (r *BackupReconciler) reconcileDelete(ctx context.Context, b *databasev1.Backup) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(b, Finalizer) {
		return ctrl.Result{}, nil
	}
	release := func() (ctrl.Result, error) {
		return ctrl.Result{}, client.IgnoreNotFound(r.patchFinalizer(ctx, b, controllerutil.RemoveFinalizer))
	}
	if b.Status.Phase != databasev1.BackupCompleted && b.Status.Phase != databasev1.BackupFailed {
		// A run in progress: its Job is stopped (the engine aborts the upload or
		// removes its partial file when the pod is killed) and the Backup is
		// released once the Job is gone.
		name := b.Status.JobName
		if name == "" {
			name = enginepkg.JobName(b.Name, "backup")
		}
		job := &batchv1.Job{}
		err := r.Get(ctx, types.NamespacedName{Namespace: b.Namespace, Name: name}, job)
		switch {
		case apierrors.IsNotFound(err) || (err == nil && !metav1.IsControlledBy(job, b)):
			return release()
		case err != nil:
			return ctrl.Result{}, err
		}
		if err := r.deleteJob(ctx, b.Namespace, name); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	if b.Status.BackupLocation == "" {
		return release() // nothing was written
	}
	if b.Status.Method == databasev1.BackupMethodPhysical && b.Status.BaseBackup == nil {
		// A run that failed removed what it wrote; one that completed
		// records its base backup.
		return release()
	}
	jobName := enginepkg.JobName(b.Name, "delete")
	job := &batchv1.Job{}
	err := r.Get(ctx, types.NamespacedName{Namespace: b.Namespace, Name: jobName}, job)
	if err == nil && !metav1.IsControlledBy(job, b) {
		return r.removeForeignJob(ctx, b, job)
	}
	if apierrors.IsNotFound(err) {
		var spec *enginepkg.JobSpec
		if b.Status.BaseBackup != nil {
			ps, why, err := r.physicalDeleteJob(ctx, b, jobName)
			if err != nil {
				return ctrl.Result{}, err
			}
			if ps == nil {
				r.event(b, corev1.EventTypeWarning, "ArtifactNotDeleted", why)
				return release()
			}
			spec = ps
		} else {
			// The artifact is deleted where status says it was written, never at a
			// location recomputed from the spec and the current defaults.
			target, key, err := restoreTarget(b, r.Defaults)
			if err != nil {
				r.event(b, corev1.EventTypeWarning, "ArtifactNotDeleted", fmt.Sprintf("Cannot delete %s: %v", b.Status.BackupLocation, err))
				return release()
			}
			spec = &enginepkg.JobSpec{ClusterDomain: r.ClusterDomain,
				Name: jobName, Namespace: b.Namespace, Action: "delete", Image: r.AgentImage, AgentImage: r.AgentImage,
				Target: target, Key: key, Owner: ownerRef(b, "Backup"),
				Labels: map[string]string{LabelManagedBy: ManagedBy, "database.example.com/backup": enginepkg.LabelValue(b.Name)},
			}
		}
		job = enginepkg.BuildJob(*spec)
		// The operator image has no shell and no PostgreSQL: run the binary directly.
		job.Spec.Template.Spec.Containers[0].Command[0] = "/manager"
		job.Spec.Template.Spec.InitContainers = nil
		err := r.Create(ctx, job, client.FieldOwner(FieldOwner))
		if apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
			// The namespace is being deleted: no Job can run in it any more. Release
			// the Backup (a deleted namespace must never hang) and say what is left.
			r.event(b, corev1.EventTypeWarning, "ArtifactNotDeleted",
				fmt.Sprintf("The namespace is being deleted, so no Job can delete the artifact: %s is left in place", b.Status.BackupLocation))
			logf.FromContext(ctx).Info("artifact left in place: namespace terminating", "location", b.Status.BackupLocation)
			return release()
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return ctrl.Result{}, fmt.Errorf("creating artifact deletion job: %w", err)
		}
		return ctrl.Result{}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	switch stateOf(job) {
	case jobSucceeded:
		return release()
	case jobFailed:
		if r.Recorder != nil {
			r.Recorder.Eventf(b, nil, corev1.EventTypeWarning, "ArtifactNotDeleted", "Delete",
				"Could not delete %s: %s", b.Status.BackupLocation, jobFailureMessage(ctx, r, job))
		}
		return release()
	}
	return ctrl.Result{}, nil
}

// patchFinalizer adds or removes the finalizer with an optimistic-lock patch.
func (r *BackupReconciler) patchFinalizer(ctx context.Context, b *databasev1.Backup, change func(client.Object, string) bool) error {
	base := b.DeepCopy()
	if !change(b, Finalizer) {
		return nil
	}
	return r.Patch(ctx, b, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{}), client.FieldOwner(FieldOwner))
}

// removeForeignJob deletes a Job that has this Backup's Job name but belongs to
// another (earlier) object, and waits for it to go: a re-created Backup never
// takes over a finished Job it did not create.
func (r *BackupReconciler) removeForeignJob(ctx context.Context, b *databasev1.Backup, job *batchv1.Job) (ctrl.Result, error) {
	if job.DeletionTimestamp == nil {
		if err := r.Delete(ctx, job, client.PropagationPolicy(metav1.DeletePropagationBackground), client.Preconditions{UID: &job.UID}); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("removing job %s of an earlier object: %w", job.Name, err)
		}
		logf.FromContext(ctx).Info("removed a job of an earlier object with the same name", "job", job.Name)
	}
	return ctrl.Result{RequeueAfter: time.Second}, nil
}

func (r *BackupReconciler) event(b *databasev1.Backup, typ, reason, msg string) {
	if r.Recorder != nil {
		r.Recorder.Eventf(b, nil, typ, reason, "Delete", "%s", msg)
	}
}

func (r *BackupReconciler) deleteJob(ctx context.Context, ns, name string) error {
	if name == "" {
		return nil
	}
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	return client.IgnoreNotFound(r.Delete(ctx, job, client.PropagationPolicy(metav1.DeletePropagationBackground)))
}

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// reconcileSchedule creates the run of the latest due slot (one, whatever the
// downtime), never two for a slot and none while a run is active, and keeps the
// newest Retention completed runs.
func (r *BackupReconciler) reconcileSchedule(ctx context.Context, b *databasev1.Backup) (ctrl.Result, error) {
	sched, err := cronParser.Parse(b.Spec.Schedule)
	if err != nil {
		return r.failed(b, databasev1.ReasonInvalidSchedule, fmt.Sprintf("Invalid schedule %q: %v", b.Spec.Schedule, err))
	}
	// UTC unless spec.timeZone names another zone: never the operator's local time.
	loc := time.UTC
	if b.Spec.TimeZone != "" {
		if loc, err = time.LoadLocation(b.Spec.TimeZone); err != nil {
			return r.failed(b, databasev1.ReasonInvalidSchedule, fmt.Sprintf("Unknown spec.timeZone %q: use an IANA zone such as Europe/Paris", b.Spec.TimeZone))
		}
	}
	var runs databasev1.BackupList
	if err := r.List(ctx, &runs, client.InNamespace(b.Namespace), client.MatchingLabels{LabelSchedule: enginepkg.LabelValue(b.Name)}); err != nil {
		return ctrl.Result{}, err
	}
	now := r.Clock.Now().In(loc)
	last := b.CreationTimestamp.Time.In(loc)
	if b.Status.LastScheduledTime != nil {
		last = b.Status.LastScheduledTime.Time.In(loc)
	}
	due := latestSlot(sched, last, now)
	if b.Spec.Suspend {
		// No runs while suspended, and none to catch up on when resumed.
		if !due.IsZero() {
			t := metav1.NewTime(due)
			b.Status.LastScheduledTime = &t
		}
		if err := r.applyRetention(ctx, b, runs.Items); err != nil {
			return ctrl.Result{}, err
		}
		r.summarise(b, runs.Items)
		setCondition(&b.Status.Conditions, b.Generation, databasev1.ConditionReady, metav1.ConditionTrue, databasev1.ReasonSuspended,
			"The schedule is suspended (spec.suspend): no runs are created")
		return ctrl.Result{RequeueAfter: sched.Next(now).Sub(now) + time.Second}, nil
	}
	active, pending := false, []databasev1.Backup{}
	for _, run := range runs.Items {
		switch run.Status.Phase {
		case databasev1.BackupInProgress:
			active = true
		case databasev1.BackupPending:
			// Stuck: waiting for its Database or storage. A run that waits for
			// a Restore starts when it ends; one not yet reconciled is new.
			if c := meta.FindStatusCondition(run.Status.Conditions, databasev1.ConditionReady); c == nil || c.Reason != databasev1.ReasonRestoreInProgress {
				pending = append(pending, run)
			}
		case "":
			active = true
		}
	}
	late := !due.IsZero() && b.Spec.StartingDeadlineSeconds != nil &&
		now.Sub(due) > time.Duration(*b.Spec.StartingDeadlineSeconds)*time.Second
	switch {
	case late:
		// Too late for this slot (the operator was down): skipped, not run now.
		if r.Recorder != nil {
			r.Recorder.Eventf(b, nil, corev1.EventTypeWarning, "MissedStartingDeadline", "Schedule",
				"Skipped the run of %s: it is %s late, past startingDeadlineSeconds %d", due.UTC().Format(time.RFC3339),
				now.Sub(due).Round(time.Second), *b.Spec.StartingDeadlineSeconds)
		}
		t := metav1.NewTime(due)
		b.Status.LastScheduledTime = &t
		due = time.Time{}
	case !due.IsZero() && !active && len(pending) > 0:
		// A run that never started (its Database was not available, say) does
		// not block the schedule forever: the new slot supersedes it.
		for i := range pending {
			if err := r.Delete(ctx, &pending[i], client.Preconditions{UID: &pending[i].UID}); err != nil && !apierrors.IsNotFound(err) {
				return ctrl.Result{}, fmt.Errorf("removing superseded run %s: %w", pending[i].Name, err)
			}
			if r.Recorder != nil {
				r.Recorder.Eventf(b, nil, corev1.EventTypeWarning, "SupersededPendingRun", "Schedule",
					"Run %s never started and was replaced by the run of %s", pending[i].Name, due.UTC().Format(time.RFC3339))
			}
		}
	}
	if !due.IsZero() {
		name := fmt.Sprintf("%s-%d", b.Name, due.Unix())
		if active {
			if r.Recorder != nil {
				r.Recorder.Eventf(b, nil, corev1.EventTypeNormal, "SkippedOverlap", "Schedule",
					"Skipped the run of %s: the previous run is still active", due.UTC().Format(time.RFC3339))
			}
		} else if err := r.createRun(ctx, b, name); err != nil {
			return ctrl.Result{}, err
		}
		t := metav1.NewTime(due)
		b.Status.LastScheduledTime = &t
	}
	if err := r.applyRetention(ctx, b, runs.Items); err != nil {
		return ctrl.Result{}, err
	}
	r.summarise(b, runs.Items)
	requeue := sched.Next(now).Sub(now) + time.Second
	verifyIn, err := r.reconcileVerify(ctx, b, loc, now, runs.Items)
	if err != nil {
		return ctrl.Result{}, err
	}
	if verifyIn > 0 && verifyIn < requeue {
		requeue = verifyIn
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// latestSlot returns the latest schedule time in (after, now], or zero.
func latestSlot(s cron.Schedule, after, now time.Time) time.Time {
	var due time.Time
	for t, i := s.Next(after), 0; !t.After(now); t, i = s.Next(t), i+1 {
		due = t
		if i > 100000 {
			break
		}
	}
	return due
}

func (r *BackupReconciler) createRun(ctx context.Context, b *databasev1.Backup, name string) error {
	run := &databasev1.Backup{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: b.Namespace,
			Labels:          map[string]string{LabelSchedule: enginepkg.LabelValue(b.Name), LabelManagedBy: ManagedBy},
			OwnerReferences: []metav1.OwnerReference{ownerRef(b, "Backup")},
		},
		Spec: databasev1.BackupSpec{DatabaseRef: b.Spec.DatabaseRef, Method: b.Spec.Method, StorageLocation: b.Spec.StorageLocation, S3: b.Spec.S3,
			Encryption: b.Spec.Encryption},
	}
	if err := r.Create(ctx, run, client.FieldOwner(FieldOwner)); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating scheduled run %s: %w", name, err)
	}
	logf.FromContext(ctx).Info("scheduled backup run created", "run", name)
	return nil
}

// applyRetention deletes completed runs beyond the newest Retention (their
// finalizer deletes the artifacts) and failed runs beyond the newest three.
func (r *BackupReconciler) applyRetention(ctx context.Context, b *databasev1.Backup, runs []databasev1.Backup) error {
	keep := int32(5)
	if b.Spec.Retention != nil {
		keep = *b.Spec.Retention
	}
	completed, failed := byPhase(runs, databasev1.BackupCompleted), byPhase(runs, databasev1.BackupFailed)
	var drop []databasev1.Backup
	if len(completed) > int(keep) {
		drop = append(drop, completed[keep:]...)
	}
	if len(failed) > 3 {
		drop = append(drop, failed[3:]...)
	}
	inUse, err := r.runsInUse(ctx, b.Namespace)
	if err != nil {
		return err
	}
	for i := range drop {
		if drop[i].DeletionTimestamp != nil || inUse[drop[i].Name] {
			continue
		}
		if err := r.Delete(ctx, &drop[i]); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("deleting expired run %s: %w", drop[i].Name, err)
		}
		logf.FromContext(ctx).Info("expired backup run deleted", "run", drop[i].Name)
	}
	return nil
}

// runsInUse are the Backups that unfinished Restores of the namespace restore
// from: retention never deletes those.
func (r *BackupReconciler) runsInUse(ctx context.Context, ns string) (map[string]bool, error) {
	var restores databasev1.RestoreList
	if err := r.List(ctx, &restores, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("listing restores: %w", err)
	}
	out := map[string]bool{}
	for _, rs := range restores.Items {
		if rs.Status.Phase != databasev1.RestoreCompleted && rs.Status.Phase != databasev1.RestoreFailed && rs.Status.BackupName != "" {
			out[rs.Status.BackupName] = true
		}
	}
	return out, nil
}

// restoreRunning names an unfinished Restore of database in ns that has a Job
// ("" when none).
func restoreRunning(ctx context.Context, c client.Reader, ns, database string) (string, error) {
	var restores databasev1.RestoreList
	if err := c.List(ctx, &restores, client.InNamespace(ns)); err != nil {
		return "", fmt.Errorf("listing restores: %w", err)
	}
	for _, rs := range restores.Items {
		if rs.Spec.DatabaseRef.Name == database && rs.Status.Phase == databasev1.RestoreInProgress {
			return rs.Name, nil
		}
	}
	return "", nil
}

// byPhase returns the runs in a phase, newest first: run names end with the unix
// time of their slot.
func byPhase(runs []databasev1.Backup, phase databasev1.BackupPhase) []databasev1.Backup {
	var out []databasev1.Backup
	for _, r := range runs {
		if r.Status.Phase == phase && r.DeletionTimestamp == nil {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name > out[j].Name })
	return out
}

// summarise reports the schedule's state from its runs.
func (r *BackupReconciler) summarise(b *databasev1.Backup, runs []databasev1.Backup) {
	keep := int32(5)
	if b.Spec.Retention != nil {
		keep = *b.Spec.Retention
	}
	completed := byPhase(runs, databasev1.BackupCompleted)
	b.Status.BackupCount = min(int32(len(completed)), keep)
	if len(completed) > 0 {
		newest := completed[0]
		b.Status.BackupTime, b.Status.BackupLocation = newest.Status.BackupTime, newest.Status.BackupLocation
		b.Status.SizeBytes, b.Status.SHA256, b.Status.ServerVersion, b.Status.Format, b.Status.Duration =
			newest.Status.SizeBytes, newest.Status.SHA256, newest.Status.ServerVersion, newest.Status.Format, newest.Status.Duration
	}
	var newest *databasev1.Backup
	for i := range runs {
		if newest == nil || runs[i].Name > newest.Name {
			newest = &runs[i]
		}
	}
	msg := fmt.Sprintf("Schedule %q: %d completed run(s) kept", b.Spec.Schedule, b.Status.BackupCount)
	switch {
	case newest == nil:
		b.Status.Phase = databasev1.BackupPending
		conditionsFor(&b.Status.Conditions, b.Generation, false, false, databasev1.ReasonScheduled, msg+"; waiting for the first slot")
	case newest.Status.Phase == "":
		b.Status.Phase = databasev1.BackupPending
		conditionsFor(&b.Status.Conditions, b.Generation, false, false, databasev1.ReasonScheduled, msg)
	default:
		b.Status.Phase = newest.Status.Phase
		if f := latestFinished(runs); f != nil && f.Status.Phase == databasev1.BackupFailed {
			// The schedule is not Ready while its latest finished run failed: a
			// schedule whose backups silently stopped working must show it.
			why := ""
			if c := meta.FindStatusCondition(f.Status.Conditions, databasev1.ConditionStalled); c != nil {
				why = ": " + c.Message
			}
			conditionsFor(&b.Status.Conditions, b.Generation, false, false, databasev1.ReasonLastRunFailed,
				fmt.Sprintf("%s; the latest run %s failed%s", msg, f.Name, why))
			return
		}
		conditionsFor(&b.Status.Conditions, b.Generation, b.Status.BackupCount > 0, false, databasev1.ReasonScheduled, msg)
	}
}

// latestFinished is the newest run that Completed or Failed (names end with the
// slot's unix time).
func latestFinished(runs []databasev1.Backup) *databasev1.Backup {
	var out *databasev1.Backup
	for i := range runs {
		p := runs[i].Status.Phase
		if (p == databasev1.BackupCompleted || p == databasev1.BackupFailed) && (out == nil || runs[i].Name > out.Name) {
			out = &runs[i]
		}
	}
	return out
}

// SetupWithManager watches Backups, their Jobs and runs, and the Databases they
// wait for.
func (r *BackupReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &databasev1.Backup{}, databaseRefField, func(o client.Object) []string {
		return []string{o.(*databasev1.Backup).Spec.DatabaseRef.Name}
	}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&databasev1.Backup{}).
		Owns(&batchv1.Job{}).
		Owns(&databasev1.Backup{}).
		Watches(&databasev1.Database{}, handler.EnqueueRequestsFromMapFunc(r.backupsOfDatabase)).
		Named("backup").
		Complete(r)
}

const databaseRefField = ".spec.databaseRef.name"

func (r *BackupReconciler) backupsOfDatabase(ctx context.Context, o client.Object) []ctrl.Request {
	var list databasev1.BackupList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{databaseRefField: o.GetName()}); err != nil {
		return nil
	}
	out := make([]ctrl.Request, 0, len(list.Items))
	for _, b := range list.Items {
		if b.Status.Phase == "" || b.Status.Phase == databasev1.BackupPending {
			out = append(out, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: b.Namespace, Name: b.Name}})
		}
	}
	return out
}
