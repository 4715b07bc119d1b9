// Point-in-time recovery into a new Database: the first instance's cluster
// is a base backup of another cluster's WAL archive, replayed to a target.

package instance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/walarchive"
)

// Files in PGDATA of a point-in-time recovery: recoveryStateFile while
// PostgreSQL replays to the target (the configuration then carries the
// recovery settings, and the agent does not promote: PostgreSQL does, at
// the target), recoveryResultFile once it promoted.
const (
	recoveryStateFile  = "pgo-recovery.json"
	recoveryResultFile = "pgo-recovery-result.json"
)

// recoveryState is what recoveryStateFile holds.
type recoveryState struct {
	Request    walarchive.RecoveryRequest `json:"request"`
	BaseBackup string                     `json:"baseBackup"`
	// ID is an in-place recovery's; ConfigDir the archive configuration
	// wal-fetch reads ("": the recovery source directory of a bootstrap).
	ID        string `json:"id,omitempty"`
	ConfigDir string `json:"configDir,omitempty"`
	// PreviousData and KeepUntil: the data directory an in-place recovery
	// replaced, and when it is deleted.
	PreviousData string     `json:"previousData,omitempty"`
	KeepUntil    *time.Time `json:"keepUntil,omitempty"`
}

// recoverySource reads the recovery to do, when the Database bootstraps from
// an archive (nil otherwise).
func (a *Agent) recoverySource() (*walarchive.RecoveryRequest, error) {
	if a.cfg.RecoverySourceDir == "" {
		return nil, nil
	}
	b, err := os.ReadFile(filepath.Join(a.cfg.RecoverySourceDir, walarchive.RecoveryTargetFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r walarchive.RecoveryRequest
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", walarchive.RecoveryTargetFile, err)
	}
	if r.SystemID == "" {
		return nil, fmt.Errorf("%s names no system identifier", walarchive.RecoveryTargetFile)
	}
	return &r, nil
}

// errRefused is a recovery the archive cannot do; the agent says why and
// waits (a newer base backup or more WAL may come).
type errRefused struct{ msg string }

func (e *errRefused) Error() string { return e.msg }

// chooseRecoveryBase surveys arch and picks the base backup a recovery to r
// starts from (only, when set, the one named): errRefused when the archive
// cannot reach the target.
func (a *Agent) chooseRecoveryBase(ctx context.Context, arch *walarchive.Archive, r walarchive.RecoveryRequest, only string) (walarchive.BaseBackup, error) {
	segSize := uint64(16 << 20)
	bases, err := arch.Survey(ctx, segSize, time.Now())
	if err != nil {
		return walarchive.BaseBackup{}, fmt.Errorf("surveying the archive: %w", err)
	}
	if len(bases.Bases) > 0 && bases.Bases[0].WALSegmentSize != segSize {
		segSize = bases.Bases[0].WALSegmentSize
		if bases, err = arch.Survey(ctx, segSize, time.Now()); err != nil {
			return walarchive.BaseBackup{}, fmt.Errorf("surveying the archive: %w", err)
		}
	}
	var lastCommit *time.Time
	if r.Time != nil {
		tmp, err := os.MkdirTemp(filepath.Dir(a.cfg.PGData), ".pgo-survey-")
		if err != nil {
			return walarchive.BaseBackup{}, err
		}
		lastCommit, err = arch.NewestCommit(ctx, bases, segSize, filepath.Join(a.bins.Dir, "pg_waldump"), tmp)
		_ = os.RemoveAll(tmp)
		if err != nil {
			return walarchive.BaseBackup{}, fmt.Errorf("reading the archive's last commit: %w", err)
		}
	}
	var newestEnd agentapi.LSN
	if bases.Newest != (walarchive.Segment{}) {
		newestEnd = walarchive.SegmentEnd(bases.Newest, segSize)
	}
	if only != "" {
		var keep []walarchive.BaseBackup
		for _, b := range bases.UsableBases {
			if b.Name == only {
				keep = append(keep, b)
			}
		}
		if len(keep) == 0 {
			return walarchive.BaseBackup{}, &errRefused{msg: fmt.Sprintf("base backup %s is not in the archive, or a gap in the WAL follows it", only)}
		}
		bases.UsableBases = keep
	}
	base, err := walarchive.ChooseBase(bases, r, lastCommit, newestEnd)
	if errors.Is(err, walarchive.ErrTargetNotRecoverable) {
		return walarchive.BaseBackup{}, &errRefused{msg: err.Error()}
	}
	return base, err
}

// recoverFromArchive restores the base backup a recovery to r starts from
// into the staging directory, with recovery.signal and recoveryStateFile,
// and installs it as PGDATA. PostgreSQL then replays the archive to the
// target and promotes itself.
func (a *Agent) recoverFromArchive(ctx context.Context, r walarchive.RecoveryRequest) error {
	caBundle := filepath.Join(filepath.Dir(a.cfg.AgentBinary), "ca-certificates.crt")
	arch, err := walarchive.OpenSystem(a.cfg.RecoverySourceDir, caBundle, r.SystemID)
	if err != nil {
		return fmt.Errorf("opening the source archive: %w", err)
	}
	base, err := a.chooseRecoveryBase(ctx, arch, r, "")
	if err != nil {
		return err
	}
	a.setState(agentapi.StateRecovering, fmt.Sprintf("restoring base backup %s of cluster %s to recover to %s", base.Name, r.SystemID, r))
	staging := a.stagingDir()
	if err := os.RemoveAll(staging); err != nil {
		return err
	}
	if _, err := arch.RestoreBase(ctx, base.Name, staging); err != nil {
		_ = os.RemoveAll(staging)
		return fmt.Errorf("restoring base backup %s: %w", base.Name, err)
	}
	// A base backup of a cluster that was itself recovered holds that
	// recovery's files (writeRecoveryFiles drops them): they describe its past.
	if err := a.writeRecoveryFiles(staging, recoveryState{Request: r, BaseBackup: base.Name}); err != nil {
		return err
	}
	a.log.Info("base backup restored; PostgreSQL replays the archive to the target", "baseBackup", base.Name, "target", r.String())
	return a.install()
}

// readRecoveryState reads recoveryStateFile (nil when no recovery runs or
// waits to be recorded).
func (a *Agent) readRecoveryState() *recoveryState {
	b, err := os.ReadFile(filepath.Join(a.cfg.PGData, recoveryStateFile))
	if err != nil {
		return nil
	}
	var s recoveryState
	if json.Unmarshal(b, &s) != nil {
		return nil
	}
	return &s
}

// startingPostgres records, before PostgreSQL starts, whether it starts
// with the recovery settings: they stay in its configuration until it
// stops (they can only change with a restart, and PostgreSQL complains of
// every reload without them), never longer.
// A standby never does (and its clone of the primary never holds the state
// file: the clone drops it, dropRecoveryFiles), so a standby promoted later
// is never held back and records nothing.
func (a *Agent) startingPostgres(asPrimary bool) {
	var s *recoveryState
	if asPrimary {
		s = a.readRecoveryState()
	}
	a.loadedRecovery.Store(s)
}

// recoveryConfLines are the recovery settings of a primary while a recovery
// runs, and until the PostgreSQL that ran it stops. Never a standby's: at
// its target the recovery promotes.
func (a *Agent) recoveryConfLines(primary bool, q func(string) string) []string {
	s := a.loadedRecovery.Load()
	if !primary || s == nil {
		return nil
	}
	dir := s.ConfigDir
	if dir == "" {
		dir = a.cfg.RecoverySourceDir
	}
	cmd := strings.Join([]string{a.cfg.AgentBinary, "wal-fetch", "--config-dir=" + dir,
		"--system-id=" + s.Request.SystemID,
		"--s3-ca-bundle=" + filepath.Join(filepath.Dir(a.cfg.AgentBinary), "ca-certificates.crt"), "%f", "%p"}, " ")
	return walarchive.RecoverySettings(s.Request, cmd, q)
}

// holdPromotion reports whether the agent must not promote PostgreSQL
// itself: a point-in-time recovery promotes at its target. It says how far
// the replay is.
func (a *Agent) holdPromotion(ctx context.Context, gen int64, conn *pgx.Conn) error {
	// What the running PostgreSQL was started for, not recovery.signal:
	// PostgreSQL removes the signal moments before its recovery ends.
	s := a.loadedRecovery.Load()
	if s == nil || a.readRecoveryState() == nil {
		return nil
	}
	var lsn string
	var at *time.Time
	_ = conn.QueryRow(ctx, "SELECT coalesce(pg_last_wal_replay_lsn()::text, ''), pg_last_xact_replay_timestamp()").Scan(&lsn, &at)
	msg := fmt.Sprintf("recovering to %s from base backup %s: replayed to %s", s.Request, s.BaseBackup, orString(lsn, "nothing yet"))
	if at != nil {
		msg += " (last commit " + at.UTC().Format(time.RFC3339Nano) + ")"
	}
	a.progress(ctx, gen, agentapi.StateRecovering, msg)
	return errors.New("waiting for the point-in-time recovery to reach its target")
}

// recordRecovery writes recoveryResultFile once PostgreSQL promoted at the
// end of a recovery, and removes recoveryStateFile; it reports whether it
// recorded one.
func (a *Agent) recordRecovery(ctx context.Context, conn *pgx.Conn) (bool, error) {
	if a.loadedRecovery.Load() == nil {
		return false, nil
	}
	path := filepath.Join(a.cfg.PGData, recoveryStateFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var s recoveryState
	_ = json.Unmarshal(b, &s)
	res := agentapi.RecoveryResult{BaseBackup: s.BaseBackup, Target: s.Request.String(), ID: s.ID, PreviousData: s.PreviousData, KeepUntil: s.KeepUntil}
	var at *time.Time
	if err := conn.QueryRow(ctx, `SELECT coalesce(pg_last_wal_replay_lsn()::text, ''), pg_last_xact_replay_timestamp(),
		(SELECT timeline_id FROM pg_control_checkpoint())`).Scan(&res.ReachedLSN, &at, &res.Timeline); err != nil {
		return false, fmt.Errorf("reading where the recovery ended: %w", err)
	}
	res.ReachedTime = at
	out, _ := json.Marshal(res)
	if err := a.writeFile(filepath.Join(a.cfg.PGData, recoveryResultFile), string(out), 0o600); err != nil {
		return false, fmt.Errorf("recording the recovery: %w", err)
	}
	if err := os.Remove(path); err != nil {
		return false, err
	}
	a.log.Info("point-in-time recovery complete", "target", res.Target, "reachedLSN", res.ReachedLSN, "timeline", res.Timeline)
	return true, nil
}

// dropRecoveryFiles removes a recovery's files from a clone of the
// recovered primary: they describe the primary's past, not the clone's.
func dropRecoveryFiles(dir string) error {
	for _, f := range []string{recoveryStateFile, recoveryResultFile, divergedMarker} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// recoveryReport is the recovery's state for the status.
func (a *Agent) recoveryReport() *agentapi.RecoveryResult {
	if p := a.inPlace.Load(); p != nil {
		// An in-place recovery before its swap, or one that failed.
		r := *p
		return &r
	}
	if b, err := os.ReadFile(filepath.Join(a.cfg.PGData, recoveryResultFile)); err == nil {
		var r agentapi.RecoveryResult
		if json.Unmarshal(b, &r) == nil {
			r.Done = true
			return &r
		}
	}
	if s := a.readRecoveryState(); s != nil {
		return &agentapi.RecoveryResult{BaseBackup: s.BaseBackup, Target: s.Request.String(), ID: s.ID, PreviousData: s.PreviousData,
			KeepUntil: s.KeepUntil, Message: "replaying the archive to the target"}
	}
	if !a.hasData() && a.cfg.RecoverySourceDir != "" && a.recoveryRefusal.Load() == nil {
		return &agentapi.RecoveryResult{}
	}
	if msg := a.recoveryRefusal.Load(); msg != nil {
		return &agentapi.RecoveryResult{Error: *msg}
	}
	return nil
}
