//go:build e2e

package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// waitChecksPassed waits for Ready with every check passing (not Ready kept by
// the grace period while a check fails).
func (c *cluster) waitChecksPassed(db string, timeout time.Duration) {
	c.t.Helper()
	c.eventually(timeout, db+" checks passed", func() string {
		if r := c.condition(db, "Ready", "reason"); r != "ChecksPassed" {
			return fmt.Sprintf("Ready reason %q: %s", r, c.condition(db, "Ready", "message"))
		}
		return ""
	})
}

func (c *cluster) condition(db, typ, field string) string {
	return c.jsonpath("database/"+db, fmt.Sprintf(`{.status.conditions[?(@.type=="%s")].%s}`, typ, field))
}

// Scenario 1: the primary's volume is lost with its pod. The read-write Service
// never serves an empty database: a client counting rows every second sees the
// original count or a failed connection, nothing else. The standby is promoted
// (failover); the instance whose volume was lost comes back empty and clones the
// new primary instead of initialising a new cluster.
func TestPrimaryVolumeLossNeverServesAnEmptyDatabase(t *testing.T) {
	c := newCluster(t)
	c.mustApply(strings.Replace(myDatabase, "replicas: 1", "replicas: 2", 1))
	c.waitPhase("my-database", "Ready", readyTimeout)
	c.serviceAnswers("my-database-1")
	if out, err := c.psql("my-database-1", true, "CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 1000) g"); err != nil {
		t.Fatalf("writing rows: %v %s", err, out)
	}
	c.eventually(60*time.Second, "rows on the standby", func() string {
		if out, err := c.psql("my-database-1", false, "SELECT count(*) FROM items"); err != nil || strings.TrimSpace(out) != "1000" {
			return fmt.Sprintf("%v %s", err, out)
		}
		return ""
	})
	sysID := c.jsonpath("database/my-database", "{.status.systemIdentifier}")
	if sysID == "" || c.condition("my-database", "Initialized", "status") != "True" {
		t.Fatalf("identity not recorded: %q", sysID)
	}

	// The client: from the standby's pod, through the read-write Service.
	var mu sync.Mutex
	var seen []string
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			// A client with a connect timeout, as applications have: a SYN to the
			// deleted pod's address would otherwise hang for minutes.
			out, err := c.kubectl("exec", "my-database-1", "-c", "postgres", "--", "sh", "-c",
				`PGCONNECT_TIMEOUT=3 PGOPTIONS="-c statement_timeout=3s" `+appPSQL+` -v ON_ERROR_STOP=1 -Atc "SELECT count(*) FROM items"`)
			mu.Lock()
			if err == nil {
				seen = append(seen, strings.TrimSpace(out))
			} else {
				seen = append(seen, "error")
			}
			mu.Unlock()
		}
	}()

	c.must("delete", "pvc", "data-my-database-0", "--wait=false")
	c.must("delete", "pod", "my-database-0", "--grace-period=0", "--force")
	c.waitNewPrimary("my-database", "my-database-0", 3*time.Minute)
	if p := c.primary("my-database"); p != "my-database-1" {
		t.Fatalf("primary %q after the failover", p)
	}
	c.waitChecksPassed("my-database", 6*time.Minute)
	c.serviceAnswers("my-database-1")
	time.Sleep(3 * time.Second)
	close(stop)
	<-done
	mu.Lock()
	defer mu.Unlock()
	counts := map[string]int{}
	for _, s := range seen {
		counts[s]++
	}
	for s, n := range counts {
		if s != "1000" && s != "error" {
			t.Errorf("the read-write Service answered %d time(s) with %q rows: an empty or different database was served (all: %v)", n, s, counts)
		}
	}
	if counts["1000"] == 0 {
		t.Errorf("the client never read the rows: %v", counts)
	}
	if out, err := c.psql("my-database-1", true, "INSERT INTO items VALUES (1001)"); err != nil {
		t.Errorf("the new primary does not accept writes: %v %s", err, out)
	}
	if id := c.jsonpath("database/my-database", "{.status.systemIdentifier}"); id != sysID {
		t.Errorf("system identifier %s after the failover, want %s", id, sysID)
	}
	c.eventually(2*time.Minute, "the re-cloned instance follows the new primary", func() string {
		if out, err := c.psql("my-database-0", false, "SELECT count(*) FROM items"); err != nil || strings.TrimSpace(out) != "1001" {
			return fmt.Sprintf("%v %s", err, out)
		}
		return ""
	})
}

// Scenario 2: scale 3→1, write more WAL than maxSlotWALKeepSize, scale back to 3:
// every standby streams again (re-cloned when its WAL is gone) and has the rows.
func TestStandbysHealAfterFallingBehind(t *testing.T) {
	c := newCluster(t)
	c.mustApply(strings.Replace(strings.Replace(myDatabase, "replicas: 1", "replicas: 3", 1), "size: 10Gi", "size: 10Gi\n  maxSlotWALKeepSize: 64Mi", 1))
	c.waitPhase("my-database", "Ready", 2*readyTimeout)
	c.serviceAnswers("my-database-0")
	if out, err := c.psql("my-database-0", true, "CREATE TABLE items (id int, body text)"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	c.must("scale", "database/my-database", "--replicas=1")
	c.waitPhase("my-database", "Ready", readyTimeout)
	for i := 0; i < 4; i++ {
		if out, err := c.psql("my-database-0", true, fmt.Sprintf("INSERT INTO items SELECT g, repeat('x', 1500) FROM generate_series(%d, %d) g", i*40000, i*40000+39999)); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	}
	for i := 0; i < 3; i++ {
		if out, err := c.kubectl("exec", "my-database-0", "-c", "postgres", "--", "psql", "-h", "/controller/run", "-U", "postgres", "-Atc", "SELECT pg_switch_wal(); CHECKPOINT"); err != nil {
			t.Fatalf("checkpoint: %v %s", err, out)
		}
	}
	want, err := c.psql("my-database-0", true, "SELECT count(*) FROM items")
	if err != nil {
		t.Fatal(err)
	}
	c.must("scale", "database/my-database", "--replicas=3")
	c.waitPhase("my-database", "Ready", 2*readyTimeout)
	c.waitChecksPassed("my-database", 2*readyTimeout)
	for _, pod := range []string{"my-database-1", "my-database-2"} {
		c.eventually(2*time.Minute, pod+" rows", func() string {
			out, err := c.psql(pod, false, "SELECT count(*) FROM items")
			if err != nil || strings.TrimSpace(out) != strings.TrimSpace(want) {
				return fmt.Sprintf("%v %s, want %s", err, out, want)
			}
			return ""
		})
	}
	// The internal Secret deleted: recreated with a new replication password and
	// agent token, applied without breaking replication or the operator's access.
	c.must("delete", "secret", "my-database-internal")
	c.eventually(time.Minute, "internal Secret recreated", func() string {
		if id := c.jsonpath("secret/my-database-internal", "{.data.system-identifier}"); id == "" {
			return "no system-identifier in the recreated Secret"
		}
		return ""
	})
	if out, err := c.psql("my-database-0", true, "INSERT INTO items VALUES (-1, 'after the internal Secret changed')"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	for _, pod := range []string{"my-database-1", "my-database-2"} {
		c.eventually(time.Minute, pod+" streams the new row", func() string {
			out, err := c.psql(pod, false, "SELECT count(*) FROM items WHERE id = -1")
			if err != nil || strings.TrimSpace(out) != "1" {
				return fmt.Sprintf("%v %s", err, out)
			}
			return ""
		})
	}
	// Wait for the kubelet to refresh the mounted Secret in every pod.
	want64 := c.jsonpath("secret/my-database-internal", "{.data.replication-password}")
	for _, pod := range []string{"my-database-0", "my-database-1", "my-database-2"} {
		c.eventually(3*time.Minute, pod+" sees the new internal Secret", func() string {
			out, err := c.kubectl("exec", pod, "-c", "postgres", "--", "base64", "-w0", "/etc/postgres-operator/internal/replication-password")
			if err != nil || strings.TrimSpace(out) != want64 {
				return fmt.Sprintf("not refreshed yet (%v)", err)
			}
			return ""
		})
	}
	time.Sleep(10 * time.Second) // the agents poll the files every 5s
	c.waitChecksPassed("my-database", 2*time.Minute)
	c.must("delete", "pod", "my-database-2", "--wait=true") // reconnects with the new replication password
	c.waitChecksPassed("my-database", readyTimeout)

	slots, _ := c.kubectl("exec", "my-database-0", "-c", "postgres", "--", "psql", "-h", "/controller/run", "-U", "postgres", "-Atc",
		"SELECT string_agg(slot_name || ':' || active, ',' ORDER BY slot_name) FROM pg_replication_slots")
	if strings.TrimSpace(slots) != "pgop_my_database_1:true,pgop_my_database_2:true" {
		t.Errorf("replication slots on the primary: %q", slots)
	}
}

// Scenarios 3, 4 and 5 on one Database: password rotation through the Secret,
// drift of children corrected, a volume that cannot grow reported without
// affecting readiness or routing.
func TestSecretsChildrenAndStorageConverge(t *testing.T) {
	c := newCluster(t)
	c.mustApply(myDatabase)
	c.waitPhase("my-database", "Ready", readyTimeout)
	c.serviceAnswers("my-database-0")

	// 3. Edit the credentials password: the new one works, the old one does not,
	// and the Database stays Ready throughout.
	oldURI := c.must("get", "secret", "my-database-credentials", "-o", "jsonpath={.data.uri}")
	oldPassword, err := base64.StdEncoding.DecodeString(c.must("get", "secret", "my-database-credentials", "-o", "jsonpath={.data.password}"))
	if err != nil || len(oldPassword) == 0 {
		t.Fatalf("reading the generated password: %v", err)
	}
	c.must("patch", "secret", "my-database-credentials", "--type", "merge", "-p", `{"stringData":{"password":"E2e-Rotated-Passw0rd"}}`)
	host := "my-database." + c.ns + ".svc.cluster.local"
	newURI := "postgresql://admin:E2e-Rotated-Passw0rd@" + host + ":5432/mydb"
	c.eventually(3*time.Minute, "the new password to log in", func() string {
		if phase := c.jsonpath("database/my-database", "{.status.phase}"); phase != "Ready" {
			t.Errorf("phase %q during the password change", phase)
		}
		out, err := c.kubectl("exec", "my-database-0", "-c", "postgres", "--", "psql", newURI, "-Atc", "SELECT 1")
		if err != nil {
			return fmt.Sprintf("%v %s", err, out)
		}
		return ""
	})
	if uri := c.must("get", "secret", "my-database-credentials", "-o", "jsonpath={.data.uri}"); uri == oldURI {
		t.Error("the uri key was not refreshed")
	}
	if out, err := c.kubectl("exec", "my-database-0", "-c", "postgres", "--", "psql",
		"postgresql://admin:"+string(oldPassword)+"@"+host+":5432/mydb", "-Atc", "SELECT 1"); err == nil {
		t.Errorf("the old password still logs in: %s", out)
	}
	// Lab 8.3's `kubectl logs ... | grep -i consistency`: the checks are narrated.
	logs, _ := run(context.Background(), "", "logs", "-n", operatorNamespace, "deploy/postgres-operator-controller-manager", "--tail=-1")
	if !strings.Contains(strings.ToLower(logs), "consistency check passed") {
		t.Error("the operator log does not narrate the consistency checks")
	}

	// 4. Drift: the StatefulSet scaled to 0 by hand and an edited Service selector
	// are restored.
	c.must("scale", "statefulset", "my-database", "--replicas=0")
	c.must("patch", "service", "my-database", "--type", "merge", "-p", `{"spec":{"selector":{"role":"nobody"}}}`)
	c.eventually(time.Minute, "drift corrected", func() string {
		r := c.jsonpath("statefulset/my-database", "{.spec.replicas}")
		sel := c.jsonpath("service/my-database", "{.spec.selector.role}")
		if r != "1" || sel != "primary" {
			return fmt.Sprintf("replicas %q selector role %q", r, sel)
		}
		return ""
	})
	c.waitChecksPassed("my-database", readyTimeout)

	// 5. storage.size grown on the local StorageClass, which cannot expand.
	c.must("patch", "database", "my-database", "--type", "merge", "-p", `{"spec":{"storage":{"size":"20Gi"}}}`)
	c.eventually(time.Minute, "StorageResized False", func() string {
		if r := c.condition("my-database", "StorageResized", "reason"); r != "ExpansionNotSupported" {
			return fmt.Sprintf("reason %q", r)
		}
		return ""
	})
	if phase := c.jsonpath("database/my-database", "{.status.phase}"); phase != "Ready" {
		t.Errorf("phase %q after a refused expansion", phase)
	}
	c.must("delete", "pod", "my-database-0", "--wait=true")
	c.waitChecksPassed("my-database", readyTimeout)
	c.eventually(time.Minute, "routing after a primary restart", func() string {
		if out, err := c.kubectl("exec", "my-database-0", "-c", "postgres", "--", "psql", newURI, "-Atc", "SELECT 1"); err != nil {
			return fmt.Sprintf("%v %s", err, out)
		}
		return ""
	})
}

// An image whose tag names no major (postgres:latest, here PostgreSQL 17) on a
// PostgreSQL 15 Database: the first instance that runs it refuses to start on the
// old data directory and stays up reporting why (no crash loop, the primary keeps
// serving); setting spec.image back recovers without deleting a pod by hand.
func TestImageOfAnotherMajorBehindATagWithoutAMajor(t *testing.T) {
	c := newCluster(t)
	c.mustApply(strings.Replace(myDatabase, "replicas: 1", "replicas: 2", 1))
	c.waitPhase("my-database", "Ready", readyTimeout)
	c.serviceAnswers("my-database-0")
	if out, err := c.psql("my-database-0", true, "CREATE TABLE items AS SELECT 1 AS id"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	c.must("patch", "database", "my-database", "--type", "merge", "-p", `{"spec":{"image":"postgres:latest"}}`)
	c.eventually(4*time.Minute, "DataVersionMismatch", func() string {
		if r := c.condition("my-database", "Stalled", "reason"); r != "DataVersionMismatch" {
			return fmt.Sprintf("Stalled reason %q: %s", r, c.condition("my-database", "Ready", "message"))
		}
		return ""
	})
	msg := c.condition("my-database", "Stalled", "message")
	for _, want := range []string{"my-database-1", "PostgreSQL 15", "PostgreSQL 17", "postgres:latest"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Stalled message %q lacks %q", msg, want)
		}
	}
	time.Sleep(20 * time.Second)
	if n := c.jsonpath("pod/my-database-1", `{.status.containerStatuses[?(@.name=="postgres")].restartCount}`); n != "0" {
		t.Errorf("the refusing instance restarted %s times: a crash loop", n)
	}
	if img := c.jsonpath("pod/my-database-0", `{.spec.containers[?(@.name=="postgres")].image}`); img != "postgres:15" {
		t.Errorf("the primary was moved to %s", img)
	}
	if c.condition("my-database", "PrimaryAvailable", "status") != "True" {
		t.Errorf("PrimaryAvailable: %s", c.condition("my-database", "PrimaryAvailable", "message"))
	}
	if out, err := c.psql("my-database-0", true, "INSERT INTO items VALUES (2)"); err != nil {
		t.Errorf("the primary stopped serving: %v %s", err, out)
	}
	c.must("patch", "database", "my-database", "--type", "merge", "-p", `{"spec":{"image":"postgres:15"}}`)
	c.waitPhase("my-database", "Ready", readyTimeout)
	c.eventually(time.Minute, "the standby has the rows", func() string {
		if out, err := c.psql("my-database-1", false, "SELECT count(*) FROM items"); err != nil || strings.TrimSpace(out) != "2" {
			return fmt.Sprintf("%v %s", err, out)
		}
		return ""
	})
}
