// Reporting: what the agent answers on its status endpoint.

package instance

import (
	"context"
	"strconv"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/jackc/pgx/v5"
)

// status queries PostgreSQL for the status endpoint.
func (a *Agent) status(ctx context.Context) *agentapi.Status {
	rt := a.view()
	st := &agentapi.Status{Protocol: agentapi.ProtocolVersion, Pod: a.cfg.PodName, BinaryVersion: a.binaryMajor, Bootstrapped: rt.Bootstrapped}
	st.State, st.Message = rt.State, rt.Message
	st.Restoring = a.restoreInProgress()
	st.Recovery = a.recoveryReport()
	v := a.lease.view()
	st.Target, st.HoldsLease, st.Fenced, st.LeaseError = v.Target, v.Held, rt.Fenced, v.LastErr
	if !rt.Primary {
		st.Following = rt.Following
	}
	if a.hasData() {
		st.SystemIdentifier, _ = postgres.ReadSystemID(a.cfg.PGData)
		st.DataVersion, _ = postgres.ReadDataMajor(a.cfg.PGData)
	}
	if rt.Exited {
		st.Error = "PostgreSQL is not running (" + string(st.State) + ")"
		return st
	}
	st.Ready = a.readyNow()
	conn, err := a.connectMonitor(ctx, "postgres")
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
	a.configStatus(ctx, conn, st)
	if st.InRecovery {
		st.Role = agentapi.RoleReplica
		err = conn.QueryRow(ctx, `SELECT coalesce(pg_last_wal_receive_lsn()::text, ''), coalesce(pg_last_wal_replay_lsn()::text, ''),
			coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint,
			coalesce((SELECT status FROM pg_stat_wal_receiver LIMIT 1), '')`).
			Scan(&st.ReceiveLSN, &st.ReplayLSN, &st.ReplayLagBytes, &st.WALReceiverStatus)
		if err != nil {
			st.Error = "querying recovery: " + err.Error()
		}
		st.CurrentLSN = st.ReplayLSN
		st.WALMissing = st.WALReceiverStatus != "streaming" && a.walMissing()
		st.Diverged = st.WALReceiverStatus != "streaming" && a.diverged()
		return st
	}
	st.Role = agentapi.RolePrimary
	st.Archive = a.archiveStatus(ctx, conn)
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
		var r agentapi.ReplicaStatus
		if err := rows.Scan(&r.ApplicationName, &r.State, &r.SyncState, &r.SentLSN, &r.ReplayLSN, &r.LagBytes); err != nil {
			st.Error = "reading replication: " + err.Error()
			break
		}
		st.Replicas = append(st.Replicas, r)
	}
	rows.Close()
	if st.Slots, err = listSlots(ctx, conn); err != nil {
		st.Error = "querying replication slots: " + err.Error()
	}
	if st.OldestWALLSN, st.WALSegmentSize, err = oldestWAL(ctx, conn); err != nil {
		st.Error = "querying the WAL directory: " + err.Error()
	}
	if err := a.writeCheck(ctx, conn); err != nil {
		st.WriteError = err.Error()
	} else {
		st.Writable = true
	}
	return st
}

// writeCheck commits a transaction that has a transaction ID: its commit record
// is written and flushed (and, with synchronous replication, acknowledged), which
// proves that the primary accepts writes, without any table someone else could
// replace with one that runs code.
func (a *Agent) writeCheck(ctx context.Context, conn *pgx.Conn) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck
	if _, err := tx.Exec(ctx, "SET LOCAL statement_timeout = '2s'"); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "SELECT pg_catalog.pg_current_xact_id()"); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
