//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Lab 3.3's manifest, with postgres:15 for postgres:14 (end of life).
const myDatabase = `
apiVersion: database.example.com/v1
kind: Database
metadata:
  name: my-database
spec:
  image: postgres:15
  replicas: 1
  databaseName: mydb
  username: admin
  storage:
    size: 10Gi
`

const readyTimeout = 4 * time.Minute

// Lab 3.3 exercises 5, 6 and the cleanup, plus replication and durability.
func TestDatabaseLifecycle(t *testing.T) {
	c := newCluster(t)

	// Exercise 5: create → Ready with the endpoint.
	c.mustApply(myDatabase)
	c.waitPhase("my-database", "Ready", readyTimeout)
	if ep := c.jsonpath("database/my-database", "{.status.endpoint}"); ep != "my-database."+c.ns+".svc.cluster.local:5432" {
		t.Errorf("endpoint = %q", ep)
	}
	c.must("get", "statefulset", "my-database")
	c.must("get", "service", "my-database")
	c.must("wait", "--for=condition=Ready", "database/my-database", "--timeout=10s")

	// Exercise 6.1: apply three times → one StatefulSet.
	for i := 0; i < 3; i++ {
		c.mustApply(myDatabase)
		time.Sleep(2 * time.Second)
	}
	if out := c.must("get", "statefulsets", "-o", "name"); out != "statefulset.apps/my-database" {
		t.Errorf("statefulsets after three applies: %q", out)
	}

	// Exercise 6.2: replicas 1→2; the new pod is a streaming standby.
	c.must("patch", "database", "my-database", "--type", "merge", "-p", `{"spec":{"replicas":2}}`)
	if got := c.must("get", "statefulset", "my-database", "-o", "jsonpath={.spec.replicas}"); got != "2" {
		// The operator may need a moment; wait for it.
		c.eventually(30*time.Second, "statefulset replicas 2", func() string {
			if r := c.jsonpath("statefulset/my-database", "{.spec.replicas}"); r != "2" {
				return "replicas " + r
			}
			return ""
		})
	}
	// Ready alone may still be the one-instance Ready of before the patch.
	c.eventually(readyTimeout, "two ready instances", func() string {
		if r := c.jsonpath("database/my-database", "{.status.readyReplicas}"); r != "2" {
			return "readyReplicas " + r
		}
		return ""
	})
	c.waitPhase("my-database", "Ready", readyTimeout)
	if role := c.jsonpath("pod/my-database-1", "{.metadata.labels.role}"); role != "replica" {
		t.Errorf("my-database-1 role label = %q", role)
	}
	if out, err := c.psql("my-database-1", false, "SELECT pg_is_in_recovery()"); err != nil || strings.TrimSpace(out) != "t" {
		t.Errorf("my-database-1 is not a standby: %v %s", err, out)
	}

	// A row written through the read-write Service is readable on the standby.
	c.serviceAnswers("my-database-0")
	if out, err := c.psql("my-database-0", true, "CREATE TABLE notes(id int primary key, body text); INSERT INTO notes VALUES (1, 'replicated')"); err != nil {
		t.Fatalf("write through the Service: %v\n%s", err, out)
	}
	c.eventually(30*time.Second, "row on the standby", func() string {
		out, err := c.psql("my-database-1", false, "SELECT body FROM notes WHERE id = 1")
		if err != nil || strings.TrimSpace(out) != "replicated" {
			return fmt.Sprintf("%v %s", err, out)
		}
		return ""
	})

	// Data survives deleting the primary pod.
	c.must("delete", "pod", "my-database-0", "--wait=true")
	c.waitPhase("my-database", "Ready", readyTimeout)
	c.serviceAnswers("my-database-0")
	if out, err := c.psql("my-database-0", true, "SELECT body FROM notes WHERE id = 1"); err != nil || strings.TrimSpace(out) != "replicated" {
		t.Errorf("row after the primary pod was deleted: %v %s", err, out)
	}
	if out, err := c.psql("my-database-0", true, "INSERT INTO notes VALUES (2, 'after restart')"); err != nil {
		t.Errorf("primary not writable after restart: %v %s", err, out)
	}

	// Cleanup: the Database's children are garbage-collected, the volumes kept.
	c.must("delete", "database", "my-database")
	c.eventually(2*time.Minute, "children garbage-collected", func() string {
		out, _ := c.kubectl("get", "statefulset,service,secret", "-l", "database=my-database", "-o", "name")
		if strings.TrimSpace(out) != "" {
			return out
		}
		return ""
	})
	if pvcs := c.must("get", "pvc", "-o", "name"); !strings.Contains(pvcs, "data-my-database-0") || !strings.Contains(pvcs, "data-my-database-1") {
		t.Errorf("volumes were not kept: %q", pvcs)
	}
}

// The seed's bad input is rejected by the API server with a clear message.
func TestBadManifestsAreRejected(t *testing.T) {
	c := newCluster(t)
	for _, tc := range []struct{ from, to, want string }{
		{"replicas: 1", "replicas: 20", "should be less than or equal to 10"},
		{"size: 10Gi", "size: lots", "storage.size must be a positive quantity"},
		{"databaseName: mydb", "databaseName: postgres", "databaseName must not be a reserved name"},
		{"username: admin", "username: Admin-1", "username must be a lowercase PostgreSQL identifier"},
		{"image: postgres:15", `image: ""`, "image must not be empty"},
	} {
		out, err := c.apply(strings.Replace(myDatabase, tc.from, tc.to, 1))
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("%s: err=%v output=%s; want rejection containing %q", tc.to, err, out, tc.want)
		}
	}
	c.mustApply(myDatabase)
	out, err := c.apply(strings.Replace(myDatabase, "databaseName: mydb", "databaseName: otherdb", 1))
	if err == nil || !strings.Contains(out, "databaseName is immutable") {
		t.Errorf("changing databaseName: err=%v output=%s", err, out)
	}
	out, err = c.apply(strings.Replace(myDatabase, "size: 10Gi", "size: 1Gi", 1))
	if err == nil || !strings.Contains(out, "may grow but never shrink") {
		t.Errorf("shrinking storage: err=%v output=%s", err, out)
	}
}

// Lab 8.3 exercise 3 with a minor version change: standbys roll before the primary
// and the Database returns to Ready; then a major version change is refused.
func TestRollingUpdate(t *testing.T) {
	c := newCluster(t)
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Database
metadata:
  name: rolling-update-test
spec:
  image: postgres:15
  replicas: 2
  databaseName: testdb
  username: admin
  storage:
    size: "1Gi"
`)
	c.waitPhase("rolling-update-test", "Ready", readyTimeout)
	c.must("get", "pods", "-l", "app=database,name=rolling-update-test")
	started := func(pod string) time.Time {
		ts, _ := time.Parse(time.RFC3339, c.jsonpath("pod/"+pod, "{.metadata.creationTimestamp}"))
		return ts
	}
	before0, before1 := started("rolling-update-test-0"), started("rolling-update-test-1")

	c.must("patch", "database", "rolling-update-test", "--type=merge", "-p", `{"spec":{"image":"postgres:15.18"}}`)
	c.eventually(readyTimeout, "all pods updated", func() string {
		got := c.jsonpath("statefulset/rolling-update-test", "{.status.updatedReplicas}/{.spec.replicas} {.status.currentRevision} {.status.updateRevision}")
		parts := strings.Fields(got)
		if len(parts) != 3 || parts[0] != "2/2" || parts[1] != parts[2] {
			return got
		}
		return ""
	})
	c.waitPhase("rolling-update-test", "Ready", readyTimeout)
	after0, after1 := started("rolling-update-test-0"), started("rolling-update-test-1")
	if !after0.After(before0) || !after1.After(before1) {
		t.Fatalf("pods were not replaced: 0 %v→%v, 1 %v→%v", before0, after0, before1, after1)
	}
	if !after1.Before(after0) {
		t.Errorf("the primary (ordinal 0, recreated %v) rolled before the standby (ordinal 1, recreated %v)", after0, after1)
	}
	images := c.must("get", "pods", "-l", "app=database,name=rolling-update-test", "-o",
		`jsonpath={range .items[*]}{.metadata.name}{"\t"}{.spec.containers[0].image}{"\n"}{end}`)
	if strings.Count(images, "postgres:15.18") != 2 {
		t.Errorf("pods after the update:\n%s", images)
	}

	// A change of major (the exercise's postgres:14 → 15 on the spec's images)
	// is an in-place upgrade: TestMajorUpgradeInPlace (upgrade_test.go).
}

// Lab 8.3 exercise 4.3: three instances pass the consistency checks; scaling to
// one and back to three retries the checks until the new standbys stream.
func TestConsistencyChecks(t *testing.T) {
	c := newCluster(t)
	c.mustApply(`
apiVersion: database.example.com/v1
kind: Database
metadata:
  name: consistency-test
spec:
  image: postgres:15
  replicas: 3
  databaseName: testdb
  username: admin
  storage:
    size: "1Gi"
`)
	c.waitPhase("consistency-test", "Ready", 2*readyTimeout)
	if got := c.jsonpath("statefulset/consistency-test", "{.status.readyReplicas}/{.spec.replicas}"); got != "3/3" {
		t.Errorf("ready replicas %s", got)
	}
	if got := c.jsonpath("database/consistency-test", "{.status.currentPrimary}"); got != "consistency-test-0" {
		t.Errorf("currentPrimary = %q", got)
	}

	c.must("patch", "database", "consistency-test", "--type=merge", "-p", `{"spec":{"replicas":1}}`)
	c.must("wait", "--for=jsonpath={.status.readyReplicas}=1", "statefulset/consistency-test", "--timeout=120s")
	c.waitPhase("consistency-test", "Ready", readyTimeout)
	c.must("patch", "database", "consistency-test", "--type=merge", "-p", `{"spec":{"replicas":3}}`)
	c.eventually(time.Minute, "leaves Ready while scaling", func() string {
		if p := c.jsonpath("database/consistency-test", "{.status.phase}"); p == "Ready" {
			return "still Ready"
		}
		return ""
	})
	c.waitPhase("consistency-test", "Ready", 2*readyTimeout)
	for _, pod := range []string{"consistency-test-1", "consistency-test-2"} {
		if out, err := c.psql(pod, false, "SELECT status FROM pg_stat_wal_receiver"); err != nil || strings.TrimSpace(out) != "streaming" {
			t.Errorf("%s wal receiver: %v %s", pod, err, out)
		}
	}
}
