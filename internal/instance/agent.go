package instance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/logging"
	"github.com/example/postgres-operator/internal/postgres"
)

// instruction is a request of the operator that changes what the agent does.
type instruction struct {
	// reclone: a standby clones the primary again (its data directory is replaced
	// once the new copy is complete).
	reclone bool
	// recoverFrom: a primary with missing data is rebuilt from this standby.
	recoverFrom string
	// inPlace: the primary stops to swap in what an in-place recovery
	// prepared; reply says whether it will.
	inPlace *inPlacePlan
	reply   chan error
	// exited: PostgreSQL exited by itself (runPostgres's answer).
	exited bool
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
	// survey is the last survey of the WAL archive, written by the survey
	// loop only; surveyKick asks it for a new one (with the segment size).
	survey atomic.Pointer[agentapi.ArchiveWindow]
	// recoveryRefusal is why a point-in-time bootstrap cannot be done
	// (written by the main loop only).
	recoveryRefusal atomic.Pointer[string]
	// loadedRecovery is the recovery the running PostgreSQL was started for
	// (nil: none), written before each start.
	loadedRecovery atomic.Pointer[recoveryState]
	// inPlace is the in-place recovery being prepared, or the last one that
	// failed before its swap (its worker publishes it); inPlaceBusy is held
	// by that worker.
	inPlace     atomic.Pointer[agentapi.RecoveryResult]
	inPlaceBusy atomic.Bool
	// lastFatal is PostgreSQL's last FATAL log line (the log watcher's).
	lastFatal  atomic.Pointer[string]
	surveyKick chan uint64
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
	a := &Agent{cfg: cfg, log: cfg.Log, ready: make(chan struct{}), instr: make(chan instruction, 1), events: make(chan runMsg, 4), configChanged: make(chan struct{}, 1),
		surveyKick: make(chan uint64, 1)}
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
	if err := a.finishSwap(); err != nil {
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
	go a.surveyLoop(ctx)
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
		if facts.Primary && (act == actionInitdb || act == actionRecoverArchive || act == actionStart || act == actionRecoverPrimary) && !v.Held {
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
		case actionRecoverArchive:
			a.setState(agentapi.StateRecovering, msg)
			err := a.recoverFromArchive(ctx, *facts.Recovery)
			var refused *errRefused
			switch {
			case err == nil:
				a.recoveryRefusal.Store(nil)
				a.publish(func(v *runtimeView) { v.Bootstrapped = true })
				continue
			case ctx.Err() != nil:
				return nil
			case errors.As(err, &refused):
				m := refused.msg
				a.recoveryRefusal.Store(&m)
				a.setState(agentapi.StateRecovering, "refusing the point-in-time recovery: "+m)
			default:
				a.log.Warn("point-in-time recovery failed; retrying", "error", err)
				a.setState(agentapi.StateRecovering, "point-in-time recovery failed (retrying in 30s): "+err.Error())
			}
			select {
			case <-ctx.Done():
			case <-time.After(30 * time.Second):
			}
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
				if aside, err := a.setAsideUnfinishedRecovery(); err != nil {
					return err
				} else if aside {
					continue // cloned afresh: the unfinished recovery's data is kept
				}
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
			if in != nil && in.exited {
				// An in-place recovery whose replay PostgreSQL gave up on
				// is rolled back: the Restore fails, nothing changed.
				if _, err := a.rollBackFailedReplay(); err != nil {
					var inc *errSwapIncomplete
					if errors.As(err, &inc) {
						return err
					}
					a.log.Error("rolling back a failed in-place recovery", "error", err)
				}
				continue
			}
			if in != nil && in.inPlace != nil {
				if err := a.swapInPlace(in.inPlace); err != nil {
					var inc *errSwapIncomplete
					if errors.As(err, &inc) {
						return err // the journal finishes it at the next start
					}
					// The data directory is as it was: PostgreSQL starts on it.
					a.log.Error("in-place recovery: the swap failed; starting the data directory as it was", "id", in.inPlace.ID, "error", err)
					e := err.Error()
					a.inPlace.Store(&agentapi.RecoveryResult{ID: in.inPlace.ID, Error: "the swap failed: " + e})
				} else {
					a.inPlace.Store(nil) // the files in PGDATA report it now
				}
				continue
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
	if !f.HasData && f.ExpectedSystemID == "" {
		r, err := a.recoverySource()
		if err != nil {
			a.log.Warn("reading the recovery source", "error", err)
		}
		f.Recovery, f.RecoveryExpected = r, a.cfg.RecoverySourceDir != ""
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
