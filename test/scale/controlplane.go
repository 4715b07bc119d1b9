package scale

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	crcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/example/postgres-operator/internal/scheme"
)

// ControlPlane is a Kubernetes control plane on loopback: etcd and
// kube-apiserver (started by envtest, with the project's CRDs),
// kube-controller-manager (StatefulSets, node lifecycle, garbage collection,
// namespaces, service accounts, Jobs; not EndpointSlices: the API server
// refuses the pods' loopback addresses in them, so the benchmark writes the
// read-write Services' slices itself), kube-scheduler, and kwok playing the nodes
// and their pods, whose addresses are in PodCIDR (loopback).
type ControlPlane struct {
	Dir        string
	Kubeconfig string
	Config     *rest.Config
	Client     client.Client

	env        *envtest.Environment
	procs      []*exec.Cmd
	stopReaper context.CancelFunc
}

// PodCIDR is where kwok takes pod addresses from: loopback, so that nothing
// the operator or its agents' client sends to a pod leaves this machine.
const PodCIDR = "127.1.0.0/16"

// NodeIP is the fake node's address (loopback).
const NodeIP = "127.0.0.2"

// ControlPlaneOptions are where the binaries are and how to log.
type ControlPlaneOptions struct {
	// Bin holds etcd, kube-apiserver, kube-controller-manager and
	// kube-scheduler (hack/k8s-binaries.sh).
	Bin string
	// Kwok is the kwok binary; KwokStages the directory of its stage files
	// (make kwok copies them there from the module: nodes Ready with
	// heartbeats, pods Ready at once, Job pods complete; its pod-delete stage
	// is not used: the control plane finishes deletions itself).
	Kwok, KwokStages string
	// CRDs is the directory of the CRDs to install.
	CRDs string
	// Log receives the components' output.
	Log io.Writer
	// Nodes is how many fake nodes to create.
	Nodes int
}

// StartControlPlane starts everything and returns when the fake nodes are
// Ready.
func StartControlPlane(ctx context.Context, o ControlPlaneOptions) (cp *ControlPlane, err error) {
	dir, err := os.MkdirTemp("", "scale-")
	if err != nil {
		return nil, err
	}
	cp = &ControlPlane{Dir: dir}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()
	cp.env = &envtest.Environment{
		CRDDirectoryPaths:     []string{o.CRDs},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: o.Bin,
	}
	etcd := &envtest.Etcd{}
	cp.env.ControlPlane.Etcd = etcd
	// A benchmark of the operator, not of the disk: etcd does not fsync, and
	// may hold the unrelated objects of the memory scenario.
	etcd.Configure().Set("unsafe-no-fsync", "true").Set("quota-backend-bytes", fmt.Sprint(8<<30))
	api := cp.env.ControlPlane.GetAPIServer()
	// Room for two Service addresses per Database (envtest's default is a
	// /24); nothing routes to them here (there is no kube-proxy).
	api.Configure().Set("max-requests-inflight", "800").Set("max-mutating-requests-inflight", "400").
		Set("service-cluster-ip-range", "10.0.0.0/16")
	// SCALE_AUDIT_LOG: who deletes and evicts pods, for diagnosis.
	if path := os.Getenv("SCALE_AUDIT_LOG"); path != "" {
		policy := path + ".policy.yaml"
		if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
			return cp, err
		}
		api.Configure().Set("audit-policy-file", policy).Set("audit-log-path", path)
	}
	if _, err = cp.env.Start(); err != nil {
		return cp, fmt.Errorf("starting etcd and kube-apiserver: %w", err)
	}
	admin, err := cp.env.AddUser(envtest.User{Name: "scale-admin", Groups: []string{"system:masters"}}, &rest.Config{QPS: 1000, Burst: 2000})
	if err != nil {
		return cp, err
	}
	cp.Config = admin.Config()
	kc, err := admin.KubeConfig()
	if err != nil {
		return cp, err
	}
	cp.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err = os.WriteFile(cp.Kubeconfig, kc, 0o600); err != nil {
		return cp, err
	}
	if cp.Client, err = client.New(cp.Config, client.Options{Scheme: scheme.New()}); err != nil {
		return cp, err
	}

	schedConfig := filepath.Join(dir, "scheduler.yaml")
	// Claims are bound by the benchmark (there is no storage), so the volume
	// plugins are off.
	if err = os.WriteFile(schedConfig, []byte(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: `+cp.Kubeconfig+`
  qps: 300
  burst: 600
leaderElection:
  leaderElect: false
profiles:
- schedulerName: default-scheduler
  plugins:
    multiPoint:
      disabled:
      - name: VolumeBinding
      - name: VolumeZone
      - name: VolumeRestrictions
      - name: NodeVolumeLimits
`), 0o600); err != nil {
		return cp, err
	}
	// The controller manager's and the scheduler's client limits are raised
	// so that they are not what the benchmark measures.
	cp.start(o.Log, filepath.Join(o.Bin, "kube-controller-manager"), "--kubeconfig="+cp.Kubeconfig,
		"--controllers=statefulset-controller,node-lifecycle-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller,job-controller",
		"--leader-elect=false", "--secure-port=0", "--kube-api-qps=300", "--kube-api-burst=600",
		"--concurrent-statefulset-syncs=20", "--concurrent-service-endpoint-syncs=20", "--concurrent-gc-syncs=40")
	cp.start(o.Log, filepath.Join(o.Bin, "kube-scheduler"), "--config="+schedConfig, "--secure-port=0")
	stages, err := filepath.Glob(filepath.Join(o.KwokStages, "*.yaml"))
	if err != nil || len(stages) == 0 {
		return cp, fmt.Errorf("no kwok stages in %s (make kwok)", o.KwokStages)
	}
	kwokArgs := []string{"--kubeconfig=" + cp.Kubeconfig, "--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake", "--cidr=" + PodCIDR, "--node-ip=" + NodeIP}
	for _, s := range stages {
		// kwok's own pod-delete stage deletes by name, without the pod's UID:
		// under load it replays a deletion on the StatefulSet's next pod of
		// the same name, every ~12 s, and that pod never becomes ready. The
		// reaper below finishes deletions instead.
		if filepath.Base(s) == "pod-delete.yaml" {
			continue
		}
		kwokArgs = append(kwokArgs, "--config="+s)
	}
	if err = cp.startReaper(ctx); err != nil {
		return cp, err
	}
	cp.start(o.Log, o.Kwok, kwokArgs...)
	for _, c := range cp.procs {
		if err = c.Err; err != nil {
			return cp, err
		}
	}
	if o.Nodes == 0 {
		o.Nodes = 1
	}
	for i := range o.Nodes {
		if err = cp.Client.Create(ctx, fakeNode(fmt.Sprintf("kwok-node-%d", i))); err != nil {
			return cp, fmt.Errorf("creating the fake node: %w", err)
		}
	}
	return cp, cp.waitNodesReady(ctx, o.Nodes)
}

func (cp *ControlPlane) start(log io.Writer, bin string, args ...string) {
	c := exec.Command(bin, args...) // #nosec G204 -- the benchmark's own binaries
	c.Stdout, c.Stderr = log, log
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlives the benchmark
	if err := c.Start(); err != nil {
		c.Err = fmt.Errorf("starting %s: %w", filepath.Base(bin), err)
	}
	cp.procs = append(cp.procs, c)
}

// startReaper plays the kubelet's part in a pod's deletion: a pod marked for
// deletion is removed at once (no grace: nothing runs in it), with its UID as
// a precondition so that a StatefulSet's replacement of the same name is never
// hit.
func (cp *ControlPlane) startReaper(ctx context.Context) error {
	ctx, cp.stopReaper = context.WithCancel(ctx)
	c, err := crcache.New(cp.Config, crcache.Options{Scheme: scheme.New()})
	if err != nil {
		return err
	}
	inf, err := c.GetInformer(ctx, &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}})
	if err != nil {
		return err
	}
	work := make(chan *metav1.PartialObjectMetadata, 4096)
	queue := func(obj any) {
		if m, ok := obj.(*metav1.PartialObjectMetadata); ok && m.DeletionTimestamp != nil {
			select {
			case work <- m:
			case <-ctx.Done():
			}
		}
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: queue, UpdateFunc: func(_, o any) { queue(o) }}); err != nil {
		return err
	}
	for range 8 {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case m := <-work:
					pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: m.Namespace, Name: m.Name}}
					_ = cp.Client.Delete(ctx, pod, client.GracePeriodSeconds(0), client.Preconditions{UID: &m.UID})
				}
			}
		}()
	}
	go func() { _ = c.Start(ctx) }()
	return nil
}

// fakeNode is a node kwok manages, with room for every pod of the benchmark.
func fakeNode(name string) *corev1.Node {
	alloc := corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("1000"), corev1.ResourceMemory: resource.MustParse("10Ti"),
		corev1.ResourcePods: resource.MustParse("100000"), corev1.ResourceEphemeralStorage: resource.MustParse("100Ti"),
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
			Labels:      map[string]string{"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
		Status: corev1.NodeStatus{Capacity: alloc, Allocatable: alloc},
	}
}

func (cp *ControlPlane) waitNodesReady(ctx context.Context, n int) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		var nodes corev1.NodeList
		if err := cp.Client.List(ctx, &nodes); err != nil {
			return err
		}
		ready := 0
		for _, nd := range nodes.Items {
			for _, c := range nd.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		if ready >= n {
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("kwok did not make the %d fake nodes Ready in 2 minutes", n)
}

// Stop stops every component and removes the directory.
func (cp *ControlPlane) Stop() {
	if cp.stopReaper != nil {
		cp.stopReaper()
	}
	for i := len(cp.procs) - 1; i >= 0; i-- {
		if p := cp.procs[i].Process; p != nil {
			_ = p.Kill()
			_, _ = cp.procs[i].Process.Wait()
		}
	}
	if cp.env != nil {
		_ = cp.env.Stop()
	}
	_ = os.RemoveAll(cp.Dir)
}

// Args is a helper for logs: the command line of the components.
func (cp *ControlPlane) Args() string {
	var out []string
	for _, c := range cp.procs {
		out = append(out, strings.Join(c.Args, " "))
	}
	return strings.Join(out, "\n")
}

// auditPolicy records pod deletions and evictions with their user.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["delete", "deletecollection", "create"]
  resources:
  - group: ""
    resources: ["pods", "pods/eviction"]
- level: None
`
