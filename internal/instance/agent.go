package instance

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/client-go/rest"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/logging"
	"github.com/example/postgres-operator/internal/postgres"
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

// instruction is a request of the operator that changes what the agent does.
type instruction struct {
	// reclone: a standby clones the primary again (its data directory is replaced
	// once the new copy is complete).
	reclone bool
	// recoverFrom: a primary with missing data is rebuilt from this standby.
	recoverFrom string
}

// Agent runs one PostgreSQL instance.
//
// One goroutine owns each piece of its mutable state: the supervisor (Run) the
// running state (rt, published as immutable snapshots) and the start plan's
// memory (recoverFrom, recloneRequested, restartDelay); the secret watcher the
// agent tokens; PostgreSQL's log watcher walMissingAt; the Lease keeper its
// view of the Lease. The others send events (events, instr) and read snapshots.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	bins postgres.Binaries
	// cred, when set, is the postgres OS user the agent (running as root) runs
	// PostgreSQL programs as.
	cred *syscall.Credential
	// rt is the running state, written by the supervisor goroutine only.
	rt atomic.Pointer[runtimeView]
	// events carries the setup worker's and the watchers' events to the
	// supervisor while PostgreSQL runs.
	events chan runMsg
	// configChanged tells the supervisor that the user configuration changed.
	configChanged chan struct{}
	// gen numbers the lifetimes of PostgreSQL: a setup worker's events carry
	// the one they belong to.
	gen atomic.Int64
	// instr carries the operator's instructions to the main loop.
	instr chan instruction
	// ready is closed when the HTTP server listens.
	ready chan struct{}
	addr  atomic.Value // net.Addr of the HTTP server
	// metricsAddr is the net.Addr of the metrics listener.
	metricsAddr atomic.Value
	// metrics is the metrics collector (nil when metrics are off).
	metrics *metricsCollector
	// configMu serialises the writes of the configuration files.
	configMu sync.Mutex

	// tokens is the agent token and the previous one, still accepted until
	// its deadline: written by the secret watcher only.
	tokens      atomic.Pointer[agentTokens]
	binaryMajor int
	// recoverFrom is the standby a primary with missing data is rebuilt from
	// (supervisor only).
	recoverFrom string
	// restartDelay is the next in-place restart backoff (supervisor only).
	restartDelay time.Duration
	// recloneRequested is set by the operator's re-clone instruction until the
	// clone is installed (supervisor only).
	recloneRequested bool
	// walMissingAt is when PostgreSQL last logged that the WAL it asked its
	// upstream for has already been removed (unix nanoseconds; 0: never),
	// written by the log watcher only.
	walMissingAt atomic.Int64
	// divergedAt is when PostgreSQL last logged that the primary's timeline
	// forked off before this standby's recovery point (unix nanoseconds),
	// written by the log watcher only.
	divergedAt atomic.Int64

	// lease keeps the primary Lease.
	lease *leaseKeeper
	// tlsState is the HTTPS server's current certificate and client CA pool.
	tlsState tlsState
	// probes is the probe loop's last reading of PostgreSQL.
	probes probeCache
	// restoreMu guards currentRestore, the restore running (one at a time).
	restoreMu      sync.Mutex
	currentRestore *restoreSlot
}

// runtimeView is the agent's running state as the supervisor last published
// it. A published view is never modified.
type runtimeView struct {
	State   agentapi.State
	Message string
	// Run is the supervisor's state in the current lifetime of PostgreSQL.
	Run runState
	// Exited: no postgres process runs.
	Exited bool
	// Primary: PostgreSQL runs as the primary (started as one while holding
	// the Lease, or promoted).
	Primary bool
	// SetUp: a primary's roles and database are in place (always set on a
	// running standby): the instance is not ready before.
	SetUp bool
	// Fenced: this primary shut PostgreSQL down because it could not renew
	// the Lease.
	Fenced bool
	// Bootstrapped: this agent created the cluster with initdb.
	Bootstrapped bool
	// Postmaster is the PID of the running postmaster (0 when none).
	Postmaster int64
	// Following is the pod the running standby streams from ("" when none);
	// SyncNames the synchronous_standby_names last written ("" for a standby).
	Following, SyncNames string
	// ConfigHash is the hash of the user configuration last written into the
	// configuration files ("" when refused); ConfigError why it was refused.
	ConfigHash, ConfigError string
	// ClonedAt is when the data directory was last cloned (unix nanoseconds):
	// WAL reported missing before it is no longer missing.
	ClonedAt int64
}

// agentTokens is the agent token, and the previous one with its deadline.
type agentTokens struct {
	cur, prev []byte
	prevUntil time.Time
}

// runMsg is an event sent to the supervisor. reply, when set, receives the
// result of a request (writing the primary's configuration); ev "" reports
// progress (state and message).
type runMsg struct {
	gen     int64
	ev      runEvent
	state   agentapi.State
	message string
	reply   chan error
}

// view is the current running state.
func (a *Agent) view() runtimeView { return *a.rt.Load() }

// publish changes the running state: for the supervisor goroutine only.
func (a *Agent) publish(change func(v *runtimeView)) {
	v := a.view()
	change(&v)
	a.rt.Store(&v)
}

// NewAgent returns an agent for cfg.
func NewAgent(cfg Config) *Agent {
	if cfg.Log == nil {
		cfg.Log = logging.New(os.Stderr, slog.LevelInfo)
	}
	if cfg.PrimaryPort == 0 {
		cfg.PrimaryPort = cfg.Port
	}
	if cfg.CloneRetry == 0 {
		cfg.CloneRetry = 2 * time.Second
	}
	if cfg.CloneStallTimeout == 0 {
		cfg.CloneStallTimeout = 10 * time.Minute
	}
	if cfg.RestartBackoff == 0 {
		cfg.RestartBackoff = time.Second
	}
	if cfg.SecretPoll == 0 {
		cfg.SecretPoll = 5 * time.Second
	}
	if cfg.TokenGrace == 0 {
		cfg.TokenGrace = 10 * time.Minute
	}
	if cfg.MaxLagBytes == 0 {
		cfg.MaxLagBytes = 64 << 20
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = 15 * time.Second
	}
	if cfg.RenewDeadline == 0 {
		cfg.RenewDeadline = 10 * time.Second
	}
	if cfg.RetryPeriod == 0 {
		cfg.RetryPeriod = 2 * time.Second
	}
	if cfg.DemoteTimeout == 0 {
		// With the 20 s checkpoint and the release, within the pods' 60 s
		// termination grace period.
		cfg.DemoteTimeout = 30 * time.Second
	}
	if cfg.PodUID == "" {
		cfg.PodUID = "local"
	}
	if cfg.Leases == nil {
		i := strings.LastIndex(cfg.PodName, "-")
		cfg.Leases = NewMemoryLeaseStore(cfg.PodName[:max(i, 0)]+"-0", 1)
	}
	a := &Agent{cfg: cfg, log: cfg.Log, ready: make(chan struct{}), instr: make(chan instruction, 1), events: make(chan runMsg, 4), configChanged: make(chan struct{}, 1)}
	a.rt.Store(&runtimeView{State: agentapi.StateStarting, Exited: true, Run: runStopped})
	a.restartDelay = cfg.RestartBackoff
	a.lease = newLeaseKeeper(cfg.Leases, agentapi.LeaseHolder(cfg.PodName, cfg.PodUID), cfg.LeaseDuration, cfg.RenewDeadline, cfg.RetryPeriod)
	a.lease.position = a.primaryPosition
	return a
}

// isTarget reports whether the Lease names this instance as the target primary.
func (a *Agent) isTarget() bool {
	v := a.lease.view()
	return v.Known && v.Target == a.cfg.PodName
}

// Addr returns the address of the HTTP server once it listens.
func (a *Agent) Addr() net.Addr {
	<-a.ready
	return a.addr.Load().(net.Addr)
}

// setState publishes what the agent does (supervisor only).
func (a *Agent) setState(s agentapi.State, msg string) {
	v := a.view()
	if v.State == s && v.Message == msg {
		return
	}
	a.publish(func(v *runtimeView) { v.State, v.Message = s, msg })
	a.log.Info("instance state", "state", string(s), "message", msg)
}

func (a *Agent) currentState() (agentapi.State, string) {
	v := a.view()
	return v.State, v.Message
}

// Run decides what to do with the data directory (planStart: initdb only for a
// Database never initialised, clone for an empty standby, refuse when the data is
// missing, foreign or of another major), then supervises PostgreSQL, restarting it
// in place when it exits by itself. It returns nil after a requested shutdown (ctx
// cancelled).
func (a *Agent) Run(ctx context.Context) error {
	if agentapi.Ordinal(a.cfg.PodName) < 0 {
		return fmt.Errorf("pod name %q has no ordinal suffix", a.cfg.PodName)
	}
	if err := validateNames(a.cfg.AppUser, a.cfg.AppDatabase); err != nil {
		return err
	}
	var err error
	if a.bins, err = postgres.FindBinaries(a.cfg.BinDir); err != nil {
		return err
	}
	tok, err := a.readSecret(a.cfg.InternalDir, agentapi.InternalAgentTokenFile)
	if err != nil {
		return fmt.Errorf("reading the agent token: %w", err)
	}
	a.tokens.Store(&agentTokens{cur: []byte(tok)})
	out, err := exec.Command(a.bins.Postgres, "-V").Output()
	if err != nil {
		return fmt.Errorf("postgres -V: %w", err)
	}
	if a.binaryMajor, err = parseBinaryMajor(string(out)); err != nil {
		return err
	}
	if err := a.dropPrivilegesForChildren(); err != nil {
		return err
	}
	if err := a.prepareDirs(); err != nil {
		return err
	}
	if err := a.installTLS(); err != nil {
		return err
	}

	srv, err := a.serve()
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if a.cfg.MetricsPort >= 0 {
		msrv, collector, err := a.serveMetrics()
		if err != nil {
			return err
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = msrv.Shutdown(sctx)
			collector.close()
		}()
	}
	go a.dropExpiredCopies(ctx, time.Minute)
	go a.probeLoop(ctx) // #nosec G118 -- the agent's own context

	if err := a.writePassfile(); err != nil {
		return err
	}
	go a.watchSecrets(ctx)
	leaseCtx, stopLease := context.WithCancel(context.Background())
	defer stopLease()
	go a.lease.run(leaseCtx, func(msg string, args ...any) { a.log.Info(msg, args...) })

	for ctx.Err() == nil {
		v := a.lease.view()
		if !v.Known {
			a.setState(agentapi.StateWaitingForLease, "reading the primary Lease: "+orString(v.LastErr, "no answer yet"))
			a.waitLease(ctx, time.Second)
			continue
		}
		facts := a.facts(v)
		act, msg := planStart(facts)
		a.lease.setWant(facts.Primary)
		if facts.Primary && (act == actionInitdb || act == actionStart || act == actionRecoverPrimary) && !v.Held {
			// Never initdb, start writable or promote without the Lease.
			a.setState(agentapi.StateWaitingForLease, leaseWaitMessage(v))
			a.waitLease(ctx, time.Second)
			continue
		}
		if !facts.Primary && (act == actionClone || act == actionReclone || act == actionStart) && v.Target == "" {
			if act != actionStart || a.wasPrimary() {
				a.setState(agentapi.StateWaitingForLease, "no target primary yet (a failover is choosing one)")
				a.waitLease(ctx, time.Second)
				continue
			}
		}
		switch act {
		case actionInitdb:
			a.setState(agentapi.StateInitializing, msg)
			if err := a.initdb(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			a.publish(func(v *runtimeView) { v.Bootstrapped = true })
		case actionClone, actionReclone:
			if act == actionReclone {
				// The old data directory stays in place until the new copy is
				// complete (clone builds in a staging directory and swaps it in).
				a.log.Warn("re-cloning", "reason", msg)
			}
			a.setState(agentapi.StateCloning, msg)
			host, port := a.peerAddress(v.Target)
			if err := a.clone(ctx, host, port, 0); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			a.recloneRequested = false
			a.publish(func(v *runtimeView) { v.ClonedAt = time.Now().UnixNano() })
			a.drainInstructions()
		case actionRecoverPrimary:
			a.setState(agentapi.StateRecovering, msg)
			host, port := a.peerAddress(facts.RecoverFrom)
			err := a.clone(ctx, host, port, 5)
			a.recoverFrom = ""
			a.drainInstructions()
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				// Back to DataMissing: the operator (or a human) may name another
				// standby.
				a.log.Warn("rebuilding the primary failed", "source", facts.RecoverFrom, "error", err)
				a.setState(agentapi.StateDataMissing, fmt.Sprintf("rebuilding from %s failed (%v); the data directory is still empty", facts.RecoverFrom, err))
				select {
				case <-ctx.Done():
				case <-time.After(5 * time.Second):
				}
			}
		case actionStart:
			if !facts.Primary && a.wasPrimary() {
				// A former primary never starts writable: it rewinds onto the
				// target's timeline (or is re-cloned) and follows it.
				if err := a.rewind(ctx, v.Target); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					a.log.Warn("rewinding the former primary failed; re-cloning it", "error", err)
					a.recloneRequested = true
				}
				continue
			}
			in, err := a.runPostgres(ctx, facts.Primary)
			if err != nil {
				return err
			}
			if in != nil && in.reclone {
				a.log.Warn("re-cloning on the operator's request")
				a.recloneRequested = true
			}
		default:
			st, _ := refusalState(act)
			a.setState(st, msg)
			select {
			case <-ctx.Done():
			case in := <-a.instr:
				if in.recoverFrom != "" && st == agentapi.StateDataMissing {
					a.recoverFrom = in.recoverFrom
				}
			case <-time.After(5 * time.Second):
				// Re-read the facts: the recorded identity may have arrived.
			}
		}
	}
	return nil
}

// waitLease waits for a change of the Lease view, ctx or d.
func (a *Agent) waitLease(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-a.lease.changed:
	case <-time.After(d):
	}
}

func orString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// leaseWaitMessage explains why the target primary does not hold the Lease yet.
func leaseWaitMessage(v leaseView) string {
	switch {
	case v.LastErr != "":
		return "waiting for the primary Lease: " + v.LastErr
	case v.Holder == "":
		return "taking the primary Lease"
	default:
		return fmt.Sprintf("waiting for the primary Lease held by %s: it may be taken in %s unless renewed", v.Holder, v.ExpiresIn.Round(time.Second))
	}
}

// facts reads what planStart needs from the volume, the mounted Secret and the
// Lease.
func (a *Agent) facts(v leaseView) startFacts {
	f := startFacts{Primary: v.Target == a.cfg.PodName, HasData: a.hasData(), BinaryMajor: a.binaryMajor}
	if id, err := os.ReadFile(filepath.Join(a.cfg.InternalDir, agentapi.InternalSystemIDFile)); err == nil {
		f.ExpectedSystemID = strings.TrimSpace(string(id))
	}
	if f.HasData {
		f.DataSystemID, _ = postgres.ReadSystemID(a.cfg.PGData)
		f.DataMajor, _ = postgres.ReadDataMajor(a.cfg.PGData)
	}
	f.RecoverFrom = a.recoverFrom
	f.RecloneRequested = a.recloneRequested
	return f
}

// drainInstructions drops instructions that arrived while the one just carried out
// was under way (a second re-clone request for the same WAL gap, say).
func (a *Agent) drainInstructions() {
	for {
		select {
		case <-a.instr:
		default:
			return
		}
	}
}

// peerAddress is where another instance of the Database listens.
func (a *Agent) peerAddress(pod string) (string, int) {
	if a.cfg.PeerAddress != nil {
		return a.cfg.PeerAddress(pod)
	}
	if a.cfg.PeerDomain != "" {
		return pod + "." + a.cfg.PeerDomain, a.cfg.PrimaryPort
	}
	return a.cfg.PrimaryHost, a.cfg.PrimaryPort
}

func (a *Agent) dropPrivilegesForChildren() error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("running as root and no postgres user to run PostgreSQL as: %w", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	a.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	return nil
}

// chown gives path to the postgres user when the agent runs as root.
func (a *Agent) chown(path string) error {
	if a.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(a.cred.Uid), int(a.cred.Gid)); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return nil
}

func (a *Agent) prepareDirs() error {
	for _, d := range append([]string{filepath.Dir(a.cfg.PGData), a.secretDir()}, a.socketDirs()...) {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
		if err := a.chown(d); err != nil {
			return err
		}
	}
	if err := os.Chmod(a.secretDir(), 0o700); err != nil { // #nosec G302 -- a directory: owner only
		return err
	}
	for _, d := range a.socketDirs() {
		if err := os.Chmod(d, 0o700); err != nil { // #nosec G302 -- a directory: owner only
			return err
		}
	}
	return nil
}

// socketDirs are the directories PostgreSQL creates its socket in: the volume's
// first when there is one (postmaster.pid names the first), then the private one
// the agent connects through.
func (a *Agent) socketDirs() []string {
	if a.cfg.VolumeSocketDir != "" {
		return []string{a.cfg.VolumeSocketDir, a.cfg.RunDir}
	}
	return []string{a.cfg.RunDir}
}

// secretDir is where the agent keeps its copies of secrets.
func (a *Agent) secretDir() string {
	if a.cfg.SecretDir != "" {
		return a.cfg.SecretDir
	}
	return a.cfg.RunDir
}

func (a *Agent) hasData() bool {
	_, err := os.Stat(filepath.Join(a.cfg.PGData, "PG_VERSION"))
	return err == nil
}

// inRecoveryOnDisk is true when the data directory starts in recovery
// (standby.signal): a standby's, or a primary's rebuilt from a standby or
// interrupted while promoting.
func (a *Agent) inRecoveryOnDisk() bool {
	_, err := os.Stat(filepath.Join(a.cfg.PGData, "standby.signal"))
	return err == nil
}

// wasPrimary is true when the data directory was last run as a primary: it may
// hold WAL the new primary never had.
func (a *Agent) wasPrimary() bool { return a.hasData() && !a.inRecoveryOnDisk() }

// command prepares a PostgreSQL program to run as the postgres user (when the
// agent is root) in its own process group. Ending ctx sends SIGTERM to the whole
// group (pg_basebackup forks a WAL streamer), then SIGKILL if it lingers.
func (a *Agent) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: a.cred}
	// The passfile's path, never a password.
	cmd.Env = append(os.Environ(), "PGPASSFILE="+a.passfile(), "PGCONNECT_TIMEOUT=10")
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// stagingDir is where initdb and pg_basebackup build a data directory before it is
// renamed into place, so an interrupted bootstrap never leaves a PGDATA that looks
// complete (PG_VERSION is written early).
func (a *Agent) stagingDir() string {
	return filepath.Join(filepath.Dir(a.cfg.PGData), "."+filepath.Base(a.cfg.PGData)+".staging")
}

// install moves a complete staging directory to PGDATA.
func (a *Agent) install() error {
	if err := os.RemoveAll(a.cfg.PGData); err != nil {
		return fmt.Errorf("clearing a partial data directory: %w", err)
	}
	if err := os.Rename(a.stagingDir(), a.cfg.PGData); err != nil {
		return fmt.Errorf("installing the data directory: %w", err)
	}
	return nil
}

func (a *Agent) passfile() string { return filepath.Join(a.secretDir(), "pgpass") }

// writePassfile writes the replication credential for pg_basebackup and
// primary_conninfo; libpq reads it, so the password is in no argument or variable.
func (a *Agent) writePassfile() error {
	pw, err := a.readSecret(a.cfg.InternalDir, agentapi.InternalReplicationPasswordFile)
	if err != nil {
		return err
	}
	return a.writeFile(a.passfile(), postgres.PgpassLine(agentapi.ReplicationUser, pw), 0o600)
}

func (a *Agent) readSecret(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return "", fmt.Errorf("reading secret file %s: %w", name, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("secret file %s is empty", name)
	}
	return v, nil
}

// writeFile atomically writes content, owned by the postgres user.
func (a *Agent) writeFile(path, content string, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil { // #nosec G703 -- paths under the agent's configured directories
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	if err := a.chown(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("installing %s: %w", path, err)
	}
	return nil
}

// initdb creates a new cluster without a superuser password: the superuser only
// logs in over the private socket (peer).
func (a *Agent) initdb(ctx context.Context) error {
	a.log.Info("initialising a new primary", "pgdata", a.cfg.PGData)
	staging := a.stagingDir()
	if err := os.RemoveAll(staging); err != nil {
		return fmt.Errorf("clearing a partial data directory: %w", err)
	}
	cmd := a.command(ctx, a.bins.Initdb,
		"--pgdata="+staging,
		"--username=postgres",
		"--auth-local=peer",
		"--auth-host=scram-sha-256",
		"--data-checksums",
		"--encoding=UTF8",
		"--no-instructions",
	)
	if err := cmd.Run(); err != nil {
		_ = os.RemoveAll(staging)
		return fmt.Errorf("initdb: %w", err)
	}
	return a.install()
}

// clone copies an instance (the primary, or a standby when a primary is rebuilt)
// with pg_basebackup, retrying with backoff until it succeeds or ctx ends: the
// source may still be starting. An attempt that copies nothing for
// CloneStallTimeout is stopped and retried; one that progresses runs as long as it
// needs.
func (a *Agent) clone(ctx context.Context, host string, port int, maxAttempts int) error {
	delay := a.cfg.CloneRetry
	staging := a.stagingDir()
	for attempt := 1; ; attempt++ {
		if err := os.RemoveAll(staging); err != nil {
			return fmt.Errorf("clearing a partial data directory: %w", err)
		}
		a.log.Info("cloning", "host", host, "port", port, "attempt", attempt)
		actx, cancel := context.WithCancel(ctx)
		stalled := atomic.Bool{}
		go a.watchClone(actx, cancel, staging, &stalled)
		cmd := a.command(actx, a.bins.PgBasebackup,
			"--pgdata="+staging,
			"--host="+host,
			"--port="+strconv.Itoa(port),
			"--username="+agentapi.ReplicationUser,
			"--wal-method=stream",
			"--checkpoint=fast",
			"--no-password",
		)
		// verify-full against the Database's CA (or prefer without TLS).
		cmd.Env = append(cmd.Env, a.sslEnv()...)
		err := cmd.Run()
		cancel()
		if err == nil {
			if err := a.writeFile(filepath.Join(staging, "standby.signal"), "", 0o600); err != nil {
				return err
			}
			return a.install()
		}
		if ctx.Err() != nil {
			_ = os.RemoveAll(staging)
			return ctx.Err()
		}
		if stalled.Load() {
			a.log.Warn("pg_basebackup made no progress; retrying", "for", a.cfg.CloneStallTimeout.String())
		}
		if maxAttempts > 0 && attempt >= maxAttempts {
			_ = os.RemoveAll(staging)
			return fmt.Errorf("pg_basebackup from %s:%d failed %d times: %w", host, port, attempt, err)
		}
		a.log.Warn("pg_basebackup failed; retrying", "error", err, "in", delay.String())
		st, _ := a.currentState()
		a.setState(st, fmt.Sprintf("cloning %s:%d: attempt %d failed (%v); retrying in %s", host, port, attempt, err, delay))
		select {
		case <-ctx.Done():
			_ = os.RemoveAll(staging)
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 30*time.Second)
	}
}

// watchClone cancels a clone attempt whose staging directory stops growing.
func (a *Agent) watchClone(ctx context.Context, cancel context.CancelFunc, dir string, stalled *atomic.Bool) {
	tick := min(a.cfg.CloneStallTimeout/4, 15*time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	last, since := int64(-1), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if size := dirSize(dir); size > last {
			last, since = size, time.Now()
			continue
		}
		if time.Since(since) >= a.cfg.CloneStallTimeout {
			stalled.Store(true)
			cancel()
			return
		}
	}
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// configWritten is what writeConfig wrote, for the supervisor to publish.
type configWritten struct {
	// SyncNames is the synchronous_standby_names written ("" on a standby).
	SyncNames string
	// Hash is the user configuration's hash ("" when refused), Error why it
	// was refused.
	Hash, Error string
}

// writeOwnConfig rewrites the configuration files for the role given and the
// upstream followed now, and publishes what it wrote (supervisor only).
func (a *Agent) writeOwnConfig(primary bool) error {
	w, err := a.writeConfig(primary, a.view().Following)
	a.publish(func(v *runtimeView) {
		v.ConfigError = w.Error
		if err == nil {
			v.SyncNames, v.ConfigHash = w.SyncNames, w.Hash
		}
	})
	return err
}

// writeConfig rewrites the configuration the agent owns, at every start: as
// the primary, or as a standby following the pod given.
func (a *Agent) writeConfig(primary bool, following string) (configWritten, error) {
	a.configMu.Lock()
	defer a.configMu.Unlock()
	var w configWritten
	user, userHash, err := a.readUserConfig()
	if err != nil {
		// A configuration the agent refuses is not applied: the instance
		// keeps (or starts with) the operator's settings alone, and says so.
		w.Error = err.Error()
		user, userHash = agentapi.UserConfig{}, ""
	}
	var quoteErr error
	q := func(v string) string {
		quoted, err := postgres.QuoteConfString(v)
		if err != nil && quoteErr == nil {
			quoteErr = err
		}
		return quoted
	}
	conf := append([]string{
		"# Written by the postgres-operator instance agent at every start; do not edit.",
	}, userConfLines(user, q)...)
	conf = append(conf,
		"listen_addresses = "+q(a.cfg.ListenAddresses),
		"port = "+strconv.Itoa(a.cfg.Port),
		"unix_socket_directories = "+q(strings.Join(a.socketDirs(), ",")),
		"unix_socket_permissions = 0700",
		"wal_level = replica",
		// pg_rewind needs hint bits in WAL when data checksums are off.
		"wal_log_hints = on",
		"hot_standby = on",
		"max_wal_senders = 10",
		"max_replication_slots = 10",
		// Every standby has a replication slot; wal_keep_size only covers a clone
		// made before its slot exists.
		"wal_keep_size = '64MB'",
		// A standby notices a vanished primary within 30s (default 60s).
		"wal_receiver_timeout = '30s'",
		// A primary's fast shutdown waits for its WAL senders to flush every
		// connected standby; one whose standby is cut off blocks until this
		// timeout: 15s (default 60s) keeps a demotion well within its bound,
		// so it completes cleanly and releases the Lease with its final
		// position (rule 1 needs it to judge the standbys).
		"wal_sender_timeout = '15s'",
		"password_encryption = 'scram-sha-256'",
		// Never log connection strings or statements with their parameters.
		"log_parameter_max_length = 0",
		"log_parameter_max_length_on_error = 0",
		"hba_file = "+q(filepath.Join(a.cfg.PGData, "pg_hba.conf")),
		"ident_file = "+q(filepath.Join(a.cfg.PGData, "pg_ident.conf")),
	)
	if a.cfg.MaxSlotWALKeepSize != "" {
		conf = append(conf, "max_slot_wal_keep_size = "+q(a.cfg.MaxSlotWALKeepSize))
	}
	if a.tlsEnabled() {
		conf = append(conf, "ssl = on",
			"ssl_cert_file = "+q(a.serverCertPath()),
			"ssl_key_file = "+q(a.serverKeyPath()),
			"ssl_min_protocol_version = 'TLSv1.2'")
	}
	if primary {
		w.SyncNames = synchronousStandbyNames(a.cfg.PodName, a.lease.view())
		if w.SyncNames != "" {
			conf = append(conf, "synchronous_standby_names = "+q(w.SyncNames))
		}
	}
	if !primary && following != "" {
		host, port := a.peerAddress(following)
		conf = append(conf, "primary_slot_name = "+q(agentapi.SlotName(a.cfg.PodName)))
		// libpq reads the password from the passfile: none is in the configuration.
		conninfo := strings.Join(append([]string{
			"host=" + postgres.ConninfoValue(host),
			"port=" + strconv.Itoa(port),
			"user=" + agentapi.ReplicationUser,
			"passfile=" + postgres.ConninfoValue(a.passfile()),
			"application_name=" + postgres.ConninfoValue(a.cfg.PodName),
			// A restarted primary comes back on a new pod IP: give up on the old one
			// quickly instead of waiting out TCP's connect retries (~2 minutes).
			"connect_timeout=5",
			"keepalives=1",
			"keepalives_idle=10",
			"keepalives_interval=5",
			"keepalives_count=3",
		}, a.sslConninfo()...), " ")
		conf = append(conf, "primary_conninfo = "+q(conninfo))
	}
	if quoteErr != nil {
		return w, quoteErr
	}
	if err := a.writeFile(filepath.Join(a.cfg.PGData, operatorConfFile), strings.Join(conf, "\n")+"\n", 0o600); err != nil {
		return w, err
	}

	mainConf := filepath.Join(a.cfg.PGData, "postgresql.conf")
	b, err := os.ReadFile(mainConf)
	if err != nil {
		return w, fmt.Errorf("reading postgresql.conf: %w", err)
	}
	const include = "include_if_exists = '" + operatorConfFile + "'"
	if !strings.Contains(string(b), include) {
		if err := a.writeFile(mainConf, string(b)+"\n"+include+"\n", 0o600); err != nil {
			return w, err
		}
	}

	// Network connections: TLS only (hostssl; a connection without TLS matches
	// no line and is refused), unless the Database allows plain ones.
	host := "host   "
	if a.tlsEnabled() && !a.cfg.TLSOptional {
		host = "hostssl"
	}
	hbaLines := []string{
		"# Written by the postgres-operator instance agent at every start; do not edit.",
		"# TYPE  DATABASE     USER               ADDRESS  METHOD",
		"local   all          postgres                    peer map=operator",
		"local   postgres     " + agentapi.MonitorUser + "  peer map=operator",
		"local   all          " + agentapi.MonitorUser + "  reject",
		"local   all          all                         scram-sha-256",
		host + " replication  " + agentapi.ReplicationUser + "  all      scram-sha-256",
		// pg_rewind reads the new primary's files through the postgres database.
		host + " postgres     " + agentapi.ReplicationUser + "  all      scram-sha-256",
		"host    all          " + agentapi.ReplicationUser + "  all      reject",
		"host    all          postgres           all      reject",
		"host    all          " + agentapi.MonitorUser + "  all      reject",
	}
	if len(user.PgHBA) > 0 {
		hbaLines = append(append(hbaLines, "# spec.postgresql.pgHBA of the Database"), user.PgHBA...)
	}
	hba := strings.Join(append(hbaLines,
		host+" all          all                all      scram-sha-256",
	), "\n") + "\n"
	if err := a.writeFile(filepath.Join(a.cfg.PGData, "pg_hba.conf"), hba, 0o600); err != nil {
		return w, err
	}
	ident := "# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\noperator  postgres  postgres\noperator  root  postgres\n" +
		"operator  postgres  " + agentapi.MonitorUser + "\noperator  root  " + agentapi.MonitorUser + "\n"
	if err := a.writeFile(filepath.Join(a.cfg.PGData, "pg_ident.conf"), ident, 0o600); err != nil {
		return w, err
	}

	w.Hash = userHash
	if primary {
		// A primary whose data is a standby's keeps its standby.signal until it
		// is promoted.
		return w, nil
	}
	return w, a.writeFile(filepath.Join(a.cfg.PGData, "standby.signal"), "", 0o600)
}

// synchronousStandbyNames is the quorum a primary waits for: ANY n of the other
// instances (standbys report their pod name as application_name), or "" for
// asynchronous replication.
func synchronousStandbyNames(me string, v leaseView) string {
	n := min(v.Synchronous, v.Instances-1)
	if n <= 0 {
		return ""
	}
	i := strings.LastIndex(me, "-")
	if i < 0 {
		return ""
	}
	var names []string
	for o := 0; o < v.Instances; o++ {
		if pod := fmt.Sprintf("%s-%d", me[:i], o); pod != me {
			names = append(names, `"`+pod+`"`)
		}
	}
	return fmt.Sprintf("ANY %d (%s)", n, strings.Join(names, ", "))
}

// operatorConfFile is the file in PGDATA holding the settings the agent owns;
// postgresql.conf includes it last.
const operatorConfFile = "postgresql.operator.conf"
