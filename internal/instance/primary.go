// Promotion and the set-up of a primary.

package instance

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
)

// setUpPrimary is the setup worker of a lifetime (gen) that runs as the target
// primary: it promotes PostgreSQL when it is in recovery, then puts the roles
// and the application database in place, retrying until ctx ends. It changes no
// running state itself: it reports to the supervisor.
func (a *Agent) setUpPrimary(ctx context.Context, gen int64) {
	for delay := 200 * time.Millisecond; ; delay = min(delay*2, 2*time.Second) {
		if a.view().Exited || ctx.Err() != nil {
			return
		}
		err := a.promoteIfPending(ctx, gen)
		if err == nil {
			err = a.ensureRoles(ctx)
		}
		if err == nil {
			a.log.Info("application role, database and replication role are in place")
			a.tell(ctx, runMsg{gen: gen, ev: evSetUp})
			return
		}
		a.log.Info("waiting to set up roles", "reason", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// tell sends an event to the supervisor, unless ctx ends first.
func (a *Agent) tell(ctx context.Context, m runMsg) bool {
	select {
	case a.events <- m:
		return true
	case <-ctx.Done():
		return false
	}
}

// progress reports the setup worker's progress to the supervisor.
func (a *Agent) progress(ctx context.Context, gen int64, st agentapi.State, msg string) {
	a.tell(ctx, runMsg{gen: gen, state: st, message: msg})
}

// promoteIfPending promotes the target primary while PostgreSQL is in recovery
// (a standby that became the target, a primary rebuilt from a standby) to a new
// timeline, only while it holds the Lease and, after a switchover, only once it
// has received WAL past the old primary's final position. A checkpoint follows,
// so that the new timeline is recorded and the old primary can rewind onto it.
func (a *Agent) promoteIfPending(ctx context.Context, gen int64) error {
	ctx, cancel := context.WithTimeout(ctx, 70*time.Second)
	defer cancel()
	conn, err := a.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	var received string
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_receive_lsn()::text, '')").Scan(&inRecovery, &received); err != nil {
		return err
	}
	if !inRecovery {
		recorded, err := a.recordRecovery(ctx, conn)
		if err != nil {
			return err // retried: the recovery's outcome is recorded before the set-up ends
		}
		if recorded {
			a.progress(ctx, gen, agentapi.StateRunning, "PostgreSQL is running (recovered to the target and promoted)")
		}
		if !a.view().Primary {
			a.tell(ctx, runMsg{gen: gen, ev: evPromoted})
		}
		return nil
	}
	if err := a.holdPromotion(ctx, gen, conn); err != nil {
		return err
	}
	if v := a.lease.view(); !v.Held || v.Target != a.cfg.PodName {
		return errors.New("not promoting: this instance does not hold the primary Lease as the target")
	}
	final, change := a.lease.acquired()
	if final == "" && a.lease.view().Change == agentapi.ChangeSwitchover {
		// The old primary did not stop cleanly (it was fenced or killed during
		// the switchover): WAL it acknowledged may be missing here. The
		// operator aborts the switchover (the old primary resumes) or turns it
		// into a failover, which measures this standby's WAL first (rule 1).
		a.progress(ctx, gen, agentapi.StatePromoting, "not promoting: the old primary released no final WAL position; waiting for the operator to abort the switchover or fail over")
		return errors.New("not promoting in a switchover without the old primary's final WAL position")
	}
	if final != "" && change != agentapi.ChangeFailover {
		f, err1 := agentapi.ParseLSN(final)
		r, err2 := agentapi.ParseLSN(received)
		if err1 != nil || err2 != nil || r <= f {
			a.progress(ctx, gen, agentapi.StatePromoting, fmt.Sprintf("waiting to receive the old primary's WAL up to its final position %s (received %s)", final, orString(received, "nothing")))
			return fmt.Errorf("not promoting before WAL past %s is received (received %q)", final, received)
		}
	}
	// Rule 2: synchronous replication is a property of whoever is primary.
	// The primary's configuration (synchronous_standby_names for the
	// instances and quorum on the Lease) is written and loaded before the
	// promotion, so that the first commit the new primary accepts already
	// waits for its quorum; a standby ignores the setting until then.
	if err := a.loadPrimaryConfig(ctx, gen, conn); err != nil {
		return fmt.Errorf("not promoting: %w", err)
	}
	if v := a.lease.view(); !v.Held || v.Target != a.cfg.PodName {
		return errors.New("not promoting: the Lease or the target changed while the configuration was loaded")
	}
	a.progress(ctx, gen, agentapi.StatePromoting, "promoting to primary")
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(true, 60)").Scan(&ok); err != nil {
		return fmt.Errorf("promoting: %w", err)
	}
	if !ok {
		return errors.New("promotion did not complete within 60s")
	}
	a.tell(ctx, runMsg{gen: gen, ev: evPromoted})
	if _, err := a.recordRecovery(ctx, conn); err != nil {
		a.log.Warn("recording the recovery", "error", err)
	}
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		a.log.Warn("checkpoint after the promotion", "error", err)
	}
	a.progress(ctx, gen, agentapi.StateRunning, "PostgreSQL is running (promoted)")
	a.log.Info("promoted to primary on a new timeline")
	return nil
}
