package v1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BackupSpec defines a backup of a Database: one now, or, with a schedule, one
// per schedule slot. Logical (pg_dump, to storageLocation) or Physical (a base
// backup into the Database's WAL archive, the start of point-in-time recovery).
// +kubebuilder:validation:XValidation:rule="!has(self.method) || self.method != 'Physical' || (!has(self.storageLocation) && !has(self.s3) && !has(self.encryption))",message="a Physical Backup goes to the Database's spec.walArchive location, with its s3 settings and encryption: storageLocation, s3 and encryption apply to Logical Backups only"
// +kubebuilder:validation:XValidation:rule="!has(self.method) || self.method != 'Physical' || !has(self.verify)",message="verify (restore drills) is not available for Physical Backups yet"
// +kubebuilder:validation:XValidation:rule="has(self.schedule) || self == oldSelf",message="the spec of a one-shot Backup (without schedule) is immutable; create a new Backup instead"
// +kubebuilder:validation:XValidation:rule="!has(self.s3) || !has(self.storageLocation) || self.storageLocation.startsWith('s3://')",message="s3 settings apply only to an s3:// storageLocation"
// +kubebuilder:validation:XValidation:rule="size(self.databaseRef.name) > 0",message="databaseRef.name must name a Database"
// +kubebuilder:validation:XValidation:rule="!has(self.verify) || has(self.schedule)",message="verify (restore drills) needs a schedule: it drills the schedule's newest run"
type BackupSpec struct {
	// DatabaseRef names the Database (in the Backup's namespace) to back up.
	DatabaseRef corev1.LocalObjectReference `json:"databaseRef"`

	// Method is Logical (default: pg_dump of the application database to
	// storageLocation, restorable into any Database) or Physical (pg_basebackup
	// of the whole cluster, taken from a streaming standby when there is one,
	// into the Database's WAL archive: the Database needs spec.walArchive, and
	// the Backup is Completed once the stored tar was read back and checked
	// against PostgreSQL's backup manifest and the WAL it needs is archived).
	// +kubebuilder:validation:Enum=Logical;Physical
	// +kubebuilder:default=Logical
	// +optional
	Method BackupMethod `json:"method,omitempty"`

	// Schedule is a 5-field cron expression (minute hour day-of-month month
	// day-of-week) or a macro such as @daily, in UTC. A Backup with a schedule acts
	// like a CronJob: each slot creates a child Backup named <name>-<unix time of
	// the slot>, owned by this one; a missed slot runs once when the operator comes
	// back (no catch-up storm), and a slot is skipped while a child still runs.
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.startsWith('@') ? self.matches('^@(yearly|annually|monthly|weekly|daily|midnight|hourly)$') : size(self.split(' ').filter(f, size(f) > 0)) == 5",message="schedule must be a 5-field cron expression (minute hour day-of-month month day-of-week) or @hourly, @daily, @weekly, @monthly or @yearly"
	// +kubebuilder:validation:XValidation:rule="self.startsWith('@') || size(self.split(' ').filter(f, size(f) > 0)) != 5 || self.split(' ').filter(f, size(f) > 0)[0].matches('^([*]|[0-5]?[0-9](-[0-5]?[0-9])?)(/[1-9][0-9]?)?(,([*]|[0-5]?[0-9](-[0-5]?[0-9])?)(/[1-9][0-9]?)?)*$')",message="the minute field of schedule must be 0-59: *, a value or a range a-b, optionally with /step, comma-separated"
	// +kubebuilder:validation:XValidation:rule="self.startsWith('@') || size(self.split(' ').filter(f, size(f) > 0)) != 5 || self.split(' ').filter(f, size(f) > 0)[1].matches('^([*]|(1?[0-9]|2[0-3])(-(1?[0-9]|2[0-3]))?)(/[1-9][0-9]?)?(,([*]|(1?[0-9]|2[0-3])(-(1?[0-9]|2[0-3]))?)(/[1-9][0-9]?)?)*$')",message="the hour field of schedule must be 0-23: *, a value or a range a-b, optionally with /step, comma-separated"
	// +kubebuilder:validation:XValidation:rule="self.startsWith('@') || size(self.split(' ').filter(f, size(f) > 0)) != 5 || self.split(' ').filter(f, size(f) > 0)[2].matches('^([?]|([*]|([1-9]|[12][0-9]|3[01])(-([1-9]|[12][0-9]|3[01]))?)(/[1-9][0-9]?)?)(,([?]|([*]|([1-9]|[12][0-9]|3[01])(-([1-9]|[12][0-9]|3[01]))?)(/[1-9][0-9]?)?))*$')",message="the day-of-month field of schedule must be 1-31: *, a value or a range a-b, optionally with /step, comma-separated"
	// +kubebuilder:validation:XValidation:rule="self.startsWith('@') || size(self.split(' ').filter(f, size(f) > 0)) != 5 || self.split(' ').filter(f, size(f) > 0)[3].matches('^([*]|([1-9]|1[0-2]|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec))(-([1-9]|1[0-2]|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)))?)(/[1-9][0-9]?)?(,([*]|([1-9]|1[0-2]|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec))(-([1-9]|1[0-2]|(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)))?)(/[1-9][0-9]?)?)*$')",message="the month field of schedule must be 1-12 or jan-dec: *, a value or a range a-b, optionally with /step, comma-separated"
	// +kubebuilder:validation:XValidation:rule="self.startsWith('@') || size(self.split(' ').filter(f, size(f) > 0)) != 5 || self.split(' ').filter(f, size(f) > 0)[4].matches('^([?]|([*]|([0-7]|(?i:sun|mon|tue|wed|thu|fri|sat))(-([0-7]|(?i:sun|mon|tue|wed|thu|fri|sat)))?)(/[1-9][0-9]?)?)(,([?]|([*]|([0-7]|(?i:sun|mon|tue|wed|thu|fri|sat))(-([0-7]|(?i:sun|mon|tue|wed|thu|fri|sat)))?)(/[1-9][0-9]?)?))*$')",message="the day-of-week field of schedule must be 0-7 or sun-sat: *, a value or a range a-b, optionally with /step, comma-separated"
	// +optional
	Schedule string `json:"schedule,omitempty"`

	// Retention is how many completed backups of a schedule are kept; older ones
	// are deleted together with their artifacts.
	// +kubebuilder:default=5
	// +kubebuilder:validation:Minimum=1
	// +optional
	Retention *int32 `json:"retention,omitempty"`

	// TimeZone is the IANA time zone the schedule is evaluated in, e.g.
	// "Europe/Paris"; UTC when empty. An unknown zone fails the Backup with
	// reason InvalidSchedule.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	TimeZone string `json:"timeZone,omitempty"`

	// StartingDeadlineSeconds: a slot whose run cannot start within this many
	// seconds of its time (the operator was down) is skipped with a Warning
	// event instead of running late. Without it, the latest missed slot runs.
	// +kubebuilder:validation:Minimum=10
	// +optional
	StartingDeadlineSeconds *int64 `json:"startingDeadlineSeconds,omitempty"`

	// Suspend stops a scheduled Backup from creating runs (existing runs and
	// retention are unaffected).
	// +optional
	Suspend bool `json:"suspend,omitempty"`

	// StorageLocation is where artifacts go: s3://bucket[/prefix] on an
	// S3-compatible store (see s3), or pvc://claim[/path], a PersistentVolumeClaim
	// in the Backup's namespace. Empty: the operator's default location
	// (--default-backup-location).
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^ ]*)?$') || self.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^ ]*)?$')",message="storageLocation must be s3://bucket[/prefix] or pvc://claim[/path]"
	// +optional
	StorageLocation string `json:"storageLocation,omitempty"`

	// S3 configures access to an s3:// storageLocation.
	// +optional
	S3 *S3Config `json:"s3,omitempty"`

	// Encryption encrypts the artifact in the backup Job, before it leaves for
	// the store (age, X25519 with ChaCha20-Poly1305); restores decrypt it with
	// the same Secret. The runs of a schedule take it when they are created.
	// +optional
	Encryption *BackupEncryption `json:"encryption,omitempty"`

	// Verify schedules restore drills of a scheduled Backup: at each of its slots
	// the newest completed run is restored into a scratch database on the
	// primary (never touching the application database), every table's row
	// count is compared with the one counted at backup time, the scratch
	// database is dropped, and status.lastVerification records the outcome and
	// the measured restore time (RTO); condition Verified says whether the last
	// drill succeeded.
	// +optional
	Verify *BackupVerify `json:"verify,omitempty"`
}

// BackupEncryption names the key of client-side artifact encryption.
type BackupEncryption struct {
	// SecretName is a Secret in the Backup's namespace whose key "identity"
	// holds an age X25519 identity (the AGE-SECRET-KEY-1… line of age-keygen).
	// Artifacts are encrypted to its public key and restored with it: without
	// the Secret they cannot be read.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	SecretName string `json:"secretName"`
}

// BackupVerify configures restore drills.
type BackupVerify struct {
	// Schedule of the drills: a 5-field cron expression or a macro such as
	// @weekly, in the Backup's timeZone.
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[^ ]+( +[^ ]+){4})$')",message="verify.schedule must be a 5-field cron expression or @hourly, @daily, @weekly, @monthly or @yearly"
	Schedule string `json:"schedule"`
}

// VerificationStatus is the outcome of the last restore drill.
type VerificationStatus struct {
	// Time is when the drill finished.
	Time metav1.Time `json:"time"`
	// BackupName is the run that was restored.
	BackupName string `json:"backupName,omitempty"`
	// JobName is the drill's Job.
	JobName string `json:"jobName,omitempty"`
	// Succeeded is true when every table came back with its rows.
	Succeeded bool `json:"succeeded"`
	// Message says what was compared, or what failed.
	Message string `json:"message,omitempty"`
	// RestoreDuration is the measured time to restore the run (the RTO of a
	// restore of this size, without the swap).
	// +optional
	RestoreDuration string `json:"restoreDuration,omitempty"`
	// Tables is how many tables were restored and compared.
	// +optional
	Tables int32 `json:"tables,omitempty"`
}

// S3Config is how to reach an S3-compatible object store.
type S3Config struct {
	// Endpoint is the store's URL, e.g. https://s3.eu-west-1.amazonaws.com or
	// http://minio.storage.svc:9000.
	// +kubebuilder:validation:XValidation:rule="self.startsWith('http://') || self.startsWith('https://')",message="s3.endpoint must be an http:// or https:// URL"
	Endpoint string `json:"endpoint"`
	// Region of the bucket.
	// +kubebuilder:default="us-east-1"
	// +optional
	Region string `json:"region,omitempty"`
	// ForcePathStyle addresses buckets as <endpoint>/<bucket> instead of
	// <bucket>.<endpoint> (most self-hosted stores need it).
	// +optional
	ForcePathStyle bool `json:"forcePathStyle,omitempty"`
	// CredentialsSecret names a Secret in the Backup's namespace with keys
	// accessKeyId and secretAccessKey.
	CredentialsSecret corev1.LocalObjectReference `json:"credentialsSecret"`
	// CASecret names a key of a Secret (in the same namespace) holding the PEM
	// certificates of a private certificate authority to trust for an https://
	// endpoint. Public CAs are trusted without it: the Jobs get the operator
	// image's CA bundle (the official postgres images may have none).
	// +optional
	CASecret *corev1.SecretKeySelector `json:"caSecret,omitempty"`
}

// BackupMethod is how a Backup copies the Database.
type BackupMethod string

const (
	// BackupMethodLogical: pg_dump of the application database.
	BackupMethodLogical BackupMethod = "Logical"
	// BackupMethodPhysical: a base backup (pg_basebackup) into the WAL archive.
	BackupMethodPhysical BackupMethod = "Physical"
)

// BaseBackupStatus describes a Physical Backup's base backup.
type BaseBackupStatus struct {
	// Name is the base backup's directory in the archive:
	// <walArchive location>/<systemIdentifier>/base/<name>/.
	Name string `json:"name"`
	// SystemIdentifier is the cluster's.
	SystemIdentifier string `json:"systemIdentifier"`
	// Source is the instance it was taken from.
	// +optional
	Source string `json:"source,omitempty"`
	// Timeline, StartLSN and EndLSN: the WAL a restore of it replays at least;
	// StartWAL and EndWAL name its first and last segments, archived before
	// the Backup completed.
	Timeline int64  `json:"timeline"`
	StartLSN string `json:"startLSN"`
	EndLSN   string `json:"endLSN"`
	StartWAL string `json:"startWAL"`
	EndWAL   string `json:"endWAL"`
	// Files is how many files were checked against the backup manifest.
	Files int32 `json:"files"`
	// UncompressedBytes is the size of the data directory's tar.
	UncompressedBytes int64 `json:"uncompressedBytes"`
	// Encrypted: stored encrypted to the WAL archive's age key.
	// +optional
	Encrypted bool `json:"encrypted,omitempty"`
}

// BackupPhase is the phase of a Backup.
// +kubebuilder:validation:Enum=Pending;InProgress;Completed;Failed
type BackupPhase string

const (
	// BackupPending: waiting for the Database to be Ready or for storage.
	BackupPending BackupPhase = "Pending"
	// BackupInProgress: the backup Job runs.
	BackupInProgress BackupPhase = "InProgress"
	// BackupCompleted: the artifact is written and verified.
	BackupCompleted BackupPhase = "Completed"
	// BackupFailed: the Job failed after its retries, or the Backup cannot run.
	BackupFailed BackupPhase = "Failed"
)

// BackupStatus is the observed state of a Backup.
type BackupStatus struct {
	// Phase: Pending, InProgress, Completed or Failed. For a scheduled Backup, the
	// phase of its newest run.
	// +optional
	Phase BackupPhase `json:"phase,omitempty"`
	// BackupTime is when the artifact was completed.
	// +optional
	BackupTime *metav1.Time `json:"backupTime,omitempty"`
	// BackupLocation is the artifact's URL, e.g. pvc://backups/ns/db/name.dump.zst;
	// for a Physical Backup, its directory in the WAL archive.
	// +optional
	BackupLocation string `json:"backupLocation,omitempty"`
	// Method is the method the backup used.
	// +optional
	Method BackupMethod `json:"method,omitempty"`
	// BaseBackup describes a completed Physical Backup.
	// +optional
	BaseBackup *BaseBackupStatus `json:"baseBackup,omitempty"`
	// LastScheduledTime is the last schedule slot a run was created for.
	// +optional
	LastScheduledTime *metav1.Time `json:"lastScheduledTime,omitempty"`
	// LastVerificationScheduledTime is the last slot of spec.verify.schedule
	// that was handled.
	// +optional
	LastVerificationScheduledTime *metav1.Time `json:"lastVerificationScheduledTime,omitempty"`
	// LastVerification is the outcome of the last restore drill.
	// +optional
	LastVerification *VerificationStatus `json:"lastVerification,omitempty"`
	// BackupCount is the number of completed runs of a schedule that are kept.
	// +optional
	BackupCount int32 `json:"backupCount,omitempty"`
	// SizeBytes is the size of the stored (compressed) artifact.
	// +optional
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// SHA256 is the checksum of the stored artifact.
	// +optional
	SHA256 string `json:"sha256,omitempty"`
	// Duration is how long the backup took.
	// +optional
	Duration string `json:"duration,omitempty"`
	// ServerVersion is the PostgreSQL server version that was dumped.
	// +optional
	ServerVersion string `json:"serverVersion,omitempty"`
	// Format is the artifact format: pg_dump custom format compressed with zstd.
	// +optional
	Format string `json:"format,omitempty"`
	// JobName is the Job that runs (or ran) this backup.
	// +optional
	JobName string `json:"jobName,omitempty"`
	// Error says why the Backup failed (a schedule: why its latest finished run
	// failed); empty otherwise. The ERROR column of kubectl get.
	// +optional
	Error string `json:"error,omitempty"`
	// ObservedGeneration is the generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Ready (True once Completed) and Stalled.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Backup reasons.
const (
	ReasonDatabaseNotFound  = "DatabaseNotFound"
	ReasonDatabaseNotReady  = "DatabaseNotReady"
	ReasonNoStorageLocation = "NoStorageLocation"
	ReasonStorageNotFound   = "StorageNotFound"
	// ReasonEncryptionKeyNotFound: the Secret with the age identity of
	// spec.encryption (key "identity") is missing.
	ReasonEncryptionKeyNotFound = "EncryptionKeyNotFound"
	ReasonJobRunning            = "JobRunning"
	ReasonJobFailed             = "JobFailed"
	ReasonCompleted             = "Completed"
	ReasonInvalidSchedule       = "InvalidSchedule"
	ReasonScheduled             = "Scheduled"
	ReasonBackupNotFound        = "BackupNotFound"
	ReasonBackupNotComplete     = "BackupNotCompleted"
	// ReasonRestoreInProgress: a Backup waits while a Restore of its Database
	// runs; ReasonBackupInProgress: a Restore waits while a Backup of its
	// Database runs (a backup overlapping a restore could dump a half-restored
	// database).
	ReasonRestoreInProgress = "RestoreInProgress"
	ReasonBackupInProgress  = "BackupInProgress"
	// ReasonSuspended: a scheduled Backup with spec.suspend creates no runs.
	ReasonSuspended = "Suspended"
	// ReasonWALArchiveNotConfigured: a Physical Backup's Database has no
	// spec.walArchive; ReasonWALArchiveNotReady: its archiving is not working
	// (condition ContinuousArchiving is not True), so the WAL a base backup
	// needs would never be archived.
	ReasonWALArchiveNotConfigured = "WALArchiveNotConfigured"
	ReasonWALArchiveNotReady      = "WALArchiveNotReady"
	// ReasonPhysicalRestoreUnsupported: a logical Restore (no
	// spec.pointInTime) names a Physical Backup.
	ReasonPhysicalRestoreUnsupported = "PhysicalRestoreUnsupported"
	// ReasonUndoNotPossible: spec.undo names no Completed point-in-time
	// Restore of the Database whose previous data directory is still kept.
	ReasonUndoNotPossible = "UndoNotPossible"
	// ReasonRecoveryFailed: an in-place point-in-time Restore failed before
	// its swap (the archive did not catch up, a store error): nothing changed.
	ReasonRecoveryFailed = "RecoveryFailed"
	// ReasonLastRunFailed: a scheduled Backup is not Ready while its latest
	// finished run failed.
	ReasonLastRunFailed = "LastRunFailed"
	// ConditionVerified is True when the last restore drill of a scheduled
	// Backup succeeded.
	ConditionVerified           = "Verified"
	ReasonVerificationSucceeded = "VerificationSucceeded"
	ReasonVerificationFailed    = "VerificationFailed"
	ReasonVerificationNotYetRun = "VerificationNotYetRun"
	// ReasonVerificationInProgress: a Restore waits for a restore drill of its
	// Database (the primary restores one at a time).
	ReasonVerificationInProgress = "VerificationInProgress"
	// ReasonArtifactOfOtherDatabase: the artifact's manifest names another
	// Database (UID) and spec.allowOtherDatabase is not set.
	ReasonArtifactOfOtherDatabase = "ArtifactOfOtherDatabase"
	// ReasonManifestNotAuthenticated: the artifact's manifest is signed with
	// neither the Database's manifest key nor spec.manifestKeySecret's (edited,
	// or signed by another Database), or not signed at all.
	ReasonManifestNotAuthenticated = "ManifestNotAuthenticated"
	// ReasonManifestKeyNotFound: the Secret of spec.manifestKeySecret (key
	// "manifest-key") is missing.
	ReasonManifestKeyNotFound = "ManifestKeyNotFound"
)

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName={pgbackup,pgbackups},categories={postgres}
// +kubebuilder:selectablefield:JSONPath=".spec.databaseRef.name"
// +kubebuilder:printcolumn:name="Phase",type="string",JSONPath=".status.phase"
// +kubebuilder:printcolumn:name="Database",type="string",JSONPath=".spec.databaseRef.name"
// +kubebuilder:printcolumn:name="Method",type="string",JSONPath=".spec.method"
// +kubebuilder:printcolumn:name="Schedule",type="string",JSONPath=".spec.schedule"
// +kubebuilder:printcolumn:name="Last Backup",type="date",JSONPath=".status.backupTime"
// +kubebuilder:printcolumn:name="Size",type="integer",JSONPath=".status.sizeBytes",priority=1
// +kubebuilder:printcolumn:name="Location",type="string",JSONPath=".status.backupLocation",priority=1
// +kubebuilder:printcolumn:name="Age",type="date",JSONPath=".metadata.creationTimestamp"
// +kubebuilder:printcolumn:name="Error",type="string",JSONPath=".status.error"

// Backup is a logical backup of a Database, streamed by pg_dump to object storage
// or a volume, or a schedule of such backups.
type Backup struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   BackupSpec   `json:"spec"`
	Status BackupStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// BackupList contains a list of Backup.
type BackupList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Backup `json:"items"`
}

// RestoreSpec defines a restore of a Backup (or of an artifact at a bare
// location) into a Database. It is immutable.
//
// The restore is exact and atomic: the artifact is restored into a new database
// on the primary, as the superuser (owners, GRANTs and extensions as they were),
// then swapped in by renames while connections to the application database are
// refused and its sessions terminated; the previous content is kept as a
// pre-restore copy (status.previousDatabase) for keepPreviousFor.
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="the spec of a Restore is immutable; create a new Restore instead"
// +kubebuilder:validation:XValidation:rule="size(self.databaseRef.name) > 0",message="databaseRef.name must name a Database"
//
// With pointInTime the restore is physical and in place instead: see
// RestorePointInTime; undo puts back what such a restore replaced.
// +kubebuilder:validation:XValidation:rule="has(self.pointInTime) || (has(self.undo) && size(self.undo) > 0) || ((has(self.backupRef) && size(self.backupRef.name) > 0) != has(self.source))",message="set exactly one of backupRef (a Backup) and source (a bare artifact location), or pointInTime, or undo"
// +kubebuilder:validation:XValidation:rule="!has(self.pointInTime) || !has(self.source)",message="pointInTime restores from the Database's own WAL archive: source is for logical artifacts"
// +kubebuilder:validation:XValidation:rule="!(has(self.undo) && size(self.undo) > 0) || (!has(self.pointInTime) && !has(self.source) && (!has(self.backupRef) || size(self.backupRef.name) == 0))",message="undo names an earlier point-in-time Restore and takes no backupRef, source or pointInTime"
type RestoreSpec struct {
	// DatabaseRef names the Database (in the Restore's namespace) to restore into.
	DatabaseRef corev1.LocalObjectReference `json:"databaseRef"`
	// BackupRef names the Backup to restore. For a scheduled Backup, its newest
	// completed run when the Restore first finds one is used (status.backupName).
	// +optional
	BackupRef corev1.LocalObjectReference `json:"backupRef,omitempty"`
	// Source is an artifact at a bare location, for disaster recovery when the
	// Backup objects are gone (another cluster's backups, a lost namespace).
	// +optional
	Source *RestoreSource `json:"source,omitempty"`
	// AllowOtherDatabase permits restoring an artifact that a different Database
	// (another UID: another namespace or cluster, or a deleted and re-created
	// Database) wrote. Without it such a restore fails with reason
	// ArtifactOfOtherDatabase, so a shared bucket never restores the wrong data.
	// +optional
	AllowOtherDatabase bool `json:"allowOtherDatabase,omitempty"`
	// ManifestKeySecret names a Secret in the Restore's namespace whose key
	// "manifest-key" is the manifest key of the Database that wrote the
	// artifact (copy it from that Database's <name>-internal Secret). An
	// artifact's manifest must be signed with the target Database's key or
	// with this one: another Database's artifact is authenticated with it.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	ManifestKeySecret string `json:"manifestKeySecret,omitempty"`
	// AllowUnauthenticated restores an artifact whose manifest no key
	// authenticates: its writer's key is lost (a deleted cluster), or it was
	// written before manifests were signed and no Backup vouches for its
	// checksum. The store is trusted instead; the archive's objects are still
	// never owned by a superuser (the restore refuses such archives).
	// +optional
	AllowUnauthenticated bool `json:"allowUnauthenticated,omitempty"`
	// KeepPreviousFor is how long the pre-restore copy of the database is kept
	// (it accepts no connections; see the README for undoing a restore with it).
	// "0s" drops it as soon as the restore is swapped in.
	// +kubebuilder:default="24h"
	// +optional
	KeepPreviousFor *metav1.Duration `json:"keepPreviousFor,omitempty"`
	// PointInTime restores the Database in place, from its own WAL archive
	// (spec.walArchive), to a target. backupRef, when set, names the Physical
	// Backup to start from; without it the newest usable base backup that
	// ends before the target is used.
	// +optional
	PointInTime *RestorePointInTime `json:"pointInTime,omitempty"`
	// Undo names an earlier Completed point-in-time Restore of this Database
	// whose previous data directory is still kept (its
	// status.previousDataDropAfter has not passed, and the instance that
	// holds it, status.previousDataPod, is the primary): that directory is
	// put back, replayed to its end and promoted on a new timeline. What it
	// replaces is kept in turn, so an undo can be undone.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Undo string `json:"undo,omitempty"`
	// ParallelJobs is pg_restore's --jobs. With more than one the artifact is
	// spooled, uncompressed, on the primary's data volume during the restore
	// (when it has room; else it is streamed with one job).
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=16
	// +optional
	ParallelJobs *int32 `json:"parallelJobs,omitempty"`
}

// RestorePointInTime is an in-place point-in-time restore: the primary
// restores a base backup from the Database's WAL archive into a staging
// directory while it still serves, stops, keeps its data directory aside
// (for keepPreviousFor, on its volume), and replays the archive to the
// target, where PostgreSQL promotes on a new timeline. The standbys then
// re-clone. A target the archive cannot reach is refused before anything
// changes (reason TargetNotRecoverable, naming the window).
// +kubebuilder:validation:XValidation:rule="[has(self.time), has(self.lsn), has(self.xid), has(self.restorePoint), has(self.latest) && self.latest].filter(x, x).size() == 1",message="set exactly one target: time, lsn, xid, restorePoint or latest: true"
type RestorePointInTime struct {
	RecoveryTarget `json:",inline"`
}

// RestoreSource is an artifact at a storage location, without a Backup object.
type RestoreSource struct {
	// Location is the artifact's URL as a Backup's status.backupLocation shows it:
	// s3://bucket/key or pvc://claim/key. Its manifest (<key>.manifest.json) must
	// be next to it.
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^ ]+$') || self.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^ ]+$')",message="source.location must be s3://bucket/key or pvc://claim/key"
	Location string `json:"location"`
	// S3 configures access to an s3:// location.
	// +optional
	S3 *S3Config `json:"s3,omitempty"`
	// Encryption is the key of an encrypted artifact.
	// +optional
	Encryption *BackupEncryption `json:"encryption,omitempty"`
}

// RestorePhase is the phase of a Restore.
// +kubebuilder:validation:Enum=Pending;InProgress;Completed;Failed
type RestorePhase string

const (
	RestorePending    RestorePhase = "Pending"
	RestoreInProgress RestorePhase = "InProgress"
	RestoreCompleted  RestorePhase = "Completed"
	RestoreFailed     RestorePhase = "Failed"
)

// RestoreStatus is the observed state of a Restore.
type RestoreStatus struct {
	// Phase: Pending, InProgress, Completed or Failed.
	// +optional
	Phase RestorePhase `json:"phase,omitempty"`
	// RestoreTime is when the restore completed.
	// +optional
	RestoreTime *metav1.Time `json:"restoreTime,omitempty"`
	// BackupLocation is the artifact that is (or was) restored.
	// +optional
	BackupLocation string `json:"backupLocation,omitempty"`
	// JobName is the Job that runs (or ran) the restore.
	// +optional
	JobName string `json:"jobName,omitempty"`
	// PreviousDatabase is the pre-restore copy of the database (it accepts no
	// connections), kept until PreviousDatabaseDropAfter.
	// +optional
	PreviousDatabase string `json:"previousDatabase,omitempty"`
	// PreviousDatabaseDropAfter is when the primary drops the pre-restore copy.
	// +optional
	PreviousDatabaseDropAfter *metav1.Time `json:"previousDatabaseDropAfter,omitempty"`
	// TerminatedSessions is how many sessions the swap terminated.
	// +optional
	TerminatedSessions int32 `json:"terminatedSessions,omitempty"`
	// Duration is how long the restore took on the primary (receive, restore,
	// ANALYZE, swap).
	// +optional
	Duration string `json:"duration,omitempty"`
	// Recovery is where an in-place point-in-time restore (or an undo)
	// ended: the base backup, the target, the position and commit time
	// reached, the new timeline.
	// +optional
	Recovery *RecoveryStatus `json:"recovery,omitempty"`
	// PreviousData is the data directory an in-place point-in-time restore
	// (or an undo) replaced, kept on the volume of PreviousDataPod until
	// PreviousDataDropAfter: a Restore with spec.undo naming this one puts
	// it back.
	// +optional
	PreviousData string `json:"previousData,omitempty"`
	// +optional
	PreviousDataPod string `json:"previousDataPod,omitempty"`
	// +optional
	PreviousDataDropAfter *metav1.Time `json:"previousDataDropAfter,omitempty"`
	// BackupName is the Backup restored: spec.backupRef, or for a scheduled
	// Backup the run that was its newest completed one when this Restore first
	// found one (it does not move to a later run; retention keeps it while this
	// Restore has not finished).
	// +optional
	BackupName string `json:"backupName,omitempty"`
	// Error says why the Restore failed; empty otherwise. The ERROR column of
	// kubectl get.
	// +optional
	Error string `json:"error,omitempty"`
	// ObservedGeneration is the generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Ready (True once Completed) and Stalled.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName={pgrestore,pgrestores},categories={postgres}
// +kubebuilder:selectablefield:JSONPath=".spec.databaseRef.name"
// +kubebuilder:printcolumn:name="Phase",type="string",JSONPath=".status.phase"
// +kubebuilder:printcolumn:name="Database",type="string",JSONPath=".spec.databaseRef.name"
// +kubebuilder:printcolumn:name="Backup",type="string",JSONPath=".spec.backupRef.name"
// +kubebuilder:printcolumn:name="Age",type="date",JSONPath=".metadata.creationTimestamp"
// +kubebuilder:printcolumn:name="Error",type="string",JSONPath=".status.error"

// Restore restores a Backup into a Database, atomically.
type Restore struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   RestoreSpec   `json:"spec"`
	Status RestoreStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// RestoreList contains a list of Restore.
type RestoreList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Restore `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Backup{}, &BackupList{}, &Restore{}, &RestoreList{})
}
