// pg_rewind of a former primary onto the new primary's timeline.

package instance

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/jackc/pgx/v5"
)

// rewind makes a former primary's data directory a standby of target: pg_rewind
// (which first completes crash recovery if the primary did not stop cleanly)
// brings it onto target's timeline; then it starts in recovery. It retries while
// the new primary is still starting.
func (a *Agent) rewind(ctx context.Context, target string) error {
	host, port := a.peerAddress(target)
	params := []string{
		"host=" + postgres.ConninfoValue(host),
		"port=" + strconv.Itoa(port),
		"user=" + agentapi.ReplicationUser,
		"dbname=postgres",
		"passfile=" + postgres.ConninfoValue(a.passfile()),
		"connect_timeout=5",
	}
	conninfo := strings.Join(append(slices.Clone(params), a.sslConninfo()...), " ")
	pgxConninfo := strings.Join(append(slices.Clone(params), a.sslVerify()...), " ")
	var err error
	for attempt := 1; attempt <= 5; {
		if v := a.lease.view(); v.Target != target {
			return fmt.Errorf("the target primary changed from %s to %q before the rewind", target, v.Target)
		}
		// Only a source that is primary on a later timeline, recorded by its
		// post-promotion checkpoint: rewinding from a target that has not promoted
		// yet finds "the same timeline", rewinds nothing, and leaves this
		// instance ahead of the new primary's fork point.
		if why := a.rewindSourceNotReady(ctx, pgxConninfo); why != "" {
			a.setState(agentapi.StateRewinding, fmt.Sprintf("waiting for %s to be promoted before rewinding: %s", target, why))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
			continue
		}
		a.setState(agentapi.StateRewinding, fmt.Sprintf("rewinding the former primary onto the timeline of %s (attempt %d)", target, attempt))
		a.log.Info("rewinding the former primary", "source", target, "attempt", attempt)
		if err = a.writeOwnConfig(true); err != nil {
			return err
		}
		cmd := a.command(ctx, filepath.Join(a.bins.Dir, "pg_rewind"), "--target-pgdata="+a.cfg.PGData, "--source-server="+conninfo)
		if err = cmd.Run(); err == nil {
			if err := a.writeFile(filepath.Join(a.cfg.PGData, "standby.signal"), "", 0o600); err != nil {
				return err
			}
			a.log.Info("former primary rewound; starting as a standby", "primary", target)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		a.log.Warn("pg_rewind failed", "error", err, "attempt", attempt)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt) * time.Second):
		}
		attempt++
	}
	return fmt.Errorf("pg_rewind from %s: %w", target, err)
}

// rewindSourceNotReady explains why the rewind source is not yet a primary on a
// later timeline than this data directory's ("" when it is).
func (a *Agent) rewindSourceNotReady(ctx context.Context, conninfo string) string {
	local, err := a.localTimeline(ctx)
	if err != nil {
		return err.Error()
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, conninfo)
	if err != nil {
		return "connecting: " + err.Error()
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	var tl int64
	if err := conn.QueryRow(cctx, "SELECT pg_is_in_recovery(), (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())").Scan(&inRecovery, &tl); err != nil {
		return "querying: " + err.Error()
	}
	switch {
	case inRecovery:
		return "it is still in recovery"
	case tl <= local:
		return fmt.Sprintf("its checkpoint is on timeline %d, this data directory's on %d", tl, local)
	}
	return ""
}
