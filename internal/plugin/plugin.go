// Package plugin is kubectl-pg, the kubectl plugin for the operator's
// Databases: status in one screen, psql into an instance, one-command backup,
// restore and switchover, logs and a bug-report tarball. It takes kubectl's
// usual flags (--kubeconfig, --context, -n, …) through cli-runtime.
package plugin

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/scheme"
)

// Pod labels the operator sets (internal/controller/database).
const (
	labelApp      = "app"
	labelDatabase = "database"
	labelRole     = "role"
	appValue      = "database"
	// container is the instance container; socketDir the private socket
	// directory the local superuser connects through (peer authentication).
	container = "postgres"
	socketDir = "/controller/run"
	// metricsPort is the agent's PostgreSQL metrics port.
	metricsPort = "9187"
)

// options are the flags and clients every command shares.
type options struct {
	flags  *genericclioptions.ConfigFlags
	out    io.Writer
	errOut io.Writer
	// kubectl is the kubectl binary psql and logs hand over to.
	kubectl string
}

func (o *options) namespace() (string, error) {
	ns, _, err := o.flags.ToRawKubeConfigLoader().Namespace()
	return ns, err
}

// session is the namespace and the clients a command works with.
func (o *options) session() (string, client.Client, kubernetes.Interface, error) {
	ns, err := o.namespace()
	if err != nil {
		return "", nil, nil, err
	}
	c, cs, err := o.clients()
	return ns, c, cs, err
}

// load is session plus the Database the command is about.
func (o *options) load(ctx context.Context, name string) (string, client.Client, kubernetes.Interface, *databasev1.Database, error) {
	ns, c, cs, err := o.session()
	if err != nil {
		return "", nil, nil, nil, err
	}
	db, err := getDatabase(ctx, c, ns, name)
	return ns, c, cs, db, err
}

func (o *options) clients() (client.Client, kubernetes.Interface, error) {
	cfg, err := o.flags.ToRESTConfig()
	if err != nil {
		return nil, nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		return nil, nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	return c, cs, nil
}

// kubectlFlags are the connection flags the user gave, for a kubectl this
// plugin runs (psql, logs).
func (o *options) kubectlFlags() []string {
	var args []string
	add := func(name string, v *string) {
		if v != nil && *v != "" {
			args = append(args, "--"+name+"="+*v)
		}
	}
	add("kubeconfig", o.flags.KubeConfig)
	add("context", o.flags.Context)
	add("cluster", o.flags.ClusterName)
	add("user", o.flags.AuthInfoName)
	add("server", o.flags.APIServer)
	add("token", o.flags.BearerToken)
	add("request-timeout", o.flags.Timeout)
	add("as", o.flags.Impersonate)
	return args
}

// NewCommand is kubectl-pg's root command.
func NewCommand(out, errOut io.Writer) *cobra.Command {
	o := &options{flags: genericclioptions.NewConfigFlags(true), out: out, errOut: errOut, kubectl: "kubectl"}
	if k := os.Getenv("KUBECTL"); k != "" {
		o.kubectl = k
	}
	root := &cobra.Command{
		Use:   "kubectl-pg",
		Short: "Operate the postgres-operator's Databases",
		Long: "kubectl pg: status, psql, backup, restore, switchover, logs and bug reports for " +
			"Databases of the postgres-operator (database.example.com/v1).",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	o.flags.AddFlags(root.PersistentFlags())
	root.AddCommand(statusCommand(o), psqlCommand(o), backupCommand(o), restoreCommand(o),
		switchoverCommand(o), logsCommand(o), reportCommand(o))
	return root
}

// Main runs kubectl-pg with args and returns its exit code.
func Main(args []string) int {
	cmd := NewCommand(os.Stdout, os.Stderr)
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	return 0
}

// getDatabase reads Database name in the current namespace.
func getDatabase(ctx context.Context, c client.Client, ns, name string) (*databasev1.Database, error) {
	db := &databasev1.Database{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, db); err != nil {
		return nil, fmt.Errorf("database %s/%s: %w", ns, name, err)
	}
	return db, nil
}

// instanceSelector selects the instance pods of Database name.
func instanceSelector(name string) string {
	return labelApp + "=" + appValue + "," + labelDatabase + "=" + name
}

// runKubectl hands over to kubectl with the user's connection flags, wiring the
// terminal through (psql needs it).
func (o *options) runKubectl(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, o.kubectl, append(o.kubectlFlags(), args...)...) // #nosec G204 -- kubectl with an argument vector
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, o.out, o.errOut
	return cmd.Run()
}

// waitFor polls check every interval until it reports done or an error, or
// timeout passes; each new progress line is printed once.
func waitFor(ctx context.Context, out io.Writer, timeout, interval time.Duration, check func() (done bool, progress string, err error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		done, progress, err := check()
		if progress != "" && progress != last {
			fmt.Fprintln(out, progress)
			last = progress
		}
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out after %s (%s)", timeout, strings.TrimSpace(last))
		case <-time.After(interval):
		}
	}
}
