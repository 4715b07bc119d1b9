//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The nemesis and its checkers (issue 23): a seeded, reproducible schedule of
// real faults against a three-instance Database while two Jepsen-style
// workloads run through the read-write Service with client-side reconnects:
//
//   - append: unique ids, each acknowledged one recorded; checker: every
//     acknowledged id is present exactly once after healing;
//   - bank: transfers between 10 accounts in transactions; checker: every
//     successful read sees the constant total and no negative balance;
//   - a probe of every instance every 200 ms counts samples with two writable
//     primaries.
//
// Faults (the fault library, all caused on this host in the pod's own
// namespaces): SIGKILL of the postmaster, SIGKILL of the agent, SIGSTOP of
// PostgreSQL (a pause), graceful and forced pod deletion, a partition of the
// primary from the API server and its peers, bandwidth throttling (tc tbf on
// the host side of the pod's veth), the API server unreachable for every
// instance, the operator stopped. After each
// fault is healed the Database must be Ready with every check passed within a
// bound ("always a primary again"). The run fails on any violation and writes a
// report: the fault timeline, each checker's verdict, write-unavailability per
// fault class (p50/p95/max) and the two-primary samples. In asynchronous mode
// a lost append acknowledged inside a fault's asyncLossWindow (a kill or a
// partition of the primary) is by design and reported apart; any other loss,
// and any loss in synchronous mode, fails the run.
//
// CHAOS_SEED (default 1), CHAOS_DURATION (per mode; unset: skipped), CHAOS_MODE
// (async, sync or both; default both), CHAOS_FAULTS (a comma-separated subset
// of the fault classes; default all) and CHAOS_REPORT_DIR (default bin/chaos)
// configure it: `make chaos SEED=… DURATION=… MODE=… FAULTS=…`.
func TestChaos(t *testing.T) {
	seed := uint64(1)
	if v := os.Getenv("CHAOS_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED=%q: %v", v, err)
		}
		seed = n
	}
	v := os.Getenv("CHAOS_DURATION")
	if v == "" {
		t.Skip("CHAOS_DURATION is not set (make e2e sets a short one, make chaos a long one)")
	}
	duration, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("CHAOS_DURATION=%q: %v", v, err)
	}
	modes := []string{"async", "sync"}
	switch m := os.Getenv("CHAOS_MODE"); m {
	case "", "both":
	case "async", "sync":
		modes = []string{m}
	default:
		t.Fatalf("CHAOS_MODE=%q: async, sync or both", m)
	}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) { runChaos(t, mode, seed, duration) })
	}
}

// fault is one entry of the timeline.
type fault struct {
	Class, Target string
	At, Healed    time.Time
	// Unavailable is the longest time without an acknowledged append from
	// the fault until the Database was Ready again.
	Unavailable time.Duration
	Note        string
	// OnPrimary: the target was the primary when the fault began.
	OnPrimary bool
}

// asyncLossWindow is when, around a fault on the primary, asynchronous
// replication may lose acknowledged writes by design (rule 1 with
// maxLagOnFailover): a failover away from a primary that died or became
// unreachable gives up what its standbys had not received — for a kill, the
// WAL in flight (acknowledged within a second before it); for a partition,
// everything it acknowledged from the cut until it fenced (the renew deadline,
// 10 s, plus a retry period). Other faults, and every fault in synchronous
// mode, must lose nothing.
func asyncLossWindow(f fault) (from, to time.Time, ok bool) {
	if !f.OnPrimary {
		return time.Time{}, time.Time{}, false
	}
	switch f.Class {
	case "partition":
		return f.At.Add(-time.Second), f.At.Add(13 * time.Second), true
	case "pod-force-delete", "agent-kill":
		return f.At.Add(-time.Second), f.At.Add(time.Second), true
	}
	return time.Time{}, time.Time{}, false
}

type chaosFault struct {
	class string
	// apply causes the fault on pod and returns how to heal it (nil: nothing
	// to heal, the system heals itself).
	apply func(c *cluster, db, pod string) (heal func(), note string)
}

var faultLibrary = []chaosFault{
	{"postmaster-kill", func(c *cluster, db, pod string) (func(), string) {
		pid := podProcess(c, pod, func(args []string) bool {
			return len(args) > 1 && strings.HasSuffix(args[0], "/postgres") && args[1] == "-D"
		})
		if pid == 0 {
			return nil, "no postmaster found"
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
		return nil, fmt.Sprintf("SIGKILL postmaster %d", pid)
	}},
	{"agent-kill", func(c *cluster, db, pod string) (func(), string) {
		return nil, killAgentIfAny(c, pod)
	}},
	{"postgres-pause", func(c *cluster, db, pod string) (func(), string) {
		pids := podProcesses(c, pod, func(args []string) bool {
			return strings.HasPrefix(args[0], "postgres") || strings.HasSuffix(args[0], "/postgres")
		})
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGSTOP)
		}
		return func() {
			for _, p := range pids {
				_ = syscall.Kill(p, syscall.SIGCONT)
			}
		}, fmt.Sprintf("SIGSTOP %d postgres processes", len(pids))
	}},
	{"pod-delete", func(c *cluster, db, pod string) (func(), string) {
		_, _ = c.kubectl("delete", "pod", pod, "--wait=false")
		return nil, "graceful deletion"
	}},
	{"pod-force-delete", func(c *cluster, db, pod string) (func(), string) {
		note := killAgentIfAny(c, pod)
		_, _ = c.kubectl("delete", "pod", pod, "--grace-period=0", "--force", "--wait=false")
		return nil, note + " and forced deletion"
	}},
	{"partition", func(c *cluster, db, pod string) (func(), string) {
		var peers []string
		for _, p := range []string{db + "-0", db + "-1", db + "-2"} {
			if ip := c.jsonpath("pod/"+p, "{.status.podIP}"); p != pod && ip != "" {
				peers = append(peers, ip)
			}
		}
		apiIPs, apiIP, apiPort := apiServer(c)
		heal := partition(c.t, podPID(c.t, c, pod), peers, apiIPs, apiIP, apiPort)
		return heal, "dropped traffic to the API server and " + strings.Join(peers, ",")
	}},
	{"throttle", func(c *cluster, db, pod string) (func(), string) {
		// tc tbf on the host side of the pod's veth: what the pod receives
		// (a standby's WAL stream, a primary's client traffic) slows to
		// 256 kbit/s. netem is not available on this kernel.
		veth, err := hostVeth(podPID(c.t, c, pod))
		if err != nil {
			return nil, "no veth: " + err.Error()
		}
		if out, err := exec.Command("tc", "qdisc", "replace", "dev", veth, "root", "tbf", "rate", "256kbit", "burst", "16kb", "latency", "500ms").CombinedOutput(); err != nil {
			return nil, fmt.Sprintf("tc on %s: %v %s", veth, err, out)
		}
		return func() { _ = exec.Command("tc", "qdisc", "del", "dev", veth, "root").Run() }, "tbf 256kbit into " + veth
	}},
	{"api-unreachable", func(c *cluster, db, pod string) (func(), string) {
		// Every instance loses the API server (a control-plane outage): the
		// primary cannot renew its Lease and fences itself; nobody can take
		// the Lease until it heals.
		apiIPs, apiIP, apiPort := apiServer(c)
		var heals []func()
		for _, p := range []string{db + "-0", db + "-1", db + "-2"} {
			if c.jsonpath("pod/"+p, "{.metadata.uid}") != "" {
				heals = append(heals, partition(c.t, podPID(c.t, c, p), nil, apiIPs, apiIP, apiPort))
			}
		}
		return func() {
			for _, h := range heals {
				h()
			}
		}, fmt.Sprintf("dropped traffic to the API server from %d pods", len(heals))
	}},
	{"operator-stop", func(c *cluster, db, pod string) (func(), string) {
		_, _ = run(context.Background(), "", "-n", operatorNamespace, "scale", "deploy/postgres-operator-controller-manager", "--replicas=0")
		return func() {
			_, _ = run(context.Background(), "", "-n", operatorNamespace, "scale", "deploy/postgres-operator-controller-manager", "--replicas=1")
			_, _ = run(context.Background(), "", "-n", operatorNamespace, "rollout", "status", "deploy/postgres-operator-controller-manager", "--timeout=3m")
		}, "operator scaled to 0"
	}},
}

// killAgentIfAny sends SIGKILL to pod's agent (PID 1 of its postgres
// container), if it runs.
func killAgentIfAny(c *cluster, pod string) string {
	pid := podProcess(c, pod, func(args []string) bool { return len(args) > 1 && args[1] == "instance" })
	if pid == 0 {
		return "no agent process found"
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	return fmt.Sprintf("SIGKILL agent %d", pid)
}

// podProcesses lists the processes of pod on this host whose command line
// matches.
func podProcesses(c *cluster, pod string, match func(args []string) bool) []int {
	uid := c.jsonpath("pod/"+pod, "{.metadata.uid}")
	if uid == "" {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cg, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if err != nil || (!strings.Contains(string(cg), "pod"+uid) && !strings.Contains(string(cg), "pod"+strings.ReplaceAll(uid, "-", "_"))) {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if match(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")) {
			out = append(out, pid)
		}
	}
	return out
}

func podProcess(c *cluster, pod string, match func(args []string) bool) int {
	if p := podProcesses(c, pod, match); len(p) > 0 {
		return p[0]
	}
	return 0
}

// appender is the append workload: unique ids through the Service, each
// acknowledged one with its time.
type appender struct {
	mu    sync.Mutex
	acked []int
	at    []time.Time
}

// longestGap is the longest time without an acknowledged append between from
// and to (from the fault to the end of its recovery): its write
// unavailability. ok is false when nothing was acknowledged after from.
func (a *appender) longestGap(from, to time.Time) (time.Duration, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	i := sort.Search(len(a.at), func(i int) bool { return a.at[i].After(from) })
	if i == len(a.at) {
		return 0, false
	}
	gap, prev := time.Duration(0), from
	for ; i < len(a.at) && !a.at[i].After(to); i++ {
		gap = max(gap, a.at[i].Sub(prev))
		prev = a.at[i]
	}
	if i < len(a.at) {
		gap = max(gap, a.at[i].Sub(prev))
	}
	return gap, true
}

// bank is the bank workload's verdict.
type bank struct {
	mu               sync.Mutex
	transfers, reads int
	badReads         []string
	total, accounts  int
}

func runChaos(t *testing.T, mode string, seed uint64, duration time.Duration) {
	c := newCluster(t)
	manifest := haDatabase
	if mode == "sync" {
		manifest = strings.Replace(haDatabase, "replicas: 3", "replicas: 3\n  synchronousReplicas: 1", 1)
	}
	c.mustApply(manifest)
	c.waitPhase("ha", "Ready", readyTimeout)
	c.waitChecksPassed("ha", 3*time.Minute)
	t.Cleanup(func() {
		// Whatever happened, the operator runs again for the next test.
		_, _ = run(context.Background(), "", "-n", operatorNamespace, "scale", "deploy/postgres-operator-controller-manager", "--replicas=1")
	})
	ip := c.must("get", "service", "ha", "-o", "jsonpath={.spec.clusterIP}")
	conn := c.connString("ha", ip)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	c.eventually(time.Minute, "the workload tables", func() string {
		cn, err := pgx.Connect(ctx, conn)
		if err != nil {
			return err.Error()
		}
		defer cn.Close(ctx)
		_, err = cn.Exec(ctx, `CREATE TABLE IF NOT EXISTS acked (id int PRIMARY KEY, at timestamptz DEFAULT now());
			CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, balance int NOT NULL);
			INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g ON CONFLICT DO NOTHING`)
		if err != nil {
			return err.Error()
		}
		return ""
	})

	var wg sync.WaitGroup
	app := &appender{}
	bk := &bank{total: 1000, accounts: 10}
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	// Each workload keeps one connection and reconnects after any error, as
	// applications do.
	loop := func(every time.Duration, body func(cn *pgx.Conn) error) {
		defer wg.Done()
		var cn *pgx.Conn
		for ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(every):
			}
			if cn == nil {
				cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				var err error
				cn, err = pgx.Connect(cctx, conn)
				cancel()
				if err != nil {
					cn = nil
					continue
				}
			}
			if err := body(cn); err != nil {
				cn.Close(context.Background())
				cn = nil
			}
		}
		if cn != nil {
			cn.Close(context.Background())
		}
	}
	nextID := 0
	wg.Add(3)
	go loop(50*time.Millisecond, func(cn *pgx.Conn) error {
		nextID++
		id := nextID
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		if _, err := cn.Exec(qctx, "INSERT INTO acked (id) VALUES ($1)", id); err != nil {
			return err
		}
		app.mu.Lock()
		app.acked, app.at = append(app.acked, id), append(app.at, time.Now())
		app.mu.Unlock()
		return nil
	})
	transferRand := rand.New(rand.NewPCG(seed, 0xba4c))
	go loop(100*time.Millisecond, func(cn *pgx.Conn) error {
		from, to, amount := 1+transferRand.IntN(10), 1+transferRand.IntN(10), 1+transferRand.IntN(20)
		if from == to {
			return nil
		}
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		err := pgx.BeginFunc(qctx, cn, func(tx pgx.Tx) error {
			tag, err := tx.Exec(qctx, "UPDATE accounts SET balance = balance - $1 WHERE id = $2 AND balance >= $1", amount, from)
			if err != nil || tag.RowsAffected() == 0 {
				return err
			}
			_, err = tx.Exec(qctx, "UPDATE accounts SET balance = balance + $1 WHERE id = $2", amount, to)
			return err
		})
		if err == nil {
			bk.mu.Lock()
			bk.transfers++
			bk.mu.Unlock()
		}
		return err
	})
	go loop(200*time.Millisecond, func(cn *pgx.Conn) error {
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		var sum, minBalance, n int
		if err := cn.QueryRow(qctx, "SELECT sum(balance), min(balance), count(*) FROM accounts").Scan(&sum, &minBalance, &n); err != nil {
			return err
		}
		bk.mu.Lock()
		bk.reads++
		if sum != bk.total || minBalance < 0 || n != bk.accounts {
			bk.badReads = append(bk.badReads, fmt.Sprintf("%s: total %d, min %d, %d accounts", time.Now().Format(time.RFC3339Nano), sum, minBalance, n))
		}
		bk.mu.Unlock()
		return nil
	})

	// The two-primaries probe: every 200 ms, each instance directly.
	var probeMu sync.Mutex
	twoWritable, probes := []string{}, 0
	cs := clientset(t)
	podConn := c.connString("ha", "PODIP")
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			lctx, cancel := context.WithTimeout(ctx, time.Second)
			pods, err := cs.CoreV1().Pods(c.ns).List(lctx, metav1.ListOptions{LabelSelector: "database=ha"})
			cancel()
			if err != nil {
				continue
			}
			var writable []string
			var mu sync.Mutex
			var pw sync.WaitGroup
			for _, pod := range pods.Items {
				p, pip := pod.Name, pod.Status.PodIP
				if pip == "" {
					continue
				}
				pw.Add(1)
				go func() {
					defer pw.Done()
					pctx, cancel := context.WithTimeout(ctx, 900*time.Millisecond)
					defer cancel()
					cn, err := pgx.Connect(pctx, strings.Replace(podConn, "host=PODIP", "host="+pip, 1))
					if err != nil {
						return
					}
					defer cn.Close(context.Background())
					if _, err := cn.Exec(pctx, "CREATE TABLE IF NOT EXISTS probe (at timestamptz); INSERT INTO probe VALUES (now())"); err == nil {
						mu.Lock()
						writable = append(writable, p)
						mu.Unlock()
					}
				}()
			}
			pw.Wait()
			probeMu.Lock()
			probes++
			if len(writable) > 1 {
				sort.Strings(writable)
				twoWritable = append(twoWritable, time.Now().Format(time.RFC3339Nano)+" "+strings.Join(writable, "+"))
			}
			probeMu.Unlock()
		}
	}()

	// The schedule, from the faults CHAOS_FAULTS names (default: all).
	library := faultLibrary
	if names := os.Getenv("CHAOS_FAULTS"); names != "" {
		library = nil
		for _, n := range strings.Split(names, ",") {
			i := slices.IndexFunc(faultLibrary, func(f chaosFault) bool { return f.class == strings.TrimSpace(n) })
			if i < 0 {
				t.Fatalf("CHAOS_FAULTS: no fault %q", n)
			}
			library = append(library, faultLibrary[i])
		}
	}
	var timeline []fault
	var notReady []string
	start := time.Now()
	for time.Since(start) < duration {
		f := library[rng.IntN(len(library))]
		target := c.primary("ha")
		if rng.IntN(4) == 0 {
			// A standby, a quarter of the time.
			others := slices.DeleteFunc([]string{"ha-0", "ha-1", "ha-2"}, func(p string) bool { return p == target })
			target = others[rng.IntN(len(others))]
		}
		hold := time.Duration(5+rng.IntN(11)) * time.Second
		fe := fault{Class: f.class, Target: target, At: time.Now(), OnPrimary: target == c.primary("ha")}
		heal, note := f.apply(c, "ha", target)
		fe.Note = note
		t.Logf("%s: %s on %s (%s), held %s", fe.At.Sub(start).Round(time.Second), f.class, target, note, hold)
		time.Sleep(hold)
		if heal != nil {
			heal()
		}
		fe.Healed = time.Now()
		if err := waitReady(c, "ha", 5*time.Minute); err != "" {
			notReady = append(notReady, fmt.Sprintf("%s on %s: not Ready with every check passed within 5m of healing: %s", f.class, target, err))
			timeline = append(timeline, fe)
			break
		}
		if gap, ok := app.longestGap(fe.At, time.Now()); ok {
			fe.Unavailable = gap
		} else {
			fe.Unavailable = -1
		}
		timeline = append(timeline, fe)
		time.Sleep(2 * time.Second)
	}
	time.Sleep(2 * time.Second)
	stop()
	wg.Wait()

	// Checkers.
	app.mu.Lock()
	acked := append([]int(nil), app.acked...)
	ackedAt := map[int]time.Time{}
	for i, id := range app.acked {
		ackedAt[id] = app.at[i]
	}
	app.mu.Unlock()
	lost := c.missing("ha", acked)
	// In asynchronous mode a loss inside a fault's window is by design
	// (reported, not a violation); any other loss is.
	var lostByDesign []string
	if mode == "async" {
		kept := lost[:0]
		for _, id := range lost {
			why := ""
			for _, f := range timeline {
				if from, to, ok := asyncLossWindow(f); ok && !ackedAt[id].Before(from) && !ackedAt[id].After(to) {
					why = f.Class
				}
			}
			if why == "" {
				kept = append(kept, id)
			} else {
				lostByDesign = append(lostByDesign, why)
			}
		}
		lost = kept
	}
	dup := ""
	if out, err := c.psql(c.primary("ha"), false, "SELECT count(*) - count(DISTINCT id) FROM acked"); err != nil || strings.TrimSpace(out) != "0" {
		dup = fmt.Sprintf("duplicates check: %v %q", err, out)
	}
	final, err := c.psql(c.primary("ha"), false, "SELECT sum(balance)::text || ' ' || min(balance)::text FROM accounts")
	bankFinal := strings.TrimSpace(final)
	if err != nil {
		bankFinal = "unreadable: " + err.Error()
	}

	// The report.
	var b strings.Builder
	fmt.Fprintf(&b, "chaos run: mode %s, seed %d, duration %s, started %s\n\n", mode, seed, duration, start.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "fault timeline (%d faults):\n", len(timeline))
	byClass := map[string][]time.Duration{}
	for _, f := range timeline {
		fmt.Fprintf(&b, "  +%-6s %-16s %-5s healed +%-6s unavailable %-8s %s\n", f.At.Sub(start).Round(time.Second), f.Class, f.Target,
			f.Healed.Sub(start).Round(time.Second), f.Unavailable.Round(100*time.Millisecond), f.Note)
		if f.Unavailable >= 0 {
			byClass[f.Class] = append(byClass[f.Class], f.Unavailable)
		}
	}
	fmt.Fprintf(&b, "\nwrite unavailability per fault class (p50 / p95 / max, n):\n")
	classes := make([]string, 0, len(byClass))
	for k := range byClass {
		classes = append(classes, k)
	}
	sort.Strings(classes)
	for _, k := range classes {
		d := byClass[k]
		slices.Sort(d)
		fmt.Fprintf(&b, "  %-16s %s / %s / %s, %d\n", k, pct(d, 50), pct(d, 95), pct(d, 100), len(d))
	}
	bk.mu.Lock()
	probeMu.Lock()
	byDesign := map[string]int{}
	for _, c := range lostByDesign {
		byDesign[c]++
	}
	fmt.Fprintf(&b, "\nappend: %d acknowledged, %d lost outside any asynchronous loss window, %d inside one %v%s\n", len(acked), len(lost),
		len(lostByDesign), byDesign, map[bool]string{true: "", false: "; " + dup}[dup == ""])
	fmt.Fprintf(&b, "bank: %d transfers, %d reads, %d bad reads, final total and minimum %s (want %d and >= 0)\n", bk.transfers, bk.reads, len(bk.badReads), bankFinal, bk.total)
	fmt.Fprintf(&b, "two writable primaries: %d of %d samples\n", len(twoWritable), probes)
	fmt.Fprintf(&b, "always a primary again: %d violations\n", len(notReady))
	verdict := "PASS"
	var problems []string
	if len(lost) > 0 {
		problems = append(problems, fmt.Sprintf("%d acknowledged appends lost, e.g. %v", len(lost), lost[:min(10, len(lost))]))
	}
	if dup != "" {
		problems = append(problems, dup)
	}
	if len(bk.badReads) > 0 {
		problems = append(problems, fmt.Sprintf("%d bank reads broke the invariant, e.g. %s", len(bk.badReads), bk.badReads[0]))
	}
	if !strings.HasPrefix(bankFinal, fmt.Sprintf("%d ", bk.total)) || strings.Contains(bankFinal, " -") {
		problems = append(problems, "final bank state "+bankFinal)
	}
	if len(twoWritable) > 0 {
		problems = append(problems, fmt.Sprintf("%d samples with two writable primaries, e.g. %s", len(twoWritable), twoWritable[0]))
	}
	problems = append(problems, notReady...)
	if len(acked) < 50 || bk.transfers < 20 || probes < 50 {
		problems = append(problems, fmt.Sprintf("the workloads did too little to prove anything: %d appends, %d transfers, %d probes", len(acked), bk.transfers, probes))
	}
	if len(problems) > 0 {
		verdict = "FAIL"
	}
	fmt.Fprintf(&b, "\nverdict: %s\n", verdict)
	for _, p := range problems {
		fmt.Fprintf(&b, "  - %s\n", p)
	}
	bk.mu.Unlock()
	probeMu.Unlock()
	dir := os.Getenv("CHAOS_REPORT_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "bin", "chaos")
	}
	path := filepath.Join(dir, fmt.Sprintf("chaos-%s-seed%d.txt", mode, seed))
	if err := os.MkdirAll(dir, 0o755); err == nil {
		_ = os.WriteFile(path, []byte(b.String()), 0o644)
	}
	t.Logf("report %s:\n%s", path, b.String())
	for _, p := range problems {
		t.Error(p)
	}
}

// waitReady waits for Ready with every check passed; "" when it is, else why
// not.
func waitReady(c *cluster, db string, timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		if r := c.condition(db, "Ready", "reason"); r == "ChecksPassed" {
			return ""
		}
		last = c.condition(db, "Ready", "message")
		time.Sleep(2 * time.Second)
	}
	return last
}

// hostVeth is the host-side interface of the veth pair whose other end is
// eth0 in the network namespace of process pid.
func hostVeth(pid string) (string, error) {
	out, err := inPodNetwork(pid, "ip", "-o", "link", "show", "eth0").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ip link in the pod: %w %s", err, out)
	}
	// "2: eth0@if7: <…>": 7 is the peer's index on the host.
	_, rest, ok := strings.Cut(string(out), "@if")
	if !ok {
		return "", fmt.Errorf("no peer index in %q", out)
	}
	idx, _, _ := strings.Cut(rest, ":")
	host, err := exec.Command("ip", "-o", "link").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ip link: %w %s", err, host)
	}
	for _, line := range strings.Split(string(host), "\n") {
		if n, name, ok := strings.Cut(line, ": "); ok && n == idx {
			name, _, _ = strings.Cut(name, ":")
			name, _, _ = strings.Cut(name, "@")
			return name, nil
		}
	}
	return "", fmt.Errorf("no host interface with index %s", idx)
}
