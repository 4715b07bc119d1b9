// The agent's files and processes: directories and their owners, secrets
// copied to memory, the commands it runs as the postgres user, lock files,
// pg_controldata.

package instance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
)

func (a *Agent) dropPrivilegesForChildren() error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("running as root and no postgres user to run PostgreSQL as: %w", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	a.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	return nil
}

// chown gives path to the postgres user when the agent runs as root.
func (a *Agent) chown(path string) error {
	if a.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(a.cred.Uid), int(a.cred.Gid)); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return nil
}

func (a *Agent) prepareDirs() error {
	for _, d := range append([]string{filepath.Dir(a.cfg.PGData), a.secretDir()}, a.socketDirs()...) {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
		if err := a.chown(d); err != nil {
			return err
		}
	}
	if err := os.Chmod(a.secretDir(), 0o700); err != nil { // #nosec G302 -- a directory: owner only
		return err
	}
	for _, d := range a.socketDirs() {
		if err := os.Chmod(d, 0o700); err != nil { // #nosec G302 -- a directory: owner only
			return err
		}
	}
	return nil
}

// socketDirs are the directories PostgreSQL creates its socket in: the volume's
// first when there is one (postmaster.pid names the first), then the private one
// the agent connects through.
func (a *Agent) socketDirs() []string {
	if a.cfg.VolumeSocketDir != "" {
		return []string{a.cfg.VolumeSocketDir, a.cfg.RunDir}
	}
	return []string{a.cfg.RunDir}
}

// secretDir is where the agent keeps its copies of secrets.
func (a *Agent) secretDir() string {
	if a.cfg.SecretDir != "" {
		return a.cfg.SecretDir
	}
	return a.cfg.RunDir
}

func (a *Agent) hasData() bool {
	_, err := os.Stat(filepath.Join(a.cfg.PGData, "PG_VERSION"))
	return err == nil
}

// inRecoveryOnDisk is true when the data directory starts in recovery
// (standby.signal): a standby's, or a primary's rebuilt from a standby or
// interrupted while promoting.
func (a *Agent) inRecoveryOnDisk() bool {
	_, err := os.Stat(filepath.Join(a.cfg.PGData, "standby.signal"))
	return err == nil
}

// wasPrimary is true when the data directory was last run as a primary: it may
// hold WAL the new primary never had.
func (a *Agent) wasPrimary() bool { return a.hasData() && !a.inRecoveryOnDisk() }

// command prepares a PostgreSQL program to run as the postgres user (when the
// agent is root) in its own process group. Ending ctx sends SIGTERM to the whole
// group (pg_basebackup forks a WAL streamer), then SIGKILL if it lingers.
func (a *Agent) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: a.cred}
	// The passfile's path, never a password.
	cmd.Env = append(os.Environ(), "PGPASSFILE="+a.passfile(), "PGCONNECT_TIMEOUT=10")
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// stagingDir is where initdb and pg_basebackup build a data directory before it is
// renamed into place, so an interrupted bootstrap never leaves a PGDATA that looks
// complete (PG_VERSION is written early).
func (a *Agent) stagingDir() string {
	return filepath.Join(filepath.Dir(a.cfg.PGData), "."+filepath.Base(a.cfg.PGData)+".staging")
}

// install moves a complete staging directory to PGDATA.
func (a *Agent) install() error {
	if err := os.RemoveAll(a.cfg.PGData); err != nil {
		return fmt.Errorf("clearing a partial data directory: %w", err)
	}
	if err := os.Rename(a.stagingDir(), a.cfg.PGData); err != nil {
		return fmt.Errorf("installing the data directory: %w", err)
	}
	return nil
}

func (a *Agent) passfile() string { return filepath.Join(a.secretDir(), "pgpass") }

// writePassfile writes the replication credential for pg_basebackup and
// primary_conninfo; libpq reads it, so the password is in no argument or variable.
func (a *Agent) writePassfile() error {
	pw, err := a.readSecret(a.cfg.InternalDir, agentapi.InternalReplicationPasswordFile)
	if err != nil {
		return err
	}
	return a.writeFile(a.passfile(), postgres.PgpassLine(agentapi.ReplicationUser, pw), 0o600)
}

func (a *Agent) readSecret(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return "", fmt.Errorf("reading secret file %s: %w", name, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("secret file %s is empty", name)
	}
	return v, nil
}

// writeFile atomically writes content, owned by the postgres user.
func (a *Agent) writeFile(path, content string, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil { // #nosec G703 -- paths under the agent's configured directories
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	if err := a.chown(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("installing %s: %w", path, err)
	}
	return nil
}

// checkpointLSN is the latest checkpoint location of a stopped data directory.
func (a *Agent) checkpointLSN(ctx context.Context) (string, error) {
	return a.controlData(ctx, "Latest checkpoint location")
}

// controlData returns one field of pg_controldata's output for PGDATA.
func (a *Agent) controlData(ctx context.Context, field string) (string, error) {
	out, err := exec.CommandContext(ctx, a.bins.PgControldata, "-D", a.cfg.PGData).Output()
	if err != nil {
		return "", fmt.Errorf("pg_controldata: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == field {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("pg_controldata printed no %q", field)
}

// localTimeline is the timeline of this (stopped) data directory's last checkpoint.
func (a *Agent) localTimeline(ctx context.Context) (int64, error) {
	v, err := a.controlData(ctx, "Latest checkpoint's TimeLineID")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(v, 10, 64)
}

// cleanStaleLocks removes postmaster.pid and the socket lock left behind by a
// postgres that was killed with its container when the PID they name now belongs
// to another, live process (PID reuse in a new container: PostgreSQL would take it
// for a running postmaster and refuse to start). A lock naming a dead PID is left
// to PostgreSQL, whose own check also covers shared memory still in use.
func (a *Agent) cleanStaleLocks() {
	files := []string{a.pidFile()}
	for _, d := range a.socketDirs() {
		files = append(files, filepath.Join(d, fmt.Sprintf(".s.PGSQL.%d.lock", a.cfg.Port)))
	}
	for _, f := range files {
		pid, ok := lockFilePID(f)
		if !ok || pid <= 0 || !processAlive(pid) || processIsPostgres(pid) {
			continue
		}
		if err := os.Remove(f); err == nil {
			a.log.Info("removed a stale lock file", "file", filepath.Base(f), "pid", pid)
		}
		if strings.HasSuffix(f, ".lock") {
			_ = os.Remove(strings.TrimSuffix(f, ".lock"))
		}
	}
}

// lockFilePID returns the PID on the first line of a PostgreSQL lock file.
func lockFilePID(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return 0, true // unreadable lock: stale
	}
	return pid, true
}

// processAlive reports whether a process with pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// killProcessGroup SIGKILLs what is left of the process group pgid (postgres runs
// in its own group) and waits up to 10s for it to be gone.
func killProcessGroup(pgid int) {
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	for i := 0; i < 100; i++ {
		if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// processIsPostgres reports whether pid is a live postgres process.
func processIsPostgres(pid int) bool {
	if pid == os.Getpid() {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return false
	}
	argv0, _, _ := strings.Cut(string(b), "\x00")
	return strings.HasPrefix(filepath.Base(strings.Fields(argv0 + " x")[0]), "postgres")
}

// pidFile is postmaster.pid, present while postgres runs.
func (a *Agent) pidFile() string { return filepath.Join(a.cfg.PGData, "postmaster.pid") }
