package database

import (
	"context"
	"fmt"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/upgrade"
)

// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch;create;delete
// +kubebuilder:rbac:groups=database.example.com,resources=backups,verbs=get;list;watch;create

const (
	// LabelUpgrade marks the upgrade Jobs (and their pods) with their Database.
	// Not the instance labels: a Job's pod must never be selected by the
	// Database's Services.
	LabelUpgrade = "database.example.com/upgrade"

	containerUpgrade = "upgrade"
	containerCollect = "collect-old"
	volumeOld        = "old"
	oldMountPath     = "/old"
)

// upgradeSteps are the reconcile steps suspended while no instance runs.
var upgradeSuspends = map[string]bool{"failover": true, "recovery": true, "rollout": true, "replication": true}

// reconcileUpgrade observes the upgrade's Jobs, Backup and pods, decides the
// next transition and carries it out. Its decision (the image, 0 replicas)
// is applied by the statefulset step.
func (r *Reconciler) reconcileUpgrade(ctx context.Context, db *databasev1.Database, obs *observation) error {
	sts, err := r.getStatefulSet(ctx, db)
	if err != nil {
		return err
	}
	if sts == nil {
		return nil // a new Database: nothing to upgrade
	}
	running := runningImage(sts)
	in := upgradeInput{
		Now: obs.Now, Generation: db.Generation, Spec: db.Spec.Upgrade,
		WantImage: image(db), RunningImage: running, Prev: db.Status.Upgrade,
		Primary: db.Status.TargetPrimary, PrimaryChanging: db.Status.PrimaryChange != nil,
		SecretSynced: db.Status.SystemIdentifier != "" && obs.SecretSystemID == db.Status.SystemIdentifier,
	}
	in.WantMajor = imageMajor(in.WantImage)
	in.DataMajor = int(db.Status.DataVersion)
	if in.DataMajor == 0 {
		in.DataMajor = imageMajor(running)
	}
	if in.DataMajor == 0 && db.Status.PostgresVersion != "" {
		in.DataMajor = versionMajor(db.Status.PostgresVersion)
	}
	if in.Primary == "" {
		in.Primary = db.Status.CurrentPrimary
	}
	pods, err := r.listPods(ctx, db)
	if err != nil {
		return err
	}
	in.Pods = len(pods)
	switch {
	case db.Status.Phase != databasev1.PhaseReady:
		in.Unhealthy = fmt.Sprintf("the Database is %s", db.Status.Phase)
	case int32(len(pods)) != replicas(db) || db.Status.ReadyReplicas != replicas(db): // #nosec G115 -- small
		in.Unhealthy = fmt.Sprintf("%d of %d instances ready", db.Status.ReadyReplicas, replicas(db))
	case in.Primary == "":
		in.Unhealthy = "no primary is known"
	}
	if p := db.Status.Upgrade; p != nil {
		// The phase says Upgrading while it starts: the checks behind Ready decide.
		in.Started = versionMajor(db.Status.PostgresVersion) == int(p.ToMajor) && db.Status.ReadyReplicas == replicas(db) &&
			meta.IsStatusConditionTrue(db.Status.Conditions, databasev1.ConditionPrimaryAvailable) &&
			meta.IsStatusConditionTrue(db.Status.Conditions, databasev1.ConditionReplicasHealthy)
		if in.Job, in.BusyJobs, err = r.observeUpgradeJobs(ctx, db, p.Job); err != nil {
			return err
		}
		if p.SafetyBackup != "" {
			var b databasev1.Backup
			err := r.Get(ctx, types.NamespacedName{Namespace: db.Namespace, Name: p.SafetyBackup}, &b)
			switch {
			case err == nil:
				in.Backup = &backupObs{Phase: b.Status.Phase, Message: conditionMessage(b.Status.Conditions, databasev1.ConditionReady)}
			case !apierrors.IsNotFound(err):
				return fmt.Errorf("getting the safety-net backup: %w", err)
			}
		}
	}

	d := decideUpgrade(db.Name, in)
	obs.Upgrade = &d
	for _, e := range d.Events {
		logf.FromContext(ctx).Info("major upgrade", "message", e)
		r.event(db, corev1.EventTypeNormal, "MajorUpgrade", "Upgrade", e)
	}
	if d.DeleteJob != "" {
		job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Namespace: db.Namespace, Name: d.DeleteJob}}
		if err := r.Delete(ctx, job, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("stopping upgrade Job %s: %w", d.DeleteJob, err)
		}
	}
	if d.CreateJob != "" && d.Status != nil {
		job := buildUpgradeJob(db, d.Status, d.CreateJob, r.AgentImage)
		if err := r.Create(ctx, job); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating upgrade Job %s: %w", job.Name, err)
		}
	}
	if d.CreateBackup && d.Status != nil && d.Status.SafetyBackup != "" {
		if err := r.Create(ctx, buildSafetyBackup(db, d.Status)); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating the safety-net Backup: %w", err)
		}
	}
	return nil
}

func conditionMessage(conds []metav1.Condition, typ string) string {
	for _, c := range conds {
		if c.Type == typ {
			return c.Message
		}
	}
	return ""
}

// observeUpgradeJobs returns the Job named name (with its pod's result once it
// ended) and how many of the Database's upgrade Job pods still run.
func (r *Reconciler) observeUpgradeJobs(ctx context.Context, db *databasev1.Database, name string) (*jobObs, int, error) {
	var pods corev1.PodList
	if err := r.List(ctx, &pods, client.InNamespace(db.Namespace), client.MatchingLabels{LabelUpgrade: db.Name}); err != nil {
		return nil, 0, fmt.Errorf("listing upgrade pods: %w", err)
	}
	busy := 0
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			busy++
		}
	}
	if name == "" {
		return nil, busy, nil
	}
	var job batchv1.Job
	if err := r.Get(ctx, types.NamespacedName{Namespace: db.Namespace, Name: name}, &job); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, busy, nil
		}
		return nil, busy, fmt.Errorf("getting upgrade Job %s: %w", name, err)
	}
	o := &jobObs{Name: name}
	for _, c := range job.Status.Conditions {
		if (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue {
			o.Done = true
			o.Failure = strings.TrimSpace(c.Reason + ": " + c.Message)
		}
	}
	for _, p := range pods.Items {
		if p.Labels[batchv1.JobNameLabel] != name {
			continue
		}
		// One pod per Job (backoffLimit 0, restartPolicy Never): its end is the
		// Job's, whether or not the Job controller has said so yet.
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			o.Done = true
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.Name != containerUpgrade || cs.State.Terminated == nil || cs.State.Terminated.Message == "" {
				continue
			}
			if res, err := upgrade.Decode(cs.State.Terminated.Message); err == nil {
				o.Result = &res
			}
		}
	}
	return o, busy, nil
}

// buildUpgradeJob returns the Job of one upgrade step (check, run or rollback)
// on the primary's volume: an init container copies the agent binary, a second
// one, in the old image, copies the old PostgreSQL with its libraries into a
// shared volume, and the new image runs `manager upgrade <kind>`.
func buildUpgradeJob(db *databasev1.Database, st *databasev1.UpgradeStatus, kind, agentImage string) *batchv1.Job {
	restricted := &corev1.SecurityContext{
		AllowPrivilegeEscalation: ptr.To(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		RunAsNonRoot:             ptr.To(true),
		ReadOnlyRootFilesystem:   ptr.To(true),
	}
	small := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
	work := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("2Gi")},
	}
	if len(db.Spec.Resources.Limits) > 0 || len(db.Spec.Resources.Requests) > 0 {
		work = *db.Spec.Resources.DeepCopy()
	}
	method := upgrade.MethodLink
	if st.Method == databasev1.UpgradeCopy {
		method = upgrade.MethodCopy
	}
	args := []string{agentBinaryPath, "upgrade", kind, "--pgdata=" + agentapi.DefaultPGData, "--old=" + oldMountPath,
		"--method=" + string(method)}
	if v := db.Spec.Upgrade.RebuildCollationIndexes; v != nil && !*v {
		args = append(args, "--rebuild-collation-indexes=false")
	}
	labels := map[string]string{LabelUpgrade: db.Name, LabelManagedBy: ManagedByValue}
	spec := corev1.PodSpec{
		RestartPolicy:                corev1.RestartPolicyNever,
		EnableServiceLinks:           ptr.To(false),
		AutomountServiceAccountToken: ptr.To(false),
		SecurityContext: &corev1.PodSecurityContext{
			RunAsUser: ptr.To(postgresUID), RunAsGroup: ptr.To(postgresUID), FSGroup: ptr.To(postgresUID),
			FSGroupChangePolicy: ptr.To(corev1.FSGroupChangeOnRootMismatch), RunAsNonRoot: ptr.To(true),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		InitContainers: []corev1.Container{{
			Name: containerBootstrap, Image: agentImage, ImagePullPolicy: corev1.PullIfNotPresent,
			Command:         []string{"/manager", "install-agent", agentBinaryPath},
			SecurityContext: restricted, Resources: small,
			VolumeMounts: []corev1.VolumeMount{{Name: volumeController, MountPath: controllerMountPath}},
		}, {
			Name: containerCollect, Image: st.FromImage, ImagePullPolicy: corev1.PullIfNotPresent,
			Command:         []string{agentBinaryPath, "upgrade", "collect", "--dest=" + oldMountPath},
			SecurityContext: restricted, Resources: small,
			VolumeMounts: []corev1.VolumeMount{{Name: volumeController, MountPath: controllerMountPath}, {Name: volumeOld, MountPath: oldMountPath}},
		}},
		Containers: []corev1.Container{{
			Name: containerUpgrade, Image: st.ToImage, ImagePullPolicy: corev1.PullIfNotPresent,
			Command: args, SecurityContext: restricted, Resources: work,
			Env: []corev1.EnvVar{{Name: "PGDATA", Value: agentapi.DefaultPGData}},
			VolumeMounts: []corev1.VolumeMount{
				{Name: volumeData, MountPath: dataMountPath},
				{Name: volumeController, MountPath: controllerMountPath},
				{Name: volumeOld, MountPath: oldMountPath},
				{Name: volumeTmp, MountPath: "/tmp"},
				{Name: volumeShm, MountPath: "/dev/shm"},
			},
		}},
		Volumes: []corev1.Volume{
			{Name: volumeData, VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{
				ClaimName: volumeData + "-" + st.Primary}}},
			{Name: volumeController, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			{Name: volumeOld, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			{Name: volumeTmp, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: ptr.To(tmpSizeLimit)}}},
			{Name: volumeShm, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
				Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(shmSizeLimit)}}},
		},
		Tolerations:       db.Spec.Tolerations,
		NodeSelector:      db.Spec.NodeSelector,
		ImagePullSecrets:  db.Spec.PodTemplate.ImagePullSecrets,
		PriorityClassName: db.Spec.PodTemplate.PriorityClassName,
	}
	if kind == "check" {
		// The primary runs: the check shares its node (a ReadWriteOnce volume)
		// and reaches the server through the socket on the volume.
		spec.Affinity = &corev1.Affinity{PodAffinity: &corev1.PodAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
				TopologyKey:   corev1.LabelHostname,
				LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"statefulset.kubernetes.io/pod-name": st.Primary}},
			}},
		}}
	}
	var deadline *int64
	if kind == "check" {
		deadline = ptr.To[int64](1800)
	}
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: st.Job, Namespace: db.Namespace, Labels: labels,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(db, databasev1.GroupVersion.WithKind("Database"))}},
		Spec: batchv1.JobSpec{
			// One pod per Job: a retry is a new Job the operator decides on
			// (after the previous pod ended), never two on one volume.
			BackoffLimit:          ptr.To[int32](0),
			ActiveDeadlineSeconds: deadline,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: withExtra(labels, db.Spec.PodTemplate.Labels), Annotations: db.Spec.PodTemplate.Annotations},
				Spec:       spec,
			},
		},
	}
}

// buildSafetyBackup is the logical Backup an upgrade takes first. It is not
// owned by the Database: the way back outlives it.
func buildSafetyBackup(db *databasev1.Database, st *databasev1.UpgradeStatus) *databasev1.Backup {
	b := &databasev1.Backup{
		ObjectMeta: metav1.ObjectMeta{Name: st.SafetyBackup, Namespace: db.Namespace,
			Labels: map[string]string{LabelUpgrade: db.Name, LabelManagedBy: ManagedByValue}},
		Spec: databasev1.BackupSpec{DatabaseRef: corev1.LocalObjectReference{Name: db.Name}},
	}
	if s := db.Spec.Upgrade.Backup; s != nil {
		b.Spec.StorageLocation = s.StorageLocation
		b.Spec.S3 = s.S3.DeepCopy()
		b.Spec.Encryption = s.Encryption.DeepCopy()
	}
	return b
}
