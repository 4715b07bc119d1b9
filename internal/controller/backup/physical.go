package backup

import (
	"context"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	enginepkg "github.com/example/postgres-operator/internal/backup"
	"github.com/example/postgres-operator/internal/walarchive"
)

// Pod labels of the instances (set by the Database controller).
const (
	labelDatabase = "database"
	labelRole     = "role"
	roleReplica   = "replica"
)

// physicalSource is where a Physical Backup copies from, or why it waits.
type physicalSource struct {
	// Pod is the instance to copy: a ready streaming standby when there is
	// one (the backup's reads then never compete with the primary's
	// writes), else the primary.
	Pod string
	// Reason and Message say why the backup cannot start (Pod is then "").
	Reason, Message string
}

// decidePhysicalSource decides, from the Database and its pods, whether a
// Physical Backup can start and from which instance.
func decidePhysicalSource(db *databasev1.Database, pods []corev1.Pod) physicalSource {
	if db.Spec.WALArchive == nil {
		return physicalSource{Reason: databasev1.ReasonWALArchiveNotConfigured,
			Message: fmt.Sprintf("Database %s has no spec.walArchive: a Physical Backup goes into the Database's WAL archive, and is restorable only with the WAL archived after it", db.Name)}
	}
	if db.Status.SystemIdentifier == "" {
		return physicalSource{Reason: databasev1.ReasonDatabaseNotReady, Message: fmt.Sprintf("Waiting for Database %s to record its system identifier", db.Name)}
	}
	if c := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionContinuousArchiving); c == nil || c.Status != metav1.ConditionTrue {
		msg := fmt.Sprintf("Waiting for Database %s to archive its WAL (condition ContinuousArchiving is not True", db.Name)
		if c != nil {
			msg += ": " + c.Reason + ", " + c.Message
		}
		return physicalSource{Reason: databasev1.ReasonWALArchiveNotReady, Message: msg + ")"}
	}
	var standbys []string
	for _, p := range pods {
		if p.Labels[labelRole] == roleReplica && p.DeletionTimestamp == nil && p.Name != db.Status.CurrentPrimary && podReady(&p) {
			standbys = append(standbys, p.Name)
		}
	}
	if len(standbys) > 0 {
		sort.Strings(standbys)
		return physicalSource{Pod: standbys[0]}
	}
	if db.Status.CurrentPrimary == "" {
		return physicalSource{Reason: databasev1.ReasonDatabaseNotReady, Message: fmt.Sprintf("Waiting for Database %s to have a primary", db.Name)}
	}
	return physicalSource{Pod: db.Status.CurrentPrimary}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// baseName is a Physical Backup's base backup name: the Backup's name and
// UID prefix (a re-created Backup never meets its predecessor's).
func baseName(b *databasev1.Backup) string {
	return enginepkg.LabelValue(b.Name) + "-" + shortUID(b.UID)
}

// walTimeout is how long a physical backup Job waits for its WAL: a
// standby's last segment is archived by the primary within its
// archive_timeout, plus the archiver's retries.
func walTimeout(db *databasev1.Database) time.Duration {
	t := time.Minute
	if a := db.Spec.WALArchive; a != nil && a.ArchiveTimeout != nil {
		t = a.ArchiveTimeout.Duration
	}
	return 2*t + 5*time.Minute
}

// physicalJob decides the source of a Physical Backup and builds its Job,
// or says why it waits.
func (r *BackupReconciler) physicalJob(ctx context.Context, b *databasev1.Backup, db *databasev1.Database, jobName string) (*enginepkg.JobSpec, physicalSource, error) {
	var pods corev1.PodList
	if err := r.List(ctx, &pods, client.InNamespace(db.Namespace), client.MatchingLabels{labelDatabase: db.Name}); err != nil {
		return nil, physicalSource{}, err
	}
	src := decidePhysicalSource(db, pods.Items)
	if src.Pod == "" {
		return nil, src, nil
	}
	return &enginepkg.JobSpec{ClusterDomain: r.ClusterDomain,
		Name: jobName, Namespace: b.Namespace, Action: "run", Image: databaseImage(db), AgentImage: r.AgentImage,
		Owner:  ownerRef(b, "Backup"),
		Labels: map[string]string{LabelManagedBy: ManagedBy, "database.example.com/backup": enginepkg.LabelValue(b.Name)},
		Physical: &enginepkg.PhysicalJob{DatabaseName: db.Name, SystemID: db.Status.SystemIdentifier, BaseName: baseName(b),
			Host:       fmt.Sprintf("%s.%s-hl.%s.svc.%s", src.Pod, db.Name, db.Namespace, enginepkg.ClusterDomain(r.ClusterDomain)),
			WALTimeout: walTimeout(db)},
	}, src, nil
}

// physicalLocation is the directory of a Physical Backup's base backup.
func physicalLocation(db *databasev1.Database, name string) string {
	loc := ""
	if db.Status.WALArchive != nil {
		loc = db.Status.WALArchive.Location
	}
	return fmt.Sprintf("%s/%s/%s/%s/", loc, db.Status.SystemIdentifier, walarchive.BaseDir, name)
}

// completePhysical records a physical backup Job's result.
func completePhysical(b *databasev1.Backup, base *walarchive.BaseBackup) {
	t := metav1.NewTime(base.EndTime)
	b.Status.BackupTime = &t
	b.Status.SizeBytes, b.Status.SHA256, b.Status.ServerVersion, b.Status.Format = base.StoredBytes, base.SHA256, base.PGVersion, base.Format
	b.Status.Duration = base.EndTime.Sub(base.StartTime).Round(time.Millisecond).String()
	b.Status.BaseBackup = &databasev1.BaseBackupStatus{Name: base.Name, SystemIdentifier: base.SystemID, Source: base.Source,
		Timeline: int64(base.Timeline), StartLSN: base.StartLSN, EndLSN: base.EndLSN, StartWAL: base.StartWAL, EndWAL: base.EndWAL,
		Files: int32(base.Files), UncompressedBytes: base.Size, Encrypted: base.Encrypted}
}

// physicalDeleteJob builds the Job that deletes a Physical Backup's base
// backup, or says why none can run: the Database's WAL archive Secret (the
// store's address and credentials) is gone with the Database.
func (r *BackupReconciler) physicalDeleteJob(ctx context.Context, b *databasev1.Backup, jobName string) (*enginepkg.JobSpec, string, error) {
	s := &corev1.Secret{}
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: b.Namespace, Name: agentapi.WALArchiveSecretName(b.Spec.DatabaseRef.Name)}, s)
	if apierrors.IsNotFound(err) {
		return nil, fmt.Sprintf("Database %s's WAL archive Secret is gone (the Database was deleted or its walArchive removed): %s is left in place",
			b.Spec.DatabaseRef.Name, b.Status.BackupLocation), nil
	}
	if err != nil {
		return nil, "", err
	}
	return &enginepkg.JobSpec{ClusterDomain: r.ClusterDomain,
		Name: jobName, Namespace: b.Namespace, Action: "delete", Image: r.AgentImage, AgentImage: r.AgentImage,
		Owner:  ownerRef(b, "Backup"),
		Labels: map[string]string{LabelManagedBy: ManagedBy, "database.example.com/backup": enginepkg.LabelValue(b.Name)},
		Physical: &enginepkg.PhysicalJob{DatabaseName: b.Spec.DatabaseRef.Name, SystemID: b.Status.BaseBackup.SystemIdentifier,
			BaseName: b.Status.BaseBackup.Name},
	}, "", nil
}
