package instance

import (
	"fmt"
	"strconv"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/example/postgres-operator/internal/walarchive"
)

// startAction is what the agent does next with its data directory.
type startAction string

const (
	actionInitdb         startAction = "initdb"
	actionClone          startAction = "clone"
	actionReclone        startAction = "reclone"
	actionStart          startAction = "start"
	actionRefuseMissing  startAction = "refuse-missing"
	actionRefuseForeign  startAction = "refuse-foreign"
	actionRefuseVersion  startAction = "refuse-version"
	actionRecoverPrimary startAction = "recover-primary"
	actionRecoverArchive startAction = "recover-archive"
	actionWaitRecovery   startAction = "refuse-until-recovery-source"
)

// startFacts is what the start-up decision depends on.
type startFacts struct {
	// Primary: this instance is the target primary named by the Lease.
	Primary bool
	// HasData: PGDATA holds a complete data directory (PG_VERSION and pg_control).
	HasData bool
	// DataSystemID is the system identifier in PGDATA's pg_control ("" if no data).
	DataSystemID string
	// ExpectedSystemID is the identifier the operator recorded for the Database, ""
	// while the Database was never initialised.
	ExpectedSystemID string
	// DataMajor is PGDATA's PG_VERSION, BinaryMajor the image's PostgreSQL major.
	DataMajor, BinaryMajor int
	// RecoverFrom is a standby pod the operator asked a primary with missing data
	// to be rebuilt from.
	RecoverFrom string
	// RecloneRequested: the operator asked this standby to re-clone (its WAL is gone).
	RecloneRequested bool
	// Recovery is the point-in-time recovery a new Database bootstraps by
	// (nil: initdb).
	Recovery *walarchive.RecoveryRequest
	// RecoveryExpected: the Database bootstraps by a point-in-time recovery
	// (its source directory is configured), so it never runs initdb.
	RecoveryExpected bool
}

// planStart decides what the agent does with its data directory. It never creates
// a new cluster for a Database that was initialised, never deletes a primary's data
// and never starts PostgreSQL on a data directory of another major version.
func planStart(f startFacts) (startAction, string) {
	if !f.HasData {
		switch {
		case !f.Primary:
			return actionClone, "empty data directory: cloning the primary"
		case f.ExpectedSystemID == "" && f.Recovery != nil:
			return actionRecoverArchive, fmt.Sprintf("empty data directory and the Database was never initialised: recovering cluster %s from its archive to %s",
				f.Recovery.SystemID, f.Recovery)
		case f.ExpectedSystemID == "" && f.RecoveryExpected:
			return actionWaitRecovery, "empty data directory and the Database bootstraps by a point-in-time recovery: waiting for its source and target " +
				"(the <name>-recovery-source Secret); never initdb"
		case f.ExpectedSystemID == "":
			return actionInitdb, "empty data directory and the Database was never initialised: initdb"
		case f.RecoverFrom != "":
			return actionRecoverPrimary, fmt.Sprintf("rebuilding the primary's missing data directory from standby %s", f.RecoverFrom)
		default:
			return actionRefuseMissing, fmt.Sprintf("the data directory is empty but the Database was initialised (system identifier %s): "+
				"refusing to create a new, empty cluster; the data lives on the standbys", f.ExpectedSystemID)
		}
	}
	if f.DataSystemID == "" {
		// PG_VERSION without a readable pg_control: an interrupted copy or a damaged
		// volume, never a cluster to start or to build on.
		if f.Primary {
			return actionRefuseForeign, "the data directory is unusable (global/pg_control is missing or unreadable): refusing to start"
		}
		return actionReclone, "the data directory is unusable (global/pg_control is missing or unreadable): re-cloning the primary"
	}
	if !f.Primary && f.ExpectedSystemID != "" && f.DataSystemID != f.ExpectedSystemID && f.DataMajor != 0 && f.DataMajor < f.BinaryMajor {
		// Before the version check: after a major upgrade the primary's cluster
		// has a new identifier and a standby's older-major data of the old cluster
		// is of no use. Data of a newer major is never deleted.
		return actionReclone, fmt.Sprintf("the data directory belongs to another cluster (system identifier %s, the Database's is %s): re-cloning the primary",
			f.DataSystemID, f.ExpectedSystemID)
	}
	if f.DataMajor != 0 && f.BinaryMajor != 0 && f.DataMajor != f.BinaryMajor {
		return actionRefuseVersion, fmt.Sprintf("the data directory is PostgreSQL %d but the image runs PostgreSQL %d: not starting; "+
			"set spec.image back to a %d image", f.DataMajor, f.BinaryMajor, f.DataMajor)
	}
	if f.RecloneRequested && !f.Primary {
		return actionReclone, "the operator asked for a re-clone: the WAL this standby needs is gone from the primary"
	}
	if f.ExpectedSystemID != "" && f.DataSystemID != f.ExpectedSystemID {
		if f.Primary {
			return actionRefuseForeign, fmt.Sprintf("the data directory belongs to another cluster (system identifier %s, the Database's is %s): refusing to start",
				f.DataSystemID, f.ExpectedSystemID)
		}
		return actionReclone, fmt.Sprintf("the data directory belongs to another cluster (system identifier %s, the Database's is %s): re-cloning the primary",
			f.DataSystemID, f.ExpectedSystemID)
	}
	return actionStart, "starting PostgreSQL"
}

// refusalState maps a refusing action to the state it is reported as.
func refusalState(a startAction) (agentapi.State, bool) {
	switch a {
	case actionRefuseMissing:
		return agentapi.StateDataMissing, true
	case actionRefuseForeign:
		return agentapi.StateForeignData, true
	case actionRefuseVersion:
		return agentapi.StateVersionMismatch, true
	case actionWaitRecovery:
		return agentapi.StateRecovering, true
	}
	return "", false
}

// parseBinaryMajor reads the major from `postgres -V` output, e.g.
// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)".
func parseBinaryMajor(out string) (int, error) {
	major, _, err := postgres.ParseServerVersion(out)
	return major, err
}

// segmentStartLSN returns the first LSN of a WAL segment file name
// (TTTTTTTTXXXXXXXXYYYYYYYY) for the given segment size.
func segmentStartLSN(name string, segSize uint64) (agentapi.LSN, error) {
	if len(name) != 24 || segSize == 0 {
		return 0, fmt.Errorf("invalid WAL segment name %q", name)
	}
	log, err := strconv.ParseUint(name[8:16], 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid WAL segment name %q", name)
	}
	seg, err := strconv.ParseUint(name[16:24], 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid WAL segment name %q", name)
	}
	segsPerLog := uint64(0x100000000) / segSize
	return agentapi.LSN(log*segsPerLog*segSize + seg*segSize), nil
}

// NeedsWALThatIsGone reports whether a standby that stopped at standbyLSN needs WAL
// older than the oldest segment the primary still has (oldestLSN, the start of its
// oldest WAL file): it can never catch up by streaming and must be re-cloned.
func NeedsWALThatIsGone(standbyLSN, oldestLSN string, segSize uint64) bool {
	s, err1 := agentapi.ParseLSN(standbyLSN)
	o, err2 := agentapi.ParseLSN(oldestLSN)
	if err1 != nil || err2 != nil || segSize == 0 {
		return false
	}
	needed := agentapi.LSN(uint64(s) / segSize * segSize)
	return needed < o
}
