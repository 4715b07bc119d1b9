package instance

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
)

// runPostgres runs one lifetime of postgres, as the primary (asPrimary: this
// agent is the target and holds the Lease) or as a standby of the target. It
// returns (nil, nil) when ctx ended (after a fast shutdown), when postgres exited
// by itself (after the restart backoff), after a demotion or a fence (the caller
// re-plans: a former primary rewinds before it starts again), and returns an
// instruction that needs postgres stopped (a re-clone) after stopping it.
//
// While it runs, every event goes through decideRun (supervisor.go): a standby
// that becomes the target promotes once it holds the Lease; a standby whose
// upstream changes follows it; a primary that is no longer the target
// checkpoints, stops and releases the Lease with its final WAL position; a
// writable instance that cannot renew the Lease within the renew deadline shuts
// down immediately (never a smart shutdown), whatever step it is at.
func (a *Agent) runPostgres(ctx context.Context, asPrimary bool) (*instruction, error) {
	// PostgreSQL refuses a data directory others can read; a volume's fsGroup
	// handling may have widened it.
	if err := os.Chmod(a.cfg.PGData, 0o700); err != nil { // #nosec G302 -- a directory: owner only
		return nil, fmt.Errorf("restricting the data directory: %w", err)
	}
	following := ""
	if !asPrimary {
		following = a.upstream(a.lease.view(), "")
	}
	a.publish(func(v *runtimeView) { v.Following = following })
	if err := a.writeOwnConfig(asPrimary); err != nil {
		return nil, err
	}
	a.cleanStaleLocks()
	// Not CommandContext: cancellation must become a fast shutdown, not SIGKILL.
	cmd := a.command(context.Background(), a.bins.Postgres, "-D", a.cfg.PGData)
	cmd.Stderr = io.MultiWriter(os.Stderr, &lineWatcher{onLine: a.watchLogLine})
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting postgres: %w", err)
	}
	l := &lifetime{a: a, cmd: cmd, started: time.Now(), done: make(chan error, 1), gen: a.gen.Add(1)}
	run := runStandby
	if asPrimary {
		run = runSettingUp
	}
	a.publish(func(v *runtimeView) {
		v.Exited, v.Fenced, v.Postmaster, v.Run = false, false, int64(cmd.Process.Pid), run
		v.Primary = asPrimary && !a.inRecoveryOnDisk()
		v.SetUp = !asPrimary
	})
	a.setState(agentapi.StateRunning, "PostgreSQL is running")
	a.log.Info("postgres started", "pid", cmd.Process.Pid, "primary", asPrimary, "following", following)
	go func() { l.done <- cmd.Wait() }()

	setupCtx, cancelSetup := context.WithCancel(ctx)
	defer cancelSetup()
	if asPrimary {
		go a.setUpPrimary(setupCtx, l.gen)
	}
	defer l.endDemotion()

	pending := false
	ctxDone := ctx.Done()
	fenceTick := time.NewTicker(200 * time.Millisecond)
	defer fenceTick.Stop()
	var checkpointed <-chan struct{}
	var demoteLimit <-chan time.Time
	var exitErr error
	for {
		var ev runEvent
		select {
		case exitErr = <-l.done:
			ev = evExited
		case <-ctxDone:
			ctxDone = nil
			ev = evShutdown
		case in := <-a.instr:
			if !in.reclone {
				continue // a recovery is for a primary whose data is missing
			}
			ev = evReclone
		case <-a.lease.changed:
			ev = evLease
		case <-fenceTick.C:
			ev = evLease
		case <-a.configChanged:
			ev = evConfigChanged
		case <-checkpointed:
			checkpointed = nil
			ev = evCheckpointed
		case <-demoteLimit:
			ev = evDemoteTimeout
		case m := <-a.events:
			if m.gen != l.gen {
				if m.reply != nil {
					m.reply <- errors.New("that lifetime of PostgreSQL ended")
				}
				continue // from the setup worker of an earlier lifetime
			}
			switch {
			case m.reply != nil:
				if run != runSettingUp {
					m.reply <- fmt.Errorf("not setting up a primary (%s)", run)
				} else {
					m.reply <- a.writeOwnConfig(true)
				}
				continue
			case m.ev == "":
				if run == runSettingUp {
					a.setState(m.state, m.message)
				}
				continue
			}
			ev = m.ev
		}
		o := a.observeRun()
		d := decideRun(run, pending, ev, o)
		if d.Next != run {
			a.log.Info("supervisor", "event", string(ev), "from", string(run), "to", string(d.Next), "action", string(d.Action))
		}
		if ev == evPromoted && run == runSettingUp {
			a.publish(func(v *runtimeView) { v.Primary = true })
		}
		if run == runSettingUp && d.Next == runPrimary {
			a.publish(func(v *runtimeView) { v.SetUp = true })
		}
		run, pending = d.Next, d.ConfigPending
		a.publish(func(v *runtimeView) { v.Run = run })

		switch d.Action {
		case actFence:
			return nil, l.fence(d.Why)
		case actDemote:
			cancelSetup()
			checkpointed = l.startDemotion()
		case actFastShutdown:
			_ = cmd.Process.Signal(syscall.SIGINT)
			demoteLimit = time.After(a.cfg.DemoteTimeout)
		case actStop:
			if asPrimary || o.Promoted {
				a.log.Info("shutdown requested without the Lease: fast shutdown of postgres")
			} else {
				a.log.Info("shutdown requested: fast shutdown of postgres")
			}
			return nil, l.stop()
		case actStopForReclone:
			a.setState(agentapi.StateCloning, "stopping PostgreSQL to re-clone the primary")
			return &instruction{reclone: true}, l.stop()
		case actRestartLater:
			cancelSetup()
			l.restartLater(ctx, exitErr)
			return nil, nil
		case actEnd:
			killProcessGroup(cmd.Process.Pid)
			return nil, l.stopped(exitErr)
		case actRelease:
			if err := l.stopped(exitErr); err != nil {
				return nil, err
			}
			a.log.Info("postgres stopped")
			l.release()
			return nil, nil
		case actFollow:
			a.follow(ctx, o.Upstream)
		case actWantLease:
			a.lease.setWant(true)
		case actSetUp:
			a.lease.setWant(true)
			a.publish(func(v *runtimeView) { v.SetUp = false })
			a.setState(agentapi.StatePromoting, "this standby is the target primary and holds the Lease: promoting")
			go a.setUpPrimary(setupCtx, l.gen)
		case actRewriteSync:
			if err := a.writeOwnConfig(true); err != nil {
				a.log.Error("rewriting the primary configuration", "error", err)
			} else {
				a.reloadAsync(ctx, "synchronous standbys changed", "synchronous_standby_names", a.view().SyncNames)
			}
		case actApplyConfig:
			a.applyUserConfig(ctx, run == runPrimary || run == runSettingUp)
		}
	}
}

// observeRun is what decideRun needs of the Lease and of the running state.
func (a *Agent) observeRun() runObs {
	v := a.lease.view()
	since, renewed := a.lease.sinceRenew()
	rt := a.view()
	me := a.cfg.PodName
	return runObs{
		Me: agentapi.LeaseHolder(me, a.cfg.PodUID), Pod: me,
		Known: v.Known, Holder: v.Holder, Held: v.Held, Target: v.Target, Fencing: v.Fencing,
		SinceRenew: since, Renewed: renewed, RenewDeadline: a.cfg.RenewDeadline, LastErr: v.LastErr,
		Upstream: a.upstream(v, rt.Following), Following: rt.Following,
		WantSync: synchronousStandbyNames(me, v), HaveSync: rt.SyncNames,
		Promoted: rt.Primary,
	}
}

// lifetime is one run of the postmaster, as the supervisor carries it out.
type lifetime struct {
	a       *Agent
	cmd     *exec.Cmd
	started time.Time
	done    chan error
	gen     int64
	// demoting: the Lease keeper renews the Lease for the demotion;
	// wasPrimary: the demoted instance ran as the primary (it has a final
	// position); cancelCheckpoint ends the demotion's checkpoint.
	demoting         bool
	wasPrimary       bool
	cancelCheckpoint context.CancelFunc
}

// stopped records that postgres exited; err is its wait result.
func (l *lifetime) stopped(err error) error {
	l.a.publish(func(v *runtimeView) { v.Exited, v.Primary, v.Postmaster = true, false, 0 })
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return fmt.Errorf("waiting for postgres: %w", err)
	}
	return nil
}

// stop is a fast shutdown.
func (l *lifetime) stop() error {
	_ = l.cmd.Process.Signal(syscall.SIGINT)
	err := l.stopped(<-l.done)
	l.a.log.Info("postgres stopped")
	return err
}

// fence is an immediate shutdown: every session ends now, nothing more is
// committed.
func (l *lifetime) fence(why string) error {
	_ = l.cmd.Process.Signal(syscall.SIGQUIT)
	l.a.publish(func(v *runtimeView) { v.Fenced, v.SetUp = true, false })
	l.a.log.Error("fencing: PostgreSQL shut down immediately", "reason", why)
	l.a.setState(agentapi.StateFenced, why)
	err := l.stopped(<-l.done)
	killProcessGroup(l.cmd.Process.Pid)
	return err
}

// restartLater handles postgres exiting by itself: the process group ends (a
// new postmaster must not start while orphaned backends are still attached to
// the old shared memory), then the restart backoff.
func (l *lifetime) restartLater(ctx context.Context, err error) {
	a := l.a
	killProcessGroup(l.cmd.Process.Pid)
	_ = l.stopped(nil)
	if err == nil {
		err = errors.New("exit status 0")
	}
	if time.Since(l.started) > time.Minute {
		a.restartDelay = a.cfg.RestartBackoff
	}
	delay := a.restartDelay
	a.restartDelay = min(a.restartDelay*2, 30*time.Second)
	a.setState(agentapi.StateRestarting, fmt.Sprintf("PostgreSQL exited by itself (%v); restarting it in %s", err, delay))
	a.log.Warn("postgres exited by itself; restarting in place", "error", err, "in", delay.String())
	select {
	case <-ctx.Done():
	case <-time.After(delay):
	}
}

// startDemotion begins demoting a primary that holds the Lease: a checkpoint
// (so that the shutdown is short, bounded by 20 s), then — on evCheckpointed —
// a fast shutdown (the WAL senders send every record up to the shutdown
// checkpoint to the connected standbys), then the Lease is released with the
// shutdown checkpoint's position, which the next primary waits to have received
// before it promotes.
//
// Rule 3: the Lease is renewed throughout, so no standby can take it while this
// primary may still commit, and decideRun still fences at every event. A
// primary that stopped immediately has no final position: it does not release
// the Lease with one, and a switchover target then does not promote (the
// operator aborts the switchover, and this instance resumes).
func (l *lifetime) startDemotion() <-chan struct{} {
	a := l.a
	// Only a primary has a final position: a target that took the Lease but
	// never promoted releases it without one (its checkpoint is a restartpoint,
	// behind the old primary's WAL).
	// PostgreSQL out of recovery on disk (no standby.signal) counts too: the
	// setup worker's report of its promotion may still be on its way.
	l.wasPrimary = a.view().Primary || !a.inRecoveryOnDisk()
	a.setState(agentapi.StateDemoting, "checkpointing, stopping and releasing the primary Lease")
	a.publish(func(v *runtimeView) { v.SetUp = false })
	a.lease.setDemoting(true)
	l.demoting = true
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	l.cancelCheckpoint = cancel
	checkpointed := make(chan struct{})
	go func() {
		defer close(checkpointed)
		if conn, err := a.connect(ctx, "postgres"); err == nil {
			if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
				a.log.Warn("checkpoint before the shutdown", "error", err)
			}
			conn.Close(context.Background())
		}
	}()
	return checkpointed
}

// endDemotion stops renewing the Lease for a demotion, when there was one.
func (l *lifetime) endDemotion() {
	if l.cancelCheckpoint != nil {
		l.cancelCheckpoint()
	}
	if l.demoting {
		l.a.lease.setDemoting(false)
	}
}

// release gives up the Lease after a clean demotion, with the final position
// when this instance ran as the primary.
func (l *lifetime) release() {
	a := l.a
	// The Lease keeper renews until the release is done: a keeper no longer
	// told the demotion is under way gives a Lease it holds without being the
	// target away at once, without the final position (runPostgres's deferred
	// endDemotion stops the renewals afterwards).
	rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer rcancel()
	if !l.wasPrimary {
		if err := a.lease.release(rctx, "", 5*time.Second); err != nil {
			a.log.Warn("releasing the primary Lease; it will expire", "error", err)
		}
		return
	}
	final, err := a.checkpointLSN(rctx)
	if err != nil {
		// Without a final position the Lease is not released: the next primary
		// waits for it to expire.
		a.log.Error("reading the final WAL position; keeping the Lease until it expires", "error", err)
		return
	}
	if err := a.lease.release(rctx, final, 5*time.Second); err != nil {
		a.log.Warn("releasing the primary Lease; it will expire", "error", err)
		return
	}
	a.log.Info("primary stopped and Lease released", "finalLSN", final)
}

// upstream is the pod a standby streams from, given the one it follows now.
// While a failover chooses a new primary (no target) it keeps streaming from the
// old one until that one released the Lease after its clean shutdown (its last
// WAL is then received) or has been silent for the renew deadline (it has
// fenced itself by then): only then does it stop, so that its position is final
// when the operator compares the standbys.
func (a *Agent) upstream(v leaseView, following string) string {
	switch {
	case v.Target == a.cfg.PodName:
		// Becoming the primary: keep receiving the old primary's last WAL.
		return following
	case v.Target != "":
		return v.Target
	case v.Holder == "" || v.HolderSilentFor >= a.cfg.RenewDeadline:
		return ""
	}
	return following
}

// follow points a running standby at its upstream, with a reload (PostgreSQL 13
// and later reload primary_conninfo without a restart).
func (a *Agent) follow(ctx context.Context, up string) {
	a.log.Info("following a new upstream", "from", a.view().Following, "to", up)
	a.publish(func(v *runtimeView) { v.Following = up })
	if err := a.writeOwnConfig(false); err != nil {
		a.log.Error("rewriting the standby configuration", "error", err)
	} else {
		a.reloadAsync(ctx, "following "+orString(up, "no upstream"))
	}
}

// reloadAsync makes PostgreSQL re-read its configuration without holding up
// the supervisor: a reload waits for a connection (up to 5 s), and the fence
// must be checked meanwhile. A failed reload is retried by a configuration
// rewrite for the current role a few seconds later.
func (a *Agent) reloadAsync(ctx context.Context, what string, kv ...any) {
	go func() {
		if err := a.reload(ctx); err != nil {
			a.log.Warn("reloading the configuration; will rewrite and reload again", "for", what, "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
				select {
				case a.configChanged <- struct{}{}:
				default: // one is pending already
				}
			}
			return
		}
		a.log.Info(what, kv...)
	}()
}

// checkpointLSN is the latest checkpoint location of a stopped data directory.
func (a *Agent) checkpointLSN(ctx context.Context) (string, error) {
	return a.controlData(ctx, "Latest checkpoint location")
}

// controlData returns one field of pg_controldata's output for PGDATA.
func (a *Agent) controlData(ctx context.Context, field string) (string, error) {
	out, err := exec.CommandContext(ctx, a.bins.PgControldata, "-D", a.cfg.PGData).Output()
	if err != nil {
		return "", fmt.Errorf("pg_controldata: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == field {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("pg_controldata printed no %q", field)
}

// applyUserConfig rewrites the configuration files for the current role and
// reloads PostgreSQL (supervisor only).
func (a *Agent) applyUserConfig(ctx context.Context, primary bool) {
	if err := a.writeOwnConfig(primary); err != nil {
		a.log.Warn("applying the changed configuration", "error", err)
		return
	}
	a.reloadAsync(ctx, "configuration changed: applied by a reload", "hash", a.view().ConfigHash)
}

// reload makes PostgreSQL re-read its configuration.
func (a *Agent) reload(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := a.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "SELECT pg_reload_conf()")
	return err
}

// rewind makes a former primary's data directory a standby of target: pg_rewind
// (which first completes crash recovery if the primary did not stop cleanly)
// brings it onto target's timeline; then it starts in recovery. It retries while
// the new primary is still starting.
func (a *Agent) rewind(ctx context.Context, target string) error {
	host, port := a.peerAddress(target)
	params := []string{
		"host=" + postgres.ConninfoValue(host),
		"port=" + strconv.Itoa(port),
		"user=" + agentapi.ReplicationUser,
		"dbname=postgres",
		"passfile=" + postgres.ConninfoValue(a.passfile()),
		"connect_timeout=5",
	}
	conninfo := strings.Join(append(slices.Clone(params), a.sslConninfo()...), " ")
	pgxConninfo := strings.Join(append(slices.Clone(params), a.sslVerify()...), " ")
	var err error
	for attempt := 1; attempt <= 5; {
		if v := a.lease.view(); v.Target != target {
			return fmt.Errorf("the target primary changed from %s to %q before the rewind", target, v.Target)
		}
		// Only a source that is primary on a later timeline, recorded by its
		// post-promotion checkpoint: rewinding from a target that has not promoted
		// yet finds "the same timeline", rewinds nothing, and leaves this
		// instance ahead of the new primary's fork point.
		if why := a.rewindSourceNotReady(ctx, pgxConninfo); why != "" {
			a.setState(agentapi.StateRewinding, fmt.Sprintf("waiting for %s to be promoted before rewinding: %s", target, why))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
			continue
		}
		a.setState(agentapi.StateRewinding, fmt.Sprintf("rewinding the former primary onto the timeline of %s (attempt %d)", target, attempt))
		a.log.Info("rewinding the former primary", "source", target, "attempt", attempt)
		if err = a.writeOwnConfig(true); err != nil {
			return err
		}
		cmd := a.command(ctx, filepath.Join(a.bins.Dir, "pg_rewind"), "--target-pgdata="+a.cfg.PGData, "--source-server="+conninfo)
		if err = cmd.Run(); err == nil {
			if err := a.writeFile(filepath.Join(a.cfg.PGData, "standby.signal"), "", 0o600); err != nil {
				return err
			}
			a.log.Info("former primary rewound; starting as a standby", "primary", target)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		a.log.Warn("pg_rewind failed", "error", err, "attempt", attempt)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt) * time.Second):
		}
		attempt++
	}
	return fmt.Errorf("pg_rewind from %s: %w", target, err)
}

// rewindSourceNotReady explains why the rewind source is not yet a primary on a
// later timeline than this data directory's ("" when it is).
func (a *Agent) rewindSourceNotReady(ctx context.Context, conninfo string) string {
	local, err := a.localTimeline(ctx)
	if err != nil {
		return err.Error()
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, conninfo)
	if err != nil {
		return "connecting: " + err.Error()
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	var tl int64
	if err := conn.QueryRow(cctx, "SELECT pg_is_in_recovery(), (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())").Scan(&inRecovery, &tl); err != nil {
		return "querying: " + err.Error()
	}
	switch {
	case inRecovery:
		return "it is still in recovery"
	case tl <= local:
		return fmt.Sprintf("its checkpoint is on timeline %d, this data directory's on %d", tl, local)
	}
	return ""
}

// localTimeline is the timeline of this (stopped) data directory's last checkpoint.
func (a *Agent) localTimeline(ctx context.Context) (int64, error) {
	v, err := a.controlData(ctx, "Latest checkpoint's TimeLineID")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(v, 10, 64)
}

// cleanStaleLocks removes postmaster.pid and the socket lock left behind by a
// postgres that was killed with its container when the PID they name now belongs
// to another, live process (PID reuse in a new container: PostgreSQL would take it
// for a running postmaster and refuse to start). A lock naming a dead PID is left
// to PostgreSQL, whose own check also covers shared memory still in use.
func (a *Agent) cleanStaleLocks() {
	files := []string{a.pidFile()}
	for _, d := range a.socketDirs() {
		files = append(files, filepath.Join(d, fmt.Sprintf(".s.PGSQL.%d.lock", a.cfg.Port)))
	}
	for _, f := range files {
		pid, ok := lockFilePID(f)
		if !ok || pid <= 0 || !processAlive(pid) || processIsPostgres(pid) {
			continue
		}
		if err := os.Remove(f); err == nil {
			a.log.Info("removed a stale lock file", "file", filepath.Base(f), "pid", pid)
		}
		if strings.HasSuffix(f, ".lock") {
			_ = os.Remove(strings.TrimSuffix(f, ".lock"))
		}
	}
}

// lockFilePID returns the PID on the first line of a PostgreSQL lock file.
func lockFilePID(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return 0, true // unreadable lock: stale
	}
	return pid, true
}

// processAlive reports whether a process with pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// killProcessGroup SIGKILLs what is left of the process group pgid (postgres runs
// in its own group) and waits up to 10s for it to be gone.
func killProcessGroup(pgid int) {
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	for i := 0; i < 100; i++ {
		if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lineWatcher calls onLine for each complete line written to it.
type lineWatcher struct {
	buf    []byte
	onLine func(string)
}

func (w *lineWatcher) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.onLine(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 {
		w.buf = w.buf[:0]
	}
	return len(p), nil
}

// watchLogLine notices, in PostgreSQL's own log, that a standby asked its upstream
// for WAL that is gone: the evidence that only a re-clone can help.
//
// It also notices that the primary's new timeline forked off before this
// standby's recovery point: the standby replayed WAL of the old primary that
// the new one never received (an asynchronous failover gave it up), so it can
// never follow the new timeline.
func (a *Agent) watchLogLine(line string) {
	if strings.Contains(line, "has already been removed") || strings.Contains(line, "can no longer get changes from replication slot") ||
		strings.Contains(line, "has been invalidated") {
		a.walMissingAt.Store(time.Now().UnixNano())
	}
	if strings.Contains(line, "forked off current database system timeline") && strings.Contains(line, "before current recovery point") {
		a.divergedAt.Store(time.Now().UnixNano())
	}
}

// walMissing reports whether the WAL this standby needs was reported gone within
// the last two minutes.
func (a *Agent) walMissing() bool {
	return recentSince(a.walMissingAt.Load(), a.view().ClonedAt)
}

// diverged reports whether this standby's recovery point was reported past the
// primary's fork point within the last two minutes.
func (a *Agent) diverged() bool {
	return recentSince(a.divergedAt.Load(), a.view().ClonedAt)
}

// recentSince: at (unix nanoseconds) is set, after the last clone, and within
// the last two minutes.
func recentSince(at, clonedAt int64) bool {
	return at != 0 && at > clonedAt && time.Since(time.Unix(0, at)) < 2*time.Minute
}

// processIsPostgres reports whether pid is a live postgres process.
func processIsPostgres(pid int) bool {
	if pid == os.Getpid() {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return false
	}
	argv0, _, _ := strings.Cut(string(b), "\x00")
	return strings.HasPrefix(filepath.Base(strings.Fields(argv0 + " x")[0]), "postgres")
}

// connect opens a superuser connection over the private socket.
func (a *Agent) connect(ctx context.Context, database string) (*pgx.Conn, error) {
	return a.connectAs(ctx, "postgres", database)
}

// connectAs opens a connection over the private socket as role user (the
// superuser or the monitoring role: peer authentication maps the postgres OS user
// to these two only).
func (a *Agent) connectAs(ctx context.Context, user, database string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.Host = a.cfg.RunDir
	cfg.Port = uint16(a.cfg.Port)
	cfg.User = user
	cfg.Database = database
	cfg.ConnectTimeout = 3 * time.Second
	cfg.RuntimeParams["application_name"] = "postgres-operator-agent"
	// Superuser sessions resolve names in pg_catalog only (temporary objects
	// last): a function, operator or table someone created elsewhere never
	// shadows the one the agent means.
	cfg.RuntimeParams["search_path"] = "pg_catalog, pg_temp"
	return pgx.ConnectConfig(ctx, cfg)
}

// setUpPrimary is the setup worker of a lifetime (gen) that runs as the target
// primary: it promotes PostgreSQL when it is in recovery, then puts the roles
// and the application database in place, retrying until ctx ends. It changes no
// running state itself: it reports to the supervisor.
func (a *Agent) setUpPrimary(ctx context.Context, gen int64) {
	for delay := 200 * time.Millisecond; ; delay = min(delay*2, 2*time.Second) {
		if a.view().Exited || ctx.Err() != nil {
			return
		}
		err := a.promoteIfPending(ctx, gen)
		if err == nil {
			err = a.ensureRoles(ctx)
		}
		if err == nil {
			a.log.Info("application role, database and replication role are in place")
			a.tell(ctx, runMsg{gen: gen, ev: evSetUp})
			return
		}
		a.log.Info("waiting to set up roles", "reason", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// tell sends an event to the supervisor, unless ctx ends first.
func (a *Agent) tell(ctx context.Context, m runMsg) bool {
	select {
	case a.events <- m:
		return true
	case <-ctx.Done():
		return false
	}
}

// progress reports the setup worker's progress to the supervisor.
func (a *Agent) progress(ctx context.Context, gen int64, st agentapi.State, msg string) {
	a.tell(ctx, runMsg{gen: gen, state: st, message: msg})
}

// promoteIfPending promotes the target primary while PostgreSQL is in recovery
// (a standby that became the target, a primary rebuilt from a standby) to a new
// timeline, only while it holds the Lease and, after a switchover, only once it
// has received WAL past the old primary's final position. A checkpoint follows,
// so that the new timeline is recorded and the old primary can rewind onto it.
func (a *Agent) promoteIfPending(ctx context.Context, gen int64) error {
	ctx, cancel := context.WithTimeout(ctx, 70*time.Second)
	defer cancel()
	conn, err := a.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	var received string
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_receive_lsn()::text, '')").Scan(&inRecovery, &received); err != nil {
		return err
	}
	if !inRecovery {
		if !a.view().Primary {
			a.tell(ctx, runMsg{gen: gen, ev: evPromoted})
		}
		return nil
	}
	if v := a.lease.view(); !v.Held || v.Target != a.cfg.PodName {
		return errors.New("not promoting: this instance does not hold the primary Lease as the target")
	}
	final, change := a.lease.acquired()
	if final == "" && a.lease.view().Change == agentapi.ChangeSwitchover {
		// The old primary did not stop cleanly (it was fenced or killed during
		// the switchover): WAL it acknowledged may be missing here. The
		// operator aborts the switchover (the old primary resumes) or turns it
		// into a failover, which measures this standby's WAL first (rule 1).
		a.progress(ctx, gen, agentapi.StatePromoting, "not promoting: the old primary released no final WAL position; waiting for the operator to abort the switchover or fail over")
		return errors.New("not promoting in a switchover without the old primary's final WAL position")
	}
	if final != "" && change != agentapi.ChangeFailover {
		f, err1 := agentapi.ParseLSN(final)
		r, err2 := agentapi.ParseLSN(received)
		if err1 != nil || err2 != nil || r <= f {
			a.progress(ctx, gen, agentapi.StatePromoting, fmt.Sprintf("waiting to receive the old primary's WAL up to its final position %s (received %s)", final, orString(received, "nothing")))
			return fmt.Errorf("not promoting before WAL past %s is received (received %q)", final, received)
		}
	}
	// Rule 2: synchronous replication is a property of whoever is primary.
	// The primary's configuration (synchronous_standby_names for the
	// instances and quorum on the Lease) is written and loaded before the
	// promotion, so that the first commit the new primary accepts already
	// waits for its quorum; a standby ignores the setting until then.
	if err := a.loadPrimaryConfig(ctx, gen, conn); err != nil {
		return fmt.Errorf("not promoting: %w", err)
	}
	if v := a.lease.view(); !v.Held || v.Target != a.cfg.PodName {
		return errors.New("not promoting: the Lease or the target changed while the configuration was loaded")
	}
	a.progress(ctx, gen, agentapi.StatePromoting, "promoting to primary")
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(true, 60)").Scan(&ok); err != nil {
		return fmt.Errorf("promoting: %w", err)
	}
	if !ok {
		return errors.New("promotion did not complete within 60s")
	}
	a.tell(ctx, runMsg{gen: gen, ev: evPromoted})
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		a.log.Warn("checkpoint after the promotion", "error", err)
	}
	a.progress(ctx, gen, agentapi.StateRunning, "PostgreSQL is running (promoted)")
	a.log.Info("promoted to primary on a new timeline")
	return nil
}

// loadPrimaryConfig writes the primary's configuration, reloads it and waits
// until a new session sees its synchronous_standby_names (the postmaster has
// loaded it; the backends that commit start after the promotion).
func (a *Agent) loadPrimaryConfig(ctx context.Context, gen int64, conn *pgx.Conn) error {
	// The supervisor writes it (it owns what was written).
	reply := make(chan error, 1)
	if !a.tell(ctx, runMsg{gen: gen, reply: reply}) {
		return ctx.Err()
	}
	select {
	case err := <-reply:
		if err != nil {
			return fmt.Errorf("writing the primary configuration: %w", err)
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	want := a.view().SyncNames
	if _, err := conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("reloading the primary configuration: %w", err)
	}
	for delay := 20 * time.Millisecond; ; delay = min(2*delay, 500*time.Millisecond) {
		c, err := a.connect(ctx, "postgres")
		if err != nil {
			return err
		}
		var have string
		err = c.QueryRow(ctx, "SELECT current_setting('synchronous_standby_names')").Scan(&have)
		c.Close(context.Background())
		if err != nil {
			return err
		}
		if have == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("synchronous_standby_names is %q, not %q, after the reload: %w", have, want, ctx.Err())
		case <-time.After(delay):
		}
	}
}

// ensureRoles creates or updates the replication role, the application role and
// its database: the names come from the configuration (the Database's spec), the
// passwords from the mounted Secrets, sent as SCRAM verifiers.
func (a *Agent) ensureRoles(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	appUser, appDB := a.cfg.AppUser, a.cfg.AppDatabase
	if err := validateNames(appUser, appDB); err != nil {
		return err
	}
	appPassword, err := a.readSecret(a.cfg.CredentialsDir, agentapi.CredentialsPasswordFile)
	if err != nil {
		return err
	}
	replPassword, err := a.readSecret(a.cfg.InternalDir, agentapi.InternalReplicationPasswordFile)
	if err != nil {
		return err
	}
	conn, err := a.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_catalog.pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return err
	}
	if inRecovery {
		return errors.New("the instance is in recovery")
	}
	// The statements below carry password verifiers: keep them out of the server
	// log and statistics even when they fail, are slow or are sampled.
	if _, err := conn.Exec(ctx, quietSession); err != nil {
		return err
	}
	if err := ensureRole(ctx, conn, agentapi.ReplicationUser, replPassword, "REPLICATION"); err != nil {
		return err
	}
	// What pg_rewind needs of its source, and nothing more (PostgreSQL's
	// documented grants for a non-superuser rewind).
	for _, fn := range []string{"pg_ls_dir(text, boolean, boolean)", "pg_stat_file(text, boolean)",
		"pg_read_binary_file(text)", "pg_read_binary_file(text, bigint, bigint, boolean)",
		// and the former primary's check that the source is promoted.
		"pg_control_checkpoint()"} {
		if _, err := conn.Exec(ctx, "GRANT EXECUTE ON FUNCTION pg_catalog."+fn+" TO "+postgres.QuoteIdentifier(agentapi.ReplicationUser)); err != nil {
			return fmt.Errorf("granting %s for pg_rewind: %w", fn, err)
		}
	}
	if err := ensureRole(ctx, conn, appUser, appPassword, "NOREPLICATION"); err != nil {
		return err
	}
	if err := ensureMonitorRole(ctx, conn); err != nil {
		return err
	}
	// Rule 6: a swap that was interrupted after closing the application
	// database (a killed agent or primary, a failover) leaves it closed; no
	// restore runs here yet, so it opens again.
	if reopened, err := reopenApplicationDatabase(ctx, conn, appDB); err != nil {
		return fmt.Errorf("allowing connections to database %s again: %w", appDB, err)
	} else if reopened {
		a.log.Warn("the application database refused connections (an interrupted restore swap): allowed again", "database", appDB)
	}
	var owner string
	err = conn.QueryRow(ctx, "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database WHERE datname = $1", appDB).Scan(&owner)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+postgres.QuoteIdentifier(appDB)+" OWNER "+postgres.QuoteIdentifier(appUser)); err != nil {
			return fmt.Errorf("creating database %s: %w", appDB, err)
		}
	case err != nil:
		return err
	case owner != appUser:
		// The application database (never postgres or a template: validateNames)
		// belongs to the application role.
		if _, err := conn.Exec(ctx, "ALTER DATABASE "+postgres.QuoteIdentifier(appDB)+" OWNER TO "+postgres.QuoteIdentifier(appUser)); err != nil {
			return fmt.Errorf("setting the owner of database %s: %w", appDB, err)
		}
	}
	return dropLegacyHeartbeat(ctx, conn)
}

// quietSession keeps what a session sends out of every log and statistic
// PostgreSQL keeps: statement, duration and sample logging, the debug dumps of
// parse trees, and pg_stat_statements' record of utility statements.
const quietSession = "SET log_statement = 'none'; SET log_min_error_statement = 'panic'; " +
	"SET log_min_duration_statement = -1; SET log_min_duration_sample = -1; SET log_duration = off; " +
	"SET log_statement_sample_rate = 0; SET log_transaction_sample_rate = 0; " +
	"SET debug_print_parse = off; SET debug_print_rewritten = off; SET debug_print_plan = off; " +
	"SET pg_stat_statements.track_utility = off"

// dropLegacyHeartbeat drops the heartbeat table earlier versions kept in the
// postgres database's public schema, when the superuser still owns it (a table
// someone else recreated there is left alone: the superuser runs nothing of it).
func dropLegacyHeartbeat(ctx context.Context, conn *pgx.Conn) error {
	var owner string
	err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relname = 'postgres_operator_heartbeat'`).Scan(&owner)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && owner != "postgres") {
		return nil
	}
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, "DROP TABLE public.postgres_operator_heartbeat")
	return err
}

// namePattern is the CRD's rule for spec.username and spec.databaseName.
var namePattern = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// validateNames refuses application role and database names that would make the
// agent alter a role or database it relies on (the CRD's rules, checked again).
func validateNames(user, database string) error {
	switch {
	case !namePattern.MatchString(user):
		return fmt.Errorf("the application user %q is not a lowercase PostgreSQL identifier", user)
	case !namePattern.MatchString(database):
		return fmt.Errorf("the application database %q is not a lowercase PostgreSQL identifier", database)
	case user == "postgres" || user == agentapi.ReplicationUser || user == agentapi.MonitorUser || strings.HasPrefix(user, "pg_"):
		return fmt.Errorf("the application user may not be %q: it is reserved", user)
	case database == "postgres" || database == "template0" || database == "template1" || strings.HasPrefix(database, "pg_"):
		return fmt.Errorf("the application database may not be %q: it is reserved", database)
	}
	return nil
}

// ensureMonitorRole creates the monitoring role: pg_monitor, the checkpoint
// function the status reads, the configuration file's settings, no password (it logs in only by peer
// authentication over the private socket), at most 5 connections.
func ensureMonitorRole(ctx context.Context, conn *pgx.Conn) error {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)", agentapi.MonitorUser).Scan(&exists); err != nil {
		return err
	}
	verb := "ALTER"
	if !exists {
		verb = "CREATE"
	}
	q := postgres.QuoteIdentifier(agentapi.MonitorUser)
	for _, stmt := range []string{
		verb + " ROLE " + q + " WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 5 PASSWORD NULL",
		"GRANT pg_monitor TO " + q,
		"GRANT EXECUTE ON FUNCTION pg_catalog.pg_control_checkpoint() TO " + q,
		// Settings PostgreSQL refused (an invalid value of spec.postgresql).
		"GRANT SELECT ON pg_catalog.pg_file_settings TO " + q,
		"GRANT EXECUTE ON FUNCTION pg_catalog.pg_show_all_file_settings() TO " + q,
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("monitoring role: %w", err)
		}
	}
	return nil
}

func ensureRole(ctx context.Context, conn *pgx.Conn, name, password, replication string) error {
	verifier, err := postgres.ScramVerifier(password)
	if err != nil {
		return err
	}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", name).Scan(&exists); err != nil {
		return err
	}
	verb := "ALTER"
	if !exists {
		verb = "CREATE"
	}
	// Utility statements take no parameters: the identifier and the verifier are
	// quoted. The verifier reveals nothing usable as a password.
	stmt := verb + " ROLE " + postgres.QuoteIdentifier(name) + " WITH LOGIN NOSUPERUSER " + replication +
		" PASSWORD " + postgres.QuoteLiteral(verifier)
	if _, err := conn.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("%s role %s: %w", verb, name, err)
	}
	return nil
}

// status queries PostgreSQL for the status endpoint.
func (a *Agent) status(ctx context.Context) *agentapi.Status {
	rt := a.view()
	st := &agentapi.Status{Protocol: agentapi.ProtocolVersion, Pod: a.cfg.PodName, BinaryVersion: a.binaryMajor, Bootstrapped: rt.Bootstrapped}
	st.State, st.Message = rt.State, rt.Message
	st.Restoring = a.restoreInProgress()
	v := a.lease.view()
	st.Target, st.HoldsLease, st.Fenced, st.LeaseError = v.Target, v.Held, rt.Fenced, v.LastErr
	if !rt.Primary {
		st.Following = rt.Following
	}
	if a.hasData() {
		st.SystemIdentifier, _ = postgres.ReadSystemID(a.cfg.PGData)
		st.DataVersion, _ = postgres.ReadDataMajor(a.cfg.PGData)
	}
	if rt.Exited {
		st.Error = "PostgreSQL is not running (" + string(st.State) + ")"
		return st
	}
	st.Ready = a.readyNow()
	conn, err := a.connectMonitor(ctx, "postgres")
	if err != nil {
		st.Error = "connecting: " + err.Error()
		return st
	}
	defer conn.Close(context.Background())
	var versionNum string
	if err := conn.QueryRow(ctx, `SELECT pg_is_in_recovery(), current_setting('server_version'), current_setting('server_version_num'),
		(SELECT timeline_id FROM pg_control_checkpoint())`).Scan(&st.InRecovery, &st.ServerVersion, &versionNum, &st.Timeline); err != nil {
		st.Error = "querying: " + err.Error()
		return st
	}
	st.Running = true
	st.ServerVersionNum, _ = strconv.Atoi(versionNum)
	a.configStatus(ctx, conn, st)
	if st.InRecovery {
		st.Role = agentapi.RoleReplica
		err = conn.QueryRow(ctx, `SELECT coalesce(pg_last_wal_receive_lsn()::text, ''), coalesce(pg_last_wal_replay_lsn()::text, ''),
			coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint,
			coalesce((SELECT status FROM pg_stat_wal_receiver LIMIT 1), '')`).
			Scan(&st.ReceiveLSN, &st.ReplayLSN, &st.ReplayLagBytes, &st.WALReceiverStatus)
		if err != nil {
			st.Error = "querying recovery: " + err.Error()
		}
		st.CurrentLSN = st.ReplayLSN
		st.WALMissing = st.WALReceiverStatus != "streaming" && a.walMissing()
		st.Diverged = st.WALReceiverStatus != "streaming" && a.diverged()
		return st
	}
	st.Role = agentapi.RolePrimary
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&st.CurrentLSN); err != nil {
		st.Error = "querying WAL position: " + err.Error()
		return st
	}
	rows, err := conn.Query(ctx, `SELECT coalesce(application_name, ''), coalesce(state, ''), coalesce(sync_state, ''),
		coalesce(sent_lsn::text, ''), coalesce(replay_lsn::text, ''),
		coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint
		FROM pg_stat_replication ORDER BY application_name`)
	if err != nil {
		st.Error = "querying replication: " + err.Error()
		return st
	}
	for rows.Next() {
		var r agentapi.ReplicaStatus
		if err := rows.Scan(&r.ApplicationName, &r.State, &r.SyncState, &r.SentLSN, &r.ReplayLSN, &r.LagBytes); err != nil {
			st.Error = "reading replication: " + err.Error()
			break
		}
		st.Replicas = append(st.Replicas, r)
	}
	rows.Close()
	if st.Slots, err = listSlots(ctx, conn); err != nil {
		st.Error = "querying replication slots: " + err.Error()
	}
	if st.OldestWALLSN, st.WALSegmentSize, err = oldestWAL(ctx, conn); err != nil {
		st.Error = "querying the WAL directory: " + err.Error()
	}
	if err := a.writeCheck(ctx, conn); err != nil {
		st.WriteError = err.Error()
	} else {
		st.Writable = true
	}
	return st
}

// writeCheck commits a transaction that has a transaction ID: its commit record
// is written and flushed (and, with synchronous replication, acknowledged), which
// proves that the primary accepts writes, without any table someone else could
// replace with one that runs code.
func (a *Agent) writeCheck(ctx context.Context, conn *pgx.Conn) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck
	if _, err := tx.Exec(ctx, "SET LOCAL statement_timeout = '2s'"); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "SELECT pg_catalog.pg_current_xact_id()"); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// listSlots returns the operator-managed physical replication slots.
func listSlots(ctx context.Context, conn *pgx.Conn) ([]agentapi.SlotStatus, error) {
	rows, err := conn.Query(ctx, `SELECT slot_name::text, active, coalesce(wal_status, ''), coalesce(restart_lsn::text, '')
		FROM pg_replication_slots WHERE slot_type = 'physical' AND starts_with(slot_name::text, $1) ORDER BY slot_name`, agentapi.SlotPrefix)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (agentapi.SlotStatus, error) {
		var s agentapi.SlotStatus
		err := r.Scan(&s.Name, &s.Active, &s.WALStatus, &s.RestartLSN)
		return s, err
	})
}

// oldestWAL returns the first LSN of the oldest WAL segment in pg_wal and the
// segment size.
func oldestWAL(ctx context.Context, conn *pgx.Conn) (string, uint64, error) {
	var name string
	var segSize int64
	if err := conn.QueryRow(ctx, `SELECT coalesce(min(name), ''), pg_size_bytes(current_setting('wal_segment_size'))
		FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'`).Scan(&name, &segSize); err != nil {
		return "", 0, err
	}
	if name == "" {
		return "", uint64(segSize), nil
	}
	l, err := segmentStartLSN(name, uint64(segSize))
	if err != nil {
		return "", 0, err
	}
	return l.String(), uint64(segSize), nil
}

// syncSlots makes the operator-managed slots exactly names: missing ones are
// created (reserving WAL at once), inactive ones not in names are dropped, and an
// inactive slot that lost its WAL (max_slot_wal_keep_size) is recreated so that
// the re-cloned standby can use it.
func (a *Agent) syncSlots(ctx context.Context, names []string) ([]agentapi.SlotStatus, error) {
	for _, n := range names {
		if !slotNamePattern.MatchString(n) {
			return nil, fmt.Errorf("invalid slot name %q", n)
		}
	}
	conn, err := a.connect(ctx, "postgres")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return nil, err
	}
	if inRecovery {
		return nil, errors.New("slots are managed on the primary only")
	}
	have, err := listSlots(ctx, conn)
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	present := map[string]bool{}
	for _, s := range have {
		switch {
		case s.Active:
			// In use: keep it (an unwanted one is dropped once its standby is gone).
			present[s.Name] = true
		case !want[s.Name]:
			if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", s.Name); err != nil {
				return nil, fmt.Errorf("dropping slot %s: %w", s.Name, err)
			}
			a.log.Info("dropped replication slot", "slot", s.Name)
		case s.WALStatus == "lost":
			if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", s.Name); err != nil {
				return nil, fmt.Errorf("dropping lost slot %s: %w", s.Name, err)
			}
			a.log.Info("dropped a replication slot whose WAL was removed; recreating it", "slot", s.Name)
		default:
			present[s.Name] = true
		}
	}
	for _, n := range names {
		if present[n] {
			continue
		}
		present[n] = true
		if _, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", n); err != nil {
			return nil, fmt.Errorf("creating slot %s: %w", n, err)
		}
		a.log.Info("created replication slot", "slot", n)
	}
	return listSlots(ctx, conn)
}

var slotNamePattern = regexp.MustCompile(`^` + agentapi.SlotPrefix + `[a-z0-9_]{1,58}$`)

// pidFile is postmaster.pid, present while postgres runs.
func (a *Agent) pidFile() string { return filepath.Join(a.cfg.PGData, "postmaster.pid") }

// watchSecrets applies changes of the mounted Secret files without a restart: a new
// application or replication password is set on the running primary (and the
// replication passfile rewritten everywhere), a new agent token replaces the old
// one, which stays accepted for TokenGrace.
func (a *Agent) watchSecrets(ctx context.Context) {
	digest := func(dir, name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return ""
		}
		sum := sha256.Sum256([]byte(strings.TrimSpace(string(b))))
		return hex.EncodeToString(sum[:])
	}
	tlsDigest := a.tlsDigest()
	appPw := digest(a.cfg.CredentialsDir, agentapi.CredentialsPasswordFile)
	replPw := digest(a.cfg.InternalDir, agentapi.InternalReplicationPasswordFile)
	userConf := digest(a.cfg.ConfigDir, agentapi.UserConfigFile)
	t := time.NewTicker(a.cfg.SecretPoll)
	defer t.Stop()
	pending := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if tok, err := a.readSecret(a.cfg.InternalDir, agentapi.InternalAgentTokenFile); err == nil {
			if cur := a.tokens.Load(); string(cur.cur) != tok {
				a.tokens.Store(&agentTokens{cur: []byte(tok), prev: cur.cur, prevUntil: time.Now().Add(a.cfg.TokenGrace)})
				a.log.Info("agent token changed; the previous one is accepted for a grace period", "grace", a.cfg.TokenGrace.String())
			}
		}
		if d := a.tlsDigest(); d != "" && d != tlsDigest {
			// A renewed certificate (or CA): installed and loaded without a
			// restart (PostgreSQL reloads its certificate on SIGHUP).
			if err := a.installTLS(); err != nil {
				a.log.Warn("installing the renewed TLS certificate; will retry", "error", err)
			} else {
				tlsDigest = d
				a.log.Info("TLS certificate changed: installed")
				if !a.view().Exited {
					if err := a.reload(ctx); err != nil {
						a.log.Warn("reloading PostgreSQL for the renewed certificate", "error", err)
					}
				}
			}
		}
		if d := digest(a.cfg.ConfigDir, agentapi.UserConfigFile); a.cfg.ConfigDir != "" && d != userConf {
			// spec.postgresql changed: the supervisor rewrites the
			// configuration files and reloads (or writes them at the next
			// start); what needs a restart shows in the status
			// (pending_restart) and the operator restarts the instances one at
			// a time.
			userConf = d
			select {
			case a.configChanged <- struct{}{}:
			default: // one already pending
			}
		}
		if d := digest(a.cfg.InternalDir, agentapi.InternalReplicationPasswordFile); d != "" && d != replPw {
			replPw = d
			if err := a.writePassfile(); err != nil {
				a.log.Error("rewriting the replication passfile", "error", err)
			}
			a.log.Info("replication password changed")
			pending = true
		}
		if d := digest(a.cfg.CredentialsDir, agentapi.CredentialsPasswordFile); d != "" && d != appPw {
			appPw = d
			a.log.Info("application password changed")
			pending = true
		}
		rt := a.view()
		if pending && rt.Primary && rt.SetUp && !rt.Exited {
			if err := a.ensureRoles(ctx); err != nil {
				a.log.Warn("applying changed passwords; will retry", "error", err)
				continue
			}
			a.log.Info("changed passwords applied to the running primary")
			pending = false
		} else if pending && !rt.Primary {
			pending = false
		}
	}
}

// configStatus reports which user configuration the instance runs, the
// settings waiting for a restart and the lines PostgreSQL refused.
func (a *Agent) configStatus(ctx context.Context, conn *pgx.Conn, st *agentapi.Status) {
	rt := a.view()
	st.ConfigHash, st.ConfigError = rt.ConfigHash, rt.ConfigError
	rows, err := conn.Query(ctx, `SELECT name FROM pg_catalog.pg_settings WHERE pending_restart ORDER BY name`)
	if err == nil {
		st.PendingRestart, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		st.ConfigError = strings.TrimSpace(st.ConfigError + " reading pending_restart: " + err.Error())
	}
	// A setting that waits for a restart is "not applied" too: only the
	// others are errors (an invalid value never becomes pending).
	rows, err = conn.Query(ctx, `SELECT coalesce(f.name, '?') || ' (line ' || coalesce(f.sourceline, 0) || '): ' || f.error
		FROM pg_catalog.pg_file_settings f
		WHERE f.error IS NOT NULL
		  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_settings s WHERE s.name = f.name AND s.pending_restart)
		ORDER BY f.sourcefile, f.sourceline`)
	if err == nil {
		st.ConfigErrors, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		st.ConfigError = strings.TrimSpace(st.ConfigError + " reading pg_file_settings: " + err.Error())
	}
}
