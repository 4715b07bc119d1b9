package instance

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/example/postgres-operator/internal/walarchive"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/example/postgres-operator/internal/testenv"
)

func TestPlanStart(t *testing.T) {
	tests := []struct {
		name string
		f    startFacts
		want startAction
		msg  string
	}{
		{"new Database: the primary runs initdb", startFacts{Primary: true}, actionInitdb, "never initialised"},
		{"initialised Database, empty primary volume: refuse", startFacts{Primary: true, ExpectedSystemID: "7"}, actionRefuseMissing, "refusing to create a new, empty cluster"},
		{"empty primary volume with a recovery source: rebuild from the standby", startFacts{Primary: true, ExpectedSystemID: "7", RecoverFrom: "db-1"}, actionRecoverPrimary, "db-1"},
		{"a recovery source is ignored for a Database never initialised", startFacts{Primary: true, RecoverFrom: "db-1"}, actionInitdb, ""},
		{"new Database bootstrapped by a point-in-time recovery: the primary recovers it", startFacts{Primary: true,
			Recovery: &walarchive.RecoveryRequest{SystemID: "9", Latest: true}, RecoveryExpected: true}, actionRecoverArchive, "recovering cluster 9"},
		{"point-in-time bootstrap whose source is not there yet: never initdb", startFacts{Primary: true, RecoveryExpected: true}, actionWaitRecovery, "never initdb"},
		{"a point-in-time bootstrap never runs again once initialised", startFacts{Primary: true, ExpectedSystemID: "9",
			Recovery: &walarchive.RecoveryRequest{SystemID: "9", Latest: true}, RecoveryExpected: true}, actionRefuseMissing, "refusing"},
		{"a standby of a point-in-time bootstrap clones the primary", startFacts{
			Recovery: &walarchive.RecoveryRequest{SystemID: "9", Latest: true}, RecoveryExpected: true}, actionClone, "cloning"},
		{"empty standby volume: clone", startFacts{ExpectedSystemID: "7"}, actionClone, "cloning"},
		{"empty standby volume before identity: clone", startFacts{}, actionClone, "cloning"},
		{"primary with its own data", startFacts{Primary: true, HasData: true, DataSystemID: "7", ExpectedSystemID: "7", DataMajor: 15, BinaryMajor: 15}, actionStart, ""},
		{"primary before identity is recorded starts (adoption is reported by the operator)", startFacts{Primary: true, HasData: true, DataSystemID: "7", DataMajor: 15, BinaryMajor: 15}, actionStart, ""},
		{"primary with foreign data: refuse", startFacts{Primary: true, HasData: true, DataSystemID: "8", ExpectedSystemID: "7", DataMajor: 15, BinaryMajor: 15}, actionRefuseForeign, "system identifier 8, the Database's is 7"},
		{"standby with foreign data: re-clone", startFacts{HasData: true, DataSystemID: "8", ExpectedSystemID: "7", DataMajor: 15, BinaryMajor: 15}, actionReclone, "re-cloning"},
		{"standby with its own data", startFacts{HasData: true, DataSystemID: "7", ExpectedSystemID: "7", DataMajor: 15, BinaryMajor: 15}, actionStart, ""},
		{"primary with an unreadable pg_control: refuse", startFacts{Primary: true, HasData: true, ExpectedSystemID: "7", DataMajor: 15, BinaryMajor: 15}, actionRefuseForeign, "unusable"},
		{"standby with an unreadable pg_control: re-clone", startFacts{HasData: true, ExpectedSystemID: "7", DataMajor: 15, BinaryMajor: 15}, actionReclone, "unusable"},
		{"standby asked to re-clone", startFacts{HasData: true, DataSystemID: "7", ExpectedSystemID: "7", DataMajor: 15, BinaryMajor: 15, RecloneRequested: true}, actionReclone, "operator asked"},
		{"a re-clone request never touches a primary", startFacts{Primary: true, HasData: true, DataSystemID: "7", ExpectedSystemID: "7", DataMajor: 15, BinaryMajor: 15, RecloneRequested: true}, actionStart, ""},
		{"data of another major: never started, never deleted (primary)", startFacts{Primary: true, HasData: true, DataSystemID: "7", ExpectedSystemID: "7", DataMajor: 15, BinaryMajor: 17}, actionRefuseVersion, "PostgreSQL 15 but the image runs PostgreSQL 17"},
		{"standby of the old major after a major upgrade (new system identifier): re-clone", startFacts{HasData: true, DataSystemID: "7", ExpectedSystemID: "9", DataMajor: 15, BinaryMajor: 17}, actionReclone, "another cluster"},
		{"standby of the old major, same cluster (image changed without an upgrade): refused", startFacts{HasData: true, DataSystemID: "7", ExpectedSystemID: "7", DataMajor: 15, BinaryMajor: 17}, actionRefuseVersion, "set spec.image back to a 15 image"},
		{"data of another major: never started, never deleted (standby, even foreign)", startFacts{HasData: true, DataSystemID: "8", ExpectedSystemID: "7", DataMajor: 17, BinaryMajor: 15}, actionRefuseVersion, "set spec.image back to a 17 image"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, msg := planStart(tc.f)
			if got != tc.want || !strings.Contains(msg, tc.msg) {
				t.Errorf("planStart = %s %q, want %s containing %q", got, msg, tc.want, tc.msg)
			}
			if st, ok := refusalState(got); ok != strings.HasPrefix(string(got), "refuse") || (ok && st == "") {
				t.Errorf("refusalState(%s) = %q %v", got, st, ok)
			}
		})
	}
}

func TestWALPositions(t *testing.T) {
	const seg = 16 << 20
	for name, want := range map[string]string{
		"000000010000000000000001": "0/1000000",
		"0000000200000003000000FF": "3/FF000000",
	} {
		got, err := segmentStartLSN(name, seg)
		if err != nil || got.String() != want {
			t.Errorf("segmentStartLSN(%s) = %v %v, want %s", name, got, err, want)
		}
	}
	if _, err := segmentStartLSN("00000001", seg); err == nil {
		t.Error("a short segment name was accepted")
	}
	for _, tc := range []struct {
		standby, oldest string
		gone            bool
	}{
		{"0/3000100", "0/5000000", true},
		{"0/5000100", "0/5000000", false},
		{"0/4FFFFFF", "0/5000000", true},
		{"0/5000000", "0/5000000", false},
		{"1/0", "0/FF000000", false},
		{"", "0/5000000", false},
	} {
		if got := NeedsWALThatIsGone(tc.standby, tc.oldest, seg); got != tc.gone {
			t.Errorf("NeedsWALThatIsGone(%s, %s) = %v", tc.standby, tc.oldest, got)
		}
	}
	if agentapi.LaterLSN("0/5", "1/0") != "1/0" || agentapi.LaterLSN("2/0", "1/FFFFFFFF") != "2/0" || agentapi.LaterLSN("", "0/1") != "0/1" {
		t.Error("LaterLSN")
	}
	if got, err := parseBinaryMajor("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"); err != nil || got != 15 {
		t.Errorf("parseBinaryMajor = %d %v", got, err)
	}
	if got, err := parseBinaryMajor("postgres (PostgreSQL) 18beta1"); err != nil || got != 18 {
		t.Errorf("parseBinaryMajor(beta) = %d %v", got, err)
	}
	if agentapi.SlotName("my-database-2") != "pgop_my_database_2" || !slotNamePattern.MatchString(agentapi.SlotName("my-database-2")) {
		t.Errorf("SlotName = %s", agentapi.SlotName("my-database-2"))
	}
}

func setSlots(t *testing.T, in *testInstance, token string, names ...string) []agentapi.SlotStatus {
	t.Helper()
	var out []agentapi.SlotStatus
	waitUntil(t, 30*time.Second, "PUT /slots", func() error {
		b, _ := json.Marshal(agentapi.SlotsRequest{Names: names})
		req, _ := http.NewRequest(http.MethodPut, in.baseURL()+agentapi.PathSlots, bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("PUT /slots: %s", resp.Status)
		}
		return json.NewDecoder(resp.Body).Decode(&out)
	})
	return out
}

func post(t *testing.T, url, token string, body any) int {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (ti *testInstance) waitState(t *testing.T, token string, want agentapi.State) *agentapi.Status {
	t.Helper()
	var st *agentapi.Status
	waitUntil(t, 90*time.Second, string(want), func() error {
		var err error
		if st, err = ti.status(token); err != nil {
			return err
		}
		if st.State != want {
			return fmt.Errorf("state %s: %s", st.State, st.Message)
		}
		return nil
	})
	return st
}

func (ti *testInstance) waitStreaming(t *testing.T, token string) *agentapi.Status {
	t.Helper()
	var st *agentapi.Status
	waitUntil(t, 90*time.Second, ti.cfg.PodName+" to stream", func() error {
		var err error
		if st, err = ti.status(token); err != nil {
			return err
		}
		if st.Role != agentapi.RoleReplica || st.WALReceiverStatus != "streaming" || !st.Ready {
			return fmt.Errorf("standby %s: state %s receiver %q ready %v %s", ti.cfg.PodName, st.State, st.WALReceiverStatus, st.Ready, st.Error)
		}
		return nil
	})
	return st
}

func countItems(t *testing.T, port int, password string) (int, error) {
	t.Helper()
	c, err := appConn(context.Background(), port, password, testAppDB)
	if err != nil {
		return 0, err
	}
	defer c.Close(context.Background())
	var n int
	err = c.QueryRow(context.Background(), "SELECT count(*) FROM items").Scan(&n)
	return n, err
}

func execApp(t *testing.T, port int, password, sql string) {
	t.Helper()
	c, err := appConn(context.Background(), port, password, testAppDB)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// The data-safety guarantees of the agent, against real PostgreSQL: identity,
// slots, re-clone, in-place restart, password rotation and rebuilding a primary
// whose volume was lost.
func TestDataSafety(t *testing.T) {
	root := testRoot(t)
	s := newSecrets(t, root)
	pPort, sPort := testenv.FreePort(t), testenv.FreePort(t)
	parent := t // instances started in subtests outlive them

	// Another cluster, to have a foreign data directory at hand.
	other := startInstance(t, s, "other", "other-0", testenv.FreePort(t), 0)
	waitForAppLogin(t, other.cfg.Port, s.appPassword)
	foreignID := other.mustStatus(t, s.token).SystemIdentifier
	if err := other.stop(); err != nil {
		t.Fatal(err)
	}

	primary := startInstance(t, s, "primary", "db-0", pPort, pPort)
	waitForAppLogin(t, pPort, s.appPassword)
	var systemID string
	t.Run("a new primary reports its identity, version and that it ran initdb", func(t *testing.T) {
		// Readiness follows the probe loop's next reading (every 500 ms).
		waitUntil(t, 10*time.Second, "the primary to report ready", func() error {
			if st := primary.mustStatus(t, s.token); !st.Ready {
				return fmt.Errorf("not ready: %s", st.Message)
			}
			return nil
		})
		st := primary.mustStatus(t, s.token)
		major := mustAtoi(t, serverMajor(t))
		if st.SystemIdentifier == "" || st.SystemIdentifier == foreignID || !st.Bootstrapped || st.DataVersion != major || st.BinaryVersion != major || st.State != agentapi.StateRunning || !st.Ready {
			t.Fatalf("status %+v", st)
		}
		systemID = st.SystemIdentifier
		// What the operator does once it recorded the identity.
		writeTestFile(t, filepath.Join(s.internal, agentapi.InternalSystemIDFile), systemID)
	})
	execApp(t, pPort, s.appPassword, "CREATE TABLE items (id int PRIMARY KEY, body text); INSERT INTO items SELECT g, 'row' FROM generate_series(1, 100) g")

	t.Run("slots: created, reported, dropped; only on the primary", func(t *testing.T) {
		got := setSlots(t, primary, s.token, agentapi.SlotName("db-1"), agentapi.SlotName("db-2"))
		if len(got) != 2 || got[0].Name != "pgop_db_1" || got[1].Name != "pgop_db_2" || got[0].RestartLSN == "" || got[0].Active {
			t.Fatalf("slots after create: %+v", got)
		}
		got = setSlots(t, primary, s.token, agentapi.SlotName("db-1"))
		if len(got) != 1 || got[0].Name != "pgop_db_1" {
			t.Fatalf("slots after dropping db-2: %+v", got)
		}
		if st := primary.mustStatus(t, s.token); len(st.Slots) != 1 || st.OldestWALLSN == "" || st.WALSegmentSize != 16<<20 {
			t.Errorf("primary status slots %+v oldest %q segment %d", st.Slots, st.OldestWALLSN, st.WALSegmentSize)
		}
		if code, _ := primary.get(agentapi.PathSlots, s.token); code != http.StatusMethodNotAllowed {
			t.Errorf("GET /slots = %d", code)
		}
		b, _ := json.Marshal(agentapi.SlotsRequest{Names: []string{"pgop_x; DROP"}})
		req, _ := http.NewRequest(http.MethodPut, primary.baseURL()+agentapi.PathSlots, bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+s.token)
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode == http.StatusOK {
			t.Errorf("an invalid slot name was accepted: %v", err)
		}
	})

	standby := startInstance(t, s, "standby", "db-1", sPort, pPort)
	t.Run("a standby clones and streams through its slot", func(t *testing.T) {
		st := standby.waitStreaming(t, s.token)
		if st.SystemIdentifier != systemID || st.Bootstrapped {
			t.Errorf("standby identity %q bootstrapped %v", st.SystemIdentifier, st.Bootstrapped)
		}
		waitUntil(t, 30*time.Second, "the slot in use", func() error {
			ps := primary.mustStatus(t, s.token)
			if len(ps.Slots) != 1 || !ps.Slots[0].Active {
				return fmt.Errorf("slots %+v", ps.Slots)
			}
			return nil
		})
	})

	t.Run("a standby with a foreign data directory is re-cloned", func(t *testing.T) {
		foreign := filepath.Join(root, "foreign", "data", "pgdata")
		if err := os.MkdirAll(filepath.Dir(foreign), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(other.cfg.PGData, foreign); err != nil {
			t.Fatal(err)
		}
		if id, _ := postgres.ReadSystemID(foreign); id != foreignID {
			t.Fatalf("foreign data directory identity %s", id)
		}
		setSlots(t, primary, s.token, agentapi.SlotName("db-1"), agentapi.SlotName("foreign-2"))
		in := startInstance(t, s, "foreign", "foreign-2", testenv.FreePort(t), pPort)
		st := in.waitStreaming(t, s.token)
		if st.SystemIdentifier != systemID {
			t.Errorf("re-cloned standby identity %s, want %s", st.SystemIdentifier, systemID)
		}
		if n, err := countItems(t, in.cfg.Port, s.appPassword); err != nil || n != 100 {
			t.Errorf("rows on the re-cloned standby: %d %v", n, err)
		}
		if err := in.stop(); err != nil {
			t.Error(err)
		}
		setSlots(t, primary, s.token, agentapi.SlotName("db-1"))
	})

	t.Run("postgres killed with SIGKILL is restarted in place by the agent, data intact", func(t *testing.T) {
		pid, ok := lockFilePID(primary.agent.pidFile())
		if !ok || pid <= 0 {
			t.Fatalf("postmaster.pid: %d %v", pid, ok)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 60*time.Second, "postgres back", func() error {
			st, err := primary.status(s.token)
			if err != nil {
				return err
			}
			if !st.Writable || !st.Ready {
				return fmt.Errorf("state %s writable %v: %s", st.State, st.Writable, st.Error)
			}
			if p, _ := lockFilePID(primary.agent.pidFile()); p == pid {
				return fmt.Errorf("still the old postmaster %d", pid)
			}
			return nil
		})
		if n, err := countItems(t, pPort, s.appPassword); err != nil || n != 100 {
			t.Errorf("rows after the restart: %d %v", n, err)
		}
		select {
		case err := <-primary.done:
			t.Fatalf("the agent exited: %v", err)
		default:
		}
		standby.waitStreaming(t, s.token)
	})

	t.Run("a changed application password is applied without a restart", func(t *testing.T) {
		const rotated = "rotated-Pa55word-2"
		writeTestFile(t, filepath.Join(s.credentials, agentapi.CredentialsPasswordFile), rotated)
		waitUntil(t, 30*time.Second, "the new password to log in", func() error {
			c, err := appConn(context.Background(), pPort, rotated, testAppDB)
			if err != nil {
				return err
			}
			return c.Close(context.Background())
		})
		if c, err := appConn(context.Background(), pPort, s.appPassword, testAppDB); err == nil {
			c.Close(context.Background())
			t.Error("the old password still logs in")
		}
		s.appPassword = rotated
	})

	t.Run("a changed agent token is accepted at once and the old one for a grace period", func(t *testing.T) {
		old := s.token
		writeTestFile(t, filepath.Join(s.internal, agentapi.InternalAgentTokenFile), "new-token-abcdefghij")
		waitUntil(t, 30*time.Second, "the new token", func() error {
			_, err := primary.status("new-token-abcdefghij")
			return err
		})
		if _, err := primary.status(old); err != nil {
			t.Errorf("the previous token was refused during the grace period: %v", err)
		}
		s.token = "new-token-abcdefghij"
	})

	t.Run("a standby whose WAL was removed is re-cloned on request and streams again", func(t *testing.T) {
		if err := standby.stop(); err != nil {
			t.Fatal(err)
		}
		setSlots(t, primary, s.token) // scaled down: its slot goes
		before := primary.mustStatus(t, s.token).OldestWALLSN
		// Write WAL well past wal_keep_size (64MB), switching segments, then
		// checkpoint twice so the old segments are removed.
		writeWAL(t, primary, s, 1000, 8)
		ps := primary.mustStatus(t, s.token)
		if ps.OldestWALLSN == before {
			t.Fatalf("the primary kept all its WAL (oldest %s)", before)
		}
		setSlots(t, primary, s.token, agentapi.SlotName("db-1")) // scaled back up
		standby = startInstance(parent, s, "standby", "db-1", sPort, pPort)
		var st *agentapi.Status
		waitUntil(t, 60*time.Second, "the standby to run without streaming", func() error {
			var err error
			if st, err = standby.status(s.token); err != nil {
				return err
			}
			if st.State != agentapi.StateRunning || !st.Running || st.ReplayLSN == "" {
				return fmt.Errorf("state %s running %v", st.State, st.Running)
			}
			return nil
		})
		time.Sleep(2 * time.Second)
		st = standby.mustStatus(t, s.token)
		ps = primary.mustStatus(t, s.token)
		if st.WALReceiverStatus == "streaming" || st.Ready {
			t.Fatalf("the standby streams although its WAL is gone: %+v", st)
		}
		if !NeedsWALThatIsGone(agentapi.LaterLSN(st.ReplayLSN, st.ReceiveLSN), ps.OldestWALLSN, ps.WALSegmentSize) {
			t.Fatalf("standby at %s/%s, primary oldest WAL %s: not detected as gone", st.ReplayLSN, st.ReceiveLSN, ps.OldestWALLSN)
		}
		waitUntil(t, 30*time.Second, "the standby to report its WAL missing", func() error {
			if st := standby.mustStatus(t, s.token); !st.WALMissing {
				return fmt.Errorf("walMissing false (receiver %q)", st.WALReceiverStatus)
			}
			return nil
		})
		if code := post(t, standby.baseURL()+agentapi.PathReclone, s.token, struct{}{}); code != http.StatusAccepted {
			t.Fatalf("POST /reclone = %d", code)
		}
		standby.waitStreaming(t, s.token)
		want, _ := countItems(t, pPort, s.appPassword)
		waitUntil(t, 30*time.Second, "equal rows", func() error {
			n, err := countItems(t, sPort, s.appPassword)
			if err != nil || n != want {
				return fmt.Errorf("standby rows %d (%w), primary %d", n, err, want)
			}
			return nil
		})
		if code := post(t, primary.baseURL()+agentapi.PathReclone, s.token, struct{}{}); code != http.StatusConflict {
			t.Errorf("POST /reclone on the primary = %d, want 409", code)
		}
	})

	t.Run("a primary whose volume was lost refuses initdb and is rebuilt from the standby", func(t *testing.T) {
		want, _ := countItems(t, pPort, s.appPassword)
		if err := primary.stop(); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(filepath.Dir(primary.cfg.PGData)); err != nil {
			t.Fatal(err)
		}
		cfgPeer := func(pod string) (string, int) { return "127.0.0.1", sPort }
		primary = startInstanceWith(parent, s, "primary", "db-0", pPort, pPort, func(c *Config) { c.PeerAddress = cfgPeer })
		st := primary.waitState(t, s.token, agentapi.StateDataMissing)
		if !strings.Contains(st.Message, systemID) || st.Running || st.Ready {
			t.Errorf("refusing primary status %+v", st)
		}
		time.Sleep(time.Second)
		if _, err := os.Stat(filepath.Join(primary.cfg.PGData, "PG_VERSION")); !os.IsNotExist(err) {
			t.Fatalf("a data directory was created: %v", err)
		}
		if code, _ := primary.get(agentapi.PathReadyz, ""); code != http.StatusServiceUnavailable {
			t.Errorf("readiness of a refusing primary = %d", code)
		}
		if code, _ := primary.get(agentapi.PathHealthz, ""); code != http.StatusOK {
			t.Errorf("liveness of a refusing primary = %d (it must not crash-loop)", code)
		}
		if code := post(t, primary.baseURL()+agentapi.PathRecover, s.token, agentapi.RecoverRequest{Source: "other-1"}); code != http.StatusBadRequest {
			t.Errorf("recover from another StatefulSet's pod = %d, want 400", code)
		}
		if code := post(t, primary.baseURL()+agentapi.PathRecover, s.token, agentapi.RecoverRequest{Source: "db-1"}); code != http.StatusAccepted {
			t.Fatalf("POST /recover = %d", code)
		}
		waitUntil(t, 120*time.Second, "the rebuilt primary to accept writes", func() error {
			st, err := primary.status(s.token)
			if err != nil {
				return err
			}
			if st.Role != agentapi.RolePrimary || !st.Writable || !st.Ready {
				return fmt.Errorf("state %s role %s writable %v: %s %s", st.State, st.Role, st.Writable, st.Message, st.Error)
			}
			if st.SystemIdentifier != systemID || st.Timeline < 2 {
				return fmt.Errorf("identity %s timeline %d", st.SystemIdentifier, st.Timeline)
			}
			return nil
		})
		if n, err := countItems(t, pPort, s.appPassword); err != nil || n != want {
			t.Errorf("rows on the rebuilt primary: %d (%v), want %d", n, err, want)
		}
		execApp(t, pPort, s.appPassword, "INSERT INTO items VALUES (-1, 'after recovery')")
		setSlots(t, primary, s.token, agentapi.SlotName("db-1"))
		standby.waitStreaming(t, s.token)
		waitUntil(t, 30*time.Second, "the standby to follow the new timeline", func() error {
			n, err := countItems(t, sPort, s.appPassword)
			if err != nil || n != want+1 {
				return fmt.Errorf("standby rows %d (%w), want %d", n, err, want+1)
			}
			return nil
		})
	})
}

func startInstanceWith(t *testing.T, s testSecrets, name, pod string, port, primaryPort int, mod func(*Config)) *testInstance {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(s.dir, name), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(s, name, pod, port, primaryPort)
	mod(&cfg)
	ctx, cancel := context.WithCancel(context.Background())
	ti := &testInstance{t: t, agent: NewAgent(cfg), cancel: cancel, done: make(chan error, 1), cfg: cfg}
	go func() { ti.done <- ti.agent.Run(ctx) }()
	t.Cleanup(func() { _ = ti.stop() })
	return ti
}

func TestStaleLockFiles(t *testing.T) {
	dir := t.TempDir()
	a := NewAgent(Config{PGData: filepath.Join(dir, "pgdata"), RunDir: dir, Port: 5432, PodName: "db-0"})
	if err := os.MkdirAll(a.cfg.PGData, 0o700); err != nil {
		t.Fatal(err)
	}
	// A lock naming a live process that is not postgres (PID reuse in a new
	// container; here this test binary) is stale and removed, with its socket.
	writeTestFile(t, a.pidFile(), "999999999\n/pgdata\n")
	lock := filepath.Join(dir, ".s.PGSQL.5432.lock")
	writeTestFile(t, lock, strconv.Itoa(os.Getpid())+"\n")
	writeTestFile(t, filepath.Join(dir, ".s.PGSQL.5432"), "")
	a.cleanStaleLocks()
	for _, f := range []string{lock, filepath.Join(dir, ".s.PGSQL.5432")} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s not removed: %v", filepath.Base(f), err)
		}
	}
	// A lock naming a dead PID is PostgreSQL's to judge (it also checks shared
	// memory still attached by orphaned backends).
	if _, err := os.Stat(a.pidFile()); err != nil {
		t.Errorf("postmaster.pid of a dead PID was removed: %v", err)
	}
	if processIsPostgres(os.Getpid()) || processIsPostgres(999999999) {
		t.Error("processIsPostgres")
	}
}

// A standby that was down while more than max_slot_wal_keep_size of WAL was
// written loses its slot's WAL (wal_status "lost"): the primary reports it, the
// standby re-clones on request, and the slot is recreated so it streams again.
func TestLostSlotReclonesAndIsRecreated(t *testing.T) {
	root := testRoot(t)
	s := newSecrets(t, root)
	pPort, sPort := testenv.FreePort(t), testenv.FreePort(t)
	primary := startInstanceWith(t, s, "primary", "db-0", pPort, pPort, func(c *Config) { c.MaxSlotWALKeepSize = "32MB" })
	waitForAppLogin(t, pPort, s.appPassword)
	execApp(t, pPort, s.appPassword, "CREATE TABLE items (id int, body text)")
	setSlots(t, primary, s.token, agentapi.SlotName("db-1"))
	standby := startInstance(t, s, "standby", "db-1", sPort, pPort)
	standby.waitStreaming(t, s.token)
	if err := standby.stop(); err != nil {
		t.Fatal(err)
	}
	writeWAL(t, primary, s, 0, 6)
	ps := primary.mustStatus(t, s.token)
	if len(ps.Slots) != 1 || ps.Slots[0].WALStatus != "lost" {
		t.Fatalf("slot after writing past max_slot_wal_keep_size: %+v", ps.Slots)
	}
	standby = startInstance(t, s, "standby", "db-1", sPort, pPort)
	waitUntil(t, 60*time.Second, "the standby to run", func() error {
		st, err := standby.status(s.token)
		if err != nil || st.State != agentapi.StateRunning || !st.Running {
			return fmt.Errorf("standby %+v %w", st, err)
		}
		return nil
	})
	if code := post(t, standby.baseURL()+agentapi.PathReclone, s.token, struct{}{}); code != http.StatusAccepted {
		t.Fatalf("POST /reclone = %d", code)
	}
	// What the operator does when it sees the lost, inactive slot.
	got := setSlots(t, primary, s.token, agentapi.SlotName("db-1"))
	if len(got) != 1 || got[0].WALStatus == "lost" {
		t.Fatalf("slot not recreated: %+v", got)
	}
	standby.waitStreaming(t, s.token)
	want, _ := countItems(t, pPort, s.appPassword)
	waitUntil(t, 30*time.Second, "equal rows", func() error {
		if n, err := countItems(t, sPort, s.appPassword); err != nil || n != want {
			return fmt.Errorf("standby rows %d (%w), want %d", n, err, want)
		}
		return nil
	})
}

// writeWAL inserts batches of 10,000 rows of ~2 kB into items from id first (about
// 20 MB of WAL each), then switches segments and checkpoints so that WAL no slot
// or wal_keep_size holds is removed.
func writeWAL(t *testing.T, primary *testInstance, s testSecrets, first, batches int) {
	t.Helper()
	for i := 0; i < batches; i++ {
		from := first + i*10000
		execApp(t, primary.cfg.Port, s.appPassword, fmt.Sprintf("INSERT INTO items SELECT g, repeat('x', 2000) FROM generate_series(%d, %d) g", from, from+9999))
	}
	c, err := primary.agent.connect(context.Background(), "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	for i := 0; i < 3; i++ {
		if _, err := c.Exec(context.Background(), "SELECT pg_switch_wal(); CHECKPOINT"); err != nil {
			t.Fatal(err)
		}
	}
}
