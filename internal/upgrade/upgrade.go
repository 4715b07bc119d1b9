package upgrade

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/example/postgres-operator/internal/postgres"
)

// The upgrade's steps, in order, as reported in the result (and accepted by
// --fail-after, which stops the process right after one as a kill would).
const (
	StepPrepare      = "prepare"
	StepShutdown     = "clean-shutdown"
	StepInitdb       = "initdb"
	StepPgUpgrade    = "pg_upgrade"
	StepSwap         = "swap"
	StepCollations   = "collations"
	StepAnalyze      = "analyze"
	StepCleanup      = "cleanup"
	StepCheck        = "check"
	StepRollback     = "rollback"
	failAfterExit    = 3
	workDirName      = "upgrade"
	newDirName       = "new"
	checkDirName     = "check"
	upgradedMarker   = "upgraded"
	postDoneMarker   = "post-done"
	upgradePort      = 50432
	oldSuffixPattern = "%s.pg%d"
)

// Method is how pg_upgrade moves the data files.
type Method string

const (
	// MethodLink hard-links the files: seconds for any size and almost no space,
	// but once the new server has started the old directory cannot run again.
	MethodLink Method = "link"
	// MethodCopy copies the files: as slow as the data is large and needs as much
	// free space, but the old directory stays intact (kept for a rollback).
	MethodCopy Method = "copy"
)

// Config is where the data is and how to upgrade it.
type Config struct {
	// PGData is the data directory (the instance's); its parent holds the work
	// directory and, after a copy upgrade, the old directory.
	PGData string
	// OldDir is where Collect copied the old installation.
	OldDir string
	Method Method
	// RebuildCollationIndexes: when the C library's or ICU's version changed,
	// rebuild the indexes that depend on a collation (else they are only
	// listed).
	RebuildCollationIndexes bool
	// FailAfter stops the process (exit 3) right after the named step: the tests'
	// stand-in for a kill at that point.
	FailAfter string
	// Log receives the progress (the one log format: internal/logging).
	Log *slog.Logger
}

// Step is one step of an upgrade with its times.
type Step struct {
	Name     string    `json:"name"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
}

// Settings are the old cluster's settings the new one is created with.
type Settings struct {
	Encoding       string `json:"encoding"`
	Collate        string `json:"collate"`
	Ctype          string `json:"ctype"`
	LocaleProvider string `json:"localeProvider,omitempty"`
	Locale         string `json:"locale,omitempty"`
	Checksums      bool   `json:"checksums"`
	WALSegmentMB   int    `json:"walSegmentMB"`
}

// Result is what a check or an upgrade reports (the Job's termination message).
type Result struct {
	OK        bool   `json:"ok"`
	Action    string `json:"action"`
	FromMajor int    `json:"fromMajor,omitempty"`
	ToMajor   int    `json:"toMajor,omitempty"`
	// ToVersion is the new server's version.
	ToVersion string `json:"toVersion,omitempty"`
	Method    Method `json:"method,omitempty"`
	// SystemIdentifier of the upgraded data directory (a new cluster's).
	SystemIdentifier string    `json:"systemIdentifier,omitempty"`
	Settings         *Settings `json:"settings,omitempty"`
	// FreeBytes on the volume and NeedBytes for the method.
	FreeBytes int64 `json:"freeBytes,omitempty"`
	NeedBytes int64 `json:"needBytes,omitempty"`
	// OldDirectory is the old data directory kept on the volume (copy), or "".
	OldDirectory string `json:"oldDirectory,omitempty"`
	// CollationChange says what changed ("glibc 2.36 → 2.41; ICU 72 → 76"), "" when
	// nothing did; RebuiltIndexes counts the indexes rebuilt for it and
	// IndexesToRebuild those left when the rebuild was turned off.
	CollationChange  string   `json:"collationChange,omitempty"`
	RebuiltIndexes   int      `json:"rebuiltIndexes,omitempty"`
	IndexesToRebuild []string `json:"indexesToRebuild,omitempty"`
	// ExtensionsToUpdate lists "db.extension old → new" that need ALTER EXTENSION … UPDATE.
	ExtensionsToUpdate []string `json:"extensionsToUpdate,omitempty"`
	// RolledBack: the upgrade failed and the old data directory was restored.
	RolledBack bool `json:"rolledBack,omitempty"`
	// PastPointOfNoReturn: the new data directory is in place; only forward.
	PastPointOfNoReturn bool   `json:"pastPointOfNoReturn,omitempty"`
	Steps               []Step `json:"steps,omitempty"`
	Message             string `json:"message,omitempty"`
}

type runner struct {
	cfg          Config
	old, new     Installation
	res          *Result
	root, work   string
	newData      string
	env          []string
	oldLibraries string
	// running is the bindir of the temporary server running, if any.
	running string
}

func newRunner(cfg Config, res *Result) (*runner, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Method == "" {
		cfg.Method = MethodLink
	}
	if cfg.Method != MethodLink && cfg.Method != MethodCopy {
		return nil, fmt.Errorf("unknown method %q (link or copy)", cfg.Method)
	}
	root := filepath.Dir(cfg.PGData)
	r := &runner{cfg: cfg, res: res, root: root, work: filepath.Join(root, workDirName)}
	r.newData = filepath.Join(r.work, newDirName)
	res.Method = cfg.Method
	return r, nil
}

func (r *runner) step(name string, f func() error) error {
	s := Step{Name: name, Started: time.Now().UTC().Truncate(time.Millisecond)}
	r.cfg.Log.Info("step", "name", name)
	err := f()
	s.Finished = time.Now().UTC().Truncate(time.Millisecond)
	r.res.Steps = append(r.res.Steps, s)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if r.cfg.FailAfter == name {
		// As a killed pod: every process ends, a running server without a
		// shutdown checkpoint.
		r.cfg.Log.Info("stopping after a step (--fail-after)", "name", name)
		if r.running != "" {
			_, _ = r.run(context.Background(), filepath.Join(r.running, "pg_ctl"), "stop", "-D", r.cfg.PGData, "-m", "immediate")
		}
		os.Exit(failAfterExit)
	}
	return nil
}

// prepare loads both installations and the environment old binaries run with.
func (r *runner) prepare() error {
	var err error
	if r.old, r.new, err = Prepare(r.cfg.OldDir); err != nil {
		return err
	}
	r.res.FromMajor, r.res.ToMajor, r.res.ToVersion = r.old.Major, r.new.Major, r.new.Version
	if r.new.Major <= r.old.Major {
		return fmt.Errorf("the new image runs PostgreSQL %s, not newer than %s: only upgrades to a higher major are possible", r.new.Version, r.old.Version)
	}
	// A wrapper left by a check in the same directory (the tests share it).
	if pgCtl := filepath.Join(r.old.Bindir, "pg_ctl"); exists(pgCtl + ".real") {
		if err := os.Rename(pgCtl+".real", pgCtl); err != nil {
			return err
		}
	}
	r.oldLibraries = filepath.Join(r.cfg.OldDir, "lib")
	r.env = append(os.Environ(), "LD_LIBRARY_PATH="+r.oldLibraries, "PGTZ=UTC")
	if err := os.MkdirAll(r.work, 0o700); err != nil {
		return err
	}
	return nil
}

func (r *runner) cmd(ctx context.Context, bin string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, bin, args...) // #nosec G204 -- PostgreSQL's own binaries
	c.Env = r.env
	c.Dir = r.work
	return c
}

// run runs a command and returns its error with the tail of its output.
func (r *runner) run(ctx context.Context, bin string, args ...string) (string, error) {
	c := r.cmd(ctx, bin, args...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	err := c.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", filepath.Base(bin), err, tail(out.String(), 1500))
	}
	return out.String(), nil
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}

func dataMajor(pgdata string) int {
	n, _ := postgres.ReadDataMajor(pgdata)
	return n
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// controlData parses pg_controldata's output.
func (r *runner) controlData(ctx context.Context, bindir, pgdata string) (map[string]string, error) {
	out, err := r.run(ctx, filepath.Join(bindir, "pg_controldata"), pgdata)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m, nil
}

// serverOptions are the settings every temporary server of the upgrade runs with:
// no TCP, a private socket in the work directory, no TLS files (they live in the
// instance pods' memory), no standbys to wait for, no JIT.
func (r *runner) serverOptions() string {
	return fmt.Sprintf("-c listen_addresses='' -c unix_socket_directories='%s' -c port=%d -c ssl=off -c synchronous_standby_names='' -c jit=off -c archive_mode=off",
		r.work, upgradePort)
}

func (r *runner) startServer(ctx context.Context, bindir, pgdata string) error {
	_, err := r.run(ctx, filepath.Join(bindir, "pg_ctl"), "start", "-D", pgdata, "-w", "-t", "3600",
		"-l", filepath.Join(r.work, "server.log"), "-o", r.serverOptions())
	if err != nil {
		if b, rerr := os.ReadFile(filepath.Join(r.work, "server.log")); rerr == nil { // #nosec G304 -- our log
			err = fmt.Errorf("%w; server log: %s", err, tail(string(b), 1500))
		}
		return err
	}
	r.running = bindir
	return nil
}

func (r *runner) stopServer(ctx context.Context, bindir, pgdata string) error {
	_, err := r.run(ctx, filepath.Join(bindir, "pg_ctl"), "stop", "-D", pgdata, "-m", "fast", "-w", "-t", "3600")
	if err == nil {
		r.running = ""
	}
	return err
}

// settings reads the old cluster's settings (the old server must be running on
// the work socket, or sock names the live server's socket).
func (r *runner) settings(ctx context.Context, sock string, port int, control map[string]string) (*Settings, error) {
	s := &Settings{Checksums: control["Data page checksum version"] != "" && control["Data page checksum version"] != "0"}
	if seg, err := strconv.Atoi(control["Bytes per WAL segment"]); err == nil && seg > 0 {
		s.WALSegmentMB = seg / (1024 * 1024)
	}
	localeCol := "daticulocale"
	if r.old.Major >= 17 {
		localeCol = "datlocale"
	}
	q := fmt.Sprintf("SELECT pg_encoding_to_char(encoding), datcollate, datctype, datlocprovider, coalesce(%s, '') FROM pg_database WHERE datname = 'template0'", localeCol)
	if r.old.Major < 15 {
		q = "SELECT pg_encoding_to_char(encoding), datcollate, datctype, 'c', '' FROM pg_database WHERE datname = 'template0'"
	}
	rows, err := querySocket(ctx, sock, port, "postgres", q)
	if err != nil {
		return nil, err
	}
	if len(rows) != 1 || len(rows[0]) != 5 {
		return nil, fmt.Errorf("reading template0's locale: %v", rows)
	}
	s.Encoding, s.Collate, s.Ctype = rows[0][0], rows[0][1], rows[0][2]
	switch rows[0][3] {
	case "i":
		s.LocaleProvider, s.Locale = "icu", rows[0][4]
	case "b":
		s.LocaleProvider, s.Locale = "builtin", rows[0][4]
	default:
		s.LocaleProvider = "libc"
	}
	return s, nil
}

// initdb creates the new cluster with the old one's settings.
func (r *runner) initdb(ctx context.Context, dir string, s *Settings) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	args := []string{"-D", dir, "--username=postgres", "--auth-local=peer", "--auth-host=scram-sha-256",
		"--encoding=" + s.Encoding, "--lc-collate=" + s.Collate, "--lc-ctype=" + s.Ctype, "--no-instructions"}
	if s.LocaleProvider != "" && s.LocaleProvider != "libc" {
		args = append(args, "--locale-provider="+s.LocaleProvider)
		if s.Locale != "" {
			if s.LocaleProvider == "icu" {
				args = append(args, "--icu-locale="+s.Locale)
			} else {
				args = append(args, "--builtin-locale="+s.Locale)
			}
		}
	}
	if s.Checksums {
		args = append(args, "--data-checksums")
	} else if r.new.Major >= 18 {
		args = append(args, "--no-data-checksums")
	}
	if s.WALSegmentMB > 0 {
		args = append(args, "--wal-segsize="+strconv.Itoa(s.WALSegmentMB))
	}
	_, err := r.run(ctx, filepath.Join(r.new.Bindir, "initdb"), args...)
	return err
}

// pgUpgrade runs pg_upgrade (with --check when check is set).
func (r *runner) pgUpgrade(ctx context.Context, newData string, check bool) error {
	args := []string{"-b", r.old.Bindir, "-B", r.new.Bindir, "-d", r.cfg.PGData, "-D", newData, "-U", "postgres",
		"-s", r.work, "-p", strconv.Itoa(upgradePort), "-P", strconv.Itoa(upgradePort + 1),
		"-o", "-c ssl=off -c synchronous_standby_names='' -c jit=off -c archive_mode=off", "-O", "-c jit=off"}
	if check {
		args = append(args, "--check")
	}
	if r.cfg.Method == MethodLink {
		args = append(args, "--link")
	} else {
		args = append(args, "--copy")
	}
	out, err := r.run(ctx, filepath.Join(r.new.Bindir, "pg_upgrade"), args...)
	if err != nil {
		return fmt.Errorf("%w%s", err, r.problemFiles(newData, out))
	}
	return nil
}

// problemFiles returns the contents of the files pg_upgrade names in its output
// (the list of missing libraries, tables with unsupported types).
func (r *runner) problemFiles(newData, out string) string {
	var b strings.Builder
	for _, f := range strings.Fields(out) {
		if !strings.HasSuffix(f, ".txt") || !strings.HasPrefix(f, "/") {
			continue
		}
		c, err := os.ReadFile(f) // #nosec G304 -- a report pg_upgrade wrote
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, "; %s: %s", filepath.Base(f), tail(string(c), 800))
	}
	return b.String()
}

// freeBytes is the free space of the file system holding dir.
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil // #nosec G115 -- sizes fit
}

// dirBytes is the size of the files under dir (pg_wal excluded: pg_upgrade does
// not carry it over).
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && d.Name() == "pg_wal" {
			return filepath.SkipDir
		}
		if info, err := d.Info(); err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
		return nil
	})
	return n
}

// catalogReserve is the space a new cluster's catalogs and WAL need besides the
// user data: an empty cluster is ~40 MiB, plus one WAL segment per pg_upgrade
// step.
const catalogReserve = 256 << 20

func (r *runner) space() error {
	free, err := freeBytes(r.root)
	if err != nil {
		return fmt.Errorf("reading the volume's free space: %w", err)
	}
	need := int64(catalogReserve)
	if r.cfg.Method == MethodCopy {
		need += dirBytes(r.cfg.PGData)
	}
	r.res.FreeBytes, r.res.NeedBytes = free, need
	if free < need {
		return fmt.Errorf("not enough free space on the data volume for a %s upgrade: %d MiB free, %d MiB needed "+
			"(grow spec.storage.size, or use spec.upgrade.method Link)", r.cfg.Method, free>>20, need>>20)
	}
	return nil
}

// Check runs the preflight against the live old cluster: the target is a higher
// major, the volume has room for the method, and pg_upgrade --check passes
// against the real data with both installations (which includes loading every
// library the old cluster's functions use in the new installation). The old
// server keeps running; nothing of its data directory is changed.
func Check(ctx context.Context, cfg Config) (res Result) {
	res.Action = StepCheck
	r, err := newRunner(cfg, &res)
	if err != nil {
		res.Message = err.Error()
		return res
	}
	err = r.step(StepCheck, func() error {
		if err := r.prepare(); err != nil {
			return err
		}
		if m := dataMajor(cfg.PGData); m != r.old.Major {
			return fmt.Errorf("the data directory is PostgreSQL %d, the old image's binaries are %d", m, r.old.Major)
		}
		if err := r.space(); err != nil {
			return err
		}
		pidLines, err := postmasterPID(cfg.PGData)
		if err != nil {
			return fmt.Errorf("the old server is not running (%w): the check runs against the live primary", err)
		}
		if err := r.disarmOldStart(); err != nil {
			return err
		}
		control, err := r.controlData(ctx, r.old.Bindir, cfg.PGData)
		if err != nil {
			return err
		}
		if res.Settings, err = r.settings(ctx, pidLines.socketDir, pidLines.port, control); err != nil {
			return fmt.Errorf("connecting to the running server through %s: %w", pidLines.socketDir, err)
		}
		dir := filepath.Join(r.work, checkDirName)
		defer os.RemoveAll(dir)
		if err := r.initdb(ctx, dir, res.Settings); err != nil {
			return err
		}
		// The live server may restart under the check (its agent applying a
		// configuration change): postmaster.pid is then briefly gone.
		for attempt := 1; ; attempt++ {
			err := r.pgUpgrade(ctx, dir, true)
			if err == nil || attempt == 3 || !strings.Contains(err.Error(), "postmaster.pid") {
				return err
			}
			r.cfg.Log.Info("the old server's postmaster.pid vanished during the check (a restart?): retrying")
			select {
			case <-ctx.Done():
				return err
			case <-time.After(5 * time.Second):
			}
		}
	})
	if err != nil {
		res.Message = err.Error()
		return res
	}
	res.OK = true
	res.Message = fmt.Sprintf("pg_upgrade --check passed from PostgreSQL %s to %s (%s); %d MiB free, %d MiB needed",
		r.old.Version, r.new.Version, cfg.Method, res.FreeBytes>>20, res.NeedBytes>>20)
	return res
}

// disarmOldStart makes the old installation's pg_ctl fail. pg_upgrade, finding
// postmaster.pid, first tries to start the old server to tell a stale lock
// from a live one. From another pod (another PID and IPC namespace) the live
// postmaster's PID and shared memory are invisible: the lock looks stale, and a
// second postmaster would start on the live data directory, replace its lock
// file and make the real one shut down. With pg_ctl failing, pg_upgrade
// concludes the server is live and only reads from it.
func (r *runner) disarmOldStart() error {
	pgCtl := filepath.Join(r.old.Bindir, "pg_ctl")
	renamed := pgCtl + ".real"
	if !exists(renamed) {
		if err := os.Rename(pgCtl, renamed); err != nil {
			return err
		}
	}
	// pg_upgrade checks the binary's version (-V) before using it.
	script := "#!/bin/sh\n" +
		"for a in \"$@\"; do [ \"$a\" = start ] && { echo 'the upgrade check never starts the live old server' >&2; exit 1; }; done\n" +
		"exec '" + renamed + "' \"$@\"\n"
	return os.WriteFile(pgCtl, []byte(script), 0o755) // #nosec G306 -- an executable wrapper
}

// liveServerOnVolume reports whether a server answers on the data volume's
// socket: an instance still running (its pod not gone yet, or on a partitioned
// node). The upgrade never touches a directory a server runs on.
func liveServerOnVolume(pgdata string) bool {
	info, err := postmasterPID(pgdata)
	if err != nil {
		return false
	}
	conn, err := net.DialTimeout("unix", filepath.Join(info.socketDir, ".s.PGSQL."+strconv.Itoa(info.port)), 2*time.Second)
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}

type pidInfo struct {
	socketDir string
	port      int
}

// postmasterPID reads the port and first socket directory of a running server.
func postmasterPID(pgdata string) (pidInfo, error) {
	b, err := os.ReadFile(filepath.Join(pgdata, "postmaster.pid")) // #nosec G304 -- the data directory
	if err != nil {
		return pidInfo{}, err
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 5 {
		return pidInfo{}, fmt.Errorf("postmaster.pid is incomplete")
	}
	port, err := strconv.Atoi(strings.TrimSpace(lines[3]))
	if err != nil {
		return pidInfo{}, fmt.Errorf("postmaster.pid port %q", lines[3])
	}
	return pidInfo{socketDir: strings.TrimSpace(lines[4]), port: port}, nil
}

// oldDirectory is where the old data directory goes when the new one is swapped in.
func (r *runner) oldDirectory() string {
	return fmt.Sprintf(oldSuffixPattern, r.cfg.PGData, r.old.Major)
}

// Run upgrades the data directory with every instance stopped. It is resumable:
// run again after a kill at any point, it finds where the last run stopped from
// the directories themselves. Until the swap (the new directory renamed to
// PGDATA) a failure rolls back to the intact old directory; from the swap on it
// only goes forward.
func Run(ctx context.Context, cfg Config) (res Result) {
	r := begin(cfg, &res, "upgrade")
	if r == nil {
		return res
	}
	err := r.upgrade(ctx)
	if err != nil && !res.PastPointOfNoReturn {
		if rerr := r.rollback(); rerr != nil {
			res.Message = fmt.Sprintf("%v; rolling back failed too: %v", err, rerr)
			return res
		}
		res.RolledBack = true
		res.Message = fmt.Sprintf("%v (rolled back: the PostgreSQL %d data directory is intact)", err, r.old.Major)
		return res
	}
	if err != nil {
		res.Message = fmt.Sprintf("%v (the PostgreSQL %d data directory is in place: run the upgrade again to finish)", err, r.new.Major)
		return res
	}
	res.OK = true
	res.Message = fmt.Sprintf("upgraded from PostgreSQL %s to %s (%s)", r.old.Version, r.new.Version, cfg.Method)
	return res
}

func (r *runner) upgrade(ctx context.Context) error {
	pg := r.cfg.PGData
	switch {
	case dataMajor(pg) == r.new.Major:
		// Swapped by an earlier run: only the steps after the swap may be left.
		r.res.PastPointOfNoReturn = true
		r.cfg.Log.Info("the data directory is already the new major: resuming after the swap", "major", r.new.Major)
		return r.afterSwap(ctx)
	case !exists(pg) && exists(r.oldDirectory()) && exists(filepath.Join(r.work, upgradedMarker)) && dataMajor(r.newData) == r.new.Major:
		// Killed between the two renames of the swap.
		r.res.PastPointOfNoReturn = true
		if err := r.step(StepSwap, func() error { return os.Rename(r.newData, pg) }); err != nil {
			return err
		}
		return r.afterSwap(ctx)
	}
	// Anything an earlier, interrupted run left is undone first.
	if err := r.rollback(); err != nil {
		return fmt.Errorf("undoing an interrupted upgrade: %w", err)
	}
	if m := dataMajor(pg); m != r.old.Major {
		return fmt.Errorf("the data directory is PostgreSQL %d, the old image's binaries are %d", m, r.old.Major)
	}
	if err := r.space(); err != nil {
		return err
	}
	var settings *Settings
	if err := r.step(StepShutdown, func() error {
		// The old cluster is started once and stopped cleanly: pg_upgrade needs a
		// clean shutdown (an instance killed with its pod is crash-recovered
		// here), and its template0 holds the locale to create the new one with.
		if exists(filepath.Join(pg, "postmaster.pid")) {
			if liveServerOnVolume(pg) {
				return fmt.Errorf("a PostgreSQL server still answers on the data volume's socket: an instance is still running on it")
			}
			if err := os.Remove(filepath.Join(pg, "postmaster.pid")); err != nil {
				return err
			}
		}
		control, err := r.controlData(ctx, r.old.Bindir, pg)
		if err != nil {
			return err
		}
		if err := r.startServer(ctx, r.old.Bindir, pg); err != nil {
			return fmt.Errorf("starting the old server: %w", err)
		}
		settings, err = r.settings(ctx, r.work, upgradePort, control)
		if serr := r.stopServer(ctx, r.old.Bindir, pg); serr != nil && err == nil {
			err = serr
		}
		return err
	}); err != nil {
		return err
	}
	r.res.Settings = settings
	if err := r.step(StepInitdb, func() error { return r.initdb(ctx, r.newData, settings) }); err != nil {
		return err
	}
	if err := r.step(StepPgUpgrade, func() error {
		if err := r.pgUpgrade(ctx, r.newData, false); err != nil {
			return err
		}
		return writeSynced(filepath.Join(r.work, upgradedMarker), string(r.cfg.Method))
	}); err != nil {
		return err
	}
	if err := r.step(StepSwap, func() error {
		if err := os.Rename(pg, r.oldDirectory()); err != nil {
			return err
		}
		r.res.PastPointOfNoReturn = true
		if err := os.Rename(r.newData, pg); err != nil {
			return err
		}
		return syncDir(r.root)
	}); err != nil {
		return err
	}
	return r.afterSwap(ctx)
}

// afterSwap runs the new cluster once in the Job: collation-dependent indexes,
// statistics, the extensions report; then the old directory of a link upgrade is
// removed (it shares the files the new server has now changed).
func (r *runner) afterSwap(ctx context.Context) error {
	pg := r.cfg.PGData
	if !exists(filepath.Join(r.work, postDoneMarker)) {
		if exists(filepath.Join(pg, "postmaster.pid")) {
			_ = os.Remove(filepath.Join(pg, "postmaster.pid"))
		}
		if err := r.startServer(ctx, r.new.Bindir, pg); err != nil {
			return fmt.Errorf("starting the new server: %w", err)
		}
		err := r.step(StepCollations, func() error { return r.collations(ctx) })
		if err == nil {
			err = r.step(StepAnalyze, func() error {
				_, err := r.run(ctx, filepath.Join(r.new.Bindir, "vacuumdb"), "--all", "--analyze-in-stages",
					"-h", r.work, "-p", strconv.Itoa(upgradePort), "-U", "postgres")
				return err
			})
		}
		if err == nil {
			err = r.extensions(ctx)
		}
		if serr := r.stopServer(ctx, r.new.Bindir, pg); serr != nil && err == nil {
			err = serr
		}
		if err != nil {
			return err
		}
		if err := writeSynced(filepath.Join(r.work, postDoneMarker), "done"); err != nil {
			return err
		}
	}
	return r.step(StepCleanup, func() error {
		id, err := postgres.ReadSystemID(pg)
		if err != nil {
			return err
		}
		r.res.SystemIdentifier = id
		if r.cfg.Method == MethodLink {
			if err := os.RemoveAll(r.oldDirectory()); err != nil {
				return err
			}
		} else if exists(r.oldDirectory()) {
			r.res.OldDirectory = r.oldDirectory()
		}
		return os.RemoveAll(r.work)
	})
}

// rollback undoes an upgrade that has not reached the swap: the old directory
// back in place with its pg_control (pg_upgrade --link renames it), the new one
// removed. After the swap it refuses.
func (r *runner) rollback() error {
	pg := r.cfg.PGData
	if dataMajor(pg) == r.new.Major && r.new.Major != 0 {
		r.res.PastPointOfNoReturn = true
		return fmt.Errorf("the data directory is already PostgreSQL %d (the upgrade passed its point of no return)", r.new.Major)
	}
	if !exists(pg) && exists(r.oldDirectory()) {
		if err := os.Rename(r.oldDirectory(), pg); err != nil {
			return err
		}
	}
	control := filepath.Join(pg, "global", "pg_control")
	if !exists(control) && exists(control+".old") {
		if err := os.Rename(control+".old", control); err != nil {
			return err
		}
	}
	for _, d := range []string{r.newData, filepath.Join(r.work, checkDirName), filepath.Join(r.work, upgradedMarker)} {
		if err := os.RemoveAll(d); err != nil {
			return err
		}
	}
	return syncDir(r.root)
}

// Rollback restores the old data directory after an upgrade that failed or was
// killed before its point of no return.
func Rollback(_ context.Context, cfg Config) (res Result) {
	r := begin(cfg, &res, StepRollback)
	if r == nil {
		return res
	}
	if err := r.step(StepRollback, r.rollback); err != nil {
		res.Message = err.Error()
		return res
	}
	res.OK, res.RolledBack = true, true
	res.Message = fmt.Sprintf("rolled back: the PostgreSQL %d data directory is in place", r.old.Major)
	return res
}

// begin makes the runner and runs the prepare step; nil (with the failure in
// res) when either fails.
func begin(cfg Config, res *Result, action string) *runner {
	res.Action = action
	r, err := newRunner(cfg, res)
	if err == nil {
		err = r.step(StepPrepare, r.prepare)
	}
	if err != nil {
		res.Message = err.Error()
		return nil
	}
	return r
}

func writeSynced(path, content string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600) // #nosec G304 -- the work directory
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir) // #nosec G304 -- a directory of the volume
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}
