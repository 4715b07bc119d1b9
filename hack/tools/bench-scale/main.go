// Command bench-scale is the control-plane scale benchmark (make bench-scale):
// N Databases on a loopback control plane with kwok's fake nodes, measured for
// time to converge, API requests, steady-state writes, restart and memory.
// See test/scale.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/example/postgres-operator/test/scale"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench-scale:", err)
		os.Exit(1)
	}
}

// peer runs this operator, then CloudNativePG, each on a fresh control
// plane, and prints them side by side.
func peer(ctx context.Context, o scale.Options, manager, crds, bin, kwok, stages string, log *os.File) error {
	po := scale.PeerOptions{N: o.Databases, Steady: o.Steady, Converge: o.Converge, Out: o.Out, Log: log}
	var figures []*scale.PeerFigures
	for _, which := range []string{"ours", "cnpg"} {
		cp, err := scale.StartControlPlane(ctx, scale.ControlPlaneOptions{Bin: bin, Kwok: kwok, KwokStages: stages, CRDs: "config/crd/bases", Log: log})
		if err != nil {
			return err
		}
		var f *scale.PeerFigures
		if which == "ours" {
			f, err = scale.RunOurs(ctx, cp, o.Operator, po)
		} else {
			f, err = scale.RunCNPG(ctx, cp, manager, crds, po)
		}
		cp.Stop()
		if err != nil {
			return fmt.Errorf("%s: %w", which, err)
		}
		figures = append(figures, f)
	}
	scale.PrintPeers(o.Out, figures[0], figures[1], o.Databases)
	return nil
}

func run() error {
	var o scale.Options
	var bin, kwok, stages, logPath, managerArgs string
	flag.IntVar(&o.Databases, "n", 1000, "Databases (half with 1 instance, half with 3)")
	flag.IntVar(&o.Namespaces, "namespaces", 10, "namespaces of each kind")
	flag.StringVar(&o.Agents, "agents", "scripted", "scripted or unreachable")
	flag.DurationVar(&o.Steady, "steady", 10*time.Minute, "steady state watched")
	flag.IntVar(&o.Unrelated, "unrelated", 10000, "unrelated Secrets and ConfigMaps added after the steady state (0: none)")
	flag.IntVar(&o.UnrelatedSize, "unrelated-size", 100<<10, "their size in bytes")
	flag.BoolVar(&o.ImageChange, "image-change", true, "change the image of every Database")
	flag.BoolVar(&o.Restart, "restart", true, "restart the operator")
	flag.BoolVar(&o.Delete, "delete", true, "delete every Database at the end")
	flag.DurationVar(&o.Converge, "converge", 30*time.Minute, "limit of each wait")
	flag.StringVar(&bin, "k8s-bin", "", "directory of etcd, kube-apiserver, kube-controller-manager, kube-scheduler")
	flag.StringVar(&kwok, "kwok", "", "kwok binary (its stages in stages/ next to it)")
	flag.StringVar(&logPath, "log", "", "file for the components' output (default: a temporary file)")
	flag.StringVar(&o.HeapProfile, "heap-profile", "", "write the operator's heap profile at steady state to this file")
	flag.StringVar(&managerArgs, "manager-args", "", "extra manager flags, space-separated (e.g. --kube-api-qps=100)")
	var cnpgManager, cnpgCRDs string
	flag.StringVar(&cnpgManager, "cnpg-manager", "", "peer comparison instead: CloudNativePG's manager binary (built from its source)")
	flag.StringVar(&cnpgCRDs, "cnpg-crds", "", "the directory of its CRDs (config/crd/bases of its source)")
	flag.Parse()
	if bin == "" || kwok == "" {
		return fmt.Errorf("-k8s-bin and -kwok are required")
	}
	stages = filepath.Join(filepath.Dir(kwok), "stages")
	o.ManagerArgs = strings.Fields(managerArgs)
	if logPath == "" {
		f, err := os.CreateTemp("", "bench-scale-*.log")
		if err != nil {
			return err
		}
		logPath = f.Name()
		f.Close()
	}
	logFile, err := os.Create(logPath) // #nosec G304 -- the benchmark's log file
	if err != nil {
		return err
	}
	defer logFile.Close()
	o.Log, o.Out = logFile, os.Stdout

	ctrllog.SetLogger(logr.Discard())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "bench-scale-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	o.Operator = filepath.Join(dir, "operator")
	build := exec.CommandContext(ctx, "go", "build", "-o", o.Operator, "./test/scale/operator")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building the benchmark's operator: %w", err)
	}

	host, _ := os.Hostname()
	fmt.Printf("bench-scale on %s: %d CPUs, %s, %s; components' log: %s\n", host, runtime.NumCPU(), runtime.GOOS+"/"+runtime.GOARCH, time.Now().UTC().Format(time.RFC3339), logPath)
	start := time.Now()
	cp, err := scale.StartControlPlane(ctx, scale.ControlPlaneOptions{Bin: bin, Kwok: kwok, KwokStages: stages, CRDs: "config/crd/bases", Log: logFile})
	if err != nil {
		return err
	}
	defer cp.Stop()
	fmt.Printf("control plane up in %s (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok; pods on %s)\n", time.Since(start).Round(time.Second), scale.PodCIDR)
	if cnpgManager != "" {
		cp.Stop()
		return peer(ctx, o, cnpgManager, cnpgCRDs, bin, kwok, stages, logFile)
	}
	if _, err := scale.Run(ctx, cp, o); err != nil {
		return err
	}
	fmt.Printf("total %s\n", time.Since(start).Round(time.Second))
	return nil
}
