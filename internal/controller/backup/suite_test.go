package backup

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	enginepkg "github.com/example/postgres-operator/internal/backup"
	"github.com/example/postgres-operator/internal/controller/database"
	"github.com/example/postgres-operator/internal/scheme"
	"github.com/example/postgres-operator/internal/testenv"
)

// The suite runs the Backup and Restore controllers against a real kube-apiserver
// (envtest). There is no Job controller or kubelet: tests play them by writing Job
// status and the Job's pod with its termination message. The schedule runs on an
// injected clock.

var (
	k8s     client.Client
	testCtx context.Context
	fake    = clocktesting.NewFakeClock(time.Now())
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapLevel())))
	env, err := testenv.New()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer env.Stop() //nolint:errcheck
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme.New()}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme.New(), Cache: database.CacheOptions(), Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// No default location: Backups must say where they go.
	if err := (&BackupReconciler{Runner{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("backup-controller"), Clock: fake, AgentImage: "operator:test"}}).SetupWithManager(mgr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := (&RestoreReconciler{Runner{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Clock: fake, AgentImage: "operator:test"}}).SetupWithManager(mgr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := testenv.StartManager(mgr)
	testCtx = ctx
	code := m.Run()
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return code
}

func zapLevel() zapcore.Level {
	if os.Getenv("TEST_VERBOSE") != "" {
		return -1
	}
	return 2
}

var nsCount int

func newNamespace(t *testing.T) string {
	t.Helper()
	nsCount++
	ns := fmt.Sprintf("b%d", nsCount)
	if err := k8s.Create(testCtx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	return ns
}

func apply(t *testing.T, ns, manifest string) error {
	t.Helper()
	return testenv.ApplyYAML(testCtx, k8s, ns, manifest)
}

func mustApply(t *testing.T, ns, manifest string) {
	t.Helper()
	if err := apply(t, ns, manifest); err != nil {
		t.Fatal(err)
	}
}

// readyDatabase creates a Database and marks it Ready (its primary available), as
// the Database controller would.
func readyDatabase(t *testing.T, ns, name string, ready bool) {
	t.Helper()
	phase := databasev1.PhaseProvisioning
	if ready {
		phase = databasev1.PhaseReady
	}
	setDatabaseStatus(t, ns, name, phase, ready)
}

// setDatabaseStatus creates a Database and sets its phase and PrimaryAvailable
// condition, as the Database controller would.
func setDatabaseStatus(t *testing.T, ns, name string, phase databasev1.Phase, primaryAvailable bool) {
	t.Helper()
	db := &databasev1.Database{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       databasev1.DatabaseSpec{Image: "postgres:15", DatabaseName: "app", Username: "app", Storage: databasev1.StorageSpec{Size: "1Gi"}},
	}
	if err := k8s.Create(testCtx, db); err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
	testenv.Eventually(t, "database status", func() string {
		if err := k8s.Get(testCtx, client.ObjectKeyFromObject(db), db); err != nil {
			return err.Error()
		}
		db.Status.Ready = phase == databasev1.PhaseReady
		db.Status.Phase = phase
		pa := metav1.ConditionFalse
		if primaryAvailable {
			pa = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&db.Status.Conditions, metav1.Condition{Type: databasev1.ConditionPrimaryAvailable, Status: pa,
			Reason: "Test", Message: "set by the test", ObservedGeneration: db.Generation})
		db.Status.Image = "postgres:15.18"
		db.Status.CurrentPrimary = name + "-0"
		if err := k8s.Status().Update(testCtx, db); err != nil {
			return err.Error()
		}
		return ""
	})
	// The primary pod, as the StatefulSet creates it: its agent serves TLS.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-0", Namespace: ns, Labels: map[string]string{LabelManagedBy: ManagedBy}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: agentapi.ContainerName, Image: "postgres:15.18",
			Command: []string{"/controller/manager", "instance", agentapi.TLSDirArg(agentapi.DefaultTLSDir)}}}},
	}
	if err := k8s.Create(testCtx, pod); err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
}

// artifactKeyOf is the key a Backup's artifact gets under prefix.
func artifactKeyOf(t *testing.T, ns, backup, prefix string) string {
	t.Helper()
	b, db := getBackup(t, ns, backup), &databasev1.Database{}
	if err := k8s.Get(testCtx, client.ObjectKey{Namespace: ns, Name: b.Spec.DatabaseRef.Name}, db); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s/%s/%s/%s/%s-%s.dump.zst", prefix, ns, db.Name, db.UID, b.Name, strings.ReplaceAll(string(b.UID), "-", "")[:8])
}

func createPVC(t *testing.T, ns, name string) {
	t.Helper()
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: *resourceQty("1Gi")}}},
	}
	if err := k8s.Create(testCtx, pvc); err != nil {
		t.Fatal(err)
	}
}

func getBackup(t *testing.T, ns, name string) *databasev1.Backup {
	t.Helper()
	b := &databasev1.Backup{}
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: name}, b); err != nil {
		t.Fatal(err)
	}
	return b
}

func waitBackup(t *testing.T, ns, name string, phase databasev1.BackupPhase, reason string) *databasev1.Backup {
	t.Helper()
	var b *databasev1.Backup
	testenv.Eventually(t, fmt.Sprintf("backup %s %s/%s", name, phase, reason), func() string {
		b = getBackup(t, ns, name)
		c := meta.FindStatusCondition(b.Status.Conditions, databasev1.ConditionReady)
		if b.Status.Phase != phase || (reason != "" && (c == nil || c.Reason != reason)) {
			return fmt.Sprintf("phase %q conditions %+v", b.Status.Phase, b.Status.Conditions)
		}
		return ""
	})
	return b
}

func getJob(t *testing.T, ns, name string) *batchv1.Job {
	t.Helper()
	job := &batchv1.Job{}
	testenv.Eventually(t, "job "+name, func() string {
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: name}, job); err != nil {
			return err.Error()
		}
		return ""
	})
	return job
}

// finishJob plays the Job controller and the kubelet: the pod terminated with
// message, and the Job Complete or Failed.
func finishJob(t *testing.T, job *batchv1.Job, succeeded bool, message string) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: job.Name + "-pod", Namespace: job.Namespace, Labels: map[string]string{
			"batch.kubernetes.io/job-name": job.Name, LabelManagedBy: ManagedBy}},
		Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: "c", Image: "x"}}},
	}
	if err := k8s.Create(testCtx, pod); err != nil {
		t.Fatal(err)
	}
	exit := int32(0)
	if !succeeded {
		exit = 1
	}
	pod.Status.Phase = corev1.PodSucceeded
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "c", Image: "x", ImageID: "x", State: corev1.ContainerState{
		Terminated: &corev1.ContainerStateTerminated{ExitCode: exit, Message: message, FinishedAt: metav1.Now()}}}}
	if err := k8s.Status().Update(testCtx, pod); err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	testenv.Eventually(t, "job status", func() string {
		if err := k8s.Get(testCtx, client.ObjectKeyFromObject(job), job); err != nil {
			return err.Error()
		}
		job.Status.StartTime = &now
		if succeeded {
			job.Status.Succeeded = 1
			job.Status.CompletionTime = &now
			job.Status.Conditions = []batchv1.JobCondition{
				{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now},
				{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now}}
		} else {
			job.Status.Failed = 3
			job.Status.Conditions = []batchv1.JobCondition{
				{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", Message: "Job has reached the specified backoff limit", LastTransitionTime: now},
				{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", Message: "Job has reached the specified backoff limit", LastTransitionTime: now}}
		}
		if err := k8s.Status().Update(testCtx, job); err != nil {
			return err.Error()
		}
		return ""
	})
}

func restoreResultMessage(r *agentapi.RestoreResult) string {
	b, _ := json.Marshal(enginepkg.Result{Restore: r})
	return string(b)
}

func resultMessage(m *enginepkg.Manifest, errMsg string) string {
	b, _ := json.Marshal(enginepkg.Result{Manifest: m, Error: errMsg})
	return string(b)
}
