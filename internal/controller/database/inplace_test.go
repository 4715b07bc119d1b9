package database

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
)

// The Database controller hands an in-place point-in-time Restore that the
// Restore controller started (InProgress) to the primary, with the Restore's
// UID as the recovery's ID, and stops asking once the primary reports it;
// the primary's report becomes status.inPlaceRecovery.
func TestAnInProgressInPlaceRestoreIsHandedToThePrimaryAndItsReportIsTheStatus(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, 1, "7311", nil)
	rs := &databasev1.Restore{ObjectMeta: metav1.ObjectMeta{Name: "to-latest", Namespace: ns},
		Spec: databasev1.RestoreSpec{DatabaseRef: corev1.LocalObjectReference{Name: "my-database"},
			PointInTime: &databasev1.RestorePointInTime{RecoveryTarget: databasev1.RecoveryTarget{Latest: true}}}}
	if err := k8s.Create(testCtx, rs); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if slices.ContainsFunc(instances.given(ns), func(s string) bool { return strings.Contains(s, "recover-in-place") }) {
			t.Fatal("a Restore the Restore controller has not started (Pending) was handed to the primary")
		}
		time.Sleep(50 * time.Millisecond)
	}
	rs.Status.Phase = databasev1.RestoreInProgress
	rs.Status.Recovery = &databasev1.RecoveryStatus{Target: "the end of the archive"}
	if err := k8s.Status().Update(testCtx, rs); err != nil {
		t.Fatal(err)
	}
	want := "my-database-0 recover-in-place " + string(rs.UID) + " undo="
	eventually(t, "the recovery handed to the primary", func() string {
		if !slices.Contains(instances.given(ns), want) {
			return fmt.Sprintf("instructions %v", instances.given(ns))
		}
		return ""
	})
	// The primary reports it: replaying, then done.
	keep := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	p := primaryReport("my-database-0", nil)
	p.Status.SystemIdentifier, p.Status.DataVersion = "7311", 15
	p.Status.Recovery = &agentapi.RecoveryResult{ID: string(rs.UID), Target: "the end of the archive", BaseBackup: "b1", Message: "replaying",
		PreviousData: ".previous-" + string(rs.UID), KeepUntil: &keep}
	instances.set(ns, "my-database-0", p)
	eventually(t, "status.inPlaceRecovery InProgress", func() string {
		ip := getDB(t, ns, "my-database").Status.InPlaceRecovery
		if ip == nil || ip.ID != string(rs.UID) || ip.Phase != databasev1.RestoreInProgress || ip.Message != "replaying" {
			return fmt.Sprintf("%+v", ip)
		}
		return ""
	})
	asked := len(instances.given(ns))
	done := *p.Status
	r := *done.Recovery
	r.Done, r.ReachedLSN, r.Timeline = true, "0/9000100", 2
	done.Recovery = &r
	instances.set(ns, "my-database-0", InstanceReport{Status: &done})
	eventually(t, "status.inPlaceRecovery Completed", func() string {
		ip := getDB(t, ns, "my-database").Status.InPlaceRecovery
		if ip == nil || ip.Phase != databasev1.RestoreCompleted || ip.Timeline != 2 || ip.PreviousData != ".previous-"+string(rs.UID) ||
			ip.PreviousDataDropAfter == nil || !ip.PreviousDataDropAfter.Time.Equal(keep) {
			return fmt.Sprintf("%+v", ip)
		}
		return ""
	})
	for _, in := range instances.given(ns)[asked:] {
		if strings.Contains(in, "recover-in-place") {
			t.Errorf("asked again after the primary reported the recovery: %s", in)
		}
	}
}
