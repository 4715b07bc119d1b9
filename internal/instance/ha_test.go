package instance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"

	"github.com/jackc/pgx/v5"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/testenv"
)

// tcpProxy forwards to an address until cut: then it drops every connection and
// refuses new ones (an instance partitioned from the API server).
type tcpProxy struct {
	ln     net.Listener
	target string
	cutOff atomic.Bool
	mu     sync.Mutex
	conns  map[net.Conn]bool
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if p.cutOff.Load() {
				c.Close()
				continue
			}
			go p.forward(c)
		}
	}()
	return p
}

func (p *tcpProxy) forward(c net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[up] = true, true
	p.mu.Unlock()
	go func() { _, _ = io.Copy(up, c); up.Close() }()
	_, _ = io.Copy(c, up)
	c.Close()
}

func (p *tcpProxy) cut() {
	p.cutOff.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]bool{}
}

func (p *tcpProxy) heal() { p.cutOff.Store(false) }

// via returns cfg pointed at the proxy.
func (p *tcpProxy) via(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	u, _ := url.Parse(cfg.Host)
	c.Host = "https://" + p.ln.Addr().String()
	c.TLSClientConfig.ServerName = u.Hostname()
	return c
}

// haHarness runs agents against a real kube-apiserver's Lease, each through
// its own cuttable proxy to the API server, and plays the operator's side.
type haHarness struct {
	t       *testing.T
	leases  coordinationv1client.LeaseInterface
	cfg     *rest.Config
	s       testSecrets
	ports   map[string]int
	proxies map[string]*tcpProxy
}

func newHAHarness(t *testing.T, annotations map[string]string, pods ...string) *haHarness {
	t.Helper()
	root := testRoot(t)
	env, err := testenv.New()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	h := &haHarness{t: t, leases: coordinationv1client.NewForConfigOrDie(cfg).Leases("default"), cfg: cfg,
		s: newSecrets(t, root), ports: map[string]int{}, proxies: map[string]*tcpProxy{}}
	for _, p := range pods {
		h.ports[p] = testenv.FreePort(t)
	}
	if _, err := h.leases.Create(context.Background(), &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "db-primary", Annotations: annotations}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return h
}

// setTarget changes the target as the failover/switchover state machine does.
func (h *haHarness) setTarget(target, change string) {
	h.t.Helper()
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		l, err := h.leases.Get(context.Background(), "db-primary", metav1.GetOptions{})
		if err != nil {
			return err
		}
		l.Annotations[agentapi.LeaseAnnotationTarget] = target
		l.Annotations[agentapi.LeaseAnnotationChange] = change
		_, err = h.leases.Update(context.Background(), l, metav1.UpdateOptions{})
		return err
	}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *haHarness) start(name, pod string) *testInstance {
	h.t.Helper()
	u, _ := url.Parse(h.cfg.Host)
	h.proxies[pod] = newTCPProxy(h.t, u.Host)
	store, err := NewKubeLeaseStore(h.proxies[pod].via(h.cfg), "default", "db-primary")
	if err != nil {
		h.t.Fatal(err)
	}
	return startInstanceWith(h.t, h.s, name, pod, h.ports[pod], 0, func(c *Config) {
		c.Leases = store
		c.PodUID = "uid-" + pod
		c.PeerAddress = func(p string) (string, int) { return "127.0.0.1", h.ports[p] }
		c.LeaseDuration, c.RenewDeadline, c.RetryPeriod = 4*time.Second, 2*time.Second, 300*time.Millisecond
		c.DemoteTimeout = 3 * time.Second
	})
}

func (h *haHarness) waitPrimary(ti *testInstance) *agentapi.Status {
	h.t.Helper()
	var st *agentapi.Status
	waitUntil(h.t, 90*time.Second, ti.cfg.PodName+" to be a writable primary holding the Lease", func() error {
		var err error
		if st, err = ti.status(h.s.token); err != nil {
			return err
		}
		if st.Role != agentapi.RolePrimary || !st.Writable || !st.HoldsLease || !st.Ready {
			return fmt.Errorf("%s: role %q writable %v lease %v ready %v state %s %s %s", ti.cfg.PodName, st.Role, st.Writable, st.HoldsLease, st.Ready, st.State, st.Message, st.Error)
		}
		return nil
	})
	return st
}

func (h *haHarness) waitRole(ti *testInstance, role string) {
	h.t.Helper()
	waitUntil(h.t, 90*time.Second, ti.cfg.PodName+" to run as "+role, func() error {
		st, err := ti.status(h.s.token)
		if err != nil {
			return err
		}
		if st.Role != role {
			return fmt.Errorf("%s: role %q state %s %s", ti.cfg.PodName, st.Role, st.State, st.Message)
		}
		return nil
	})
}

func (h *haHarness) waitFollowing(ti *testInstance, primary string) {
	h.t.Helper()
	waitUntil(h.t, 90*time.Second, ti.cfg.PodName+" to stream from "+primary, func() error {
		st, err := ti.status(h.s.token)
		if err != nil {
			return err
		}
		if st.Role != agentapi.RoleReplica || st.Following != primary || st.WALReceiverStatus != "streaming" {
			return fmt.Errorf("%s: role %q following %q receiver %q state %s %s", ti.cfg.PodName, st.Role, st.Following, st.WALReceiverStatus, st.State, st.Message)
		}
		return nil
	})
}

// The HA contract of the agent, against a real kube-apiserver and real
// PostgreSQL: only the holder of the Lease is primary; a switchover moves the
// primary without losing a committed row (the target waits for the old primary's
// final WAL position); a primary cut off from the API server stops accepting
// writes before its Lease can be taken; the standby takes the Lease only after
// the lease duration and promotes; the old primary, healed, rewinds and follows.
func TestLeaseSwitchoverFencingAndFailover(t *testing.T) {
	h := newHAHarness(t, map[string]string{agentapi.LeaseAnnotationTarget: "db-0", agentapi.LeaseAnnotationInstances: "2"}, "db-0", "db-1")
	ctx := context.Background()
	s, ports, proxies, leases := h.s, h.ports, h.proxies, h.leases
	setTarget, start, waitPrimary, waitFollowing := h.setTarget, h.start, h.waitPrimary, h.waitFollowing

	db0 := start("a", "db-0")
	st := waitPrimary(db0)
	if st.Timeline != 1 {
		t.Errorf("timeline %d, want 1", st.Timeline)
	}
	setSlots(t, db0, s.token, agentapi.SlotName("db-1"))
	db1 := start("b", "db-1")
	waitFollowing(db1, "db-0")
	if st := db1.mustStatus(t, s.token); st.HoldsLease || st.Role != agentapi.RoleReplica {
		t.Errorf("standby status %+v", st)
	}
	waitForAppLogin(t, ports["db-0"], s.appPassword)
	execApp(t, ports["db-0"], s.appPassword, "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 1000)")

	t.Run("switchover under write load: the target promotes after the old primary's final WAL, nothing acknowledged is lost", func(t *testing.T) {
		// Four writers, as applications do: each reconnects to whichever
		// instance accepts its write and records every acknowledged id; they
		// run before, through and after the switchover (never stopping at an
		// error), so the demotion's checkpoint and shutdown happen under load.
		var mu sync.Mutex
		var acked []int
		var next atomic.Int64
		next.Store(1000)
		stopWriting := make(chan struct{})
		var writers sync.WaitGroup
		for range 4 {
			writers.Add(1)
			go func() {
				defer writers.Done()
				var c *pgx.Conn
				defer func() {
					if c != nil {
						c.Close(ctx)
					}
				}()
				port := ports["db-0"]
				for {
					select {
					case <-stopWriting:
						return
					default:
					}
					if c == nil {
						var err error
						if c, err = appConn(ctx, port, s.appPassword, testAppDB); err != nil {
							c = nil
							if port == ports["db-0"] {
								port = ports["db-1"]
							} else {
								port = ports["db-0"]
							}
							time.Sleep(20 * time.Millisecond)
							continue
						}
					}
					id := int(next.Add(1))
					wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
					_, err := c.Exec(wctx, "INSERT INTO items VALUES ($1)", id)
					cancel()
					if err != nil {
						// A standby (read-only), a shut-down primary or a
						// broken connection: try the other instance.
						c.Close(ctx)
						c = nil
						if port == ports["db-0"] {
							port = ports["db-1"]
						} else {
							port = ports["db-0"]
						}
						continue
					}
					mu.Lock()
					acked = append(acked, id)
					mu.Unlock()
				}
			}()
		}
		time.Sleep(time.Second)
		mu.Lock()
		before := len(acked)
		mu.Unlock()
		if before == 0 {
			t.Fatal("no write was acknowledged before the switchover: the load proves nothing")
		}
		setTarget("db-1", agentapi.ChangeSwitchover)
		st := waitPrimary(db1)
		// Writes resume on the new primary before they stop.
		waitUntil(t, 30*time.Second, "writes acknowledged by the new primary", func() error {
			n, err := countItems(t, ports["db-1"], s.appPassword)
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			if n <= before+1000 {
				return fmt.Errorf("%d rows", n)
			}
			return nil
		})
		close(stopWriting)
		writers.Wait()
		if st.Timeline != 2 {
			t.Errorf("new primary's timeline %d, want 2", st.Timeline)
		}
		setSlots(t, db1, s.token, agentapi.SlotName("db-0"))
		waitFollowing(db0, "db-1")
		c, err := appConn(ctx, ports["db-1"], s.appPassword, testAppDB)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		rows, err := c.Query(ctx, "SELECT id FROM items")
		if err != nil {
			t.Fatal(err)
		}
		have, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			t.Fatal(err)
		}
		present := map[int]bool{}
		for _, id := range have {
			present[int(id)] = true
		}
		var lost []int
		for _, id := range acked {
			if !present[id] {
				lost = append(lost, id)
			}
		}
		t.Logf("%d writes acknowledged (%d before the switchover), %d lost", len(acked), before, len(lost))
		if len(lost) > 0 {
			t.Errorf("%d acknowledged rows are missing on the new primary, e.g. %v", len(lost), lost[:min(len(lost), 10)])
		}
		l, err := leases.Get(ctx, "db-primary", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != agentapi.LeaseHolder("db-1", "uid-db-1") {
			t.Errorf("lease after the switchover: %+v %v", l, err)
		}
	})

	t.Run("a primary cut off from the API server fences itself before the standby can take the Lease", func(t *testing.T) {
		var lastWrite atomic.Int64 // unix nanos of the last acknowledged write on db-1
		stopProbe := make(chan struct{})
		probeDone := make(chan struct{})
		go func() {
			defer close(probeDone)
			for id := 100000; ; id++ {
				select {
				case <-stopProbe:
					return
				case <-time.After(50 * time.Millisecond):
				}
				c, err := appConn(ctx, ports["db-1"], s.appPassword, testAppDB)
				if err != nil {
					continue
				}
				wctx, cancel := context.WithTimeout(ctx, time.Second)
				_, err = c.Exec(wctx, "INSERT INTO items VALUES ($1)", id)
				cancel()
				c.Close(ctx)
				if err == nil {
					lastWrite.Store(time.Now().UnixNano())
				}
			}
		}()
		time.Sleep(300 * time.Millisecond)
		if lastWrite.Load() == 0 {
			t.Fatal("no write was acknowledged by db-1 before the cut: the probe proves nothing")
		}
		cutAt := time.Now()
		proxies["db-1"].cut()
		// As the operator does: fail over as soon as the Lease has not been
		// renewed for its duration, without knowing whether db-1 fenced.
		waitUntil(t, 30*time.Second, "the Lease to expire", func() error {
			l, err := leases.Get(ctx, "db-primary", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
				return errors.New("no renew time")
			}
			if left := time.Until(l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)); left > 0 {
				return fmt.Errorf("%s left", left)
			}
			return nil
		})
		setTarget("db-0", agentapi.ChangeFailover)
		waitPrimary(db0)
		promotedAt := time.Now()
		close(stopProbe)
		<-probeDone
		if st, err := db1.status(s.token); err != nil || !st.Fenced || st.Writable || st.Ready {
			t.Errorf("db-1 after the failover: %+v %v, want fenced, not writable, not ready", st, err)
		}
		last := time.Unix(0, lastWrite.Load())
		if d := last.Sub(cutAt); d > 2*time.Second+500*time.Millisecond {
			t.Errorf("the cut-off primary acknowledged a write %s after the cut (renew deadline 2s)", d)
		}
		if !last.Before(promotedAt) {
			t.Errorf("two writable primaries: db-1's last write at %s, db-0 promoted at %s", last, promotedAt)
		}
		if d := promotedAt.Sub(cutAt); d < 4*time.Second {
			t.Errorf("db-0 became primary %s after the cut, before the 4s lease duration", d)
		}
		t.Logf("cut at 0s; db-1's last acknowledged write at %s; db-0 writable at %s", last.Sub(cutAt).Round(time.Millisecond), promotedAt.Sub(cutAt).Round(time.Millisecond))
	})

	t.Run("the healed old primary rewinds and follows, never writable", func(t *testing.T) {
		setSlots(t, db0, s.token, agentapi.SlotName("db-1"))
		proxies["db-1"].heal()
		waitFollowing(db1, "db-0")
		st := db1.mustStatus(t, s.token)
		if st.Writable || st.Role != agentapi.RoleReplica {
			t.Errorf("healed old primary: %+v", st)
		}
		execApp(t, ports["db-0"], s.appPassword, "INSERT INTO items VALUES (-1)")
		waitUntil(t, 30*time.Second, "the row to reach the rewound standby", func() error {
			n, err := countItems(t, ports["db-1"], s.appPassword)
			m, err2 := countItems(t, ports["db-0"], s.appPassword)
			if err := errors.Join(err, err2); err != nil {
				return err
			}
			if n != m {
				return fmt.Errorf("standby %d rows, primary %d", n, m)
			}
			return nil
		})
	})
}

// showSyncNames reads synchronous_standby_names on the instance at port.
func showSyncNames(t *testing.T, port int, password string) string {
	t.Helper()
	c, err := appConn(context.Background(), port, password, testAppDB)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var v string
	if err := c.QueryRow(context.Background(), "SHOW synchronous_standby_names").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// Rule 2: synchronous replication is a property of whoever is primary. Three
// instances with a quorum of one; the primary is cut off from the API server
// and fences; db-1 takes the Lease and promotes. It must name its own quorum
// before it accepts writes: db-2 streams from it as a quorum standby, and once
// db-2 is stopped a commit on db-1 is not acknowledged. Before the fix the
// promoted standby kept a standby's empty synchronous_standby_names and
// acknowledged commits that no standby had.
func TestAPromotedStandbyWaitsForItsSynchronousQuorum(t *testing.T) {
	h := newHAHarness(t, map[string]string{agentapi.LeaseAnnotationTarget: "db-0", agentapi.LeaseAnnotationInstances: "3", agentapi.LeaseAnnotationSynchronous: "1"}, "db-0", "db-1", "db-2")
	ctx := context.Background()
	pw := h.s.appPassword
	db0 := h.start("a", "db-0")
	// With a quorum the primary's set-up commits wait for a standby: the slots
	// and standbys come first (as the operator does them).
	h.waitRole(db0, agentapi.RolePrimary)
	setSlots(t, db0, h.s.token, agentapi.SlotName("db-1"), agentapi.SlotName("db-2"))
	db1 := h.start("b", "db-1")
	db2 := h.start("c", "db-2")
	h.waitPrimary(db0)
	h.waitFollowing(db1, "db-0")
	h.waitFollowing(db2, "db-0")
	waitForAppLogin(t, h.ports["db-0"], pw)
	execApp(t, h.ports["db-0"], pw, "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1)")
	if got, want := showSyncNames(t, h.ports["db-0"], pw), `ANY 1 ("db-1", "db-2")`; got != want {
		t.Fatalf("db-0's synchronous_standby_names %q, want %q", got, want)
	}

	h.proxies["db-0"].cut()
	waitUntil(t, 30*time.Second, "db-0 to fence itself", func() error {
		if st, err := db0.status(h.s.token); err != nil || !st.Fenced {
			return fmt.Errorf("db-0 not fenced yet (%w)", err)
		}
		return nil
	})
	h.setTarget("db-1", agentapi.ChangeFailover)
	h.waitRole(db1, agentapi.RolePrimary)
	// The operator's part after a promotion: the standbys' slots.
	setSlots(t, db1, h.s.token, agentapi.SlotName("db-0"), agentapi.SlotName("db-2"))
	h.waitPrimary(db1)
	h.waitFollowing(db2, "db-1")
	if got, want := showSyncNames(t, h.ports["db-1"], pw), `ANY 1 ("db-0", "db-2")`; got != want {
		t.Errorf("the promoted db-1's synchronous_standby_names %q, want %q", got, want)
	}
	waitUntil(t, 30*time.Second, "db-2 to be a quorum standby of db-1", func() error {
		st, err := db1.status(h.s.token)
		if err != nil {
			return err
		}
		for _, r := range st.Replicas {
			if r.ApplicationName == "db-2" && r.SyncState == "quorum" {
				return nil
			}
		}
		return fmt.Errorf("db-1's standbys: %+v", st.Replicas)
	})
	execApp(t, h.ports["db-1"], pw, "INSERT INTO items VALUES (2)")
	// The metrics the PostgresSynchronousStandbysMissing alert reads.
	syncMetrics := func() (required, connected float64) {
		m := scrape(t, db1)
		return mustSample(t, m, "postgres_synchronous_standbys_required"), mustSample(t, m, "postgres_synchronous_standbys_connected")
	}
	if r, c := syncMetrics(); r != 1 || c != 1 {
		t.Errorf("db-1's synchronous standbys: required %v connected %v, want 1 and 1", r, c)
	}

	// Without its quorum, db-1 acknowledges nothing.
	if err := db2.stop(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "db-1's metrics to show its quorum missing", func() error {
		if r, c := syncMetrics(); r != 1 || c != 0 {
			return fmt.Errorf("required %v connected %v, want 1 and 0", r, c)
		}
		return nil
	})
	c, err := appConn(ctx, h.ports["db-1"], pw, testAppDB)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = c.Exec(wctx, "INSERT INTO items VALUES (3)")
	cancel()
	if err == nil {
		t.Errorf("db-1 acknowledged a commit with no standby of its quorum connected")
	}
}

// throttleProxy forwards to target, the target-to-client direction at most
// rate bytes per second while rate > 0 (a slow link into the standby).
type throttleProxy struct {
	ln   net.Listener
	rate atomic.Int64
}

func newThrottleProxy(t *testing.T, target string) *throttleProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &throttleProxy{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				up, err := net.Dial("tcp", target)
				if err != nil {
					c.Close()
					return
				}
				go func() { _, _ = io.Copy(up, c); up.Close() }()
				buf := make([]byte, 16<<10)
				for {
					n, err := up.Read(buf)
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							break
						}
						if r := p.rate.Load(); r > 0 {
							time.Sleep(time.Duration(int64(n) * int64(time.Second) / r))
						}
					}
					if err != nil {
						break
					}
				}
				c.Close()
			}()
		}
	}()
	return p
}

func (p *throttleProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Rule 5: -ro is fresh. A standby whose incoming stream is throttled falls
// behind the primary while it replays everything it received: it must leave
// readiness (the read-only Service) once the primary's end of WAL, as carried
// by the stream, is more than maxReplicationLag ahead of its replay, and come
// back once it caught up. Before the fix its readiness measured received minus
// replayed WAL only, and it stayed ready however far behind.
func TestAThrottledStandbyIsNotReadyBeyondMaxLagOfThePrimary(t *testing.T) {
	root := testRoot(t)
	s := newSecrets(t, root)
	ctx := context.Background()
	pPort, sPort := testenv.FreePort(t), testenv.FreePort(t)
	primary := startInstance(t, s, "primary", "db-0", pPort, pPort)
	waitForAppLogin(t, pPort, s.appPassword)
	setSlots(t, primary, s.token, agentapi.SlotName("db-1"))
	link := newThrottleProxy(t, fmt.Sprintf("127.0.0.1:%d", pPort))
	standby := startInstanceWith(t, s, "standby", "db-1", sPort, link.port(), func(c *Config) { c.MaxLagBytes = 4 << 20 })
	ready := func() (bool, string) {
		st, err := standby.status(s.token)
		if err != nil {
			return false, err.Error()
		}
		return st.Ready, fmt.Sprintf("ready %v receiver %q receive %s replay %s", st.Ready, st.WALReceiverStatus, st.ReceiveLSN, st.ReplayLSN)
	}
	waitUntil(t, 90*time.Second, "the standby to stream and be ready", func() error {
		if ok, why := ready(); !ok {
			return errors.New(why)
		}
		return nil
	})

	link.rate.Store(256 << 10)
	execApp(t, pPort, s.appPassword, "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 60000) g")
	waitUntil(t, 30*time.Second, "the throttled standby to leave readiness", func() error {
		if ok, why := ready(); ok {
			return fmt.Errorf("still %s", why)
		}
		return nil
	})
	link.rate.Store(0)
	waitUntil(t, 90*time.Second, "the standby to catch up and be ready again", func() error {
		if ok, why := ready(); !ok {
			return errors.New(why)
		}
		return nil
	})
	_ = ctx
}

// Rule 3 during a demotion (finding 2): a switchover's old primary whose
// checkpointer is paused (SIGSTOP: its CHECKPOINT and its fast shutdown hang)
// keeps renewing the Lease while it may still commit, so the target cannot take
// it; its fast shutdown is bounded (DemoteTimeout), then it shuts down
// immediately, and the target, given no final WAL position, does not promote.
// Before the fix the old primary stopped renewing as soon as it was no longer
// the target: the target took the expired Lease and promoted while the old
// primary still acknowledged writes during its 20 s checkpoint.
func TestADemotionThatHangsNeverYieldsTwoWritablePrimaries(t *testing.T) {
	h := newHAHarness(t, map[string]string{agentapi.LeaseAnnotationTarget: "db-0", agentapi.LeaseAnnotationInstances: "2"}, "db-0", "db-1")
	ctx := context.Background()
	pw := h.s.appPassword
	db0 := h.start("a", "db-0")
	h.waitPrimary(db0)
	setSlots(t, db0, h.s.token, agentapi.SlotName("db-1"))
	db1 := startInstanceWith(t, h.s, "b", "db-1", h.ports["db-1"], 0, func(c *Config) {
		store, err := NewKubeLeaseStore(h.cfg, "default", "db-primary")
		if err != nil {
			t.Fatal(err)
		}
		c.Leases, c.PodUID = store, "uid-db-1"
		c.PeerAddress = func(p string) (string, int) { return "127.0.0.1", h.ports[p] }
		c.LeaseDuration, c.RenewDeadline, c.RetryPeriod = 4*time.Second, 2*time.Second, 300*time.Millisecond
	})
	h.waitFollowing(db1, "db-0")
	waitForAppLogin(t, h.ports["db-0"], pw)
	execApp(t, h.ports["db-0"], pw, "CREATE TABLE items (id int PRIMARY KEY)")

	checkpointer := postgresChild(t, int(db0.agent.view().Postmaster), "checkpointer")
	if err := syscall.Kill(checkpointer, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(checkpointer, syscall.SIGCONT) })

	// Writes on db-0 (the last acknowledged one), probes on db-1 (the first
	// acknowledged one).
	var last0, first1 atomic.Int64
	var acked0 atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	write := func(port int, id func() int, ok func()) {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			wctx, cancel := context.WithTimeout(ctx, time.Second)
			c, err := appConn(wctx, port, pw, testAppDB)
			if err == nil {
				_, err = c.Exec(wctx, "INSERT INTO items VALUES ($1)", id())
				c.Close(ctx)
			}
			cancel()
			if err == nil {
				ok()
			}
		}
	}
	var next0, next1 atomic.Int64
	next1.Store(1_000_000)
	wg.Add(2)
	go write(h.ports["db-0"], func() int { return int(next0.Add(1)) }, func() { last0.Store(time.Now().UnixNano()); acked0.Add(1) })
	go write(h.ports["db-1"], func() int { return int(next1.Add(1)) }, func() { first1.CompareAndSwap(0, time.Now().UnixNano()) })
	time.Sleep(500 * time.Millisecond)
	switchedAt := time.Now()
	h.setTarget("db-1", agentapi.ChangeSwitchover)
	waitUntil(t, 90*time.Second, "db-0 to stop (fenced after its bounded shutdown)", func() error {
		st, err := db0.status(h.s.token)
		if err != nil {
			return err
		}
		if st.Running {
			return fmt.Errorf("db-0 still running: state %s %s", st.State, st.Message)
		}
		return nil
	})
	stoppedAt := time.Now()
	time.Sleep(8 * time.Second) // two lease durations: db-1 had every chance to promote
	close(stop)
	wg.Wait()
	if acked0.Load() == 0 {
		t.Fatal("no write was acknowledged by db-0: the test proves nothing")
	}
	l0, f1 := time.Unix(0, last0.Load()), first1.Load()
	t.Logf("switchover at 0s; db-0's last acknowledged write at %s, stopped by %s; db-1 first writable: %v",
		l0.Sub(switchedAt).Round(time.Millisecond), stoppedAt.Sub(switchedAt).Round(time.Millisecond), f1 != 0)
	if f1 != 0 && !l0.Before(time.Unix(0, f1)) {
		t.Errorf("two writable primaries: db-1 acknowledged a write at %s, db-0 its last at %s",
			time.Unix(0, f1).Sub(switchedAt).Round(time.Millisecond), l0.Sub(switchedAt).Round(time.Millisecond))
	}
	if f1 != 0 {
		t.Errorf("db-1 promoted without the old primary's final WAL position")
	}

	// The operator aborts the switchover (rule 4): db-0 resumes with every row.
	_ = syscall.Kill(checkpointer, syscall.SIGCONT)
	h.setTarget("db-0", "")
	h.waitPrimary(db0)
	n, err := countItems(t, h.ports["db-0"], pw)
	if err != nil || int64(n) < acked0.Load() {
		t.Errorf("db-0 resumed with %d rows (%v); it had acknowledged %d", n, err, acked0.Load())
	}
}

// postgresChild finds the postmaster's child process whose title names role
// ("postgres: checkpointer").
func postgresChild(t *testing.T, postmaster int, role string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(postmaster) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.Contains(string(cmdline), role) {
			return pid
		}
	}
	t.Fatalf("no %s process under postmaster %d", role, postmaster)
	return 0
}
