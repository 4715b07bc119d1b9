package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/example/postgres-operator/internal/walarchive"
)

// Mounts of a physical backup Job.
const (
	// ReplicationPasswordDir holds the replication-password file of the
	// Database's internal Secret (the only key mounted).
	ReplicationPasswordDir = "/etc/postgres-operator/replication"
	// DatabaseCADir holds the Database's CA (ca.crt of its credentials
	// Secret), to verify the instance's certificate.
	DatabaseCADir = "/etc/postgres-operator/database-ca"
)

// PhysicalOptions is a physical backup Job's work.
type PhysicalOptions struct {
	// Action is run or delete.
	Action string
	// ArchiveDir is the Database's WAL archive configuration; CABundle the
	// operator image's CA bundle.
	ArchiveDir, CABundle string
	SystemID, BaseName   string
	// Host and Port are the instance to copy (run).
	Host string
	Port int
	// ReplicationPasswordDir and CAFile authenticate to it; RunDir receives
	// the passfile.
	ReplicationPasswordDir, CAFile, RunDir, BinDir string
	// WALTimeout bounds the wait for the backup's WAL to be archived.
	WALTimeout time.Duration
}

// RunPhysical takes (run) or deletes a base backup in the Database's WAL
// archive.
func RunPhysical(ctx context.Context, o PhysicalOptions) (*walarchive.BaseBackup, error) {
	a, err := walarchive.OpenSystem(o.ArchiveDir, o.CABundle, o.SystemID)
	if err != nil {
		return nil, fmt.Errorf("opening the WAL archive: %w", err)
	}
	switch o.Action {
	case "delete":
		return nil, a.DeleteBase(ctx, o.BaseName)
	case "run":
	default:
		return nil, fmt.Errorf("unknown physical backup action %q", o.Action)
	}
	bins, err := postgres.FindBinaries(o.BinDir)
	if err != nil {
		return nil, err
	}
	password, err := readFile(o.ReplicationPasswordDir, agentapi.InternalReplicationPasswordFile)
	if err != nil {
		return nil, err
	}
	if password == "" {
		return nil, errors.New("the replication password is empty")
	}
	if err := os.MkdirAll(o.RunDir, 0o700); err != nil {
		return nil, err
	}
	passfile := filepath.Join(o.RunDir, "replication.pgpass")
	if err := os.WriteFile(passfile, []byte(postgres.PgpassLine(agentapi.ReplicationUser, password)), 0o600); err != nil {
		return nil, err
	}
	defer os.Remove(passfile)
	env := []string{"PGPASSFILE=" + passfile, "PGCONNECT_TIMEOUT=10"}
	if o.CAFile != "" && fileExists(o.CAFile) {
		// The instances' certificate names every pod under the headless
		// Service; a client certificate is not needed.
		none := filepath.Join(o.RunDir, "no-client-cert")
		env = append(env, "PGSSLMODE=verify-full", "PGSSLROOTCERT="+o.CAFile, "PGSSLCERT="+none, "PGSSLKEY="+none)
	} else {
		env = append(env, "PGSSLMODE=prefer")
	}
	b, err := a.TakeBase(ctx, walarchive.BaseOptions{Name: o.BaseName, PgBasebackup: bins.PgBasebackup,
		Source:   walarchive.Source{Host: o.Host, Port: o.Port, User: agentapi.ReplicationUser, Env: env},
		SystemID: o.SystemID, WALTimeout: o.WALTimeout, Poll: 2 * time.Second})
	if err != nil {
		return nil, err
	}
	return &b, nil
}

// printJSON writes v to stdout (the Job's log).
func printJSON(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}
