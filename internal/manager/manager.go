// Package manager wires the controllers into a controller-runtime manager.
package manager

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"runtime/debug"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	databasev1 "github.com/example/postgres-operator/api/v1"
	backupctrl "github.com/example/postgres-operator/internal/controller/backup"
	"github.com/example/postgres-operator/internal/controller/database"
	"github.com/example/postgres-operator/internal/logging"
	"github.com/example/postgres-operator/internal/metrics"
	"github.com/example/postgres-operator/internal/scheme"
)

// The metrics endpoint authenticates and authorizes its clients through the
// API server.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// The manager's defaults for its API client and its Database workers, chosen
// with the scale benchmark (make bench-scale, README "Scale").
const (
	defaultQPS         = 50
	defaultBurst       = 100
	defaultConcurrency = 4
)

// Run parses the manager's flags and runs it until SIGTERM.
func Run(args []string) error {
	return RunWith(args, Hooks{})
}

// Hooks replace parts of the manager for the scale benchmark
// (test/scale): its operator runs this exact manager with scripted agents
// (the instance pods there are kwok's, with no agent) and counts its own API
// requests. The zero value is the production manager.
type Hooks struct {
	// Instances, when set, builds the client of the instance agents from the
	// manager (default: HTTP to each pod's agent).
	Instances func(mgr ctrl.Manager) (database.InstanceClient, error)
	// WrapTransport wraps the transport of every request to the API server.
	WrapTransport func(http.RoundTripper) http.RoundTripper
}

// RunWith is Run with hooks.
func RunWith(args []string, hooks Hooks) error {
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	var (
		metricsAddr, probeAddr, agentImage string
		pprofAddr                          string
		metricsCertDir, watchNamespaces    string
		clusterDomain                      string
		leaderElect, secureMetrics         bool
		qps                                float64
		burst, concurrency                 int
		memoryRatio                        float64
	)
	fs.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "Address of the metrics endpoint; 0 disables it.")
	fs.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address of the health probe endpoint.")
	fs.StringVar(&pprofAddr, "pprof-bind-address", "0", "Address of the Go profiling endpoint (net/http/pprof), e.g. 127.0.0.1:6060; 0 disables it.")
	fs.BoolVar(&leaderElect, "leader-elect", false, "Enable leader election, for running more than one manager.")
	fs.BoolVar(&secureMetrics, "metrics-secure", true,
		"Serve metrics over HTTPS (self-signed unless --metrics-cert-dir), to clients whose bearer token the API server authenticates and authorizes for GET /metrics; false serves plain HTTP to anyone.")
	fs.StringVar(&metricsCertDir, "metrics-cert-dir", "", "Directory with tls.crt and tls.key for the metrics endpoint.")
	fs.StringVar(&watchNamespaces, "watch-namespaces", "",
		"Comma-separated namespaces to watch (namespace-scoped install: RoleBindings to the manager role in each); all namespaces when empty.")
	fs.StringVar(&agentImage, "agent-image", os.Getenv("OPERATOR_IMAGE"),
		"Image the instance pods copy the agent binary from; default: the image of the manager's own container (POD_NAME/POD_NAMESPACE).")
	fs.StringVar(&clusterDomain, "cluster-domain", database.DefaultClusterDomain,
		"The cluster's DNS domain: Services are <name>.<namespace>.svc.<domain> in the credentials Secrets, the status, the certificates and the Jobs.")
	fs.Float64Var(&qps, "kube-api-qps", defaultQPS, "Requests per second the manager may send to the API server (client-side limit).")
	fs.IntVar(&burst, "kube-api-burst", defaultBurst, "Burst above --kube-api-qps the manager may send to the API server.")
	fs.IntVar(&concurrency, "max-concurrent-reconciles", defaultConcurrency, "Databases reconciled at the same time.")
	fs.Float64Var(&memoryRatio, "memory-limit-ratio", 0.9,
		"Go's soft memory limit as a fraction of the container's (cgroup's) memory limit, so the garbage collector works harder before an OOM kill; 0 leaves the runtime's default, and GOMEMLIMIT overrides it.")
	var defaults backupctrl.Defaults
	var s3Endpoint, s3Region, s3Secret string
	var s3PathStyle bool
	fs.StringVar(&defaults.Location, "default-backup-location", "",
		"Storage location of Backups without spec.storageLocation: s3://bucket/prefix or pvc://claim/path (a claim in the Backup's namespace, created when missing).")
	fs.StringVar(&defaults.PVCSize, "default-backup-pvc-size", "5Gi", "Size of a default pvc:// backup claim the operator creates.")
	fs.StringVar(&defaults.PVCStorageClass, "default-backup-pvc-storage-class", "", "StorageClass of that claim (cluster default when empty).")
	fs.StringVar(&s3Endpoint, "default-backup-s3-endpoint", "", "S3 endpoint of an s3:// default location.")
	fs.StringVar(&s3Region, "default-backup-s3-region", "us-east-1", "S3 region of an s3:// default location.")
	fs.BoolVar(&s3PathStyle, "default-backup-s3-path-style", false, "Path-style addressing for an s3:// default location.")
	fs.StringVar(&s3Secret, "default-backup-s3-credentials-secret", "",
		"Secret (in each Backup's namespace) with accessKeyId and secretAccessKey for an s3:// default location.")
	logLevel := fs.String("log-level", "info", "Least level logged: debug (with controller-runtime's V(1) lines), info, warn or error.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	level, err := logging.ParseLevel(*logLevel)
	if err != nil {
		return err
	}
	ctrl.SetLogger(logging.Logr(os.Stderr, level))
	if s3Endpoint != "" {
		defaults.S3 = &databasev1.S3Config{Endpoint: s3Endpoint, Region: s3Region, ForcePathStyle: s3PathStyle,
			CredentialsSecret: corev1.LocalObjectReference{Name: s3Secret}}
	}
	log := ctrl.Log.WithName("setup")
	if cg, err := cgroupMemoryLimit("/sys/fs/cgroup"); err != nil {
		log.Error(err, "not setting a soft memory limit")
	} else if soft := softMemoryLimit(cg, memoryRatio, os.Getenv("GOMEMLIMIT")); soft > 0 {
		debug.SetMemoryLimit(soft)
		log.Info("soft memory limit set from the container's limit", "cgroupLimitBytes", cg, "softLimitBytes", soft)
	}

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	cfg.QPS, cfg.Burst = float32(qps), burst
	if hooks.WrapTransport != nil {
		cfg.Wrap(hooks.WrapTransport)
	}
	cacheOpts := database.CacheOptions()
	cacheOpts.DefaultNamespaces = watched(watchNamespaces)
	metricsOpts := metricsserver.Options{
		BindAddress:   metricsAddr,
		SecureServing: secureMetrics,
		CertDir:       metricsCertDir,
		// No HTTP/2 (CVE-2023-44487, CVE-2023-39325).
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
	}
	if secureMetrics {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme.New(),
		Cache:                  cacheOpts,
		Metrics:                metricsOpts,
		HealthProbeBindAddress: probeAddr,
		PprofBindAddress:       pprofAddr,
		LeaderElection:         leaderElect,
		LeaderElectionID:       "postgres-operator.database.example.com",
	})
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}
	if agentImage == "" {
		agentImage, err = ownImage(context.Background(), mgr.GetAPIReader())
		if err != nil {
			return err
		}
	}
	log.Info("starting", "agentImage", agentImage)

	var instances database.InstanceClient = database.NewHTTPInstanceClient()
	if hooks.Instances != nil {
		if instances, err = hooks.Instances(mgr); err != nil {
			return err
		}
	}
	if err := (&database.Reconciler{
		Client:                  mgr.GetClient(),
		Recorder:                mgr.GetEventRecorder("database-controller"),
		Instances:               instances,
		APIReader:               mgr.GetAPIReader(),
		AgentImage:              agentImage,
		ArchiveDefaults:         database.ArchiveDefaults{Location: defaults.Location, S3: defaults.S3},
		ClusterDomain:           clusterDomain,
		MaxConcurrentReconciles: concurrency,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the database controller: %w", err)
	}
	runner := func(name string) backupctrl.Runner {
		return backupctrl.Runner{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder(name), Clock: clock.RealClock{},
			AgentImage: agentImage, Defaults: defaults, ClusterDomain: clusterDomain}
	}
	if err := (&backupctrl.BackupReconciler{Runner: runner("backup-controller")}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the backup controller: %w", err)
	}
	if err := (&backupctrl.RestoreReconciler{Runner: runner("restore-controller")}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the restore controller: %w", err)
	}
	if err := metrics.Register(ctrlmetrics.Registry, mgr.GetCache()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("adding health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return fmt.Errorf("adding ready check: %w", err)
	}
	return mgr.Start(ctrl.SetupSignalHandler())
}

// ownImage returns the image of the manager container of the pod the manager runs
// in, so that the instance pods run exactly the same binary.
func ownImage(ctx context.Context, c client.Reader) (string, error) {
	name, ns := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	if name == "" || ns == "" {
		return "", errors.New("--agent-image (or OPERATOR_IMAGE) is required when not running in a pod with POD_NAME and POD_NAMESPACE set")
	}
	var pod corev1.Pod
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &pod); err != nil {
		return "", fmt.Errorf("reading own pod to find the agent image: %w", err)
	}
	for _, ct := range pod.Spec.Containers {
		if ct.Name == "manager" {
			return ct.Image, nil
		}
	}
	return "", fmt.Errorf("pod %s/%s has no container named manager", ns, name)
}

// watched is the cache's namespaces for --watch-namespaces: nil (all) when
// empty.
func watched(list string) map[string]cache.Config {
	var out map[string]cache.Config
	for _, ns := range strings.Split(list, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			if out == nil {
				out = map[string]cache.Config{}
			}
			out[ns] = cache.Config{}
		}
	}
	return out
}
