package backup

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	enginepkg "github.com/example/postgres-operator/internal/backup"
	"github.com/example/postgres-operator/internal/objectstore"
)

// RestoreReconciler reconciles Restores: once the Database is Ready and the Backup
// Completed, a Job with the Database's image verifies the artifact and restores it
// in one transaction.
type RestoreReconciler struct{ Runner }

// +kubebuilder:rbac:groups=database.example.com,resources=restores,verbs=get;list;watch
// +kubebuilder:rbac:groups=database.example.com,resources=restores/status,verbs=get;patch;update

// Reconcile moves one Restore forward.
func (r *RestoreReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	rs := &databasev1.Restore{}
	if err := r.Get(ctx, req.NamespacedName, rs); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !rs.DeletionTimestamp.IsZero() || rs.Status.Phase == databasev1.RestoreCompleted || rs.Status.Phase == databasev1.RestoreFailed {
		return ctrl.Result{}, nil
	}
	orig := rs.DeepCopy()
	res, err := r.reconcile(ctx, rs)
	rs.Status.ObservedGeneration = rs.Generation
	rs.Status.Error = failureMessage(rs.Status.Phase == databasev1.RestoreFailed, rs.Status.Conditions)
	if !equality.Semantic.DeepEqual(orig.Status, rs.Status) {
		if perr := r.Status().Patch(ctx, rs, client.MergeFrom(orig), client.FieldOwner(FieldOwner)); perr != nil {
			return ctrl.Result{}, errors.Join(err, perr)
		}
		phaseEvent(ctx, r.Recorder, rs, "Restore", string(orig.Status.Phase), string(rs.Status.Phase), rs.Status.Conditions)
	}
	return res, err
}

func (r *RestoreReconciler) pending(rs *databasev1.Restore, reason, msg string) (ctrl.Result, error) {
	rs.Status.Phase = databasev1.RestorePending
	conditionsFor(&rs.Status.Conditions, rs.Generation, false, false, reason, msg)
	return ctrl.Result{RequeueAfter: waitRequeue}, nil
}

func (r *RestoreReconciler) reconcile(ctx context.Context, rs *databasev1.Restore) (ctrl.Result, error) {
	if rs.Spec.PointInTime != nil || rs.Spec.Undo != "" {
		return r.reconcileInPlace(ctx, rs)
	}
	jobName := enginepkg.JobName(rs.Name, "restore")
	job := &batchv1.Job{}
	err := r.Get(ctx, types.NamespacedName{Namespace: rs.Namespace, Name: jobName}, job)
	if err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	if err == nil && !metav1.IsControlledBy(job, rs) {
		// A Job of an earlier Restore of the same name: it never completes this one.
		if job.DeletionTimestamp == nil {
			if err := r.Delete(ctx, job, client.PropagationPolicy(metav1.DeletePropagationBackground), client.Preconditions{UID: &job.UID}); err != nil && !apierrors.IsNotFound(err) {
				return ctrl.Result{}, fmt.Errorf("removing job %s of an earlier Restore: %w", job.Name, err)
			}
		}
		return r.pending(rs, databasev1.ReasonJobRunning, fmt.Sprintf("Removing Job %s, left by an earlier Restore of the same name", job.Name))
	}
	if apierrors.IsNotFound(err) {
		return r.start(ctx, rs, jobName)
	}
	rs.Status.JobName = jobName
	switch stateOf(job) {
	case jobSucceeded:
		rs.Status.Phase = databasev1.RestoreCompleted
		now := metav1.NewTime(r.Clock.Now())
		if c := jobCompletion(job); c != nil {
			now = *c
		}
		rs.Status.RestoreTime = &now
		msg := "The artifact's checksum was verified; it was restored into a new database and swapped in"
		if res, err := jobResult(ctx, r, job); err == nil && res != nil && res.Restore != nil {
			out := res.Restore
			rs.Status.PreviousDatabase = out.PreviousDatabase
			rs.Status.TerminatedSessions = int32(out.TerminatedSessions)
			rs.Status.Duration = (time.Duration(out.Seconds*1000) * time.Millisecond).String()
			if !out.PreviousDropAfter.IsZero() {
				t := metav1.NewTime(out.PreviousDropAfter)
				rs.Status.PreviousDatabaseDropAfter = &t
			}
			msg += fmt.Sprintf(" (%d tables, %d parallel jobs, %s", out.Tables, out.Jobs, rs.Status.Duration)
			if out.TerminatedSessions > 0 {
				msg += fmt.Sprintf("; %d sessions were terminated", out.TerminatedSessions)
				if r.Recorder != nil {
					r.Recorder.Eventf(rs, nil, corev1.EventTypeWarning, "SessionsTerminated", "Restore",
						"%d sessions of Database %s were terminated to swap in the restored database", out.TerminatedSessions, rs.Spec.DatabaseRef.Name)
				}
			}
			msg += ")"
			if out.PreviousDatabase != "" {
				msg += fmt.Sprintf("; the previous content is kept as database %s until %s", out.PreviousDatabase, out.PreviousDropAfter.Format(time.RFC3339))
			}
		}
		conditionsFor(&rs.Status.Conditions, rs.Generation, true, false, databasev1.ReasonCompleted, msg)
	case jobFailed:
		rs.Status.Phase = databasev1.RestoreFailed
		msg := jobFailureMessage(ctx, r, job)
		reason := databasev1.ReasonJobFailed
		switch {
		case strings.Contains(msg, enginepkg.ErrOtherDatabase):
			reason = databasev1.ReasonArtifactOfOtherDatabase
		case strings.Contains(msg, enginepkg.ErrUnauthenticated):
			reason = databasev1.ReasonManifestNotAuthenticated
		case strings.Contains(msg, enginepkg.ErrEncryptionKey):
			reason = databasev1.ReasonEncryptionKeyNotFound
		}
		conditionsFor(&rs.Status.Conditions, rs.Generation, false, true, reason,
			msg+" (the restore is swapped in only once complete: the database is unchanged)")
	default:
		rs.Status.Phase = databasev1.RestoreInProgress
		conditionsFor(&rs.Status.Conditions, rs.Generation, false, false, databasev1.ReasonJobRunning,
			"Job "+jobName+" is restoring into a new database on the primary; the application database is unchanged until the swap")
	}
	return ctrl.Result{}, nil
}

// start creates the restore Job once everything it needs is there, or says what
// the Restore waits for.
func (r *RestoreReconciler) start(ctx context.Context, rs *databasev1.Restore, jobName string) (ctrl.Result, error) {
	var err error
	db := &databasev1.Database{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: rs.Namespace, Name: rs.Spec.DatabaseRef.Name}, db); err != nil {
		if apierrors.IsNotFound(err) {
			return r.pending(rs, databasev1.ReasonDatabaseNotFound, fmt.Sprintf("Waiting for Database %s to exist", rs.Spec.DatabaseRef.Name))
		}
		return ctrl.Result{}, err
	}
	if ok, why := primaryAvailable(db); !ok || db.Status.CurrentPrimary == "" {
		if why == "" {
			why = fmt.Sprintf("Waiting for Database %s to report its primary", db.Name)
		}
		return r.pending(rs, databasev1.ReasonDatabaseNotReady, why)
	}
	var target enginepkg.Target
	var key, sha string
	var encryption *databasev1.BackupEncryption
	if src := rs.Spec.Source; src != nil {
		encryption = src.Encryption
		target, key, err = sourceTarget(src, r.Defaults)
		if err != nil {
			rs.Status.Phase = databasev1.RestoreFailed
			conditionsFor(&rs.Status.Conditions, rs.Generation, false, true, databasev1.ReasonNoStorageLocation, err.Error())
			return ctrl.Result{}, nil
		}
		rs.Status.BackupLocation = src.Location
	} else {
		b, msg, err := r.completedBackup(ctx, rs)
		if err != nil {
			return ctrl.Result{}, err
		}
		if b == nil {
			reason := databasev1.ReasonBackupNotComplete
			if strings.HasPrefix(msg, "Waiting for Backup") && strings.HasSuffix(msg, "to exist") {
				reason = databasev1.ReasonBackupNotFound
			}
			return r.pending(rs, reason, msg)
		}
		rs.Status.BackupName = b.Name
		if b.Spec.Method == databasev1.BackupMethodPhysical || b.Status.Method == databasev1.BackupMethodPhysical {
			rs.Status.Phase = databasev1.RestoreFailed
			conditionsFor(&rs.Status.Conditions, rs.Generation, false, true, databasev1.ReasonPhysicalRestoreUnsupported,
				fmt.Sprintf("Backup %s is a Physical Backup: it is restored by a point-in-time Restore (spec.pointInTime, e.g. latest: true, with this backupRef)", b.Name))
			return ctrl.Result{}, nil
		}
		if target, key, err = restoreTarget(b, r.Defaults); err != nil {
			rs.Status.Phase = databasev1.RestoreFailed
			conditionsFor(&rs.Status.Conditions, rs.Generation, false, true, databasev1.ReasonNoStorageLocation, err.Error())
			return ctrl.Result{}, nil
		}
		rs.Status.BackupLocation, sha = b.Status.BackupLocation, b.Status.SHA256
		encryption = b.Spec.Encryption
	}
	if wait, err := encryptionWait(ctx, r.APIReader, rs.Namespace, encryption); err != nil || wait != "" {
		if err != nil {
			return ctrl.Result{}, err
		}
		return r.pending(rs, databasev1.ReasonEncryptionKeyNotFound, wait)
	}
	if wait, err := manifestKeyWait(ctx, r.APIReader, rs.Namespace, rs.Spec.ManifestKeySecret); err != nil || wait != "" {
		if err != nil {
			return ctrl.Result{}, err
		}
		return r.pending(rs, databasev1.ReasonManifestKeyNotFound, wait)
	}
	if running, err := backupRunning(ctx, r, rs.Namespace, db.Name); err != nil || running != "" {
		if err != nil {
			return ctrl.Result{}, err
		}
		return r.pending(rs, databasev1.ReasonBackupInProgress, fmt.Sprintf("Waiting for Backup %s of Database %s to finish", running, db.Name))
	}
	if drill, err := drillRunning(ctx, r, rs.Namespace, db.Name); err != nil || drill != "" {
		if err != nil {
			return ctrl.Result{}, err
		}
		return r.pending(rs, databasev1.ReasonVerificationInProgress, fmt.Sprintf("Waiting for restore drill %s of Database %s to finish", drill, db.Name))
	}
	if other, err := otherRestoreRunning(ctx, r, rs); err != nil || other != "" {
		if err != nil {
			return ctrl.Result{}, err
		}
		return r.pending(rs, databasev1.ReasonRestoreInProgress, fmt.Sprintf("Waiting for Restore %s of Database %s to finish", other, db.Name))
	}
	keep := int64(24 * 3600)
	if rs.Spec.KeepPreviousFor != nil {
		keep = int64(rs.Spec.KeepPreviousFor.Seconds())
	}
	jobs := 2
	if rs.Spec.ParallelJobs != nil {
		jobs = int(*rs.Spec.ParallelJobs)
	}
	rj := &enginepkg.RestoreJob{ID: restoreID(rs), ExpectSHA256: sha,
		DatabaseUID: string(db.UID), AllowOtherDatabase: rs.Spec.AllowOtherDatabase, Jobs: jobs, KeepPreviousSeconds: keep,
		TrustedManifestKeySecret: rs.Spec.ManifestKeySecret, AllowUnauthenticated: rs.Spec.AllowUnauthenticated}
	if err := agentAccess(ctx, r, db, rj, r.ClusterDomain); err != nil {
		return ctrl.Result{}, err
	}
	job := enginepkg.BuildJob(enginepkg.JobSpec{ClusterDomain: r.ClusterDomain,
		Name: jobName, Namespace: rs.Namespace, Action: "restore", Image: databaseImage(db), AgentImage: r.AgentImage,
		Target: target, Key: key, Owner: ownerRef(rs, "Restore"), ManifestKeySecret: db.Name + "-internal",
		EncryptionSecret: encryptionSecret(encryption),
		Labels:           map[string]string{LabelManagedBy: ManagedBy, "database.example.com/restore": enginepkg.LabelValue(rs.Name)},
		Restore:          rj,
	})
	if err := r.Create(ctx, job, client.FieldOwner(FieldOwner)); err != nil && !apierrors.IsAlreadyExists(err) {
		return ctrl.Result{}, fmt.Errorf("creating restore job: %w", err)
	}
	rs.Status.JobName = jobName
	rs.Status.Phase = databasev1.RestoreInProgress
	conditionsFor(&rs.Status.Conditions, rs.Generation, false, false, databasev1.ReasonJobRunning,
		"Job "+jobName+" is restoring into a new database on the primary; the application database is unchanged until the swap")
	return ctrl.Result{}, nil
}

// restoreID is the Restore's identity for the agent (it names the scratch
// database): its UID without dashes.
func restoreID(rs *databasev1.Restore) string {
	id := strings.ReplaceAll(string(rs.UID), "-", "")
	if len(id) > 32 {
		id = id[:32]
	}
	return id
}

// otherRestoreRunning names another Restore of the same Database that runs.
func otherRestoreRunning(ctx context.Context, c client.Reader, rs *databasev1.Restore) (string, error) {
	var restores databasev1.RestoreList
	if err := c.List(ctx, &restores, client.InNamespace(rs.Namespace)); err != nil {
		return "", fmt.Errorf("listing restores: %w", err)
	}
	for _, o := range restores.Items {
		if o.UID != rs.UID && o.Spec.DatabaseRef.Name == rs.Spec.DatabaseRef.Name && o.Status.Phase == databasev1.RestoreInProgress {
			return o.Name, nil
		}
	}
	return "", nil
}

// backupRunning names a Backup of database in ns whose Job runs ("" when none).
func backupRunning(ctx context.Context, c client.Reader, ns, database string) (string, error) {
	var backups databasev1.BackupList
	if err := c.List(ctx, &backups, client.InNamespace(ns)); err != nil {
		return "", fmt.Errorf("listing backups: %w", err)
	}
	for _, b := range backups.Items {
		if b.Spec.DatabaseRef.Name == database && b.Spec.Schedule == "" && b.Status.Phase == databasev1.BackupInProgress {
			return b.Name, nil
		}
	}
	return "", nil
}

func jobCompletion(job *batchv1.Job) *metav1.Time {
	return job.Status.CompletionTime
}

// completedBackup returns the Backup to restore: the named one when Completed, the
// newest completed run of a scheduled one. Without one, it says what it waits for.
func (r *RestoreReconciler) completedBackup(ctx context.Context, rs *databasev1.Restore) (*databasev1.Backup, string, error) {
	b := &databasev1.Backup{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: rs.Namespace, Name: rs.Spec.BackupRef.Name}, b); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Sprintf("Waiting for Backup %s to exist", rs.Spec.BackupRef.Name), nil
		}
		return nil, "", err
	}
	if b.Spec.Schedule == "" {
		if b.Status.Phase != databasev1.BackupCompleted {
			return nil, fmt.Sprintf("Waiting for Backup %s to complete (phase %q)", b.Name, b.Status.Phase), nil
		}
		return b, "", nil
	}
	if rs.Status.BackupName != "" {
		// Resolved once: a later run never replaces the one chosen first.
		run := &databasev1.Backup{}
		if err := r.Get(ctx, types.NamespacedName{Namespace: rs.Namespace, Name: rs.Status.BackupName}, run); err != nil {
			if apierrors.IsNotFound(err) {
				return nil, fmt.Sprintf("Backup run %s, chosen for this Restore, no longer exists", rs.Status.BackupName), nil
			}
			return nil, "", err
		}
		return run, "", nil
	}
	var runs databasev1.BackupList
	if err := r.List(ctx, &runs, client.InNamespace(rs.Namespace), client.MatchingLabels{LabelSchedule: enginepkg.LabelValue(b.Name)}); err != nil {
		return nil, "", err
	}
	completed := byPhase(runs.Items, databasev1.BackupCompleted)
	if len(completed) == 0 {
		return nil, fmt.Sprintf("Waiting for scheduled Backup %s to complete a run", b.Name), nil
	}
	return &completed[0], "", nil
}

// restoreTarget recovers the location and key from the Backup's status and its
// (or the default) S3 settings.
func restoreTarget(b *databasev1.Backup, d Defaults) (enginepkg.Target, string, error) {
	return artifactTarget(b.Status.BackupLocation, b.Spec.S3, d, "Backup "+b.Name)
}

// sourceTarget resolves a bare artifact location.
func sourceTarget(src *databasev1.RestoreSource, d Defaults) (enginepkg.Target, string, error) {
	return artifactTarget(src.Location, src.S3, d, "source.location")
}

// artifactTarget splits an artifact URL (s3://bucket/key, pvc://claim/key) into
// its store and key, with s3 settings, or the default ones, for s3://.
func artifactTarget(location string, s3 *databasev1.S3Config, d Defaults, what string) (enginepkg.Target, string, error) {
	u, err := url.Parse(location)
	if err != nil || u.Host == "" || strings.TrimPrefix(u.Path, "/") == "" {
		return enginepkg.Target{}, "", fmt.Errorf("%s: %q is not s3://bucket/key or pvc://claim/key", what, location)
	}
	loc, err := objectstore.ParseLocation(u.Scheme + "://" + u.Host)
	if err != nil {
		return enginepkg.Target{}, "", err
	}
	t := enginepkg.Target{Location: loc}
	if loc.Scheme == "s3" {
		if t.S3 = s3; t.S3 == nil {
			t.S3 = d.S3
		}
		if t.S3 == nil {
			return enginepkg.Target{}, "", fmt.Errorf("%s is on S3 but has no s3 settings and the operator has no default ones", what)
		}
	}
	return t, strings.TrimPrefix(u.Path, "/"), nil
}

// agentAccess fills in how a restore Job reaches the primary's agent, by its
// pod DNS name, at the path of the protocol its pod's annotation names: over
// HTTPS with the Database's restore client certificate when the primary pod
// serves TLS, else over HTTP with the agent token (a pod of an operator before
// TLS).
func agentAccess(ctx context.Context, c client.Reader, db *databasev1.Database, rj *enginepkg.RestoreJob, domain string) error {
	pod := &corev1.Pod{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: db.Namespace, Name: db.Status.CurrentPrimary}, pod); err != nil {
		return fmt.Errorf("reading the primary pod %s: %w", db.Status.CurrentPrimary, err)
	}
	e, err := agentapi.PodEndpoint(pod)
	if err != nil {
		return err
	}
	if e.TLS {
		rj.TLSSecret = agentapi.RestoreTLSSecret(db.Name)
	} else {
		rj.InternalSecret = db.Name + "-internal"
	}
	rj.AgentURL = e.URL(fmt.Sprintf("%s.%s-hl.%s.svc.%s", db.Status.CurrentPrimary, db.Name, db.Namespace, enginepkg.ClusterDomain(domain)))
	return nil
}

// SetupWithManager watches Restores, their Jobs, and the Databases and Backups
// they wait for.
func (r *RestoreReconciler) SetupWithManager(mgr ctrl.Manager) error {
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(context.Background(), &databasev1.Restore{}, databaseRefField, func(o client.Object) []string {
		return []string{o.(*databasev1.Restore).Spec.DatabaseRef.Name}
	}); err != nil {
		return err
	}
	if err := idx.IndexField(context.Background(), &databasev1.Restore{}, backupRefField, func(o client.Object) []string {
		return []string{o.(*databasev1.Restore).Spec.BackupRef.Name}
	}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&databasev1.Restore{}).
		Owns(&batchv1.Job{}).
		Watches(&databasev1.Database{}, handler.EnqueueRequestsFromMapFunc(r.restoresOf(databaseRefField))).
		Watches(&databasev1.Backup{}, handler.EnqueueRequestsFromMapFunc(r.restoresOfBackup)).
		Named("restore").
		Complete(r)
}

const backupRefField = ".spec.backupRef.name"

func (r *RestoreReconciler) restoresOf(field string) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []ctrl.Request {
		return r.find(ctx, o.GetNamespace(), field, o.GetName())
	}
}

// restoresOfBackup maps a Backup (or a run of a schedule) to the Restores naming it.
func (r *RestoreReconciler) restoresOfBackup(ctx context.Context, o client.Object) []ctrl.Request {
	out := r.find(ctx, o.GetNamespace(), backupRefField, o.GetName())
	if o.GetLabels()[LabelSchedule] != "" {
		// The label may be a hashed form of a long schedule name: the parent is
		// the run's controller.
		if ref := metav1.GetControllerOf(o); ref != nil && ref.Kind == "Backup" {
			out = append(out, r.find(ctx, o.GetNamespace(), backupRefField, ref.Name)...)
		}
	}
	return out
}

func (r *RestoreReconciler) find(ctx context.Context, ns, field, value string) []ctrl.Request {
	var list databasev1.RestoreList
	if err := r.List(ctx, &list, client.InNamespace(ns), client.MatchingFields{field: value}); err != nil {
		return nil
	}
	out := make([]ctrl.Request, 0, len(list.Items))
	for _, rs := range list.Items {
		out = append(out, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: rs.Namespace, Name: rs.Name}})
	}
	return out
}
