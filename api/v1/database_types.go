package v1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DefaultImage is the PostgreSQL image used when spec.image is not set.
// postgres:14 reached end of life in November 2026; 17 is a supported major.
const DefaultImage = "postgres:17"

// DatabaseSpec defines the desired state of a PostgreSQL database.
// +kubebuilder:validation:XValidation:rule="!has(self.synchronousReplicas) || self.synchronousReplicas < (has(self.replicas) ? self.replicas : 1)",message="synchronousReplicas must be below replicas: it counts standbys, and a Database has replicas-1 of them"
// +kubebuilder:validation:XValidation:rule="has(self.bootstrap) == has(oldSelf.bootstrap)",message="spec.bootstrap can be set only when the Database is created, and never removed"
type DatabaseSpec struct {
	// Image is the PostgreSQL container image, e.g. "postgres:17". Any image laid out
	// like the official postgres images works (binaries on PATH or under
	// /usr/lib/postgresql/NN/bin, a "postgres" user). A change of the minor version
	// rolls the standbys first and the primary last; a change of the major version is
	// refused (Stalled) because the data directory format differs between majors.
	// +kubebuilder:default="postgres:17"
	// +kubebuilder:validation:XValidation:rule="self.size() > 0",message="image must not be empty"
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Image string `json:"image,omitempty"`

	// Replicas is the number of PostgreSQL instances: one primary plus replicas-1
	// streaming standbys.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// DatabaseName is the application database created in the instance. It must be a
	// lowercase PostgreSQL identifier and is immutable.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z_][a-z0-9_]*$')",message="databaseName must be a lowercase PostgreSQL identifier: a letter or underscore followed by letters, digits or underscores"
	// +kubebuilder:validation:XValidation:rule="!(self in ['postgres', 'template0', 'template1']) && !self.startsWith('pg_')",message="databaseName must not be a reserved name (postgres, template0, template1, or starting with pg_)"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="databaseName is immutable"
	DatabaseName string `json:"databaseName"`

	// Username is the application role that owns DatabaseName. Its password is
	// generated and stored in the Secret <name>-credentials. Immutable.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z_][a-z0-9_]*$')",message="username must be a lowercase PostgreSQL identifier: a letter or underscore followed by letters, digits or underscores"
	// +kubebuilder:validation:XValidation:rule="!(self in ['postgres', 'streaming_replica', 'postgres_operator_monitor']) && !self.startsWith('pg_')",message="username must not be a reserved name (postgres, streaming_replica, postgres_operator_monitor, or starting with pg_)"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="username is immutable"
	Username string `json:"username"`

	// Storage is the persistent volume of each instance.
	Storage StorageSpec `json:"storage"`

	// Resources are the compute resources of the postgres container.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// MaxReplicationLag is the replay lag, in bytes of WAL, above which a standby is
	// reported as lagging: it leaves the read-only Service and, when that lasts, the
	// Database leaves Ready. The default, 64Mi (four WAL segments), absorbs a burst of
	// writes without flapping while still keeping the read-only endpoint close to the
	// primary.
	// +kubebuilder:default="64Mi"
	// +optional
	MaxReplicationLag *resource.Quantity `json:"maxReplicationLag,omitempty"`

	// MaxSlotWALKeepSize bounds the WAL the primary keeps for a standby that is
	// disconnected or behind (PostgreSQL's max_slot_wal_keep_size): every standby has
	// a physical replication slot, and without a bound a dead standby could fill the
	// primary's volume. A standby that falls further behind is re-cloned
	// automatically. Default: a quarter of storage.size, at least 64Mi.
	// +optional
	MaxSlotWALKeepSize *resource.Quantity `json:"maxSlotWALKeepSize,omitempty"`

	// SynchronousReplicas is the number of standbys that must confirm each commit
	// before it is acknowledged (PostgreSQL's quorum "ANY n" over all standbys);
	// 0, the default, is asynchronous replication. With n > 0 no acknowledged
	// commit is lost by a failover: the operator promotes only a standby that is
	// guaranteed to have every one (at least replicas-n of the replicas-1
	// standbys must report), and writes wait while fewer than n standbys stream.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=9
	// +optional
	SynchronousReplicas int32 `json:"synchronousReplicas,omitempty"`

	// Failover configures the primary's Lease, its self-fencing and automatic
	// failover. The defaults suit most clusters.
	// +kubebuilder:default={}
	// +optional
	Failover FailoverSpec `json:"failover,omitempty"`

	// Upgrade configures major version upgrades. Raising the major of
	// spec.image (postgres:15 → postgres:17) upgrades the data directory in
	// place: a preflight (pg_upgrade --check against the live primary in a
	// Job), an optional safety-net Backup, then every instance stops, a Job
	// on the primary's volume runs initdb with the old cluster's settings and
	// pg_upgrade, the primary starts on the new major and the standbys are
	// re-cloned from it. A lower major is refused. See the README's
	// "Major version upgrades".
	// +kubebuilder:default={}
	// +optional
	Upgrade UpgradeSpec `json:"upgrade,omitempty"`

	// TLS configures the encryption of connections to PostgreSQL. Every
	// Database has a certificate authority of its own (Secret <name>-ca) that
	// issues the instances' server certificate (Secret <name>-server-tls,
	// renewed a month before it expires); the credentials Secret carries the
	// CA as ca.crt and a uri with sslmode=verify-full. Replication, clones,
	// rewinds, backups and the operator's connections to the instance agents
	// always use TLS and verify the certificate.
	// +kubebuilder:default={}
	// +optional
	TLS TLSSpec `json:"tls,omitempty"`

	// Affinity of the instance pods. When unset, a preferred pod anti-affinity
	// spreads the instances of a Database across nodes.
	// +optional
	Affinity *corev1.Affinity `json:"affinity,omitempty"`

	// Tolerations of the instance pods.
	// +optional
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// NodeSelector of the instance pods.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// TopologySpreadConstraints of the instance pods.
	// +optional
	TopologySpreadConstraints []corev1.TopologySpreadConstraint `json:"topologySpreadConstraints,omitempty"`

	// PodTemplate adds the cluster's conventions to the instance pods and the
	// Database's Job pods (upgrades): labels, annotations, pull secrets and a
	// priority class.
	// +optional
	PodTemplate PodTemplate `json:"podTemplate,omitempty"`

	// ServiceTemplate adds labels and annotations to the Database's three
	// Services (e.g. for a load-balancer controller or service mesh).
	// +optional
	ServiceTemplate ObjectMetadata `json:"serviceTemplate,omitempty"`

	// PostgreSQL configures every instance's server: parameters, extra pg_hba
	// rules and preloaded libraries. A parameter PostgreSQL applies on reload is
	// applied within seconds without a restart; one that needs a restart (e.g.
	// shared_buffers, shared_preload_libraries) restarts the instances one at a
	// time, standbys first and the primary last after a switchover. Condition
	// ConfigurationApplied says which happened.
	// +optional
	PostgreSQL PostgreSQLConfig `json:"postgresql,omitempty"`

	// WALArchive archives every WAL segment and timeline history file of the
	// primary continuously (compressed, checksummed, encrypted when asked,
	// never overwritten by a different file of the same name), within
	// archiveTimeout of its being written. `walArchive: {}` archives to the
	// operator's default location. Turning it on or off, or moving it,
	// restarts nothing (a reload). Condition ContinuousArchiving and
	// status.walArchive report it.
	// +optional
	WALArchive *WALArchiveSpec `json:"walArchive,omitempty"`

	// Bootstrap creates the new Database's cluster from another's WAL archive
	// instead of an empty one (point-in-time recovery into a new Database:
	// disaster recovery, a clone at a past moment). It is used once, when the
	// first instance starts on an empty volume, and cannot change.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.bootstrap cannot change: it created the cluster"
	// +optional
	Bootstrap *BootstrapSpec `json:"bootstrap,omitempty"`
}

// WALArchiveSpec is where and how a Database archives its WAL.
type WALArchiveSpec struct {
	// StorageLocation is s3://bucket[/prefix]; the archive is under its
	// wal/ directory. Empty: the operator's default location
	// (--default-backup-location), under <namespace>/<name>/.
	// +kubebuilder:validation:XValidation:rule="self.startsWith('s3://')",message="walArchive.storageLocation must be an s3:// location (a pvc:// WAL archive is not supported yet: it needs a volume every instance can reach)"
	// +optional
	StorageLocation string `json:"storageLocation,omitempty"`
	// S3 is how to reach an s3:// location (the default location's when
	// empty).
	// +optional
	S3 *S3Config `json:"s3,omitempty"`
	// Encryption encrypts every archived file to the age key of this Secret
	// before it leaves the instance.
	// +optional
	Encryption *BackupEncryption `json:"encryption,omitempty"`
	// ArchiveTimeout bounds how long written WAL waits before its segment is
	// switched and archived (archive_timeout): the archive's lag behind the
	// primary when it writes little. Between 10s and 1h.
	// +kubebuilder:default="60s"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10s') && duration(self) <= duration('1h')",message="walArchive.archiveTimeout must be between 10s and 1h"
	// +optional
	ArchiveTimeout *metav1.Duration `json:"archiveTimeout,omitempty"`
}

// BootstrapSpec is how a new Database's cluster is created.
type BootstrapSpec struct {
	// PointInTime recovers the cluster from a WAL archive to a target.
	PointInTime *PointInTimeBootstrap `json:"pointInTime"`
}

// PointInTimeBootstrap is a point-in-time recovery into a new Database: the
// newest verified base backup of the source archive that ends before the
// target is restored on the first instance, the archived WAL replayed up to
// the target, and the cluster promoted there on a new timeline; the other
// instances clone it. A target the archive cannot reach is refused before
// anything is restored (condition Recovered, reason TargetNotRecoverable).
// +kubebuilder:validation:XValidation:rule="has(self.databaseRef) != has(self.storageLocation)",message="set exactly one source: databaseRef (a Database whose spec.walArchive to read) or storageLocation (a bare archive, with systemIdentifier)"
// +kubebuilder:validation:XValidation:rule="!has(self.storageLocation) || has(self.systemIdentifier)",message="a bare archive location needs systemIdentifier (the source cluster's directory in it)"
// +kubebuilder:validation:XValidation:rule="[has(self.time), has(self.lsn), has(self.xid), has(self.restorePoint), has(self.latest) && self.latest].filter(x, x).size() == 1",message="set exactly one target: time, lsn, xid, restorePoint or latest: true"
type PointInTimeBootstrap struct {
	// DatabaseRef names a Database in this namespace whose WAL archive
	// (spec.walArchive, its location, s3 settings and encryption) and system
	// identifier are the source.
	// +optional
	DatabaseRef *corev1.LocalObjectReference `json:"databaseRef,omitempty"`
	// StorageLocation is a bare archive, s3://bucket[/prefix], as the source
	// Database's status.walArchive.location showed it (with S3 and
	// Encryption): for disaster recovery when the source Database is gone.
	// +kubebuilder:validation:XValidation:rule="self.startsWith('s3://')",message="storageLocation must be an s3:// location"
	// +optional
	StorageLocation string `json:"storageLocation,omitempty"`
	// +optional
	S3 *S3Config `json:"s3,omitempty"`
	// +optional
	Encryption *BackupEncryption `json:"encryption,omitempty"`
	// SystemIdentifier is the source cluster's (its status.systemIdentifier):
	// its directory in a bare archive.
	// +kubebuilder:validation:Pattern=`^[0-9]{1,20}$`
	// +optional
	SystemIdentifier string `json:"systemIdentifier,omitempty"`

	RecoveryTarget `json:",inline"`
}

// RecoveryTarget is where a point-in-time recovery stops: exactly one of
// time, lsn, xid, restorePoint and latest.
type RecoveryTarget struct {
	// Time stops the recovery at this moment (RFC 3339): transactions that
	// committed before it (at it, with inclusive) are kept, later ones not.
	// +optional
	Time *metav1.Time `json:"time,omitempty"`
	// LSN stops it at this WAL position, e.g. 0/3000060.
	// +kubebuilder:validation:Pattern=`^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$`
	// +optional
	LSN string `json:"lsn,omitempty"`
	// XID stops it at the commit of this transaction (its txid_current()).
	// +kubebuilder:validation:Pattern=`^[0-9]{1,20}$`
	// +optional
	XID string `json:"xid,omitempty"`
	// RestorePoint stops it at a point created with pg_create_restore_point().
	// +kubebuilder:validation:MaxLength=63
	// +optional
	RestorePoint string `json:"restorePoint,omitempty"`
	// Latest replays everything the archive holds.
	// +optional
	Latest bool `json:"latest,omitempty"`
	// Inclusive: stop just after the target (true, default) or just before it.
	// +kubebuilder:default=true
	// +optional
	Inclusive *bool `json:"inclusive,omitempty"`
}

// ObjectMetadata is labels and annotations added to objects the operator
// creates. The operator's own labels (app, database, name, role,
// app.kubernetes.io/managed-by) cannot be set: its selectors depend on them.
// +kubebuilder:validation:XValidation:rule="!has(self.labels) || self.labels.all(k, !(k in ['app', 'database', 'name', 'role', 'app.kubernetes.io/managed-by']))",message="labels must not set app, database, name, role or app.kubernetes.io/managed-by: the operator's selectors use them"
type ObjectMetadata struct {
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
}

// PodTemplate is what a Database adds to its pods.
type PodTemplate struct {
	ObjectMetadata `json:",inline"`
	// ImagePullSecrets for the PostgreSQL and operator images.
	// +optional
	ImagePullSecrets []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`
	// PriorityClassName of the pods.
	// +optional
	PriorityClassName string `json:"priorityClassName,omitempty"`
}

// TLSMode says whether network clients must use TLS.
// +kubebuilder:validation:Enum=Required;Optional
type TLSMode string

const (
	// TLSRequired refuses network connections without TLS (the default).
	TLSRequired TLSMode = "Required"
	// TLSOptional also accepts application connections without TLS, for clients
	// that cannot use it; the server still offers TLS to every client.
	TLSOptional TLSMode = "Optional"
)

// TLSSpec configures TLS for application connections.
type TLSSpec struct {
	// Mode is Required (default: pg_hba accepts network connections only over
	// TLS) or Optional (plain connections are accepted too; replication and the
	// operator's connections still use TLS).
	// +kubebuilder:default=Required
	// +optional
	Mode TLSMode `json:"mode,omitempty"`
}

// FailoverSpec holds the timings of the primary's Lease and of failover. The
// primary's agent renews the Lease every retryPeriodSeconds; its readiness drops
// after two retry periods without a renewal, and once renewDeadlineSeconds pass
// without one it shuts PostgreSQL down immediately (self-fencing), before a
// standby can take the Lease, which needs leaseDurationSeconds without a renewal.
// A Database with one instance takes the Lease once and neither renews it nor
// fences (there is nobody to fail over to).
// +kubebuilder:validation:XValidation:rule="(has(self.renewDeadlineSeconds) ? self.renewDeadlineSeconds : 10) + 2 <= (has(self.leaseDurationSeconds) ? self.leaseDurationSeconds : 15)",message="failover.renewDeadlineSeconds must be at least 2 seconds shorter than failover.leaseDurationSeconds, so that a primary that cannot renew its Lease has stopped accepting writes before a standby can take the Lease"
// +kubebuilder:validation:XValidation:rule="(has(self.retryPeriodSeconds) ? self.retryPeriodSeconds : 2) * 2 <= (has(self.renewDeadlineSeconds) ? self.renewDeadlineSeconds : 10)",message="failover.retryPeriodSeconds must be at most half of failover.renewDeadlineSeconds, so that a primary tries to renew its Lease at least twice before it fences itself"
type FailoverSpec struct {
	// LeaseDurationSeconds is how long a standby waits, after the primary's last
	// renewal it observed, before it may take the Lease of a primary that did not
	// release it (a killed or partitioned primary).
	// +kubebuilder:default=15
	// +kubebuilder:validation:Minimum=5
	// +kubebuilder:validation:Maximum=300
	// +optional
	LeaseDurationSeconds int32 `json:"leaseDurationSeconds,omitempty"`

	// RenewDeadlineSeconds is how long the primary keeps accepting writes without
	// renewing its Lease; then it shuts PostgreSQL down immediately.
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=2
	// +kubebuilder:validation:Maximum=290
	// +optional
	RenewDeadlineSeconds int32 `json:"renewDeadlineSeconds,omitempty"`

	// RetryPeriodSeconds is how often the primary renews the Lease and the standbys
	// read it: one Lease write per retry period per Database with standbys.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=60
	// +optional
	RetryPeriodSeconds int32 `json:"retryPeriodSeconds,omitempty"`

	// FailoverDelaySeconds is how long the primary must have failed before the
	// operator starts a failover (0: at once).
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=3600
	// +optional
	FailoverDelaySeconds int32 `json:"failoverDelaySeconds,omitempty"`

	// MaxLagOnFailover is how much WAL, in bytes, a standby may lack and still be
	// promoted when the primary failed without a clean shutdown: its received
	// WAL must be within this distance of the primary's position as last
	// recorded on the Lease (at each renewal, so at most retryPeriodSeconds old).
	// A primary that shut down cleanly recorded its final position: a standby
	// is then promoted only if it received all of it, whatever this setting.
	// When no standby qualifies the failover is blocked (phase Blocked, reason
	// FailoverBlocked, naming each standby and its lag) and the old primary
	// starts again as primary when it returns with its volume; the annotation
	// database.example.com/force-failover-to=<pod> promotes that standby
	// anyway, accepting the loss (an event records the bytes given up). The
	// default, 1Mi, is Patroni's maximum_lag_on_failover: a streaming standby is
	// normally within kilobytes of its primary, so only a standby that was cut
	// off or throttled is refused, and with asynchronous replication no more
	// than 1Mi of acknowledged WAL can be given up by an automatic failover.
	// +kubebuilder:default="1Mi"
	// +kubebuilder:validation:XValidation:rule="isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('0'))",message="failover.maxLagOnFailover must be a non-negative quantity of bytes such as 1Mi"
	// +optional
	MaxLagOnFailover *resource.Quantity `json:"maxLagOnFailover,omitempty"`
}

// StorageSpec describes the volume of each instance.
// +kubebuilder:validation:XValidation:rule="has(self.storageClass) == has(oldSelf.storageClass) && (!has(self.storageClass) || self.storageClass == oldSelf.storageClass)",message="storage.storageClass is immutable"
type StorageSpec struct {
	// Size is the requested size of each instance's volume, a quantity such as
	// "10Gi". It may grow (the PersistentVolumeClaims are expanded if their
	// StorageClass allows it) but never shrink.
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",message="storage.size must be a positive quantity such as 10Gi"
	// +kubebuilder:validation:XValidation:rule="!isQuantity(oldSelf) || !isQuantity(self) || quantity(self).compareTo(quantity(oldSelf)) >= 0",message="storage.size may grow but never shrink"
	Size string `json:"size"`

	// StorageClass is the StorageClass of the volumes; the cluster default when
	// empty. Immutable.
	// +optional
	StorageClass *string `json:"storageClass,omitempty"`
}

// UpgradeMethod is how pg_upgrade carries the data files to the new major.
// +kubebuilder:validation:Enum=Link;Copy
type UpgradeMethod string

const (
	// UpgradeLink hard-links the data files: seconds for any size and almost
	// no extra space; once the new server has started, the old directory is
	// unusable (the way back is then the safety-net Backup).
	UpgradeLink UpgradeMethod = "Link"
	// UpgradeCopy copies the data files: as slow as the data is large and needs
	// as much free space; the old directory is kept on the volume for a
	// rollback (status.upgrade.oldDirectory).
	UpgradeCopy UpgradeMethod = "Copy"
)

// UpgradeSpec configures major version upgrades.
type UpgradeSpec struct {
	// Method is how pg_upgrade carries the data files: Link (default) or Copy.
	// +kubebuilder:default=Link
	// +optional
	Method UpgradeMethod `json:"method,omitempty"`

	// RebuildCollationIndexes: when the C library or ICU differs between the
	// old and the new image (their sort orders may differ), the indexes that
	// depend on a collation are rebuilt during the upgrade, before the
	// database serves (default true). When false they are only listed in
	// status.upgrade.indexesToRebuild and condition CollationIndexesStale says
	// what to run.
	// +optional
	RebuildCollationIndexes *bool `json:"rebuildCollationIndexes,omitempty"`

	// Backup, when set, takes a logical Backup of the Database to this
	// location after the preflight and before the instances stop; the upgrade
	// waits for it and does not start when it fails. Its name is recorded in
	// status.upgrade.safetyBackup: the way back after a Link upgrade. An empty
	// object ({}) backs up to the deployment's default location.
	// +optional
	Backup *UpgradeBackup `json:"backup,omitempty"`
}

// UpgradeBackup is where the safety-net Backup of an upgrade goes (the fields
// of a Backup's spec).
type UpgradeBackup struct {
	// StorageLocation is a Backup's storageLocation (empty: the default PVC).
	// +optional
	StorageLocation string `json:"storageLocation,omitempty"`
	// S3 is a Backup's S3 configuration.
	// +optional
	S3 *S3Config `json:"s3,omitempty"`
	// Encryption is a Backup's client-side encryption.
	// +optional
	Encryption *BackupEncryption `json:"encryption,omitempty"`
}

// UpgradePhase is the state of a major version upgrade (the state machine of
// internal/controller/database/upgrade.go).
type UpgradePhase string

const (
	// UpgradePreflight: pg_upgrade --check runs against the live primary.
	UpgradePreflight UpgradePhase = "Preflight"
	// UpgradePreflightFailed: the check failed; the old version keeps running.
	// Fix the problem and change the spec (or revert spec.image).
	UpgradePreflightFailed UpgradePhase = "PreflightFailed"
	// UpgradeBackingUp: the safety-net Backup runs.
	UpgradeBackingUp UpgradePhase = "BackingUp"
	// UpgradeBackupFailed: the safety-net Backup failed; nothing was stopped.
	UpgradeBackupFailed UpgradePhase = "BackupFailed"
	// UpgradeStopping: every instance is stopping.
	UpgradeStopping UpgradePhase = "Stopping"
	// UpgradeUpgrading: the upgrade Job runs on the primary's volume.
	UpgradeUpgrading UpgradePhase = "Upgrading"
	// UpgradeRollingBack: the old data directory is being put back.
	UpgradeRollingBack UpgradePhase = "RollingBack"
	// UpgradeStarting: the primary starts on the new major; standbys re-clone.
	UpgradeStarting UpgradePhase = "Starting"
	// UpgradeSucceeded: the Database runs the new major.
	UpgradeSucceeded UpgradePhase = "Succeeded"
	// UpgradeRolledBack: the upgrade failed before its point of no return and
	// the old version runs again.
	UpgradeRolledBack UpgradePhase = "RolledBack"
	// UpgradeFailed: the upgrade could neither finish nor roll back; the
	// instances stay stopped (see the message and the README).
	UpgradeFailed UpgradePhase = "Failed"
)

// UpgradeStep is one step of an upgrade with its times.
type UpgradeStep struct {
	Name       string      `json:"name"`
	StartedAt  metav1.Time `json:"startedAt"`
	FinishedAt metav1.Time `json:"finishedAt"`
}

// UpgradeStatus is the last (or running) major version upgrade.
type UpgradeStatus struct {
	Phase UpgradePhase `json:"phase"`
	// Generation of the Database whose spec asked for this upgrade.
	Generation int64 `json:"generation"`
	// FromImage and ToImage, FromMajor and ToMajor.
	FromImage string `json:"fromImage"`
	ToImage   string `json:"toImage"`
	FromMajor int32  `json:"fromMajor"`
	ToMajor   int32  `json:"toMajor"`
	// Method of this upgrade.
	Method UpgradeMethod `json:"method"`
	// Primary is the pod whose volume is upgraded.
	Primary string `json:"primary,omitempty"`
	// Attempt counts the upgrade (or rollback) Jobs of this phase.
	// +optional
	Attempt int32 `json:"attempt,omitempty"`
	// Job is the Job of the current phase.
	// +optional
	Job string `json:"job,omitempty"`
	// SafetyBackup is the Backup taken before the instances stopped.
	// +optional
	SafetyBackup string `json:"safetyBackup,omitempty"`
	// OldDirectory is the old data directory kept on the primary's volume
	// after a Copy upgrade.
	// +optional
	OldDirectory string `json:"oldDirectory,omitempty"`
	// CollationChange says what changed between the images' C library and
	// ICU ("glibc 2.36 → 2.41; ICU 72 → 76"); RebuiltIndexes counts the
	// indexes rebuilt for it; IndexesToRebuild lists those left when the
	// rebuild was turned off.
	// +optional
	CollationChange string `json:"collationChange,omitempty"`
	// +optional
	RebuiltIndexes int32 `json:"rebuiltIndexes,omitempty"`
	// +optional
	IndexesToRebuild []string `json:"indexesToRebuild,omitempty"`
	// ExtensionsToUpdate lists the extensions whose installed version is not
	// the new default: run ALTER EXTENSION … UPDATE when the application is
	// ready for it.
	// +optional
	ExtensionsToUpdate []string `json:"extensionsToUpdate,omitempty"`
	// Message explains the phase.
	// +optional
	Message string `json:"message,omitempty"`
	// Steps are the upgrade's steps with their times (the operator's and the
	// Job's).
	// +optional
	Steps []UpgradeStep `json:"steps,omitempty"`
	// StartedAt is when the upgrade began; StoppedAt when the instances were
	// down; FinishedAt when it ended; Downtime from StoppedAt to the new
	// primary accepting writes.
	StartedAt metav1.Time `json:"startedAt"`
	// +optional
	StoppedAt *metav1.Time `json:"stoppedAt,omitempty"`
	// +optional
	FinishedAt *metav1.Time `json:"finishedAt,omitempty"`
	// +optional
	Downtime string `json:"downtime,omitempty"`
}

// Phase is the lifecycle phase of a Database.
// +kubebuilder:validation:Enum=Pending;Provisioning;Deploying;Verifying;Ready;Failed;FailingOver;SwitchingOver;Upgrading
type Phase string

const (
	// PhasePending: the Database was accepted; nothing has been created yet.
	PhasePending Phase = "Pending"
	// PhaseProvisioning: Secrets, Services and the StatefulSet exist; no instance is
	// running yet (volumes binding, images pulling, the primary initialising).
	PhaseProvisioning Phase = "Provisioning"
	// PhaseDeploying: some instances run but not all are ready or updated, e.g. a
	// scale-up or a rolling update is under way.
	PhaseDeploying Phase = "Deploying"
	// PhaseVerifying: all instances are ready; the operator is checking that the
	// primary accepts writes and every standby streams within the lag threshold.
	// A Database that fails these checks after being Ready returns here.
	PhaseVerifying Phase = "Verifying"
	// PhaseReady: all checks passed; the Database serves at status.endpoint.
	PhaseReady Phase = "Ready"
	// PhaseFailed: the spec cannot be realised without a change by the user (see the
	// Stalled condition). Running instances are left untouched.
	PhaseFailed Phase = "Failed"
	// PhaseFailingOver: the primary failed; the operator fences it and promotes
	// the most advanced standby.
	PhaseFailingOver Phase = "FailingOver"
	// PhaseUpgrading: a major version upgrade is running (status.upgrade).
	PhaseUpgrading Phase = "Upgrading"
	// PhaseSwitchingOver: a requested switchover (or a rolling update) moves the
	// primary to another instance.
	PhaseSwitchingOver Phase = "SwitchingOver"
)

// PrimaryChangeKind is what started a change of primary.
// +kubebuilder:validation:Enum=Failover;Switchover
type PrimaryChangeKind string

const (
	// PrimaryChangeFailover: the primary failed.
	PrimaryChangeFailover PrimaryChangeKind = "Failover"
	// PrimaryChangeSwitchover: a switchover was requested (annotation, rolling
	// update, scale-down).
	PrimaryChangeSwitchover PrimaryChangeKind = "Switchover"
)

// PrimaryChangePhase is the state of a change of primary (the state machine of
// internal/controller/database/failover.go).
// +kubebuilder:validation:Enum=Detected;Fencing;Blocked;Promoting;Completed;Aborted
type PrimaryChangePhase string

const (
	// PrimaryChangeDetected: the primary failed; the operator waits
	// failoverDelaySeconds before acting.
	PrimaryChangeDetected PrimaryChangePhase = "Detected"
	// PrimaryChangeFencing: no instance is the target primary; the old primary's
	// role label is removed and the standbys stop streaming, so that their WAL
	// positions are final when the candidate is chosen.
	PrimaryChangeFencing PrimaryChangePhase = "Fencing"
	// PrimaryChangeBlocked: no standby has the old primary's acknowledged
	// writes (see spec.failover.maxLagOnFailover): the old primary is the
	// target again and resumes when it returns with its volume, unless the
	// annotation database.example.com/force-failover-to names a standby.
	PrimaryChangeBlocked PrimaryChangePhase = "Blocked"
	// PrimaryChangePromoting: the candidate is the target primary; it takes the
	// Lease (once released or expired) and promotes.
	PrimaryChangePromoting PrimaryChangePhase = "Promoting"
	// PrimaryChangeCompleted: the candidate reports being primary and holds the
	// Lease.
	PrimaryChangeCompleted PrimaryChangePhase = "Completed"
	// PrimaryChangeAborted: the change was abandoned (the old primary recovered
	// before it was fenced, or the switchover target failed); see the message.
	PrimaryChangeAborted PrimaryChangePhase = "Aborted"
)

// PrimaryChange is a change of primary, in progress or finished.
type PrimaryChange struct {
	// Kind is Failover or Switchover.
	Kind PrimaryChangeKind `json:"kind"`
	// Phase is the state of the change.
	Phase PrimaryChangePhase `json:"phase"`
	// From is the primary being replaced.
	From string `json:"from,omitempty"`
	// To is the chosen new primary (empty until chosen).
	To string `json:"to,omitempty"`
	// PrimaryLSN is the old primary's last known WAL position when the failover
	// started (recorded on the Lease at its last renewal), or its final position
	// if it shut down cleanly: candidates are measured against it.
	// +optional
	PrimaryLSN string `json:"primaryLSN,omitempty"`
	// PrimaryLSNIsFinal: PrimaryLSN is the final position the old primary
	// released the Lease with after a clean shutdown (exact), not the position
	// of its last renewal.
	// +optional
	PrimaryLSNIsFinal bool `json:"primaryLSNIsFinal,omitempty"`
	// Message explains the phase (why the primary counts as failed, why a
	// candidate was chosen or why none can be).
	Message string `json:"message,omitempty"`
	// StartedAt is when the change began; PhaseSince when its phase last changed.
	StartedAt  metav1.Time `json:"startedAt"`
	PhaseSince metav1.Time `json:"phaseSince"`
	// FinishedAt is set once the change completed or was aborted.
	// +optional
	FinishedAt *metav1.Time `json:"finishedAt,omitempty"`
}

// Reasons of ConditionConfigurationApplied.
const (
	ReasonConfigurationApplied = "ConfigurationApplied"
	// ReasonConfigurationApplying: instances have not loaded it yet (a
	// ConfigMap reaches the pods within about a minute).
	ReasonConfigurationApplying = "ConfigurationApplying"
	// ReasonRollingRestart: settings need a restart; the instances restart one
	// at a time, the primary last after a switchover.
	ReasonRollingRestart = "RollingRestart"
	// ReasonConfigurationInvalid: PostgreSQL refused a setting (an invalid
	// value); the instances keep the previous one and are not restarted.
	ReasonConfigurationInvalid = "ConfigurationInvalid"
)

// AnnotationConfigRestart on the instance pods is the configuration hash they
// were restarted for.
const AnnotationConfigRestart = "database.example.com/config-restart"

// ManagedParameters are the PostgreSQL settings the operator owns (listening,
// replication, recovery, TLS, authentication files, logging of secrets): setting
// them in spec.postgresql.parameters is refused. Keep in step with the CEL rule
// of PostgreSQLConfig.Parameters (a test compares them).
var ManagedParameters = []string{"listen_addresses", "port", "unix_socket_directories", "unix_socket_group", "unix_socket_permissions", "wal_level", "hot_standby", "max_wal_senders", "max_replication_slots", "wal_keep_size", "max_slot_wal_keep_size", "wal_log_hints", "wal_receiver_timeout", "wal_sender_timeout", "primary_conninfo", "primary_slot_name", "synchronous_standby_names", "restore_command", "archive_cleanup_command", "recovery_end_command", "recovery_target", "recovery_target_lsn", "recovery_target_name", "recovery_target_time", "recovery_target_xid", "recovery_target_timeline", "recovery_target_action", "recovery_target_inclusive", "promote_trigger_file", "ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file", "ssl_crl_file", "ssl_crl_dir", "ssl_min_protocol_version", "ssl_passphrase_command", "password_encryption", "hba_file", "ident_file", "config_file", "data_directory", "external_pid_file", "log_parameter_max_length", "log_parameter_max_length_on_error", "shared_preload_libraries", "archive_mode", "archive_command", "archive_library", "archive_timeout", "include", "include_dir", "include_if_exists"}

// ParameterValue is the value of a PostgreSQL setting: one line.
// +kubebuilder:validation:MaxLength=1024
// +kubebuilder:validation:Pattern=`^[^\n\r]*$`
type ParameterValue string

// PostgreSQLConfig is the server configuration of every instance.
type PostgreSQLConfig struct {
	// Parameters are postgresql.conf settings, name to value, e.g.
	// {"work_mem": "64MB", "max_connections": "200"}; names are lowercase
	// (extension settings have a dot: pg_stat_statements.max). The settings the
	// operator manages are refused (listen_addresses, port, wal_level, the
	// replication, recovery, TLS and authentication-file settings, ...).
	// +kubebuilder:validation:MaxProperties=200
	// +kubebuilder:validation:XValidation:rule="self.all(k, k.matches('^[a-z][a-z0-9_]*([.][a-z][a-z0-9_]*)?$'))",message="parameter names are lowercase PostgreSQL setting names, e.g. work_mem or pg_stat_statements.max"
	// +kubebuilder:validation:XValidation:rule="self.all(k, !(k in ['listen_addresses','port','unix_socket_directories','unix_socket_group','unix_socket_permissions','wal_level','hot_standby','max_wal_senders','max_replication_slots','wal_keep_size','max_slot_wal_keep_size','wal_log_hints','wal_receiver_timeout','wal_sender_timeout','primary_conninfo','primary_slot_name','synchronous_standby_names','restore_command','archive_cleanup_command','recovery_end_command','recovery_target','recovery_target_lsn','recovery_target_name','recovery_target_time','recovery_target_xid','recovery_target_timeline','recovery_target_action','recovery_target_inclusive','promote_trigger_file','ssl','ssl_cert_file','ssl_key_file','ssl_ca_file','ssl_crl_file','ssl_crl_dir','ssl_min_protocol_version','ssl_passphrase_command','password_encryption','hba_file','ident_file','config_file','data_directory','external_pid_file','log_parameter_max_length','log_parameter_max_length_on_error','shared_preload_libraries','archive_mode','archive_command','archive_library','archive_timeout','include','include_dir','include_if_exists']))",message="a parameter is managed by the operator and cannot be set: listen_addresses, port, unix_socket_*, wal_level, hot_standby, max_wal_senders, max_replication_slots, wal_keep_size, max_slot_wal_keep_size, wal_log_hints, wal_receiver_timeout, wal_sender_timeout, the replication and recovery settings, ssl and its files, password_encryption, hba_file, ident_file, config_file, data_directory, external_pid_file, log_parameter_max_length(_on_error), shared_preload_libraries (use sharedPreloadLibraries), archive_*, include*"
	// +optional
	Parameters map[string]ParameterValue `json:"parameters,omitempty"`
	// PgHBA are extra pg_hba.conf lines, e.g. "hostssl mydb app 10.0.0.0/8
	// scram-sha-256" or "host all all 192.0.2.0/24 reject". They are matched after
	// the operator's own rules (which reserve the superuser, replication and
	// monitoring roles) and before its final rule (any user, password over TLS).
	// A change is applied by a reload.
	// +kubebuilder:validation:MaxItems=100
	// +kubebuilder:validation:items:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="self.all(l, l.matches('^(local|host|hostssl|hostnossl|hostgssenc|hostnogssenc)\\\\s+\\\\S.*$'))",message="each pg_hba line starts with local, host, hostssl, hostnossl, hostgssenc or hostnogssenc and is one line"
	// +kubebuilder:validation:XValidation:rule="self.all(l, !l.matches('(^|[\\\\s,])(postgres|streaming_replica|postgres_operator_monitor)([\\\\s,]|$)'))",message="pg_hba lines may not name postgres, streaming_replica or postgres_operator_monitor (the roles the operator reserves, and the postgres database)"
	// +optional
	PgHBA []string `json:"pgHBA,omitempty"`
	// SharedPreloadLibraries are loaded at server start, e.g.
	// ["pg_stat_statements"]: the image must have them. A change restarts the
	// instances one at a time (standbys first); an instance that cannot start
	// with them stops the rollout before it reaches the primary.
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`
	// +listType=set
	// +optional
	SharedPreloadLibraries []string `json:"sharedPreloadLibraries,omitempty"`
}

// ConfigurationStatus is how far spec.postgresql has reached the instances.
type ConfigurationStatus struct {
	// Hash identifies the spec.postgresql the instances should run.
	Hash string `json:"hash,omitempty"`
	// Applied is how many instances run it, e.g. "2/3".
	Applied string `json:"applied,omitempty"`
	// PendingRestart are the settings that take effect only after a restart
	// (the instances restart one at a time for them).
	// +optional
	PendingRestart []string `json:"pendingRestart,omitempty"`
	// RestartedFor is the Hash the instances were last restarted for (the pod
	// annotation database.example.com/config-restart).
	// +optional
	RestartedFor string `json:"restartedFor,omitempty"`
}

// DatabaseStatus defines the observed state of a Database.
type DatabaseStatus struct {
	// Phase summarises the state: Pending, Provisioning, Deploying, Verifying, Ready
	// or Failed.
	// +optional
	Phase Phase `json:"phase,omitempty"`

	// Ready is true when the phase is Ready.
	// +optional
	Ready bool `json:"ready"`

	// Endpoint is the address of the read-write Service,
	// <name>.<namespace>.svc.cluster.local:5432.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`

	// ReadOnlyEndpoint is the address of the Service that selects the standbys.
	// +optional
	ReadOnlyEndpoint string `json:"readOnlyEndpoint,omitempty"`

	// SecretName is the Secret holding the application credentials (keys username,
	// password, database, host, port, uri).
	// +optional
	SecretName string `json:"secretName,omitempty"`

	// Replicas is the number of instance pods that exist.
	// +optional
	Replicas int32 `json:"replicas"`

	// ReadyReplicas is the number of instance pods that are ready.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas"`

	// Selector is the label selector of the instance pods (for the scale
	// subresource).
	// +optional
	Selector string `json:"selector,omitempty"`

	// CurrentPrimary is the pod that reports itself as the primary and holds the
	// primary Lease.
	// +optional
	CurrentPrimary string `json:"currentPrimary,omitempty"`

	// SynchronousStandbys are the standbys the current primary counts toward
	// its synchronous quorum now (pg_stat_replication's sync_state sync or
	// quorum). With fewer than spec.synchronousReplicas, commits wait.
	// +optional
	SynchronousStandbys []string `json:"synchronousStandbys,omitempty"`

	// TargetPrimary is the pod the operator wants as primary; the agents act on
	// it (through the Lease's annotation). Empty while a failover chooses a
	// candidate. The operator changes it only with optimistic concurrency.
	// +optional
	TargetPrimary string `json:"targetPrimary,omitempty"`

	// Timeline is the primary's PostgreSQL timeline; each promotion starts a new
	// one.
	// +optional
	Timeline int64 `json:"timeline,omitempty"`

	// PrimaryChange is the failover or switchover in progress.
	// +optional
	PrimaryChange *PrimaryChange `json:"primaryChange,omitempty"`

	// LastPrimaryChange is the outcome of the last failover or switchover.
	// +optional
	LastPrimaryChange *PrimaryChange `json:"lastPrimaryChange,omitempty"`

	// Image is the image the StatefulSet currently runs.
	// +optional
	Image string `json:"image,omitempty"`

	// PostgresVersion is the server version the primary reports, e.g. "17.6".
	// +optional
	PostgresVersion string `json:"postgresVersion,omitempty"`

	// SystemIdentifier is the PostgreSQL system identifier (pg_control_system()) of
	// the cluster this Database initialised or adopted. Once it is recorded, no
	// instance ever runs initdb again and every instance's data directory is checked
	// against it before PostgreSQL starts.
	// +optional
	SystemIdentifier string `json:"systemIdentifier,omitempty"`

	// DataVersion is the PostgreSQL major version of the data directory (PG_VERSION)
	// recorded with the system identifier (and by a major upgrade).
	// +optional
	DataVersion int32 `json:"dataVersion,omitempty"`

	// Upgrade is the last or running major version upgrade.
	// +optional
	Upgrade *UpgradeStatus `json:"upgrade,omitempty"`

	// Configuration is how far spec.postgresql has reached the instances.
	// +optional
	Configuration *ConfigurationStatus `json:"configuration,omitempty"`

	// WALArchive is the primary's continuous archiving (spec.walArchive).
	// +optional
	WALArchive *WALArchiveStatus `json:"walArchive,omitempty"`

	// Recovery is the outcome of spec.bootstrap.pointInTime.
	// +optional
	Recovery *RecoveryStatus `json:"recovery,omitempty"`

	// InPlaceRecovery is the in-place point-in-time Restore (or undo) the
	// primary runs or last ran, as it reports it.
	// +optional
	InPlaceRecovery *InPlaceRecoveryStatus `json:"inPlaceRecovery,omitempty"`

	// Instances is "ready/total" (readyReplicas/spec.replicas), for kubectl get.
	// +optional
	Instances string `json:"instances,omitempty"`

	// ObservedGeneration is the generation of the spec this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready, Reconciling and Stalled (kstatus), and the facts behind them:
	// Initialized, PrimaryAvailable, ReplicasHealthy and StorageResized.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Condition types.
const (
	// ConditionReady is True when the Database is in phase Ready.
	ConditionReady = "Ready"
	// ConditionReconciling is True while the operator works towards the spec.
	ConditionReconciling = "Reconciling"
	// ConditionStalled is True when the operator cannot make progress without a change
	// by the user.
	ConditionStalled = "Stalled"
	// ConditionInitialized is True once the cluster's system identifier is recorded:
	// from then on the Database never bootstraps an empty cluster again.
	ConditionInitialized = "Initialized"
	// ConditionPrimaryAvailable is True when exactly one primary accepts writes and
	// the read-write Service routes to it. Backups and Restores wait for it, not for
	// Ready.
	ConditionPrimaryAvailable = "PrimaryAvailable"
	// ConditionReplicasHealthy is True when every standby streams from the primary
	// within maxReplicationLag (and trivially when there are none).
	ConditionReplicasHealthy = "ReplicasHealthy"
	// ConditionStorageResized is True when every volume has the size of
	// spec.storage.size; False with a reason while it grows or when it cannot.
	ConditionStorageResized = "StorageResized"
	// ConditionRestoring is True while a Restore of this Database runs: it is
	// built in a separate database on the primary and swapped in at the end (the
	// application database's sessions are terminated then); backups wait.
	ConditionRestoring = "Restoring"
	// ConditionUpgrading is True while a major version upgrade runs (reason:
	// its phase); False with the outcome of the last one.
	ConditionUpgrading = "Upgrading"
	// ConditionCollationIndexesStale is True after an upgrade that changed the
	// C library or ICU with spec.upgrade.rebuildCollationIndexes false: the
	// listed indexes must be rebuilt by hand.
	ConditionCollationIndexesStale = "CollationIndexesStale"
	// ConditionConfigurationApplied is True when every instance runs the
	// current spec.postgresql (by a reload, or after a rolling restart).
	ConditionConfigurationApplied = "ConfigurationApplied"
	// ConditionContinuousArchiving is True while the primary archives its
	// WAL (spec.walArchive), False with the store's error when archiving
	// fails; absent without spec.walArchive.
	ConditionContinuousArchiving = "ContinuousArchiving"
	// ConditionRecoverable is True when the WAL archive holds a base backup
	// and every WAL segment after it: status.walArchive's window is then the
	// span a point-in-time recovery can reach.
	ConditionRecoverable = "Recoverable"
	// ConditionRecovered is about spec.bootstrap.pointInTime: True once the
	// cluster was recovered and promoted at the target, False while it is
	// (RecoveryInProgress) or when it cannot be (TargetNotRecoverable).
	ConditionRecovered = "Recovered"
)

// RecoveryStatus is what a point-in-time recovery reached.
type RecoveryStatus struct {
	// BaseBackup is the base backup restored.
	BaseBackup string `json:"baseBackup,omitempty"`
	// Target is the target, as PostgreSQL was given it.
	Target string `json:"target,omitempty"`
	// ReachedLSN is where the replay ended; ReachedTime the commit time of
	// the last transaction replayed.
	// +optional
	ReachedLSN string `json:"reachedLSN,omitempty"`
	// +optional
	ReachedTime *metav1.Time `json:"reachedTime,omitempty"`
	// Timeline is the new timeline the cluster was promoted on.
	// +optional
	Timeline int64 `json:"timeline,omitempty"`
	// Error says why the recovery cannot be done.
	// +optional
	Error string `json:"error,omitempty"`
}

// InPlaceRecoveryStatus is an in-place point-in-time recovery's progress or
// outcome on the primary.
type InPlaceRecoveryStatus struct {
	// ID is the Restore's UID.
	ID string `json:"id"`
	// Pod is the primary that runs it.
	Pod string `json:"pod"`
	// Phase is InProgress, Completed or Failed.
	Phase RestorePhase `json:"phase"`
	// Message says what it does now.
	// +optional
	Message string `json:"message,omitempty"`

	RecoveryStatus `json:",inline"`

	// PreviousData is the data directory it replaced, kept on Pod's volume
	// until PreviousDataDropAfter.
	// +optional
	PreviousData string `json:"previousData,omitempty"`
	// +optional
	PreviousDataDropAfter *metav1.Time `json:"previousDataDropAfter,omitempty"`
}

// Reasons of ConditionRecovered.
const (
	ReasonRecovered            = "Recovered"
	ReasonRecoveryInProgress   = "RecoveryInProgress"
	ReasonTargetNotRecoverable = "TargetNotRecoverable"
	// ReasonRecoverySourceNotFound: the databaseRef of the source names no
	// Database with a WAL archive and a system identifier.
	ReasonRecoverySourceNotFound = "RecoverySourceNotFound"
)

// Reasons of ConditionRecoverable.
const (
	// ReasonRecoverable: a window exists.
	ReasonRecoverable = "Recoverable"
	// ReasonNoBaseBackup: the archive holds no verified base backup (take a
	// Physical Backup).
	ReasonNoBaseBackup = "NoBaseBackup"
	// ReasonArchiveGap: every base backup is followed by a gap in the WAL.
	ReasonArchiveGap = "ArchiveGap"
	// ReasonRecoverableUnknown: the primary has not surveyed the archive yet.
	ReasonRecoverableUnknown = "RecoverableUnknown"
)

// Reasons of ConditionContinuousArchiving.
const (
	// ReasonArchiving: the last WAL file was archived, none failed since.
	ReasonArchiving = "Archiving"
	// ReasonArchiveFailing: archiving the last WAL file failed (the message
	// has the store's error); PostgreSQL keeps the WAL and retries.
	ReasonArchiveFailing = "ArchiveFailing"
	// ReasonArchiveStarting: the archive is configured and nothing was
	// archived yet.
	ReasonArchiveStarting = "ArchiveStarting"
	// ReasonArchiveUnknown: the primary's agent did not report archiving.
	ReasonArchiveUnknown = "ArchiveUnknown"
	// ReasonNoArchiveLocation: spec.walArchive names no location and the
	// operator has no default one, or its S3 settings are missing.
	ReasonNoArchiveLocation = "NoArchiveLocation"
	// ReasonArchiveSecretNotFound: a Secret the archive needs (S3
	// credentials, encryption key) is missing or lacks its key.
	ReasonArchiveSecretNotFound = "ArchiveSecretNotFound"
	// ReasonArchiveIsRecoverySource: a Database recovered from an archive
	// (spec.bootstrap.pointInTime) names that same archive in its
	// spec.walArchive: it keeps the source's system identifier, so its
	// timelines would mix with the source's. Nothing is archived until the
	// location changes.
	ReasonArchiveIsRecoverySource = "ArchiveIsRecoverySource"
)

// WALArchiveStatus is the primary's continuous archiving.
type WALArchiveStatus struct {
	// Location is the archive's location (s3://bucket/prefix; its files are
	// under wal/).
	Location string `json:"location,omitempty"`
	// LastArchivedWAL is the last WAL file archived, at LastArchivedTime.
	// +optional
	LastArchivedWAL string `json:"lastArchivedWAL,omitempty"`
	// +optional
	LastArchivedTime *metav1.Time `json:"lastArchivedTime,omitempty"`
	// LastFailedWAL is the last WAL file whose archiving failed, at
	// LastFailedTime.
	// +optional
	LastFailedWAL string `json:"lastFailedWAL,omitempty"`
	// +optional
	LastFailedTime *metav1.Time `json:"lastFailedTime,omitempty"`
	// PendingFiles are the finished WAL files not archived yet (each up to
	// the WAL segment size, 16 MiB by default); PendingBytes their size.
	PendingFiles int32 `json:"pendingFiles"`
	// +optional
	PendingBytes int64 `json:"pendingBytes,omitempty"`
	// FirstRecoverablePoint and LastRecoverablePoint bound the times a
	// point-in-time recovery from this archive can reach: from the end of the
	// oldest verified base backup (a Physical Backup) with no gap in the WAL
	// after it (rounded up to the second), to the commit time of the last
	// commit archived (read from the archived WAL; rounded down). Unset
	// while there is no such base backup (condition Recoverable says why).
	// +optional
	FirstRecoverablePoint *metav1.Time `json:"firstRecoverablePoint,omitempty"`
	// +optional
	LastRecoverablePoint *metav1.Time `json:"lastRecoverablePoint,omitempty"`
	// BaseBackups is how many verified base backups the archive holds for
	// this cluster; UsableBaseBackups those with no gap in the WAL after them.
	// +optional
	BaseBackups int32 `json:"baseBackups,omitempty"`
	// +optional
	UsableBaseBackups int32 `json:"usableBaseBackups,omitempty"`
	// Gaps name the runs of WAL segments missing from the archive: no
	// recovery replays across one.
	// +optional
	Gaps []string `json:"gaps,omitempty"`
	// SurveyTime is when the primary last listed the archive (every minute);
	// SurveyError why that listing failed (the figures are the previous ones).
	// +optional
	SurveyTime *metav1.Time `json:"surveyTime,omitempty"`
	// +optional
	SurveyError string `json:"surveyError,omitempty"`
}

// AnnotationRecoverPrimaryFrom, set on a Database to the name of one of its standby
// pods, asks the operator to rebuild a primary whose data directory is missing by
// cloning that standby (see the README's recovery procedure). It is ignored unless
// the primary reports its data missing.
const AnnotationRecoverPrimaryFrom = "database.example.com/recover-primary-from"

// AnnotationSwitchoverTo, set on a Database to the name of one of its standby pods
// (or "auto" for the most advanced healthy standby), asks for a switchover: the
// primary checkpoints, stops, releases its Lease and reports its final WAL
// position, and the target is promoted once it has received it. The annotation is
// removed when the switchover completed or was refused; the outcome is in
// status.lastPrimaryChange and an event.
const AnnotationSwitchoverTo = "database.example.com/switchover-to"

// AnnotationForceFailoverTo, set on a Database whose failover is Blocked to
// the name of one of its standby pods, promotes that standby although it lacks
// WAL the old primary acknowledged: the loss is accepted explicitly and an
// event records the bytes given up. The operator removes it once used.
const AnnotationForceFailoverTo = "database.example.com/force-failover-to"

// SwitchoverAuto as the value of AnnotationSwitchoverTo picks the best standby.
const SwitchoverAuto = "auto"

// Condition reasons.
const (
	ReasonCreating                = "Creating"
	ReasonInstancesStarting       = "InstancesStarting"
	ReasonScaling                 = "Scaling"
	ReasonRollingUpdate           = "RollingUpdate"
	ReasonVerifying               = "Verifying"
	ReasonPrimaryUnknown          = "PrimaryUnknown"
	ReasonPrimaryNotWritable      = "PrimaryNotWritable"
	ReasonServiceNotRouting       = "ServiceNotRouting"
	ReasonInstanceUnreachable     = "InstanceUnreachable"
	ReasonReplicaNotStreaming     = "ReplicaNotStreaming"
	ReasonReplicationLagHigh      = "ReplicationLagHigh"
	ReasonChecksPassed            = "ChecksPassed"
	ReasonMajorVersionUnsupported = "MajorVersionChangeUnsupported"
	// Major upgrade reasons (condition Upgrading; Stalled for the refusals
	// and failures, while the old version keeps serving).
	ReasonNoUpgrade              = "NoUpgrade"
	ReasonUpgradeInProgress      = "UpgradeInProgress"
	ReasonDowngradeRefused       = "DowngradeRefused"
	ReasonUpgradePreflightFailed = "UpgradePreflightFailed"
	ReasonUpgradeBackupFailed    = "UpgradeBackupFailed"
	ReasonUpgradeSucceeded       = "UpgradeSucceeded"
	ReasonUpgradeRolledBack      = "UpgradeRolledBack"
	ReasonUpgradeFailed          = "UpgradeFailed"
	ReasonIndexesStale           = "IndexesStale"
	ReasonIndexesCurrent         = "IndexesCurrent"
	ReasonReconcileError         = "ReconcileError"
	ReasonSucceeded              = "Succeeded"
	// ReasonRestoreRunning (Restoring True) and ReasonNoRestore (False).
	ReasonRestoreRunning = "RestoreRunning"
	ReasonNoRestore      = "NoRestore"
	// ReasonDegraded: Ready stays True while a failing check is within its grace
	// period.
	ReasonDegraded = "Degraded"

	// Identity and data safety.
	ReasonBootstrapped         = "Bootstrapped"
	ReasonAdoptedExistingData  = "AdoptedExistingData"
	ReasonNotInitialized       = "NotInitialized"
	ReasonPrimaryDataMissing   = "PrimaryDataMissing"
	ReasonPrimaryDataForeign   = "PrimaryDataForeign"
	ReasonRecoveringPrimary    = "RecoveringPrimary"
	ReasonDataVersionMismatch  = "DataVersionMismatch"
	ReasonStandbyRecloning     = "StandbyRecloning"
	ReasonRetainedDataConflict = "RetainedDataConflict"

	// Children.
	ReasonChildConflict = "ChildConflict"

	// Failover and switchover.
	ReasonFailingOver        = "FailingOver"
	ReasonSwitchingOver      = "SwitchingOver"
	ReasonFailoverCompleted  = "FailoverCompleted"
	ReasonSwitchoverComplete = "SwitchoverCompleted"
	ReasonSwitchoverRefused  = "SwitchoverRefused"
	ReasonPrimaryFailed      = "PrimaryFailed"
	ReasonNoFailoverTarget   = "NoFailoverCandidate"
	// ReasonFailoverBlocked: no standby has the old primary's acknowledged
	// writes; the Database waits for the old primary (or a forced failover).
	ReasonFailoverBlocked = "FailoverBlocked"
	// ReasonForcedFailover: a standby was promoted by
	// database.example.com/force-failover-to, giving up WAL.
	ReasonForcedFailover     = "ForcedFailover"
	ReasonPrimaryChangeAbort = "PrimaryChangeAborted"
	ReasonRollingUpdateStall = "RollingUpdateStalled"

	// Availability facts.
	ReasonPrimaryAvailable = "PrimaryAvailable"
	ReasonNoStandbys       = "NoStandbys"
	ReasonStandbysHealthy  = "StandbysStreaming"

	// Storage.
	ReasonStorageResized        = "Resized"
	ReasonStorageResizing       = "Resizing"
	ReasonExpansionNotSupported = "ExpansionNotSupported"
	ReasonVolumeNotBound        = "VolumeNotBound"
	ReasonExpansionFailed       = "ExpansionFailed"
)

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName={db,pgdb},categories={postgres}
// +kubebuilder:printcolumn:name="Phase",type="string",JSONPath=".status.phase"
// +kubebuilder:printcolumn:name="Ready",type="string",JSONPath=".status.instances",description="ready/total instances"
// +kubebuilder:printcolumn:name="Version",type="string",JSONPath=".status.postgresVersion",priority=1
// +kubebuilder:printcolumn:name="Primary",type="string",JSONPath=".status.currentPrimary",priority=1
// +kubebuilder:printcolumn:name="Timeline",type="integer",JSONPath=".status.timeline",priority=1
// +kubebuilder:printcolumn:name="Endpoint",type="string",JSONPath=".status.endpoint"
// +kubebuilder:printcolumn:name="Age",type="date",JSONPath=".metadata.creationTimestamp"
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 52",message="the Database name must be at most 52 characters, so that its StatefulSet's pod names and labels fit"
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="the Database name must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter and ending with a letter or digit (no dots)"
// +kubebuilder:validation:XValidation:rule="!self.metadata.name.endsWith('-ro') && !self.metadata.name.endsWith('-hl')",message="the Database name must not end in -ro or -hl: those names belong to the Services of another Database"

// Database is a PostgreSQL database: a primary, optional streaming standbys, their
// Services and credentials.
type Database struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   DatabaseSpec   `json:"spec"`
	Status DatabaseStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// DatabaseList contains a list of Database.
type DatabaseList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Database `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Database{}, &DatabaseList{})
}
