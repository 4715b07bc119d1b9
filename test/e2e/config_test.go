//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// spec.postgresql on every instance: a reloadable change without a restart, a
// change that needs one by a rolling restart (data kept, Ready again), an
// invalid value refused without a restart, extra pg_hba rules and preloaded
// libraries.
func TestPostgreSQLConfiguration(t *testing.T) {
	c := newCluster(t)
	c.mustApply(strings.Replace(myDatabase, "replicas: 1", "replicas: 2", 1) + `  postgresql:
    parameters:
      work_mem: 12MB
      log_min_duration_statement: "1000"
    pgHBA:
    - host all all 192.0.2.0/24 reject
    sharedPreloadLibraries: [pg_stat_statements]
`)
	c.waitPhase("my-database", "Ready", readyTimeout)
	c.waitChecksPassed("my-database", 2*time.Minute)
	c.serviceAnswers("my-database-0")
	if out, err := c.psql(c.primary("my-database"), true, "CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 1000) g"); err != nil {
		t.Fatalf("seeding: %v %s", err, out)
	}
	pods := []string{"my-database-0", "my-database-1"}
	show := func(pod, setting string) string {
		out, err := c.psql(pod, false, "SHOW "+setting)
		if err != nil {
			return "error: " + err.Error()
		}
		return strings.TrimSpace(out)
	}
	waitAll := func(what, setting, want string, timeout time.Duration) {
		t.Helper()
		c.eventually(timeout, what, func() string {
			for _, p := range pods {
				if got := show(p, setting); got != want {
					return fmt.Sprintf("%s on %s = %q", setting, p, got)
				}
			}
			return ""
		})
	}
	condition := func() string {
		return c.condition("my-database", "ConfigurationApplied", "status") + "/" + c.condition("my-database", "ConfigurationApplied", "reason") +
			": " + c.condition("my-database", "ConfigurationApplied", "message")
	}
	identity := func() string {
		return c.jsonpath("pods", `{range .items[?(@.metadata.labels.app=="database")]}{.metadata.name}={.metadata.uid}/{.status.containerStatuses[0].restartCount} {end}`)
	}

	t.Run("the settings, pg_hba rules and libraries are in effect on every instance", func(t *testing.T) {
		waitAll("work_mem on both", "work_mem", "12MB", time.Minute)
		for _, p := range pods {
			if got := show(p, "shared_preload_libraries"); got != "pg_stat_statements" {
				t.Errorf("shared_preload_libraries on %s = %q", p, got)
			}
			if got := show(p, "log_min_duration_statement"); got != "1s" {
				t.Errorf("log_min_duration_statement on %s = %q", p, got)
			}
			if n, err := c.psql(p, false, "SELECT count(*) FROM pg_hba_file_rules WHERE address = '192.0.2.0'"); err != nil || strings.TrimSpace(n) != "1" {
				t.Errorf("the pg_hba rule on %s: %q %v", p, n, err)
			}
		}
		if out, err := c.psql(c.primary("my-database"), false, "CREATE EXTENSION pg_stat_statements; SELECT count(*) >= 0 FROM pg_stat_statements"); err != nil || !strings.Contains(out, "t") {
			t.Errorf("pg_stat_statements preloaded: %v %s", err, out)
		}
		c.eventually(time.Minute, "ConfigurationApplied", func() string {
			if got := condition(); !strings.HasPrefix(got, "True/ConfigurationApplied") {
				return got
			}
			return ""
		})
	})

	t.Run("a reloadable change reaches every instance without a restart", func(t *testing.T) {
		before := identity()
		c.must("patch", "database", "my-database", "--type=merge", "-p", `{"spec":{"postgresql":{"parameters":{"work_mem":"24MB"}}}}`)
		waitAll("work_mem 24MB on both", "work_mem", "24MB", 2*time.Minute)
		c.eventually(time.Minute, "ConfigurationApplied by reload", func() string {
			if got := condition(); !strings.HasPrefix(got, "True/ConfigurationApplied") || !strings.Contains(got, "reload") {
				return got
			}
			return ""
		})
		if after := identity(); after != before {
			t.Errorf("the instances restarted for a reloadable setting: %s → %s", before, after)
		}
	})

	t.Run("a change that needs a restart rolls the instances, standbys first, keeping the data", func(t *testing.T) {
		c.must("patch", "database", "my-database", "--type=merge", "-p", `{"spec":{"postgresql":{"parameters":{"max_connections":"150"}}}}`)
		sawRestart := false
		c.eventually(5*time.Minute, "max_connections 150 by a rolling restart", func() string {
			got := condition()
			sawRestart = sawRestart || strings.Contains(got, "RollingRestart")
			if !strings.HasPrefix(got, "True/ConfigurationApplied") || !strings.Contains(got, "rolling restart") {
				return got
			}
			for _, p := range pods {
				if v := show(p, "max_connections"); v != "150" {
					return "max_connections on " + p + " = " + v
				}
			}
			return ""
		})
		if !sawRestart {
			t.Log("the RollingRestart reason passed between two polls")
		}
		if got := c.jsonpath("database/my-database", "{.status.configuration.restartedFor}"); got == "" || got != c.jsonpath("database/my-database", "{.status.configuration.hash}") {
			t.Errorf("restartedFor %q", got)
		}
		c.waitPhase("my-database", "Ready", readyTimeout)
		primary := c.primary("my-database")
		c.serviceAnswers(primary)
		if n, err := c.psql(primary, true, "SELECT count(*) FROM items"); err != nil || strings.TrimSpace(n) != "1000" {
			t.Errorf("rows after the rolling restart: %q %v", n, err)
		}
		if got := show(primary, "work_mem"); got != "24MB" {
			t.Errorf("work_mem after the restart = %s", got)
		}
	})

	t.Run("an invalid value is refused by PostgreSQL, reported, and restarts nothing", func(t *testing.T) {
		before := identity()
		c.must("patch", "database", "my-database", "--type=merge", "-p", `{"spec":{"postgresql":{"parameters":{"work_mem":"lots"}}}}`)
		c.eventually(2*time.Minute, "ConfigurationInvalid", func() string {
			if got := condition(); !strings.HasPrefix(got, "False/ConfigurationInvalid") || !strings.Contains(got, "work_mem") {
				return got
			}
			return ""
		})
		time.Sleep(10 * time.Second)
		if after := identity(); after != before {
			t.Errorf("the instances restarted for an invalid value: %s → %s", before, after)
		}
		for _, p := range pods {
			if got := show(p, "work_mem"); got != "24MB" {
				t.Errorf("work_mem on %s = %s, want the previous 24MB", p, got)
			}
		}
		if c.jsonpath("database/my-database", "{.status.phase}") != "Ready" {
			t.Errorf("an invalid setting took the Database out of Ready: %s", c.jsonpath("database/my-database", "{.status.phase}"))
		}
	})
}
