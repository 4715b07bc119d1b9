package scale

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	databasev1 "github.com/example/postgres-operator/api/v1"
)

// The peer comparison (make bench-scale-peer): this operator and
// CloudNativePG, each alone on a fresh control plane, with their instance
// agents unreachable (kwok's pods run nothing; every poll goes to a loopback
// address nothing serves). CloudNativePG then stops at each Cluster's first
// pod (it waits for that instance's status before it creates standbys), so
// the common goal is "the first instance pod runs and is Ready", for N
// objects, half with one instance and half with three.

// PeerFigures are one operator's figures in the comparison.
type PeerFigures struct {
	Name              string
	FirstPod          Convergence
	CreateRequests    int64
	SteadyWritesPerS  float64
	SteadyRequestsPS  float64
	SteadyRSS, Peak   int64
	SteadyWriteDetail Counts
}

// PeerOptions size the comparison.
type PeerOptions struct {
	N        int
	Steady   time.Duration
	Converge time.Duration
	Out, Log io.Writer
}

// RunOurs measures this operator with unreachable agents.
func RunOurs(ctx context.Context, cp *ControlPlane, operator string, o PeerOptions) (*PeerFigures, error) {
	op, err := StartOperator(operator, cp.Kubeconfig, "unreachable", o.Log)
	if err != nil {
		return nil, err
	}
	defer op.Kill()
	return measurePeer(ctx, cp, o, "postgres-operator", op, op.Requests, func(ns, name string, instances int) client.Object {
		r := int32(instances)
		return &databasev1.Database{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: databasev1.DatabaseSpec{Image: "postgres:17", Replicas: &r, DatabaseName: "app", Username: "app", Storage: databasev1.StorageSpec{Size: "1Gi"}}}
	}, "-0")
}

// RunCNPG measures CloudNativePG's manager (built from its source) with its
// CRDs from crdDir, through a counting proxy to the API server.
func RunCNPG(ctx context.Context, cp *ControlPlane, manager, crdDir string, o PeerOptions) (*PeerFigures, error) {
	if err := refuseIfAgentPortServed(8000); err != nil {
		return nil, err
	}
	crds, err := filepath.Glob(filepath.Join(crdDir, "*.yaml"))
	if err != nil || len(crds) == 0 {
		return nil, fmt.Errorf("no CRDs in %s", crdDir)
	}
	for _, f := range crds {
		b, err := os.ReadFile(f) // #nosec G304 -- the peer's CRD files
		if err != nil {
			return nil, err
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(b, &u.Object); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if err := cp.Client.Patch(ctx, u, client.Apply, client.FieldOwner("bench-scale"), client.ForceOwnership); err != nil {
			return nil, fmt.Errorf("installing %s: %w", filepath.Base(f), err)
		}
	}
	if err := cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cnpg-system"}}); err != nil {
		return nil, err
	}
	time.Sleep(3 * time.Second) // the CRDs are served
	counts := &Requests{}
	proxy, kubeconfig, err := countingProxy(cp, counts)
	if err != nil {
		return nil, err
	}
	defer proxy.Close()

	// Its working directory: the webhook's certificate (its webhooks are
	// not registered with the API server, but it serves them), and the
	// operator/manager_<arch> file it hashes for its status.
	dir := filepath.Join(cp.Dir, "cnpg")
	for _, d := range []string{"certs", "operator", "plugins"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			return nil, err
		}
	}
	if err := selfSignedCert(filepath.Join(dir, "certs")); err != nil {
		return nil, err
	}
	if err := copyFile(manager, filepath.Join(dir, "operator", "manager_amd64")); err != nil {
		return nil, err
	}
	mport, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	wport, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(manager, "controller", fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", mport), fmt.Sprintf("--webhook-port=%d", wport)) // #nosec G204 -- the peer's binary
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "OPERATOR_NAMESPACE=cnpg-system",
		"WEBHOOK_CERT_DIR="+filepath.Join(dir, "certs"), "PLUGIN_SOCKET_DIR="+filepath.Join(dir, "plugins"), "MANAGE_WEBHOOK_CONFIGURATIONS=false")
	cmd.Stdout, cmd.Stderr = o.Log, o.Log
	op, err := startProcess(cmd)
	if err != nil {
		return nil, err
	}
	op.metricsURL = fmt.Sprintf("http://127.0.0.1:%d/metrics", mport)
	defer op.Kill()
	snapshot := func(context.Context) (Counts, error) { return Index(counts.Snapshot()), nil }
	return measurePeer(ctx, cp, o, "CloudNativePG", op, snapshot, func(ns, name string, instances int) client.Object {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
			"metadata": map[string]any{"namespace": ns, "name": name},
			"spec":     map[string]any{"instances": int64(instances), "storage": map[string]any{"size": "1Gi"}},
		}}
		return u
	}, "-1")
}

// refuseIfAgentPortServed fails when something on this machine serves the
// instances' port on all addresses: the peer's polls to loopback pod
// addresses would reach it.
func refuseIfAgentPortServed(port int) error {
	l, err := net.Listen("tcp", fmt.Sprintf("127.1.255.254:%d", port))
	if err != nil {
		return fmt.Errorf("port %d is served on loopback here; the peer's instance polls would reach it: %w", port, err)
	}
	return l.Close()
}

// countingProxy serves the API server on a loopback address without
// authentication (as the admin), counting each request.
func countingProxy(cp *ControlPlane, counts *Requests) (*http.Server, string, error) {
	rt, err := rest.TransportFor(cp.Config)
	if err != nil {
		return nil, "", err
	}
	target, err := url.Parse(cp.Config.Host)
	if err != nil {
		return nil, "", err
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = counts.Wrap(rt)
	rp.FlushInterval = -1
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	kc := filepath.Join(cp.Dir, "proxy.kubeconfig")
	err = os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: proxy, cluster: {server: "http://`+l.Addr().String()+`"}}]
users: [{name: proxy, user: {}}]
contexts: [{name: proxy, context: {cluster: proxy, user: proxy}}]
current-context: proxy
`), 0o600)
	return srv, kc, err
}

func measurePeer(ctx context.Context, cp *ControlPlane, o PeerOptions, name string, op *Operator, requests func(context.Context) (Counts, error),
	object func(ns, name string, instances int) client.Object, firstPodSuffix string) (*PeerFigures, error) {
	f := &PeerFigures{Name: name}
	fmt.Fprintf(o.Out, "== %s: %d objects (half 1 instance, half 3), agents unreachable\n", name, o.N)
	time.Sleep(5 * time.Second) // its caches sync
	before, err := requests(ctx)
	if err != nil {
		return nil, err
	}
	for _, ns := range []string{"single-0", "ha-0"} {
		if err := cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return nil, err
		}
	}
	created := map[string]time.Time{}
	var mu sync.Mutex
	if err := parallel(ctx, o.N, 16, func(i int) error {
		instances, ns := 1, "single-0"
		if i%2 == 1 {
			instances, ns = 3, "ha-0"
		}
		obj := object(ns, fmt.Sprintf("db-%05d", i), instances)
		mu.Lock()
		created[ns+"/"+obj.GetName()+firstPodSuffix] = time.Now()
		mu.Unlock()
		return cp.Client.Create(ctx, obj)
	}); err != nil {
		return nil, err
	}
	// Poll the pods (a List a second) until every first pod is Ready.
	ready := map[string]time.Time{}
	deadline := time.Now().Add(o.Converge)
	for len(ready) < len(created) && time.Now().Before(deadline) {
		var pods corev1.PodList
		if err := cp.Client.List(ctx, &pods); err != nil {
			return nil, err
		}
		now := time.Now()
		for i := range pods.Items {
			key := pods.Items[i].Namespace + "/" + pods.Items[i].Name
			if _, ok := created[key]; ok && podReady(&pods.Items[i]) {
				if _, seen := ready[key]; !seen {
					ready[key] = now
				}
			}
		}
		time.Sleep(time.Second)
	}
	var ds []time.Duration
	var first, last time.Time
	for key, at := range created {
		if first.IsZero() || at.Before(first) {
			first = at
		}
		r, ok := ready[key]
		if !ok {
			f.FirstPod.Missing = append(f.FirstPod.Missing, key)
			continue
		}
		ds = append(ds, r.Sub(at))
		if r.After(last) {
			last = r
		}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	if f.FirstPod.N = len(ds); f.FirstPod.N > 0 {
		f.FirstPod.P50, f.FirstPod.P95, f.FirstPod.Max, f.FirstPod.Span = ds[(len(ds)-1)/2], ds[(len(ds)-1)*95/100], ds[len(ds)-1], last.Sub(first)
	}
	printConvergence(o.Out, "first instance pods Ready", f.FirstPod)
	// Settle one minute, then the steady state.
	time.Sleep(time.Minute)
	mid, err := requests(ctx)
	if err != nil {
		return nil, err
	}
	f.CreateRequests = mid.Minus(before).Sum(func(RequestKey) bool { return true })
	time.Sleep(o.Steady)
	after, err := requests(ctx)
	if err != nil {
		return nil, err
	}
	steady := after.Minus(mid)
	f.SteadyWriteDetail = Counts{}
	for k, n := range steady {
		if IsWrite(k.Verb) {
			f.SteadyWriteDetail[k] = n
		}
	}
	f.SteadyWritesPerS = float64(f.SteadyWriteDetail.Sum(func(RequestKey) bool { return true })) / o.Steady.Seconds()
	f.SteadyRequestsPS = float64(steady.Sum(func(RequestKey) bool { return true })) / o.Steady.Seconds()
	f.SteadyRSS, f.Peak = op.RSS(), op.PeakRSS()
	fmt.Fprintf(o.Out, "requests per object, creation to a minute after: %.1f; steady state: %.2f writes/s, %.2f requests/s; RSS %.1f MiB (peak %.1f)\n",
		float64(f.CreateRequests)/float64(o.N), f.SteadyWritesPerS, f.SteadyRequestsPS, mib(f.SteadyRSS), mib(f.Peak))
	if len(f.SteadyWriteDetail) > 0 {
		printRequests(o.Out, "steady-state writes", f.SteadyWriteDetail, 1)
	}
	return f, nil
}

// PrintPeers prints ours beside the peer's, with ratios (peer / ours).
func PrintPeers(out io.Writer, ours, peer *PeerFigures, n int) {
	ratio := func(p, o float64) string {
		if o == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f×", p/o)
	}
	fmt.Fprintf(out, "\n| %d objects, agents unreachable | %s | %s | %s / %s |\n|---|---|---|---|\n", n, ours.Name, peer.Name, peer.Name, ours.Name)
	row := func(what string, o, p float64, unit string) {
		fmt.Fprintf(out, "| %s | %.2f %s | %.2f %s | %s |\n", what, o, unit, p, unit, ratio(p, o))
	}
	row("first pods Ready, p50", ours.FirstPod.P50.Seconds(), peer.FirstPod.P50.Seconds(), "s")
	row("first pods Ready, p95", ours.FirstPod.P95.Seconds(), peer.FirstPod.P95.Seconds(), "s")
	row("first pods Ready, makespan", ours.FirstPod.Span.Seconds(), peer.FirstPod.Span.Seconds(), "s")
	row("requests per object (creation + 1 min)", float64(ours.CreateRequests)/float64(n), float64(peer.CreateRequests)/float64(n), "")
	row("steady-state writes", ours.SteadyWritesPerS, peer.SteadyWritesPerS, "/s")
	row("steady-state requests", ours.SteadyRequestsPS, peer.SteadyRequestsPS, "/s")
	row("RSS at steady state", mib(ours.SteadyRSS), mib(peer.SteadyRSS), "MiB")
	row("peak RSS", mib(ours.Peak), mib(peer.Peak), "MiB")
	if len(peer.FirstPod.Missing) > 0 || len(ours.FirstPod.Missing) > 0 {
		fmt.Fprintf(out, "not converged: ours %d, peer %d\n", len(ours.FirstPod.Missing), len(peer.FirstPod.Missing))
	}
}

func selfSignedCert(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cnpg-webhook-service"},
		DNSNames: []string{"cnpg-webhook-service.cnpg-system.svc"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "apiserver.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "apiserver.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src) // #nosec G304 -- the peer's binary
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o600)
}
