// Command operator is the scale benchmark's operator: the production manager
// (internal/manager) with its instance agents scripted (kwok's pods run
// nothing) or left unreachable, and its API requests counted. It serves the
// counts as JSON on --requests-address (loopback).
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/example/postgres-operator/internal/controller/database"
	"github.com/example/postgres-operator/internal/manager"
	"github.com/example/postgres-operator/test/scale"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("operator", flag.ContinueOnError)
	agents := fs.String("agents", "scripted", "scripted: agents report healthy instances; unreachable: the real HTTP client, to pods on loopback addresses that nothing serves")
	addr := fs.String("requests-address", "127.0.0.1:0", "loopback address of the request counts")
	// The manager's own flags follow "--".
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	if host, _, err := net.SplitHostPort(*addr); err != nil || !net.ParseIP(host).IsLoopback() {
		return fmt.Errorf("--requests-address must be a loopback address, got %q", *addr)
	}
	counts := &scale.Requests{}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "requests-address", l.Addr().String())
	go func() { _ = (&http.Server{Handler: counts, ReadHeaderTimeout: 0}).Serve(l) }() // #nosec G114 -- loopback benchmark endpoint

	hooks := manager.Hooks{WrapTransport: counts.Wrap}
	switch *agents {
	case "scripted":
		hooks.Instances = func(mgr ctrl.Manager) (database.InstanceClient, error) {
			return &scale.ScriptedAgents{Cache: mgr.GetClient()}, nil
		}
	case "unreachable":
	default:
		return fmt.Errorf("--agents: want scripted or unreachable, got %q", *agents)
	}
	return manager.RunWith(fs.Args(), hooks)
}
