package database

import (
	"errors"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/instance"
)

var haNow = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)

// haWorld builds a haInput: db-0 primary holding the Lease, db-1 and db-2
// streaming standbys, all pods ready.
func haWorld() haInput {
	in := haInput{
		Now: haNow, StatefulSet: "db", Replicas: 3, MaxLagBytes: 64 << 20, FencingTimeout: 15 * time.Second, Target: "db-0",
		Lease: leaseObs{Exists: true, Holder: instance.LeaseHolder("db-0", "u0"), RenewTime: haNow.Add(-time.Second), Duration: 15 * time.Second},
		Pods:  map[string]podObs{"db-0": {UID: "u0", Ready: true, Updated: true}, "db-1": {UID: "u1", Ready: true, Updated: true}, "db-2": {UID: "u2", Ready: true, Updated: true}},
		Reports: map[string]InstanceReport{
			"db-0": {Status: &instance.Status{Pod: "db-0", Running: true, Role: instance.RolePrimary, Writable: true, HoldsLease: true, Target: "db-0", Timeline: 1,
				Replicas: []instance.ReplicaStatus{{ApplicationName: "db-1", State: "streaming", LagBytes: 10}, {ApplicationName: "db-2", State: "streaming", LagBytes: 500}}}},
			"db-1": {Status: &instance.Status{Pod: "db-1", Running: true, Role: instance.RoleReplica, Target: "db-0", Timeline: 1, ReceiveLSN: "0/5000000", ReplayLSN: "0/5000000", WALReceiverStatus: "streaming"}},
			"db-2": {Status: &instance.Status{Pod: "db-2", Running: true, Role: instance.RoleReplica, Target: "db-0", Timeline: 1, ReceiveLSN: "0/4000000", ReplayLSN: "0/4000000", WALReceiverStatus: "streaming"}},
		},
	}
	return in
}

// stopped makes every standby report that it stopped streaming and sees no target.
func stopped(in haInput) haInput {
	for _, p := range []string{"db-1", "db-2"} {
		if r, ok := in.Reports[p]; ok && r.Status != nil {
			st := *r.Status
			st.WALReceiverStatus, st.Target = "", ""
			in.Reports[p] = InstanceReport{Status: &st}
		}
	}
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
				in.Reports["db-0"].Status.Role = instance.RoleReplica
				in.Reports["db-2"].Status.Role, in.Reports["db-2"].Status.Writable = instance.RolePrimary, true
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
			wantLease:   instance.ChangeFailover,
		},
		{
			name: "primary pod gone and recreated with a new UID while the Lease names the old one",
			in: func() haInput {
				in := haWorld()
				in.Pods["db-0"] = podObs{UID: "u0-new"}
				in.Reports["db-0"] = InstanceReport{Status: &instance.Status{Pod: "db-0", State: instance.StateWaitingForLease}}
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
		},
		{
			name: "unreachable and not ready",
			in: func() haInput {
				in := haWorld()
				in.Pods["db-0"] = podObs{UID: "u0"}
				in.Reports["db-0"] = InstanceReport{Err: errors.New("connection refused")}
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
		},
		{
			name: "a fenced primary (partitioned from the API server) is failed",
			in: func() haInput {
				in := haWorld()
				in.Reports["db-0"].Status.Fenced, in.Reports["db-0"].Status.HoldsLease = true, false
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
		},
		{
			name: "an expired Lease the primary no longer claims is a failure",
			in: func() haInput {
				in := haWorld()
				in.Lease.RenewTime = haNow.Add(-20 * time.Second)
				in.Reports["db-0"].Status.HoldsLease = false
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
		},
		{
			name: "a primary whose data is missing waits for the recovery procedure, no failover",
			in: func() haInput {
				in := haWorld()
				in.Pods["db-0"] = podObs{UID: "u0"}
				in.Reports["db-0"] = InstanceReport{Status: &instance.Status{Pod: "db-0", State: instance.StateDataMissing}}
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
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
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
				delete(in.Pods, "db-0")
				delete(in.Reports, "db-0")
				in.Target = ""
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-2*time.Second))
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
			wantMessage: "to stop streaming",
		},
		{
			name: "fencing waits while the old primary is still writable: no second primary",
			in: func() haInput {
				in := stopped(haWorld())
				in.Target = ""
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-20*time.Second))
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
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
			wantTarget: "db-2", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-2", wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
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
			wantTarget: "db-2", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-2", wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
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
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
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
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
		},
		{
			name: "unanswered standbys are ignored after the fencing timeout",
			in: func() haInput {
				in := stopped(haWorld())
				delete(in.Pods, "db-0")
				delete(in.Reports, "db-0")
				in.Target = ""
				in.Reports["db-2"] = InstanceReport{Status: &instance.Status{Pod: "db-2", Running: true, Role: instance.RoleReplica, Target: "db-0", WALReceiverStatus: "streaming"}}
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-16*time.Second))
				return in
			},
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
		},
		{
			name: "no candidate: stays fencing and says why",
			in: func() haInput {
				in := haWorld()
				in.Pods = map[string]podObs{}
				in.Reports = map[string]InstanceReport{}
				in.Target = ""
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangeFencing, "db-0", "", haNow.Add(-time.Minute))
				return in
			},
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
			wantMessage: "No standby can be promoted",
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
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
		},
		{
			name: "completed when the candidate reports primary and the Lease names it",
			in: func() haInput {
				in := stopped(haWorld())
				delete(in.Pods, "db-0")
				delete(in.Reports, "db-0")
				in.Target = "db-1"
				in.Lease.Holder = instance.LeaseHolder("db-1", "u1")
				in.Reports["db-1"].Status.Role, in.Reports["db-1"].Status.HoldsLease = instance.RolePrimary, true
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
				in.Reports["db-1"].Status.Role, in.Reports["db-1"].Status.HoldsLease = instance.RolePrimary, true
				in.Change = change(databasev1.PrimaryChangeFailover, databasev1.PrimaryChangePromoting, "db-0", "db-1", haNow.Add(-5*time.Second))
				return in
			},
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
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
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
		},
		{
			name:       "switchover by annotation to a streaming standby",
			in:         func() haInput { in := haWorld(); in.SwitchoverTo, in.SwitchoverWhy = "db-2", "annotation"; return in },
			wantTarget: "db-2", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-2", wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeSwitchover,
		},
		{
			name:       "switchover auto picks the most advanced standby",
			in:         func() haInput { in := haWorld(); in.SwitchoverTo = databasev1.SwitchoverAuto; return in },
			wantTarget: "db-1", wantPhase: databasev1.PrimaryChangePromoting, wantTo: "db-1", wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeSwitchover,
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
			wantTarget: "", wantPhase: databasev1.PrimaryChangeFencing, wantUnlabel: []string{"db-0"}, wantLease: instance.ChangeFailover,
		},
		{
			name: "switchover completes when the target holds the Lease",
			in: func() haInput {
				in := haWorld()
				in.Target = "db-1"
				in.Lease.Holder = instance.LeaseHolder("db-1", "u1")
				in.Reports["db-0"].Status.Role, in.Reports["db-0"].Status.Writable = instance.RoleReplica, false
				in.Reports["db-1"].Status.Role, in.Reports["db-1"].Status.HoldsLease = instance.RolePrimary, true
				in.Change = change(databasev1.PrimaryChangeSwitchover, databasev1.PrimaryChangePromoting, "db-0", "db-1", haNow.Add(-3*time.Second))
				return in
			},
			wantTarget: "db-1", wantDone: databasev1.PrimaryChangeCompleted, wantUnlabel: []string{"db-0"},
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
	legacy := &instance.Status{Pod: "db-0", Role: instance.RolePrimary, Running: true, Writable: true, State: instance.StateRunning}
	if !legacyPrimary(legacy) {
		t.Error("a primary reporting no Lease fields is not recognised as the previous version's")
	}
	for name, st := range map[string]*instance.Status{
		"current agent holding the Lease": {Role: instance.RolePrimary, State: instance.StateRunning, Target: "db-0", HoldsLease: true},
		"current agent demoting":          {Role: instance.RolePrimary, State: instance.StateDemoting},
		"fenced":                          {Role: instance.RolePrimary, State: instance.StateRunning, Fenced: true},
		"cannot reach the API server":     {Role: instance.RolePrimary, State: instance.StateRunning, LeaseError: "timeout"},
		"standby":                         {Role: instance.RoleReplica, State: instance.StateRunning},
	} {
		if legacyPrimary(st) {
			t.Errorf("%s taken for a previous-version primary", name)
		}
	}
}
