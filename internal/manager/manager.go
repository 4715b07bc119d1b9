// Package manager wires the controllers into a controller-runtime manager.
package manager

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/example/postgres-operator/internal/controller/database"
	"github.com/example/postgres-operator/internal/scheme"
)

// Run parses the manager's flags and runs it until SIGTERM.
func Run(args []string) error {
	fs := flag.NewFlagSet("manager", flag.ContinueOnError)
	var (
		metricsAddr, probeAddr, agentImage string
		leaderElect, secureMetrics         bool
	)
	fs.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "Address of the metrics endpoint; 0 disables it.")
	fs.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address of the health probe endpoint.")
	fs.BoolVar(&leaderElect, "leader-elect", false, "Enable leader election, for running more than one manager.")
	fs.BoolVar(&secureMetrics, "metrics-secure", false, "Serve metrics over HTTPS with authentication and authorization.")
	fs.StringVar(&agentImage, "agent-image", os.Getenv("OPERATOR_IMAGE"),
		"Image the instance pods copy the agent binary from; default: the image of the manager's own container (POD_NAME/POD_NAMESPACE).")
	zopts := zap.Options{Development: false}
	zopts.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zopts)))
	log := ctrl.Log.WithName("setup")

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading kubeconfig: %w", err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: scheme.New(),
		Cache:  database.CacheOptions(),
		Metrics: metricsserver.Options{
			BindAddress:   metricsAddr,
			SecureServing: secureMetrics,
			TLSOpts:       []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
		},
		HealthProbeBindAddress: probeAddr,
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

	if err := (&database.Reconciler{
		Client:     mgr.GetClient(),
		Recorder:   mgr.GetEventRecorder("database-controller"),
		Instances:  database.NewHTTPInstanceStatusSource(),
		AgentImage: agentImage,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the database controller: %w", err)
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
