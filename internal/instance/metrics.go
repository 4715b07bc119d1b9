package instance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsNamespace prefixes every series the agent exports.
const metricsNamespace = "postgres"

// metricsScrapeTimeout bounds one scrape's queries: a PostgreSQL that does not
// answer in time reports postgres_up 0 instead of holding the scrape.
const metricsScrapeTimeout = 5 * time.Second

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, "", name), help, labels, nil)
}

// The agent's series. Prometheus adds the pod and namespace (and the PodMonitor
// the Database) to each.
var (
	descUp      = desc("up", "1 when PostgreSQL answered this scrape's queries, else 0.")
	descPrimary = desc("is_primary",
		"1 on the primary (not in recovery), 0 on a standby.")
	descInfo = desc("info", "Always 1; labels: server version and role (primary or standby).",
		"version", "role")
	descTimeline  = desc("timeline_id", "Timeline of the last checkpoint (pg_control_checkpoint).")
	descStartTime = desc("start_time_seconds",
		"When the postmaster started, in seconds since the epoch.")
	descConnections = desc("connections",
		"Client backends by state (active, idle, idle in transaction, …).", "state")
	descMaxConnections = desc("max_connections", "The max_connections setting.")
	descCommits        = desc("xact_commit_total", "Transactions committed, per database.", "datname")
	descRollbacks      = desc("xact_rollback_total", "Transactions rolled back, per database.", "datname")
	descDBSize         = desc("database_size_bytes", "Size of each database that accepts connections.", "datname")
	descWAL            = desc("wal_bytes_total",
		"WAL position in bytes: written on a primary, replayed on a standby; rate() is the WAL rate.")
	descCheckpointsTimed = desc("checkpoints_timed_total",
		"Scheduled checkpoints (checkpoint_timeout).")
	descCheckpointsReq = desc("checkpoints_requested_total",
		"Requested checkpoints (max_wal_size, CHECKPOINT, backups): many mean max_wal_size is too small.")
	descOldestXact = desc("oldest_transaction_age_seconds",
		"Age of the oldest open transaction of any client backend (0 when none is open).")
	descOldestXID = desc("oldest_xid_age",
		"Largest age(datfrozenxid) of any database: transaction IDs left before wraparound is 2^31 minus this.")
	descReplLagBytes = desc("replication_lag_bytes",
		"On the primary: WAL bytes a standby has not replayed yet, per standby (application_name is its pod).",
		"application_name")
	descReplLagSeconds = desc("replication_lag_seconds",
		"On the primary: a standby's replay_lag (time for committed WAL to be replayed there).",
		"application_name")
	descReplSync = desc("replication_sync",
		"On the primary: 1 when a standby is synchronous or a quorum member (sync_state sync or quorum).",
		"application_name")
	descSyncRequired = desc("synchronous_standbys_required",
		"On the primary: the standbys each commit waits for (the quorum of synchronous_standby_names; 0 with asynchronous replication).")
	descSyncConnected = desc("synchronous_standbys_connected",
		"On the primary: streaming standbys that count toward that quorum (sync_state sync or quorum). Below synchronous_standbys_required, commits wait.")
	descStandbyLagBytes = desc("standby_replay_lag_bytes",
		"On a standby: WAL received but not replayed yet.")
	descStandbyDelay = desc("standby_replay_delay_seconds",
		"On a standby: age of the last replayed transaction while replay is behind what was received (0 when caught up).")
	descStandbyStreaming = desc("standby_streaming",
		"On a standby: 1 while its WAL receiver streams from the primary.")
	descSlotRetained = desc("replication_slot_retained_wal_bytes",
		"WAL kept for a replication slot (from its restart_lsn to the current position).", "slot_name")
	descSlotActive = desc("replication_slot_active",
		"1 when a replication slot's consumer is connected.", "slot_name")
	descSlotKeepMax = desc("max_slot_wal_keep_size_bytes",
		"The max_slot_wal_keep_size setting in bytes (-1: unlimited): a slot retaining more is invalidated.")
	descVolumeSize  = desc("volume_size_bytes", "Size of the file system holding the data directory.")
	descVolumeAvail = desc("volume_available_bytes",
		"Bytes available to PostgreSQL on the file system holding the data directory.")
)

// metricsCollector reads PostgreSQL's state at each scrape, as the monitoring
// role (pg_monitor, never the superuser), over one connection it keeps open.
type metricsCollector struct {
	agent *Agent

	mu     sync.Mutex
	conn   *pgx.Conn
	errors prometheus.Counter
}

func newMetricsCollector(a *Agent) *metricsCollector {
	return &metricsCollector{agent: a, errors: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: metricsNamespace, Name: "scrape_errors_total",
		Help: "Scrapes whose PostgreSQL queries failed.",
	})}
}

func (c *metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descPrimary, descInfo, descTimeline, descStartTime,
		descConnections, descMaxConnections, descCommits, descRollbacks, descDBSize, descWAL,
		descCheckpointsTimed, descCheckpointsReq, descOldestXact, descOldestXID, descReplLagBytes,
		descReplLagSeconds, descReplSync, descSyncRequired, descSyncConnected, descStandbyLagBytes, descStandbyDelay, descStandbyStreaming,
		descSlotRetained, descSlotActive, descSlotKeepMax, descVolumeSize, descVolumeAvail} {
		ch <- d
	}
	c.errors.Describe(ch)
}

func (c *metricsCollector) Collect(ch chan<- prometheus.Metric) {
	c.collectVolume(ch)
	up := 0.0
	if !c.agent.view().Exited {
		ctx, cancel := context.WithTimeout(context.Background(), metricsScrapeTimeout)
		err := c.collectPostgres(ctx, ch)
		cancel()
		if err == nil {
			up = 1
		} else {
			c.errors.Inc()
			c.agent.log.Debug("metrics scrape failed", "error", err)
		}
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up)
	c.errors.Collect(ch)
}

// collectVolume reports the data volume's size and free space (statfs), whether
// or not PostgreSQL runs: a full disk is what stops it.
func (c *metricsCollector) collectVolume(ch chan<- prometheus.Metric) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(c.agent.cfg.PGData, &st); err != nil {
		return
	}
	bsize := float64(st.Bsize)
	ch <- prometheus.MustNewConstMetric(descVolumeSize, prometheus.GaugeValue, float64(st.Blocks)*bsize)
	ch <- prometheus.MustNewConstMetric(descVolumeAvail, prometheus.GaugeValue, float64(st.Bavail)*bsize)
}

// collectPostgres runs the scrape's queries on the kept connection, opening it
// (again) when needed. Series are sent only once every query has answered, so
// a failed scrape never reports half a state.
func (c *metricsCollector) collectPostgres(ctx context.Context, ch chan<- prometheus.Metric) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil && c.conn.Config().User != agentapi.MonitorUser && c.agent.view().SetUp {
		c.conn.Close(context.Background())
		c.conn = nil
	}
	if c.conn == nil {
		conn, err := c.agent.connectMonitor(ctx, "postgres")
		if err != nil {
			return fmt.Errorf("connecting: %w", err)
		}
		c.conn = conn
	}
	var out []prometheus.Metric
	err := scrapePostgres(ctx, c.conn, func(m prometheus.Metric) { out = append(out, m) })
	if err != nil {
		c.conn.Close(context.Background())
		c.conn = nil
		return err
	}
	for _, m := range out {
		ch <- m
	}
	return nil
}

func (c *metricsCollector) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.Close(context.Background())
		c.conn = nil
	}
}

// scrapePostgres runs the metric queries on conn and emits their series.
func scrapePostgres(ctx context.Context, conn *pgx.Conn, emit func(prometheus.Metric)) error {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		emit(prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...))
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		emit(prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...))
	}

	var (
		inRecovery             bool
		versionNum             int
		version                string
		timeline               int64
		start                  time.Time
		maxConn                int64
		walBytes, oldestXIDAge int64
		oldestXact, slotKeep   float64
		standbyLag             *int64
		standbyDelay           *float64
		receiver               *string
	)
	err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_is_in_recovery(),
		pg_catalog.current_setting('server_version_num')::int,
		pg_catalog.current_setting('server_version'),
		(SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())::bigint,
		pg_catalog.pg_postmaster_start_time(),
		pg_catalog.current_setting('max_connections')::bigint,
		pg_catalog.pg_wal_lsn_diff(CASE WHEN pg_catalog.pg_is_in_recovery()
			THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END, '0/0')::bigint,
		coalesce((SELECT max(pg_catalog.age(datfrozenxid)) FROM pg_catalog.pg_database), 0)::bigint,
		coalesce((SELECT extract(epoch FROM max(pg_catalog.clock_timestamp() - xact_start))
			FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend' AND xact_start IS NOT NULL), 0)::float8,
		pg_catalog.pg_size_bytes(pg_catalog.current_setting('max_slot_wal_keep_size'))::float8,
		pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(), pg_catalog.pg_last_wal_replay_lsn())::bigint,
		CASE WHEN pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() THEN 0
			ELSE extract(epoch FROM pg_catalog.clock_timestamp() - pg_catalog.pg_last_xact_replay_timestamp()) END::float8,
		(SELECT status FROM pg_catalog.pg_stat_wal_receiver LIMIT 1)`).
		Scan(&inRecovery, &versionNum, &version, &timeline, &start, &maxConn, &walBytes, &oldestXIDAge,
			&oldestXact, &slotKeep, &standbyLag, &standbyDelay, &receiver)
	if err != nil {
		return fmt.Errorf("reading the server state: %w", err)
	}
	role := "primary"
	if inRecovery {
		role = "standby"
	}
	gauge(descPrimary, boolFloat(!inRecovery))
	gauge(descInfo, 1, version, role)
	gauge(descTimeline, float64(timeline))
	gauge(descStartTime, float64(start.UnixNano())/1e9)
	gauge(descMaxConnections, float64(maxConn))
	counter(descWAL, float64(walBytes))
	gauge(descOldestXID, float64(oldestXIDAge))
	gauge(descOldestXact, oldestXact)
	gauge(descSlotKeepMax, slotKeep)
	if inRecovery {
		gauge(descStandbyStreaming, boolFloat(receiver != nil && *receiver == "streaming"))
		if standbyLag != nil {
			gauge(descStandbyLagBytes, float64(*standbyLag))
		}
		if standbyDelay != nil {
			gauge(descStandbyDelay, *standbyDelay)
		}
	}

	// Checkpoints moved from pg_stat_bgwriter to pg_stat_checkpointer in 17.
	checkpoints := `SELECT checkpoints_timed, checkpoints_req FROM pg_catalog.pg_stat_bgwriter`
	if versionNum >= 170000 {
		checkpoints = `SELECT num_timed, num_requested FROM pg_catalog.pg_stat_checkpointer`
	}
	var timed, requested int64
	if err := conn.QueryRow(ctx, checkpoints).Scan(&timed, &requested); err != nil {
		return fmt.Errorf("reading checkpoints: %w", err)
	}
	counter(descCheckpointsTimed, float64(timed))
	counter(descCheckpointsReq, float64(requested))

	if err := eachRow(ctx, conn, `SELECT coalesce(state, 'unknown'), count(*) FROM pg_catalog.pg_stat_activity
		WHERE backend_type = 'client backend' GROUP BY 1`, func(r pgx.Rows) error {
		var state string
		var n int64
		if err := r.Scan(&state, &n); err != nil {
			return err
		}
		gauge(descConnections, float64(n), state)
		return nil
	}); err != nil {
		return fmt.Errorf("reading connections: %w", err)
	}

	if err := eachRow(ctx, conn, `SELECT d.datname, s.xact_commit, s.xact_rollback,
		CASE WHEN d.datallowconn THEN pg_catalog.pg_database_size(d.oid) END
		FROM pg_catalog.pg_database d JOIN pg_catalog.pg_stat_database s ON s.datid = d.oid
		WHERE NOT d.datistemplate`, func(r pgx.Rows) error {
		var name string
		var commits, rollbacks int64
		var size *int64
		if err := r.Scan(&name, &commits, &rollbacks, &size); err != nil {
			return err
		}
		counter(descCommits, float64(commits), name)
		counter(descRollbacks, float64(rollbacks), name)
		if size != nil {
			gauge(descDBSize, float64(*size), name)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("reading databases: %w", err)
	}

	if !inRecovery {
		connected := 0
		if err := eachRow(ctx, conn, `SELECT coalesce(application_name, ''),
			coalesce(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), replay_lsn), 0)::bigint,
			coalesce(extract(epoch FROM replay_lag), 0)::float8,
			sync_state IN ('sync', 'quorum'), coalesce(state, '') = 'streaming'
			FROM pg_catalog.pg_stat_replication`, func(r pgx.Rows) error {
			var name string
			var lagBytes int64
			var lagSeconds float64
			var sync, streaming bool
			if err := r.Scan(&name, &lagBytes, &lagSeconds, &sync, &streaming); err != nil {
				return err
			}
			gauge(descReplLagBytes, float64(lagBytes), name)
			gauge(descReplLagSeconds, lagSeconds, name)
			gauge(descReplSync, boolFloat(sync), name)
			if sync && streaming {
				connected++
			}
			return nil
		}); err != nil {
			return fmt.Errorf("reading replication: %w", err)
		}
		var names string
		if err := conn.QueryRow(ctx, `SELECT pg_catalog.current_setting('synchronous_standby_names')`).Scan(&names); err != nil {
			return fmt.Errorf("reading synchronous_standby_names: %w", err)
		}
		gauge(descSyncRequired, float64(synchronousQuorum(names)))
		gauge(descSyncConnected, float64(connected))
	}

	if err := eachRow(ctx, conn, `SELECT slot_name::text, active,
		coalesce(pg_catalog.pg_wal_lsn_diff(CASE WHEN pg_catalog.pg_is_in_recovery()
			THEN pg_catalog.pg_last_wal_receive_lsn() ELSE pg_catalog.pg_current_wal_lsn() END, restart_lsn), 0)::bigint
		FROM pg_catalog.pg_replication_slots`, func(r pgx.Rows) error {
		var name string
		var active bool
		var retained int64
		if err := r.Scan(&name, &active, &retained); err != nil {
			return err
		}
		gauge(descSlotRetained, float64(retained), name)
		gauge(descSlotActive, boolFloat(active), name)
		return nil
	}); err != nil {
		return fmt.Errorf("reading replication slots: %w", err)
	}
	return nil
}

func eachRow(ctx context.Context, conn *pgx.Conn, sql string, fn func(pgx.Rows) error) error {
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// serveMetrics serves GET /metrics on the metrics port: PostgreSQL's series, the
// agent's Go runtime and process series. It returns the server (to shut down)
// and the collector (to close its connection).
func (a *Agent) serveMetrics() (*http.Server, *metricsCollector, error) {
	c := newMetricsCollector(a)
	a.metrics = c
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		// One scrape at a time: each holds the collector's connection.
		MaxRequestsInFlight: 2,
		Timeout:             metricsScrapeTimeout + time.Second,
	}))
	ln, err := net.Listen("tcp", net.JoinHostPort(a.cfg.MetricsAddress, strconv.Itoa(a.cfg.MetricsPort)))
	if err != nil {
		return nil, nil, fmt.Errorf("metrics listener: %w", err)
	}
	a.metricsAddr.Store(ln.Addr())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("metrics HTTP server stopped", "error", err)
		}
	}()
	return srv, c, nil
}

// MetricsAddr is the metrics listener's address (nil before it listens or when
// metrics are off).
func (a *Agent) MetricsAddr() net.Addr {
	if v := a.metricsAddr.Load(); v != nil {
		return v.(net.Addr)
	}
	return nil
}

// MetricsCollector returns a collector of the agent's PostgreSQL series that
// only describes them (its Collect reports PostgreSQL down): for listing the
// series' names.
func MetricsCollector() prometheus.Collector {
	return newMetricsCollector(&Agent{})
}

// quorumPattern reads the count of "ANY n (…)" or "FIRST n (…)", or "n (…)".
var quorumPattern = regexp.MustCompile(`^\s*(?i:(?:ANY|FIRST)\s+)?([0-9]+)\s*\(`)

// synchronousQuorum is how many standbys a commit waits for under the
// synchronous_standby_names given: 0 when empty, 1 for a plain list.
func synchronousQuorum(names string) int {
	if strings.TrimSpace(names) == "" {
		return 0
	}
	if m := quorumPattern.FindStringSubmatch(names); m != nil {
		n, err := strconv.Atoi(m[1])
		if err == nil {
			return n
		}
	}
	return 1
}
