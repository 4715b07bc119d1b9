package instance

import (
	"context"
	"sync"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/jackc/pgx/v5"
)

// probeInterval is how often the probe loop reads PostgreSQL's state; a reading
// older than probeStaleAfter counts as no answer.
const (
	probeInterval   = 500 * time.Millisecond
	probeStaleAfter = 3 * time.Second
)

// observation is what the probe loop last read from PostgreSQL. The kubelet's
// probes are answered from it: a probe request never opens a backend, however
// many arrive.
type observation struct {
	At time.Time
	// OK: PostgreSQL answered.
	OK         bool
	InRecovery bool
	// Receiver is pg_stat_wal_receiver's status ("" without a WAL receiver).
	Receiver string
	// ReplayLagBytes is how far replay is behind the primary's end of WAL as
	// the standby last heard it: the later of what the primary reported with its
	// last message (pg_stat_wal_receiver.latest_end_lsn, the primary's flushed
	// end of WAL when it sent) and what was received, minus what was replayed.
	// A standby whose incoming stream is slow thus counts the WAL still on its
	// way, not only the WAL it has but did not replay yet.
	ReplayLagBytes int64
	// WALPosition is pg_current_wal_lsn() on a primary ("" in recovery).
	WALPosition string
}

// probeCache holds the last observation.
type probeCache struct {
	mu  sync.Mutex
	obs observation
}

func (c *probeCache) set(o observation) {
	c.mu.Lock()
	c.obs = o
	c.mu.Unlock()
}

func (c *probeCache) get() observation {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.obs
}

// readinessInput is everything the readiness verdict depends on.
type readinessInput struct {
	Now time.Time
	Obs observation
	// Exited: no postgres process runs. SetUp: a primary's roles and database
	// are in place (always true on a standby). Primary: it runs as the primary.
	Exited, SetUp, Primary bool
	Pod                    string
	Lease                  leaseView
	// SinceRenew is the time since this instance last renewed the Lease
	// (Renewed false: it holds no renewal).
	SinceRenew  time.Duration
	Renewed     bool
	RetryPeriod time.Duration
	MaxLagBytes int64
}

// readiness is the readiness verdict with its reason: PostgreSQL answered
// recently; a primary has its roles in place and holds the Lease as the target,
// renewed within two and a half retry periods when it fences (it leaves the
// Services well before it fences itself); a standby streams with its replay
// within MaxLagBytes of the primary's end of WAL as last reported to it, so
// that the read-only Service never serves data further behind the primary
// (rule 5 of the README's High availability section).
func readiness(in readinessInput) (bool, string) {
	switch {
	case in.Exited:
		return false, "PostgreSQL is not running"
	case !in.SetUp:
		return false, "roles and database are not set up yet"
	case !in.Obs.OK || in.Now.Sub(in.Obs.At) > probeStaleAfter:
		return false, "PostgreSQL has not answered recently"
	}
	if in.Primary {
		switch {
		case !in.Lease.Held || in.Lease.Target != in.Pod:
			return false, "does not hold the primary Lease as the target"
		case in.Lease.Fencing && (!in.Renewed || in.SinceRenew > 2*in.RetryPeriod+in.RetryPeriod/2):
			return false, "has not renewed the primary Lease recently"
		case in.Obs.InRecovery:
			return false, "still in recovery"
		}
		return true, "primary"
	}
	switch {
	case !in.Obs.InRecovery:
		return false, "not in recovery, yet not the primary"
	case in.Obs.Receiver != "streaming":
		return false, "not streaming from the primary"
	case in.Obs.ReplayLagBytes > in.MaxLagBytes:
		return false, "replay lags behind the primary by more than maxReplicationLag"
	}
	return true, "streaming standby"
}

// readyNow is the current readiness verdict.
func (a *Agent) readyNow() bool {
	since, renewed := a.lease.sinceRenew()
	rt := a.view()
	ok, _ := readiness(readinessInput{
		Now: time.Now(), Obs: a.probes.get(),
		Exited: rt.Exited, SetUp: rt.SetUp, Primary: rt.Primary,
		Pod: a.cfg.PodName, Lease: a.lease.view(), SinceRenew: since, Renewed: renewed,
		RetryPeriod: a.cfg.RetryPeriod, MaxLagBytes: a.cfg.MaxLagBytes,
	})
	return ok
}

// probeQuery reads the observation. On a standby the lag is measured against
// the later of the received position and the primary's end of WAL carried by
// its last message (latest_end_lsn), so WAL queued on a slow link counts.
const probeQuery = `SELECT pg_catalog.pg_is_in_recovery(),
	coalesce((SELECT status FROM pg_catalog.pg_stat_wal_receiver LIMIT 1), ''),
	CASE WHEN pg_catalog.pg_is_in_recovery() THEN coalesce(pg_catalog.pg_wal_lsn_diff(
		greatest(pg_catalog.pg_last_wal_receive_lsn(), (SELECT latest_end_lsn FROM pg_catalog.pg_stat_wal_receiver LIMIT 1)),
		pg_catalog.pg_last_wal_replay_lsn()), 0)::bigint ELSE 0 END,
	CASE WHEN pg_catalog.pg_is_in_recovery() THEN '' ELSE pg_catalog.pg_current_wal_lsn()::text END`

// primaryPosition is the primary's WAL position as of the last probe ("" when
// PostgreSQL is in recovery or did not answer recently): the Lease keeper
// records it at each renewal.
func (a *Agent) primaryPosition() string {
	o := a.probes.get()
	if !o.OK || o.InRecovery || time.Since(o.At) > probeStaleAfter || !a.view().Primary {
		return ""
	}
	return o.WALPosition
}

// probeLoop keeps the probe cache current with one connection (re-opened when it
// breaks) as the monitoring role.
func (a *Agent) probeLoop(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for {
		if a.view().Exited {
			if conn != nil {
				conn.Close(context.Background())
				conn = nil
			}
			a.probes.set(observation{At: time.Now()})
		} else {
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if conn != nil && conn.Config().User != agentapi.MonitorUser && a.view().SetUp {
				// Connected as the superuser before the monitoring role
				// existed: switch to it.
				conn.Close(context.Background())
				conn = nil
			}
			if conn == nil {
				conn, _ = a.connectMonitor(qctx, "postgres")
			}
			o := observation{At: time.Now()}
			if conn != nil {
				err := conn.QueryRow(qctx, probeQuery).Scan(&o.InRecovery, &o.Receiver, &o.ReplayLagBytes, &o.WALPosition)
				if err == nil {
					o.OK = true
				} else {
					conn.Close(context.Background())
					conn = nil
				}
			}
			cancel()
			a.probes.set(o)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// connectMonitor connects as the monitoring role, or as the superuser while that
// role does not exist yet (a new primary before its roles are set up, a standby
// cloned before they were).
func (a *Agent) connectMonitor(ctx context.Context, database string) (*pgx.Conn, error) {
	conn, err := a.connectAs(ctx, agentapi.MonitorUser, database)
	if err == nil {
		return conn, nil
	}
	return a.connectAs(ctx, "postgres", database)
}
