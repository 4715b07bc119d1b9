package backup

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/objectstore"
)

// Target is a resolved storage location with how to reach it.
type Target struct {
	Location objectstore.Location
	// S3 is set for s3:// locations.
	S3 *databasev1.S3Config
}

// JobSpec describes a backup, restore or delete Job.
type JobSpec struct {
	Name, Namespace string
	// Action is run, restore or delete.
	Action string
	// Image runs the action: the Database's own image for run and restore (so
	// pg_dump/pg_restore match the server's major version), the operator image for
	// delete.
	Image string
	// AgentImage is the operator image the binary is copied from.
	AgentImage string
	// Database is the Database a run or restore connects to (nil for delete).
	Database *databasev1.Database
	Target   Target
	Key      string
	Owner    metav1.OwnerReference
	Labels   map[string]string
	// Restore is set for a restore Job.
	Restore *RestoreJob
	// ManifestKeySecret is the Secret (the Database's internal one) whose
	// manifest-key signs the manifest of a backup and authenticates it for a
	// restore; only that key is mounted.
	ManifestKeySecret string
	// EncryptionSecret is the user's Secret with the age identity of an
	// encrypted Backup (its identity key only is mounted).
	EncryptionSecret string
	// ClusterDomain is the cluster's DNS domain ("cluster.local" when empty).
	ClusterDomain string
	// Physical makes it a Physical Backup's run or delete Job (Target, Key,
	// ManifestKeySecret and EncryptionSecret are then unused).
	Physical *PhysicalJob
}

// PhysicalJob is what a physical backup Job needs.
type PhysicalJob struct {
	// DatabaseName names the Database whose Secrets are mounted: its WAL
	// archive configuration, its replication password and its CA.
	DatabaseName string
	// SystemID is the Database's system identifier; BaseName the base
	// backup's name in the archive.
	SystemID, BaseName string
	// Host is the instance a run copies: <pod>.<headless Service>.<ns>.svc.<domain>.
	Host string
	// WALTimeout bounds a run's wait for its WAL to be archived.
	WALTimeout time.Duration
}

// ClusterDomain is d, or "cluster.local" when d is empty.
func ClusterDomain(d string) string {
	if d == "" {
		return "cluster.local"
	}
	return d
}

// RestoreJob is what a restore Job needs beyond the artifact: the primary's agent
// (reached with the token from the Database's internal Secret, the only key
// mounted) and how the agent is to restore.
type RestoreJob struct {
	// AgentURL is the primary pod's agent, e.g. http://db-0.db-hl.ns.svc:8000.
	AgentURL string
	// InternalSecret is the Database's internal Secret (its agent-token key),
	// for an agent without TLS.
	InternalSecret string
	// TLSSecret is the Secret with the Job's client certificate and the
	// Database's CA, for an agent that serves HTTPS; the token is not mounted.
	TLSSecret string
	// ID names the scratch database (the Restore's UID, without dashes).
	ID string
	// ExpectSHA256 is the Backup's recorded checksum ("" for a bare location).
	ExpectSHA256 string
	// DatabaseUID is the target Database's; AllowOtherDatabase lets an artifact
	// of another through.
	DatabaseUID        string
	AllowOtherDatabase bool
	// TrustedManifestKeySecret is the Secret with the manifest key of the
	// Database that wrote the artifact (spec.manifestKeySecret);
	// AllowUnauthenticated restores a manifest no key authenticates.
	TrustedManifestKeySecret string
	AllowUnauthenticated     bool
	Jobs                     int
	KeepPreviousSeconds      int64
	// VerifyOnly makes it a restore drill.
	VerifyOnly bool
}

const (
	controllerMount  = "/controller"
	credentialsMount = "/etc/postgres-operator/credentials"
)

// JobName returns a Job name for an object name and a suffix, within 63 characters.
func JobName(name, suffix string) string {
	n := name + "-" + suffix
	if len(n) <= 63 {
		return n
	}
	// Truncated names of two long objects (or the backup and delete Jobs of one)
	// must not meet: keep a hash of the whole name and the suffix.
	sum := sha256.Sum256([]byte(name))
	keep := 63 - len(suffix) - 1 - 9
	return strings.TrimRight(name[:keep], "-.") + "-" + hex.EncodeToString(sum[:])[:8] + "-" + suffix
}

// LabelValue is s when it is a valid label value length, else a truncation with a
// hash of the whole (label values are at most 63 characters; object names may be
// 253).
func LabelValue(s string) string {
	if len(s) <= 63 {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return strings.TrimRight(s[:54], "-._") + "-" + hex.EncodeToString(sum[:])[:8]
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// BuildJob returns the Job. Secrets are mounted as files; nothing secret is in its
// arguments or environment.
func BuildJob(s JobSpec) *batchv1.Job {
	args := []string{controllerMount + "/manager", "backup", s.Action,
		"--location=" + s.Target.Location.Scheme + "://" + s.Target.Location.Bucket,
		// The passfile goes to the container's memory-backed /dev/shm.
		"--key=" + s.Key, "--run-dir=" + agentapi.PodSecretDir}
	mounts := []corev1.VolumeMount{{Name: "controller", MountPath: controllerMount}}
	volumes := []corev1.Volume{{Name: "controller", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	if p := s.Physical; p != nil {
		// Into (or out of) the Database's WAL archive, with its Secret: no
		// storage location, manifest key or Backup encryption of its own.
		args = []string{controllerMount + "/manager", "backup", s.Action, "--method=physical",
			"--system-id=" + p.SystemID, "--base-name=" + p.BaseName, "--wal-archive-dir=" + agentapi.WALArchiveDir,
			"--run-dir=" + agentapi.PodSecretDir, "--s3-ca-bundle=" + controllerMount + "/" + CABundleFile}
		mounts = append(mounts, corev1.VolumeMount{Name: "wal-archive", MountPath: agentapi.WALArchiveDir, ReadOnly: true})
		volumes = append(volumes, corev1.Volume{Name: "wal-archive", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: agentapi.WALArchiveSecretName(p.DatabaseName), DefaultMode: ptr.To[int32](0o440)}}})
		if s.Action == "run" {
			args = append(args, "--host="+p.Host, "--port=5432", "--replication-password-dir="+ReplicationPasswordDir,
				"--ca-file="+DatabaseCADir+"/"+agentapi.TLSCAFile, fmt.Sprintf("--wal-timeout=%s", p.WALTimeout))
			mounts = append(mounts,
				corev1.VolumeMount{Name: "replication", MountPath: ReplicationPasswordDir, ReadOnly: true},
				corev1.VolumeMount{Name: "database-ca", MountPath: DatabaseCADir, ReadOnly: true})
			volumes = append(volumes,
				corev1.Volume{Name: "replication", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
					SecretName: p.DatabaseName + "-internal", DefaultMode: ptr.To[int32](0o440),
					Items: []corev1.KeyToPath{{Key: agentapi.InternalReplicationPasswordFile, Path: agentapi.InternalReplicationPasswordFile}}}}},
				// The CA is there when TLS is on (the Job then verifies the
				// instance's certificate); optional otherwise.
				corev1.Volume{Name: "database-ca", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
					SecretName: p.DatabaseName + "-credentials", DefaultMode: ptr.To[int32](0o440), Optional: ptr.To(true),
					Items: []corev1.KeyToPath{{Key: agentapi.TLSCAFile, Path: agentapi.TLSCAFile}}}}})
		}
	} else if r := s.Restore; r != nil {
		args = append(args, "--agent-url="+r.AgentURL, "--restore-id="+r.ID,
			"--expect-sha256="+r.ExpectSHA256, fmt.Sprintf("--jobs=%d", r.Jobs), fmt.Sprintf("--keep-previous-seconds=%d", r.KeepPreviousSeconds),
			"--database-uid="+r.DatabaseUID, fmt.Sprintf("--allow-other-database=%t", r.AllowOtherDatabase))
		if r.VerifyOnly {
			args = append(args, "--verify-only")
		}
		if r.AllowUnauthenticated {
			args = append(args, "--allow-unauthenticated")
		}
		if r.TrustedManifestKeySecret != "" {
			args = append(args, "--trusted-manifest-key-dir="+TrustedManifestKeyDir)
			mounts = append(mounts, corev1.VolumeMount{Name: "trusted-manifest-key", MountPath: TrustedManifestKeyDir, ReadOnly: true})
			volumes = append(volumes, corev1.Volume{Name: "trusted-manifest-key", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: r.TrustedManifestKeySecret, DefaultMode: ptr.To[int32](0o440),
				Items: []corev1.KeyToPath{{Key: agentapi.InternalManifestKeyFile, Path: agentapi.InternalManifestKeyFile}}}}})
		}
		if r.TLSSecret != "" {
			args = append(args, "--agent-tls-dir="+AgentTLSDir)
			mounts = append(mounts, corev1.VolumeMount{Name: "agent-tls", MountPath: AgentTLSDir, ReadOnly: true})
			volumes = append(volumes, corev1.Volume{Name: "agent-tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: r.TLSSecret, DefaultMode: ptr.To[int32](0o440)}}})
		} else {
			args = append(args, "--agent-token-dir="+AgentTokenDir)
			mounts = append(mounts, corev1.VolumeMount{Name: "agent-token", MountPath: AgentTokenDir, ReadOnly: true})
			volumes = append(volumes, corev1.Volume{Name: "agent-token", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: r.InternalSecret, DefaultMode: ptr.To[int32](0o440),
				Items: []corev1.KeyToPath{{Key: agentapi.InternalAgentTokenFile, Path: agentapi.InternalAgentTokenFile}}}}})
		}
	} else if s.Database != nil {
		args = append(args, fmt.Sprintf("--host=%s.%s.svc.%s", s.Database.Name, s.Database.Namespace, ClusterDomain(s.ClusterDomain)), "--port=5432",
			"--database-uid="+string(s.Database.UID), "--database-object="+s.Database.Namespace+"/"+s.Database.Name,
			"--credentials-dir="+credentialsMount)
		mounts = append(mounts, corev1.VolumeMount{Name: "credentials", MountPath: credentialsMount, ReadOnly: true})
		volumes = append(volumes, corev1.Volume{Name: "credentials", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: s.Database.Name + "-credentials", DefaultMode: ptr.To[int32](0o440)}}})
	}
	if s.ManifestKeySecret != "" && s.Action != "delete" {
		args = append(args, "--manifest-key-dir="+ManifestKeyDir)
		mounts = append(mounts, corev1.VolumeMount{Name: "manifest-key", MountPath: ManifestKeyDir, ReadOnly: true})
		volumes = append(volumes, corev1.Volume{Name: "manifest-key", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: s.ManifestKeySecret, DefaultMode: ptr.To[int32](0o440),
			Items: []corev1.KeyToPath{{Key: agentapi.InternalManifestKeyFile, Path: agentapi.InternalManifestKeyFile}}}}})
	}
	if s.EncryptionSecret != "" && s.Action != "delete" {
		args = append(args, "--encryption-dir="+EncryptionDir)
		mounts = append(mounts, corev1.VolumeMount{Name: "encryption", MountPath: EncryptionDir, ReadOnly: true})
		volumes = append(volumes, corev1.Volume{Name: "encryption", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: s.EncryptionSecret, DefaultMode: ptr.To[int32](0o440),
			Items: []corev1.KeyToPath{{Key: EncryptionIdentityFile, Path: EncryptionIdentityFile}}}}})
	}
	switch s.Target.Location.Scheme {
	case "pvc":
		args = append(args, "--storage-mount="+StorageMount)
		mounts = append(mounts, corev1.VolumeMount{Name: "storage", MountPath: StorageMount})
		volumes = append(volumes, corev1.Volume{Name: "storage", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: s.Target.Location.Bucket}}})
	case "s3":
		if s.Target.S3 != nil {
			args = append(args, "--s3-endpoint="+s.Target.S3.Endpoint, "--s3-region="+s.Target.S3.Region,
				fmt.Sprintf("--s3-path-style=%t", s.Target.S3.ForcePathStyle), "--s3-credentials-dir="+S3CredentialsDir,
				"--s3-ca-bundle="+controllerMount+"/"+CABundleFile)
			if ca := s.Target.S3.CASecret; ca != nil {
				args = append(args, "--s3-ca-file="+S3CADir+"/ca.crt")
				mounts = append(mounts, corev1.VolumeMount{Name: "s3-ca", MountPath: S3CADir, ReadOnly: true})
				volumes = append(volumes, corev1.Volume{Name: "s3-ca", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
					SecretName: ca.Name, DefaultMode: ptr.To[int32](0o440), Items: []corev1.KeyToPath{{Key: orDefault(ca.Key, "ca.crt"), Path: "ca.crt"}}}}})
			}
			mounts = append(mounts, corev1.VolumeMount{Name: "s3", MountPath: S3CredentialsDir, ReadOnly: true})
			volumes = append(volumes, corev1.Volume{Name: "s3", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: s.Target.S3.CredentialsSecret.Name, DefaultMode: ptr.To[int32](0o440)}}})
		}
	}
	restricted := &corev1.SecurityContext{
		AllowPrivilegeEscalation: ptr.To(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		RunAsNonRoot:             ptr.To(true),
		ReadOnlyRootFilesystem:   ptr.To(true),
	}
	mounts = append(mounts, corev1.VolumeMount{Name: "tmp", MountPath: "/tmp"})
	volumes = append(volumes, corev1.Volume{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
		SizeLimit: ptr.To(resource.MustParse("64Mi"))}}})
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, Labels: s.Labels,
			OwnerReferences: []metav1.OwnerReference{s.Owner}},
		Spec: batchv1.JobSpec{
			BackoffLimit:          ptr.To[int32](2),
			ActiveDeadlineSeconds: ptr.To[int64](6 * 3600),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: s.Labels},
				Spec: corev1.PodSpec{
					RestartPolicy:                corev1.RestartPolicyNever,
					AutomountServiceAccountToken: ptr.To(false),
					EnableServiceLinks:           ptr.To(false),
					SecurityContext: &corev1.PodSecurityContext{
						RunAsUser: ptr.To[int64](999), RunAsGroup: ptr.To[int64](999), FSGroup: ptr.To[int64](999),
						RunAsNonRoot:   ptr.To(true),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					InitContainers: []corev1.Container{{
						Name: "bootstrap-agent", Image: s.AgentImage, ImagePullPolicy: corev1.PullIfNotPresent,
						Command:         []string{"/manager", "install-agent", controllerMount + "/manager"},
						VolumeMounts:    []corev1.VolumeMount{{Name: "controller", MountPath: controllerMount}},
						SecurityContext: restricted,
						Resources: corev1.ResourceRequirements{
							Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
							Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")},
						},
					}},
					Containers: []corev1.Container{{
						Name: s.Action, Image: s.Image, ImagePullPolicy: corev1.PullIfNotPresent,
						Command: args, VolumeMounts: mounts, SecurityContext: restricted,
						// pg_dump/pg_restore and the streaming pipeline use
						// ~20 MiB; the page cache of the read-back counts too.
						Resources: corev1.ResourceRequirements{
							Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
							Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
						},
						TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
					}},
					Volumes: volumes,
				},
			},
		},
	}
	if s.Physical != nil {
		// A retry starts only once the failed pod is gone: two pods never
		// stream the same base backup, nor delete what the other wrote.
		job.Spec.PodReplacementPolicy = ptr.To(batchv1.Failed)
	}
	return job
}
