package database

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	"github.com/example/postgres-operator/internal/instance"
)

func TestStatefulSetRunsTheAgentWithSecretsAsFilesOnly(t *testing.T) {
	db := testDB(3)
	db.Spec.Storage.StorageClass = ptr.To("fast")
	ac := buildStatefulSet(db, statefulSetInput{Image: "postgres:15", AgentImage: "op:1", ClaimSize: resource.MustParse("1Gi")})
	spec := ac.Spec.Template.Spec

	if len(spec.InitContainers) != 1 || *spec.InitContainers[0].Image != "op:1" {
		t.Fatalf("init container must copy the agent from the operator image")
	}
	c := spec.Containers[0]
	if *c.Image != "postgres:15" || c.Command[0] != agentBinaryPath || c.Command[1] != "instance" {
		t.Errorf("postgres container runs %s %v", *c.Image, c.Command)
	}
	for _, arg := range c.Command {
		if strings.Contains(strings.ToLower(arg), "password") || strings.Contains(arg, "token") {
			t.Errorf("argument %q looks like a secret", arg)
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			t.Errorf("environment variable %s comes from a Secret", *e.Name)
		}
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[*m.Name] = *m.MountPath
	}
	if mounts[volumeCredentials] != instance.DefaultCredentialsDir || mounts[volumeInternal] != instance.DefaultInternalDir {
		t.Errorf("secrets are not mounted where the agent reads them: %v", mounts)
	}
	for name, p := range map[string]string{"startup": *c.StartupProbe.HTTPGet.Path, "readiness": *c.ReadinessProbe.HTTPGet.Path, "liveness": *c.LivenessProbe.HTTPGet.Path} {
		if !strings.HasPrefix(p, "/") || p == instance.PathStatus {
			t.Errorf("%s probe path %q", name, p)
		}
	}
	if *spec.SecurityContext.RunAsUser != postgresUID || !*spec.SecurityContext.RunAsNonRoot {
		t.Errorf("pod security context %+v", spec.SecurityContext)
	}
	// The only API credential in the pod: the per-Database ServiceAccount that may
	// get and update the primary Lease.
	if !*spec.AutomountServiceAccountToken || *spec.ServiceAccountName != "db-instance" {
		t.Errorf("service account %v automount %v", spec.ServiceAccountName, *spec.AutomountServiceAccountToken)
	}
	if *ac.Spec.PodManagementPolicy != appsv1.ParallelPodManagement || *ac.Spec.UpdateStrategy.Type != appsv1.OnDeleteStatefulSetStrategyType {
		t.Errorf("pod management %s, update strategy %s", *ac.Spec.PodManagementPolicy, *ac.Spec.UpdateStrategy.Type)
	}
	if a := spec.Affinity; a == nil || a.PodAntiAffinity == nil || len(a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Errorf("default anti-affinity %+v", spec.Affinity)
	}
	if *c.SecurityContext.AllowPrivilegeEscalation || c.SecurityContext.Capabilities.Drop[0] != "ALL" {
		t.Errorf("container security context %+v", c.SecurityContext)
	}
	claim := ac.Spec.VolumeClaimTemplates[0]
	if *claim.Spec.StorageClassName != "fast" || claim.Spec.Resources.Requests.Storage().String() != "1Gi" {
		t.Errorf("claim template %+v", claim.Spec)
	}
	if *ac.Spec.Replicas != 3 || *ac.Spec.ServiceName != "db-hl" {
		t.Errorf("replicas %d service %s", *ac.Spec.Replicas, *ac.Spec.ServiceName)
	}
}

func TestSpecHashChangesWithTheConfiguration(t *testing.T) {
	db := testDB(1)
	in := statefulSetInput{Image: "postgres:15", AgentImage: "op:1", ClaimSize: resource.MustParse("1Gi")}
	h1, _ := specHash(buildStatefulSet(db, in))
	h2, _ := specHash(buildStatefulSet(db, in))
	in.Image = "postgres:15.18"
	h3, _ := specHash(buildStatefulSet(db, in))
	if h1 != h2 {
		t.Error("the same configuration hashed differently")
	}
	if h1 == h3 {
		t.Error("an image change did not change the hash")
	}
}
