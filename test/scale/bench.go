package scale

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/controller/database"
	"github.com/example/postgres-operator/internal/instance"
	"github.com/example/postgres-operator/internal/scheme"
)

// Options are one benchmark run's size and scenarios.
type Options struct {
	// Databases to create, half with one instance ("single-*" namespaces),
	// half with three ("ha-*"), over Namespaces namespaces of each kind.
	Databases, Namespaces int
	// Agents: "scripted" or "unreachable" (see test/scale/operator).
	Agents string
	// Steady is how long the steady state is watched.
	Steady time.Duration
	// Unrelated is how many unrelated Secrets and ConfigMaps (half each, of
	// UnrelatedSize bytes) are added after the steady state; 0 skips it.
	Unrelated, UnrelatedSize int
	// ImageChange, Restart and Delete run those scenarios.
	ImageChange, Restart, Delete bool
	// Converge bounds each wait for all Databases.
	Converge time.Duration
	// Operator is the operator binary; ManagerArgs its manager flags.
	Operator    string
	ManagerArgs []string
	// Out gets the figures; Log the components' output.
	Out, Log io.Writer
	// HeapProfile, when set, is where the operator's heap profile at steady
	// state is written (go tool pprof -top).
	HeapProfile string
}

// Report holds the figures the reduced test asserts on.
type Report struct {
	Create, ImageChange, Delete Convergence
	// RequestsPerDatabase: the operator's requests during creation and
	// convergence, per Database.
	CreateRequests Counts
	// ImageChangeRequests: the operator's requests during the image change
	// (its pod deletions among them).
	ImageChangeRequests Counts
	// SteadyWrites by namespace class ("single", "ha") and all of them.
	SteadyWrites  map[string]int64
	SteadyAll     Counts
	SteadySeconds float64
	// Lease traffic of the simulated agents during the steady state.
	LeaseWritesPerSecond, LeaseReadsPerSecond float64
	// Restart: time until every Database was reconciled, and the writes of
	// the new process in its first minute.
	Resync        time.Duration
	RestartWrites Counts
	// Memory, bytes.
	PeakRSS, SteadyRSS, UnrelatedRSS int64
	// The Go heap after a forced collection at steady state, and its growth
	// with the unrelated objects.
	SteadyLiveHeap, UnrelatedLiveHeap int64
	UnrelatedCacheRequests            Counts
}

// Convergence is how long the Databases took.
type Convergence struct {
	N                   int
	P50, P95, Max, Span time.Duration
	Missing             []string
}

// Run runs the scenarios on cp.
func Run(ctx context.Context, cp *ControlPlane, o Options) (*Report, error) {
	r := &Report{}
	h, err := newHarness(ctx, cp, o)
	if err != nil {
		return nil, err
	}
	defer h.stop()
	op, err := StartOperator(o.Operator, cp.Kubeconfig, o.Agents, o.Log, o.ManagerArgs...)
	if err != nil {
		return nil, err
	}
	defer func() { op.Kill() }()
	out := o.Out

	// Create.
	fmt.Fprintf(out, "== create %d Databases (%d with 1 instance, %d with 3; agents %s)\n", o.Databases, (o.Databases+1)/2, o.Databases/2, o.Agents)
	before, err := op.Requests(ctx)
	if err != nil {
		return nil, err
	}
	goal := h.readyGoal("")
	if o.Agents == "unreachable" {
		goal = h.childrenGoal
	}
	round := h.track(goal)
	if err := h.createAll(ctx); err != nil {
		return nil, err
	}
	r.Create = round.wait(ctx, o.Converge)
	printConvergence(out, "converged", r.Create)
	if err := h.settle(ctx, op, 5*time.Second); err != nil {
		return nil, err
	}
	after, err := op.Requests(ctx)
	if err != nil {
		return nil, err
	}
	r.CreateRequests = after.Minus(before)
	printRequests(out, "operator requests per Database, creation to quiet", r.CreateRequests, float64(o.Databases))

	// Steady state.
	fmt.Fprintf(out, "== steady state %s\n", o.Steady)
	before, _ = op.Requests(ctx)
	leaseW0, leaseR0 := h.leaseWrites.Load(), h.leaseReads.Load()
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(o.Steady):
	}
	after, err = op.Requests(ctx)
	if err != nil {
		return nil, err
	}
	r.SteadySeconds = time.Since(t0).Seconds()
	r.LeaseWritesPerSecond = float64(h.leaseWrites.Load()-leaseW0) / r.SteadySeconds
	r.LeaseReadsPerSecond = float64(h.leaseReads.Load()-leaseR0) / r.SteadySeconds
	r.SteadyAll = after.Minus(before)
	r.SteadyWrites = map[string]int64{}
	for k, n := range r.SteadyAll {
		if IsWrite(k.Verb) {
			r.SteadyWrites[k.Class] += n
			r.SteadyWrites["all"] += n
		}
	}
	r.SteadyRSS = op.RSS()
	if o.HeapProfile != "" {
		if err := op.SaveHeapProfile(ctx, o.HeapProfile); err != nil {
			fmt.Fprintln(out, "heap profile:", err)
		}
	}
	fmt.Fprintf(out, "operator writes: %d by 1-instance Databases, %d by 3-instance Databases, %d in all (%.2f/s)\n",
		r.SteadyWrites["single"], r.SteadyWrites["ha"], r.SteadyWrites["all"], float64(r.SteadyWrites["all"])/r.SteadySeconds)
	printRequests(out, "operator requests per second", r.SteadyAll, r.SteadySeconds)
	if o.Agents == "scripted" {
		fmt.Fprintf(out, "agents' Lease traffic (the agents' own Lease code, one per instance pod): %.1f writes/s, %.1f reads/s with %d 3-instance Databases\n",
			r.LeaseWritesPerSecond, r.LeaseReadsPerSecond, o.Databases/2)
	}
	heap, _ := op.HeapInUse(ctx)
	r.SteadyLiveHeap, _ = op.LiveHeap(ctx)
	fmt.Fprintf(out, "operator RSS at steady state: %.1f MiB (Go heap in use %.1f MiB, live after a GC %.1f MiB)\n",
		mib(r.SteadyRSS), mib(heap), mib(r.SteadyLiveHeap))

	if o.Unrelated > 0 {
		fmt.Fprintf(out, "== %d unrelated Secrets and ConfigMaps of %d KiB\n", o.Unrelated, o.UnrelatedSize/1024)
		before, _ = op.Requests(ctx)
		rss0 := op.RSS()
		if err := h.createUnrelated(ctx, o.Unrelated, o.UnrelatedSize); err != nil {
			return nil, err
		}
		time.Sleep(15 * time.Second)
		r.UnrelatedRSS = op.RSS() - rss0
		live, _ := op.LiveHeap(ctx)
		r.UnrelatedLiveHeap = live - r.SteadyLiveHeap
		after, _ = op.Requests(ctx)
		r.UnrelatedCacheRequests = after.Minus(before)
		fmt.Fprintf(out, "operator RSS growth: %+.1f MiB (from %.1f MiB); live heap after a GC: %+.1f MiB (from %.1f MiB)\n",
			mib(r.UnrelatedRSS), mib(rss0), mib(r.UnrelatedLiveHeap), mib(r.SteadyLiveHeap))
	}

	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if o.ImageChange {
		fmt.Fprintln(out, "== image change on every Database (postgres:17 -> postgres:17.7)")
		round := h.track(h.readyGoal("17.7"))
		before, _ := op.Requests(ctx)
		if err := h.patchAll(ctx, `{"spec":{"image":"postgres:17.7"}}`); err != nil {
			return nil, err
		}
		r.ImageChange = round.wait(ctx, o.Converge)
		after, _ := op.Requests(ctx)
		r.ImageChangeRequests = after.Minus(before)
		printConvergence(out, "rolled and Ready on 17.7", r.ImageChange)
		printRequests(out, "operator requests per Database, image change", r.ImageChangeRequests, float64(o.Databases))
		h.describe(ctx, out, r.ImageChange.Missing, 3)
	}

	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if o.Restart {
		fmt.Fprintln(out, "== operator restart")
		// Restart a quiet operator: what the new process writes is then
		// what it does not know, not what the old one had still to write.
		// A Ready Database is reconciled every 30 s: one such period.
		if err := h.settle(ctx, op, 35*time.Second); err != nil {
			return nil, err
		}
		op.Stop()
		op, err = StartOperator(o.Operator, cp.Kubeconfig, o.Agents, o.Log, o.ManagerArgs...)
		if err != nil {
			return nil, err
		}
		r.Resync, err = waitResync(ctx, op, o.Databases, o.Converge)
		if err != nil {
			return nil, err
		}
		// A full Ready requeue period, then count.
		time.Sleep(max(0, 40*time.Second-time.Since(op.Started)))
		after, err = op.Requests(ctx)
		if err != nil {
			return nil, err
		}
		r.RestartWrites = Counts{}
		for k, n := range after {
			if IsWrite(k.Verb) {
				r.RestartWrites[k] = n
			}
		}
		fmt.Fprintf(out, "every Database reconciled %s after the start; writes in the first %s: %d\n",
			r.Resync.Round(10*time.Millisecond), time.Since(op.Started).Round(time.Second), r.RestartWrites.Sum(func(RequestKey) bool { return true }))
		printRequests(out, "requests of the new process", after, 1)
	}
	r.PeakRSS = op.PeakRSS()

	if o.Delete {
		fmt.Fprintln(out, "== delete every Database")
		d, err := h.deleteAll(ctx, o.Converge)
		if err != nil {
			return nil, err
		}
		r.Delete = d
		printConvergence(out, "gone with their StatefulSets", r.Delete)
	}
	fmt.Fprintf(out, "operator peak RSS: %.1f MiB\n", mib(r.PeakRSS))
	return r, nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// printRequests prints counts by verb and resource (namespace classes
// added), divided by per.
func printRequests(out io.Writer, title string, c Counts, per float64) {
	agg := map[string]int64{}
	var total int64
	for k, n := range c {
		agg[k.Verb+" "+k.Resource] += n
		total += n
	}
	keys := make([]string, 0, len(agg))
	for k := range agg {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "  %-40s %8.2f\n", k, float64(agg[k])/per)
	}
	fmt.Fprintf(out, "%s: %.2f\n%s", title, float64(total)/per, b.String())
}

func printConvergence(out io.Writer, what string, c Convergence) {
	fmt.Fprintf(out, "%d %s: p50 %s  p95 %s  max %s  makespan %s", c.N, what,
		c.P50.Round(10*time.Millisecond), c.P95.Round(10*time.Millisecond), c.Max.Round(10*time.Millisecond), c.Span.Round(10*time.Millisecond))
	if len(c.Missing) > 0 {
		fmt.Fprintf(out, "  NOT CONVERGED: %d (e.g. %s)", len(c.Missing), c.Missing[0])
	}
	fmt.Fprintln(out)
}

// waitResync waits until the controller has reconciled every Database once
// and its queue is empty.
func waitResync(ctx context.Context, op *Operator, n int, limit time.Duration) (time.Duration, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		total, depth, err := op.Reconciles(ctx)
		if err == nil && total >= float64(n) && depth == 0 {
			return time.Since(op.Started), nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, errors.New("the restarted operator did not reconcile every Database in time")
}

// harness creates the objects, plays the storage provisioner and tracks the
// Databases through a watch.
type harness struct {
	cp    *ControlPlane
	o     Options
	cache cache.Cache
	stopC context.CancelFunc

	mu      sync.Mutex
	dbs     map[types.NamespacedName]*databasev1.Database
	created map[types.NamespacedName]time.Time
	rounds  []*round

	leaseWrites, leaseReads atomic.Int64

	// leaseClient is the simulated agents' client, without a client-side
	// rate limit: each real agent has its own client.
	leaseClient client.Client
	agentsMu    sync.Mutex
	agents      map[types.UID]context.CancelFunc
	agentsCtx   context.Context

	routeMu sync.Mutex
	routed  map[types.NamespacedName]string // Database -> the pods its slice lists
}

// route plays the EndpointSlice controller for a Database's read-write
// Service: its slice lists the ready pods labelled primary. The API server
// refuses loopback addresses in EndpointSlices (kube-controller-manager's
// controller cannot list kwok's pods), so the slice is of type FQDN with a
// name under .invalid (RFC 6761: never resolves): no address but the pods'
// loopback ones is ever written. The operator reads the slices' targetRefs.
func (h *harness) route(ctx context.Context, key types.NamespacedName) {
	var pods corev1.PodList
	if err := h.cache.List(ctx, &pods, client.InNamespace(key.Namespace), client.MatchingLabels{database.LabelDatabase: key.Name, database.LabelRole: agentapi.RolePrimary}); err != nil {
		return
	}
	var eps []discoveryv1.Endpoint
	var names []string
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp != nil || p.Status.PodIP == "" || !podReady(p) {
			continue
		}
		names = append(names, p.Name)
		eps = append(eps, discoveryv1.Endpoint{Addresses: []string{p.Name + ".pods.invalid"},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name, UID: p.UID}})
	}
	want := strings.Join(names, ",")
	h.routeMu.Lock()
	have, known := h.routed[key]
	h.routeMu.Unlock()
	if known && have == want {
		return
	}
	slice := &discoveryv1.EndpointSlice{
		TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name + "-bench",
			Labels: map[string]string{discoveryv1.LabelServiceName: key.Name, discoveryv1.LabelManagedBy: "bench-scale"}},
		AddressType: discoveryv1.AddressTypeFQDN,
		Endpoints:   eps,
	}
	if err := h.cp.Client.Patch(ctx, slice, client.Apply, client.FieldOwner("bench-scale"), client.ForceOwnership); err != nil {
		return
	}
	h.routeMu.Lock()
	h.routed[key] = want
	h.routeMu.Unlock()
}

// describe prints the state of up to max of the Databases that missed a
// goal: their status and conditions, their pods and their Lease.
func (h *harness) describe(ctx context.Context, out io.Writer, keys []string, limit int) {
	for i, k := range keys {
		if i == limit {
			break
		}
		ns, name, _ := strings.Cut(k, "/")
		var db databasev1.Database
		if err := h.cache.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &db); err != nil {
			fmt.Fprintf(out, "  %s: %v\n", k, err)
			continue
		}
		st := db.Status
		fmt.Fprintf(out, "  %s gen %d observed %d phase %s image %s version %s primary %s target %s ready %d/%d\n",
			k, db.Generation, st.ObservedGeneration, st.Phase, st.Image, st.PostgresVersion, st.CurrentPrimary, st.TargetPrimary, st.ReadyReplicas, st.Replicas)
		for _, c := range st.Conditions {
			fmt.Fprintf(out, "    %s=%s %s: %s\n", c.Type, c.Status, c.Reason, c.Message)
		}
		var pods corev1.PodList
		_ = h.cache.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels{database.LabelDatabase: name})
		for _, p := range pods.Items {
			fmt.Fprintf(out, "    pod %s role %s image %s phase %s ready %t deleting %t age %s\n", p.Name, p.Labels[database.LabelRole],
				p.Spec.Containers[0].Image, p.Status.Phase, podReady(&p), p.DeletionTimestamp != nil, time.Since(p.CreationTimestamp.Time).Round(time.Second))
		}
		var l coordinationv1.Lease
		if err := h.cp.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name + "-primary"}, &l); err == nil && l.Spec.HolderIdentity != nil {
			fmt.Fprintf(out, "    lease holder %s renewed %s ago transitions %d\n", *l.Spec.HolderIdentity, time.Since(l.Spec.RenewTime.Time).Round(time.Millisecond), ptr.Deref(l.Spec.LeaseTransitions, 0))
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func newHarness(ctx context.Context, cp *ControlPlane, o Options) (*harness, error) {
	c, err := cache.New(cp.Config, cache.Options{Scheme: scheme.New()})
	if err != nil {
		return nil, err
	}
	h := &harness{cp: cp, o: o, cache: c, dbs: map[types.NamespacedName]*databasev1.Database{}, created: map[types.NamespacedName]time.Time{}}
	cctx, cancel := context.WithCancel(ctx)
	h.stopC = cancel
	dbInf, err := c.GetInformer(cctx, &databasev1.Database{})
	if err != nil {
		return nil, err
	}
	_, _ = dbInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { h.observe(obj) },
		UpdateFunc: func(_, obj any) { h.observe(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if db, ok := obj.(*databasev1.Database); ok {
				h.mu.Lock()
				delete(h.dbs, client.ObjectKeyFromObject(db))
				h.mu.Unlock()
			}
		},
	})
	// The storage: claims are bound as soon as they exist.
	pvcInf, err := c.GetInformer(cctx, &corev1.PersistentVolumeClaim{})
	if err != nil {
		return nil, err
	}
	claims := make(chan types.NamespacedName, 100000)
	bind := func(obj any) {
		if pvc, ok := obj.(*corev1.PersistentVolumeClaim); ok && pvc.Status.Phase != corev1.ClaimBound && pvc.DeletionTimestamp == nil {
			claims <- client.ObjectKeyFromObject(pvc)
		}
	}
	_, _ = pvcInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: bind, UpdateFunc: func(_, o any) { bind(o) }})
	for range 8 {
		go func() {
			for {
				select {
				case <-cctx.Done():
					return
				case key := <-claims:
					h.bindClaim(cctx, key)
				}
			}
		}()
	}
	// The read-write Services' EndpointSlices (see route).
	podInf, err := c.GetInformer(cctx, &corev1.Pod{})
	if err != nil {
		return nil, err
	}
	routes := make(chan types.NamespacedName, 100000)
	queueRoute := func(obj any) {
		if t, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if p, ok := obj.(*corev1.Pod); ok && p.Labels[database.LabelDatabase] != "" {
			routes <- types.NamespacedName{Namespace: p.Namespace, Name: p.Labels[database.LabelDatabase]}
		}
	}
	_, _ = podInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: queueRoute, UpdateFunc: func(_, o any) { queueRoute(o) }, DeleteFunc: queueRoute})
	// The agents' Lease protocol, where there are (scripted) agents.
	h.agents, h.agentsCtx = map[types.UID]context.CancelFunc{}, cctx
	lcfg := rest.CopyConfig(cp.Config)
	lcfg.QPS, lcfg.Burst = -1, 0
	if h.leaseClient, err = client.New(lcfg, client.Options{Scheme: scheme.New()}); err != nil {
		return nil, err
	}
	if o.Agents == "scripted" {
		_, _ = podInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: h.leaseAgent, UpdateFunc: func(_, o any) { h.leaseAgent(o) }, DeleteFunc: h.leaseAgent})
	}
	h.routed = map[types.NamespacedName]string{}
	for range 4 {
		go func() {
			for {
				select {
				case <-cctx.Done():
					return
				case key := <-routes:
					h.route(cctx, key)
				}
			}
		}()
	}
	go func() { _ = c.Start(cctx) }()
	if !c.WaitForCacheSync(cctx) {
		return nil, errors.New("the harness's cache did not sync")
	}
	return h, nil
}

func (h *harness) stop() { h.stopC() }

func (h *harness) bindClaim(ctx context.Context, key types.NamespacedName) {
	var pvc corev1.PersistentVolumeClaim
	if err := h.cp.Client.Get(ctx, key, &pvc); err != nil || pvc.Status.Phase == corev1.ClaimBound {
		return
	}
	pvc.Status.Phase = corev1.ClaimBound
	pvc.Status.AccessModes = pvc.Spec.AccessModes
	pvc.Status.Capacity = corev1.ResourceList{corev1.ResourceStorage: pvc.Spec.Resources.Requests[corev1.ResourceStorage]}
	_ = h.cp.Client.Status().Update(ctx, &pvc)
}

// round is one wait for every Database to reach a goal.
type round struct {
	h     *harness
	goal  func(*databasev1.Database) bool
	start map[types.NamespacedName]time.Time
	done  map[types.NamespacedName]time.Time
	begin time.Time
}

func (h *harness) track(goal func(*databasev1.Database) bool) *round {
	h.mu.Lock()
	defer h.mu.Unlock()
	rd := &round{h: h, goal: goal, start: map[types.NamespacedName]time.Time{}, done: map[types.NamespacedName]time.Time{}, begin: time.Now()}
	h.rounds = append(h.rounds, rd)
	return rd
}

func (h *harness) observe(obj any) {
	db, ok := obj.(*databasev1.Database)
	if !ok {
		return
	}
	key := client.ObjectKeyFromObject(db)
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dbs[key] = db
	for _, rd := range h.rounds {
		if _, ok := rd.done[key]; !ok && rd.goal(db) {
			rd.done[key] = now
		}
	}
}

// wait returns when every Database the harness created reached the goal, or
// at the limit with the ones that did not.
func (rd *round) wait(ctx context.Context, limit time.Duration) Convergence {
	deadline := time.Now().Add(limit)
	for {
		rd.h.mu.Lock()
		n, total := len(rd.done), len(rd.h.created)
		rd.h.mu.Unlock()
		if (n >= total && total > 0) || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	rd.h.mu.Lock()
	defer rd.h.mu.Unlock()
	var c Convergence
	var ds []time.Duration
	first, last := time.Time{}, time.Time{}
	for key, created := range rd.h.created {
		from := rd.start[key]
		if from.IsZero() {
			from = created
		}
		if first.IsZero() || from.Before(first) {
			first = from
		}
		at, ok := rd.done[key]
		if !ok {
			c.Missing = append(c.Missing, key.String())
			continue
		}
		ds = append(ds, at.Sub(from))
		if at.After(last) {
			last = at
		}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	sort.Strings(c.Missing)
	c.N = len(ds)
	if c.N > 0 {
		c.P50, c.P95, c.Max = ds[(c.N-1)/2], ds[(c.N-1)*95/100], ds[c.N-1]
		c.Span = last.Sub(first)
	}
	rd.h.rounds = removeRound(rd.h.rounds, rd)
	return c
}

func removeRound(rs []*round, rd *round) []*round {
	out := rs[:0]
	for _, r := range rs {
		if r != rd {
			out = append(out, r)
		}
	}
	return out
}

// readyGoal: Ready for the current generation, running version when set.
func (h *harness) readyGoal(version string) func(*databasev1.Database) bool {
	return func(db *databasev1.Database) bool {
		return db.Status.ObservedGeneration == db.Generation && db.Status.Ready &&
			meta.IsStatusConditionTrue(db.Status.Conditions, databasev1.ConditionReady) &&
			(version == "" || db.Status.PostgresVersion == version)
	}
}

// childrenGoal (agents unreachable): the Database's pods all run and the
// operator reported it for this generation.
func (h *harness) childrenGoal(db *databasev1.Database) bool {
	return db.Status.ObservedGeneration == db.Generation && db.Status.Replicas > 0 &&
		db.Spec.Replicas != nil && db.Status.ReadyReplicas == *db.Spec.Replicas && db.Status.SecretName != ""
}

func (h *harness) namespaces() []string {
	var out []string
	for i := range max(1, h.o.Namespaces) {
		out = append(out, fmt.Sprintf("single-%d", i), fmt.Sprintf("ha-%d", i))
	}
	return out
}

func (h *harness) createAll(ctx context.Context) error {
	for _, ns := range h.namespaces() {
		if err := h.cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return err
		}
	}
	nsCount := max(1, h.o.Namespaces)
	return parallel(ctx, h.o.Databases, 16, func(i int) error {
		replicas, class := int32(1), "single"
		if i%2 == 1 {
			replicas, class = 3, "ha"
		}
		db := &databasev1.Database{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("db-%05d", i), Namespace: fmt.Sprintf("%s-%d", class, (i/2)%nsCount)},
			Spec: databasev1.DatabaseSpec{Image: "postgres:17", Replicas: &replicas, DatabaseName: "app", Username: "app",
				Storage: databasev1.StorageSpec{Size: "1Gi"}},
		}
		h.mu.Lock()
		h.created[client.ObjectKeyFromObject(db)] = time.Now()
		h.mu.Unlock()
		if err := h.cp.Client.Create(ctx, db); err != nil {
			return fmt.Errorf("creating %s/%s: %w", db.Namespace, db.Name, err)
		}
		return nil
	})
}

// patchAll merge-patches every Database, starting each one's clock.
func (h *harness) patchAll(ctx context.Context, patch string) error {
	keys := h.createdKeys()
	rd := h.rounds[len(h.rounds)-1]
	return parallel(ctx, len(keys), 16, func(i int) error {
		db := &databasev1.Database{ObjectMeta: metav1.ObjectMeta{Namespace: keys[i].Namespace, Name: keys[i].Name}}
		h.mu.Lock()
		rd.start[keys[i]] = time.Now()
		h.mu.Unlock()
		return h.cp.Client.Patch(ctx, db, client.RawPatch(types.MergePatchType, []byte(patch)))
	})
}

func (h *harness) createdKeys() []types.NamespacedName {
	h.mu.Lock()
	defer h.mu.Unlock()
	keys := make([]types.NamespacedName, 0, len(h.created))
	for k := range h.created {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	return keys
}

// settle waits until the operator has made no write for quiet (the
// status settles after Ready: the last patches). It prints what it still
// writes every 30 seconds and gives up after two minutes: the steady state
// then shows the loop.
func (h *harness) settle(ctx context.Context, op *Operator, quiet time.Duration) error {
	writes := func(k RequestKey) bool { return IsWrite(k.Verb) }
	var last, printed Counts
	quietSince := time.Now()
	start := time.Now()
	for time.Since(start) < 2*time.Minute {
		c, err := op.Requests(ctx)
		if err != nil {
			return err
		}
		if printed == nil {
			printed = c
		}
		if last == nil || c.Sum(writes) != last.Sum(writes) {
			quietSince = time.Now()
		}
		last = c
		if time.Since(quietSince) > quiet {
			return nil
		}
		if d := c.Minus(printed); time.Since(start) > 30*time.Second && d.Sum(writes) > 0 && int(time.Since(start).Seconds())%30 == 0 {
			printRequests(h.o.Out, "still writing after convergence (last 30 s)", d, 1)
			printed = c
		}
		time.Sleep(500 * time.Millisecond)
	}
	fmt.Fprintln(h.o.Out, "the operator kept writing after the Databases converged")
	return nil
}

// leaseAgents runs the agents' Lease protocol (instance.LeaseAgent) for
// every running instance pod, from its start to its deletion, as the real
// agents do, counting its requests.
func (h *harness) leaseAgent(obj any) {
	if t, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Labels[database.LabelDatabase] == "" {
		return
	}
	h.agentsMu.Lock()
	defer h.agentsMu.Unlock()
	cancel, running := h.agents[p.UID]
	alive := p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != ""
	switch {
	case running && !alive:
		cancel()
		delete(h.agents, p.UID)
	case !running && alive && h.agentsCtx.Err() == nil:
		ctx, cancel := context.WithCancel(h.agentsCtx)
		h.agents[p.UID] = cancel
		store := &countingLeaseStore{c: h.leaseClient, key: types.NamespacedName{Namespace: p.Namespace, Name: p.Labels[database.LabelDatabase] + "-primary"}, h: h}
		go instance.NewLeaseAgent(store, p.Name, string(p.UID), 15*time.Second, 10*time.Second, 2*time.Second).Run(ctx)
	}
}

type countingLeaseStore struct {
	c   client.Client
	key types.NamespacedName
	h   *harness
}

func (s *countingLeaseStore) Get(ctx context.Context) (*coordinationv1.Lease, error) {
	s.h.leaseReads.Add(1)
	var l coordinationv1.Lease
	err := s.c.Get(ctx, s.key, &l)
	return &l, err
}

func (s *countingLeaseStore) Update(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	s.h.leaseWrites.Add(1)
	l = l.DeepCopy()
	err := s.c.Update(ctx, l)
	return l, err
}

// createUnrelated adds n Secrets and ConfigMaps (half each) of size bytes
// that the operator has no business with.
func (h *harness) createUnrelated(ctx context.Context, n, size int) error {
	if err := h.cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "unrelated-0"}}); err != nil {
		return err
	}
	blob := make([]byte, size)
	if _, err := rand.Read(blob); err != nil {
		return err
	}
	text := strings.Repeat("x", size)
	return parallel(ctx, n, 16, func(i int) error {
		meta := metav1.ObjectMeta{Namespace: "unrelated-0", Name: fmt.Sprintf("blob-%05d", i)}
		if i%2 == 0 {
			return h.cp.Client.Create(ctx, &corev1.Secret{ObjectMeta: meta, Data: map[string][]byte{"blob": blob}})
		}
		return h.cp.Client.Create(ctx, &corev1.ConfigMap{ObjectMeta: meta, Data: map[string]string{"blob": text}})
	})
}

// deleteAll deletes every Database and waits until they and their
// StatefulSets are gone (the garbage collector's part included).
func (h *harness) deleteAll(ctx context.Context, limit time.Duration) (Convergence, error) {
	keys := h.createdKeys()
	start := time.Now()
	starts := map[types.NamespacedName]time.Time{}
	var mu sync.Mutex
	if err := parallel(ctx, len(keys), 16, func(i int) error {
		mu.Lock()
		starts[keys[i]] = time.Now()
		mu.Unlock()
		db := &databasev1.Database{ObjectMeta: metav1.ObjectMeta{Namespace: keys[i].Namespace, Name: keys[i].Name}}
		return client.IgnoreNotFound(h.cp.Client.Delete(ctx, db))
	}); err != nil {
		return Convergence{}, err
	}
	gone := map[types.NamespacedName]time.Time{}
	deadline := time.Now().Add(limit)
	for len(gone) < len(keys) && time.Now().Before(deadline) {
		var dbs metav1.PartialObjectMetadataList
		dbs.SetGroupVersionKind(databasev1.GroupVersion.WithKind("DatabaseList"))
		if err := h.cp.Client.List(ctx, &dbs); err != nil {
			return Convergence{}, err
		}
		var stss metav1.PartialObjectMetadataList
		stss.SetGroupVersionKind(appsv1.SchemeGroupVersion.WithKind("StatefulSetList"))
		if err := h.cp.Client.List(ctx, &stss, client.MatchingLabelsSelector{Selector: labels.SelectorFromSet(labels.Set{database.LabelManagedBy: database.ManagedByValue})}); err != nil {
			return Convergence{}, err
		}
		left := map[types.NamespacedName]bool{}
		for _, d := range dbs.Items {
			left[types.NamespacedName{Namespace: d.Namespace, Name: d.Name}] = true
		}
		for _, s := range stss.Items {
			left[types.NamespacedName{Namespace: s.Namespace, Name: s.Labels[database.LabelDatabase]}] = true
		}
		now := time.Now()
		for _, k := range keys {
			if _, ok := gone[k]; !ok && !left[k] {
				gone[k] = now
			}
		}
		time.Sleep(time.Second)
	}
	var c Convergence
	var ds []time.Duration
	var last time.Time
	for _, k := range keys {
		at, ok := gone[k]
		if !ok {
			c.Missing = append(c.Missing, k.String())
			continue
		}
		ds = append(ds, at.Sub(starts[k]))
		if at.After(last) {
			last = at
		}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	c.N = len(ds)
	if c.N > 0 {
		c.P50, c.P95, c.Max, c.Span = ds[(c.N-1)/2], ds[(c.N-1)*95/100], ds[c.N-1], last.Sub(start)
	}
	return c, nil
}

// parallel runs f(0..n-1) on workers goroutines and returns the first error.
func parallel(ctx context.Context, n, workers int, f func(i int) error) error {
	next := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := range n {
		select {
		case next <- i:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}
