// PostgreSQL's configuration: the operator's settings, the user's
// spec.postgresql, synchronous_standby_names, reloads and what PostgreSQL
// says of them.

package instance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/jackc/pgx/v5"
)

// configWritten is what writeConfig wrote, for the supervisor to publish.
type configWritten struct {
	// SyncNames is the synchronous_standby_names written ("" on a standby).
	SyncNames string
	// Hash is the user configuration's hash ("" when refused), Error why it
	// was refused.
	Hash, Error string
}

// writeOwnConfig rewrites the configuration files for the role given and the
// upstream followed now, and publishes what it wrote (supervisor only).
func (a *Agent) writeOwnConfig(primary bool) error {
	w, err := a.writeConfig(primary, a.view().Following)
	a.publish(func(v *runtimeView) {
		v.ConfigError = w.Error
		if err == nil {
			v.SyncNames, v.ConfigHash = w.SyncNames, w.Hash
		}
	})
	return err
}

// writeConfig rewrites the configuration the agent owns, at every start: as
// the primary, or as a standby following the pod given.
func (a *Agent) writeConfig(primary bool, following string) (configWritten, error) {
	a.configMu.Lock()
	defer a.configMu.Unlock()
	var w configWritten
	user, userHash, err := a.readUserConfig()
	if err != nil {
		// A configuration the agent refuses is not applied: the instance
		// keeps (or starts with) the operator's settings alone, and says so.
		w.Error = err.Error()
		user, userHash = agentapi.UserConfig{}, ""
	}
	var quoteErr error
	q := func(v string) string {
		quoted, err := postgres.QuoteConfString(v)
		if err != nil && quoteErr == nil {
			quoteErr = err
		}
		return quoted
	}
	conf := append([]string{
		"# Written by the postgres-operator instance agent at every start; do not edit.",
	}, userConfLines(user, q)...)
	conf = append(conf,
		"listen_addresses = "+q(a.cfg.ListenAddresses),
		"port = "+strconv.Itoa(a.cfg.Port),
		"unix_socket_directories = "+q(strings.Join(a.socketDirs(), ",")),
		"unix_socket_permissions = 0700",
		"wal_level = replica",
		// pg_rewind needs hint bits in WAL when data checksums are off.
		"wal_log_hints = on",
		"hot_standby = on",
		"max_wal_senders = 10",
		"max_replication_slots = 10",
		// Every standby has a replication slot; wal_keep_size only covers a clone
		// made before its slot exists.
		"wal_keep_size = '64MB'",
		// A standby notices a vanished primary within 30s (default 60s).
		"wal_receiver_timeout = '30s'",
		// A primary's fast shutdown waits for its WAL senders to flush every
		// connected standby; one whose standby is cut off blocks until this
		// timeout: 15s (default 60s) keeps a demotion well within its bound,
		// so it completes cleanly and releases the Lease with its final
		// position (rule 1 needs it to judge the standbys).
		"wal_sender_timeout = '15s'",
		"password_encryption = 'scram-sha-256'",
		// Never log connection strings or statements with their parameters.
		"log_parameter_max_length = 0",
		"log_parameter_max_length_on_error = 0",
		"hba_file = "+q(filepath.Join(a.cfg.PGData, "pg_hba.conf")),
		"ident_file = "+q(filepath.Join(a.cfg.PGData, "pg_ident.conf")),
	)
	if a.cfg.MaxSlotWALKeepSize != "" {
		conf = append(conf, "max_slot_wal_keep_size = "+q(a.cfg.MaxSlotWALKeepSize))
	}
	conf = append(conf, a.archiveConfLines(q)...)
	conf = append(conf, a.recoveryConfLines(primary, q)...)
	if a.tlsEnabled() {
		conf = append(conf, "ssl = on",
			"ssl_cert_file = "+q(a.serverCertPath()),
			"ssl_key_file = "+q(a.serverKeyPath()),
			"ssl_min_protocol_version = 'TLSv1.2'")
	}
	if primary {
		w.SyncNames = synchronousStandbyNames(a.cfg.PodName, a.lease.view())
		if w.SyncNames != "" {
			conf = append(conf, "synchronous_standby_names = "+q(w.SyncNames))
		}
	}
	if !primary && following != "" {
		host, port := a.peerAddress(following)
		conf = append(conf, "primary_slot_name = "+q(agentapi.SlotName(a.cfg.PodName)))
		// libpq reads the password from the passfile: none is in the configuration.
		conninfo := strings.Join(append([]string{
			"host=" + postgres.ConninfoValue(host),
			"port=" + strconv.Itoa(port),
			"user=" + agentapi.ReplicationUser,
			"passfile=" + postgres.ConninfoValue(a.passfile()),
			"application_name=" + postgres.ConninfoValue(a.cfg.PodName),
			// A restarted primary comes back on a new pod IP: give up on the old one
			// quickly instead of waiting out TCP's connect retries (~2 minutes).
			"connect_timeout=5",
			"keepalives=1",
			"keepalives_idle=10",
			"keepalives_interval=5",
			"keepalives_count=3",
		}, a.sslConninfo()...), " ")
		conf = append(conf, "primary_conninfo = "+q(conninfo))
	}
	if quoteErr != nil {
		return w, quoteErr
	}
	if err := a.writeFile(filepath.Join(a.cfg.PGData, operatorConfFile), strings.Join(conf, "\n")+"\n", 0o600); err != nil {
		return w, err
	}

	mainConf := filepath.Join(a.cfg.PGData, "postgresql.conf")
	b, err := os.ReadFile(mainConf)
	if err != nil {
		return w, fmt.Errorf("reading postgresql.conf: %w", err)
	}
	const include = "include_if_exists = '" + operatorConfFile + "'"
	if !strings.Contains(string(b), include) {
		if err := a.writeFile(mainConf, string(b)+"\n"+include+"\n", 0o600); err != nil {
			return w, err
		}
	}

	// Network connections: TLS only (hostssl; a connection without TLS matches
	// no line and is refused), unless the Database allows plain ones.
	host := "host   "
	if a.tlsEnabled() && !a.cfg.TLSOptional {
		host = "hostssl"
	}
	hbaLines := []string{
		"# Written by the postgres-operator instance agent at every start; do not edit.",
		"# TYPE  DATABASE     USER               ADDRESS  METHOD",
		"local   all          postgres                    peer map=operator",
		"local   postgres     " + agentapi.MonitorUser + "  peer map=operator",
		"local   all          " + agentapi.MonitorUser + "  reject",
		"local   all          all                         scram-sha-256",
		host + " replication  " + agentapi.ReplicationUser + "  all      scram-sha-256",
		// pg_rewind reads the new primary's files through the postgres database.
		host + " postgres     " + agentapi.ReplicationUser + "  all      scram-sha-256",
		"host    all          " + agentapi.ReplicationUser + "  all      reject",
		"host    all          postgres           all      reject",
		"host    all          " + agentapi.MonitorUser + "  all      reject",
	}
	if len(user.PgHBA) > 0 {
		hbaLines = append(append(hbaLines, "# spec.postgresql.pgHBA of the Database"), user.PgHBA...)
	}
	hba := strings.Join(append(hbaLines,
		host+" all          all                all      scram-sha-256",
	), "\n") + "\n"
	if err := a.writeFile(filepath.Join(a.cfg.PGData, "pg_hba.conf"), hba, 0o600); err != nil {
		return w, err
	}
	ident := "# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\noperator  postgres  postgres\noperator  root  postgres\n" +
		"operator  postgres  " + agentapi.MonitorUser + "\noperator  root  " + agentapi.MonitorUser + "\n"
	if err := a.writeFile(filepath.Join(a.cfg.PGData, "pg_ident.conf"), ident, 0o600); err != nil {
		return w, err
	}

	w.Hash = userHash
	if primary {
		// A primary whose data is a standby's keeps its standby.signal until it
		// is promoted.
		return w, nil
	}
	return w, a.writeFile(filepath.Join(a.cfg.PGData, "standby.signal"), "", 0o600)
}

// synchronousStandbyNames is the quorum a primary waits for: ANY n of the other
// instances (standbys report their pod name as application_name), or "" for
// asynchronous replication.
func synchronousStandbyNames(me string, v leaseView) string {
	n := min(v.Synchronous, v.Instances-1)
	if n <= 0 {
		return ""
	}
	i := strings.LastIndex(me, "-")
	if i < 0 {
		return ""
	}
	var names []string
	for o := 0; o < v.Instances; o++ {
		if pod := fmt.Sprintf("%s-%d", me[:i], o); pod != me {
			names = append(names, `"`+pod+`"`)
		}
	}
	return fmt.Sprintf("ANY %d (%s)", n, strings.Join(names, ", "))
}

// operatorConfFile is the file in PGDATA holding the settings the agent owns;
// postgresql.conf includes it last.
const operatorConfFile = "postgresql.operator.conf"

// reloadAsync makes PostgreSQL re-read its configuration without holding up
// the supervisor: a reload waits for a connection (up to 5 s), and the fence
// must be checked meanwhile. A failed reload is retried by a configuration
// rewrite for the current role a few seconds later.
func (a *Agent) reloadAsync(ctx context.Context, what string, kv ...any) {
	go func() {
		if err := a.reload(ctx); err != nil {
			a.log.Warn("reloading the configuration; will rewrite and reload again", "for", what, "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
				select {
				case a.configChanged <- struct{}{}:
				default: // one is pending already
				}
			}
			return
		}
		a.log.Info(what, kv...)
	}()
}

// applyUserConfig rewrites the configuration files for the current role and
// reloads PostgreSQL (supervisor only).
func (a *Agent) applyUserConfig(ctx context.Context, primary bool) {
	if err := a.writeOwnConfig(primary); err != nil {
		a.log.Warn("applying the changed configuration", "error", err)
		return
	}
	a.reloadAsync(ctx, "configuration changed: applied by a reload", "hash", a.view().ConfigHash)
}

// reload makes PostgreSQL re-read its configuration.
func (a *Agent) reload(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := a.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "SELECT pg_reload_conf()")
	return err
}

// loadPrimaryConfig writes the primary's configuration, reloads it and waits
// until a new session sees its synchronous_standby_names (the postmaster has
// loaded it; the backends that commit start after the promotion).
func (a *Agent) loadPrimaryConfig(ctx context.Context, gen int64, conn *pgx.Conn) error {
	// The supervisor writes it (it owns what was written).
	reply := make(chan error, 1)
	if !a.tell(ctx, runMsg{gen: gen, reply: reply}) {
		return ctx.Err()
	}
	select {
	case err := <-reply:
		if err != nil {
			return fmt.Errorf("writing the primary configuration: %w", err)
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	want := a.view().SyncNames
	if _, err := conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("reloading the primary configuration: %w", err)
	}
	for delay := 20 * time.Millisecond; ; delay = min(2*delay, 500*time.Millisecond) {
		c, err := a.connect(ctx, "postgres")
		if err != nil {
			return err
		}
		var have string
		err = c.QueryRow(ctx, "SELECT current_setting('synchronous_standby_names')").Scan(&have)
		c.Close(context.Background())
		if err != nil {
			return err
		}
		if have == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("synchronous_standby_names is %q, not %q, after the reload: %w", have, want, ctx.Err())
		case <-time.After(delay):
		}
	}
}

// configStatus reports which user configuration the instance runs, the
// settings waiting for a restart and the lines PostgreSQL refused.
func (a *Agent) configStatus(ctx context.Context, conn *pgx.Conn, st *agentapi.Status) {
	rt := a.view()
	st.ConfigHash, st.ConfigError = rt.ConfigHash, rt.ConfigError
	rows, err := conn.Query(ctx, `SELECT name FROM pg_catalog.pg_settings WHERE pending_restart ORDER BY name`)
	if err == nil {
		st.PendingRestart, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		st.ConfigError = strings.TrimSpace(st.ConfigError + " reading pending_restart: " + err.Error())
	}
	// A setting that waits for a restart is "not applied" too: only the
	// others are errors (an invalid value never becomes pending).
	rows, err = conn.Query(ctx, `SELECT coalesce(f.name, '?') || ' (line ' || coalesce(f.sourceline, 0) || '): ' || f.error
		FROM pg_catalog.pg_file_settings f
		WHERE f.error IS NOT NULL
		  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_settings s WHERE s.name = f.name AND s.pending_restart)
		ORDER BY f.sourcefile, f.sourceline`)
	if err == nil {
		st.ConfigErrors, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		st.ConfigError = strings.TrimSpace(st.ConfigError + " reading pg_file_settings: " + err.Error())
	}
}
