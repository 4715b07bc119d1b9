// Command bench-backup measures the backup engine against raw pg_dump and
// pg_restore in the same run, on the same machine and database:
//
//   - backup throughput of `manager backup run` (pg_dump -Fc -Z0 | zstd | sha256 →
//     a directory, then verification) vs `pg_dump -Fc > /dev/null`;
//   - restore throughput of `manager backup restore` vs `pg_restore` of a plain
//     `pg_dump -Fc` file of the same database;
//   - peak RSS of the backup process.
//
// It starts its own PostgreSQL (through the instance agent) and fills it with
// pgbench at the given scale (70 ≈ 1 GiB).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/example/postgres-operator/internal/instance"
	"github.com/example/postgres-operator/internal/postgres"
)

func main() {
	scale := flag.Int("scale", 70, "pgbench scale factor (70 ≈ 1 GiB)")
	manager := flag.String("manager", "bin/manager", "the operator binary")
	flag.Parse()
	if err := run(*scale, *manager); err != nil {
		fmt.Fprintln(os.Stderr, "bench-backup:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Fprintf(os.Stderr, "bench-backup: "+format+"\n", args...) }

func run(scale int, manager string) error {
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
		PGData: filepath.Join(root, "db", "data", "pgdata"), CredentialsDir: filepath.Join(root, "credentials"),
		InternalDir: filepath.Join(root, "internal"), RunDir: filepath.Join(root, "db", "run"), PodName: "bench-0",
		Port: port, AgentAddress: "127.0.0.1", ListenAddresses: "127.0.0.1",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx) }()
	defer func() { cancel(); <-done }()

	passfile := filepath.Join(root, "pgpass")
	if err := os.WriteFile(passfile, []byte(postgres.PgpassLine("bench", "bench-password")), 0o600); err != nil {
		return err
	}
	env := append(os.Environ(), "PGHOST=127.0.0.1", fmt.Sprintf("PGPORT=%d", port), "PGUSER=bench", "PGPASSFILE="+passfile)
	if err := waitFor(ctx, port); err != nil {
		return err
	}
	step("generating a pgbench database at scale %d", scale)
	if err := sh(env, filepath.Join(bins.Dir, "pgbench"), "-i", "-q", "-s", fmt.Sprint(scale), "benchdb"); err != nil {
		return err
	}
	size := dbSize(ctx, port)
	step("database size %.0f MiB", float64(size)/(1<<20))

	// Baseline backup: pg_dump -Fc > /dev/null.
	t0 := time.Now()
	if err := sh(env, bins.PgDump, "-Fc", "--no-sync", "-f", "/dev/null", "benchdb"); err != nil {
		return err
	}
	rawDump := time.Since(t0)
	step("pg_dump -Fc > /dev/null: %s", rawDump.Round(time.Millisecond))

	// Ours: the operator binary's backup subcommand, as in the Job.
	store := filepath.Join(root, "store")
	_ = os.MkdirAll(store, 0o755)
	t0 = time.Now()
	cmd := exec.Command(manager, "backup", "run", "--location=pvc://bench", "--key=bench.dump.zst",
		"--host=127.0.0.1", fmt.Sprintf("--port=%d", port), "--credentials-dir="+filepath.Join(root, "credentials"),
		"--run-dir="+filepath.Join(root, "run"), "--storage-mount="+store, "--termination-log=")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	ours := time.Since(t0)
	maxRSS := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss * 1024
	artifact, _ := os.Stat(filepath.Join(store, "bench.dump.zst"))
	step("manager backup run (incl. verification): %s, artifact %.0f MiB, peak RSS %.1f MiB",
		ours.Round(time.Millisecond), float64(artifact.Size())/(1<<20), float64(maxRSS)/(1<<20))

	// Baseline restore: pg_restore of a plain -Fc dump into a fresh database.
	plain := filepath.Join(root, "plain.dump")
	if err := sh(env, bins.PgDump, "-Fc", "-f", plain, "benchdb"); err != nil {
		return err
	}
	// The application role cannot create databases: the superuser does, over the
	// agent's private socket, and gives it to the role.
	superEnv := append(os.Environ(), "PGHOST="+filepath.Join(root, "db", "run"), fmt.Sprintf("PGPORT=%d", port), "PGUSER=postgres")
	if err := sh(superEnv, filepath.Join(bins.Dir, "createdb"), "-O", "bench", "raw_restore"); err != nil {
		return err
	}
	t0 = time.Now()
	if err := sh(env, bins.PgRestore, "--single-transaction", "--no-owner", "-d", "raw_restore", plain); err != nil {
		return err
	}
	rawRestore := time.Since(t0)
	step("pg_restore --single-transaction: %s", rawRestore.Round(time.Millisecond))

	// Ours: restore over the existing database (drops and recreates its objects).
	t0 = time.Now()
	cmd = exec.Command(manager, "backup", "restore", "--location=pvc://bench", "--key=bench.dump.zst",
		"--host=127.0.0.1", fmt.Sprintf("--port=%d", port), "--credentials-dir="+filepath.Join(root, "credentials"),
		"--run-dir="+filepath.Join(root, "run"), "--storage-mount="+store, "--termination-log=")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	oursRestore := time.Since(t0)
	step("manager backup restore (incl. checksum pass): %s", oursRestore.Round(time.Millisecond))

	mib := float64(size) / (1 << 20)
	fmt.Printf("database: %.0f MiB (pgbench scale %d)\n", mib, scale)
	fmt.Printf("backup:  pg_dump -Fc >/dev/null %6.1f MiB/s | ours %6.1f MiB/s | ratio %.2f (goal >= 0.90)\n",
		mib/rawDump.Seconds(), mib/ours.Seconds(), rawDump.Seconds()/ours.Seconds())
	fmt.Printf("restore: pg_restore          %6.1f MiB/s | ours %6.1f MiB/s | ratio %.2f\n",
		mib/rawRestore.Seconds(), mib/oursRestore.Seconds(), rawRestore.Seconds()/oursRestore.Seconds())
	fmt.Printf("backup peak RSS: %.1f MiB (goal < 100 MiB)\n", float64(maxRSS)/(1<<20))
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

func dbSize(ctx context.Context, port int) int64 {
	c, err := connect(ctx, port)
	if err != nil {
		return 0
	}
	defer c.Close(ctx)
	var n int64
	_ = c.QueryRow(ctx, "SELECT pg_database_size(current_database())").Scan(&n)
	return n
}
