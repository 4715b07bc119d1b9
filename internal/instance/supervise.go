package instance

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/example/postgres-operator/internal/postgres"
)

// supervise runs postgres until it exits or ctx ends; on ctx's end it asks for a
// fast shutdown (SIGINT) and waits for it.
func (a *Agent) supervise(ctx context.Context) error {
	// Not CommandContext: cancellation must become a fast shutdown, not SIGKILL.
	cmd := a.command(context.Background(), a.bins.Postgres, "-D", a.cfg.PGData)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	a.log.Info("postgres started", "pid", cmd.Process.Pid, "primary", a.IsPrimary())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	if a.IsPrimary() {
		go a.ensureRolesWhenUp(ctx)
	}

	select {
	case err := <-done:
		a.exited.Store(true)
		if err == nil {
			err = errors.New("postgres exited")
		}
		return fmt.Errorf("postgres stopped by itself: %w", err)
	case <-ctx.Done():
		a.log.Info("shutdown requested: fast shutdown of postgres")
		_ = cmd.Process.Signal(syscall.SIGINT)
		err := <-done
		a.exited.Store(true)
		var exitErr *exec.ExitError
		if err != nil && !errors.As(err, &exitErr) {
			return fmt.Errorf("waiting for postgres: %w", err)
		}
		a.log.Info("postgres stopped")
		return nil
	}
}

// connect opens a superuser connection over the private socket.
func (a *Agent) connect(ctx context.Context, database string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.Host = a.cfg.RunDir
	cfg.Port = uint16(a.cfg.Port)
	cfg.User = "postgres"
	cfg.Database = database
	cfg.ConnectTimeout = 3 * time.Second
	cfg.RuntimeParams["application_name"] = "postgres-operator-agent"
	return pgx.ConnectConfig(ctx, cfg)
}

func (a *Agent) ensureRolesWhenUp(ctx context.Context) {
	for delay := 200 * time.Millisecond; ; delay = min(delay*2, 2*time.Second) {
		if a.exited.Load() {
			return
		}
		err := a.ensureRoles(ctx)
		if err == nil {
			a.setUp.Store(true)
			a.log.Info("application role, database and replication role are in place")
			return
		}
		a.log.Info("waiting to set up roles", "reason", err.Error())
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// ensureRoles creates or updates the replication role, the application role and
// its database from the mounted Secrets. Passwords are sent as SCRAM verifiers.
func (a *Agent) ensureRoles(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	appUser, err := a.readSecret(a.cfg.CredentialsDir, CredentialsUsernameFile)
	if err != nil {
		return err
	}
	appPassword, err := a.readSecret(a.cfg.CredentialsDir, CredentialsPasswordFile)
	if err != nil {
		return err
	}
	appDB, err := a.readSecret(a.cfg.CredentialsDir, CredentialsDatabaseFile)
	if err != nil {
		return err
	}
	if err := validateNames(appUser, appDB); err != nil {
		return err
	}
	replPassword, err := a.readSecret(a.cfg.InternalDir, InternalReplicationPasswordFile)
	if err != nil {
		return err
	}
	conn, err := a.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return err
	}
	if inRecovery {
		return errors.New("the instance is in recovery")
	}
	// The statements below carry password verifiers: keep them out of the server
	// log even when they fail or log_statement is set.
	if _, err := conn.Exec(ctx, "SET log_statement = 'none'; SET log_min_error_statement = 'panic'"); err != nil {
		return err
	}
	if err := ensureRole(ctx, conn, ReplicationUser, replPassword, "REPLICATION"); err != nil {
		return err
	}
	if err := ensureRole(ctx, conn, appUser, appPassword, "NOREPLICATION"); err != nil {
		return err
	}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", appDB).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+postgres.QuoteIdentifier(appDB)+" OWNER "+postgres.QuoteIdentifier(appUser)); err != nil {
			return fmt.Errorf("creating database %s: %w", appDB, err)
		}
	} else if _, err := conn.Exec(ctx, "ALTER DATABASE "+postgres.QuoteIdentifier(appDB)+" OWNER TO "+postgres.QuoteIdentifier(appUser)); err != nil {
		return fmt.Errorf("setting the owner of database %s: %w", appDB, err)
	}
	_, err = conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+heartbeatTable+" (id int PRIMARY KEY, ts timestamptz NOT NULL)")
	return err
}

const heartbeatTable = "public.postgres_operator_heartbeat"

// validateNames refuses application role and database names that would make the
// agent alter a role or database it relies on.
func validateNames(user, database string) error {
	switch {
	case user == "postgres" || user == ReplicationUser || strings.HasPrefix(user, "pg_"):
		return fmt.Errorf("the application user may not be %q: it is reserved", user)
	case database == "template0" || database == "template1":
		return fmt.Errorf("the application database may not be %q", database)
	}
	return nil
}

func ensureRole(ctx context.Context, conn *pgx.Conn, name, password, replication string) error {
	verifier, err := postgres.ScramVerifier(password)
	if err != nil {
		return err
	}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", name).Scan(&exists); err != nil {
		return err
	}
	verb := "ALTER"
	if !exists {
		verb = "CREATE"
	}
	// Utility statements take no parameters: the identifier and the verifier are
	// quoted. The verifier reveals nothing usable as a password.
	stmt := verb + " ROLE " + postgres.QuoteIdentifier(name) + " WITH LOGIN NOSUPERUSER " + replication +
		" PASSWORD " + postgres.QuoteLiteral(verifier)
	if _, err := conn.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("%s role %s: %w", verb, name, err)
	}
	return nil
}

// status queries PostgreSQL for the status endpoint.
func (a *Agent) status(ctx context.Context) *Status {
	st := &Status{Pod: a.cfg.PodName}
	conn, err := a.connect(ctx, "postgres")
	if err != nil {
		st.Error = "connecting: " + err.Error()
		return st
	}
	defer conn.Close(context.Background())
	var versionNum string
	if err := conn.QueryRow(ctx, `SELECT pg_is_in_recovery(), current_setting('server_version'), current_setting('server_version_num'),
		(SELECT timeline_id FROM pg_control_checkpoint())`).Scan(&st.InRecovery, &st.ServerVersion, &versionNum, &st.Timeline); err != nil {
		st.Error = "querying: " + err.Error()
		return st
	}
	st.Running = true
	st.ServerVersionNum, _ = strconv.Atoi(versionNum)
	if st.InRecovery {
		st.Role = RoleReplica
		err = conn.QueryRow(ctx, `SELECT coalesce(pg_last_wal_receive_lsn()::text, ''), coalesce(pg_last_wal_replay_lsn()::text, ''),
			coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint,
			coalesce((SELECT status FROM pg_stat_wal_receiver LIMIT 1), '')`).
			Scan(&st.ReceiveLSN, &st.ReplayLSN, &st.ReplayLagBytes, &st.WALReceiverStatus)
		if err != nil {
			st.Error = "querying recovery: " + err.Error()
		}
		st.CurrentLSN = st.ReplayLSN
		return st
	}
	st.Role = RolePrimary
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&st.CurrentLSN); err != nil {
		st.Error = "querying WAL position: " + err.Error()
		return st
	}
	rows, err := conn.Query(ctx, `SELECT coalesce(application_name, ''), coalesce(state, ''), coalesce(sync_state, ''),
		coalesce(sent_lsn::text, ''), coalesce(replay_lsn::text, ''),
		coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint
		FROM pg_stat_replication ORDER BY application_name`)
	if err != nil {
		st.Error = "querying replication: " + err.Error()
		return st
	}
	for rows.Next() {
		var r ReplicaStatus
		if err := rows.Scan(&r.ApplicationName, &r.State, &r.SyncState, &r.SentLSN, &r.ReplayLSN, &r.LagBytes); err != nil {
			st.Error = "reading replication: " + err.Error()
			break
		}
		st.Replicas = append(st.Replicas, r)
	}
	rows.Close()
	if err := a.writeCheck(ctx, conn); err != nil {
		st.WriteError = err.Error()
	} else {
		st.Writable = true
	}
	return st
}

// writeCheck commits a heartbeat row: proof that the primary accepts writes.
func (a *Agent) writeCheck(ctx context.Context, conn *pgx.Conn) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck
	if _, err := tx.Exec(ctx, "SET LOCAL statement_timeout = '2s'"); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "INSERT INTO "+heartbeatTable+" (id, ts) VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET ts = excluded.ts"); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// accepting reports whether PostgreSQL answers a query.
func (a *Agent) accepting(ctx context.Context) bool {
	conn, err := a.connect(ctx, "postgres")
	if err != nil {
		return false
	}
	defer conn.Close(context.Background())
	var one int
	return conn.QueryRow(ctx, "SELECT 1").Scan(&one) == nil
}

// pidFile is postmaster.pid, present while postgres runs.
func (a *Agent) pidFile() string { return filepath.Join(a.cfg.PGData, "postmaster.pid") }
