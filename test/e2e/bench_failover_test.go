//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBenchFailover is `make bench-failover`, a benchmark rather than a test: it
// runs only when BENCH_FAILOVER_TRIALS is set. Each trial, under a client writing a
// row every 100 ms through the read-write Service, causes one event on the
// primary, one per fault class:
//
//   - graceful delete: deletion of the primary pod (1 s grace);
//   - postmaster SIGKILL: PostgreSQL crashes inside a live pod (the agent
//     restarts it in place; the primary does not move);
//   - agent SIGKILL: the container's PID 1 dies with PostgreSQL (the kubelet
//     restarts the container; the agent takes its Lease back);
//   - forced deletion: SIGKILL of the agent and PostgreSQL on this host, then a
//     forced deletion of the pod (a failover after the Lease expires);
//   - partition: the primary's traffic to the API server and its peers dropped
//     until a standby is promoted, then healed;
//   - switchover: by annotation.
//
// It prints the p50/p95/max of the longest write gap per trial and the
// acknowledged rows lost, next to the baseline measured in the same run: the
// longest gap of the same client over the same time with no event.
// BENCH_FAILOVER_MODE is async, sync or both (default).
func TestBenchFailover(t *testing.T) {
	trials, _ := strconv.Atoi(os.Getenv("BENCH_FAILOVER_TRIALS"))
	if trials <= 0 {
		t.Skip("set BENCH_FAILOVER_TRIALS (make bench-failover) to run the failover benchmark")
	}
	var out strings.Builder
	for _, mode := range []struct{ key, name, manifest string }{
		{"async", "asynchronous replication", haDatabase},
		{"sync", "synchronous replication (ANY 1 of 2 standbys)", strings.Replace(haDatabase, "replicas: 3", "replicas: 3\n  synchronousReplicas: 1", 1)},
	} {
		if m := os.Getenv("BENCH_FAILOVER_MODE"); m != "" && m != "both" && m != mode.key {
			continue
		}
		out.WriteString(benchFailover(t, mode.name, mode.manifest, trials))
	}
	t.Log(out.String())
	fmt.Println(out.String())
}

func benchFailover(t *testing.T, mode, manifest string, trials int) string {
	c := newCluster(t)
	c.mustApply(manifest)
	c.waitPhase("ha", "Ready", readyTimeout)
	c.waitChecksPassed("ha", 3*time.Minute)
	w := c.startWriter("ha")

	type result struct {
		gaps []time.Duration
		lost int
	}
	// marks: the kind of each trial and the last id acknowledged when its
	// event began; a lost id is charged to the last event begun before it
	// was acknowledged (less two seconds of writes in flight).
	type mark struct {
		kind   string
		fromID int
	}
	var marks []mark
	results := map[string]*result{}
	kinds := []string{"baseline (no event)", "graceful delete", "postmaster SIGKILL", "agent SIGKILL", "forced deletion", "partition", "switchover"}
	libraryFault := func(class string) chaosFault {
		for _, f := range faultLibrary {
			if f.class == class {
				return f
			}
		}
		t.Fatalf("no fault %q in the library", class)
		return chaosFault{}
	}
	for _, k := range kinds {
		results[k] = &result{}
	}
	for i := 0; i < trials; i++ {
		for _, kind := range kinds {
			c.waitChecksPassed("ha", 4*time.Minute)
			time.Sleep(2 * time.Second)
			snap := w.snapshot()
			before := len(snap)
			if before > 0 {
				marks = append(marks, mark{kind, snap[before-1] - 20})
			}
			primary := c.primary("ha")
			w.resetGap()
			start := time.Now()
			switch kind {
			case "graceful delete":
				c.must("delete", "pod", primary, "--grace-period=1", "--wait=false")
				c.waitNewPrimary("ha", primary, 3*time.Minute)
			case "postmaster SIGKILL":
				if _, note := libraryFault("postmaster-kill").apply(c, "ha", primary); strings.HasPrefix(note, "no ") {
					t.Fatalf("%s: %s", kind, note)
				}
			case "agent SIGKILL":
				if _, note := libraryFault("agent-kill").apply(c, "ha", primary); strings.HasPrefix(note, "no ") {
					t.Fatalf("%s: %s", kind, note)
				}
			case "forced deletion":
				c.killAgent(primary)
				c.must("delete", "pod", primary, "--grace-period=0", "--force")
				c.waitNewPrimary("ha", primary, 3*time.Minute)
			case "partition":
				heal, _ := libraryFault("partition").apply(c, "ha", primary)
				c.waitNewPrimary("ha", primary, 3*time.Minute)
				// Writes resume on the new primary before the old one is
				// healed: the gap is the failover's alone.
				c.eventually(time.Minute, "writes to resume", func() string {
					if n := len(w.snapshot()); n <= before+5 {
						return fmt.Sprintf("%d rows acknowledged since the event", n-before)
					}
					return ""
				})
				heal()
			case "switchover":
				c.must("annotate", "database", "ha", "database.example.com/switchover-to=auto", "--overwrite")
				c.waitNewPrimary("ha", primary, 3*time.Minute)
			default:
				time.Sleep(5 * time.Second)
			}
			// Writes resumed: the gap is over (a container restarted by the
			// kubelet may wait out its restart backoff).
			c.eventually(3*time.Minute, "writes to resume", func() string {
				if n := len(w.snapshot()); n <= before+5 {
					return fmt.Sprintf("%d rows acknowledged since the event", n-before)
				}
				return ""
			})
			gap := w.peekGap()
			results[kind].gaps = append(results[kind].gaps, gap)
			t.Logf("%s: trial %d %-20s primary %s → %s: longest write gap %s (event to new primary %s)", mode, i+1, kind, primary, c.primary("ha"),
				gap.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
		}
	}
	acked, _ := w.finish()
	lost := c.missing("ha", acked)
	for _, id := range lost {
		kind := "before the first event"
		for _, m := range marks {
			if m.fromID <= id {
				kind = m.kind
			}
		}
		if r, ok := results[kind]; ok {
			r.lost++
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nfailover benchmark, %s: %d trial(s) per event, 3 instances, a write every 100 ms through the Service\n", mode, trials)
	fmt.Fprintf(&b, "%-22s %8s %8s %8s %8s %8s\n", "longest write gap", "p50", "p95", "max", "trials", "lost")
	for _, k := range kinds {
		g := results[k].gaps
		sort.Slice(g, func(i, j int) bool { return g[i] < g[j] })
		fmt.Fprintf(&b, "%-22s %8s %8s %8s %8d %8d\n", k, pct(g, 50), pct(g, 95), pct(g, 100), len(g), results[k].lost)
	}
	fmt.Fprintf(&b, "acknowledged rows: %d, lost: %d\n", len(acked), len(lost))
	return b.String()
}

func pct(sorted []time.Duration, p int) string {
	if len(sorted) == 0 {
		return "-"
	}
	i := (len(sorted)*p + 99) / 100
	i = min(max(i-1, 0), len(sorted)-1)
	return sorted[i].Round(100 * time.Millisecond).String()
}
