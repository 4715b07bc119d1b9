package instance

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/rest"
)

// LeaseStore reads and writes the Database's primary Lease. Update is a
// compare-and-swap on the resourceVersion of the Lease passed in.
type LeaseStore interface {
	Get(ctx context.Context) (*coordinationv1.Lease, error)
	Update(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error)
}

// kubeLeaseStore is a LeaseStore on the API server.
type kubeLeaseStore struct {
	leases coordinationv1client.LeaseInterface
	name   string
}

// NewKubeLeaseStore returns a LeaseStore for the Lease namespace/name, reached with
// cfg (in a pod: the per-Database ServiceAccount, allowed get and update of that
// one Lease and nothing else).
func NewKubeLeaseStore(cfg *rest.Config, namespace, name string) (LeaseStore, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.Timeout = 5 * time.Second
	c, err := coordinationv1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("lease client: %w", err)
	}
	return &kubeLeaseStore{leases: c.Leases(namespace), name: name}, nil
}

func (s *kubeLeaseStore) Get(ctx context.Context) (*coordinationv1.Lease, error) {
	return s.leases.Get(ctx, s.name, metav1.GetOptions{})
}

func (s *kubeLeaseStore) Update(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	return s.leases.Update(ctx, l, metav1.UpdateOptions{FieldManager: "postgres-operator-instance"})
}

// MemoryLeaseStore is a process-local Lease for an agent run without an API server
// (tests of single features, or outside Kubernetes): target is fixed at creation.
type MemoryLeaseStore struct {
	mu    sync.Mutex
	lease coordinationv1.Lease
	rv    int
}

// NewMemoryLeaseStore returns a Lease whose target primary is target.
func NewMemoryLeaseStore(target string, instances int) *MemoryLeaseStore {
	s := &MemoryLeaseStore{}
	s.lease.Name = "memory"
	s.lease.Annotations = map[string]string{}
	agentapi.LeaseIntent{Target: target, Instances: instances}.ApplyTo(s.lease.Annotations)
	s.lease.ResourceVersion = "1"
	s.rv = 1
	return s
}

func (s *MemoryLeaseStore) Get(context.Context) (*coordinationv1.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lease.DeepCopy(), nil
}

func (s *MemoryLeaseStore) Update(_ context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l.ResourceVersion != s.lease.ResourceVersion {
		return nil, apierrors.NewConflict(coordinationv1.Resource("leases"), l.Name, errors.New("the object has been modified"))
	}
	s.rv++
	s.lease = *l.DeepCopy()
	s.lease.ResourceVersion = strconv.Itoa(s.rv)
	return s.lease.DeepCopy(), nil
}

// SetAnnotation changes an annotation as the operator would.
func (s *MemoryLeaseStore) SetAnnotation(key, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rv++
	s.lease.Annotations[key] = value
	s.lease.ResourceVersion = strconv.Itoa(s.rv)
}

// leaseView is what the agent knows of the Lease.
type leaseView struct {
	// Known: the Lease was read at least once.
	Known bool
	// Target is the pod that should be primary ("" while a failover chooses one).
	Target string
	// Instances is the number of instances (fencing and renewal only when > 1).
	Instances int
	// Synchronous is the number of standbys that confirm each commit (0: async).
	Synchronous int
	// Change is ChangeFailover or ChangeSwitchover while the target changes.
	Change string
	// FinalLSN is the released primary's final WAL position.
	FinalLSN string
	// Holder is the holderIdentity; Held is true when it is this agent and, with
	// more than one instance, the last renewal is within the renew deadline.
	Holder string
	Held   bool
	// Fencing: this agent holds the Lease in a Database with standbys (as of its
	// last write of the Lease): it renews it and fences itself when it cannot.
	Fencing bool
	// ExpiresIn is how long a foreign holder still has before this agent may take
	// the Lease; HolderSilentFor how long its record has not changed.
	ExpiresIn, HolderSilentFor time.Duration
	// LastErr is the last error reading or writing the Lease.
	LastErr string
}

// leaseKeeper reads the Lease every retry period, renews it while this agent is
// primary, takes it when this agent is the target and the Lease is free or
// expired, and releases it after a clean demotion. Time is measured on the local
// monotonic clock: a foreign holder's record must stay unchanged for a full lease
// duration, as this agent observed it, before the Lease is taken.
type leaseKeeper struct {
	store                     LeaseStore
	me                        string
	duration, deadline, retry time.Duration
	now                       func() time.Time

	mu          sync.Mutex
	lease       *coordinationv1.Lease
	lastErr     string
	recordKey   string
	recordSince time.Time
	lastRenew   time.Time
	want        bool
	releaseLSN  *string
	// finalLSNAtAcquire is the final-lsn annotation found when the Lease was taken.
	finalLSNAtAcquire string
	changeAtAcquire   string
	// fencing is whether the Lease had more than one instance at our last write.
	fencing bool
	// demoting: the primary is stopping after the target moved; it keeps
	// renewing the Lease until it released it (or was fenced).
	demoting bool
	// position, when set, returns the primary's current WAL position ("" when
	// unknown); each renewal records it on the Lease.
	position func() string
	changed  chan struct{}
	kickC    chan struct{}
}

func newLeaseKeeper(store LeaseStore, me string, duration, deadline, retry time.Duration) *leaseKeeper {
	return &leaseKeeper{store: store, me: me, duration: duration, deadline: deadline, retry: retry, now: time.Now,
		changed: make(chan struct{}, 1), kickC: make(chan struct{}, 1)}
}

func (k *leaseKeeper) notify() {
	select {
	case k.changed <- struct{}{}:
	default:
	}
}

func holderOf(l *coordinationv1.Lease) string {
	if l == nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// view returns what the agent knows of the Lease now.
func (k *leaseKeeper) view() leaseView {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.viewLocked()
}

func (k *leaseKeeper) viewLocked() leaseView {
	v := leaseView{LastErr: k.lastErr}
	if k.lease == nil {
		return v
	}
	l := k.lease
	v.Known = true
	intent := agentapi.ReadLeaseIntent(l.Annotations)
	v.Target, v.Instances, v.Synchronous, v.Change = intent.Target, intent.Instances, intent.Synchronous, intent.Change
	v.FinalLSN = agentapi.ReadLeaseReport(l.Annotations).FinalLSN
	v.Holder = holderOf(l)
	if v.Holder == k.me && !k.lastRenew.IsZero() {
		v.Fencing = k.fencing
		v.Held = !k.fencing || k.now().Sub(k.lastRenew) < k.deadline
	}
	if v.Holder != "" && v.Holder != k.me {
		v.HolderSilentFor = k.now().Sub(k.recordSince)
		v.ExpiresIn = max(0, k.duration-v.HolderSilentFor)
	}
	return v
}

// sinceRenew is the time since the last successful renewal (0 if never held).
func (k *leaseKeeper) sinceRenew() (time.Duration, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.lastRenew.IsZero() || holderOf(k.lease) != k.me {
		return 0, false
	}
	return k.now().Sub(k.lastRenew), true
}

// setWant says whether this agent wants to hold the Lease (it is the target).
func (k *leaseKeeper) setWant(w bool) {
	k.mu.Lock()
	changed := k.want != w
	k.want = w
	k.mu.Unlock()
	if changed && w {
		k.kick()
	}
}

// setDemoting says whether the primary is demoting: it keeps renewing the Lease
// meanwhile although it is no longer the target.
func (k *leaseKeeper) setDemoting(d bool) {
	k.mu.Lock()
	k.demoting = d
	k.mu.Unlock()
}

// kick makes the loop run an iteration now.
func (k *leaseKeeper) kick() {
	select {
	case k.kickC <- struct{}{}:
	default:
	}
}

// release asks the loop to give the Lease up, recording finalLSN, and waits up to
// timeout for it to be done.
func (k *leaseKeeper) release(ctx context.Context, finalLSN string, timeout time.Duration) error {
	k.mu.Lock()
	k.releaseLSN = &finalLSN
	k.want = false
	k.mu.Unlock()
	k.kick()
	deadline := time.After(timeout)
	for {
		k.mu.Lock()
		done := k.releaseLSN == nil
		k.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return errors.New("the Lease could not be released in time")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// acquired returns the final LSN and the change kind found on the Lease when this
// agent took it.
func (k *leaseKeeper) acquired() (string, string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.finalLSNAtAcquire, k.changeAtAcquire
}

// run keeps the Lease until ctx ends.
func (k *leaseKeeper) run(ctx context.Context, log func(msg string, args ...any)) {
	for ctx.Err() == nil {
		k.tick(ctx, log)
		interval := k.nextInterval()
		select {
		case <-ctx.Done():
		case <-k.kickC:
		case <-time.After(interval):
		}
	}
}

// nextInterval is when the loop reads the Lease again. The retry period at
// steady state; a single primary reads rarely; while a foreign holder has been
// silent beyond the renew deadline (a failover is near) four times as often, so
// that a standby sees its nomination at once; and a target waiting for the
// Lease to expire reads it when it expires. Reading sooner never takes the
// Lease sooner than allowed: the take still needs the holder's record
// unchanged for the whole duration, as this agent observed it.
func (k *leaseKeeper) nextInterval() time.Duration {
	v := k.view()
	k.mu.Lock()
	want := k.want
	k.mu.Unlock()
	me := agentapi.HolderPod(k.me)
	switch {
	case !v.Known:
		return k.retry
	case v.Instances <= 1 && v.Target == me && v.Held:
		return 5 * k.retry
	case v.Holder == "" || v.Holder == k.me || v.HolderSilentFor < k.deadline || v.HolderSilentFor > 3*k.duration:
		return k.retry
	case want && v.Target == me && v.ExpiresIn > 0 && v.ExpiresIn < k.retry/4:
		return v.ExpiresIn + 5*time.Millisecond
	}
	return k.retry / 4
}

// tick reads the Lease and, when needed, renews, takes or releases it.
func (k *leaseKeeper) tick(ctx context.Context, log func(msg string, args ...any)) {
	before := k.view()
	defer func() {
		after := k.view()
		if after.Target != before.Target || after.Held != before.Held || after.Holder != before.Holder ||
			after.Instances != before.Instances || after.Known != before.Known || after.FinalLSN != before.FinalLSN ||
			after.Synchronous != before.Synchronous || after.Change != before.Change {
			k.notify()
		}
	}()
	for attempt := 0; attempt < 2; attempt++ {
		l, err := k.store.Get(ctx)
		if err != nil {
			k.fail(err)
			return
		}
		k.observe(l)
		upd, what := k.decide(l)
		if upd == nil {
			return
		}
		// The renewal counts from its sending, not from the arrival of the
		// answer: a write that commits but answers late must not extend the time
		// this primary believes it holds the Lease (the standbys count the
		// duration from the renewTime written here, or later).
		sent := k.now()
		got, err := k.store.Update(ctx, upd)
		if apierrors.IsConflict(err) {
			continue // someone wrote in between: decide again on a fresh read
		}
		if err != nil {
			k.fail(err)
			return
		}
		k.wrote(got, what, sent)
		if what != "renewed" {
			log("primary lease "+what, "holder", holderOf(got))
		}
		return
	}
}

func (k *leaseKeeper) fail(err error) {
	k.mu.Lock()
	k.lastErr = err.Error()
	k.mu.Unlock()
}

// observe records a read: the record's local "unchanged since" time restarts
// whenever its holder, renew time or transitions change.
func (k *leaseKeeper) observe(l *coordinationv1.Lease) {
	k.mu.Lock()
	defer k.mu.Unlock()
	key := holderOf(l) + "|"
	if l.Spec.RenewTime != nil {
		key += l.Spec.RenewTime.UTC().Format(time.RFC3339Nano)
	}
	if l.Spec.LeaseTransitions != nil {
		key += "|" + strconv.Itoa(int(*l.Spec.LeaseTransitions))
	}
	if key != k.recordKey {
		k.recordKey, k.recordSince = key, k.now()
	}
	k.lease = l
	k.lastErr = ""
}

// decide returns the update to make, if any, and what it does.
func (k *leaseKeeper) decide(l *coordinationv1.Lease) (*coordinationv1.Lease, string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	holder := holderOf(l)
	intent := agentapi.ReadLeaseIntent(l.Annotations)
	target, instances := intent.Target, intent.Instances
	report := agentapi.ReadLeaseReport(l.Annotations)
	now := metav1.NewMicroTime(k.now())
	upd := l.DeepCopy()
	if upd.Annotations == nil {
		upd.Annotations = map[string]string{}
	}
	switch {
	case holder == k.me && k.releaseLSN != nil:
		upd.Spec.HolderIdentity = nil
		report.FinalLSN, report.ReleasedBy = *k.releaseLSN, agentapi.HolderPod(k.me)
		report.ApplyTo(upd.Annotations)
		return upd, "released"
	case holder == k.me && target != agentapi.HolderPod(k.me) && !k.want:
		// Held from before (PostgreSQL is not running as primary, e.g. after a
		// fence or a crash) and no longer the target: let the new target have it
		// without waiting out the duration.
		upd.Spec.HolderIdentity = nil
		report.FinalLSN, report.ReleasedBy = "", agentapi.HolderPod(k.me)
		report.ApplyTo(upd.Annotations)
		return upd, "released"
	case holder == k.me && (target == agentapi.HolderPod(k.me) || k.demoting) && (instances > 1 || k.lastRenew.IsZero() || k.fencing):
		// With standbys: every retry period. With one instance: once, so that
		// the Lease records that this primary no longer fences (after a
		// scale-down) and then never again.
		upd.Spec.RenewTime = &now
		if k.position != nil {
			if p := k.position(); p != "" {
				report.PrimaryLSN = p
				report.ApplyTo(upd.Annotations)
			}
		}
		return upd, "renewed"
	case holder != k.me && k.want && target == agentapi.HolderPod(k.me) &&
		(holder == "" || k.now().Sub(k.recordSince) >= k.duration):
		upd.Spec.HolderIdentity = &k.me
		upd.Spec.AcquireTime = &now
		upd.Spec.RenewTime = &now
		d := int32(k.duration / time.Second)
		upd.Spec.LeaseDurationSeconds = &d
		n := int32(0)
		if l.Spec.LeaseTransitions != nil {
			n = *l.Spec.LeaseTransitions
		}
		if holder != "" || n == 0 {
			n++
		}
		upd.Spec.LeaseTransitions = &n
		k.finalLSNAtAcquire = report.FinalLSN
		k.changeAtAcquire = intent.Change
		report.FinalLSN, report.PrimaryLSN = "", ""
		report.ApplyTo(upd.Annotations)
		if holder == "" {
			return upd, "acquired (it was free)"
		}
		return upd, "acquired (the previous holder " + holder + " did not renew it for the lease duration)"
	}
	return nil, ""
}

// wrote records a successful write, sent at sent.
func (k *leaseKeeper) wrote(l *coordinationv1.Lease, what string, sent time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.lease = l
	k.lastErr = ""
	k.fencing = agentapi.ReadLeaseIntent(l.Annotations).Instances > 1
	switch what {
	case "released":
		k.releaseLSN = nil
		k.lastRenew = time.Time{}
	default:
		k.lastRenew = sent
	}
	// Our own write is a change of the record too.
	k.recordKey = ""
}

// LeaseAgent is an agent's Lease protocol on its own, without PostgreSQL: the
// scale benchmark (test/scale) runs one per simulated instance so that the
// Lease traffic it reports, and the takeovers and releases the operator sees,
// are the real agents' code, not a model of it. It wants the Lease exactly
// when the Lease names its pod as the target (a real agent also waits until
// PostgreSQL can be promoted).
type LeaseAgent struct {
	k   *leaseKeeper
	pod string
}

// NewLeaseAgent returns the Lease protocol of the agent of pod (UID uid).
func NewLeaseAgent(store LeaseStore, pod, uid string, duration, deadline, retry time.Duration) *LeaseAgent {
	a := &LeaseAgent{pod: pod}
	a.k = newLeaseKeeper(targetFollower{store, a}, agentapi.LeaseHolder(pod, uid), duration, deadline, retry)
	return a
}

// Run reads, takes, renews and releases the Lease as the agent does until
// ctx ends.
func (a *LeaseAgent) Run(ctx context.Context) { a.k.run(ctx, func(string, ...any) {}) }

// targetFollower sets the agent's want from each Lease it reads.
type targetFollower struct {
	LeaseStore
	a *LeaseAgent
}

func (s targetFollower) Get(ctx context.Context) (*coordinationv1.Lease, error) {
	l, err := s.LeaseStore.Get(ctx)
	if err == nil {
		s.a.k.setWant(agentapi.ReadLeaseIntent(l.Annotations).Target == s.a.pod)
	}
	return l, err
}
