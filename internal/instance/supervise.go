package instance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
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
	a.startingPostgres(asPrimary)
	a.lastFatal.Store(nil)
	if asPrimary {
		// A primary follows nobody: evidence of divergence is a standby's.
		_ = os.Remove(filepath.Join(a.cfg.PGData, divergedMarker))
	}
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
	var inPlace *instruction
	defer func() {
		if inPlace != nil && inPlace.reply != nil {
			inPlace.reply <- errors.New("PostgreSQL stopped for another reason")
		}
	}()
	for {
		var ev runEvent
		select {
		case exitErr = <-l.done:
			ev = evExited
		case <-ctxDone:
			ctxDone = nil
			ev = evShutdown
		case in := <-a.instr:
			switch {
			case in.inPlace != nil:
				if !in.inPlace.claim.CompareAndSwap(0, planTaken) {
					continue // its worker gave up waiting
				}
				inPlace = &in
				ev = evRecoverInPlace
			case in.reclone:
				ev = evReclone
			default:
				continue // a recovery is for a primary whose data is missing
			}
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
		if ev == evRecoverInPlace && d.Action != actStopForRecovery {
			inPlace.reply <- fmt.Errorf("not the running primary (%s)", run)
			inPlace = nil
		}

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
		case actStopForRecovery:
			in := inPlace
			inPlace = nil
			in.reply <- nil
			a.setState(agentapi.StateRecovering, "stopping PostgreSQL to swap in the in-place recovery's data directory (the Lease stays held)")
			return in, l.stop()
		case actStopForReclone:
			a.setState(agentapi.StateCloning, "stopping PostgreSQL to re-clone the primary")
			return &instruction{reclone: true}, l.stop()
		case actRestartLater:
			cancelSetup()
			l.restartLater(ctx, exitErr)
			return &instruction{exited: true}, nil
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
// the new one never received (an asynchronous failover gave it up), or is on
// a timeline the primary's history does not hold (a point-in-time restore
// branched off elsewhere), so it can never follow the new timeline.
func (a *Agent) watchLogLine(line string) {
	if i := strings.Index(line, "FATAL:  "); i >= 0 {
		f := strings.TrimSpace(line[i+len("FATAL:  "):])
		a.lastFatal.Store(&f)
	}
	if strings.Contains(line, "has already been removed") || strings.Contains(line, "can no longer get changes from replication slot") ||
		strings.Contains(line, "has been invalidated") {
		a.walMissingAt.Store(time.Now().UnixNano())
	}
	// "new timeline N is not a child of database system timeline M": the
	// primary's history does not hold this standby's timeline at all (an
	// in-place point-in-time restore, or its undo, branched off elsewhere).
	if (strings.Contains(line, "forked off current database system timeline") && strings.Contains(line, "before current recovery point")) ||
		(strings.Contains(line, "is not a child of database system timeline")) {
		a.divergedAt.Store(time.Now().UnixNano())
		// It never heals by itself: the marker keeps it across quiet
		// periods and agent restarts, until the re-clone replaces PGDATA.
		if a.cfg.PGData != "" {
			_ = os.WriteFile(filepath.Join(a.cfg.PGData, divergedMarker), nil, 0o600) // #nosec G306 -- an empty marker
		}
	}
}

// walMissing reports whether the WAL this standby needs was reported gone within
// the last two minutes.
func (a *Agent) walMissing() bool {
	return recentSince(a.walMissingAt.Load(), a.view().ClonedAt)
}

// divergedMarker, in PGDATA, records that this standby diverged from the
// primary's timeline.
const divergedMarker = "pgo-diverged"

// diverged reports whether this standby diverged from the primary's timeline
// (the marker, or the evidence within the last two minutes).
func (a *Agent) diverged() bool {
	if _, err := os.Stat(filepath.Join(a.cfg.PGData, divergedMarker)); err == nil && a.cfg.PGData != "" {
		return true
	}
	return recentSince(a.divergedAt.Load(), a.view().ClonedAt)
}

// recentSince: at (unix nanoseconds) is set, after the last clone, and within
// the last two minutes.
func recentSince(at, clonedAt int64) bool {
	return at != 0 && at > clonedAt && time.Since(time.Unix(0, at)) < 2*time.Minute
}
