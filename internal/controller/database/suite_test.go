package database

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/scheme"
	"github.com/example/postgres-operator/internal/testenv"
)

// The suite runs one real kube-apiserver and etcd (envtest) for the package, and the
// Database controller in a manager against it. envtest has no kubelet and no
// StatefulSet controller: tests play their part by writing StatefulSet status and
// Pods, and script what the instance agents report through fakeInstances.

var (
	k8s       client.Client // the test's own client, uncached
	restCfg   *rest.Config  // the API server, as the suite's admin
	instances = &fakeInstances{reports: map[string]InstanceReport{}}
	writes    = &writeCounter{}
	testCtx   context.Context
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(true), zap.Level(zapLevel())))
	env, err := testenv.New()
	if err != nil {
		fmt.Fprintln(os.Stderr, "envtest:", err)
		return 1
	}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting envtest:", err)
		return 1
	}
	defer env.Stop() //nolint:errcheck

	restCfg = cfg
	k8s, err = client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	// The manager's requests go through a transport that counts writes.
	mgrCfg := rest.CopyConfig(cfg)
	mgrCfg.WrapTransport = writes.wrap
	mgr, err := ctrl.NewManager(mgrCfg, ctrl.Options{
		Scheme:  scheme.New(),
		Cache:   CacheOptions(),
		Metrics: metricsserver.Options{BindAddress: "0"},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := (&Reconciler{
		Client:             mgr.GetClient(),
		APIReader:          mgr.GetAPIReader(),
		ReadyGrace:         time.Second,
		Recorder:           mgr.GetEventRecorder("database-controller"),
		Instances:          instances,
		AgentImage:         "postgres-operator:test",
		RequeueProgressing: 200 * time.Millisecond,
		RequeueReady:       200 * time.Millisecond,
	}).SetupWithManager(mgr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := testenv.StartManager(mgr)
	testCtx = ctx
	code := m.Run()
	if err := stop(); err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
		return 1
	}
	return code
}

func zapLevel() zapcore.Level {
	if os.Getenv("TEST_VERBOSE") != "" {
		return -1
	}
	return 1 // warnings and errors only
}

// fakeInstances plays the instance agents: tests set what each pod reports and
// read the instructions the operator gave.
type fakeInstances struct {
	mu      sync.Mutex
	reports map[string]InstanceReport // key: namespace/pod
	calls   atomic.Int64
	// instructions lists "namespace/pod verb args" in order.
	instructions []string
}

func (f *fakeInstances) Statuses(ctx context.Context, pods []corev1.Pod, auth AgentAuth) map[string]InstanceReport {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]InstanceReport{}
	for _, p := range pods {
		// Like the HTTP client: an agent serving TLS is reached only with the
		// operator's mutual-TLS client, an older one with the token.
		e, err := agentapi.PodEndpoint(&p)
		if err != nil {
			out[p.Name] = InstanceReport{Err: err}
			continue
		}
		if e.TLS && auth.HTTPS == nil {
			out[p.Name] = InstanceReport{Err: fmt.Errorf("no TLS client for the agent")}
			continue
		}
		if !e.TLS && (len(auth.Tokens) == 0 || auth.Tokens[0] == "") {
			out[p.Name] = InstanceReport{Err: fmt.Errorf("no agent token")}
			continue
		}
		if r, ok := f.reports[p.Namespace+"/"+p.Name]; ok {
			out[p.Name] = r
			if r.Status != nil && r.Status.HoldsLease {
				f.takeLease(ctx, &p)
			}
		}
	}
	return out
}

// takeLease plays an agent that reports holding the Lease: the Lease names it.
func (f *fakeInstances) takeLease(ctx context.Context, p *corev1.Pod) {
	db := p.Labels[LabelDatabase]
	var l coordinationv1.Lease
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: p.Namespace, Name: db + "-primary"}, &l); err != nil {
		return
	}
	holder := agentapi.LeaseHolder(p.Name, string(p.UID))
	if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == holder {
		return
	}
	l.Spec.HolderIdentity = &holder
	now := metav1.NewMicroTime(time.Now())
	l.Spec.RenewTime = &now
	d := int32(15)
	l.Spec.LeaseDurationSeconds = &d
	_ = k8s.Update(ctx, &l)
}

func (f *fakeInstances) record(pod *corev1.Pod, what string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.instructions = append(f.instructions, pod.Namespace+"/"+pod.Name+" "+what)
}

func (f *fakeInstances) SetSlots(_ context.Context, pod *corev1.Pod, _ AgentAuth, names []string) error {
	f.record(pod, "slots "+strings.Join(names, ","))
	return nil
}

func (f *fakeInstances) Reclone(_ context.Context, pod *corev1.Pod, _ AgentAuth) error {
	f.record(pod, "reclone")
	return nil
}

func (f *fakeInstances) Recover(_ context.Context, pod *corev1.Pod, _ AgentAuth, source string) error {
	f.record(pod, "recover "+source)
	return nil
}

func (f *fakeInstances) RecoverInPlace(_ context.Context, pod *corev1.Pod, _ AgentAuth, req agentapi.InPlaceRecoveryRequest) error {
	f.record(pod, "recover-in-place "+req.ID+" undo="+req.Undo)
	return nil
}

// given returns the instructions given to pods of namespace ns.
func (f *fakeInstances) given(ns string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, in := range f.instructions {
		if strings.HasPrefix(in, ns+"/") {
			out = append(out, strings.TrimPrefix(in, ns+"/"))
		}
	}
	return out
}

func (f *fakeInstances) set(ns, pod string, r InstanceReport) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports[ns+"/"+pod] = r
}

// writeCounter counts the manager's mutating requests to the API server.
type writeCounter struct {
	mu    sync.Mutex
	count int
	log   []string
}

func (w *writeCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		switch req.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
			w.mu.Lock()
			w.count++
			w.log = append(w.log, req.Method+" "+req.URL.Path)
			w.mu.Unlock()
		}
		return rt.RoundTrip(req)
	})
}

func (w *writeCounter) snapshot() (int, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count, append([]string(nil), w.log...)
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
