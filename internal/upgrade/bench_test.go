package upgrade

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"
)

// TestBenchUpgrade is `make bench-upgrade`: the downtime of a major upgrade
// (15 → 17, the local images) of a ~1 GiB database (pgbench scale 68) with
// --link and with --copy, against the ceilings measured in the same run on the
// same data: a restart of the old server (stop + start: the least downtime of
// any change that restarts PostgreSQL), `cp -al` (the file system's cost of
// linking the tree) and `cp -a` (of copying it). Downtime is from the fast
// shutdown of the old server to the new one accepting connections, as in the
// Job: clean shutdown, initdb, pg_upgrade, swap, collation-dependent indexes,
// analyze. Medians of RUNS (default 3). Skipped unless UPGRADE_BENCH is set.
func TestBenchUpgrade(t *testing.T) {
	if os.Getenv("UPGRADE_BENCH") == "" {
		t.Skip("set UPGRADE_BENCH=1 (make bench-upgrade)")
	}
	runs := 3
	if n, err := strconv.Atoi(os.Getenv("RUNS")); err == nil && n > 0 {
		runs = n
	}
	scale := 68
	if n, err := strconv.Atoi(os.Getenv("PGBENCH_SCALE")); err == nil && n > 0 {
		scale = n
	}

	// The pristine data, made once.
	seed := newHarness(t)
	seed.initOld(true)
	seed.must(oldImage, "pgbench", "-i", "-q", "-s", strconv.Itoa(scale), "-h", sockDir, "-U", "postgres", "postgres")
	size := seed.sql(oldImage, "postgres", "SELECT pg_size_pretty(pg_database_size('postgres'))")
	seed.stop(oldImage)
	pristine := filepath.Join(seed.vol, "pgdata")

	fresh := func() *harness {
		h := newHarness(t)
		if out, err := exec.Command("cp", "-a", pristine, filepath.Join(h.vol, "pgdata")).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v %s", err, out)
		}
		return h
	}
	timed := func(f func()) time.Duration {
		start := time.Now()
		f()
		return time.Since(start)
	}
	results := map[string][]time.Duration{}
	for i := 0; i < runs; i++ {
		// Ceilings.
		h := fresh()
		h.start(oldImage)
		results["restart 15 (stop + start)"] = append(results["restart 15 (stop + start)"], timed(func() {
			h.stop(oldImage)
			h.start(oldImage)
		}))
		h.stop(oldImage)
		for _, m := range []struct{ name, flag string }{{"cp -al (link ceiling)", "-al"}, {"cp -a (copy ceiling)", "-a"}} {
			dst := filepath.Join(h.vol, "copy"+m.flag)
			d := timed(func() {
				if out, err := exec.Command("cp", m.flag, filepath.Join(h.vol, "pgdata"), dst).CombinedOutput(); err != nil {
					t.Fatalf("cp: %v %s", err, out)
				}
				if out, err := exec.Command("sync").CombinedOutput(); err != nil {
					t.Fatalf("sync: %v %s", err, out)
				}
			})
			results[m.name] = append(results[m.name], d)
			_ = os.RemoveAll(dst)
		}
		// The upgrades: from the running old server's fast shutdown to the new
		// one accepting connections.
		for _, method := range []Method{MethodLink, MethodCopy} {
			h := fresh()
			h.start(oldImage)
			h.collect() // the init container runs before the instances stop
			var res Result
			d := timed(func() {
				h.stop(oldImage)
				var err error
				if res, err = h.upgrade("run", "--method="+string(method)); err != nil || !res.OK {
					t.Fatalf("upgrade: %v %+v", err, res)
				}
				h.start(newImage)
			})
			name := "upgrade --" + string(method)
			results[name] = append(results[name], d)
			for _, s := range res.Steps {
				results[name+": "+s.Name] = append(results[name+": "+s.Name], s.Finished.Sub(s.Started))
			}
		}
	}
	names := make([]string, 0, len(results))
	for n := range results {
		names = append(names, n)
	}
	sort.Strings(names)
	out := fmt.Sprintf("major upgrade 15 → 17 of a %s database (pgbench scale %d), medians of %d runs:\n", size, scale, runs)
	for _, n := range names {
		out += fmt.Sprintf("  %-40s %8s   runs %v\n", n, median(results[n]).Round(10*time.Millisecond), rounded(results[n]))
	}
	t.Log("\n" + out)
	if f := os.Getenv("BENCH_OUT"); f != "" {
		_ = os.WriteFile(f, []byte(out), 0o600)
	}
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func rounded(d []time.Duration) []string {
	out := make([]string, len(d))
	for i, x := range d {
		out[i] = x.Round(10 * time.Millisecond).String()
	}
	return out
}
