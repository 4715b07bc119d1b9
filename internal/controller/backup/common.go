// Package backup holds the Backup and Restore controllers: they run the backup
// engine (internal/backup) in Jobs that use the Database's own image, and derive
// their status from the Jobs.
package backup

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	enginepkg "github.com/example/postgres-operator/internal/backup"
	"github.com/example/postgres-operator/internal/objectstore"
)

// Labels of the objects these controllers create.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "postgres-operator"
	// LabelSchedule marks the runs of a scheduled Backup with its name.
	LabelSchedule = "database.example.com/schedule"
	// Finalizer deletes a Backup's artifact before the Backup goes.
	Finalizer = "database.example.com/backup-artifact"
	// FieldOwner is the field manager of every write.
	FieldOwner = "postgres-operator"
)

// Runner is what the Backup and Restore reconcilers share: how they talk to the
// API, tell time, and build their Jobs.
type Runner struct {
	client.Client
	// APIReader reads objects the cache does not hold, such as user Secrets (the
	// operator caches only the Secrets it manages).
	APIReader client.Reader
	// Recorder emits events on phase transitions (optional).
	Recorder events.EventRecorder
	// Clock drives schedules; tests inject a fake one.
	Clock clock.PassiveClock
	// AgentImage is the operator image the Jobs copy the binary from.
	AgentImage string
	// Defaults is the default storage location.
	Defaults Defaults
	// ClusterDomain is the cluster's DNS domain ("cluster.local" when empty).
	ClusterDomain string
}

// phaseEvent records a phase transition of obj; Failed is a warning.
func phaseEvent(ctx context.Context, rec events.EventRecorder, obj runtime.Object, kind, from, to string, conds []metav1.Condition) {
	if from == to {
		return
	}
	// Every transition is logged at info level; the logger carries the
	// object's name and namespace (controller-runtime adds them).
	kv := []any{"from", from, "to", to}
	if ready := meta.FindStatusCondition(conds, databasev1.ConditionReady); ready != nil {
		kv = append(kv, "reason", ready.Reason, "message", ready.Message)
	}
	logf.FromContext(ctx).Info(strings.ToLower(kind)+" phase changed", kv...)
	if rec == nil {
		return
	}
	typ := corev1.EventTypeNormal
	if to == "Failed" {
		typ = corev1.EventTypeWarning
	}
	rec.Eventf(obj, nil, typ, kind+to, "PhaseChange", "%s is %s", kind, to)
}

// Defaults is the operator-wide default storage location, used by Backups without
// spec.storageLocation.
type Defaults struct {
	// Location is s3://bucket/prefix or pvc://claim/path; empty means no default.
	Location string
	// S3 configures an s3:// default location.
	S3 *databasev1.S3Config
	// PVCSize is the size of the default pvc:// claim, created when missing.
	PVCSize string
	// PVCStorageClass is its StorageClass (cluster default when empty).
	PVCStorageClass string
}

// resolveTarget returns where a Backup's artifacts go, and whether that is the
// operator's default location; ok is false when there is no location at all.
func resolveTarget(b *databasev1.Backup, d Defaults) (t enginepkg.Target, isDefault, ok bool, err error) {
	loc, s3 := b.Spec.StorageLocation, b.Spec.S3
	if loc == "" {
		loc, isDefault = d.Location, true
		if d.S3 != nil {
			s3 = d.S3
		}
	}
	if loc == "" {
		return t, false, false, nil
	}
	l, err := objectstore.ParseLocation(loc)
	if err != nil {
		return t, false, false, err
	}
	if l.Scheme == "s3" && s3 == nil {
		return t, false, false, fmt.Errorf("storage location %s needs s3 settings (endpoint and credentialsSecret)", loc)
	}
	if l.Scheme != "s3" {
		s3 = nil
	}
	return enginepkg.Target{Location: l, S3: s3}, isDefault, true, nil
}

// jobResult reads what a Job's pod reported in its termination message.
func jobResult(ctx context.Context, c client.Reader, job *batchv1.Job) (*enginepkg.Result, error) {
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(job.Namespace), client.MatchingLabels{"batch.kubernetes.io/job-name": job.Name}); err != nil {
		return nil, err
	}
	var newest *corev1.ContainerStateTerminated
	for _, p := range pods.Items {
		for _, cs := range p.Status.ContainerStatuses {
			if t := cs.State.Terminated; t != nil && t.Message != "" && (newest == nil || t.FinishedAt.After(newest.FinishedAt.Time)) {
				newest = t
			}
		}
	}
	if newest == nil {
		return nil, nil
	}
	var r enginepkg.Result
	if err := json.Unmarshal([]byte(newest.Message), &r); err != nil {
		// FallbackToLogsOnError: the tail of the log.
		return &enginepkg.Result{Error: newest.Message}, nil
	}
	return &r, nil
}

// jobState is the outcome of a Job.
type jobState int

const (
	jobRunning jobState = iota
	jobSucceeded
	jobFailed
)

func stateOf(job *batchv1.Job) jobState {
	for _, c := range job.Status.Conditions {
		if c.Status != corev1.ConditionTrue {
			continue
		}
		switch c.Type {
		case batchv1.JobComplete, batchv1.JobSuccessCriteriaMet:
			return jobSucceeded
		case batchv1.JobFailed, batchv1.JobFailureTarget:
			return jobFailed
		}
	}
	return jobRunning
}

func jobFailureMessage(ctx context.Context, c client.Reader, job *batchv1.Job) string {
	if r, err := jobResult(ctx, c, job); err == nil && r != nil && r.Error != "" {
		return r.Error
	}
	for _, cond := range job.Status.Conditions {
		if cond.Type == batchv1.JobFailed && cond.Message != "" {
			return cond.Reason + ": " + cond.Message
		}
	}
	return "the Job failed"
}

func setCondition(conds *[]metav1.Condition, gen int64, typ string, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(conds, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: gen})
}

// conditionsFor sets Ready and Stalled from a phase.
func conditionsFor(conds *[]metav1.Condition, gen int64, done, failed bool, reason, msg string) {
	ready := metav1.ConditionFalse
	if done {
		ready = metav1.ConditionTrue
	}
	setCondition(conds, gen, databasev1.ConditionReady, ready, reason, msg)
	stalled := metav1.ConditionFalse
	stalledReason := databasev1.ReasonSucceeded
	if failed {
		stalled, stalledReason = metav1.ConditionTrue, reason
	}
	setCondition(conds, gen, databasev1.ConditionStalled, stalled, stalledReason, msg)
}

func ownerRef(obj client.Object, kind string) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: databasev1.GroupVersion.String(), Kind: kind, Name: obj.GetName(),
		UID: obj.GetUID(), Controller: ptrTrue(), BlockOwnerDeletion: ptrTrue()}
}

func ptrTrue() *bool { t := true; return &t }

// databaseImage is the image the Database runs, so client tools match its server.
func databaseImage(db *databasev1.Database) string {
	if db.Status.Image != "" {
		return db.Status.Image
	}
	if db.Spec.Image != "" {
		return db.Spec.Image
	}
	return databasev1.DefaultImage
}

// primaryAvailable reports whether a Backup or Restore can run against db: its
// primary accepts writes and is routed (condition PrimaryAvailable), whatever the
// state of its standbys — a degraded standby must not stop backups.
func primaryAvailable(db *databasev1.Database) (bool, string) {
	c := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionPrimaryAvailable)
	if c != nil && c.Status == metav1.ConditionTrue {
		return true, ""
	}
	why := fmt.Sprintf("Waiting for the primary of Database %s to be available (phase %q)", db.Name, db.Status.Phase)
	if c != nil {
		why += ": " + c.Message
	}
	return false, why
}

// encryptionWait says what an encrypted Backup or Restore waits for: the
// Secret with the age identity ("" once it is there). The operator checks that
// the key exists and never reads it further.
func encryptionWait(ctx context.Context, c client.Reader, ns string, e *databasev1.BackupEncryption) (string, error) {
	if e == nil {
		return "", nil
	}
	s := &corev1.Secret{}
	err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: e.SecretName}, s)
	if apierrors.IsNotFound(err) || (err == nil && len(s.Data[enginepkg.EncryptionIdentityFile]) == 0) {
		return fmt.Sprintf("Waiting for the encryption Secret %s with key %s (an age identity, AGE-SECRET-KEY-1…)",
			e.SecretName, enginepkg.EncryptionIdentityFile), nil
	}
	return "", err
}

// manifestKeyWait says what a Restore naming the manifest key Secret name waits
// for ("" when nothing: none named, or it holds the key).
func manifestKeyWait(ctx context.Context, c client.Reader, ns, name string) (string, error) {
	if name == "" {
		return "", nil
	}
	s := &corev1.Secret{}
	err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, s)
	if apierrors.IsNotFound(err) || (err == nil && len(s.Data[agentapi.InternalManifestKeyFile]) == 0) {
		return fmt.Sprintf("Waiting for the manifest key Secret %s with key %s (the writing Database's, from its -internal Secret)",
			name, agentapi.InternalManifestKeyFile), nil
	}
	return "", err
}

// encryptionSecret is the Secret name of e ("" without encryption).
func encryptionSecret(e *databasev1.BackupEncryption) string {
	if e == nil {
		return ""
	}
	return e.SecretName
}

// failureMessage is the status.error of a Backup or Restore: the Stalled
// condition's message when it failed, or the Ready condition's when a
// schedule's latest run failed; "" otherwise.
func failureMessage(failed bool, conds []metav1.Condition) string {
	if ready := meta.FindStatusCondition(conds, databasev1.ConditionReady); ready != nil &&
		ready.Status != metav1.ConditionTrue && ready.Reason == databasev1.ReasonLastRunFailed {
		return ready.Message
	}
	if !failed {
		return ""
	}
	if c := meta.FindStatusCondition(conds, databasev1.ConditionStalled); c != nil && c.Status == metav1.ConditionTrue {
		return c.Message
	}
	if c := meta.FindStatusCondition(conds, databasev1.ConditionReady); c != nil {
		return c.Message
	}
	return "failed"
}
