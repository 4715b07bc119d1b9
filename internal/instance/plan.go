package instance

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/example/postgres-operator/internal/postgres"
)

// State is what an agent is doing; it is reported on /status so that the operator
// (and a human reading the Database's conditions) sees why an instance is not
// serving.
type State string

// The agent's states. The start-up decision between them is planStart.
const (
	// StateStarting: the agent has not decided yet (reading the data directory).
	StateStarting State = "Starting"
	// StateInitializing: initdb of a brand-new cluster (only ever on a Database
	// whose system identifier is not recorded).
	StateInitializing State = "Initializing"
	// StateCloning: pg_basebackup from the primary (a new or re-cloned standby).
	StateCloning State = "Cloning"
	// StateRecovering: a primary whose data was missing is rebuilt from a standby.
	StateRecovering State = "RecoveringPrimary"
	// StateRunning: PostgreSQL is supervised (it may be starting up).
	StateRunning State = "Running"
	// StateRestarting: PostgreSQL exited by itself; the agent restarts it in place
	// after a bounded backoff.
	StateRestarting State = "Restarting"
	// StateDataMissing: the primary's volume holds no data directory although the
	// Database was initialised; the agent refuses to create an empty cluster.
	StateDataMissing State = "DataMissing"
	// StateForeignData: the primary's data directory belongs to another cluster
	// (system identifier differs from the recorded one); the agent refuses to start.
	StateForeignData State = "ForeignData"
	// StateVersionMismatch: the data directory's major version differs from the
	// image's PostgreSQL; the agent does not start PostgreSQL (no crash loop).
	StateVersionMismatch State = "VersionMismatch"
	// StateWaitingForLease: the agent cannot read the primary Lease yet, or it is
	// the target primary and waits for the Lease to be released or to expire, or
	// a former primary waits for a new target before it rewinds.
	StateWaitingForLease State = "WaitingForLease"
	// StatePromoting: a standby that became the target holds the Lease and is
	// being promoted.
	StatePromoting State = "Promoting"
	// StateDemoting: a primary that is no longer the target checkpoints, stops
	// and releases the Lease.
	StateDemoting State = "Demoting"
	// StateFenced: the primary could not renew the Lease within the renew
	// deadline and shut PostgreSQL down immediately; it starts again only as the
	// holder of the Lease, or as a standby of the new primary.
	StateFenced State = "Fenced"
	// StateRewinding: a former primary runs pg_rewind onto the new primary's
	// timeline before it starts as a standby.
	StateRewinding State = "Rewinding"
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
}

// planStart decides what the agent does with its data directory. It never creates
// a new cluster for a Database that was initialised, never deletes a primary's data
// and never starts PostgreSQL on a data directory of another major version.
func planStart(f startFacts) (startAction, string) {
	if !f.HasData {
		switch {
		case !f.Primary:
			return actionClone, "empty data directory: cloning the primary"
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
func refusalState(a startAction) (State, bool) {
	switch a {
	case actionRefuseMissing:
		return StateDataMissing, true
	case actionRefuseForeign:
		return StateForeignData, true
	case actionRefuseVersion:
		return StateVersionMismatch, true
	}
	return "", false
}

// parseBinaryMajor reads the major from `postgres -V` output, e.g.
// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)".
func parseBinaryMajor(out string) (int, error) {
	major, _, err := postgres.ParseServerVersion(out)
	return major, err
}

// SlotName is the physical replication slot the primary keeps for the standby pod:
// "pgop_" and the pod name with '-' replaced by '_' (slot names allow only
// lowercase letters, digits and underscores).
func SlotName(pod string) string {
	return SlotPrefix + strings.ReplaceAll(pod, "-", "_")
}

// SlotPrefix marks the replication slots the operator manages; others are left
// alone.
const SlotPrefix = "pgop_"

// lsn is a WAL position.
type lsn uint64

// parseLSN parses "16/B374D848".
func parseLSN(s string) (lsn, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	return lsn(h<<32 | l), nil
}

func (l lsn) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xffffffff) }

// segmentStartLSN returns the first LSN of a WAL segment file name
// (TTTTTTTTXXXXXXXXYYYYYYYY) for the given segment size.
func segmentStartLSN(name string, segSize uint64) (lsn, error) {
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
	return lsn(log*segsPerLog*segSize + seg*segSize), nil
}

// NeedsWALThatIsGone reports whether a standby that stopped at standbyLSN needs WAL
// older than the oldest segment the primary still has (oldestLSN, the start of its
// oldest WAL file): it can never catch up by streaming and must be re-cloned.
func NeedsWALThatIsGone(standbyLSN, oldestLSN string, segSize uint64) bool {
	s, err1 := parseLSN(standbyLSN)
	o, err2 := parseLSN(oldestLSN)
	if err1 != nil || err2 != nil || segSize == 0 {
		return false
	}
	needed := lsn(uint64(s) / segSize * segSize)
	return needed < o
}

// LaterLSN returns the later of two LSNs ("" counts as earliest).
func LaterLSN(a, b string) string {
	la, errA := parseLSN(a)
	lb, errB := parseLSN(b)
	switch {
	case errA != nil:
		return b
	case errB != nil:
		return a
	case lb > la:
		return b
	}
	return a
}

// LSNDiff returns a minus b in bytes (0 when either is not a valid LSN).
func LSNDiff(a, b string) int64 {
	la, errA := parseLSN(a)
	lb, errB := parseLSN(b)
	if errA != nil || errB != nil {
		return 0
	}
	return int64(la) - int64(lb)
}
