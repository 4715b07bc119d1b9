package instance

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/example/postgres-operator/internal/testenv"
)

// The restore itself is tested end to end with real artifacts in
// internal/backup (restore_test.go); this file tests the agent's own housekeeping.

// TestExpiredPreRestoreCopiesAreDroppedAndOthersKept: a copy is dropped once the
// time in its comment has passed; a copy not yet due, one whose comment a user
// changed (to keep it), and unrelated databases stay.
func TestExpiredPreRestoreCopiesAreDroppedAndOthersKept(t *testing.T) {
	root := testRoot(t)
	s := newSecrets(t, root)
	ctx := context.Background()
	port := testenv.FreePort(t)
	primary := startInstance(t, s, "primary", "db-0", port, port)
	waitForAppLogin(t, port, s.appPassword)
	conn, err := primary.agent.connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	dbs := map[string]string{
		"appdb" + agentapi.PreRestoreInfix + "20261201t000000": preRestoreComment + now.Add(-time.Minute).Format(time.RFC3339),
		"appdb" + agentapi.PreRestoreInfix + "20261202t000000": preRestoreComment + now.Add(time.Hour).Format(time.RFC3339),
		"appdb" + agentapi.PreRestoreInfix + "20261130t000000": "kept by hand",
		"unrelated": preRestoreComment + now.Add(-time.Hour).Format(time.RFC3339),
	}
	for name, comment := range dbs {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+postgres.QuoteIdentifier(name)); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, fmt.Sprintf("COMMENT ON DATABASE %s IS %s", postgres.QuoteIdentifier(name), postgres.QuoteLiteral(comment))); err != nil {
			t.Fatal(err)
		}
	}
	if err := primary.agent.dropExpiredCopiesOnce(ctx, now); err != nil {
		t.Fatal(err)
	}
	for name := range dbs {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if want := name != "appdb"+agentapi.PreRestoreInfix+"20261201t000000"; exists != want {
			t.Errorf("%s exists = %t, want %t", name, exists, want)
		}
	}
}

// Rule 6: a restore's swap closes the application database (ALLOW_CONNECTIONS
// false, committed before the swap's transaction) and only the process that
// closed it opened it again: a primary killed at that instant, or a failover,
// left it refusing every connection for good (reproduced in the cluster). Here
// the database is left as such a swap leaves it and the agent restarts:
// PostgreSQL's next start as primary opens it again.
func TestAnInterruptedSwapDoesNotLeaveTheApplicationDatabaseClosed(t *testing.T) {
	root := testRoot(t)
	s := newSecrets(t, root)
	ctx := context.Background()
	port := testenv.FreePort(t)
	primary := startInstance(t, s, "primary", "db-0", port, port)
	waitForAppLogin(t, port, s.appPassword)
	conn, err := primary.agent.connect(ctx, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, "ALTER DATABASE "+testAppDB+" WITH ALLOW_CONNECTIONS false")
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := appConn(ctx, port, s.appPassword, testAppDB); err == nil {
		c.Close(ctx)
		t.Fatal("the closed application database accepted a connection: the test proves nothing")
	}
	if err := primary.stop(); err != nil {
		t.Fatal(err)
	}
	startInstance(t, s, "primary", "db-0", port, port)
	waitForAppLogin(t, port, s.appPassword)
}
