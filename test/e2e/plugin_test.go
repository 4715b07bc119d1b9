//go:build e2e

package e2e

import (
	"archive/tar"
	"compress/gzip"
	"encoding/base64"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The README's kubectl plugin section: each command of kubectl pg, run as the
// README shows it, against a Database with a standby.
func TestKubectlPlugin(t *testing.T) {
	c := newCluster(t)
	c.mustApply(strings.Replace(myDatabase, "replicas: 1", "replicas: 2", 1))
	c.waitPhase("my-database", "Ready", readyTimeout)
	c.waitChecksPassed("my-database", 2*time.Minute)
	c.serviceAnswers("my-database-0")
	if out, err := c.psql("my-database-0", true, "CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 500) g"); err != nil {
		t.Fatalf("seeding: %v %s", err, out)
	}
	before := c.primary("my-database")
	_ = os.Remove("/tmp/my-database-report.tar.gz")

	out := c.runReadme("kubectl-plugin")
	t.Logf("kubectl pg output:\n%s", out)

	for what, re := range map[string]string{
		"status: both instances with their roles":    `(?m)^my-database-0\s+primary\s+true\s+\d+\s+-\s+-` + `[\s\S]*^my-database-1\s+replica\s+true\s+\d+\s+\d+\s`,
		"status: the phase and primary":              `Database ` + c.ns + `/my-database: phase Ready, ready true[\s\S]*Primary: my-database-0, timeline 1`,
		"status: the conditions":                     `(?m)^Ready\s+True\s+`,
		"psql on the primary":                        `(?m)^ pg_is_in_recovery \n-+\n f\n`,
		"psql on the standby":                        `(?m)^ pg_is_in_recovery \n-+\n t\n`,
		"backup --wait":                              `my-backup: Completed in \S+, [\d.]+ [KMG]?i?B at pvc://`,
		"restore --wait":                             `my-database-restore-\S+: Completed in \S+; previous database kept as \S+`,
		"switchover --wait":                          `switchover completed: my-database-1 is the primary \(timeline 2\)`,
		"logs of the primary (after the switchover)": `(?m)^\[pod/my-database-1/postgres\] `,
		"report": `wrote /tmp/my-database-report.tar.gz \(\d+ files\)`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("%s: no match for %s", what, re)
		}
	}
	if before != "my-database-0" {
		t.Logf("the primary before the switchover was %s", before)
	}
	if got := c.primary("my-database"); got != "my-database-1" {
		t.Errorf("primary after kubectl pg switchover = %s", got)
	}
	c.serviceAnswers("my-database-0")
	if n, err := c.psql("my-database-0", true, "SELECT count(*) FROM items"); err != nil || strings.TrimSpace(n) != "500" {
		t.Errorf("rows after the restore and the switchover: %q %v", n, err)
	}

	// The report has the objects, events and logs, and no Secret value.
	password, err := base64.StdEncoding.DecodeString(c.jsonpath("secret/my-database-credentials", "{.data.password}"))
	if err != nil || len(password) == 0 {
		t.Fatalf("reading the password: %v", err)
	}
	f, err := os.Open("/tmp/my-database-report.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	files := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		name := h.Name[strings.Index(h.Name, "/")+1:]
		files[name] = true
		if strings.Contains(string(b), string(password)) || strings.Contains(string(b), base64.StdEncoding.EncodeToString(password)) {
			t.Errorf("the report's %s contains the application password", name)
		}
	}
	for _, want := range []string{"database.yaml", "status.txt", "pods.yaml", "statefulsets.yaml", "backups.yaml",
		"restores.yaml", "events.yaml", "secrets.yaml", "logs/my-database-0/postgres.log", "README.txt"} {
		if !files[want] {
			t.Errorf("the report lacks %s (has %v)", want, files)
		}
	}
	hasOperatorLog := false
	for f := range files {
		hasOperatorLog = hasOperatorLog || strings.HasPrefix(f, "logs/operator/")
	}
	if !hasOperatorLog {
		t.Error("the report lacks the operator's log")
	}
}
