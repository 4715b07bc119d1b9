package agentapi

import "time"

// Roles an instance reports.
const (
	RolePrimary = "primary"
	RoleReplica = "replica"
)

// Default locations and ports shared by the agent and the operator's pod builder.
const (
	// AgentPort is the TCP port of the agent's HTTP server.
	AgentPort = 8000
	// PostgresPort is the TCP port PostgreSQL listens on.
	PostgresPort = 5432
	// ReplicationUser is the role standbys use to stream from the primary.
	ReplicationUser = "streaming_replica"

	// Files in the credentials directory (the Database's <name>-credentials Secret).
	CredentialsUsernameFile = "username"
	CredentialsPasswordFile = "password"
	CredentialsDatabaseFile = "database"

	// Files in the internal directory (the Database's <name>-internal Secret).
	InternalReplicationPasswordFile = "replication-password"
	InternalAgentTokenFile          = "agent-token"
	// InternalManifestKeyFile is the Database's key that authenticates its
	// backup manifests (HMAC-SHA256); only backup and restore Jobs mount it.
	InternalManifestKeyFile = "manifest-key"

	// Paths inside the pod.
	DefaultPGData         = "/var/lib/postgresql/data/pgdata"
	DefaultCredentialsDir = "/etc/postgres-operator/credentials"
	DefaultInternalDir    = "/etc/postgres-operator/internal"
	DefaultRunDir         = "/controller/run"
	// DefaultVolumeSocketDir is the socket directory on the data volume (see
	// Config.VolumeSocketDir).
	DefaultVolumeSocketDir = "/var/lib/postgresql/data/socket"
	// PodSecretDir is the agent's secret directory in a pod: on the memory-backed
	// /dev/shm volume.
	PodSecretDir = "/dev/shm/postgres-operator"
	// DefaultTLSDir is where instance pods mount the <name>-server-tls Secret.
	DefaultTLSDir = "/etc/postgres-operator/tls"

	// HTTP paths, under PathPrefix in ProtocolVersion (Versioned) and at the
	// root in PreviousProtocolVersion.
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
	PathStartup = "/startupz"
	PathStatus  = "/status"
	// PathSlots (PUT, authenticated) sets the primary's operator-managed replication
	// slots; PathReclone (POST) makes a standby re-clone the primary; PathRecover
	// (POST) rebuilds a primary whose data is missing from a standby.
	PathSlots   = "/slots"
	PathReclone = "/reclone"
	PathRecover = "/recover"

	// InternalSystemIDFile, in the internal Secret, holds the system identifier the
	// operator recorded for the Database once it was initialised.
	InternalSystemIDFile = "system-identifier"
)

// SlotsRequest is the body of PUT /slots.
type SlotsRequest struct {
	Names []string `json:"names"`
}

// RecoverRequest is the body of POST /recover.
type RecoverRequest struct {
	// Source is the standby pod to clone.
	Source string `json:"source"`
}

// Status is what an instance reports on its authenticated status endpoint.
type Status struct {
	// Protocol is the protocol version the agent speaks (ProtocolVersion); an
	// agent of the previous release does not report it (0).
	Protocol int `json:"protocol,omitempty"`
	// Pod is the name of the pod the agent runs in.
	Pod string `json:"pod"`
	// Restoring is the ID of the restore this (primary) instance is applying.
	Restoring string `json:"restoring,omitempty"`
	// Role is RolePrimary or RoleReplica, as PostgreSQL itself reports it
	// (pg_is_in_recovery()).
	Role string `json:"role,omitempty"`
	// Running is true when PostgreSQL accepts connections.
	Running bool `json:"running"`
	// InRecovery is pg_is_in_recovery().
	InRecovery bool `json:"inRecovery"`
	// Writable is true when a primary committed a transaction with a
	// transaction ID during this status request (its commit record written and
	// flushed, and acknowledged by the synchronous standbys if any).
	Writable bool `json:"writable"`
	// WriteError holds why the write check failed (primary only).
	WriteError string `json:"writeError,omitempty"`
	// Timeline is the timeline ID of the instance.
	Timeline int64 `json:"timeline,omitempty"`
	// CurrentLSN is pg_current_wal_lsn() on a primary, the last replayed LSN on a
	// standby.
	CurrentLSN string `json:"currentLSN,omitempty"`
	// ReceiveLSN is pg_last_wal_receive_lsn() (standby only).
	ReceiveLSN string `json:"receiveLSN,omitempty"`
	// ReplayLSN is pg_last_wal_replay_lsn() (standby only).
	ReplayLSN string `json:"replayLSN,omitempty"`
	// ReplayLagBytes is receive minus replay on a standby.
	ReplayLagBytes int64 `json:"replayLagBytes,omitempty"`
	// WALReceiverStatus is pg_stat_wal_receiver.status on a standby ("streaming" when
	// connected to its upstream).
	WALReceiverStatus string `json:"walReceiverStatus,omitempty"`
	// ServerVersion is the server_version setting, e.g. "15.18".
	ServerVersion string `json:"serverVersion,omitempty"`
	// ServerVersionNum is server_version_num, e.g. 150018.
	ServerVersionNum int `json:"serverVersionNum,omitempty"`
	// Replicas is pg_stat_replication as seen by a primary.
	Replicas []ReplicaStatus `json:"replicas,omitempty"`
	// Error is set when the agent could not query PostgreSQL.
	Error string `json:"error,omitempty"`
	// ConfigHash is the hash of the Database's spec.postgresql this instance
	// has written and loaded (its <name>-config ConfigMap's file).
	ConfigHash string `json:"configHash,omitempty"`
	// ConfigError says why the agent refused the configuration file.
	ConfigError string `json:"configError,omitempty"`
	// PendingRestart are the settings changed in the files that take effect
	// only after a restart (pg_settings.pending_restart).
	PendingRestart []string `json:"pendingRestart,omitempty"`
	// ConfigErrors are the settings PostgreSQL refused (pg_file_settings.error),
	// e.g. an invalid value: a restart would not start.
	ConfigErrors []string `json:"configErrors,omitempty"`

	// State is what the agent is doing (Running, Cloning, DataMissing, ...).
	State State `json:"state,omitempty"`
	// Message explains State (why the agent refuses to start, what it clones).
	Message string `json:"message,omitempty"`
	// SystemIdentifier is the system identifier of the data directory.
	SystemIdentifier string `json:"systemIdentifier,omitempty"`
	// DataVersion is the data directory's PG_VERSION; BinaryVersion the major of the
	// image's PostgreSQL.
	DataVersion   int `json:"dataVersion,omitempty"`
	BinaryVersion int `json:"binaryVersion,omitempty"`
	// Bootstrapped is true when this agent created the cluster with initdb (as
	// opposed to finding an existing data directory).
	Bootstrapped bool `json:"bootstrapped,omitempty"`
	// Slots are the operator-managed physical replication slots (primary only).
	Slots []SlotStatus `json:"slots,omitempty"`
	// OldestWALLSN is the first LSN of the oldest WAL segment the primary still has;
	// a standby that needs older WAL can only be re-cloned.
	OldestWALLSN string `json:"oldestWALLSN,omitempty"`
	// WALSegmentSize is wal_segment_size in bytes.
	WALSegmentSize uint64 `json:"walSegmentSize,omitempty"`
	// Ready is the agent's own readiness verdict (what /readyz answers).
	Ready bool `json:"ready"`
	// Target is the target primary the Lease names; HoldsLease is true when this
	// instance holds the Lease (and renews it in time); Following is the pod a
	// standby streams from; Fenced is true after this primary shut PostgreSQL
	// down because it could not renew the Lease; LeaseError is the last error
	// reading or writing the Lease.
	Target     string `json:"target,omitempty"`
	HoldsLease bool   `json:"holdsLease,omitempty"`
	Following  string `json:"following,omitempty"`
	Fenced     bool   `json:"fenced,omitempty"`
	LeaseError string `json:"leaseError,omitempty"`
	// WALMissing: this standby's upstream answered that the WAL it needs has
	// already been removed (seen in PostgreSQL's log within two minutes, and not
	// streaming since): it can only be re-cloned.
	WALMissing bool `json:"walMissing,omitempty"`
	// Diverged: this standby's recovery went past the point where the
	// primary's timeline forked off (PostgreSQL logged "new timeline … forked
	// off … before current recovery point" within two minutes, and it is not
	// streaming since): it holds WAL the primary never had and can only be
	// re-cloned.
	Diverged bool `json:"diverged,omitempty"`
	// Archive is the primary's continuous WAL archiving (nil when no archive
	// is configured, and on standbys).
	Archive *ArchiveStatus `json:"archive,omitempty"`
	// Recovery is a point-in-time bootstrap's progress or outcome.
	Recovery *RecoveryResult `json:"recovery,omitempty"`
}

// ArchiveStatus is a primary's WAL archiving: PostgreSQL's archiver
// statistics (pg_stat_archiver, since the server started), the WAL files
// waiting to be archived, and the archiver's last error.
type ArchiveStatus struct {
	// Location is the archive's location.
	Location         string     `json:"location"`
	ArchivedCount    int64      `json:"archivedCount"`
	LastArchivedWAL  string     `json:"lastArchivedWAL,omitempty"`
	LastArchivedTime *time.Time `json:"lastArchivedTime,omitempty"`
	FailedCount      int64      `json:"failedCount"`
	LastFailedWAL    string     `json:"lastFailedWAL,omitempty"`
	LastFailedTime   *time.Time `json:"lastFailedTime,omitempty"`
	// PendingFiles are the WAL files PostgreSQL has finished and not yet
	// archived (pg_wal/archive_status/*.ready).
	PendingFiles int `json:"pendingFiles"`
	// Error is the archiver's last error, when it failed after its last
	// success (the store's answer; never a credential).
	Error string `json:"error,omitempty"`
	// ConfigError: the mounted archive configuration cannot be read (every
	// push fails until it can).
	ConfigError string `json:"configError,omitempty"`
	// PendingBytes is the size of the pending files.
	PendingBytes int64 `json:"pendingBytes"`
	// LastCommitTime is the commit time of the last commit archived (read
	// from the archived segment by wal-push), in LastCommitWAL.
	LastCommitTime *time.Time `json:"lastCommitTime,omitempty"`
	LastCommitWAL  string     `json:"lastCommitWAL,omitempty"`
	// Window is the agent's last survey of the archive (nil: none yet).
	Window *ArchiveWindow `json:"window,omitempty"`
}

// ArchiveWindow is what a survey of the archive found: the base backups a
// recovery can start from, the gaps in the WAL, and the earliest point a
// recovery can reach.
type ArchiveWindow struct {
	SurveyTime time.Time `json:"surveyTime"`
	// FirstRecoverablePoint is the end of the oldest base backup with no gap
	// in the archived WAL after its start (FirstBaseBackup); nil: none.
	FirstRecoverablePoint *time.Time `json:"firstRecoverablePoint,omitempty"`
	FirstBaseBackup       string     `json:"firstBaseBackup,omitempty"`
	// BaseBackups are the verified base backups in the archive, Usable those
	// with no gap after their start.
	BaseBackups int `json:"baseBackups"`
	Usable      int `json:"usable"`
	// Gaps name the missing segments ("segments X to Y are missing").
	Gaps []string `json:"gaps,omitempty"`
	// Error is why the last survey failed (the previous figures stay).
	Error string `json:"error,omitempty"`
}

// SlotStatus is one row of pg_replication_slots.
type SlotStatus struct {
	Name string `json:"name"`
	// Active is true while a standby streams through the slot.
	Active bool `json:"active"`
	// WALStatus is reserved, extended, unreserved or lost (max_slot_wal_keep_size
	// exceeded: the standby can only be re-cloned).
	WALStatus  string `json:"walStatus,omitempty"`
	RestartLSN string `json:"restartLSN,omitempty"`
}

// ReplicaStatus is one row of pg_stat_replication on the primary.
type ReplicaStatus struct {
	// ApplicationName is the standby's application_name: its pod name.
	ApplicationName string `json:"applicationName"`
	// State is the WAL sender state, "streaming" when healthy.
	State string `json:"state"`
	// SyncState is async, sync, potential or quorum.
	SyncState string `json:"syncState,omitempty"`
	// SentLSN and ReplayLSN are the positions sent to and replayed by the standby.
	SentLSN   string `json:"sentLSN,omitempty"`
	ReplayLSN string `json:"replayLSN,omitempty"`
	// LagBytes is pg_current_wal_lsn() minus replay_lsn.
	LagBytes int64 `json:"lagBytes"`
}

// State is what an agent is doing; it is reported on /status so that the operator
// (and a human reading the Database's conditions) sees why an instance is not
// serving.
type State string

// The agent's states. The start-up decision between them is planStart.
const (
	// StateStarting: the agent has not decided yet (reading the data directory).
	StateStarting State = "Starting"
	// StateInitializing: initdb of a brand-new cluster (only ever on a Database
	// whose system identifier is not recorded).
	StateInitializing State = "Initializing"
	// StateCloning: pg_basebackup from the primary (a new or re-cloned standby).
	StateCloning State = "Cloning"
	// StateRecovering: a primary whose data was missing is rebuilt from a standby.
	StateRecovering State = "RecoveringPrimary"
	// StateRunning: PostgreSQL is supervised (it may be starting up).
	StateRunning State = "Running"
	// StateRestarting: PostgreSQL exited by itself; the agent restarts it in place
	// after a bounded backoff.
	StateRestarting State = "Restarting"
	// StateDataMissing: the primary's volume holds no data directory although the
	// Database was initialised; the agent refuses to create an empty cluster.
	StateDataMissing State = "DataMissing"
	// StateForeignData: the primary's data directory belongs to another cluster
	// (system identifier differs from the recorded one); the agent refuses to start.
	StateForeignData State = "ForeignData"
	// StateVersionMismatch: the data directory's major version differs from the
	// image's PostgreSQL; the agent does not start PostgreSQL (no crash loop).
	StateVersionMismatch State = "VersionMismatch"
	// StateWaitingForLease: the agent cannot read the primary Lease yet, or it is
	// the target primary and waits for the Lease to be released or to expire, or
	// a former primary waits for a new target before it rewinds.
	StateWaitingForLease State = "WaitingForLease"
	// StatePromoting: a standby that became the target holds the Lease and is
	// being promoted.
	StatePromoting State = "Promoting"
	// StateDemoting: a primary that is no longer the target checkpoints, stops
	// and releases the Lease.
	StateDemoting State = "Demoting"
	// StateFenced: the primary could not renew the Lease within the renew
	// deadline and shut PostgreSQL down immediately; it starts again only as the
	// holder of the Lease, or as a standby of the new primary.
	StateFenced State = "Fenced"
	// StateRewinding: a former primary runs pg_rewind onto the new primary's
	// timeline before it starts as a standby.
	StateRewinding State = "Rewinding"
)

// MetricsPort is the port the agent serves PostgreSQL's metrics on, in the
// Prometheus text format (plain HTTP, GET /metrics only: the series carry no
// secret, and a scraper needs no certificate or token).
const MetricsPort = 9187

// WALArchiveDir is where instance pods and physical backup Jobs mount the
// Database's WAL archive configuration, the Secret WALArchiveSecretName
// (walarchive.Config and the credentials it needs).
const WALArchiveDir = "/etc/postgres-operator/wal-archive"

// WALArchiveSecretName is the name of a Database's WAL archive Secret.
func WALArchiveSecretName(database string) string { return database + "-wal-archive" }

// RecoveryResult is a point-in-time recovery's progress or outcome: a
// bootstrap's (ID "") or an in-place one's.
type RecoveryResult struct {
	// ID is an in-place recovery's (InPlaceRecoveryRequest.ID).
	ID string `json:"id,omitempty"`
	// Message says what the recovery is doing (an in-place one, before its
	// data directory is swapped in).
	Message string `json:"message,omitempty"`
	// PreviousData is the data directory an in-place recovery replaced, kept
	// on this instance's volume until KeepUntil.
	PreviousData string     `json:"previousData,omitempty"`
	KeepUntil    *time.Time `json:"keepUntil,omitempty"`
	BaseBackup   string     `json:"baseBackup,omitempty"`
	Target       string     `json:"target,omitempty"`
	// Done: PostgreSQL promoted at the end of the recovery.
	Done        bool       `json:"done,omitempty"`
	ReachedLSN  string     `json:"reachedLSN,omitempty"`
	ReachedTime *time.Time `json:"reachedTime,omitempty"`
	Timeline    int64      `json:"timeline,omitempty"`
	// Error: the archive cannot reach the target (nothing was restored).
	Error string `json:"error,omitempty"`
}

// RecoverySourceDir is where instance pods of a Database bootstrapped by a
// point-in-time recovery mount its source, the Secret
// RecoverySourceSecretName (the archive's configuration and the target).
const RecoverySourceDir = "/etc/postgres-operator/recovery-source"

// RecoverySourceSecretName is the name of a Database's recovery source Secret.
func RecoverySourceSecretName(database string) string { return database + "-recovery-source" }
