package instance

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/example/postgres-operator/internal/testenv"
)

// escalate is what an attacker with the application role plants: a function
// that, when the superuser runs it, makes the application role a superuser (the
// step before COPY … TO PROGRAM). It swallows its own failure, so that whatever
// runs it as the application role goes on unaware.
const escalate = `CREATE OR REPLACE FUNCTION public.escalate() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	BEGIN
		EXECUTE 'ALTER ROLE ` + testAppUser + ` SUPERUSER';
	EXCEPTION WHEN OTHERS THEN NULL;
	END;
	RETURN true;
END $$`

func isSuperuser(t *testing.T, ti *testInstance) bool {
	t.Helper()
	c, err := ti.agent.connect(context.Background(), "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var super bool
	if err := c.QueryRow(context.Background(), "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = $1", testAppUser).Scan(&super); err != nil {
		t.Fatal(err)
	}
	return super
}

func superExec(t *testing.T, ti *testInstance, db, sql string) {
	t.Helper()
	c, err := ti.agent.connect(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func appExec(t *testing.T, port int, password, db, sql string) error {
	t.Helper()
	c, err := appConn(context.Background(), port, password, db)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(context.Background(), sql)
	return err
}

// rotatePassword writes a new application password and waits until the agent
// applied it: proof that ensureRoles ran again after whatever the test changed.
func rotatePassword(t *testing.T, s *testSecrets, port int, password string) {
	t.Helper()
	writeTestFile(t, filepath.Join(s.credentials, agentapi.CredentialsPasswordFile), password)
	s.appPassword = password
	waitForAppLogin(t, port, password)
}

// dumpAppDB returns a zstd-compressed custom-format dump of the application
// database made by the application role (what a backup Job makes), and its sha256.
func dumpAppDB(t *testing.T, port int, password string) ([]byte, string, int64) {
	t.Helper()
	bins, err := postgres.FindBinaries("")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bins.PgDump, "--format=custom", "--compress=0", "--no-password",
		fmt.Sprintf("--dbname=host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable", port, testAppUser, testAppDB))
	pass := filepath.Join(t.TempDir(), "pgpass")
	if err := os.WriteFile(pass, []byte(postgres.PgpassLine(testAppUser, password)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), "PGPASSFILE="+pass)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("pg_dump: %v: %s", err, stderr.String())
	}
	var z bytes.Buffer
	enc, _ := zstd.NewWriter(&z)
	if _, err := enc.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}
	enc.Close()
	sum := sha256.Sum256(z.Bytes())
	return z.Bytes(), hex.EncodeToString(sum[:]), int64(out.Len())
}

// TestTheApplicationRoleCannotBecomeSuperuser performs, on a real PostgreSQL,
// the escalation a review found (the class of CloudNativePG's CVE-2026-55769):
// edit the credentials Secret so that the agent hands the maintenance database to
// the application role, plant objects the superuser's sessions would run, and
// restore an archive whose data load calls the role's function. Each path must
// leave the application role without superuser.
func TestTheApplicationRoleCannotBecomeSuperuser(t *testing.T) {
	root := testRoot(t)
	s := newSecrets(t, root)
	port := testenv.FreePort(t)
	primary := startInstance(t, s, "primary", "db-0", port, port)
	waitForAppLogin(t, port, s.appPassword)
	ctx := context.Background()

	t.Run("a Secret naming the maintenance database and the superuser changes no owner", func(t *testing.T) {
		writeTestFile(t, filepath.Join(s.credentials, agentapi.CredentialsDatabaseFile), "postgres")
		writeTestFile(t, filepath.Join(s.credentials, agentapi.CredentialsUsernameFile), "postgres")
		rotatePassword(t, &s, port, "rotated-1")
		c, err := primary.agent.connect(ctx, "postgres")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		var owner string
		if err := c.QueryRow(ctx, "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database WHERE datname = 'postgres'").Scan(&owner); err != nil {
			t.Fatal(err)
		}
		if owner != "postgres" {
			t.Errorf("the maintenance database now belongs to %s", owner)
		}
		var superPw bool
		if err := c.QueryRow(ctx, "SELECT rolpassword IS NOT NULL FROM pg_catalog.pg_authid WHERE rolname = 'postgres'").Scan(&superPw); err != nil {
			t.Fatal(err)
		}
		if superPw {
			t.Error("the superuser was given the Secret's password")
		}
		if err := appExec(t, port, s.appPassword, "postgres", "CREATE TABLE public.postgres_operator_heartbeat (id int)"); err == nil {
			t.Error("the application role created a table in the maintenance database")
		}
		if isSuperuser(t, primary) {
			t.Fatal("the application role is a superuser")
		}
	})

	t.Run("objects planted where the superuser works are never run by it", func(t *testing.T) {
		// As if the application role owned the maintenance database (what the
		// Secret edit achieved before): it sets the database's search_path to
		// put its schema first and shadows the functions the agent calls, and
		// recreates the old heartbeat table with a trigger.
		superExec(t, primary, "postgres", "ALTER DATABASE postgres OWNER TO "+testAppUser)
		t.Cleanup(func() {
			superExec(t, primary, "postgres", "ALTER DATABASE postgres OWNER TO postgres")
			superExec(t, primary, "postgres", "ALTER DATABASE postgres RESET search_path")
		})
		plant := escalate + `;
			ALTER DATABASE postgres SET search_path = public, pg_catalog;
			CREATE FUNCTION public.pg_is_in_recovery() RETURNS boolean LANGUAGE sql AS 'SELECT NOT public.escalate()';
			CREATE FUNCTION public.pg_current_wal_lsn() RETURNS pg_lsn LANGUAGE sql AS 'SELECT CASE WHEN public.escalate() THEN ''0/0''::pg_lsn END';
			CREATE FUNCTION public.pg_current_xact_id() RETURNS xid8 LANGUAGE sql AS 'SELECT CASE WHEN public.escalate() THEN ''1''::xid8 END';
			CREATE FUNCTION public.pg_get_userbyid(oid) RETURNS name LANGUAGE sql AS 'SELECT CASE WHEN public.escalate() THEN ''postgres''::name END';
			CREATE FUNCTION public.current_setting(text) RETURNS text LANGUAGE sql AS 'SELECT CASE WHEN public.escalate() THEN ''150000'' END';
			CREATE TABLE public.postgres_operator_heartbeat (id int PRIMARY KEY, ts timestamptz NOT NULL);
			CREATE FUNCTION public.hb() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM public.escalate(); RETURN NEW; END $$;
			CREATE TRIGGER hb BEFORE INSERT OR UPDATE ON public.postgres_operator_heartbeat FOR EACH ROW EXECUTE FUNCTION public.hb()`
		if err := appExec(t, port, s.appPassword, "postgres", plant); err != nil {
			t.Fatalf("planting: %v", err)
		}
		// The status (as the monitoring role and the superuser), the write check,
		// the role set-up and the probes, several times.
		for i := 0; i < 3; i++ {
			st := primary.mustStatus(t, s.token)
			if !st.Writable || st.Role != agentapi.RolePrimary {
				t.Errorf("status under the planted objects: role %s writable %v (%s)", st.Role, st.Writable, st.WriteError)
			}
			primary.get(agentapi.PathReadyz, "")
			// Slots are managed in a superuser session.
			setSlots(t, primary, s.token, agentapi.SlotName("db-1"))
		}
		// (Checked before the role set-up runs again: it would reset the
		// attribute with NOSUPERUSER.)
		if isSuperuser(t, primary) {
			t.Fatal("the application role became a superuser through an object the agent ran")
		}
		writeTestFile(t, filepath.Join(s.credentials, agentapi.CredentialsPasswordFile), "rotated-2")
		s.appPassword = "rotated-2"
		waitUntil(t, 30*time.Second, "the password change to be applied", func() error {
			if isSuperuser(t, primary) {
				return nil
			}
			c, err := appConn(ctx, port, "rotated-2", testAppDB)
			if err != nil {
				return err
			}
			return c.Close(ctx)
		})
		if isSuperuser(t, primary) {
			t.Fatal("the application role became a superuser through the role set-up")
		}
	})

	t.Run("a restored archive's data is loaded as its owner, spooled or streamed", func(t *testing.T) {
		if err := appExec(t, port, s.appPassword, testAppDB, escalate+`;
			CREATE TABLE public.guarded (id int PRIMARY KEY, CHECK (public.escalate()));
			INSERT INTO public.guarded SELECT generate_series(1, 10)`); err != nil {
			t.Fatal(err)
		}
		art, sum, raw := dumpAppDB(t, port, s.appPassword)
		for i, jobs := range []int{2, 1} {
			res, err := agentapi.NewClient(nil, s.token).Restore(ctx, primary.baseURL(), agentapi.RestoreRequest{
				ID: fmt.Sprintf("sec%d", i), SHA256: sum, UncompressedBytes: raw, Jobs: jobs}, bytes.NewReader(art))
			if err != nil {
				t.Fatalf("restore with %d jobs: %v", jobs, err)
			}
			if res.Jobs != jobs {
				t.Errorf("restore ran with %d jobs, want %d", res.Jobs, jobs)
			}
			var n int
			c, err := appConn(ctx, port, s.appPassword, testAppDB)
			if err != nil {
				t.Fatal(err)
			}
			err = c.QueryRow(ctx, "SELECT count(*) FROM public.guarded").Scan(&n)
			c.Close(ctx)
			if err != nil || n != 10 {
				t.Errorf("restored rows = %d (%v), want 10", n, err)
			}
			if isSuperuser(t, primary) {
				t.Fatalf("the application role became a superuser while its archive was restored with %d jobs", jobs)
			}
		}
	})
}

// TestProbesOpenNoBackend: readiness is answered from the probe loop's reading,
// so a burst of unauthenticated probe requests does not raise the number of
// backends (what exhausted connections before).
func TestProbesOpenNoBackend(t *testing.T) {
	root := testRoot(t)
	s := newSecrets(t, root)
	port := testenv.FreePort(t)
	primary := startInstance(t, s, "primary", "db-0", port, port)
	waitForAppLogin(t, port, s.appPassword)
	waitUntil(t, 30*time.Second, "readiness", func() error {
		if code, _ := primary.get(agentapi.PathReadyz, ""); code != 200 {
			return fmt.Errorf("readyz %d", code)
		}
		return nil
	})
	c, err := primary.agent.connect(context.Background(), "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	backends := func() int {
		var n int
		if err := c.QueryRow(context.Background(), "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := backends()
	stop := make(chan struct{})
	peak := make(chan int)
	go func() {
		p := 0
		for {
			select {
			case <-stop:
				peak <- p
				return
			default:
				p = max(p, backends())
			}
		}
	}()
	errs := make(chan error, 200)
	for i := 0; i < 200; i++ {
		go func() {
			code, body := primary.get(agentapi.PathReadyz, "")
			if code != 200 {
				errs <- fmt.Errorf("readyz %d %s", code, body)
				return
			}
			errs <- nil
		}()
	}
	for i := 0; i < 200; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	close(stop)
	if p := <-peak; p > before+1 {
		t.Errorf("200 probe requests raised the backends from %d to %d", before, p)
	}
	// The loop switches to the monitoring role at its next reading once the
	// role exists.
	waitUntil(t, 10*time.Second, "the probe loop to read as the monitoring role", func() error {
		var monitorConns int
		if err := c.QueryRow(context.Background(), "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = $1", agentapi.MonitorUser).Scan(&monitorConns); err != nil {
			return err
		}
		if monitorConns < 1 {
			return fmt.Errorf("no %s session", agentapi.MonitorUser)
		}
		return nil
	})
}
