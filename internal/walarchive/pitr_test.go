package walarchive

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/example/postgres-operator/internal/postgres"
	"github.com/example/postgres-operator/internal/testenv"
)

// TestPointInTimeRecoveryFromTheArchive runs the whole chain on real parts:
// a PostgreSQL whose archive_command is this binary's wal-push to a real S3
// server, a base backup taken without WAL (so every segment recovery needs
// comes from the archive), rows committed one by one with a clock reading
// between each, and then recoveries with restore_command = wal-fetch: to a
// time between two commits (exactly the rows committed before it) and to the
// end of the archive (every row).
func TestPointInTimeRecoveryFromTheArchive(t *testing.T) {
	s := startServer(t)
	store, srv := testenv.StartS3(t, "archive")
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(s.root, "log"))
			t.Logf("the server's log:\n%s", log)
		}
	})
	ctx := context.Background()

	bin := filepath.Join(s.root, "manager")
	build := exec.Command("go", "build", "-o", bin, "./cmd")
	build.Dir = testenv.RepoRoot()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the binary: %v\n%s", err, out)
	}
	creds := filepath.Join(s.root, "s3")
	for name, v := range map[string]string{"accessKeyId": "testkey", "secretAccessKey": "testsecret123"} {
		s.writeFile(t, filepath.Join(creds, name), v)
	}
	s.chownAll(t, s.root)
	flags := fmt.Sprintf("--location=s3://archive/ns/db --s3-endpoint=%s --s3-path-style --s3-credentials-dir=%s", srv.Endpoint(), creds)
	statusFile := filepath.Join(s.root, "wal-push.json")
	s.exec(t, fmt.Sprintf("ALTER SYSTEM SET archive_command = '%s wal-push %s --status-file=%s %%p %%f'", bin, flags, statusFile))
	s.exec(t, "SELECT pg_reload_conf()")
	// The archiver picks the new command up at its next loop: switch until a
	// segment lands in S3.
	// The archive's directory is the cluster's system identifier.
	sysid, err := postgres.ReadSystemID(s.data)
	if err != nil {
		t.Fatal(err)
	}
	archive := &Archive{Store: store, Prefix: "ns/db/" + sysid}
	waitFor(t, 60*time.Second, "the archiver to push to S3", func() error {
		_, seg := s.commitAndSwitch(t, -int(time.Now().UnixNano()%1000000))
		time.Sleep(200 * time.Millisecond)
		_, err := archive.Head(ctx, seg)
		return err
	})
	s.exec(t, "DELETE FROM t")

	// The base backup goes into the archive (no WAL in it: every segment
	// recovery needs comes from the archive), read back and verified, and
	// complete only once its WAL is archived.
	base, err := archive.TakeBase(ctx, BaseOptions{Name: "base-1", PgBasebackup: s.bins.Dir + "/pg_basebackup",
		Source:   Source{Host: "127.0.0.1", Port: s.port, User: "postgres", Env: []string{"PGSSLMODE=disable"}},
		SystemID: sysid, WALTimeout: time.Minute, Poll: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if base.SystemID != sysid || base.WALSegmentSize != 1<<20 || base.Files < 100 || base.StartWAL == "" || base.EndWAL < base.StartWAL {
		t.Fatalf("base backup %+v", base)
	}

	const rows = 8
	var between []time.Time // between[k]: after row k+1 committed, before row k+2
	for id := 1; id <= rows; id++ {
		s.exec(t, "INSERT INTO t (id) VALUES ($1)", id)
		var now time.Time
		if err := s.conn.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&now); err != nil {
			t.Fatal(err)
		}
		between = append(between, now)
		time.Sleep(30 * time.Millisecond)
	}
	// Everything written reaches the archive.
	var last string
	if err := s.conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&last); err != nil {
		t.Fatal(err)
	}
	s.exec(t, "SELECT pg_switch_wal()")
	waitFor(t, 60*time.Second, "the last segment archived", func() error {
		var archived *string
		var failed int64
		if err := s.conn.QueryRow(ctx, "SELECT last_archived_wal, failed_count FROM pg_stat_archiver").Scan(&archived, &failed); err != nil {
			return err
		}
		if archived == nil || *archived < last {
			return fmt.Errorf("archived %v (failed %d), want %s", archived, failed, last)
		}
		return nil
	})

	// wal-push read the last archived commit's time from the segment: the
	// last row's commit, between its clock reading before and after.
	ps, err := ReadPushStatus(statusFile)
	if err != nil || ps.LastCommitTime == nil || ps.LastCommitTime.After(between[rows-1]) || !ps.LastCommitTime.After(between[rows-2]) {
		t.Errorf("wal-push's last commit time %v (%v), want in (%v, %v]", ps.LastCommitTime, err, between[rows-2], between[rows-1])
	}
	// The survey finds the base backup and no gap: the window starts at its
	// end.
	survey, err := archive.Survey(ctx, 1<<20, time.Now())
	if err != nil || survey.First == nil || !survey.First.Equal(base.EndTime) || survey.Usable != 1 || len(survey.Gaps) != 0 {
		t.Errorf("survey %+v %v, want the window from %v", survey, err, base.EndTime)
	}

	recoverTo := func(t *testing.T, target string) []int {
		t.Helper()
		data := filepath.Join(s.root, "recovered-"+fmt.Sprint(time.Now().UnixNano()))
		if _, err := archive.RestoreBase(ctx, base.Name, data); err != nil {
			t.Fatal(err)
		}
		conf := fmt.Sprintf("\nrestore_command = '%s wal-fetch %s %%f %%p'\nrecovery_target_action = 'promote'\n%s\n", bin, flags, target)
		f, err := os.OpenFile(filepath.Join(data, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = f.WriteString(conf)
		_ = f.Close()
		s.writeFile(t, filepath.Join(data, "recovery.signal"), "")
		s.chownAll(t, data)
		port := testenv.FreePort(t)
		start := exec.Command(s.bins.PgCtl, "-D", data, "-w", "-t", "120", "-l", data+".log", "-o",
			fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s -c archive_mode=off", port, s.root), "start")
		start.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
		if out, err := start.CombinedOutput(); err != nil {
			log, _ := os.ReadFile(data + ".log")
			t.Fatalf("starting the recovery: %v\n%s\n%s", err, out, log)
		}
		t.Cleanup(func() {
			cmd := exec.Command(s.bins.PgCtl, "-D", data, "-m", "immediate", "stop")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
			_ = cmd.Run()
		})
		c, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", port))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		waitFor(t, 120*time.Second, "the end of recovery", func() error {
			var inRecovery bool
			if err := c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
				return err
			}
			if inRecovery {
				return fmt.Errorf("still in recovery")
			}
			return nil
		})
		var ids []int
		r, err := c.Query(ctx, "SELECT id FROM t ORDER BY id")
		if err != nil {
			t.Fatal(err)
		}
		for r.Next() {
			var id int
			if err := r.Scan(&id); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		if err := r.Err(); err != nil {
			t.Fatal(err)
		}
		log, _ := os.ReadFile(data + ".log")
		if !strings.Contains(string(log), "restored log file") {
			t.Errorf("recovery restored nothing from the archive:\n%s", log)
		}
		return ids
	}

	t.Run("to a time between two commits: exactly the rows committed before it", func(t *testing.T) {
		k := 5 // rows 1..5 committed before between[4], row 6 after
		target := fmt.Sprintf("recovery_target_time = '%s'", between[k-1].UTC().Format("2006-01-02 15:04:05.999999+00"))
		if got := recoverTo(t, target); fmt.Sprint(got) != fmt.Sprint(seq(1, k)) {
			t.Errorf("recovered rows %v, want %v", got, seq(1, k))
		}
	})
	t.Run("to the end of the archive: every row", func(t *testing.T) {
		if got := recoverTo(t, ""); fmt.Sprint(got) != fmt.Sprint(seq(1, rows)) {
			t.Errorf("recovered rows %v, want %v", got, seq(1, rows))
		}
	})
	// restore_command's answers: a missing file is "not found" (1: recovery
	// ends there); an unreachable store aborts recovery (above 125) instead of
	// ending it early at a point nobody asked for.
	t.Run("wal-fetch exits 1 for a missing file and 200 when the store is unreachable; wal-push 1 and says why", func(t *testing.T) {
		run := func(flags string, args ...string) int {
			cmd := exec.Command(bin, append(append([]string{args[0]}, strings.Fields(flags)...), append([]string{"--timeout=5s"}, args[1:]...)...)...)
			cmd.Dir = s.data // the data directory: its system identifier
			if err := cmd.Run(); err != nil {
				if ee, ok := err.(*exec.ExitError); ok { //nolint:errorlint // the concrete type carries the status
					return ee.ExitCode()
				}
				t.Fatal(err)
			}
			return 0
		}
		fetch := func(name string) int { return run(flags, "wal-fetch", name, filepath.Join(t.TempDir(), "f")) }
		if code := fetch(last); code != 0 {
			t.Fatalf("fetching an archived segment exited %d", code)
		}
		if code := fetch("0000000100000000000000FF"); code != ExitNotArchived {
			t.Errorf("fetching a missing segment exited %d, want %d", code, ExitNotArchived)
		}
		// A bucket that does not exist is not "no such file": recovery must
		// not end there.
		noBucket := strings.Replace(flags, "s3://archive/", "s3://no-such-bucket/", 1)
		if code := run(noBucket, "wal-fetch", last, filepath.Join(t.TempDir(), "f")); code != ExitUnavailable {
			t.Errorf("fetching from a bucket that does not exist exited %d, want %d", code, ExitUnavailable)
		}
		statusFile := filepath.Join(t.TempDir(), "push.json")
		var current string
		if err := s.conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&current); err != nil {
			t.Fatal(err)
		}
		srv.Stop()
		defer srv.Start()
		if code := fetch(last); code != ExitUnavailable {
			t.Errorf("fetching with the store down exited %d, want %d", code, ExitUnavailable)
		}
		if code := run(flags+" --status-file="+statusFile, "wal-push", filepath.Join("pg_wal", current), current); code != 1 {
			t.Errorf("pushing with the store down exited %d, want 1 (PostgreSQL counts it and retries)", code)
		}
		// The store's error, naming the object: refused, or (the S3
		// client retries a refused connection with backoff) the push's
		// timeout running out while it retries, as on a loaded machine.
		if ps, err := ReadPushStatus(statusFile); err != nil || !strings.Contains(ps.Error, "s3://archive/ns/db/") ||
			!strings.Contains(ps.Error, "connection refused") && !strings.Contains(ps.Error, "context deadline exceeded") {
			t.Errorf("wal-push's status: %+v %v, want the store's error", ps, err)
		}
	})
	t.Run("a segment deleted from the archive: no window, the gap named", func(t *testing.T) {
		if err := store.Delete(ctx, archive.key(base.EndWAL)); err != nil {
			t.Fatal(err)
		}
		survey, err := archive.Survey(ctx, 1<<20, time.Now())
		if err != nil || survey.First != nil || survey.Usable != 0 || len(survey.Bases) != 1 || len(survey.Gaps) != 1 ||
			!strings.Contains(survey.Gaps[0].String(), base.EndWAL) {
			t.Errorf("survey %+v %v, want no window and the gap at %s", survey, err, base.EndWAL)
		}
	})
}

func seq(from, to int) []int {
	var out []int
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = cond(); err == nil {
			return
		}
	}
	t.Fatalf("timed out waiting for %s: %v", what, err)
}

func (s *server) writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (s *server) chownAll(t *testing.T, dir string) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(s.cred.Uid), int(s.cred.Gid))
	})
	if err != nil {
		t.Fatal(err)
	}
}
