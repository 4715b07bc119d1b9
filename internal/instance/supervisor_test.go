package instance

import (
	"strings"
	"testing"
	"time"
)

// primaryObs: db-0 holds the Lease of a three-instance Database as the target,
// renewed 1 s ago (renew deadline 10 s), with synchronous_standby_names as
// written.
func primaryObs() runObs {
	return runObs{
		Me: "db-0/u0", Pod: "db-0", Known: true, Holder: "db-0/u0", Held: true, Target: "db-0", Fencing: true,
		SinceRenew: time.Second, Renewed: true, RenewDeadline: 10 * time.Second, Promoted: true,
		WantSync: `ANY 1 ("db-1", "db-2")`, HaveSync: `ANY 1 ("db-1", "db-2")`,
	}
}

// standbyObs: db-1 streams from db-0, which holds the Lease as the target.
func standbyObs() runObs {
	return runObs{
		Me: "db-1/u1", Pod: "db-1", Known: true, Holder: "db-0/u0", Target: "db-0",
		RenewDeadline: 10 * time.Second, Upstream: "db-0", Following: "db-0",
	}
}

func withObs(o runObs, f func(*runObs)) runObs { f(&o); return o }

func TestDecideRun(t *testing.T) {
	tests := []struct {
		name    string
		state   runState
		pending bool
		ev      runEvent
		obs     runObs
		next    runState
		action  runAction
		// why: a substring of the fence's reason.
		why         string
		wantPending bool
	}{
		// A standby follows the Lease.
		{name: "a standby streaming from the target does nothing", state: runStandby, ev: evLease, obs: standbyObs(), next: runStandby, action: actNone},
		{name: "a standby whose upstream changed follows the new one", state: runStandby, ev: evLease,
			obs: withObs(standbyObs(), func(o *runObs) { o.Target, o.Upstream = "db-2", "db-2" }), next: runStandby, action: actFollow},
		{name: "a standby stops streaming once the old primary released the Lease during a failover", state: runStandby, ev: evLease,
			obs: withObs(standbyObs(), func(o *runObs) { o.Target, o.Holder, o.Upstream = "", "", "" }), next: runStandby, action: actFollow},
		{name: "a standby named the target asks for the Lease and keeps streaming", state: runStandby, ev: evLease,
			obs: withObs(standbyObs(), func(o *runObs) { o.Target = "db-1" }), next: runTarget, action: actWantLease},
		{name: "the target waits while the old primary holds the Lease", state: runTarget, ev: evLease,
			obs: withObs(standbyObs(), func(o *runObs) { o.Target = "db-1" }), next: runTarget, action: actNone},
		{name: "the target that holds the Lease sets up (promotes)", state: runTarget, ev: evLease,
			obs: withObs(standbyObs(), func(o *runObs) { o.Target, o.Holder, o.Held = "db-1", "db-1/u1", true }), next: runSettingUp, action: actSetUp},
		{name: "a standby named the target that already holds the Lease promotes at once", state: runStandby, ev: evLease,
			obs: withObs(standbyObs(), func(o *runObs) { o.Target, o.Holder, o.Held = "db-1", "db-1/u1", true }), next: runSettingUp, action: actSetUp},
		{name: "a target that is no longer the target follows the new one", state: runTarget, ev: evLease,
			obs: withObs(standbyObs(), func(o *runObs) { o.Target, o.Upstream = "db-2", "db-2" }), next: runStandby, action: actFollow},
		{name: "a standby re-clones on the operator's instruction", state: runStandby, ev: evReclone, obs: standbyObs(), next: runStopped, action: actStopForReclone},
		{name: "a standby stops fast on SIGTERM", state: runStandby, ev: evShutdown, obs: standbyObs(), next: runStopped, action: actStop},
		{name: "a standby applies a changed configuration at once", state: runStandby, ev: evConfigChanged, obs: standbyObs(), next: runStandby, action: actApplyConfig},
		{name: "a standby whose postgres exited restarts it after the backoff", state: runStandby, ev: evExited, obs: standbyObs(), next: runStopped, action: actRestartLater},
		{name: "a standby never fences (it cannot write)", state: runStandby, ev: evLease,
			obs: withObs(standbyObs(), func(o *runObs) { o.Known, o.LastErr = true, "timeout" }), next: runStandby, action: actNone},

		// Rule 3: a writable instance fences first.
		{name: "a primary renewed within the deadline goes on", state: runPrimary, ev: evLease, obs: primaryObs(), next: runPrimary, action: actNone},
		{name: "a primary whose renewal is older than the renew deadline fences", state: runPrimary, ev: evLease,
			obs:  withObs(primaryObs(), func(o *runObs) { o.SinceRenew, o.LastErr = 11*time.Second, "connection refused" }),
			next: runStopped, action: actFence, why: "not renewed for 11s (renew deadline 10s): connection refused"},
		{name: "a primary whose Lease another instance holds fences, even without fencing", state: runPrimary, ev: evLease,
			obs:  withObs(primaryObs(), func(o *runObs) { o.Holder, o.Held, o.Fencing, o.Renewed = "db-1/u1", false, false, false }),
			next: runStopped, action: actFence, why: `held by "db-1/u1"`},
		{name: "a primary that no longer holds the Lease fences", state: runPrimary, ev: evLease,
			obs: withObs(primaryObs(), func(o *runObs) { o.Renewed = false }), next: runStopped, action: actFence, why: "does not hold"},
		{name: "a single instance never fences on a missed renewal (nobody to fail over to)", state: runPrimary, ev: evLease,
			obs: withObs(primaryObs(), func(o *runObs) { o.Fencing, o.SinceRenew = false, time.Hour }), next: runPrimary, action: actNone},
		{name: "a primary being set up fences on a missed renewal too", state: runSettingUp, ev: evLease,
			obs: withObs(primaryObs(), func(o *runObs) { o.SinceRenew = 12 * time.Second }), next: runStopped, action: actFence, why: "not renewed"},
		{name: "a shutdown request of a primary that lost the Lease fences rather than demotes", state: runPrimary, ev: evShutdown,
			obs: withObs(primaryObs(), func(o *runObs) { o.SinceRenew = 12 * time.Second }), next: runStopped, action: actFence, why: "not renewed"},
		{name: "the fence holds during the demotion's checkpoint", state: runDemotingCheckpoint, ev: evLease,
			obs: withObs(primaryObs(), func(o *runObs) { o.Target, o.SinceRenew = "db-1", 11*time.Second }), next: runStopped, action: actFence, why: "while demoting"},
		{name: "the fence holds during the demotion's fast shutdown", state: runDemotingStop, ev: evLease,
			obs: withObs(primaryObs(), func(o *runObs) { o.Target, o.Renewed = "db-1", false }), next: runStopped, action: actFence, why: "lost while demoting"},
		{name: "a single instance's shutdown stays clean: it writes the Lease once, so a stale renewal is no reason to fence", state: runDemotingStop, ev: evLease,
			obs: withObs(primaryObs(), func(o *runObs) { o.Fencing, o.SinceRenew = false, time.Hour }), next: runDemotingStop, action: actNone},
		{name: "a single instance's demotion fences when another instance holds the Lease", state: runDemotingCheckpoint, ev: evLease,
			obs: withObs(primaryObs(), func(o *runObs) { o.Fencing, o.Holder, o.Renewed = false, "db-1/u1", false }), next: runStopped, action: actFence, why: "lost while demoting"},
		{name: "a fast shutdown that outlasts DemoteTimeout fences", state: runDemotingStop, ev: evDemoteTimeout, obs: primaryObs(),
			next: runStopped, action: actFence, why: "did not complete"},
		{name: "a checkpoint that ends after the renew deadline fences instead of a fast shutdown", state: runDemotingCheckpoint, ev: evCheckpointed,
			obs: withObs(primaryObs(), func(o *runObs) { o.Target, o.SinceRenew = "db-1", 11*time.Second }), next: runStopped, action: actFence},

		// The demotion.
		{name: "a primary that is no longer the target demotes", state: runPrimary, ev: evLease,
			obs: withObs(primaryObs(), func(o *runObs) { o.Target = "db-1" }), next: runDemotingCheckpoint, action: actDemote},
		{name: "a primary still setting up demotes when the target moves", state: runSettingUp, ev: evLease,
			obs: withObs(primaryObs(), func(o *runObs) { o.Target, o.Promoted = "db-1", false }), next: runDemotingCheckpoint, action: actDemote},
		{name: "a primary holding the Lease demotes on SIGTERM (releases it with its final position)", state: runPrimary, ev: evShutdown,
			obs: primaryObs(), next: runDemotingCheckpoint, action: actDemote},
		{name: "a single instance not holding the Lease stops fast on SIGTERM", state: runPrimary, ev: evShutdown,
			obs: withObs(primaryObs(), func(o *runObs) { o.Held, o.Fencing = false, false }), next: runStopped, action: actStop},
		{name: "after the checkpoint the demotion shuts down fast", state: runDemotingCheckpoint, ev: evCheckpointed,
			obs: withObs(primaryObs(), func(o *runObs) { o.Target = "db-1" }), next: runDemotingStop, action: actFastShutdown},
		{name: "the demoted primary releases the Lease once PostgreSQL stopped", state: runDemotingStop, ev: evExited, obs: primaryObs(), next: runStopped, action: actRelease},
		{name: "postgres exiting during the checkpoint ends the lifetime without a release", state: runDemotingCheckpoint, ev: evExited, obs: primaryObs(), next: runStopped, action: actEnd},
		{name: "a second SIGTERM during a demotion changes nothing", state: runDemotingStop, ev: evShutdown,
			obs: withObs(primaryObs(), func(o *runObs) { o.Target = "db-1" }), next: runDemotingStop, action: actNone},
		{name: "a re-clone instruction never stops a primary", state: runPrimary, ev: evReclone, obs: primaryObs(), next: runPrimary, action: actNone},
		// An in-place recovery: only a set-up primary that holds the Lease
		// stops for the swap, and keeps the Lease (no demotion, no release).
		{name: "a primary holding the Lease stops for an in-place recovery's swap", state: runPrimary, ev: evRecoverInPlace, obs: primaryObs(), next: runStopped, action: actStopForRecovery},
		{name: "a primary that lost the Lease never swaps", state: runPrimary, ev: evRecoverInPlace,
			obs: withObs(primaryObs(), func(o *runObs) { o.Held = false }), next: runPrimary, action: actNone},
		{name: "a primary no longer the target does not swap (a switchover demotes it)", state: runPrimary, ev: evRecoverInPlace,
			obs: withObs(primaryObs(), func(o *runObs) { o.Target = "db-1" }), next: runPrimary, action: actNone},
		{name: "a primary past its renew deadline does not swap (it fences on the next tick)", state: runPrimary, ev: evRecoverInPlace,
			obs: withObs(primaryObs(), func(o *runObs) { o.SinceRenew = 11 * time.Second }), next: runPrimary, action: actNone},
		{name: "a primary still setting up does not swap", state: runSettingUp, ev: evRecoverInPlace, obs: primaryObs(), next: runSettingUp, action: actNone},
		{name: "a standby never swaps", state: runStandby, ev: evRecoverInPlace, obs: standbyObs(), next: runStandby, action: actNone},
		{name: "a demoting primary never swaps", state: runDemotingCheckpoint, ev: evRecoverInPlace, obs: primaryObs(), next: runDemotingCheckpoint, action: actNone},

		// Rule 2: synchronous replication belongs to whoever is primary.
		{name: "a primary rewrites synchronous_standby_names when the Lease's set changes", state: runPrimary, ev: evLease,
			obs: withObs(primaryObs(), func(o *runObs) { o.WantSync = `ANY 2 ("db-1", "db-2")` }), next: runPrimary, action: actRewriteSync},
		{name: "a promoting standby keeps its upstream until promoted: no rewrite before", state: runSettingUp, ev: evLease,
			obs: withObs(primaryObs(), func(o *runObs) { o.Promoted, o.HaveSync = false, "" }), next: runSettingUp, action: actNone},
		{name: "a promoted primary still setting up rewrites a changed set", state: runSettingUp, ev: evLease,
			obs: withObs(primaryObs(), func(o *runObs) { o.HaveSync = "" }), next: runSettingUp, action: actRewriteSync},

		// Setting up, and configuration changes around it.
		{name: "a primary whose roles are in place is the primary", state: runSettingUp, ev: evSetUp, obs: primaryObs(), next: runPrimary, action: actNone},
		{name: "a configuration change waits while the primary sets up", state: runSettingUp, ev: evConfigChanged, obs: primaryObs(),
			next: runSettingUp, action: actDefer, wantPending: true},
		{name: "a configuration change that waited is applied once set up", state: runSettingUp, pending: true, ev: evSetUp, obs: primaryObs(),
			next: runPrimary, action: actApplyConfig},
		{name: "a primary applies a changed configuration at once", state: runPrimary, ev: evConfigChanged, obs: primaryObs(), next: runPrimary, action: actApplyConfig},
		{name: "a primary whose postgres crashed restarts it in place", state: runPrimary, ev: evExited, obs: primaryObs(), next: runStopped, action: actRestartLater},
		{name: "a stopped lifetime does nothing more", state: runStopped, ev: evLease, obs: primaryObs(), next: runStopped, action: actNone},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := decideRun(tc.state, tc.pending, tc.ev, tc.obs)
			if d.Next != tc.next || d.Action != tc.action {
				t.Errorf("decideRun(%s, %s) = %s/%s (%s), want %s/%s", tc.state, tc.ev, d.Next, d.Action, d.Why, tc.next, tc.action)
			}
			if tc.why != "" && !strings.Contains(d.Why, tc.why) {
				t.Errorf("why %q, want it to contain %q", d.Why, tc.why)
			}
			if d.Action == actFence && d.Why == "" {
				t.Error("a fence without a reason")
			}
			if d.ConfigPending != tc.wantPending {
				t.Errorf("config pending %v, want %v", d.ConfigPending, tc.wantPending)
			}
		})
	}
}

// TestDecideRunNeverLeavesAWritableStateUnfencedOnAStaleLease enumerates every
// writable state and every event: with the Lease not renewed beyond the renew
// deadline, no decision keeps PostgreSQL writable except PostgreSQL's own exit.
func TestDecideRunNeverLeavesAWritableStateUnfencedOnAStaleLease(t *testing.T) {
	stale := withObs(primaryObs(), func(o *runObs) { o.SinceRenew = 11 * time.Second })
	for _, s := range []runState{runSettingUp, runPrimary, runDemotingCheckpoint, runDemotingStop} {
		for _, ev := range []runEvent{evLease, evShutdown, evCheckpointed} {
			d := decideRun(s, false, ev, stale)
			if d.Action != actFence || d.Next != runStopped {
				t.Errorf("%s on %s with a stale Lease: %s/%s, want a fence", s, ev, d.Next, d.Action)
			}
		}
	}
}

// PostgreSQL's own log is the evidence that a standby diverged (it replayed WAL
// of the old primary that the new primary, promoted by an asynchronous
// failover, never had) or that its WAL is gone: both only a re-clone mends.
// Found by the chaos campaign: such a standby retried streaming forever.
func TestWatchLogLineRecognisesADivergedStandby(t *testing.T) {
	tests := []struct {
		line                 string
		diverged, walMissing bool
	}{
		{"2026-12-07 13:26:53.847 UTC [27] LOG:  new timeline 14 forked off current database system timeline 13 before current recovery point 0/53705B0", true, false},
		// Seen after an undo of an in-place point-in-time restore: the
		// standby had re-cloned onto the restore's timeline 2, which the
		// undo's timeline 3 (branched off timeline 1) does not hold.
		{"2026-12-07 22:30:05.790 UTC [56] LOG:  new timeline 3 is not a child of database system timeline 2", true, false},
		{"2026-12-07 22:30:05.787 UTC [113] FATAL:  could not start WAL streaming: ERROR:  requested timeline 2 is not in this server's history", false, false},
		{"2026-12-07 13:26:53.846 UTC [1258] LOG:  replication terminated by primary server", false, false},
		{"2026-12-07 13:26:53.831 UTC [1258] LOG:  fetching timeline history file for timeline 14 from primary server", false, false},
		{`FATAL:  could not receive data from WAL stream: ERROR:  requested WAL segment 000000010000000000000003 has already been removed`, false, true},
	}
	for _, tc := range tests {
		a := NewAgent(Config{PodName: "db-1"})
		a.watchLogLine(tc.line)
		if a.diverged() != tc.diverged || a.walMissing() != tc.walMissing {
			t.Errorf("%q: diverged %v walMissing %v, want %v %v", tc.line, a.diverged(), a.walMissing(), tc.diverged, tc.walMissing)
		}
	}
	// A clone after the evidence clears it.
	a := NewAgent(Config{PodName: "db-1"})
	a.watchLogLine(tests[0].line)
	a.publish(func(v *runtimeView) { v.ClonedAt = time.Now().Add(time.Second).UnixNano() })
	if a.diverged() {
		t.Error("still diverged after a clone")
	}
}
