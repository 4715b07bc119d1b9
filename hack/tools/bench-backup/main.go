// Command bench-backup measures the backup engine against raw pg_dump and
// pg_restore in the same run, on the same machine and database, for two data sets:
// "realistic" (four tables of mixed text, numbers, timestamps and jsonb with
// indexes, compressing about 3:1 like production data) and pgbench's (which
// compresses far better). For each, RUNS times (medians are printed):
//
//   - backup: `manager backup run` (pg_dump -Fc -Z0 | zstd | sha256 → a
//     directory, then the full verification read through pg_restore) vs the
//     dump's own ceiling `pg_dump -Fc -Z0 > /dev/null`, and for reference
//     `pg_dump -Fc` (gzip) > /dev/null;
//   - restore: `manager backup restore` through the instance agent (checksum
//     pass, stream to the agent, spool, pg_restore into a scratch database,
//     ANALYZE, swap) with 1 and 2 jobs vs raw `pg_restore` of the same archive
//     (uncompressed custom format on disk) into a fresh database, with 1 and 2
//     jobs, as the same superuser: both the archive pg_dump writes to a file
//     (with data offsets) and ours, decompressed (written to a pipe: none);
//   - peak memory of the whole backup "pod": the manager and its pg_dump in a
//     memory cgroup of their own (peak resident anonymous memory, sampled every
//     20 ms, and the cgroup's maximum usage including page cache).
//
// It starts its own PostgreSQL through the instance agent, on loopback only.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/klauspost/compress/zstd"

	enginepkg "github.com/example/postgres-operator/internal/backup"
	"github.com/example/postgres-operator/internal/instance"
	"github.com/example/postgres-operator/internal/postgres"
)

func main() {
	rows := flag.Int("rows", 600000, "rows per table of the realistic data set (4 tables; 600k ≈ 1 GiB with indexes)")
	scale := flag.Int("scale", 30, "pgbench scale factor (30 ≈ 450 MiB)")
	runs := flag.Int("runs", 3, "runs of each measurement (medians are printed)")
	manager := flag.String("manager", "bin/manager", "the operator binary")
	flag.Parse()
	if err := run(*rows, *scale, *runs, *manager); err != nil {
		fmt.Fprintln(os.Stderr, "bench-backup:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Fprintf(os.Stderr, "bench-backup: "+format+"\n", args...) }

type bench struct {
	root, manager string
	bins          postgres.Binaries
	port          int
	agent         *instance.Agent
	env, super    []string
	n             int
}

func run(rows, scale, runs int, manager string) error {
	manager, _ = filepath.Abs(manager)
	bins, err := postgres.FindBinaries("")
	if err != nil {
		return err
	}
	root, err := os.MkdirTemp("", "bench-backup-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	_ = os.Chmod(root, 0o755)
	files := map[string]string{
		"credentials/username": "bench", "credentials/password": "bench-password", "credentials/database": "benchdb",
		"internal/replication-password": "r", "internal/agent-token": "t",
	}
	for name, v := range files {
		_ = os.MkdirAll(filepath.Join(root, filepath.Dir(name)), 0o700)
		if err := os.WriteFile(filepath.Join(root, name), []byte(v), 0o600); err != nil {
			return err
		}
	}
	_ = os.MkdirAll(filepath.Join(root, "db"), 0o755)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	agent := instance.NewAgent(instance.Config{
		AppUser: "bench", AppDatabase: "benchdb",
		PGData: filepath.Join(root, "db", "data", "pgdata"), CredentialsDir: filepath.Join(root, "credentials"),
		InternalDir: filepath.Join(root, "internal"), RunDir: filepath.Join(root, "db", "run"), PodName: "bench-0",
		Port: port, AgentAddress: "127.0.0.1", ListenAddresses: "127.0.0.1",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			fmt.Fprintln(os.Stderr, "agent:", err)
		}
	}()

	passfile := filepath.Join(root, "pgpass")
	if err := os.WriteFile(passfile, []byte(postgres.PgpassLine("bench", "bench-password")), 0o600); err != nil {
		return err
	}
	b := &bench{root: root, manager: manager, bins: bins, port: port, agent: agent,
		env:   append(os.Environ(), "PGHOST=127.0.0.1", fmt.Sprintf("PGPORT=%d", port), "PGUSER=bench", "PGPASSFILE="+passfile),
		super: append(os.Environ(), "PGHOST="+filepath.Join(root, "db", "run"), fmt.Sprintf("PGPORT=%d", port), "PGUSER=postgres")}
	if err := waitFor(ctx, port); err != nil {
		return err
	}
	for _, ds := range []struct {
		name string
		fill func() error
	}{
		{"realistic", func() error { return b.fillRealistic(rows) }},
		{fmt.Sprintf("pgbench scale %d", scale), func() error {
			return sh(b.env, filepath.Join(bins.Dir, "pgbench"), "-i", "-q", "-s", fmt.Sprint(scale), "benchdb")
		}},
	} {
		if err := b.sql("benchdb", "DROP SCHEMA public CASCADE; CREATE SCHEMA public AUTHORIZATION pg_database_owner; GRANT USAGE ON SCHEMA public TO PUBLIC"); err != nil {
			return err
		}
		step("generating the %s data set", ds.name)
		if err := ds.fill(); err != nil {
			return err
		}
		for _, q := range []string{"VACUUM ANALYZE", "CHECKPOINT"} {
			if err := b.sql("benchdb", q); err != nil {
				return err
			}
		}
		if err := b.measure(ds.name, runs); err != nil {
			return err
		}
	}
	return nil
}

// fillRealistic creates four tables of mixed types with indexes; text mixes
// words from a vocabulary with hex (so it compresses about 3:1 overall).
func (b *bench) fillRealistic(rows int) error {
	words := "'{alpha,bravo,charlie,delta,echo,foxtrot,golf,hotel,india,juliet,kilo,lima,mike,november,oscar,papa,quebec,romeo,sierra,tango,uniform,victor,whiskey,xray,yankee,zulu,shipped,pending,returned,invoice,customer,warehouse,berlin,paris,madrid,rome,lisbon,vienna,prague,dublin}'::text[]"
	for i := 1; i <= 4; i++ {
		q := fmt.Sprintf(`SET ROLE bench; CREATE TABLE orders_%[1]d (
			id bigint PRIMARY KEY, customer_id int NOT NULL, created_at timestamptz NOT NULL, status text NOT NULL,
			amount numeric(12,2) NOT NULL, note text, attrs jsonb);
		INSERT INTO orders_%[1]d
		SELECT g, ((g::bigint * 7919) %% 100000)::int, '2024-01-01'::timestamptz + g * interval '17 seconds',
		       (%[3]s)[1 + g %% 6], round((random() * 10000)::numeric, 2),
		       (%[3]s)[1 + (g * 13) %% 40] || ' ' || (%[3]s)[1 + (g * 29) %% 40] || ' order ' || g || ' ref ' || substr(md5(g::text), 1, 16),
		       jsonb_build_object('sku', 'SKU-' || (g %% 5000), 'qty', 1 + g %% 9, 'city', (%[3]s)[33 + g %% 8],
		                          'tags', jsonb_build_array((%[3]s)[1 + g %% 26], (%[3]s)[1 + (g / 7) %% 26]), 'h', substr(md5((g*3)::text), 1, 12))
		FROM generate_series(1, %[2]d) g;
		CREATE INDEX ON orders_%[1]d (customer_id); CREATE INDEX ON orders_%[1]d (created_at)`, i, rows, words)
		if err := b.sql("benchdb", q); err != nil {
			return err
		}
	}
	return nil
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func (b *bench) measure(name string, runs int) error {
	size := dbSize(b.port)
	mib := float64(size) / (1 << 20)
	step("%s: database %.0f MiB; %d runs", name, mib, runs)
	res := map[string][]float64{}
	var peakRSS, peakUsage []float64
	var manifest *enginepkg.Manifest
	timeIt := func(key string, f func() error) error {
		t0 := time.Now()
		if err := f(); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		d := time.Since(t0).Seconds()
		res[key] = append(res[key], d)
		step("  %-34s %7.2fs", key, d)
		return nil
	}
	archive := filepath.Join(b.root, "plain.dump")
	for r := 0; r < runs; r++ {
		if err := timeIt("pg_dump -Fc -Z0 > /dev/null", func() error {
			return sh(b.env, b.bins.PgDump, "-Fc", "-Z0", "--no-sync", "-f", "/dev/null", "benchdb")
		}); err != nil {
			return err
		}
		if err := timeIt("pg_dump -Fc (gzip) > /dev/null", func() error {
			return sh(b.env, b.bins.PgDump, "-Fc", "--no-sync", "-f", "/dev/null", "benchdb")
		}); err != nil {
			return err
		}
		store := filepath.Join(b.root, "store")
		_ = os.RemoveAll(store)
		_ = os.MkdirAll(store, 0o755)
		term := filepath.Join(b.root, "result.json")
		var rss, usage int64
		if err := timeIt("ours: backup run (incl. verify)", func() error {
			var err error
			rss, usage, err = b.inCgroup(exec.Command(b.manager, "backup", "run", "--location=pvc://bench", "--key=bench.dump.zst",
				"--host=127.0.0.1", fmt.Sprintf("--port=%d", b.port), "--credentials-dir="+filepath.Join(b.root, "credentials"),
				"--run-dir="+filepath.Join(b.root, "run"), "--storage-mount="+store, "--termination-log="+term))
			return err
		}); err != nil {
			return err
		}
		peakRSS, peakUsage = append(peakRSS, float64(rss)/(1<<20)), append(peakUsage, float64(usage)/(1<<20))
		var out enginepkg.Result
		raw, _ := os.ReadFile(term)
		if err := json.Unmarshal(raw, &out); err != nil || out.Manifest == nil {
			return fmt.Errorf("backup result %q: %w", raw, err)
		}
		manifest = out.Manifest

		// Raw restores of the same archive, uncompressed on disk, into a fresh
		// database, as the superuser (as the agent restores).
		if err := sh(b.env, b.bins.PgDump, "-Fc", "-Z0", "-f", archive, "benchdb"); err != nil {
			return err
		}
		_ = os.Chmod(archive, 0o644)
		// And the archive ours restores: the artifact decompressed (pg_dump wrote
		// it to a pipe, so its table of contents has no data offsets, which costs
		// parallel workers seeks).
		ourArchive := filepath.Join(b.root, "ours.dump")
		if err := decompress(filepath.Join(store, "bench.dump.zst"), ourArchive); err != nil {
			return err
		}
		for _, jobs := range []int{1, 2} {
			key := fmt.Sprintf("pg_restore -j%d (same archive)", jobs)
			db := fmt.Sprintf("same_%d_%d", r, jobs)
			if err := b.sql("postgres", "CREATE DATABASE "+db); err != nil {
				return err
			}
			if err := timeIt(key, func() error {
				return sh(b.super, b.bins.PgRestore, "--exit-on-error", fmt.Sprintf("--jobs=%d", jobs), "-d", db, ourArchive)
			}); err != nil {
				return err
			}
			if err := b.sql("postgres", "DROP DATABASE "+db); err != nil {
				return err
			}
		}
		_ = os.Remove(ourArchive)
		for _, jobs := range []int{1, 2} {
			key := fmt.Sprintf("pg_restore -j%d (file)", jobs)
			db := fmt.Sprintf("raw_%d_%d", r, jobs)
			if err := b.sql("postgres", "CREATE DATABASE "+db); err != nil {
				return err
			}
			if err := timeIt(key, func() error {
				return sh(b.super, b.bins.PgRestore, "--exit-on-error", fmt.Sprintf("--jobs=%d", jobs), "-d", db, archive)
			}); err != nil {
				return err
			}
			if err := timeIt(key+" + ANALYZE", func() error { return b.sql(db, "ANALYZE") }); err != nil {
				return err
			}
			res[key+" + ANALYZE"][len(res[key+" + ANALYZE"])-1] += res[key][len(res[key])-1]
			if err := b.sql("postgres", "DROP DATABASE "+db); err != nil {
				return err
			}
		}
		for _, jobs := range []int{1, 2} {
			b.n++
			if err := timeIt(fmt.Sprintf("ours: restore -j%d", jobs), func() error {
				term := filepath.Join(b.root, "restore-result.json")
				defer func() {
					var out enginepkg.Result
					if raw, err := os.ReadFile(term); err == nil && json.Unmarshal(raw, &out) == nil && out.Restore != nil {
						step("    agent phases: %v", out.Restore.Phases)
					}
				}()
				return sh(os.Environ(), b.manager, "backup", "restore", "--location=pvc://bench", "--key=bench.dump.zst",
					"--storage-mount="+store, "--termination-log="+term, "--agent-url=http://"+b.agent.Addr().String(),
					"--agent-token-dir="+filepath.Join(b.root, "internal"), fmt.Sprintf("--restore-id=bench%d", b.n),
					"--expect-sha256="+manifest.SHA256, fmt.Sprintf("--jobs=%d", jobs), "--keep-previous-seconds=0")
			}); err != nil {
				return err
			}
		}
		_ = os.Remove(archive)
	}
	m := func(k string) float64 { return median(res[k]) }
	ratio := float64(manifest.UncompressedSize) / float64(manifest.SizeBytes)
	fmt.Printf("\n== %s: database %.0f MiB, archive %.0f MiB uncompressed, artifact %.0f MiB (zstd %.1f:1); medians of %d runs\n",
		name, mib, float64(manifest.UncompressedSize)/(1<<20), float64(manifest.SizeBytes)/(1<<20), ratio, runs)
	fmt.Printf("backup   ours %6.2fs | pg_dump -Fc -Z0 >/dev/null %6.2fs | ratio %.2f (goal >= 0.90) | vs pg_dump -Fc (gzip) %6.2fs: %.2f\n",
		m("ours: backup run (incl. verify)"), m("pg_dump -Fc -Z0 > /dev/null"),
		m("pg_dump -Fc -Z0 > /dev/null")/m("ours: backup run (incl. verify)"),
		m("pg_dump -Fc (gzip) > /dev/null"), m("pg_dump -Fc (gzip) > /dev/null")/m("ours: backup run (incl. verify)"))
	for _, jobs := range []int{1, 2} {
		raw := m(fmt.Sprintf("pg_restore -j%d (file)", jobs))
		rawA := m(fmt.Sprintf("pg_restore -j%d (file) + ANALYZE", jobs))
		ours := m(fmt.Sprintf("ours: restore -j%d", jobs))
		same := m(fmt.Sprintf("pg_restore -j%d (same archive)", jobs))
		fmt.Printf("restore -j%d ours %6.2fs | pg_restore of pg_dump -f file %6.2fs: ratio %.2f, + ANALYZE %6.2fs: ratio %.2f (goal >= 0.90) | pg_restore of our archive %6.2fs: ratio %.2f\n",
			jobs, ours, raw, raw/ours, rawA, rawA/ours, same, same/ours)
	}
	fmt.Printf("parallel restore speedup (ours -j1 / -j2): %.2fx (goal >= 1.6x where the schema allows); pg_restore: %.2fx\n",
		m("ours: restore -j1")/m("ours: restore -j2"), m("pg_restore -j1 (file)")/m("pg_restore -j2 (file)"))
	fmt.Printf("backup pod peak memory (cgroup: manager + pg_dump): resident %.1f MiB (goal < 100 MiB), incl. page cache %.0f MiB\n",
		median(peakRSS), median(peakUsage))
	return nil
}

// inCgroup runs cmd in a memory cgroup of its own (v1 or v2) and returns the
// peak resident anonymous memory of its processes (sampled) and the cgroup's
// maximum usage including page cache.
func (b *bench) inCgroup(cmd *exec.Cmd) (rss, usage int64, err error) {
	cmd.Stderr = os.Stderr
	b.n++
	v1 := fmt.Sprintf("/sys/fs/cgroup/memory/bench-backup-%d-%d", os.Getpid(), b.n)
	v2 := fmt.Sprintf("/sys/fs/cgroup/bench-backup-%d-%d", os.Getpid(), b.n)
	dir, stat, field, maxFile := v1, "memory.stat", "rss", "memory.max_usage_in_bytes"
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		dir, stat, field, maxFile = v2, "memory.stat", "anon", "memory.peak"
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return 0, 0, fmt.Errorf("creating a memory cgroup (run as root): %w", err)
	}
	defer os.Remove(dir)
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	// Moved at once: the children (pg_dump, pg_restore) start later and inherit it.
	_ = os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if raw, err := os.ReadFile(filepath.Join(dir, stat)); err == nil {
				for _, line := range strings.Split(string(raw), "\n") {
					if k, v, ok := strings.Cut(line, " "); ok && k == field {
						if n, _ := strconv.ParseInt(v, 10, 64); n > peak.Load() {
							peak.Store(n)
						}
					}
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	err = cmd.Wait()
	close(stop)
	<-sampled
	raw, _ := os.ReadFile(filepath.Join(dir, maxFile))
	usage, _ = strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
	return peak.Load(), usage, err
}

func decompress(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	dec, err := zstd.NewReader(in)
	if err != nil {
		return err
	}
	defer dec.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, dec); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, 0o644)
}

func (b *bench) sql(db, q string) error {
	ctx := context.Background()
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return err
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Database = filepath.Join(b.root, "db", "run"), uint16(b.port), "postgres", db
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, q); err != nil {
		return fmt.Errorf("%.60s…: %w", q, err)
	}
	return nil
}

func sh(env []string, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return nil
}

func connect(ctx context.Context, port int) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=bench dbname=benchdb sslmode=disable", port))
	if err != nil {
		return nil, err
	}
	cfg.Password = "bench-password"
	return pgx.ConnectConfig(ctx, cfg)
}

func waitFor(ctx context.Context, port int) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := connect(ctx, port)
		if err == nil {
			return c.Close(ctx)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres did not start: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func dbSize(port int) int64 {
	ctx := context.Background()
	c, err := connect(ctx, port)
	if err != nil {
		return 0
	}
	defer c.Close(ctx)
	var n int64
	_ = c.QueryRow(ctx, "SELECT pg_database_size(current_database())").Scan(&n)
	return n
}
