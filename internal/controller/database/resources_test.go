package database

import (
	"net/url"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/utils/ptr"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
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
	if mounts[volumeCredentials] != agentapi.DefaultCredentialsDir || mounts[volumeInternal] != agentapi.DefaultInternalDir {
		t.Errorf("secrets are not mounted where the agent reads them: %v", mounts)
	}
	for name, p := range map[string]string{"startup": *c.StartupProbe.HTTPGet.Path, "readiness": *c.ReadinessProbe.HTTPGet.Path, "liveness": *c.LivenessProbe.HTTPGet.Path} {
		if !strings.HasPrefix(p, "/") || p == agentapi.PathStatus {
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

// The credentials Secret speaks every common client's language: a libpq URI for
// the primary and for the standbys, a JDBC URL, a password file, with the
// password escaped where each format needs it.
func TestCredentialsDataHasEveryClientsFormat(t *testing.T) {
	db := testDB(2)
	db.Name, db.Namespace = "orders", "shop"
	db.Spec.Username, db.Spec.DatabaseName = "app", "orders_db"
	pw := `p:w@/?&\x`
	d := credentialsData(db, pw, []byte("CA"), "")
	want := map[string]string{
		"host":     "orders.shop.svc.cluster.local",
		"ro-host":  "orders-ro.shop.svc.cluster.local",
		"port":     "5432",
		"sslmode":  "verify-full",
		"ca.crt":   "CA",
		"uri":      "postgresql://app:p%3Aw%40%2F%3F&%5Cx@orders.shop.svc.cluster.local:5432/orders_db?sslmode=verify-full",
		"ro-uri":   "postgresql://app:p%3Aw%40%2F%3F&%5Cx@orders-ro.shop.svc.cluster.local:5432/orders_db?sslmode=verify-full",
		"jdbc-uri": "jdbc:postgresql://orders.shop.svc.cluster.local:5432/orders_db?password=p%3Aw%40%2F%3F%26%5Cx&sslmode=verify-full&user=app",
		"pgpass": "orders.shop.svc.cluster.local:5432:orders_db:app:p\\:w@/?&\\\\x\n" +
			"orders-ro.shop.svc.cluster.local:5432:orders_db:app:p\\:w@/?&\\\\x\n",
	}
	for k, v := range want {
		if got := string(d[k]); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	for _, k := range []string{"uri", "ro-uri"} {
		u, err := url.Parse(string(d[k]))
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		if p, _ := u.User.Password(); p != pw {
			t.Errorf("%s password decodes to %q", k, p)
		}
	}
	if plain := credentialsData(db, "pw", nil, ""); string(plain["uri"]) != "postgresql://app:pw@orders.shop.svc.cluster.local:5432/orders_db" ||
		strings.Contains(string(plain["jdbc-uri"]), "sslmode") {
		t.Errorf("without TLS: uri %q jdbc-uri %q", plain["uri"], plain["jdbc-uri"])
	}
}

// The operator's --cluster-domain names the Services everywhere clients and
// instances read them: the credentials, the status endpoints, the certificate.
func TestAClusterDomainOtherThanClusterLocal(t *testing.T) {
	db := testDB(2)
	d := credentialsData(db, "pw", []byte("CA"), "corp.example")
	for k, want := range map[string]string{
		"host":    db.Name + "." + db.Namespace + ".svc.corp.example",
		"ro-host": db.Name + "-ro." + db.Namespace + ".svc.corp.example",
	} {
		if string(d[k]) != want {
			t.Errorf("%s = %q, want %q", k, d[k], want)
		}
	}
	for _, k := range []string{"uri", "ro-uri", "jdbc-uri", "pgpass"} {
		if !strings.Contains(string(d[k]), ".svc.corp.example:5432") || strings.Contains(string(d[k]), "cluster.local") {
			t.Errorf("%s = %q, want the corp.example domain", k, d[k])
		}
	}
	if got := endpoint(db, "corp.example"); got != db.Name+"."+db.Namespace+".svc.corp.example:5432" {
		t.Errorf("endpoint = %q", got)
	}
	if got := readOnlyEndpoint(db, ""); got != db.Name+"-ro."+db.Namespace+".svc.cluster.local:5432" {
		t.Errorf("default read-only endpoint = %q", got)
	}
	leaf := serverLeaf(db, "corp.example")
	for _, name := range []string{db.Name + "." + db.Namespace + ".svc.corp.example", "*." + db.Name + "-hl." + db.Namespace + ".svc.corp.example"} {
		if !slices.Contains(leaf.DNSNames, name) {
			t.Errorf("the server certificate lacks %s: %v", name, leaf.DNSNames)
		}
	}
	for _, name := range leaf.DNSNames {
		if strings.HasSuffix(name, "cluster.local") {
			t.Errorf("the certificate names %s in another domain", name)
		}
	}
}

// spec.podTemplate and spec.serviceTemplate fit the Database to a cluster's
// conventions, without touching the labels the operator selects on.
func TestPodAndServiceTemplatesAddTheClustersConventions(t *testing.T) {
	db := testDB(2)
	db.Spec.PodTemplate = databasev1.PodTemplate{
		ObjectMetadata:    databasev1.ObjectMetadata{Labels: map[string]string{"team": "payments"}, Annotations: map[string]string{"backup.velero.io/backup-volumes": "data"}},
		ImagePullSecrets:  []corev1.LocalObjectReference{{Name: "registry"}},
		PriorityClassName: "database-critical",
	}
	db.Spec.ServiceTemplate = databasev1.ObjectMetadata{Labels: map[string]string{"expose": "internal"}, Annotations: map[string]string{"lb": "internal"}}
	ac := buildStatefulSet(db, statefulSetInput{Image: "postgres:15", AgentImage: "op:1", ClaimSize: resource.MustParse("1Gi")})
	tpl := ac.Spec.Template
	if tpl.Labels["team"] != "payments" || tpl.Labels[LabelApp] != appValue || tpl.Labels[LabelDatabase] != db.Name ||
		tpl.Annotations["backup.velero.io/backup-volumes"] != "data" {
		t.Errorf("pod labels %v annotations %v", tpl.Labels, tpl.Annotations)
	}
	if len(tpl.Spec.ImagePullSecrets) != 1 || *tpl.Spec.ImagePullSecrets[0].Name != "registry" || *tpl.Spec.PriorityClassName != "database-critical" {
		t.Errorf("pull secrets %v priority %v", tpl.Spec.ImagePullSecrets, tpl.Spec.PriorityClassName)
	}
	for _, svc := range buildServices(db) {
		if svc.Labels["expose"] != "internal" || svc.Annotations["lb"] != "internal" || svc.Labels[LabelDatabase] != db.Name {
			t.Errorf("service %s labels %v annotations %v", *svc.Name, svc.Labels, svc.Annotations)
		}
	}
	job := buildUpgradeJob(db, &databasev1.UpgradeStatus{Job: "j", FromImage: "postgres:15", ToImage: "postgres:17", Primary: db.Name + "-0"}, "run", "op:1")
	if js := job.Spec.Template.Spec; len(js.ImagePullSecrets) != 1 || js.PriorityClassName != "database-critical" || job.Spec.Template.Labels["team"] != "payments" {
		t.Errorf("upgrade Job pod: pull secrets %v priority %q labels %v", js.ImagePullSecrets, js.PriorityClassName, job.Spec.Template.Labels)
	}
	// Without them nothing changes (no rollout of existing Databases): the
	// only annotation is the agent's protocol version, which changes only with
	// the agent's image (itself a rollout).
	plain := buildStatefulSet(testDB(2), statefulSetInput{Image: "postgres:15", AgentImage: "op:1", ClaimSize: resource.MustParse("1Gi")})
	if len(plain.Spec.Template.Annotations) != 1 || plain.Spec.Template.Annotations[agentapi.ProtocolAnnotation] != "1" || plain.Spec.Template.Spec.PriorityClassName != nil || len(plain.Spec.Template.Spec.ImagePullSecrets) != 0 {
		t.Errorf("an empty podTemplate changed the pod template")
	}
}
