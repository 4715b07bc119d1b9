package backup

import (
	"fmt"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	enginepkg "github.com/example/postgres-operator/internal/backup"
	"github.com/example/postgres-operator/internal/testenv"
)

// stepToSlot moves the shared fake clock to offset past the next */10 slot.
func stepToSlot(offset time.Duration) {
	now := fake.Now()
	next := now.Truncate(10 * time.Minute).Add(10 * time.Minute).Add(offset)
	fake.Step(next.Sub(now))
}

// stepPastSlotAfter moves the shared fake clock 5s past the first */10 slot
// after both t (a schedule's creation, in real time) and the clock's own now.
func stepPastSlotAfter(t time.Time) {
	from := fake.Now()
	if t.After(from) {
		from = t
	}
	next := from.Truncate(10 * time.Minute).Add(10*time.Minute + 5*time.Second)
	fake.Step(next.Sub(fake.Now()))
}

func readyReason(t *testing.T, ns, name string) (string, string) {
	t.Helper()
	c := meta.FindStatusCondition(getBackup(t, ns, name).Status.Conditions, databasev1.ConditionReady)
	if c == nil {
		return "", ""
	}
	return string(c.Status) + "/" + c.Reason, c.Message
}

// TestAScheduleShowsFailedRunsSupersedesStuckOnesAndHonoursItsDeadline: the
// schedule is not Ready while its latest finished run failed (and says why); a
// run that never started does not block later slots; a slot missed by more than
// startingDeadlineSeconds is skipped, not run late.
func TestAScheduleShowsFailedRunsSupersedesStuckOnesAndHonoursItsDeadline(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, strings.Replace(scheduled, "name: nightly", "name: sched", 1))

	// A failing run: the schedule says so.
	stepToSlot(5 * time.Second)
	poke(t, ns, "sched")
	failed := waitRuns(t, ns, "sched", 1)[0]
	job := &batchv1.Job{}
	testenv.Eventually(t, "the run's job", func() string {
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: failed.Name + "-backup"}, job); err != nil {
			return err.Error()
		}
		return ""
	})
	finishJob(t, job, false, resultMessage(nil, "pg_dump failed: out of shared memory"))
	waitBackup(t, ns, failed.Name, databasev1.BackupFailed, "")
	poke(t, ns, "sched")
	testenv.Eventually(t, "schedule not Ready after a failed run", func() string {
		got, msg := readyReason(t, ns, "sched")
		if got != "False/"+databasev1.ReasonLastRunFailed || !strings.Contains(msg, failed.Name) || !strings.Contains(msg, "out of shared memory") {
			return got + " " + msg
		}
		if e := getBackup(t, ns, "sched").Status.Error; !strings.Contains(e, "out of shared memory") {
			return "status.error of the schedule: " + e
		}
		return ""
	})

	// The Database becomes unavailable: the next run stays Pending; the slot
	// after supersedes it.
	readyDatabase(t, ns, "test-db", false)
	stepToSlot(5 * time.Second)
	poke(t, ns, "sched")
	var stuck databasev1.Backup
	testenv.Eventually(t, "a pending run", func() string {
		for _, r := range runs(t, ns, "sched") {
			if r.Name != failed.Name && r.Status.Phase == databasev1.BackupPending {
				stuck = r
				return ""
			}
		}
		return "no pending run"
	})
	stepToSlot(5 * time.Second)
	poke(t, ns, "sched")
	testenv.Eventually(t, "the stuck run replaced", func() string {
		names := []string{}
		replaced := false
		for _, r := range runs(t, ns, "sched") {
			names = append(names, r.Name)
			if r.Name == stuck.Name {
				return "still there: " + strings.Join(names, ",")
			}
			if r.Name != failed.Name {
				replaced = true
			}
		}
		if !replaced {
			return "no new run: " + strings.Join(names, ",")
		}
		return ""
	})

	// The run completes; the schedule is Ready again.
	readyDatabase(t, ns, "test-db", true)
	for _, r := range runs(t, ns, "sched") {
		if r.Name != failed.Name {
			complete(t, r)
		}
	}
	poke(t, ns, "sched")
	testenv.Eventually(t, "schedule Ready again", func() string {
		if got, msg := readyReason(t, ns, "sched"); got != "True/"+databasev1.ReasonScheduled {
			return got + " " + msg
		}
		return ""
	})

	// With a starting deadline, a slot missed by five minutes is skipped.
	b := getBackup(t, ns, "sched")
	patch := client.MergeFrom(b.DeepCopy())
	b.Spec.StartingDeadlineSeconds = ptrTo(int64(60))
	if err := k8s.Patch(testCtx, b, patch); err != nil {
		t.Fatal(err)
	}
	before := len(runs(t, ns, "sched"))
	stepToSlot(5 * time.Minute)
	poke(t, ns, "sched")
	testenv.Eventually(t, "the late slot recorded as scheduled", func() string {
		b := getBackup(t, ns, "sched")
		if b.Status.LastScheduledTime == nil || fake.Now().Sub(b.Status.LastScheduledTime.Time) != 5*time.Minute {
			return fmt.Sprintf("lastScheduledTime %v, now %v", b.Status.LastScheduledTime, fake.Now())
		}
		return ""
	})
	if n := len(runs(t, ns, "sched")); n != before {
		t.Fatalf("a run past its starting deadline was created (%d runs, %d before)", n, before)
	}
	// The next slot, on time, runs.
	stepToSlot(5 * time.Second)
	poke(t, ns, "sched")
	waitRuns(t, ns, "sched", before+1)
	_ = enginepkg.Format
}

func ptrTo[T any](v T) *T { return &v }

// TestRestoreDrillsRunOnTheirScheduleAndReportTheirOutcome: spec.verify starts a
// verify-only restore Job of the newest completed run at each of its slots; a
// Restore of the Database waits for it; the outcome and the measured restore
// time land in status.lastVerification and condition Verified, failures too.
func TestRestoreDrillsRunOnTheirScheduleAndReportTheirOutcome(t *testing.T) {
	ns := newNamespace(t)
	readyDatabase(t, ns, "test-db", true)
	createPVC(t, ns, "mybackups")
	mustApply(t, ns, strings.Replace(strings.Replace(scheduled, "name: nightly", "name: drilled", 1),
		"retention: 2", "retention: 2\n  verify:\n    schedule: \"5-59/10 * * * *\"", 1))
	stepToSlot(5 * time.Second)
	poke(t, ns, "drilled")
	run := waitRuns(t, ns, "drilled", 1)[0]
	complete(t, run)
	poke(t, ns, "drilled")
	if got, _ := verifiedReason(t, ns, "drilled"); got != "False/"+databasev1.ReasonVerificationNotYetRun {
		t.Errorf("Verified before any drill = %s", got)
	}

	// The drill slot, five minutes later.
	fake.Step(5 * time.Minute)
	poke(t, ns, "drilled")
	drill := waitDrill(t, ns, "drilled")
	args := strings.Join(drill.Spec.Template.Spec.Containers[0].Command, " ")
	for _, want := range []string{"backup restore", "--verify-only", "--restore-id=v", "--agent-url=https://test-db-0.test-db-hl." + ns + ".svc.cluster.local:8000",
		"--agent-tls-dir=/etc/postgres-operator/agent-tls", "/" + run.Name + "-"} {
		if !strings.Contains(args, want) {
			t.Errorf("drill job command %q lacks %q", args, want)
		}
	}
	// A Restore of the Database waits for the drill.
	mustApply(t, ns, strings.Replace(testRestore, "name: test-backup", "name: drilled", 1))
	waitRestore(t, ns, databasev1.RestorePending, databasev1.ReasonVerificationInProgress)
	finishJob(t, drill, true, restoreResultMessage(&agentapi.RestoreResult{Database: "app", Jobs: 2, Seconds: 12.5,
		RowCounts: map[string]int64{"public.a": 1, "public.b": 2}}))
	poke(t, ns, "drilled")
	testenv.Eventually(t, "the drill recorded", func() string {
		b := getBackup(t, ns, "drilled")
		v := b.Status.LastVerification
		if v == nil || !v.Succeeded || v.RestoreDuration != "12.5s" || v.Tables != 2 || v.BackupName != run.Name {
			return fmt.Sprintf("lastVerification %+v", v)
		}
		if got, msg := verifiedReason(t, ns, "drilled"); got != "True/"+databasev1.ReasonVerificationSucceeded || !strings.Contains(msg, "all 2 tables match") {
			return got + " " + msg
		}
		return ""
	})
	rs := waitRestore(t, ns, databasev1.RestoreInProgress, databasev1.ReasonJobRunning)
	finishJob(t, getJob(t, ns, "test-restore-restore"), true, restoreResultMessage(&agentapi.RestoreResult{Database: "app"}))
	waitRestore(t, ns, databasev1.RestoreCompleted, databasev1.ReasonCompleted)
	_ = rs

	// The next drill fails: Verified says why.
	stepToSlot(5*time.Minute + 5*time.Second)
	poke(t, ns, "drilled")
	var next *batchv1.Job
	testenv.Eventually(t, "the second drill", func() string {
		j := waitDrill(t, ns, "drilled")
		if j.Name == drill.Name {
			return "still the first drill"
		}
		next = j
		return ""
	})
	finishJob(t, next, false, resultMessage(nil, "restore drill: the restored tables differ from the backup: public.a has 0 rows, the backup 1"))
	poke(t, ns, "drilled")
	testenv.Eventually(t, "the failed drill recorded", func() string {
		got, msg := verifiedReason(t, ns, "drilled")
		if got != "False/"+databasev1.ReasonVerificationFailed || !strings.Contains(msg, "public.a has 0 rows, the backup 1") {
			return got + " " + msg
		}
		return ""
	})
}

func verifiedReason(t *testing.T, ns, name string) (string, string) {
	t.Helper()
	c := meta.FindStatusCondition(getBackup(t, ns, name).Status.Conditions, databasev1.ConditionVerified)
	if c == nil {
		return "", ""
	}
	return string(c.Status) + "/" + c.Reason, c.Message
}

// waitDrill returns the newest drill Job of a schedule.
func waitDrill(t *testing.T, ns, name string) *batchv1.Job {
	t.Helper()
	var newest *batchv1.Job
	testenv.Eventually(t, "a drill job", func() string {
		var jobs batchv1.JobList
		if err := k8s.List(testCtx, &jobs, client.InNamespace(ns), client.MatchingLabels{LabelVerify: name}); err != nil {
			return err.Error()
		}
		for i := range jobs.Items {
			if newest == nil || jobs.Items[i].CreationTimestamp.After(newest.CreationTimestamp.Time) || jobs.Items[i].Name > newest.Name {
				newest = &jobs.Items[i]
			}
		}
		if newest == nil {
			return "none"
		}
		return ""
	})
	return newest
}
