package database

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
)

var haNow = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)

// haWorld builds a haInput: db-0 primary holding the Lease, db-1 and db-2
// streaming standbys, all pods ready.
func haWorld() haInput {
	in := haInput{
		Now: haNow, StatefulSet: "db", Replicas: 3, MaxLagBytes: 64 << 20, FencingTimeout: 15 * time.Second, Target: "db-0",
		MaxLagOnFailover: 1 << 20, PromoteTimeout: 2 * time.Minute,
		Lease: leaseObs{Exists: true, Holder: agentapi.LeaseHolder("db-0", "u0"), RenewTime: haNow.Add(-time.Second), Duration: 15 * time.Second},
		Pods:  map[string]podObs{"db-0": {UID: "u0", Ready: true, Updated: true}, "db-1": {UID: "u1", Ready: true, Updated: true}, "db-2": {UID: "u2", Ready: true, Updated: true}},
		Reports: map[string]InstanceReport{
			"db-0": {Status: &agentapi.Status{Pod: "db-0", Running: true, Role: agentapi.RolePrimary, Writable: true, HoldsLease: true, Target: "db-0", Timeline: 1,
				Replicas: []agentapi.ReplicaStatus{{ApplicationName: "db-1", State: "streaming", LagBytes: 10}, {ApplicationName: "db-2", State: "streaming", LagBytes: 500}}}},
			"db-1": {Status: &agentapi.Status{Pod: "db-1", Running: true, Role: agentapi.RoleReplica, Target: "db-0", Timeline: 1, ReceiveLSN: "0/5000000", ReplayLSN: "0/5000000", WALReceiverStatus: "streaming"}},
			"db-2": {Status: &agentapi.Status{Pod: "db-2", Running: true, Role: agentapi.RoleReplica, Target: "db-0", Timeline: 1, ReceiveLSN: "0/4000000", ReplayLSN: "0/4000000", WALReceiverStatus: "streaming"}},
		},
	}
	return in
}

// stopped makes every standby report that it stopped streaming and sees no
// target, as they do once the old primary's Lease expired (it was last renewed
// 20 s ago, beyond the 15 s duration).
func stopped(in haInput) haInput {
	in.Lease.RenewTime = haNow.Add(-20 * time.Second)
	for _, p := range []string{"db-1", "db-2"} {
		if r, ok := in.Reports[p]; ok && r.Status != nil {
			st := *r.Status
			st.WALReceiverStatus, st.Target = "", ""
			in.Reports[p] = InstanceReport{Status: &st}
		}
	}
	return in
}

// fencedWorld: db-0's pod is gone, the standbys stopped streaming (db-1 at
// 0/5000000, db-2 at 0/4000000), the failover is in Fencing: a candidate is
// chosen now.
func fencedWorld() haInput {
	in := stopped(haWorld())
	delete(in.Pods, "db-0")
	delete(in.Reports, "db-0")
	in.Target = ""
	in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-time.Second))
	return in
}

// blockedWorld: the failover is Blocked (the old primary was at 0/6000000, no
// standby within maxLagOnFailover), db-0 is the target again and still gone.
func blockedWorld() haInput {
	in := fencedWorld()
	in.Target = "db-0"
	for _, p := range []string{"db-1", "db-2"} {
		in.Reports[p].Status.Target = "db-0"
	}
	in.Change.Phase, in.Change.PrimaryLSN = databasev1.PrimaryChangeBlocked, "0/6000000"
	return in
}

func change(kind databasev1.PrimaryChangeKind, phase databasev1.PrimaryChangePhase, from, to string, started time.Time) *databasev1.PrimaryChange {
	return &databasev1.PrimaryChange{Kind: kind, Phase: phase, From: from, To: to, StartedAt: metav1.NewTime(started), PhaseSince: metav1.NewTime(started)}
}

func TestDecideHA(t *testing.T) {
	tests := []struct {
		name        string
		in          func() haInput
		wantTarget  string
		wantPhase   databasev1.PrimaryChangePhase // "" for no change in progress
		wantTo      string
		wantDone    databasev1.PrimaryChangePhase
		wantUnlabel []string
		wantLease   string
		wantRefusal string
		wantMessage string
		// wantPrimaryLSN is the old primary's position recorded on the change.
		wantPrimaryLSN string
		// wantForced is "pod:lostBytes" of a forced failover.
		wantForced string
	}{
		{
			name:       "first target is ordinal 0",
			in:         func() haInput { in := haWorld(); in.Target = ""; in.Reports = nil; return in },
			wantTarget: "db-0",
		},
		{
			name: "first target of a Database created before targets were recorded is the running primary",
			in: func() haInput {
				in := haWorld()
				in.Target = ""
				in.Reports["db-0"].Status.Role = agentapi.RoleReplica
				in.Reports["db-2"].Status.Role, in.Reports["db-2"].Status.Writable = agentapi.RolePrimary, true
				return in
			},
			wantTarget: "db-2",
		},
		{
			name:       "a healthy primary: nothing changes",
			in:         haWorld,
			wantTarget: "db-0",
		},
		{
			name: "a primary that is not ready but answers and holds the Lease is not failed",
			in: func() haInput {
				in := haWorld()
				in.Pods["db-0"] = podObs{UID: "u0"}
				return in
			},
			wantTarget: "db-0",
		},
		{
			name: "primary pod deleted: fencing at once, label removed, target cleared",
			in: func() haInput {
				in := haWorld()
				p := in.Pods["db-0"]
				p.Terminating = true
				in.Pods["db-0"] = p
				return in
			},
			wantTarget:  "",
			wantPhase:   databasev1.PrimaryChangeFencing,
			wantUnlabel: []string{"db-0"},
			wantLease:   agentapi.ChangeFailover,
		},
		{
			name: "primary pod gone and recreated with a new UID while the Lease names the old one",
			in: func() haInput {
				in := haWorld()
				in.Pods["db-0"] = podObs{UID: "u0-new"}
				in.Reports["db-0"] = InstanceReport{Status: &agentapi.Status{Pod: "db-0", State: agentapi.StateWaitingForLease}}
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "unreachable and not ready",
			in: func() haInput {
				in := haWorld()
				in.Pods["db-0"] = podObs{UID: "u0"}
				in.Reports["db-0"] = InstanceReport{Err: errors.New("connection refused")}
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "a fenced primary (partitioned from the API server) is failed",
			in: func() haInput {
				in := haWorld()
				in.Reports["db-0"].Status.Fenced, in.Reports["db-0"].Status.HoldsLease = true, false
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "an expired Lease the primary no longer claims is a failure",
			in: func() haInput {
				in := haWorld()
				in.Lease.RenewTime = haNow.Add(-20 * time.Second)
				in.Reports["db-0"].Status.HoldsLease = false
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "a primary whose data is missing waits for the recovery procedure, no failover",
			in: func() haInput {
				in := haWorld()
				in.Pods["db-0"] = podObs{UID: "u0"}
				in.Reports["db-0"] = InstanceReport{Status: &agentapi.Status{Pod: "db-0", State: agentapi.StateDataMissing}}
				return in
			},
			wantTarget: "db-0",
		},
		{
			name: "a single instance never fails over",
			in: func() haInput {
				in := haWorld()
				in.Replicas = 1
				delete(in.Pods, "db-0")
				return in
			},
			wantTarget: "db-0",
		},
		{
			name: "failoverDelay: detected, label removed, target kept",
			in: func() haInput {
				in := haWorld()
				in.FailoverDelay = 30 * time.Second
				delete(in.Pods, "db-0")
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeDetected, wantUnlabel: []string{"db-0"},
		},
		{
			name: "failoverDelay not over yet",
			in: func() haInput {
				in := haWorld()
				in.FailoverDelay = 30 * time.Second
				delete(in.Pods, "db-0")
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeDetected, "db-0", "", haNow.Add(-10*time.Second))
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeDetected, wantUnlabel: []string{"db-0"},
		},
		{
			name: "failoverDelay over: fencing",
			in: func() haInput {
				in := haWorld()
				in.FailoverDelay = 30 * time.Second
				delete(in.Pods, "db-0")
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeDetected, "db-0", "", haNow.Add(-31*time.Second))
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "the primary recovered within the delay: aborted",
			in: func() haInput {
				in := haWorld()
				in.FailoverDelay = 30 * time.Second
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeDetected, "db-0", "", haNow.Add(-10*time.Second))
				return in
			},
			wantTarget: "db-0", wantDone: databasev1.PrimaryChangeAborted,
		},
		{
			name: "fencing waits while standbys still stream",
			in: func() haInput {
				in := haWorld()
				in.Lease.RenewTime = haNow.Add(-20 * time.Second)
				delete(in.Pods, "db-0")
				delete(in.Reports, "db-0")
				in.Target = ""
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-2*time.Second))
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
			wantMessage: "to stop streaming",
		},
		{
			// A graceful deletion: the old primary demotes, renewing its Lease
			// until it releases it with its exact final position; its last
			// renewal's position may miss its last commits.
			name: "fencing waits while the old primary still renews its Lease (demoting)",
			in: func() haInput {
				in := stopped(haWorld())
				in.Lease.RenewTime, in.Lease.PrimaryLSN = haNow.Add(-time.Second), "0/5000000"
				in.Pods["db-0"] = podObs{UID: "u0", Terminating: true}
				in.Reports["db-0"].Status.Writable, in.Reports["db-0"].Status.State = false, agentapi.StateDemoting
				in.Target = ""
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-time.Minute))
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
			wantMessage: "release the Lease with its final WAL position",
		},
		{
			name: "fencing waits while the old primary is still writable: no second primary",
			in: func() haInput {
				in := stopped(haWorld())
				in.Target = ""
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-20*time.Second))
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
			wantMessage: "stop accepting writes",
		},
		{
			name: "after the standbys stopped: the one with the most WAL received is chosen",
			in: func() haInput {
				in := stopped(haWorld())
				delete(in.Pods, "db-0")
				delete(in.Reports, "db-0")
				in.Target = ""
				in.Reports["db-2"].Status.ReceiveLSN = "0/6000000" // db-2 received more, replayed less
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-time.Second))
				return in
			},
			wantTarget: "db-2", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-2", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "a later timeline wins over more WAL on an older one",
			in: func() haInput {
				in := stopped(haWorld())
				delete(in.Pods, "db-0")
				delete(in.Reports, "db-0")
				in.Target = ""
				in.Reports["db-2"].Status.Timeline = 2
				in.Reports["db-1"].Status.ReceiveLSN = "1/0"
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-time.Second))
				return in
			},
			wantTarget: "db-2", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-2", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "synchronous replication: not promoted while too few standbys report to be sure of every acknowledged commit",
			in: func() haInput {
				in := stopped(haWorld())
				delete(in.Pods, "db-0")
				delete(in.Reports, "db-0")
				delete(in.Reports, "db-2") // ANY 1 of 2: the commit may be only on db-2
				in.Target, in.Synchronous = "", 1
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-time.Minute))
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeBlocked,
			wantMessage: "2 are needed",
		},
		{
			name: "synchronous replication: with enough standbys reporting, the most advanced is promoted",
			in: func() haInput {
				in := stopped(haWorld())
				delete(in.Pods, "db-0")
				delete(in.Reports, "db-0")
				in.Target, in.Synchronous = "", 1
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-time.Second))
				return in
			},
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "unanswered standbys are ignored after the fencing timeout",
			in: func() haInput {
				in := stopped(haWorld())
				delete(in.Pods, "db-0")
				delete(in.Reports, "db-0")
				in.Target = ""
				in.Reports["db-2"] = InstanceReport{Status: &agentapi.Status{Pod: "db-2", Running: true, Role: agentapi.RoleReplica, Target: "db-0", WALReceiverStatus: "streaming"}}
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-16*time.Second))
				return in
			},
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			// Was "stays fencing" (target "" forever: the old primary could
			// never start again); rule 4 bounds it.
			name: "no candidate: blocked, the old primary is the target again and resumes when it returns",
			in: func() haInput {
				in := haWorld()
				in.Lease.RenewTime = haNow.Add(-20 * time.Second)
				in.Pods = map[string]podObs{}
				in.Reports = map[string]InstanceReport{}
				in.Target = ""
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-time.Minute))
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeBlocked,
			wantMessage: "no standby of ordinal below 3 reports running",
		},
		{
			name: "promoting waits for the candidate to hold the Lease",
			in: func() haInput {
				in := stopped(haWorld())
				delete(in.Pods, "db-0")
				delete(in.Reports, "db-0")
				in.Target = "db-1"
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangePromoting, "db-0", "db-1", haNow.Add(-5*time.Second))
				return in
			},
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "completed when the candidate reports primary and the Lease names it",
			in: func() haInput {
				in := stopped(haWorld())
				delete(in.Pods, "db-0")
				delete(in.Reports, "db-0")
				in.Target = "db-1"
				in.Lease.Holder = agentapi.LeaseHolder("db-1", "u1")
				in.Reports["db-1"].Status.Role, in.Reports["db-1"].Status.HoldsLease = agentapi.RolePrimary, true
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangePromoting, "db-0", "db-1", haNow.Add(-5*time.Second))
				return in
			},
			wantTarget: "db-1", wantDone: databasev1.PrimaryChangeCompleted, wantUnlabel: []string{"db-0"},
		},
		{
			name: "a candidate that reports primary without the Lease is not done",
			in: func() haInput {
				in := stopped(haWorld())
				delete(in.Pods, "db-0")
				in.Target = "db-1"
				in.Reports["db-1"].Status.Role, in.Reports["db-1"].Status.HoldsLease = agentapi.RolePrimary, true
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangePromoting, "db-0", "db-1", haNow.Add(-5*time.Second))
				return in
			},
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "the candidate disappears: choose again",
			in: func() haInput {
				in := stopped(haWorld())
				delete(in.Pods, "db-0")
				delete(in.Pods, "db-1")
				in.Target = "db-1"
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangePromoting, "db-0", "db-1", haNow.Add(-5*time.Second))
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name:       "switchover by annotation to a streaming standby",
			in:         func() haInput { in := haWorld(); in.SwitchoverTo, in.SwitchoverWhy = "db-2", "annotation"; return in },
			wantTarget: "db-2", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-2", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeSwitchover,
		},
		{
			name:       "switchover auto picks the most advanced standby",
			in:         func() haInput { in := haWorld(); in.SwitchoverTo = databasev1.SwitchoverAuto; return in },
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeSwitchover,
		},
		{
			name: "switchover to a lagging standby is refused",
			in: func() haInput {
				in := haWorld()
				in.Reports["db-0"].Status.Replicas[1].LagBytes = 1 << 30
				in.SwitchoverTo = "db-2"
				return in
			},
			wantTarget: "db-0", wantRefusal: "lags",
		},
		{
			name:       "switchover to the primary itself is refused",
			in:         func() haInput { in := haWorld(); in.SwitchoverTo = "db-0"; return in },
			wantTarget: "db-0", wantRefusal: "already the primary",
		},
		{
			name:       "switchover to a pod that does not exist is refused",
			in:         func() haInput { in := haWorld(); in.SwitchoverTo = "other-1"; return in },
			wantTarget: "db-0", wantRefusal: "not an instance",
		},
		{
			name:       "switchover beyond spec.replicas is refused (scale-down)",
			in:         func() haInput { in := haWorld(); in.Replicas = 2; in.SwitchoverTo = "db-2"; return in },
			wantTarget: "db-0", wantRefusal: "beyond spec.replicas",
		},
		{
			name: "a failure wins over a pending switchover request",
			in: func() haInput {
				in := haWorld()
				delete(in.Pods, "db-0")
				in.SwitchoverTo = "db-1"
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "switchover completes when the target holds the Lease",
			in: func() haInput {
				in := haWorld()
				in.Target = "db-1"
				in.Lease.Holder = agentapi.LeaseHolder("db-1", "u1")
				in.Reports["db-0"].Status.Role, in.Reports["db-0"].Status.Writable = agentapi.RoleReplica, false
				in.Reports["db-1"].Status.Role, in.Reports["db-1"].Status.HoldsLease = agentapi.RolePrimary, true
				in.Change = change(databasev1.PrimaryChangeSwitchover, databasev1.PrimaryChangePromoting, "db-0", "db-1", haNow.Add(-3*time.Second))
				return in
			},
			wantTarget: "db-1", wantDone: databasev1.PrimaryChangeCompleted, wantUnlabel: []string{"db-0"},
		},

		// Rule 1: no acknowledged write is discarded while it can be reached.
		{
			name: "the Lease's primary position is recorded on the change when the failure is detected",
			in: func() haInput {
				in := haWorld()
				in.FailoverDelay = time.Minute
				in.Lease.PrimaryLSN = "0/5080000"
				delete(in.Pods, "db-0")
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeDetected, wantUnlabel: []string{"db-0"}, wantPrimaryLSN: "0/5080000",
		},
		{
			name: "clean shutdown: a standby that did not receive the final position is not promoted: blocked",
			in: func() haInput {
				in := fencedWorld()
				in.Lease.Holder, in.Lease.FinalLSN = "", "0/6000000"
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeBlocked, wantPrimaryLSN: "0/6000000",
			wantMessage: "no standby received the final WAL position 0/6000000",
		},
		{
			name: "clean shutdown: the standby that received the final position is promoted, the one that did not is passed over",
			in: func() haInput {
				in := fencedWorld()
				in.Lease.Holder, in.Lease.FinalLSN = "", "0/4800000"
				return in
			},
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "clean shutdown: a standby exactly at the final position lacks the shutdown checkpoint record",
			in: func() haInput {
				in := fencedWorld()
				in.Lease.Holder, in.Lease.FinalLSN = "", "0/5000000"
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeBlocked,
		},
		{
			name: "crash: a standby within maxLagOnFailover of the Lease's last position is promoted",
			in: func() haInput {
				in := fencedWorld()
				in.Lease.PrimaryLSN = "0/5080000" // db-1 lacks 512 KiB
				return in
			},
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
			wantPrimaryLSN: "0/5080000",
		},
		{
			name: "crash: no standby within maxLagOnFailover: blocked, naming each standby and its lag",
			in: func() haInput {
				in := fencedWorld()
				in.Lease.PrimaryLSN = "0/6000000"
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeBlocked,
			wantMessage: "db-1 (received 0/5000000, lacks 16777216 bytes), db-2 (received 0/4000000, lacks 33554432 bytes)",
		},
		{
			name: "maxLagOnFailover 0: a standby exactly at the last position qualifies",
			in: func() haInput {
				in := fencedWorld()
				in.MaxLagOnFailover = 0
				in.Lease.PrimaryLSN = "0/5000000"
				return in
			},
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "the position recorded on the change holds after a new holder cleared the Lease's",
			in: func() haInput {
				in := fencedWorld()
				in.Change.PrimaryLSN = "0/6000000"
				in.Lease.Holder = agentapi.LeaseHolder("db-2", "u2")
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeBlocked, wantPrimaryLSN: "0/6000000",
		},
		{
			name: "force-failover-to promotes a standby that lacks WAL, recording the bytes given up",
			in: func() haInput {
				in := fencedWorld()
				in.Lease.PrimaryLSN = "0/6000000"
				in.ForceFailoverTo = "db-2"
				return in
			},
			wantTarget: "db-2", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-2", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
			wantForced: "db-2:33554432",
		},
		{
			name: "blocked: the old primary returns with the Lease: aborted, it stays the target",
			in: func() haInput {
				in := blockedWorld()
				in.Pods["db-0"] = podObs{UID: "u0b", Ready: true}
				in.Lease.Holder = agentapi.LeaseHolder("db-0", "u0b")
				in.Reports["db-0"] = InstanceReport{Status: &agentapi.Status{Pod: "db-0", Running: true, Role: agentapi.RolePrimary, Writable: true, HoldsLease: true, Target: "db-0", Timeline: 1}}
				return in
			},
			wantTarget: "db-0", wantDone: databasev1.PrimaryChangeAborted,
		},
		{
			name: "blocked: a standby streaming from the returning old primary: wait",
			in: func() haInput {
				in := blockedWorld()
				in.Reports["db-1"].Status.WALReceiverStatus = "streaming"
				in.ForceFailoverTo = "db-1"
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeBlocked,
		},
		{
			name: "blocked: force-failover-to a standby promotes it",
			in: func() haInput {
				in := blockedWorld()
				in.ForceFailoverTo = "db-1"
				return in
			},
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
			wantForced: "db-1:16777216",
		},
		{
			name: "blocked: force-failover-to a pod that is no candidate is ignored",
			in: func() haInput {
				in := blockedWorld()
				in.ForceFailoverTo = "db-7"
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeBlocked,
		},
		{
			name: "blocked: a candidate that qualifies now (it reports at last) is promoted",
			in: func() haInput {
				in := blockedWorld()
				in.Reports["db-2"].Status.ReceiveLSN = "0/6000000"
				return in
			},
			wantTarget: "db-2", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-2", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},

		{
			name: "a final position released by another pod (a target that never promoted) is not the old primary's",
			in: func() haInput {
				in := fencedWorld()
				in.Change.PrimaryLSN = "0/6000000"
				in.Lease.Holder, in.Lease.FinalLSN, in.Lease.ReleasedBy = "", "0/4000000", "db-1"
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeBlocked, wantPrimaryLSN: "0/6000000",
		},
		{
			name: "the reference never moves backwards, even to a final position",
			in: func() haInput {
				in := fencedWorld()
				in.Change.PrimaryLSN = "0/6000000"
				in.Lease.Holder, in.Lease.FinalLSN, in.Lease.ReleasedBy = "", "0/4800000", "db-0"
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeBlocked, wantPrimaryLSN: "0/6000000",
		},
		{
			name: "a recorded final position stays exact after the Lease lost it",
			in: func() haInput {
				in := fencedWorld()
				in.Change.PrimaryLSN, in.Change.PrimaryLSNIsFinal = "0/5000000", true
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeBlocked, wantMessage: "final WAL position 0/5000000",
		},
		{
			// After an in-place point-in-time restore the standbys are on
			// the old timeline, far past the fork, until they re-clone.
			name: "a standby that diverged from the primary's timeline is never a candidate, however far it received",
			in: func() haInput {
				in := fencedWorld()
				in.Reports["db-1"].Status.ReceiveLSN, in.Reports["db-1"].Status.Diverged = "0/F000000", true
				in.Reports["db-2"].Status.ReceiveLSN = "0/6000000"
				return in
			},
			wantTarget: "db-2", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-2", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "a standby that reports no position never qualifies",
			in: func() haInput {
				in := fencedWorld()
				in.Lease.PrimaryLSN = "0/6000000"
				in.Reports["db-1"].Status.ReceiveLSN, in.Reports["db-1"].Status.ReplayLSN = "", ""
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeBlocked, wantMessage: "db-1 (received nothing, lag unknown)",
		},
		{
			name: "synchronous replication: the most advanced of enough reporting standbys is promoted whatever WAL it lacks",
			in: func() haInput {
				in := fencedWorld()
				in.Synchronous = 1
				in.Lease.PrimaryLSN = "0/9000000"
				return in
			},
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "fencing stops waiting for a demoting old primary after the demotion bound",
			in: func() haInput {
				in := stopped(haWorld())
				in.Lease.RenewTime, in.Lease.PrimaryLSN = haNow.Add(-time.Second), "0/5000000"
				in.Pods["db-0"] = podObs{UID: "u0", Terminating: true}
				in.Reports["db-0"].Status.Writable = false
				in.Target = ""
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-2*time.Minute))
				return in
			},
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
		},
		{
			name: "blocked: the returning old primary took the Lease back: wait for it",
			in: func() haInput {
				in := blockedWorld()
				in.Pods["db-0"] = podObs{UID: "u0b"}
				in.Lease.Holder = agentapi.LeaseHolder("db-0", "u0b")
				in.Reports["db-2"].Status.ReceiveLSN = "0/6000000" // would qualify
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeBlocked,
		},
		{
			name: "blocked: an old primary whose data is missing cannot resume, and the message says so",
			in: func() haInput {
				in := fencedWorld()
				in.Lease.PrimaryLSN = "0/6000000"
				in.Pods["db-0"] = podObs{UID: "u0b"}
				in.Reports["db-0"] = InstanceReport{Status: &agentapi.Status{Pod: "db-0", State: agentapi.StateDataMissing, Message: "the data directory is empty"}}
				return in
			},
			wantTarget: "db-0", wantPhase: databasev1.PrimaryChangeBlocked, wantMessage: "cannot resume: it reports DataMissing",
		},
		{
			name: "switchover: the target disappears before it promoted: aborted, the old primary is the target again",
			in: func() haInput {
				in := haWorld()
				in.Target = "db-1"
				delete(in.Pods, "db-1")
				in.Reports["db-0"].Status.Role, in.Reports["db-0"].Status.Writable, in.Reports["db-0"].Status.Running = "", false, false
				in.Change = change(databasev1.PrimaryChangeSwitchover, databasev1.PrimaryChangePromoting, "db-0", "db-1", haNow.Add(-10*time.Second))
				return in
			},
			wantTarget: "db-0", wantDone: databasev1.PrimaryChangeAborted,
		},

		// Rule 4: every phase is bounded.
		{
			name: "switchover: the target is not primary within the promote timeout: aborted, the old primary is the target again",
			in: func() haInput {
				in := haWorld()
				in.Target = "db-1"
				in.Lease.Holder = agentapi.LeaseHolder("db-1", "u1")
				in.Reports["db-0"].Status.Role, in.Reports["db-0"].Status.Writable, in.Reports["db-0"].Status.Running = "", false, false
				in.Reports["db-1"].Status.Message = "waiting to receive the old primary's WAL up to its final position"
				in.Change = change(databasev1.PrimaryChangeSwitchover, databasev1.PrimaryChangePromoting, "db-0", "db-1", haNow.Add(-3*time.Minute))
				return in
			},
			wantTarget: "db-0", wantDone: databasev1.PrimaryChangeAborted,
		},
		{
			name: "failover: the candidate is not primary within the promote timeout: choose again",
			in: func() haInput {
				in := stopped(haWorld())
				delete(in.Pods, "db-0")
				delete(in.Reports, "db-0")
				in.Target = "db-1"
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangePromoting, "db-0", "db-1", haNow.Add(-3*time.Minute))
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: agentapi.ChangeFailover,
			wantMessage: "was not primary within 2m0s",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in()
			d := decideHA(in)
			if d.Target != tc.wantTarget {
				t.Errorf("target %q, want %q", d.Target, tc.wantTarget)
			}
			switch {
			case tc.wantPhase == "" && d.Change != nil:
				t.Errorf("change in progress %+v, want none", *d.Change)
			case tc.wantPhase != "" && (d.Change == nil || d.Change.Phase != tc.wantPhase):
				t.Errorf("change %+v, want phase %s", d.Change, tc.wantPhase)
			case d.Change != nil && d.Change.To != tc.wantTo:
				t.Errorf("candidate %q, want %q", d.Change.To, tc.wantTo)
			}
			if tc.wantMessage != "" && (d.Change == nil || !strings.Contains(d.Change.Message, tc.wantMessage)) {
				t.Errorf("message %+v, want it to contain %q", d.Change, tc.wantMessage)
			}
			switch {
			case tc.wantDone == "" && d.Finished != nil:
				t.Errorf("finished %+v, want nothing finished", *d.Finished)
			case tc.wantDone != "" && (d.Finished == nil || d.Finished.Phase != tc.wantDone || d.Finished.FinishedAt == nil):
				t.Errorf("finished %+v, want %s", d.Finished, tc.wantDone)
			}
			if strings.Join(d.Unlabel, ",") != strings.Join(tc.wantUnlabel, ",") {
				t.Errorf("unlabel %v, want %v", d.Unlabel, tc.wantUnlabel)
			}
			if d.LeaseChange != tc.wantLease {
				t.Errorf("lease change %q, want %q", d.LeaseChange, tc.wantLease)
			}
			if (tc.wantRefusal == "") != (d.SwitchoverRefused == "") || !strings.Contains(d.SwitchoverRefused, tc.wantRefusal) {
				t.Errorf("switchover refusal %q, want %q", d.SwitchoverRefused, tc.wantRefusal)
			}
			if tc.wantPrimaryLSN != "" && (d.Change == nil || d.Change.PrimaryLSN != tc.wantPrimaryLSN) {
				t.Errorf("change %+v, want primaryLSN %s", d.Change, tc.wantPrimaryLSN)
			}
			forced := ""
			if d.Forced != nil {
				forced = fmt.Sprintf("%s:%d", d.Forced.Pod, d.Forced.LostBytes)
			}
			if forced != tc.wantForced {
				t.Errorf("forced %q, want %q", forced, tc.wantForced)
			}
		})
	}
}

func TestPrimaryChangeEvents(t *testing.T) {
	fencing := change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow)
	promoting := change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangePromoting, "db-0", "db-1", haNow)
	done := change(databasev1.PrimaryChangeSwitchover, databasev1.PrimaryChangeCompleted, "db-0", "db-1", haNow)
	tests := []struct {
		name                   string
		old, cur, finished     *databasev1.PrimaryChange
		wantReasons, wantTypes string
	}{
		{"failover starts: warning", nil, fencing, nil, databasev1.ReasonFailingOver, "Warning"},
		{"same phase again: no event", fencing, fencing, nil, "", ""},
		{"candidate chosen", fencing, promoting, nil, databasev1.ReasonFailingOver, "Warning"},
		{"switchover completed", promoting, nil, done, databasev1.ReasonSwitchoverComplete, "Normal"},
		{"failover blocked: its own reason", fencing, change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeBlocked, "db-0", "", haNow), nil, databasev1.ReasonFailoverBlocked, "Warning"},
		{"blocked, then aborted when the old primary returns", change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeBlocked, "db-0", "", haNow), nil,
			change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeAborted, "db-0", "", haNow), databasev1.ReasonPrimaryChangeAbort, "Normal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var reasons, types []string
			for _, e := range primaryChangeEvents(tc.old, tc.cur, tc.finished) {
				reasons, types = append(reasons, e.Reason), append(types, e.Type)
			}
			if strings.Join(reasons, ",") != tc.wantReasons || strings.Join(types, ",") != tc.wantTypes {
				t.Errorf("events %v %v, want %s %s", reasons, types, tc.wantReasons, tc.wantTypes)
			}
		})
	}
}

func TestDecideRollout(t *testing.T) {
	base := func() rolloutInput {
		return rolloutInput{Replicas: 3, Target: "db-0", PrimaryOK: true,
			Pods:    map[string]podObs{"db-0": {Ready: true}, "db-1": {Ready: true}, "db-2": {Ready: true}},
			Lag:     map[string]int64{"db-1": 100, "db-2": 5000},
			Waiting: map[string]string{}}
	}
	updated := func(in rolloutInput, pods ...string) rolloutInput {
		for _, p := range pods {
			o := in.Pods[p]
			o.Updated = true
			in.Pods[p] = o
		}
		return in
	}
	tests := []struct {
		name       string
		in         func() rolloutInput
		want       rolloutState
		wantDelete string
		wantMsg    string
	}{
		{"everything updated: idle", func() rolloutInput { return updated(base(), "db-0", "db-1", "db-2") }, rolloutIdle, "", ""},
		{"the most lagged standby first", base, rolloutReplaceStandby, "db-2", ""},
		{"then the other standby", func() rolloutInput { return updated(base(), "db-2") }, rolloutReplaceStandby, "db-1", ""},
		{"one at a time: wait for the replaced standby to stream", func() rolloutInput {
			in := updated(base(), "db-2")
			delete(in.Lag, "db-2")
			return in
		}, rolloutWaiting, "", "db-2 is not streaming"},
		{"a new image that does not start stalls with its reason", func() rolloutInput {
			in := updated(base(), "db-2")
			in.Pods["db-2"] = podObs{Updated: true}
			delete(in.Lag, "db-2")
			in.Waiting["db-2"] = "container postgres: ImagePullBackOff: not found"
			return in
		}, rolloutWaiting, "", "ImagePullBackOff"},
		{"reverted image: the broken pod (now old revision) is replaced first", func() rolloutInput {
			in := updated(base(), "db-0", "db-1")
			in.Pods["db-2"] = podObs{}
			delete(in.Lag, "db-2")
			in.Waiting["db-2"] = "container postgres: ImagePullBackOff: not found"
			return in
		}, rolloutReplaceBroken, "db-2", ""},
		{"only the primary is old: switchover", func() rolloutInput { return updated(base(), "db-1", "db-2") }, rolloutSwitchover, "", ""},
		{"no switchover while the standbys are unhealthy", func() rolloutInput {
			in := updated(base(), "db-1", "db-2")
			delete(in.Lag, "db-1")
			return in
		}, rolloutWaiting, "", "db-1 is not streaming"},
		{"after the switchover the old primary is a standby like the others", func() rolloutInput {
			in := updated(base(), "db-1", "db-2")
			in.Target = "db-1"
			in.Lag = map[string]int64{"db-0": 0, "db-2": 0}
			return in
		}, rolloutReplaceStandby, "db-0", ""},
		{"nothing while a change of primary runs", func() rolloutInput { in := base(); in.Changing = true; return in }, rolloutWaiting, "", "change of primary"},
		{"nothing while a pod terminates", func() rolloutInput {
			in := base()
			in.Pods["db-1"] = podObs{Terminating: true}
			return in
		}, rolloutWaiting, "", "db-1"},
		{"upgrade from the previous version: a primary without Lease support is replaced in place last", func() rolloutInput {
			in := updated(base(), "db-1", "db-2")
			in.LegacyPrimary = true
			return in
		}, rolloutReplacePrimary, "db-0", "previous version"},
		{"a single instance is replaced in place", func() rolloutInput {
			return rolloutInput{Replicas: 1, Target: "db-0", PrimaryOK: true, Pods: map[string]podObs{"db-0": {Ready: true}}, Lag: map[string]int64{}}
		}, rolloutReplacePrimary, "db-0", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := decideRollout(tc.in())
			if d.State != tc.want || d.Delete != tc.wantDelete || (d.State == rolloutSwitchover) != d.Switchover {
				t.Errorf("decision %+v, want state %s delete %q", d, tc.want, tc.wantDelete)
			}
			if tc.wantMsg != "" && !strings.Contains(d.Message, tc.wantMsg) {
				t.Errorf("message %q, want %q", d.Message, tc.wantMsg)
			}
		})
	}
}

// A primary started by the previous version's agent (no Lease) keeps its label
// during the operator upgrade; an agent of this version never looks like one.
func TestLegacyPrimaryKeepsItsLabelUntilReplaced(t *testing.T) {
	legacy := &agentapi.Status{Pod: "db-0", Role: agentapi.RolePrimary, Running: true, Writable: true, State: agentapi.StateRunning}
	if !legacyPrimary(legacy) {
		t.Error("a primary reporting no Lease fields is not recognised as the previous version's")
	}
	for name, st := range map[string]*agentapi.Status{
		"current agent holding the Lease": {Role: agentapi.RolePrimary, State: agentapi.StateRunning, Target: "db-0", HoldsLease: true},
		"current agent demoting":          {Role: agentapi.RolePrimary, State: agentapi.StateDemoting},
		"fenced":                          {Role: agentapi.RolePrimary, State: agentapi.StateRunning, Fenced: true},
		"cannot reach the API server":     {Role: agentapi.RolePrimary, State: agentapi.StateRunning, LeaseError: "timeout"},
		"standby":                         {Role: agentapi.RoleReplica, State: agentapi.StateRunning},
	} {
		if legacyPrimary(st) {
			t.Errorf("%s taken for a previous-version primary", name)
		}
	}
}
