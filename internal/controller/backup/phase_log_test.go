package backup

import (
	"context"
	"strings"
	"testing"

	"github.com/go-logr/logr/funcr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	databasev1 "github.com/example/postgres-operator/api/v1"
)

// Every Backup and Restore transition is logged at info level with its reason:
// the spec's check `kubectl logs … | grep -i restore` finds a Restore that ran
// (before, only its events did).
func TestPhaseChangesAreLoggedWithTheirReason(t *testing.T) {
	var lines []string
	ctx := logf.IntoContext(context.Background(), funcr.New(func(prefix, args string) {
		lines = append(lines, prefix+" "+args)
	}, funcr.Options{}))
	conds := []metav1.Condition{{Type: databasev1.ConditionReady, Status: metav1.ConditionFalse, Reason: databasev1.ReasonJobRunning, Message: "Job x is restoring"}}
	phaseEvent(ctx, nil, &databasev1.Restore{}, "Restore", "Pending", "InProgress", conds)
	phaseEvent(ctx, nil, &databasev1.Restore{}, "Restore", "InProgress", "InProgress", conds)
	phaseEvent(ctx, nil, &databasev1.Backup{}, "Backup", "", "Pending", nil)
	if len(lines) != 2 {
		t.Fatalf("%d lines, want one per transition: %q", len(lines), lines)
	}
	for _, want := range []string{`"msg"="restore phase changed"`, `"from"="Pending"`, `"to"="InProgress"`, `"reason"="JobRunning"`, `"message"="Job x is restoring"`} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("%q lacks %s", lines[0], want)
		}
	}
	if !strings.Contains(lines[1], `"msg"="backup phase changed"`) {
		t.Errorf("backup transition: %q", lines[1])
	}
}
