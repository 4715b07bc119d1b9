package database

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
)

// status.recovery and the Recovered condition of a Database bootstrapped by
// a point-in-time recovery: one row per rule.
func TestDecideRecovered(t *testing.T) {
	at := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	done := &databasev1.RecoveryStatus{BaseBackup: "b", Target: "time x", ReachedLSN: "0/5000000", Timeline: 2}
	for _, tc := range []struct {
		name    string
		obs     *recoveryObs
		primary *agentapi.Status
		prev    *databasev1.RecoveryStatus
		status  metav1.ConditionStatus
		reason  string
		msg     string
	}{
		{"the source cannot be resolved: False with why", &recoveryObs{Reason: databasev1.ReasonRecoverySourceNotFound, Message: "the source Database src does not exist"},
			nil, nil, metav1.ConditionFalse, databasev1.ReasonRecoverySourceNotFound, "src does not exist"},
		{"no report yet: in progress", &recoveryObs{Ready: true}, nil, nil, metav1.ConditionFalse, databasev1.ReasonRecoveryInProgress, "Waiting"},
		{"the agent refuses the target: nothing restored", &recoveryObs{Ready: true},
			&agentapi.Status{Recovery: &agentapi.RecoveryResult{Error: "the target is outside the window: before ..."}}, nil,
			metav1.ConditionFalse, databasev1.ReasonTargetNotRecoverable, "Nothing was restored"},
		{"replaying", &recoveryObs{Ready: true}, &agentapi.Status{Message: "replayed to 0/4000000",
			Recovery: &agentapi.RecoveryResult{BaseBackup: "b", Target: "time x"}}, nil,
			metav1.ConditionFalse, databasev1.ReasonRecoveryInProgress, "replayed to 0/4000000"},
		{"promoted at the target: True with where it ended", &recoveryObs{Ready: true}, &agentapi.Status{
			Recovery: &agentapi.RecoveryResult{Done: true, BaseBackup: "b", Target: "time x", ReachedLSN: "0/5000000", ReachedTime: &at, Timeline: 2}}, nil,
			metav1.ConditionTrue, databasev1.ReasonRecovered, "replay ended at 0/5000000 (last transaction committed at 2026-12-07T12:00:00Z), promoted on timeline 2"},
		{"recorded once: a later failover or a gone source changes nothing", &recoveryObs{Reason: databasev1.ReasonRecoverySourceNotFound, Message: "gone"}, nil, done,
			metav1.ConditionTrue, databasev1.ReasonRecovered, "timeline 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, cs, reason, msg := decideRecovered(tc.obs, tc.primary, tc.prev)
			if cs != tc.status || reason != tc.reason || !strings.Contains(msg, tc.msg) {
				t.Errorf("got %s %s %q, want %s %s containing %q", cs, reason, msg, tc.status, tc.reason, tc.msg)
			}
		})
	}
}

// A time target before the source's window is refused by the operator; the
// window's end is the agent's to check (the status may lag the archive).
func TestCheckTarget(t *testing.T) {
	first, last := metav1.NewTime(time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)), metav1.NewTime(time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC))
	w := &databasev1.WALArchiveStatus{FirstRecoverablePoint: &first, LastRecoverablePoint: &last}
	tm := func(h int) *metav1.Time { v := metav1.NewTime(time.Date(2026, 12, 7, h, 0, 0, 0, time.UTC)); return &v }
	if err := checkTarget(databasev1.RecoveryTarget{Time: tm(9)}, w); err == nil || !strings.Contains(err.Error(), "2026-12-07T10:00:00Z to 2026-12-07T12:00:00Z") {
		t.Errorf("before the window: %v", err)
	}
	for _, ok := range []databasev1.RecoveryTarget{{Time: tm(11)}, {Time: tm(13)}, {Latest: true}, {LSN: "0/1"}} {
		if err := checkTarget(ok, w); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
	if err := checkTarget(databasev1.RecoveryTarget{Time: tm(9)}, nil); err != nil {
		t.Errorf("no known window: %v", err)
	}
}
