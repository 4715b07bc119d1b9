package database

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/objectstore"
	"github.com/example/postgres-operator/internal/walarchive"
)

// WALArchiveDir is where instance pods mount the <name>-wal-archive Secret.
const WALArchiveDir = agentapi.WALArchiveDir

// ArchiveDefaults is the operator's default location, which `walArchive: {}`
// archives to (the default backup location's, under <namespace>/<name>).
type ArchiveDefaults struct {
	// Location is s3://bucket/prefix ("" or pvc://…: no default WAL archive).
	Location string
	// S3 reaches it.
	S3 *databasev1.S3Config
}

func walArchiveSecretName(db *databasev1.Database) string {
	return agentapi.WALArchiveSecretName(db.Name)
}

// archiveObs is what the archive step found: whether an archive is
// configured, where, and why it cannot be when it cannot.
type archiveObs struct {
	Configured      bool
	Location        string
	Reason, Message string
}

// resolveArchive returns the archive's location and S3 settings for db.
func resolveArchive(db *databasev1.Database, d ArchiveDefaults) (string, *databasev1.S3Config, error) {
	spec := db.Spec.WALArchive
	loc, s3 := spec.StorageLocation, spec.S3
	if loc == "" {
		if !strings.HasPrefix(d.Location, "s3://") {
			return "", nil, fmt.Errorf("spec.walArchive names no storageLocation and the operator has no default s3:// location (--default-backup-location)")
		}
		l, err := objectstore.ParseLocation(d.Location)
		if err != nil {
			return "", nil, err
		}
		l.Prefix = strings.Trim(l.Prefix+"/"+db.Namespace+"/"+db.Name, "/")
		loc = l.URL(l.Prefix)
		if s3 == nil {
			s3 = d.S3
		}
	}
	if _, err := objectstore.ParseLocation(loc); err != nil {
		return "", nil, err
	}
	if s3 == nil {
		return "", nil, fmt.Errorf("the archive location %s needs spec.walArchive.s3 (endpoint and credentials)", loc)
	}
	return loc, s3, nil
}

// reconcileWALArchive writes the <name>-wal-archive Secret every instance
// mounts: the archive's configuration and the credentials (copied from the
// user's Secrets), or deletes it when spec.walArchive is unset. The agents
// apply a change with a reload.
func (r *Reconciler) reconcileWALArchive(ctx context.Context, db *databasev1.Database, obs *observation) error {
	key := types.NamespacedName{Namespace: db.Namespace, Name: walArchiveSecretName(db)}
	live := &corev1.Secret{}
	err := r.Get(ctx, key, live)
	switch {
	case apierrors.IsNotFound(err):
		live = nil
	case err != nil:
		return fmt.Errorf("getting secret %s: %w", key.Name, err)
	case !metav1.IsControlledBy(live, db):
		conflict(obs, "Secret", live, db)
		if db.Spec.WALArchive != nil {
			obs.Archive = &archiveObs{Reason: databasev1.ReasonArchiveSecretNotFound,
				Message: "Secret " + key.Name + " exists and is not owned by the Database: the archive cannot be configured"}
		}
		return nil
	}
	if db.Spec.WALArchive == nil {
		if live != nil {
			if err := r.Delete(ctx, live); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("deleting secret %s: %w", key.Name, err)
			}
		}
		return nil
	}
	obs.Archive = &archiveObs{}
	data, loc, reason, err := r.archiveSecretData(ctx, db)
	if err != nil {
		// The agents keep the last configuration they had (archiving on
		// stays on): the condition says what is wrong.
		obs.Archive.Reason, obs.Archive.Message = reason, err.Error()
		return nil
	}
	obs.Archive.Configured, obs.Archive.Location = true, loc
	return r.applyOwnedSecret(ctx, db, key, live, data)
}

// archiveSecretData is the content of the <name>-wal-archive Secret, and on
// failure the condition's reason.
func (r *Reconciler) archiveSecretData(ctx context.Context, db *databasev1.Database) (map[string][]byte, string, string, error) {
	loc, s3, err := resolveArchive(db, r.ArchiveDefaults)
	if err != nil {
		return nil, "", databasev1.ReasonNoArchiveLocation, err
	}
	if db.Spec.Bootstrap != nil && db.Spec.Bootstrap.PointInTime != nil {
		if src, _, err := r.resolveRecoverySource(ctx, db); err == nil && sameArchive(src.Location, src.S3, loc, s3) {
			return nil, "", databasev1.ReasonArchiveIsRecoverySource, fmt.Errorf("spec.walArchive's location %s is the archive this Database was recovered from: "+
				"the recovered cluster keeps the source's system identifier, so its timelines would mix with the source's in it; "+
				"give spec.walArchive another storageLocation (nothing is archived until then)", loc)
		}
	}
	spec := db.Spec.WALArchive
	c := walarchive.Config{Location: loc, Endpoint: s3.Endpoint, Region: s3.Region, ForcePathStyle: s3.ForcePathStyle,
		Encrypted: spec.Encryption != nil}
	if spec.ArchiveTimeout != nil {
		c.ArchiveTimeoutSeconds = int(spec.ArchiveTimeout.Duration / time.Second)
	}
	data, err := r.storeSecretData(ctx, db.Namespace, c, s3, spec.Encryption)
	if err != nil {
		return nil, "", databasev1.ReasonArchiveSecretNotFound, err
	}
	return data, loc, "", nil
}

// sameArchive reports whether two archive locations on S3 endpoints are
// the same place (a trailing slash aside).
func sameArchive(locA string, s3A *databasev1.S3Config, locB string, s3B *databasev1.S3Config) bool {
	ep := func(s *databasev1.S3Config) string {
		if s == nil {
			return ""
		}
		return strings.TrimSuffix(s.Endpoint, "/")
	}
	return strings.TrimSuffix(locA, "/") == strings.TrimSuffix(locB, "/") && ep(s3A) == ep(s3B)
}

// storeSecretData is an archive's configuration directory: c, with the S3
// credentials, CA and encryption key copied from the user's Secrets in ns.
func (r *Reconciler) storeSecretData(ctx context.Context, ns string, c walarchive.Config, s3 *databasev1.S3Config, enc *databasev1.BackupEncryption) (map[string][]byte, error) {
	data := map[string][]byte{}
	read := func(name, key, what string) ([]byte, error) {
		// The user's Secrets are not in the operator's cache (it holds the
		// Secrets the operator owns): read them from the API server.
		s := &corev1.Secret{}
		if err := r.reader().Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, s); err != nil {
			return nil, fmt.Errorf("the %s Secret %s: %w", what, name, err)
		}
		v, ok := s.Data[key]
		if !ok || len(v) == 0 {
			return nil, fmt.Errorf("the %s Secret %s has no key %s", what, name, key)
		}
		return v, nil
	}
	for _, k := range []string{walarchive.AccessKeyFile, walarchive.SecretKeyFile} {
		v, err := read(s3.CredentialsSecret.Name, k, "S3 credentials")
		if err != nil {
			return nil, err
		}
		data[k] = v
	}
	if s3.CASecret != nil {
		v, err := read(s3.CASecret.Name, s3.CASecret.Key, "S3 CA")
		if err != nil {
			return nil, err
		}
		data[walarchive.CAFile] = v
	}
	if enc != nil {
		v, err := read(enc.SecretName, walarchive.IdentityFile, "encryption key")
		if err != nil {
			return nil, err
		}
		data[walarchive.IdentityFile] = v
	}
	c.Encrypted = enc != nil
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	data[walarchive.ConfigFile] = b
	return data, nil
}

// windowOf fills the recoverable window of st from the primary's report: its
// survey of the archive and the last archived commit. A primary that has not
// surveyed yet (just promoted, just started) keeps the previous window.
func windowOf(st *databasev1.WALArchiveStatus, p *agentapi.ArchiveStatus, prev *databasev1.WALArchiveStatus) {
	w := p.Window
	if w == nil {
		if prev != nil && prev.Location == st.Location {
			st.FirstRecoverablePoint, st.LastRecoverablePoint = prev.FirstRecoverablePoint, prev.LastRecoverablePoint
			st.BaseBackups, st.UsableBaseBackups, st.Gaps, st.SurveyTime, st.SurveyError = prev.BaseBackups, prev.UsableBaseBackups, prev.Gaps, prev.SurveyTime, prev.SurveyError
		}
		return
	}
	t := metav1.NewTime(w.SurveyTime)
	st.SurveyTime, st.SurveyError = &t, w.Error
	st.BaseBackups, st.UsableBaseBackups, st.Gaps = int32(w.BaseBackups), int32(w.Usable), w.Gaps
	if w.FirstRecoverablePoint == nil {
		return
	}
	// Seconds, as metav1.Time holds them: the first point rounded up and the
	// last down, so that the window never claims a second it cannot reach.
	first := w.FirstRecoverablePoint.UTC()
	if f := first.Truncate(time.Second); !f.Equal(first) {
		first = f.Add(time.Second)
	}
	last := first
	lastCommit := p.LastCommitTime
	if lastCommit == nil && prev != nil && prev.LastRecoverablePoint != nil {
		lastCommit = &prev.LastRecoverablePoint.Time
	}
	if lastCommit != nil && lastCommit.Truncate(time.Second).After(first) {
		last = lastCommit.UTC().Truncate(time.Second)
	}
	ft, lt := metav1.NewTime(first), metav1.NewTime(last)
	st.FirstRecoverablePoint, st.LastRecoverablePoint = &ft, &lt
}

// decideRecoverable derives the Recoverable condition from the recorded
// window. It is pure.
func decideRecoverable(st *databasev1.WALArchiveStatus) (metav1.ConditionStatus, string, string) {
	switch {
	case st == nil || st.SurveyTime == nil:
		return metav1.ConditionUnknown, databasev1.ReasonRecoverableUnknown, "Waiting for the primary to survey the WAL archive"
	case st.FirstRecoverablePoint != nil:
		msg := fmt.Sprintf("Recoverable to any time from %s to %s (%d usable base backups)",
			st.FirstRecoverablePoint.UTC().Format(time.RFC3339), st.LastRecoverablePoint.UTC().Format(time.RFC3339), st.UsableBaseBackups)
		if len(st.Gaps) > 0 {
			msg += "; before the window: " + strings.Join(st.Gaps, ", ")
		}
		return metav1.ConditionTrue, databasev1.ReasonRecoverable, msg
	case st.BaseBackups == 0:
		return metav1.ConditionFalse, databasev1.ReasonNoBaseBackup,
			"The WAL archive holds no base backup of this cluster: take a Backup with method: Physical to make it recoverable to a point in time"
	default:
		return metav1.ConditionFalse, databasev1.ReasonArchiveGap, fmt.Sprintf(
			"No base backup can be recovered past the gaps in the WAL archive (%s): take a Backup with method: Physical", strings.Join(st.Gaps, ", "))
	}
}

// archiveVerdict is the Database's archiving status and condition.
type archiveVerdict struct {
	Status          *databasev1.WALArchiveStatus
	Condition       metav1.ConditionStatus
	Reason, Message string
}

// decideArchiving derives status.walArchive and the ContinuousArchiving
// condition from the archive step and the primary's report. It is pure.
func decideArchiving(a *archiveObs, primary *agentapi.Status, prev *databasev1.WALArchiveStatus) archiveVerdict {
	switch {
	case a == nil:
		return archiveVerdict{}
	case !a.Configured:
		return archiveVerdict{Condition: metav1.ConditionFalse, Reason: a.Reason, Message: a.Message}
	}
	v := archiveVerdict{Status: &databasev1.WALArchiveStatus{Location: a.Location}}
	if primary != nil && primary.Archive != nil && primary.Archive.ConfigError != "" {
		v.Status = nil
		v.Condition, v.Reason, v.Message = metav1.ConditionFalse, databasev1.ReasonArchiveFailing, primary.Archive.ConfigError
		return v
	}
	if primary == nil || primary.Archive == nil || primary.Archive.Location != a.Location {
		// The last known figures stay (the caller keeps the previous status).
		v.Status = nil
		v.Condition, v.Reason = metav1.ConditionUnknown, databasev1.ReasonArchiveUnknown
		v.Message = "Waiting for the primary to report archiving to " + a.Location
		return v
	}
	p := primary.Archive
	v.Status.LastArchivedWAL, v.Status.LastFailedWAL = p.LastArchivedWAL, p.LastFailedWAL
	v.Status.PendingFiles, v.Status.PendingBytes = int32(p.PendingFiles), p.PendingBytes
	windowOf(v.Status, p, prev)
	if p.LastArchivedTime != nil {
		t := metav1.NewTime(*p.LastArchivedTime)
		v.Status.LastArchivedTime = &t
	}
	if p.LastFailedTime != nil {
		t := metav1.NewTime(*p.LastFailedTime)
		v.Status.LastFailedTime = &t
	}
	failing := p.LastFailedTime != nil && (p.LastArchivedTime == nil || p.LastFailedTime.After(*p.LastArchivedTime))
	switch {
	case failing:
		v.Condition, v.Reason = metav1.ConditionFalse, databasev1.ReasonArchiveFailing
		msg := p.Error
		if msg == "" {
			msg = "the archive command failed"
		}
		v.Message = fmt.Sprintf("Archiving %s failed (%d files waiting; PostgreSQL keeps them and retries): %s", p.LastFailedWAL, p.PendingFiles, msg)
	case p.LastArchivedTime == nil:
		v.Condition, v.Reason = metav1.ConditionTrue, databasev1.ReasonArchiveStarting
		v.Message = "Archiving to " + a.Location + "; no WAL file archived yet"
	default:
		v.Condition, v.Reason = metav1.ConditionTrue, databasev1.ReasonArchiving
		v.Message = fmt.Sprintf("Archived %s at %s to %s", p.LastArchivedWAL, p.LastArchivedTime.UTC().Format(time.RFC3339), a.Location)
	}
	return v
}

// applyOwnedSecret applies the Secret key, owned by db, with data, unless the
// live one (nil: none) already holds exactly that: an unchanged Secret costs
// no API write.
func (r *Reconciler) applyOwnedSecret(ctx context.Context, db *databasev1.Database, key types.NamespacedName, live *corev1.Secret, data map[string][]byte) error {
	if live != nil && maps.EqualFunc(live.Data, data, func(a, b []byte) bool { return string(a) == string(b) }) {
		return nil
	}
	ac := corev1ac.Secret(key.Name, key.Namespace).
		WithLabels(withExtra(map[string]string{LabelManagedBy: ManagedByValue, LabelDatabase: db.Name}, nil)).
		WithOwnerReferences(ownerReference(db)).
		WithType(corev1.SecretTypeOpaque).
		WithData(data)
	if err := r.Apply(ctx, ac, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying secret %s: %w", key.Name, err)
	}
	return nil
}
