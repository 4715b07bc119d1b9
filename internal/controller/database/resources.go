package database

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
)

// Labels and annotations the operator sets.
const (
	// LabelApp and LabelDatabase select every instance pod of a Database (the spec's
	// selectors app=database,database=<name>); LabelName is the same name under the
	// key Lab 8.3's kubectl commands use.
	LabelApp      = "app"
	LabelDatabase = "database"
	LabelName     = "name"
	// LabelRole is primary or replica, set on pods from what their agents report; the
	// read-write and read-only Services select on it.
	LabelRole = "role"
	// LabelManagedBy marks every object the operator creates.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedByValue = "postgres-operator"
	// AnnotationSpecHash records the hash of the applied configuration of a child so
	// that an unchanged child costs no API write.
	AnnotationSpecHash = "database.example.com/spec-hash"

	appValue = "database"

	// FieldOwner is the server-side apply field manager of everything the operator
	// applies.
	FieldOwner = "postgres-operator"

	containerPostgres    = agentapi.ContainerName
	containerBootstrap   = "bootstrap-agent"
	volumeData           = "data"
	volumeController     = "controller"
	volumeCredentials    = "credentials"
	volumeInternal       = "internal"
	volumeConfig         = "config"
	volumeWALArchive     = "wal-archive"
	volumeRecoverySource = "recovery-source"
	volumeShm            = "shm"
	volumeTLS            = "tls"
	volumeTmp            = "tmp"

	dataMountPath       = "/var/lib/postgresql/data"
	controllerMountPath = "/controller"
	agentBinaryPath     = controllerMountPath + "/manager"

	portNamePostgres = "postgres"
	portNameAgent    = "agent"
	// portNameMetrics is the agent's PostgreSQL metrics port: the PodMonitor
	// scrapes it by name.
	portNameMetrics = "metrics"

	// postgresUID is the uid of the postgres user of the official images.
	postgresUID int64 = 999
)

// Bounds of the instances' memory-backed /dev/shm and of /tmp.
var (
	shmSizeLimit = resource.MustParse("512Mi")
	tmpSizeLimit = resource.MustParse("256Mi")
)

// Names of the children of a Database.
func credentialsSecretName(db *databasev1.Database) string { return db.Name + "-credentials" }
func internalSecretName(db *databasev1.Database) string    { return db.Name + "-internal" }
func readWriteServiceName(db *databasev1.Database) string  { return db.Name }
func readOnlyServiceName(db *databasev1.Database) string   { return db.Name + "-ro" }
func headlessServiceName(db *databasev1.Database) string   { return db.Name + "-hl" }
func statefulSetName(db *databasev1.Database) string       { return db.Name }

// DefaultClusterDomain is the cluster's DNS domain unless the operator runs with
// --cluster-domain.
const DefaultClusterDomain = "cluster.local"

// serviceHost is a Service's fully qualified name in the cluster's DNS domain.
func serviceHost(db *databasev1.Database, service, domain string) string {
	if domain == "" {
		domain = DefaultClusterDomain
	}
	return fmt.Sprintf("%s.%s.svc.%s", service, db.Namespace, domain)
}

func endpoint(db *databasev1.Database, domain string) string {
	return fmt.Sprintf("%s:%d", serviceHost(db, readWriteServiceName(db), domain), agentapi.PostgresPort)
}

func readOnlyEndpoint(db *databasev1.Database, domain string) string {
	return fmt.Sprintf("%s:%d", serviceHost(db, readOnlyServiceName(db), domain), agentapi.PostgresPort)
}

// selectorLabels select every instance pod of db. They are the StatefulSet's
// selector and never change.
func selectorLabels(db *databasev1.Database) map[string]string {
	return map[string]string{LabelApp: appValue, LabelDatabase: db.Name}
}

func podLabels(db *databasev1.Database) map[string]string {
	l := selectorLabels(db)
	l[LabelName] = db.Name
	l[LabelManagedBy] = ManagedByValue
	return l
}

// withExtra returns the user's labels with the operator's on top (CEL keeps
// the user from setting the operator's keys; this keeps them regardless).
func withExtra(own, extra map[string]string) map[string]string {
	out := make(map[string]string, len(own)+len(extra))
	for k, v := range extra {
		out[k] = v
	}
	for k, v := range own {
		out[k] = v
	}
	return out
}

func withRole(l map[string]string, role string) map[string]string {
	out := make(map[string]string, len(l)+1)
	for k, v := range l {
		out[k] = v
	}
	out[LabelRole] = role
	return out
}

func ownerReference(db *databasev1.Database) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(databasev1.GroupVersion.String()).
		WithKind("Database").
		WithName(db.Name).
		WithUID(db.UID).
		WithController(true).
		WithBlockOwnerDeletion(true)
}

func replicas(db *databasev1.Database) int32 {
	if db.Spec.Replicas == nil {
		return 1
	}
	return *db.Spec.Replicas
}

func image(db *databasev1.Database) string {
	if db.Spec.Image == "" {
		return databasev1.DefaultImage
	}
	return db.Spec.Image
}

// buildServices returns the read-write Service (<name>, primary only), the read-only
// Service (<name>-ro, standbys only) and the headless governing Service (<name>-hl).
func buildServices(db *databasev1.Database) []*corev1ac.ServiceApplyConfiguration {
	port := corev1ac.ServicePort().
		WithName(portNamePostgres).
		WithPort(agentapi.PostgresPort).
		WithTargetPort(intstr.FromString(portNamePostgres)).
		WithProtocol(corev1.ProtocolTCP)
	svc := func(name string, selector map[string]string) *corev1ac.ServiceApplyConfiguration {
		return corev1ac.Service(name, db.Namespace).
			WithLabels(withExtra(podLabels(db), db.Spec.ServiceTemplate.Labels)).
			WithAnnotations(db.Spec.ServiceTemplate.Annotations).
			WithOwnerReferences(ownerReference(db)).
			WithSpec(corev1ac.ServiceSpec().
				WithType(corev1.ServiceTypeClusterIP).
				WithSelector(selector).
				WithPorts(port))
	}
	rw := svc(readWriteServiceName(db), withRole(selectorLabels(db), agentapi.RolePrimary))
	ro := svc(readOnlyServiceName(db), withRole(selectorLabels(db), agentapi.RoleReplica))
	hl := svc(headlessServiceName(db), selectorLabels(db))
	hl.Spec.WithClusterIP(corev1.ClusterIPNone).WithPublishNotReadyAddresses(true)
	return []*corev1ac.ServiceApplyConfiguration{rw, ro, hl}
}

// statefulSetInput is what the StatefulSet is built from besides the Database.
type statefulSetInput struct {
	// Image is the PostgreSQL image to run: the spec's, or the running one when a
	// change was refused.
	Image string
	// AgentImage is the operator image the init container copies the agent from.
	AgentImage string
	// ClaimSize is the volumeClaimTemplate's request. Templates are immutable, so an
	// existing StatefulSet keeps the size it was created with; growth is applied to
	// the PersistentVolumeClaims directly.
	ClaimSize resource.Quantity
	// Replicas is the StatefulSet's replicas: spec.replicas, or more while the
	// primary's ordinal is beyond it (a scale-down waits for a switchover).
	Replicas int32
	// Stopped: 0 replicas (a major upgrade runs on the volumes).
	Stopped bool
	// ConfigRestart is the configuration hash the instances were last
	// restarted for (status.configuration.restartedFor).
	ConfigRestart string
}

func buildStatefulSet(db *databasev1.Database, in statefulSetInput) *appsv1ac.StatefulSetApplyConfiguration {
	labels := podLabels(db)
	secretVolume := func(name, secret string) *corev1ac.VolumeApplyConfiguration {
		return corev1ac.Volume().WithName(name).WithSecret(corev1ac.SecretVolumeSource().
			WithSecretName(secret).WithDefaultMode(0o440))
	}
	probe := func(path string, period, failures int32) *corev1ac.ProbeApplyConfiguration {
		return corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath(path).WithPort(intstr.FromString(portNameAgent)).
				WithScheme(corev1.URISchemeHTTPS)).
			WithPeriodSeconds(period).
			WithTimeoutSeconds(5).
			WithFailureThreshold(failures)
	}
	// Nothing is written outside the volumes: the data volume, the agent's
	// emptyDir, /tmp and /dev/shm.
	restricted := corev1ac.SecurityContext().
		WithAllowPrivilegeEscalation(false).
		WithCapabilities(corev1ac.Capabilities().WithDrop("ALL")).
		WithRunAsNonRoot(true).
		WithReadOnlyRootFilesystem(true)

	args := []string{agentBinaryPath, "instance",
		"--pod-name=$(POD_NAME)",
		"--pod-uid=$(POD_UID)",
		"--peer-domain=" + headlessServiceName(db),
		"--lease-name=" + leaseName(db),
		"--lease-namespace=$(POD_NAMESPACE)",
		"--lease-duration=" + leaseDuration(db).String(),
		"--renew-deadline=" + renewDeadline(db).String(),
		"--retry-period=" + retryPeriod(db).String(),
		// Names from the spec (validated by the CRD), never from a Secret.
		"--app-user=" + db.Spec.Username,
		"--app-database=" + db.Spec.DatabaseName,
		"--pgdata=" + agentapi.DefaultPGData,
		"--credentials-dir=" + agentapi.DefaultCredentialsDir,
		"--internal-dir=" + agentapi.DefaultInternalDir,
		"--config-dir=" + agentapi.DefaultConfigDir,
		// Always mounted (optional): turning the archive on or off is a
		// reload, never a new pod.
		"--wal-archive-dir=" + WALArchiveDir,
		"--run-dir=" + agentapi.DefaultRunDir,
		"--volume-socket-dir=" + agentapi.DefaultVolumeSocketDir,
		// Passfile and TLS key copies in memory, never on a disk.
		"--secret-dir=" + agentapi.PodSecretDir,
		"--max-lag-bytes=" + strconv.FormatInt(maxLagBytes(db), 10),
		"--max-slot-wal-keep-size=" + maxSlotWALKeepSize(db, in.ClaimSize),
		// TLS for PostgreSQL, replication and the agent's HTTPS endpoint.
		agentapi.TLSDirArg(agentapi.DefaultTLSDir),
	}
	if db.Spec.TLS.Mode == databasev1.TLSOptional {
		args = append(args, "--tls-optional")
	}
	pitr := db.Spec.Bootstrap != nil && db.Spec.Bootstrap.PointInTime != nil
	if pitr {
		// Only for a Database bootstrapped by a point-in-time recovery (the
		// spec cannot change): its agents never run initdb.
		args = append(args, "--recovery-source-dir="+agentapi.RecoverySourceDir)
	}
	container := corev1ac.Container().
		WithName(containerPostgres).
		WithImage(in.Image).
		WithImagePullPolicy(corev1.PullIfNotPresent).
		WithCommand(args...).
		WithEnv(
			corev1ac.EnvVar().WithName("POD_NAME").WithValueFrom(corev1ac.EnvVarSource().
				WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath("metadata.name"))),
			corev1ac.EnvVar().WithName("POD_UID").WithValueFrom(corev1ac.EnvVarSource().
				WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath("metadata.uid"))),
			corev1ac.EnvVar().WithName("POD_NAMESPACE").WithValueFrom(corev1ac.EnvVarSource().
				WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath("metadata.namespace"))),
			corev1ac.EnvVar().WithName("PGDATA").WithValue(agentapi.DefaultPGData),
		).
		WithPorts(
			corev1ac.ContainerPort().WithName(portNamePostgres).WithContainerPort(agentapi.PostgresPort).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName(portNameAgent).WithContainerPort(agentapi.AgentPort).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName(portNameMetrics).WithContainerPort(agentapi.MetricsPort).WithProtocol(corev1.ProtocolTCP),
		).
		// The agent answers as soon as it runs; it supervises a clone (however long
		// a clone that progresses takes) and restarts PostgreSQL itself.
		WithStartupProbe(probe(agentapi.Versioned(agentapi.PathStartup), 5, 60)).
		// Readiness follows the Lease closely: a primary that cannot renew leaves
		// the Services within seconds, well before it fences itself.
		WithReadinessProbe(probe(agentapi.Versioned(agentapi.PathReadyz), 1, 2).WithTimeoutSeconds(1)).
		WithLivenessProbe(probe(agentapi.Versioned(agentapi.PathHealthz), 10, 6)).
		WithSecurityContext(restricted).
		WithVolumeMounts(
			corev1ac.VolumeMount().WithName(volumeData).WithMountPath(dataMountPath),
			corev1ac.VolumeMount().WithName(volumeController).WithMountPath(controllerMountPath),
			corev1ac.VolumeMount().WithName(volumeCredentials).WithMountPath(agentapi.DefaultCredentialsDir).WithReadOnly(true),
			corev1ac.VolumeMount().WithName(volumeInternal).WithMountPath(agentapi.DefaultInternalDir).WithReadOnly(true),
			corev1ac.VolumeMount().WithName(volumeConfig).WithMountPath(agentapi.DefaultConfigDir).WithReadOnly(true),
			corev1ac.VolumeMount().WithName(volumeWALArchive).WithMountPath(WALArchiveDir).WithReadOnly(true),
			corev1ac.VolumeMount().WithName(volumeTLS).WithMountPath(agentapi.DefaultTLSDir).WithReadOnly(true),
			corev1ac.VolumeMount().WithName(volumeShm).WithMountPath("/dev/shm"),
			corev1ac.VolumeMount().WithName(volumeTmp).WithMountPath("/tmp"),
		)
	if res := db.Spec.Resources; len(res.Limits) > 0 || len(res.Requests) > 0 {
		rr := corev1ac.ResourceRequirements()
		if len(res.Limits) > 0 {
			rr.WithLimits(res.Limits)
		}
		if len(res.Requests) > 0 {
			rr.WithRequests(res.Requests)
		}
		container.WithResources(rr)
	}

	initContainer := corev1ac.Container().
		WithName(containerBootstrap).
		WithImage(in.AgentImage).
		WithImagePullPolicy(corev1.PullIfNotPresent).
		WithCommand("/manager", "install-agent", agentBinaryPath).
		WithSecurityContext(restricted).
		// It copies one binary: small and bounded.
		WithResources(corev1ac.ResourceRequirements().
			WithRequests(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")}).
			WithLimits(corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")})).
		WithVolumeMounts(corev1ac.VolumeMount().WithName(volumeController).WithMountPath(controllerMountPath))

	claim := corev1ac.PersistentVolumeClaim(volumeData, "").
		WithSpec(corev1ac.PersistentVolumeClaimSpec().
			WithAccessModes(corev1.ReadWriteOnce).
			WithResources(corev1ac.VolumeResourceRequirements().
				WithRequests(corev1.ResourceList{corev1.ResourceStorage: in.ClaimSize})))
	if db.Spec.Storage.StorageClass != nil && *db.Spec.Storage.StorageClass != "" {
		claim.Spec.WithStorageClassName(*db.Spec.Storage.StorageClass)
	}

	if in.Replicas == 0 && !in.Stopped {
		in.Replicas = replicas(db)
	}
	podSpec := corev1ac.PodSpec()
	scheduling(db, podSpec)
	if pitr {
		container.WithVolumeMounts(corev1ac.VolumeMount().WithName(volumeRecoverySource).WithMountPath(agentapi.RecoverySourceDir).WithReadOnly(true))
		podSpec.WithVolumes(corev1ac.Volume().WithName(volumeRecoverySource).WithSecret(corev1ac.SecretVolumeSource().
			WithSecretName(agentapi.RecoverySourceSecretName(db.Name)).WithOptional(true).WithDefaultMode(0o440)))
	}

	return appsv1ac.StatefulSet(statefulSetName(db), db.Namespace).
		WithLabels(labels).
		WithOwnerReferences(ownerReference(db)).
		WithSpec(appsv1ac.StatefulSetSpec().
			WithReplicas(in.Replicas).
			WithServiceName(headlessServiceName(db)).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(db))).
			// Parallel: a dead instance of a low ordinal must not keep the others
			// from starting (any ordinal may be primary).
			WithPodManagementPolicy(appsv1.ParallelPodManagement).
			// OnDelete: the operator replaces pods itself, standbys first and the
			// primary only after a switchover (rollout.go).
			WithUpdateStrategy(appsv1ac.StatefulSetUpdateStrategy().WithType(appsv1.OnDeleteStatefulSetStrategyType)).
			// Volumes outlive the Database and scale-downs: data is never lost by a
			// delete.
			WithPersistentVolumeClaimRetentionPolicy(appsv1ac.StatefulSetPersistentVolumeClaimRetentionPolicy().
				WithWhenDeleted(appsv1.RetainPersistentVolumeClaimRetentionPolicyType).
				WithWhenScaled(appsv1.RetainPersistentVolumeClaimRetentionPolicyType)).
			WithVolumeClaimTemplates(claim).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithAnnotations(podAnnotations(db, in)).
				WithLabels(withExtra(labels, db.Spec.PodTemplate.Labels)).
				WithSpec(podSpec.
					WithEnableServiceLinks(false).
					// The token of a ServiceAccount that may get and update the
					// Database's Lease and nothing else.
					WithServiceAccountName(instanceAccountName(db)).
					WithAutomountServiceAccountToken(true).
					WithTerminationGracePeriodSeconds(60).
					WithSecurityContext(corev1ac.PodSecurityContext().
						WithRunAsUser(postgresUID).
						WithRunAsGroup(postgresUID).
						WithFSGroup(postgresUID).
						WithFSGroupChangePolicy(corev1.FSGroupChangeOnRootMismatch).
						WithRunAsNonRoot(true).
						WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))).
					WithInitContainers(initContainer).
					WithContainers(container).
					WithVolumes(
						corev1ac.Volume().WithName(volumeController).WithEmptyDir(corev1ac.EmptyDirVolumeSource()),
						// PostgreSQL's dynamic shared memory (parallel queries), bounded.
						corev1ac.Volume().WithName(volumeShm).WithEmptyDir(corev1ac.EmptyDirVolumeSource().
							WithMedium(corev1.StorageMediumMemory).WithSizeLimit(shmSizeLimit)),
						corev1ac.Volume().WithName(volumeTmp).WithEmptyDir(corev1ac.EmptyDirVolumeSource().WithSizeLimit(tmpSizeLimit)),
						secretVolume(volumeCredentials, credentialsSecretName(db)),
						secretVolume(volumeInternal, internalSecretName(db)),
						corev1ac.Volume().WithName(volumeWALArchive).WithSecret(corev1ac.SecretVolumeSource().
							WithSecretName(walArchiveSecretName(db)).WithOptional(true).WithDefaultMode(0o440)),
						secretVolume(volumeTLS, serverTLSSecretName(db)),
						// spec.postgresql; optional: an instance starts with the
						// operator's settings alone before the ConfigMap exists.
						corev1ac.Volume().WithName(volumeConfig).WithConfigMap(corev1ac.ConfigMapVolumeSource().
							WithName(configMapName(db)).WithOptional(true).WithDefaultMode(0o444)),
					))))
}

// podAnnotations are the user's pod annotations, the protocol version the
// pod's agent speaks (how the operator and the restore Jobs reach it) and,
// once the instances had to restart for a configuration, its hash (a new one
// restarts them).
func podAnnotations(db *databasev1.Database, in statefulSetInput) map[string]string {
	out := make(map[string]string, len(db.Spec.PodTemplate.Annotations)+2)
	for k, v := range db.Spec.PodTemplate.Annotations {
		out[k] = v
	}
	out[agentapi.ProtocolAnnotation] = strconv.Itoa(agentapi.ProtocolVersion)
	if in.ConfigRestart != "" {
		out[databasev1.AnnotationConfigRestart] = in.ConfigRestart
	}
	return out
}

// scheduling sets the pod's affinity (by default a preferred anti-affinity that
// spreads the instances across nodes), tolerations, node selector and topology
// spread constraints from the spec.
func scheduling(db *databasev1.Database, spec *corev1ac.PodSpecApplyConfiguration) {
	if db.Spec.Affinity != nil {
		var a corev1ac.AffinityApplyConfiguration
		if convert(db.Spec.Affinity, &a) == nil {
			spec.WithAffinity(&a)
		}
	} else {
		spec.WithAffinity(corev1ac.Affinity().WithPodAntiAffinity(corev1ac.PodAntiAffinity().
			WithPreferredDuringSchedulingIgnoredDuringExecution(corev1ac.WeightedPodAffinityTerm().
				WithWeight(100).
				WithPodAffinityTerm(corev1ac.PodAffinityTerm().
					WithTopologyKey(corev1.LabelHostname).
					WithLabelSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(db)))))))
	}
	for i := range db.Spec.Tolerations {
		var t corev1ac.TolerationApplyConfiguration
		if convert(&db.Spec.Tolerations[i], &t) == nil {
			spec.WithTolerations(&t)
		}
	}
	if len(db.Spec.NodeSelector) > 0 {
		spec.WithNodeSelector(db.Spec.NodeSelector)
	}
	for _, s := range db.Spec.PodTemplate.ImagePullSecrets {
		spec.WithImagePullSecrets(corev1ac.LocalObjectReference().WithName(s.Name))
	}
	if p := db.Spec.PodTemplate.PriorityClassName; p != "" {
		spec.WithPriorityClassName(p)
	}
	for i := range db.Spec.TopologySpreadConstraints {
		var c corev1ac.TopologySpreadConstraintApplyConfiguration
		if convert(&db.Spec.TopologySpreadConstraints[i], &c) == nil {
			spec.WithTopologySpreadConstraints(&c)
		}
	}
}

// convert copies a typed API object into its apply configuration (the JSON forms
// are the same).
func convert(from, to any) error {
	b, err := json.Marshal(from)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, to)
}

// maxSlotWALKeepSize is max_slot_wal_keep_size in MB: spec.maxSlotWALKeepSize, or
// a quarter of the volume as created (the claim template's size, so growing the
// volumes does not restart the instances), at least 64MB.
func maxSlotWALKeepSize(db *databasev1.Database, claim resource.Quantity) string {
	var bytes int64
	if q := db.Spec.MaxSlotWALKeepSize; q != nil {
		bytes = q.Value()
	} else {
		bytes = claim.Value() / 4
	}
	mb := max(bytes>>20, 64)
	return strconv.FormatInt(mb, 10) + "MB"
}

// specHash returns a short hash of an apply configuration; recorded in
// AnnotationSpecHash, it lets the next reconcile see, without an API write, that the
// live object is current. It is computed before the annotation is added.
func specHash(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("hashing applied configuration: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12]), nil
}

// credentialsData is the content of the <name>-credentials Secret: with the
// Database's CA, its ca.crt, sslmode verify-full and a uri that asks for it
// (clients add sslrootcert=<path of ca.crt>).
func credentialsData(db *databasev1.Database, password string, caPEM []byte, domain string) map[string][]byte {
	host := serviceHost(db, readWriteServiceName(db), domain)
	roHost := serviceHost(db, readOnlyServiceName(db), domain)
	port := strconv.Itoa(agentapi.PostgresPort)
	sslmode := ""
	d := map[string][]byte{
		"username": []byte(db.Spec.Username),
		"password": []byte(password),
		"database": []byte(db.Spec.DatabaseName),
		"host":     []byte(host),
		"ro-host":  []byte(roHost),
		"port":     []byte(port),
	}
	if len(caPEM) > 0 {
		sslmode = "verify-full"
		d[agentapi.TLSCAFile] = caPEM
		d["sslmode"] = []byte(sslmode)
	}
	d["uri"] = []byte(postgresURI(db.Spec.Username, password, host, port, db.Spec.DatabaseName, sslmode))
	// The standbys, through the read-only Service.
	d["ro-uri"] = []byte(postgresURI(db.Spec.Username, password, roHost, port, db.Spec.DatabaseName, sslmode))
	d["jdbc-uri"] = []byte(jdbcURI(db.Spec.Username, password, host, port, db.Spec.DatabaseName, sslmode))
	// A ~/.pgpass (or PGPASSFILE) for both Services.
	d["pgpass"] = []byte(postgres.PgpassEntry(host, port, db.Spec.DatabaseName, db.Spec.Username, password) +
		postgres.PgpassEntry(roHost, port, db.Spec.DatabaseName, db.Spec.Username, password))
	return d
}

// jdbcURI is the PostgreSQL JDBC driver's URL. With TLS, pgjdbc verifies the
// server against ~/.postgresql/root.crt unless sslrootcert names the mounted
// ca.crt (append &sslrootcert=<path>).
func jdbcURI(user, password, host, port, database, sslmode string) string {
	q := url.Values{"user": {user}, "password": {password}}
	if sslmode != "" {
		q.Set("sslmode", sslmode)
	}
	return "jdbc:postgresql://" + net.JoinHostPort(host, port) + "/" + url.PathEscape(database) + "?" + q.Encode()
}
