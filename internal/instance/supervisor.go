package instance

import (
	"fmt"
	"time"
)

// What a running instance does next: the supervisor's state machine.
//
// runPostgres starts one lifetime of PostgreSQL and then feeds every event
// (the Lease changed or the fence tick fired, postgres exited, the operator's
// re-clone instruction, the setup worker's progress, a changed configuration,
// the shutdown request, the demotion's steps) to decideRun, a pure function of
// the run state, the event and an observation of the Lease, and carries out
// the action it returns. The supervisor goroutine is the only one that changes
// the agent's running state (runtimeView); everyone else sends it events and
// reads snapshots.
//
//	                 target = me                 holds the Lease
//	  ┌─────────┐ ───────────────▶ ┌────────┐ ───────────────────▶ ┌───────────┐
//	  │ Standby │                  │ Target │                      │ SettingUp │◀── started as
//	  └─────────┘ ◀─────────────── └────────┘                      └───────────┘    the primary
//	   │ upstream changed:           target ≠ me                     │ promoted and roles in place
//	   │ follow (rewrite, reload)                                    ▼
//	   │ re-clone instruction,                                    ┌─────────┐ sync set changed:
//	   │ shutdown: stop                                           │ Primary │ rewrite, reload
//	   ▼                                                          └─────────┘
//	 Stopped ◀── exited by itself (restart after a backoff)         │ target ≠ me, or shutdown
//	   ▲                                                            ▼     while holding the Lease
//	   │ released with the final position  ┌──────────────┐  ┌──────────────────┐
//	   └───────────────────────────────────│ DemotingStop │◀─│ DemotingCheckpoint│
//	                                       └──────────────┘  └──────────────────┘
//	                                          checkpoint done: fast shutdown (bounded
//	                                          by DemoteTimeout)
//
// Rule 3 (never two writable primaries) holds in every writable state
// (SettingUp, Primary, both Demoting steps): the Lease held by another
// instance, not held, or not renewed within the renew deadline fences
// (immediate shutdown), whatever else is under way; DemoteTimeout fences a
// fast shutdown that does not end.

// runState is where the supervisor is in one lifetime of PostgreSQL.
type runState string

const (
	// runStandby: PostgreSQL runs in recovery, streaming from the upstream.
	runStandby runState = "Standby"
	// runTarget: a standby named the target primary waits to hold the Lease.
	runTarget runState = "Target"
	// runSettingUp: this instance holds the Lease as the target; the setup
	// worker promotes it (when in recovery) and puts its roles in place.
	runSettingUp runState = "SettingUp"
	// runPrimary: the primary is promoted and set up.
	runPrimary runState = "Primary"
	// runDemotingCheckpoint: a primary no longer the target (or asked to shut
	// down) checkpoints, so that its shutdown is short.
	runDemotingCheckpoint runState = "DemotingCheckpoint"
	// runDemotingStop: the fast shutdown after the checkpoint; the Lease is
	// released with the final position once PostgreSQL has stopped.
	runDemotingStop runState = "DemotingStop"
	// runStopped: this lifetime ended; Run plans the next one.
	runStopped runState = "Stopped"
)

// writable reports whether PostgreSQL may accept writes in s: the fence
// applies there.
func (s runState) writable() bool {
	switch s {
	case runSettingUp, runPrimary, runDemotingCheckpoint, runDemotingStop:
		return true
	}
	return false
}

// runEvent is what happened.
type runEvent string

const (
	// evLease: the Lease view changed, or the fence tick fired.
	evLease runEvent = "Lease"
	// evExited: the postmaster exited.
	evExited runEvent = "Exited"
	// evShutdown: the agent was asked to stop (SIGTERM).
	evShutdown runEvent = "Shutdown"
	// evReclone: the operator asked this standby to clone the primary again.
	evReclone runEvent = "Reclone"
	// evRecoverInPlace: an in-place recovery is prepared and waits for the
	// primary to stop for its swap.
	evRecoverInPlace runEvent = "RecoverInPlace"
	// evPromoted: the setup worker saw PostgreSQL out of recovery.
	evPromoted runEvent = "Promoted"
	// evSetUp: the setup worker put the roles and databases in place.
	evSetUp runEvent = "SetUp"
	// evConfigChanged: the user configuration (spec.postgresql) changed.
	evConfigChanged runEvent = "ConfigChanged"
	// evCheckpointed: the demotion's checkpoint ended (or timed out).
	evCheckpointed runEvent = "Checkpointed"
	// evDemoteTimeout: the demotion's fast shutdown exceeded DemoteTimeout.
	evDemoteTimeout runEvent = "DemoteTimeout"
)

// runObs is what the supervisor sees of the Lease and of its own running state
// when an event arrives.
type runObs struct {
	// Me is this agent's holder identity (pod/UID); Pod its pod name.
	Me, Pod string
	// Known: the Lease was read; Holder its holder; Held: this agent holds it
	// (and, with standbys, renewed it within the renew deadline).
	Known  bool
	Holder string
	Held   bool
	// Target is the pod the Lease names primary.
	Target string
	// Fencing: this agent holds the Lease of a Database with standbys.
	Fencing bool
	// SinceRenew is the time since this agent's last renewal was sent;
	// Renewed whether it ever renewed the current record.
	SinceRenew    time.Duration
	Renewed       bool
	RenewDeadline time.Duration
	// LastErr is the last error reading or writing the Lease.
	LastErr string
	// Upstream is the pod a standby should stream from now; Following the one
	// it streams from.
	Upstream, Following string
	// WantSync is synchronous_standby_names for the Lease as it is; HaveSync
	// the value last written.
	WantSync, HaveSync string
	// Promoted: PostgreSQL runs out of recovery (this lifetime started as the
	// primary, or the setup worker promoted it).
	Promoted bool
}

// runAction is what the supervisor does.
type runAction string

const (
	actNone runAction = "None"
	// actFence: immediate shutdown (SIGQUIT), state Fenced.
	actFence runAction = "Fence"
	// actDemote: start the demotion (checkpoint; the Lease keeps being renewed).
	actDemote runAction = "Demote"
	// actFastShutdown: SIGINT after the demotion's checkpoint, DemoteTimeout armed.
	actFastShutdown runAction = "FastShutdown"
	// actStop: fast shutdown of a standby (or a primary that does not hold the
	// Lease) and end of this lifetime.
	actStop runAction = "Stop"
	// actStopForReclone: stop, then clone the primary again.
	actStopForReclone runAction = "StopForReclone"
	// actStopForRecovery: a fast shutdown of the primary, keeping the
	// Lease, then the swap of an in-place recovery.
	actStopForRecovery runAction = "StopForRecovery"
	// actRestartLater: PostgreSQL exited by itself; restart after the backoff.
	actRestartLater runAction = "RestartLater"
	// actRelease: the demoted primary stopped: release the Lease with the final
	// position (only a primary that ran has one).
	actRelease runAction = "Release"
	// actEnd: the lifetime ended (PostgreSQL exited during the checkpoint).
	actEnd runAction = "End"
	// actFollow: point the standby at its upstream (rewrite, reload).
	actFollow runAction = "Follow"
	// actWantLease: ask the Lease keeper to take the Lease.
	actWantLease runAction = "WantLease"
	// actSetUp: start the setup worker (promote if in recovery, roles).
	actSetUp runAction = "SetUp"
	// actRewriteSync: rewrite and reload synchronous_standby_names.
	actRewriteSync runAction = "RewriteSync"
	// actApplyConfig: rewrite the configuration for the current role and reload.
	actApplyConfig runAction = "ApplyConfig"
	// actDefer: remember a configuration change until the role is settled.
	actDefer runAction = "Defer"
)

// runDecision is decideRun's answer: the next state, the action, and why (the
// fence's reason, for the log and the status).
type runDecision struct {
	Next   runState
	Action runAction
	Why    string
	// ConfigPending: a configuration change waits for the role to settle.
	ConfigPending bool
}

// fenceReason is why a writable instance must shut down now ("" when it may
// go on), from the Lease alone.
func fenceReason(s runState, o runObs) string {
	demoting := s == runDemotingCheckpoint || s == runDemotingStop
	switch {
	case o.Known && o.Holder != o.Me && !demoting:
		return fmt.Sprintf("the primary Lease is held by %q: another instance may be primary", o.Holder)
	case demoting && (!o.Renewed || (o.Known && o.Holder != o.Me)):
		return "the primary Lease was lost while demoting"
	case !o.Fencing:
		// A single instance has nobody to fail over to: it never fences on a
		// renewal it does not make (it writes the Lease once), demoting or
		// not, so its shutdown stays a clean one.
		return ""
	case demoting && o.SinceRenew > o.RenewDeadline:
		return fmt.Sprintf("the primary Lease was not renewed for %s while demoting (renew deadline %s)",
			o.SinceRenew.Round(time.Millisecond), o.RenewDeadline)
	case !o.Renewed:
		return "this primary does not hold the Lease"
	case o.SinceRenew > o.RenewDeadline:
		return fmt.Sprintf("the primary Lease was not renewed for %s (renew deadline %s): %s",
			o.SinceRenew.Round(time.Millisecond), o.RenewDeadline, orString(o.LastErr, "no answer"))
	}
	return ""
}

// decideRun is the supervisor's transition function: pure, so that every rule
// it carries is a row of a table test.
func decideRun(s runState, pending bool, ev runEvent, o runObs) runDecision {
	stay := func(a runAction) runDecision { return runDecision{Next: s, Action: a, ConfigPending: pending} }
	to := func(n runState, a runAction) runDecision {
		return runDecision{Next: n, Action: a, ConfigPending: pending}
	}
	if s == runStopped {
		return stay(actNone)
	}

	// PostgreSQL ended: how depends on what was under way.
	if ev == evExited {
		switch s {
		case runDemotingStop:
			return to(runStopped, actRelease)
		case runDemotingCheckpoint:
			return to(runStopped, actEnd)
		}
		return to(runStopped, actRestartLater)
	}

	// Rule 3: a writable instance fences first, whatever else is under way.
	if s.writable() && (ev == evLease || ev == evCheckpointed || ev == evShutdown) {
		if why := fenceReason(s, o); why != "" {
			return runDecision{Next: runStopped, Action: actFence, Why: why, ConfigPending: pending}
		}
	}

	switch s {
	case runStandby, runTarget:
		switch ev {
		case evShutdown:
			return to(runStopped, actStop)
		case evReclone:
			return to(runStopped, actStopForReclone)
		case evConfigChanged:
			return stay(actApplyConfig)
		case evLease:
			switch {
			case o.Target == o.Pod && o.Held:
				return to(runSettingUp, actSetUp)
			case o.Target == o.Pod && s == runStandby:
				return to(runTarget, actWantLease)
			case o.Target == o.Pod:
				return stay(actNone)
			case o.Upstream != o.Following:
				return to(runStandby, actFollow)
			}
			return to(runStandby, actNone)
		}
	case runSettingUp, runPrimary:
		switch ev {
		case evShutdown:
			if o.Held {
				return to(runDemotingCheckpoint, actDemote)
			}
			return to(runStopped, actStop)
		case evLease:
			switch {
			case o.Target != o.Pod:
				return to(runDemotingCheckpoint, actDemote)
			case o.WantSync != o.HaveSync && (s == runPrimary || o.Promoted):
				// A standby being promoted keeps its standby configuration
				// (its upstream) until the setup worker writes the primary's
				// just before pg_promote.
				return stay(actRewriteSync)
			}
			return stay(actNone)
		case evConfigChanged:
			if s == runSettingUp {
				return runDecision{Next: s, Action: actDefer, ConfigPending: true}
			}
			return stay(actApplyConfig)
		case evSetUp:
			if pending {
				return runDecision{Next: runPrimary, Action: actApplyConfig}
			}
			return to(runPrimary, actNone)
		case evRecoverInPlace:
			// Only the set-up primary, still the target, that need not
			// fence (the fence rule above covers Lease events only).
			if s == runPrimary && o.Held && o.Target == o.Pod && fenceReason(s, o) == "" {
				return to(runStopped, actStopForRecovery)
			}
			return stay(actNone)
		case evPromoted, evReclone:
			// Promotion is recorded by the caller; a primary never re-clones.
			return stay(actNone)
		}
	case runDemotingCheckpoint:
		if ev == evCheckpointed {
			return to(runDemotingStop, actFastShutdown)
		}
		return stay(actNone)
	case runDemotingStop:
		if ev == evDemoteTimeout {
			return runDecision{Next: runStopped, Action: actFence, ConfigPending: pending,
				Why: "the fast shutdown did not complete within the demote timeout"}
		}
		return stay(actNone)
	}
	return stay(actNone)
}
