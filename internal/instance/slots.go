// The primary's operator-managed physical replication slots.

package instance

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/jackc/pgx/v5"
)

// listSlots returns the operator-managed physical replication slots.
func listSlots(ctx context.Context, conn *pgx.Conn) ([]agentapi.SlotStatus, error) {
	rows, err := conn.Query(ctx, `SELECT slot_name::text, active, coalesce(wal_status, ''), coalesce(restart_lsn::text, '')
		FROM pg_replication_slots WHERE slot_type = 'physical' AND starts_with(slot_name::text, $1) ORDER BY slot_name`, agentapi.SlotPrefix)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (agentapi.SlotStatus, error) {
		var s agentapi.SlotStatus
		err := r.Scan(&s.Name, &s.Active, &s.WALStatus, &s.RestartLSN)
		return s, err
	})
}

// oldestWAL returns the first LSN of the oldest WAL segment in pg_wal and the
// segment size.
func oldestWAL(ctx context.Context, conn *pgx.Conn) (string, uint64, error) {
	var name string
	var segSize int64
	if err := conn.QueryRow(ctx, `SELECT coalesce(min(name), ''), pg_size_bytes(current_setting('wal_segment_size'))
		FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'`).Scan(&name, &segSize); err != nil {
		return "", 0, err
	}
	if name == "" {
		return "", uint64(segSize), nil
	}
	l, err := segmentStartLSN(name, uint64(segSize))
	if err != nil {
		return "", 0, err
	}
	return l.String(), uint64(segSize), nil
}

// syncSlots makes the operator-managed slots exactly names: missing ones are
// created (reserving WAL at once), inactive ones not in names are dropped, and an
// inactive slot that lost its WAL (max_slot_wal_keep_size) is recreated so that
// the re-cloned standby can use it.
func (a *Agent) syncSlots(ctx context.Context, names []string) ([]agentapi.SlotStatus, error) {
	for _, n := range names {
		if !slotNamePattern.MatchString(n) {
			return nil, fmt.Errorf("invalid slot name %q", n)
		}
	}
	conn, err := a.connect(ctx, "postgres")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return nil, err
	}
	if inRecovery {
		return nil, errors.New("slots are managed on the primary only")
	}
	have, err := listSlots(ctx, conn)
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	present := map[string]bool{}
	for _, s := range have {
		switch {
		case s.Active:
			// In use: keep it (an unwanted one is dropped once its standby is gone).
			present[s.Name] = true
		case !want[s.Name]:
			if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", s.Name); err != nil {
				return nil, fmt.Errorf("dropping slot %s: %w", s.Name, err)
			}
			a.log.Info("dropped replication slot", "slot", s.Name)
		case s.WALStatus == "lost":
			if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", s.Name); err != nil {
				return nil, fmt.Errorf("dropping lost slot %s: %w", s.Name, err)
			}
			a.log.Info("dropped a replication slot whose WAL was removed; recreating it", "slot", s.Name)
		default:
			present[s.Name] = true
		}
	}
	for _, n := range names {
		if present[n] {
			continue
		}
		present[n] = true
		if _, err := conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", n); err != nil {
			return nil, fmt.Errorf("creating slot %s: %w", n, err)
		}
		a.log.Info("created replication slot", "slot", n)
	}
	return listSlots(ctx, conn)
}

var slotNamePattern = regexp.MustCompile(`^` + agentapi.SlotPrefix + `[a-z0-9_]{1,58}$`)
