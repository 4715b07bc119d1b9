package instance

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/example/postgres-operator/internal/postgres"
)

// Config is the agent's configuration. Secrets are never part of it: they are read
// from files in CredentialsDir and InternalDir.
type Config struct {
	PGData         string
	CredentialsDir string
	InternalDir    string
	RunDir         string
	PodName        string
	PrimaryHost    string
	// PrimaryPort is the primary's PostgreSQL port; Port when zero.
	PrimaryPort     int
	Port            int
	AgentPort       int
	AgentAddress    string
	ListenAddresses string
	BinDir          string
	// CloneRetry is the first delay between pg_basebackup attempts (doubling up to
	// 30s); 2s when zero.
	CloneRetry time.Duration
	Log        *slog.Logger
}

// Run parses the instance subcommand's flags and runs the agent until ctx is
// cancelled (SIGTERM) or PostgreSQL exits.
func Run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("instance", flag.ContinueOnError)
	cfg := Config{}
	fs.StringVar(&cfg.PGData, "pgdata", DefaultPGData, "PostgreSQL data directory")
	fs.StringVar(&cfg.CredentialsDir, "credentials-dir", DefaultCredentialsDir, "directory of the application credentials Secret")
	fs.StringVar(&cfg.InternalDir, "internal-dir", DefaultInternalDir, "directory of the internal Secret (replication password, agent token)")
	fs.StringVar(&cfg.RunDir, "run-dir", DefaultRunDir, "private directory for the socket and the replication passfile")
	fs.StringVar(&cfg.PodName, "pod-name", os.Getenv("POD_NAME"), "name of this pod; ordinal 0 is the primary")
	fs.StringVar(&cfg.PrimaryHost, "primary-host", "", "host a standby clones and streams from")
	fs.IntVar(&cfg.Port, "port", PostgresPort, "PostgreSQL port")
	fs.IntVar(&cfg.PrimaryPort, "primary-port", 0, "PostgreSQL port of the primary (default: --port)")
	fs.IntVar(&cfg.AgentPort, "agent-port", AgentPort, "agent HTTP port")
	fs.StringVar(&cfg.AgentAddress, "agent-address", "", "agent HTTP listen address (all interfaces when empty)")
	fs.StringVar(&cfg.ListenAddresses, "listen-addresses", "*", "PostgreSQL listen_addresses")
	fs.StringVar(&cfg.BinDir, "bin-dir", "", "directory of the PostgreSQL programs (found automatically when empty)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	cfg.Log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	// SIGTERM (pod deletion) and SIGINT become a fast shutdown of PostgreSQL.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return NewAgent(cfg).Run(ctx)
}

// Agent runs one PostgreSQL instance.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	bins postgres.Binaries
	// cred, when set, is the postgres OS user the agent (running as root) runs
	// PostgreSQL programs as.
	cred *syscall.Credential
	// exited is set once the postgres process has exited.
	exited atomic.Bool
	// setUp is set once a primary's roles, database and heartbeat table are in
	// place (always set on a standby): the instance is not ready before.
	setUp atomic.Bool
	token []byte
	// ready is closed when the HTTP server listens.
	ready chan struct{}
	addr  atomic.Value // net.Addr of the HTTP server
}

// NewAgent returns an agent for cfg.
func NewAgent(cfg Config) *Agent {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if cfg.PrimaryPort == 0 {
		cfg.PrimaryPort = cfg.Port
	}
	if cfg.CloneRetry == 0 {
		cfg.CloneRetry = 2 * time.Second
	}
	return &Agent{cfg: cfg, log: cfg.Log, ready: make(chan struct{})}
}

// Ordinal returns the StatefulSet ordinal at the end of a pod name, or -1.
func Ordinal(pod string) int {
	i := strings.LastIndex(pod, "-")
	if i < 0 {
		return -1
	}
	n, err := strconv.Atoi(pod[i+1:])
	if err != nil {
		return -1
	}
	return n
}

// IsPrimary reports whether this instance bootstraps as the primary.
func (a *Agent) IsPrimary() bool { return Ordinal(a.cfg.PodName) == 0 }

// Addr returns the address of the HTTP server once it listens.
func (a *Agent) Addr() net.Addr {
	<-a.ready
	return a.addr.Load().(net.Addr)
}

// Run bootstraps or clones the data directory if it is empty, writes the
// configuration, starts PostgreSQL and supervises it. It returns nil after a
// requested shutdown (ctx cancelled) and an error when PostgreSQL exits by itself.
func (a *Agent) Run(ctx context.Context) error {
	if Ordinal(a.cfg.PodName) < 0 {
		return fmt.Errorf("pod name %q has no ordinal suffix", a.cfg.PodName)
	}
	var err error
	if a.bins, err = postgres.FindBinaries(a.cfg.BinDir); err != nil {
		return err
	}
	tok, err := os.ReadFile(filepath.Join(a.cfg.InternalDir, InternalAgentTokenFile))
	if err != nil {
		return fmt.Errorf("reading the agent token: %w", err)
	}
	a.token = []byte(strings.TrimSpace(string(tok)))
	if len(a.token) == 0 {
		return errors.New("the agent token file is empty")
	}
	if err := a.dropPrivilegesForChildren(); err != nil {
		return err
	}
	if err := a.prepareDirs(); err != nil {
		return err
	}

	srv, err := a.serve()
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	if err := a.writePassfile(); err != nil {
		return err
	}
	if !a.IsPrimary() {
		a.setUp.Store(true)
	}
	if !a.hasData() {
		if a.IsPrimary() {
			err = a.initdb(ctx)
		} else {
			err = a.clone(ctx)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	// PostgreSQL refuses a data directory others can read; a volume's fsGroup
	// handling may have widened it.
	if err := os.Chmod(a.cfg.PGData, 0o700); err != nil {
		return fmt.Errorf("restricting the data directory: %w", err)
	}
	if err := a.writeConfig(); err != nil {
		return err
	}
	return a.supervise(ctx)
}

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
	for _, d := range []string{filepath.Dir(a.cfg.PGData), a.cfg.RunDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
		if err := a.chown(d); err != nil {
			return err
		}
	}
	return os.Chmod(a.cfg.RunDir, 0o700)
}

func (a *Agent) hasData() bool {
	_, err := os.Stat(filepath.Join(a.cfg.PGData, "PG_VERSION"))
	return err == nil
}

// command prepares a PostgreSQL program to run as the postgres user (when the
// agent is root) in its own process group. Ending ctx sends SIGTERM to the whole
// group (pg_basebackup forks a WAL streamer), then SIGKILL if it lingers.
func (a *Agent) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: a.cred}
	// The passfile's path, never a password.
	cmd.Env = append(os.Environ(), "PGPASSFILE="+a.passfile())
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

func (a *Agent) passfile() string { return filepath.Join(a.cfg.RunDir, "pgpass") }

// writePassfile writes the replication credential for pg_basebackup and
// primary_conninfo; libpq reads it, so the password is in no argument or variable.
func (a *Agent) writePassfile() error {
	pw, err := a.readSecret(a.cfg.InternalDir, InternalReplicationPasswordFile)
	if err != nil {
		return err
	}
	return a.writeFile(a.passfile(), postgres.PgpassLine(ReplicationUser, pw), 0o600)
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
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
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

// initdb creates a new cluster without a superuser password: the superuser only
// logs in over the private socket (peer).
func (a *Agent) initdb(ctx context.Context) error {
	a.log.Info("initialising a new primary", "pgdata", a.cfg.PGData)
	staging := a.stagingDir()
	if err := os.RemoveAll(staging); err != nil {
		return fmt.Errorf("clearing a partial data directory: %w", err)
	}
	cmd := a.command(ctx, a.bins.Initdb,
		"--pgdata="+staging,
		"--username=postgres",
		"--auth-local=peer",
		"--auth-host=scram-sha-256",
		"--data-checksums",
		"--encoding=UTF8",
		"--no-instructions",
	)
	if err := cmd.Run(); err != nil {
		_ = os.RemoveAll(staging)
		return fmt.Errorf("initdb: %w", err)
	}
	return a.install()
}

// clone copies the primary with pg_basebackup, retrying until it succeeds or ctx
// ends: the primary may still be starting.
func (a *Agent) clone(ctx context.Context) error {
	delay := a.cfg.CloneRetry
	staging := a.stagingDir()
	for attempt := 1; ; attempt++ {
		if err := os.RemoveAll(staging); err != nil {
			return fmt.Errorf("clearing a partial data directory: %w", err)
		}
		a.log.Info("cloning the primary", "host", a.cfg.PrimaryHost, "port", a.cfg.PrimaryPort, "attempt", attempt)
		cmd := a.command(ctx, a.bins.PgBasebackup,
			"--pgdata="+staging,
			"--host="+a.cfg.PrimaryHost,
			"--port="+strconv.Itoa(a.cfg.PrimaryPort),
			"--username="+ReplicationUser,
			"--wal-method=stream",
			"--checkpoint=fast",
			"--no-password",
		)
		err := cmd.Run()
		if err == nil {
			if err := a.writeFile(filepath.Join(staging, "standby.signal"), "", 0o600); err != nil {
				return err
			}
			return a.install()
		}
		if ctx.Err() != nil {
			_ = os.RemoveAll(staging)
			return ctx.Err()
		}
		a.log.Warn("pg_basebackup failed; retrying", "error", err.Error(), "in", delay.String())
		select {
		case <-ctx.Done():
			_ = os.RemoveAll(staging)
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 30*time.Second)
	}
}

// writeConfig rewrites the configuration the agent owns, at every start.
func (a *Agent) writeConfig() error {
	primary := a.IsPrimary()
	var quoteErr error
	q := func(v string) string {
		quoted, err := postgres.QuoteConfString(v)
		if err != nil && quoteErr == nil {
			quoteErr = err
		}
		return quoted
	}
	conf := []string{
		"# Written by the postgres-operator instance agent at every start; do not edit.",
		"listen_addresses = " + q(a.cfg.ListenAddresses),
		"port = " + strconv.Itoa(a.cfg.Port),
		"unix_socket_directories = " + q(a.cfg.RunDir),
		"unix_socket_permissions = 0700",
		"wal_level = replica",
		"hot_standby = on",
		"max_wal_senders = 10",
		"max_replication_slots = 10",
		"wal_keep_size = '512MB'",
		"password_encryption = 'scram-sha-256'",
		"hba_file = " + q(filepath.Join(a.cfg.PGData, "pg_hba.conf")),
		"ident_file = " + q(filepath.Join(a.cfg.PGData, "pg_ident.conf")),
	}
	if !primary {
		// libpq reads the password from the passfile: none is in the configuration.
		conninfo := strings.Join([]string{
			"host=" + postgres.ConninfoValue(a.cfg.PrimaryHost),
			"port=" + strconv.Itoa(a.cfg.PrimaryPort),
			"user=" + ReplicationUser,
			"passfile=" + postgres.ConninfoValue(a.passfile()),
			"application_name=" + postgres.ConninfoValue(a.cfg.PodName),
			"sslmode=prefer",
		}, " ")
		conf = append(conf, "primary_conninfo = "+q(conninfo))
	}
	if quoteErr != nil {
		return quoteErr
	}
	if err := a.writeFile(filepath.Join(a.cfg.PGData, operatorConfFile), strings.Join(conf, "\n")+"\n", 0o600); err != nil {
		return err
	}

	mainConf := filepath.Join(a.cfg.PGData, "postgresql.conf")
	b, err := os.ReadFile(mainConf)
	if err != nil {
		return fmt.Errorf("reading postgresql.conf: %w", err)
	}
	const include = "include_if_exists = '" + operatorConfFile + "'"
	if !strings.Contains(string(b), include) {
		if err := a.writeFile(mainConf, string(b)+"\n"+include+"\n", 0o600); err != nil {
			return err
		}
	}

	hba := strings.Join([]string{
		"# Written by the postgres-operator instance agent at every start; do not edit.",
		"# TYPE  DATABASE     USER               ADDRESS  METHOD",
		"local   all          postgres                    peer map=operator",
		"local   all          all                         scram-sha-256",
		"host    replication  " + ReplicationUser + "  all      scram-sha-256",
		"host    all          " + ReplicationUser + "  all      reject",
		"host    all          postgres           all      reject",
		"host    all          all                all      scram-sha-256",
	}, "\n") + "\n"
	if err := a.writeFile(filepath.Join(a.cfg.PGData, "pg_hba.conf"), hba, 0o600); err != nil {
		return err
	}
	ident := "# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\noperator  postgres  postgres\noperator  root  postgres\n"
	if err := a.writeFile(filepath.Join(a.cfg.PGData, "pg_ident.conf"), ident, 0o600); err != nil {
		return err
	}

	if primary {
		return nil
	}
	return a.writeFile(filepath.Join(a.cfg.PGData, "standby.signal"), "", 0o600)
}

// operatorConfFile is the file in PGDATA holding the settings the agent owns;
// postgresql.conf includes it last.
const operatorConfFile = "postgresql.operator.conf"
