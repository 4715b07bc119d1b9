// The instance subcommand: its flags and the agent's configuration.

package instance

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"regexp"
	"syscall"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/logging"
	"k8s.io/client-go/rest"
)

// Config is the agent's configuration. Secrets are never part of it: they are read
// from files in CredentialsDir and InternalDir.
type Config struct {
	// AppUser and AppDatabase are the application role and its database, from the
	// Database's spec (validated by the CRD and again by the agent). They are never
	// read from the credentials Secret: whoever can edit a Secret must not choose
	// which database the superuser hands over.
	AppUser, AppDatabase string
	PGData               string
	// TLSDir holds the server certificate, key and CA (TLSCertFile, TLSKeyFile,
	// TLSCAFile). With it PostgreSQL listens with TLS, connections to other
	// instances verify their certificate, and the agent serves HTTPS and requires a
	// client certificate for everything but the probes. Empty: no TLS (tests).
	TLSDir string
	// TLSOptional lets network clients connect without TLS (spec.tls.mode
	// Optional); by default pg_hba accepts only TLS connections.
	TLSOptional    bool
	CredentialsDir string
	InternalDir    string
	// WALArchiveDir holds the WAL archive's configuration (the Database's
	// <name>-wal-archive Secret; archiving is off while it has none).
	WALArchiveDir string
	// RecoverySourceDir holds a point-in-time bootstrap's source archive and
	// target (the Database's <name>-recovery-source Secret); none when empty.
	RecoverySourceDir string
	// ArchiveSurveyInterval is how often the primary surveys the archive's
	// base backups and gaps (a minute when 0).
	ArchiveSurveyInterval time.Duration
	// AgentBinary is this program, which archive_command runs (wal-push).
	AgentBinary string
	// ConfigDir holds the Database's spec.postgresql (UserConfigFile, from the
	// <name>-config ConfigMap); none when empty.
	ConfigDir string
	RunDir    string
	// VolumeSocketDir, when set, is a second socket directory on the data volume,
	// listed first (so postmaster.pid names it): the major-upgrade preflight Job,
	// which mounts the same volume, runs pg_upgrade --check against the live
	// server through it. Owner-only, like the socket.
	VolumeSocketDir string
	// SecretDir holds the agent's copies of secrets: the replication passfile and
	// the TLS certificate, key and CA. In a pod it is a private directory on the
	// memory-backed /dev/shm, so no key or password touches a disk; RunDir when
	// empty.
	SecretDir string
	PodName   string
	// PodUID is this pod's UID: with the name, the identity that holds the Lease.
	PodUID string
	// PeerDomain is the headless Service's domain: another instance of the
	// Database is <pod>.<PeerDomain> (standbys stream from the target primary's
	// pod DNS name, never through the read-write Service).
	PeerDomain string
	// PrimaryHost and PrimaryPort: without PeerDomain or PeerAddress, the address
	// of every peer (tests with one primary).
	PrimaryHost string
	// PrimaryPort is the peers' PostgreSQL port; Port when zero.
	PrimaryPort  int
	Port         int
	AgentPort    int
	AgentAddress string
	// MetricsPort and MetricsAddress: where PostgreSQL's metrics are served
	// (plain HTTP, GET /metrics); a negative port turns them off, 0 picks a free
	// one (tests).
	MetricsPort     int
	MetricsAddress  string
	ListenAddresses string
	BinDir          string
	// CloneRetry is the first delay between pg_basebackup attempts (doubling up to
	// 30s); 2s when zero.
	CloneRetry time.Duration
	// CloneStallTimeout: a pg_basebackup that copies nothing for this long is
	// stopped and retried (a slow clone that progresses is never interrupted);
	// 10 minutes when zero.
	CloneStallTimeout time.Duration
	// RestartBackoff is the first delay before PostgreSQL is restarted in place after
	// it exited by itself (doubling up to 30s); 1s when zero.
	RestartBackoff time.Duration
	// SecretPoll is how often the mounted Secret files are checked for changes
	// (password rotation, agent token); 5s when zero.
	SecretPoll time.Duration
	// TokenGrace is how long the previous agent token is still accepted after the
	// token file changed; 10 minutes when zero.
	TokenGrace time.Duration
	// MaxLagBytes: a standby whose replay lags the primary's end of WAL (as last
	// reported to it, or its received WAL if later) by more is not ready (it
	// leaves the read-only Service); 64Mi when zero.
	MaxLagBytes int64
	// MaxSlotWALKeepSize is max_slot_wal_keep_size ("256MB"); unlimited when empty.
	MaxSlotWALKeepSize string
	// PeerAddress returns the host and port of another instance of the Database
	// (the primary a standby follows, the source of a recovery or a rewind);
	// derived from PeerDomain, else PrimaryHost, when nil.
	PeerAddress func(pod string) (string, int)

	// Leases is the primary Lease. When nil, LeaseName (with LeaseNamespace) names
	// it on the API server (in-cluster credentials); when that is empty too, a
	// process-local Lease whose target is ordinal 0 is used (an agent run without
	// Kubernetes).
	Leases                    LeaseStore
	LeaseName, LeaseNamespace string
	// LeaseDuration, RenewDeadline and RetryPeriod: see the Database's
	// spec.failover (defaults 15s, 10s, 2s).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// DemoteTimeout bounds a demoting primary's fast shutdown; then it shuts
	// down immediately (default 30 s).
	DemoteTimeout time.Duration

	Log *slog.Logger
}

// Run parses the instance subcommand's flags and runs the agent until ctx is
// cancelled (SIGTERM).
func Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("instance", flag.ContinueOnError)
	cfg := Config{}
	fs.StringVar(&cfg.AppUser, "app-user", "", "application role (the Database's spec.username)")
	fs.StringVar(&cfg.AppDatabase, "app-database", "", "application database (the Database's spec.databaseName)")
	fs.StringVar(&cfg.TLSDir, "tls-dir", "", "directory of the server certificate, key and CA (no TLS when empty)")
	fs.BoolVar(&cfg.TLSOptional, "tls-optional", false, "accept network connections without TLS")
	fs.StringVar(&cfg.PGData, "pgdata", agentapi.DefaultPGData, "PostgreSQL data directory")
	fs.StringVar(&cfg.CredentialsDir, "credentials-dir", agentapi.DefaultCredentialsDir, "directory of the application credentials Secret")
	fs.StringVar(&cfg.InternalDir, "internal-dir", agentapi.DefaultInternalDir, "directory of the internal Secret (replication password, agent token)")
	fs.StringVar(&cfg.ConfigDir, "config-dir", "", "directory of the Database's PostgreSQL configuration (the <name>-config ConfigMap); none when empty")
	fs.StringVar(&cfg.RecoverySourceDir, "recovery-source-dir", "", "directory of a point-in-time bootstrap's source (the <name>-recovery-source Secret); none when empty")
	fs.StringVar(&cfg.WALArchiveDir, "wal-archive-dir", "", "directory of the WAL archive's configuration (the <name>-wal-archive Secret); no archive when empty")
	fs.StringVar(&cfg.RunDir, "run-dir", agentapi.DefaultRunDir, "private directory for the socket")
	fs.StringVar(&cfg.VolumeSocketDir, "volume-socket-dir", "", "a socket directory on the data volume, for the upgrade preflight (none when empty)")
	fs.StringVar(&cfg.SecretDir, "secret-dir", "", "private directory for the passfile and TLS key (memory-backed in a pod); --run-dir when empty")
	fs.StringVar(&cfg.PodName, "pod-name", os.Getenv("POD_NAME"), "name of this pod")
	fs.StringVar(&cfg.PodUID, "pod-uid", os.Getenv("POD_UID"), "UID of this pod (with the name, the Lease holder identity)")
	fs.StringVar(&cfg.PeerDomain, "peer-domain", "", "domain of the other instances' pod DNS names (the headless Service)")
	fs.StringVar(&cfg.PrimaryHost, "primary-host", "", "address of the primary when there is no --peer-domain")
	fs.StringVar(&cfg.LeaseName, "lease-name", "", "name of the Database's primary Lease (required unless --standalone)")
	standalone := fs.Bool("standalone", false, "run without Kubernetes: a process-local Lease that makes ordinal 0 the primary (never in a cluster: nothing fences)")
	fs.StringVar(&cfg.LeaseNamespace, "lease-namespace", os.Getenv("POD_NAMESPACE"), "namespace of the primary Lease")
	fs.DurationVar(&cfg.LeaseDuration, "lease-duration", 15*time.Second, "lease duration")
	fs.DurationVar(&cfg.RenewDeadline, "renew-deadline", 10*time.Second, "renew deadline: the primary fences itself after it")
	fs.DurationVar(&cfg.RetryPeriod, "retry-period", 2*time.Second, "lease retry period")
	fs.IntVar(&cfg.Port, "port", agentapi.PostgresPort, "PostgreSQL port")
	fs.IntVar(&cfg.PrimaryPort, "primary-port", 0, "PostgreSQL port of the primary (default: --port)")
	fs.IntVar(&cfg.AgentPort, "agent-port", agentapi.AgentPort, "agent HTTP port")
	fs.StringVar(&cfg.AgentAddress, "agent-address", "", "agent HTTP listen address (all interfaces when empty)")
	fs.IntVar(&cfg.MetricsPort, "metrics-port", agentapi.MetricsPort, "port of the PostgreSQL metrics (Prometheus format); -1 turns them off")
	fs.StringVar(&cfg.MetricsAddress, "metrics-address", "", "metrics listen address (all interfaces when empty)")
	fs.StringVar(&cfg.ListenAddresses, "listen-addresses", "*", "PostgreSQL listen_addresses")
	fs.StringVar(&cfg.BinDir, "bin-dir", "", "directory of the PostgreSQL programs (found automatically when empty)")
	fs.Int64Var(&cfg.MaxLagBytes, "max-lag-bytes", 0, "replay lag above which a standby is not ready (default 64Mi)")
	fs.StringVar(&cfg.MaxSlotWALKeepSize, "max-slot-wal-keep-size", "", "max_slot_wal_keep_size, e.g. 256MB (unlimited when empty)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if self, err := os.Executable(); err == nil {
		cfg.AgentBinary = self
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if err := validateNames(cfg.AppUser, cfg.AppDatabase); err != nil {
		return fmt.Errorf("--app-user/--app-database: %w", err)
	}
	if cfg.MaxSlotWALKeepSize != "" && !walSizePattern.MatchString(cfg.MaxSlotWALKeepSize) {
		return fmt.Errorf("--max-slot-wal-keep-size %q: want a number of MB such as 256MB", cfg.MaxSlotWALKeepSize)
	}
	if cfg.LeaseName == "" && !*standalone {
		// Never initdb, start writable or promote without the Lease: an agent
		// without one would make its ordinal 0 primary whatever the others do.
		return fmt.Errorf("--lease-name is required (or --standalone, for an agent outside Kubernetes with a process-local Lease)")
	}
	if cfg.LeaseName != "" && *standalone {
		return fmt.Errorf("--standalone and --lease-name exclude each other")
	}
	cfg.Log = logging.New(os.Stderr, slog.LevelInfo)
	if cfg.LeaseName != "" {
		rc, err := rest.InClusterConfig()
		if err != nil {
			return fmt.Errorf("API server credentials for the Lease: %w", err)
		}
		if cfg.Leases, err = NewKubeLeaseStore(rc, cfg.LeaseNamespace, cfg.LeaseName); err != nil {
			return err
		}
	}
	// SIGTERM (pod deletion) and SIGINT become a fast shutdown of PostgreSQL.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return NewAgent(cfg).Run(ctx)
}

var walSizePattern = regexp.MustCompile(`^[0-9]{1,9}MB$`)
