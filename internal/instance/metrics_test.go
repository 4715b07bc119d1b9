package instance

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/testenv"
)

// scrape reads an agent's metrics endpoint and parses the text format.
func scrape(t *testing.T, ti *testInstance) map[string]*dto.MetricFamily {
	t.Helper()
	addr := ti.agent.MetricsAddr()
	if addr == nil {
		t.Fatal("the agent serves no metrics")
	}
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics = %d %s", resp.StatusCode, b)
	}
	families, err := testenv.ParseMetrics(resp.Body)
	if err != nil {
		t.Fatalf("parsing the metrics: %v", err)
	}
	return families
}

// sample is the value of the series name{labels}; ok false when there is none.
func sample(families map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	return testenv.Sample(families, name, labels...)
}

func mustSample(t *testing.T, families map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	v, ok := sample(families, name, labels...)
	if !ok {
		t.Fatalf("no series %s%v", name, labels)
	}
	return v
}

func TestMetricsOfAPrimaryAndItsStandby(t *testing.T) {
	root := testRoot(t)
	s := newSecrets(t, root)
	ctx := context.Background()
	pPort, sPort := testenv.FreePort(t), testenv.FreePort(t)
	primary := startInstance(t, s, "primary", "db-0", pPort, pPort)
	waitForAppLogin(t, pPort, s.appPassword)
	setSlots(t, primary, s.token, agentapi.SlotName("db-1"))
	standby := startInstance(t, s, "standby", "db-1", sPort, pPort)
	waitUntil(t, 90*time.Second, "the standby to stream", func() error {
		st, err := standby.status(s.token)
		if err != nil {
			return err
		}
		if st.WALReceiverStatus != "streaming" {
			return fmt.Errorf("wal receiver %q", st.WALReceiverStatus)
		}
		return nil
	})

	app, err := appConn(ctx, pPort, s.appPassword, testAppDB)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)

	t.Run("the primary reports its role, server, database sizes and the standby's lag and slot", func(t *testing.T) {
		var m map[string]*dto.MetricFamily
		// The standby shows up in pg_stat_replication once it streams.
		waitUntil(t, 30*time.Second, "the standby in the primary's metrics", func() error {
			m = scrape(t, primary)
			if _, ok := sample(m, "postgres_replication_lag_bytes", "application_name", "db-1"); !ok {
				return fmt.Errorf("no replication_lag_bytes for db-1")
			}
			return nil
		})
		for _, c := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"postgres_up", nil, 1},
			{"postgres_is_primary", nil, 1},
			{"postgres_info", []string{"role", "primary"}, 1},
			{"postgres_replication_slot_active", []string{"slot_name", agentapi.SlotName("db-1")}, 1},
			// Asynchronous replication: no commit waits for a standby.
			{"postgres_synchronous_standbys_required", nil, 0},
			{"postgres_synchronous_standbys_connected", nil, 0},
		} {
			if got := mustSample(t, m, c.name, c.labels...); got != c.want {
				t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
			}
		}
		for _, c := range []struct {
			name   string
			labels []string
		}{
			{"postgres_database_size_bytes", []string{"datname", testAppDB}},
			{"postgres_database_size_bytes", []string{"datname", "postgres"}},
			{"postgres_timeline_id", nil},
			{"postgres_start_time_seconds", nil},
			{"postgres_max_connections", nil},
			{"postgres_wal_bytes_total", nil},
			{"postgres_connections", []string{"state", "idle"}},
			{"postgres_volume_size_bytes", nil},
			{"postgres_volume_available_bytes", nil},
			{"postgres_xact_commit_total", []string{"datname", testAppDB}},
		} {
			if got := mustSample(t, m, c.name, c.labels...); got <= 0 {
				t.Errorf("%s%v = %v, want > 0", c.name, c.labels, got)
			}
		}
		for _, name := range []string{"postgres_checkpoints_timed_total", "postgres_checkpoints_requested_total",
			"postgres_oldest_xid_age", "postgres_replication_lag_seconds", "postgres_max_slot_wal_keep_size_bytes",
			"go_goroutines", "process_resident_memory_bytes"} {
			mustSample(t, m, name)
		}
		if _, ok := sample(m, "postgres_replication_slot_retained_wal_bytes", "slot_name", agentapi.SlotName("db-1")); !ok {
			t.Error("no retained WAL for the standby's slot")
		}
		if _, ok := sample(m, "postgres_standby_streaming"); ok {
			t.Error("the primary reports standby series")
		}
	})

	t.Run("WAL position, commits and database size grow with writes; a requested checkpoint counts", func(t *testing.T) {
		before := scrape(t, primary)
		if _, err := app.Exec(ctx, "CREATE TABLE metrics_t AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 50000) g"); err != nil {
			t.Fatal(err)
		}
		superExec(t, primary, "postgres", "CHECKPOINT")
		// Backends flush their statistics within a second or so of going idle.
		var after map[string]*dto.MetricFamily
		waitUntil(t, 15*time.Second, "the counters to grow", func() error {
			after = scrape(t, primary)
			for _, c := range []struct {
				name   string
				labels []string
			}{
				{"postgres_wal_bytes_total", nil},
				{"postgres_xact_commit_total", []string{"datname", testAppDB}},
				{"postgres_database_size_bytes", []string{"datname", testAppDB}},
				{"postgres_checkpoints_requested_total", nil},
			} {
				b, a := mustSample(t, before, c.name, c.labels...), mustSample(t, after, c.name, c.labels...)
				if a <= b {
					return fmt.Errorf("%s%v went from %v to %v, want growth", c.name, c.labels, b, a)
				}
			}
			return nil
		})
		if got := mustSample(t, after, "postgres_database_size_bytes", "datname", testAppDB); got < 10<<20 {
			t.Errorf("database size %v after writing ~12 MB, want > 10 MiB", got)
		}
	})

	t.Run("an open transaction shows as the oldest transaction's age and an idle-in-transaction connection", func(t *testing.T) {
		tx, err := app.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		if _, err := tx.Exec(ctx, "SELECT pg_catalog.txid_current()"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1200 * time.Millisecond)
		m := scrape(t, primary)
		if got := mustSample(t, m, "postgres_oldest_transaction_age_seconds"); got < 1 {
			t.Errorf("oldest transaction age %v with a transaction open for 1.2s, want >= 1", got)
		}
		if got := mustSample(t, m, "postgres_connections", "state", "idle in transaction"); got < 1 {
			t.Errorf("idle in transaction connections = %v, want >= 1", got)
		}
	})

	t.Run("the standby reports its role and that it streams", func(t *testing.T) {
		m := scrape(t, standby)
		for _, c := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"postgres_up", nil, 1},
			{"postgres_is_primary", nil, 0},
			{"postgres_info", []string{"role", "standby"}, 1},
			{"postgres_standby_streaming", nil, 1},
		} {
			if got := mustSample(t, m, c.name, c.labels...); got != c.want {
				t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
			}
		}
		mustSample(t, m, "postgres_standby_replay_lag_bytes")
		mustSample(t, m, "postgres_standby_replay_delay_seconds")
		if _, ok := sample(m, "postgres_replication_lag_bytes"); ok {
			t.Error("the standby reports replication lag of standbys of its own")
		}
	})

	t.Run("the metrics are read as the monitoring role, never the superuser", func(t *testing.T) {
		scrape(t, primary)
		c := primary.agent.metrics
		c.mu.Lock()
		user := ""
		if c.conn != nil {
			user = c.conn.Config().User
		}
		c.mu.Unlock()
		if user != agentapi.MonitorUser {
			t.Errorf("metrics connection as %q, want %q", user, agentapi.MonitorUser)
		}
		var super bool
		if err := app.QueryRow(ctx, "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = $1", agentapi.MonitorUser).Scan(&super); err != nil {
			t.Fatal(err)
		}
		if super {
			t.Error("the monitoring role is a superuser")
		}
	})

	t.Run("only GET /metrics is served on the metrics port", func(t *testing.T) {
		base := "http://" + primary.agent.MetricsAddr().String()
		for _, c := range []struct{ method, path string }{
			{http.MethodPost, "/metrics"}, {http.MethodGet, agentapi.PathStatus}, {http.MethodGet, agentapi.PathReadyz},
		} {
			req, _ := http.NewRequest(c.method, base+c.path, strings.NewReader(""))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Errorf("%s %s on the metrics port = 200, want an error", c.method, c.path)
			}
		}
	})

	t.Run("with PostgreSQL stopped, up is 0 and the volume is still reported", func(t *testing.T) {
		if err := standby.stop(); err != nil {
			t.Fatal(err)
		}
		// A stopped agent serves nothing; a collector of an agent whose
		// PostgreSQL exited reports up 0 without querying.
		c := newMetricsCollector(standby.agent)
		standby.agent.publish(func(v *runtimeView) { v.Exited = true })
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(c)
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]*dto.MetricFamily{}
		for _, f := range families {
			m[f.GetName()] = f
		}
		got := map[string]float64{}
		for _, name := range []string{"postgres_up", "postgres_volume_size_bytes", "postgres_is_primary"} {
			if v, ok := sample(m, name); ok {
				got[name] = v
			}
		}
		if v, ok := got["postgres_up"]; !ok || v != 0 {
			t.Errorf("postgres_up = %v (%v), want 0", v, ok)
		}
		if got["postgres_volume_size_bytes"] <= 0 {
			t.Error("no volume size while PostgreSQL is down")
		}
		if _, ok := got["postgres_is_primary"]; ok {
			t.Error("a role is reported while PostgreSQL is down")
		}
	})
}

func TestSynchronousQuorumReadsTheCountOfSynchronousStandbyNames(t *testing.T) {
	for names, want := range map[string]int{
		"":                       0,
		"  ":                     0,
		`ANY 1 ("db-1", "db-2")`: 1,
		`any 2 (a, b, c)`:        2,
		`FIRST 2 (a, b)`:         2,
		`3 (a, b, c)`:            3,
		`a, b`:                   1,
		`*`:                      1,
	} {
		if got := synchronousQuorum(names); got != want {
			t.Errorf("synchronousQuorum(%q) = %d, want %d", names, got, want)
		}
	}
}
