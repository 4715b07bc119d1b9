// Roles: the application, replication and monitoring roles, and the
// connections the agent makes as them.

package instance

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/jackc/pgx/v5"
)

// connect opens a superuser connection over the private socket.
func (a *Agent) connect(ctx context.Context, database string) (*pgx.Conn, error) {
	return a.connectAs(ctx, "postgres", database)
}

// connectAs opens a connection over the private socket as role user (the
// superuser or the monitoring role: peer authentication maps the postgres OS user
// to these two only).
func (a *Agent) connectAs(ctx context.Context, user, database string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.Host = a.cfg.RunDir
	cfg.Port = uint16(a.cfg.Port)
	cfg.User = user
	cfg.Database = database
	cfg.ConnectTimeout = 3 * time.Second
	cfg.RuntimeParams["application_name"] = "postgres-operator-agent"
	// Superuser sessions resolve names in pg_catalog only (temporary objects
	// last): a function, operator or table someone created elsewhere never
	// shadows the one the agent means.
	cfg.RuntimeParams["search_path"] = "pg_catalog, pg_temp"
	return pgx.ConnectConfig(ctx, cfg)
}

// ensureRoles creates or updates the replication role, the application role and
// its database: the names come from the configuration (the Database's spec), the
// passwords from the mounted Secrets, sent as SCRAM verifiers.
func (a *Agent) ensureRoles(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	appUser, appDB := a.cfg.AppUser, a.cfg.AppDatabase
	if err := validateNames(appUser, appDB); err != nil {
		return err
	}
	appPassword, err := a.readSecret(a.cfg.CredentialsDir, agentapi.CredentialsPasswordFile)
	if err != nil {
		return err
	}
	replPassword, err := a.readSecret(a.cfg.InternalDir, agentapi.InternalReplicationPasswordFile)
	if err != nil {
		return err
	}
	conn, err := a.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_catalog.pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return err
	}
	if inRecovery {
		return errors.New("the instance is in recovery")
	}
	// The statements below carry password verifiers: keep them out of the server
	// log and statistics even when they fail, are slow or are sampled.
	if _, err := conn.Exec(ctx, quietSession); err != nil {
		return err
	}
	if err := ensureRole(ctx, conn, agentapi.ReplicationUser, replPassword, "REPLICATION"); err != nil {
		return err
	}
	// What pg_rewind needs of its source, and nothing more (PostgreSQL's
	// documented grants for a non-superuser rewind).
	for _, fn := range []string{"pg_ls_dir(text, boolean, boolean)", "pg_stat_file(text, boolean)",
		"pg_read_binary_file(text)", "pg_read_binary_file(text, bigint, bigint, boolean)",
		// and the former primary's check that the source is promoted.
		"pg_control_checkpoint()"} {
		if _, err := conn.Exec(ctx, "GRANT EXECUTE ON FUNCTION pg_catalog."+fn+" TO "+postgres.QuoteIdentifier(agentapi.ReplicationUser)); err != nil {
			return fmt.Errorf("granting %s for pg_rewind: %w", fn, err)
		}
	}
	if err := ensureRole(ctx, conn, appUser, appPassword, "NOREPLICATION"); err != nil {
		return err
	}
	if err := ensureMonitorRole(ctx, conn); err != nil {
		return err
	}
	// Rule 6: a swap that was interrupted after closing the application
	// database (a killed agent or primary, a failover) leaves it closed; no
	// restore runs here yet, so it opens again.
	if reopened, err := reopenApplicationDatabase(ctx, conn, appDB); err != nil {
		return fmt.Errorf("allowing connections to database %s again: %w", appDB, err)
	} else if reopened {
		a.log.Warn("the application database refused connections (an interrupted restore swap): allowed again", "database", appDB)
	}
	var owner string
	err = conn.QueryRow(ctx, "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database WHERE datname = $1", appDB).Scan(&owner)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+postgres.QuoteIdentifier(appDB)+" OWNER "+postgres.QuoteIdentifier(appUser)); err != nil {
			return fmt.Errorf("creating database %s: %w", appDB, err)
		}
	case err != nil:
		return err
	case owner != appUser:
		// The application database (never postgres or a template: validateNames)
		// belongs to the application role.
		if _, err := conn.Exec(ctx, "ALTER DATABASE "+postgres.QuoteIdentifier(appDB)+" OWNER TO "+postgres.QuoteIdentifier(appUser)); err != nil {
			return fmt.Errorf("setting the owner of database %s: %w", appDB, err)
		}
	}
	return dropLegacyHeartbeat(ctx, conn)
}

// quietSession keeps what a session sends out of every log and statistic
// PostgreSQL keeps: statement, duration and sample logging, the debug dumps of
// parse trees, and pg_stat_statements' record of utility statements.
const quietSession = "SET log_statement = 'none'; SET log_min_error_statement = 'panic'; " +
	"SET log_min_duration_statement = -1; SET log_min_duration_sample = -1; SET log_duration = off; " +
	"SET log_statement_sample_rate = 0; SET log_transaction_sample_rate = 0; " +
	"SET debug_print_parse = off; SET debug_print_rewritten = off; SET debug_print_plan = off; " +
	"SET pg_stat_statements.track_utility = off"

// dropLegacyHeartbeat drops the heartbeat table earlier versions kept in the
// postgres database's public schema, when the superuser still owns it (a table
// someone else recreated there is left alone: the superuser runs nothing of it).
func dropLegacyHeartbeat(ctx context.Context, conn *pgx.Conn) error {
	var owner string
	err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relname = 'postgres_operator_heartbeat'`).Scan(&owner)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && owner != "postgres") {
		return nil
	}
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, "DROP TABLE public.postgres_operator_heartbeat")
	return err
}

// namePattern is the CRD's rule for spec.username and spec.databaseName.
var namePattern = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// validateNames refuses application role and database names that would make the
// agent alter a role or database it relies on (the CRD's rules, checked again).
func validateNames(user, database string) error {
	switch {
	case !namePattern.MatchString(user):
		return fmt.Errorf("the application user %q is not a lowercase PostgreSQL identifier", user)
	case !namePattern.MatchString(database):
		return fmt.Errorf("the application database %q is not a lowercase PostgreSQL identifier", database)
	case user == "postgres" || user == agentapi.ReplicationUser || user == agentapi.MonitorUser || strings.HasPrefix(user, "pg_"):
		return fmt.Errorf("the application user may not be %q: it is reserved", user)
	case database == "postgres" || database == "template0" || database == "template1" || strings.HasPrefix(database, "pg_"):
		return fmt.Errorf("the application database may not be %q: it is reserved", database)
	}
	return nil
}

// ensureMonitorRole creates the monitoring role: pg_monitor, the checkpoint
// function the status reads, the configuration file's settings, no password (it logs in only by peer
// authentication over the private socket), at most 5 connections.
func ensureMonitorRole(ctx context.Context, conn *pgx.Conn) error {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)", agentapi.MonitorUser).Scan(&exists); err != nil {
		return err
	}
	verb := "ALTER"
	if !exists {
		verb = "CREATE"
	}
	q := postgres.QuoteIdentifier(agentapi.MonitorUser)
	for _, stmt := range []string{
		verb + " ROLE " + q + " WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 5 PASSWORD NULL",
		"GRANT pg_monitor TO " + q,
		"GRANT EXECUTE ON FUNCTION pg_catalog.pg_control_checkpoint() TO " + q,
		// Settings PostgreSQL refused (an invalid value of spec.postgresql).
		"GRANT SELECT ON pg_catalog.pg_file_settings TO " + q,
		"GRANT EXECUTE ON FUNCTION pg_catalog.pg_show_all_file_settings() TO " + q,
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("monitoring role: %w", err)
		}
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
