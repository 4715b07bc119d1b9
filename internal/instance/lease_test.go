package instance

import (
	"context"
	"testing"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	coordinationv1 "k8s.io/api/coordination/v1"
)

// The keeper's decisions on a process-local Lease: a single instance takes the
// Lease once and never writes again; with standbys it renews; scaling down to one
// instance stops renewing *and* fencing (the regression: a primary fenced itself
// after a scale-down because its last write still said "standbys").
func TestLeaseKeeperRenewsOnlyWithStandbysAndStopsFencingAfterAScaleDown(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1000, 0)
	store := NewMemoryLeaseStore("db-0", 1)
	k := newLeaseKeeper(store, agentapi.LeaseHolder("db-0", "u"), 15*time.Second, 10*time.Second, 2*time.Second)
	k.now = func() time.Time { return now }
	log := func(string, ...any) {}
	writes := func() int { store.mu.Lock(); defer store.mu.Unlock(); return store.rv }

	k.setWant(true)
	k.tick(ctx, log)
	if v := k.view(); !v.Held || v.Fencing {
		t.Fatalf("single instance after the first tick: %+v", v)
	}
	w := writes()
	for i := 0; i < 5; i++ {
		now = now.Add(30 * time.Second)
		k.tick(ctx, log)
	}
	if writes() != w {
		t.Errorf("a single instance wrote the Lease %d times at steady state", writes()-w)
	}
	if v := k.view(); !v.Held {
		t.Errorf("a single instance lost the Lease without renewing: %+v", v)
	}

	// Scale up: renewals and fencing.
	store.SetAnnotation(agentapi.LeaseAnnotationInstances, "3")
	k.tick(ctx, log)
	if v := k.view(); !v.Held || !v.Fencing {
		t.Fatalf("with standbys: %+v", v)
	}
	now = now.Add(11 * time.Second)
	if v := k.view(); v.Held {
		t.Errorf("held %s after the last renewal, beyond the 10s renew deadline: %+v", 11*time.Second, v)
	}
	k.tick(ctx, log)
	if v := k.view(); !v.Held {
		t.Errorf("not held after a renewal: %+v", v)
	}

	// Scale down: one more write, then no fencing and no writes.
	store.SetAnnotation(agentapi.LeaseAnnotationInstances, "1")
	k.tick(ctx, log)
	w = writes()
	now = now.Add(time.Minute)
	k.tick(ctx, log)
	if v := k.view(); !v.Held || v.Fencing || writes() != w {
		t.Errorf("after a scale-down to one instance: %+v, %d writes", v, writes()-w)
	}
}

// A standby takes the Lease of a silent holder only after the lease duration on
// its own clock, at once when it was released, and never when it is not the
// target.
func TestLeaseKeeperTakesTheLeaseOnlyAsTargetAfterTheDuration(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1000, 0)
	store := NewMemoryLeaseStore("db-0", 2)
	log := func(string, ...any) {}
	old := newLeaseKeeper(store, agentapi.LeaseHolder("db-0", "u0"), 15*time.Second, 10*time.Second, 2*time.Second)
	old.now = func() time.Time { return now }
	old.setWant(true)
	old.tick(ctx, log)
	next := newLeaseKeeper(store, agentapi.LeaseHolder("db-1", "u1"), 15*time.Second, 10*time.Second, 2*time.Second)
	next.now = func() time.Time { return now }
	next.setWant(true)
	next.tick(ctx, log)
	if v := next.view(); v.Holder != agentapi.LeaseHolder("db-0", "u0") {
		t.Fatalf("db-1 took the Lease while not the target: %+v", v)
	}
	store.SetAnnotation(agentapi.LeaseAnnotationTarget, "db-1")
	now = now.Add(14 * time.Second)
	next.tick(ctx, log)
	if v := next.view(); v.Held {
		t.Fatalf("taken after 14s of silence, before the 15s duration: %+v", v)
	}
	now = now.Add(2 * time.Second)
	next.tick(ctx, log)
	if v := next.view(); !v.Held || v.Holder != agentapi.LeaseHolder("db-1", "u1") {
		t.Fatalf("not taken after the duration: %+v", v)
	}
	// The old holder learns it lost the Lease.
	old.tick(ctx, log)
	if v := old.view(); v.Held {
		t.Errorf("the old holder still believes it holds the Lease: %+v", v)
	}
	// A clean release is taken at once.
	store.SetAnnotation(agentapi.LeaseAnnotationTarget, "db-0")
	next.setWant(false)
	next.tick(ctx, log)
	old.tick(ctx, log)
	if v := old.view(); !v.Held {
		t.Errorf("a released Lease was not taken at once: %+v", v)
	}
}

func TestSynchronousStandbyNames(t *testing.T) {
	tests := []struct {
		me   string
		v    leaseView
		want string
	}{
		{"db-0", leaseView{Instances: 3, Synchronous: 0}, ""},
		{"db-0", leaseView{Instances: 3, Synchronous: 1}, `ANY 1 ("db-1", "db-2")`},
		{"db-2", leaseView{Instances: 3, Synchronous: 2}, `ANY 2 ("db-0", "db-1")`},
		{"db-0", leaseView{Instances: 1, Synchronous: 1}, ""},               // no standby: never block writes
		{"db-1", leaseView{Instances: 2, Synchronous: 5}, `ANY 1 ("db-0")`}, // capped at the standbys there are
	}
	for _, tc := range tests {
		if got := synchronousStandbyNames(tc.me, tc.v); got != tc.want {
			t.Errorf("%s %+v: %q, want %q", tc.me, tc.v, got, tc.want)
		}
	}
}

// slowStore answers each Update after the clock moved on by delay: the write
// committed, its answer was late.
type slowStore struct {
	*MemoryLeaseStore
	advance func()
}

func (s slowStore) Update(ctx context.Context, l *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	got, err := s.MemoryLeaseStore.Update(ctx, l)
	s.advance()
	return got, err
}

// Rule 3 (never two writable primaries): the fence deadline counts from the
// sending of the renewal, so a renewal that commits but answers late does not
// extend the time the primary believes it holds the Lease. Measured from the
// answer, a 3s-late answer would leave the primary writable for up to 3s after
// a standby, counting from the renewTime it saw, could take the Lease.
func TestLeaseKeeperCountsTheRenewalFromItsSending(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1000, 0)
	mem := NewMemoryLeaseStore("db-0", 2)
	store := slowStore{MemoryLeaseStore: mem, advance: func() { now = now.Add(3 * time.Second) }}
	k := newLeaseKeeper(store, agentapi.LeaseHolder("db-0", "u"), 15*time.Second, 10*time.Second, 2*time.Second)
	k.now = func() time.Time { return now }
	k.setWant(true)
	k.tick(ctx, func(string, ...any) {})
	since, held := k.sinceRenew()
	if !held || since != 3*time.Second {
		t.Fatalf("after a renewal answered 3s late: since %s held %v, want 3s since the sending", since, held)
	}
	now = now.Add(7*time.Second + time.Millisecond)
	if v := k.view(); v.Held {
		t.Errorf("still held %s after the renewal was sent, beyond the 10s renew deadline", now.Sub(time.Unix(1000, 0)))
	}
}

// Each renewal records the primary's WAL position on the Lease (the operator's
// reference for maxLagOnFailover); a new holder removes the previous one's.
func TestLeaseKeeperRecordsThePrimaryPositionAtEachRenewal(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1000, 0)
	store := NewMemoryLeaseStore("db-0", 2)
	log := func(string, ...any) {}
	pos := "0/3000060"
	k := newLeaseKeeper(store, agentapi.LeaseHolder("db-0", "u"), 15*time.Second, 10*time.Second, 2*time.Second)
	k.now = func() time.Time { return now }
	k.position = func() string { return pos }
	k.setWant(true)
	k.tick(ctx, log) // acquired
	k.tick(ctx, log) // renewed
	annotation := func() string { l, _ := store.Get(ctx); return l.Annotations[agentapi.LeaseAnnotationPrimaryLSN] }
	if got := annotation(); got != "0/3000060" {
		t.Fatalf("primary-lsn after a renewal: %q", got)
	}
	pos = "0/5000000"
	now = now.Add(2 * time.Second)
	k.tick(ctx, log)
	if got := annotation(); got != "0/5000000" {
		t.Fatalf("primary-lsn after the next renewal: %q", got)
	}
	store.SetAnnotation(agentapi.LeaseAnnotationTarget, "db-1")
	next := newLeaseKeeper(store, agentapi.LeaseHolder("db-1", "u1"), 15*time.Second, 10*time.Second, 2*time.Second)
	next.now = func() time.Time { return now }
	next.setWant(true)
	next.tick(ctx, log)
	now = now.Add(16 * time.Second)
	next.tick(ctx, log)
	if v := next.view(); !v.Held {
		t.Fatalf("db-1 did not take the expired Lease: %+v", v)
	}
	if got := annotation(); got != "" {
		t.Errorf("the new holder kept the previous holder's position %q", got)
	}
}

// A release records who released the Lease; a release without a final
// position (a target that never promoted) removes any earlier one, so the
// operator never takes a standby's restartpoint for the old primary's final
// position.
func TestLeaseKeeperReleaseRecordsWhoAndOnlyARealFinalPosition(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1000, 0)
	store := NewMemoryLeaseStore("db-1", 2)
	store.SetAnnotation(agentapi.LeaseAnnotationFinalLSN, "0/9000000") // the old primary's, from before
	k := newLeaseKeeper(store, agentapi.LeaseHolder("db-1", "u1"), 15*time.Second, 10*time.Second, 2*time.Second)
	k.now = func() time.Time { return now }
	k.setWant(true)
	k.tick(ctx, func(string, ...any) {})
	if v := k.view(); !v.Held {
		t.Fatalf("db-1 did not take the Lease: %+v", v)
	}
	go func() {
		for i := 0; i < 50; i++ {
			k.tick(ctx, func(string, ...any) {})
			time.Sleep(10 * time.Millisecond)
		}
	}()
	if err := k.release(ctx, "", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	l, _ := store.Get(ctx)
	if l.Spec.HolderIdentity != nil || l.Annotations[agentapi.LeaseAnnotationFinalLSN] != "" || l.Annotations[agentapi.LeaseAnnotationReleasedBy] != "db-1" {
		t.Errorf("after a release without a final position: holder %v annotations %v", l.Spec.HolderIdentity, l.Annotations)
	}
}

// The keeper reads the Lease more often only while a failover is near (the
// holder silent beyond the renew deadline), and a target waiting for the Lease
// to expire reads it as it expires: the new primary takes it within
// milliseconds of the earliest allowed instant instead of up to a retry period
// later.
func TestLeaseKeeperReadsOftenerOnlyWhileAFailoverIsNear(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1000, 0)
	store := NewMemoryLeaseStore("db-0", 3)
	primary := newLeaseKeeper(store, agentapi.LeaseHolder("db-0", "u0"), 15*time.Second, 10*time.Second, 2*time.Second)
	standby := newLeaseKeeper(store, agentapi.LeaseHolder("db-1", "u1"), 15*time.Second, 10*time.Second, 2*time.Second)
	primary.now = func() time.Time { return now }
	standby.now = func() time.Time { return now }
	log := func(string, ...any) {}
	primary.setWant(true)
	primary.tick(ctx, log)
	standby.tick(ctx, log)
	if v := standby.view(); v.Holder != agentapi.LeaseHolder("db-0", "u0") {
		t.Fatalf("standby sees %+v", v)
	}
	for _, tc := range []struct {
		name    string
		advance time.Duration
		target  string
		want    time.Duration
	}{
		{"a standby of a renewing primary reads every retry period", time.Second, "", 2 * time.Second},
		{"the primary itself reads every retry period", 0, "", 2 * time.Second},
		{"the holder silent beyond the renew deadline: four times as often", 10 * time.Second, "", 500 * time.Millisecond},
		{"the target reads when the Lease expires", 3*time.Second + 700*time.Millisecond, "db-1", 305 * time.Millisecond},
		{"once the target took the Lease: the retry period again", time.Minute, "db-1", 2 * time.Second},
	} {
		now = now.Add(tc.advance)
		if tc.target != "" {
			store.SetAnnotation(agentapi.LeaseAnnotationTarget, tc.target)
			standby.setWant(true)
			standby.tick(ctx, log) // as the loop does before it waits
		}
		k := standby
		if tc.name == "the primary itself reads every retry period" {
			k = primary
		}
		if got := k.nextInterval(); got != tc.want {
			t.Errorf("%s: %s, want %s (view %+v)", tc.name, got, tc.want, k.view())
		}
	}
}
