// In-place point-in-time recovery: the primary restores its own cluster, from
// the Database's WAL archive, to a target, keeping the data directory it
// replaces; and the undo of such a recovery.
//
//	request ──> Preparing: check the target (refused: nothing changed)
//	              │ base backup restored into the staging directory while
//	              │ PostgreSQL still serves (undo: the previous directory
//	              │ is checked and given the recovery files)
//	              │ pg_switch_wal(), wait until the archive has it
//	              v
//	            Stopping: the supervisor stops PostgreSQL (fast shutdown; the
//	              │ Lease stays held, so no standby takes over)
//	              v
//	            Swapping (journalled): PGDATA -> previous-<id>,
//	              │ staging (undo: previous-<undo>) -> PGDATA
//	              v
//	            Replaying: PostgreSQL replays the archive to the target and
//	              │ promotes on a new timeline (the agent never promotes it)
//	              v
//	            Done (pgo-recovery-result.json with the ID)
//
// Whatever fails before the swap leaves the running cluster as it was.

package instance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/example/postgres-operator/internal/walarchive"
)

// inPlacePlan is what the supervisor swaps in once PostgreSQL stopped.
type inPlacePlan struct {
	// claim is taken once, by the supervisor (planTaken: it stops and
	// swaps) or by the worker that gave up waiting (planAbandoned): never
	// both.
	claim atomic.Int32
	ID    string `json:"id"`
	// Src is the directory that becomes PGDATA: the staging directory, or
	// the previous directory an undo puts back.
	Src string `json:"src"`
	// Prev is where PGDATA goes, kept for Keep from the swap.
	Prev string        `json:"prev"`
	Keep time.Duration `json:"keep"`
}

const (
	planTaken     = 1
	planAbandoned = 2
)

// swapJournal is written beside PGDATA while a swap's renames run: an agent
// that restarts half-way finishes or rolls back the swap from it.
func (a *Agent) swapJournal() string {
	return filepath.Join(filepath.Dir(a.cfg.PGData), ".pgo-swap.json")
}

// previousDir is where an in-place recovery with this ID keeps the data
// directory it replaced; its keep-until time is in previousDir + ".json".
func (a *Agent) previousDir(id string) string {
	return filepath.Join(filepath.Dir(a.cfg.PGData), ".previous-"+id)
}

// inPlaceStaging is where an in-place recovery restores its base backup:
// its own directory, never the clone's staging directory.
func (a *Agent) inPlaceStaging(id string) string {
	return filepath.Join(filepath.Dir(a.cfg.PGData), ".inplace-"+id)
}

// previousMeta is the sidecar of a previous data directory.
type previousMeta struct {
	KeepUntil time.Time `json:"keepUntil"`
}

// startInPlace validates a request and starts its worker: an error is the
// HTTP answer (the request is not taken).
func (a *Agent) startInPlace(req agentapi.InPlaceRecoveryRequest) error {
	if !agentapi.ValidRecoveryID(req.ID) || (req.Undo != "" && !agentapi.ValidRecoveryID(req.Undo)) {
		return fmt.Errorf("invalid recovery ID %q", req.ID)
	}
	if req.Undo == "" && a.cfg.WALArchiveDir == "" {
		return errors.New("this Database has no WAL archive (spec.walArchive)")
	}
	if cur := a.inPlace.Load(); cur != nil && cur.ID == req.ID {
		return nil // preparing, or failed: the same answer
	}
	if r := a.recoveryReport(); r != nil && r.ID == req.ID {
		return nil // swapped in: replaying, or done
	}
	if !a.runningPrimary() || a.view().Run != runPrimary {
		return errNotPrimary
	}
	if a.restoreInProgress() != "" {
		return errors.New("a logical restore is in progress")
	}
	if !a.inPlaceBusy.CompareAndSwap(false, true) {
		return errors.New("another in-place recovery is being prepared")
	}
	a.inPlace.Store(&agentapi.RecoveryResult{ID: req.ID, Message: "checking the target against the archive"})
	go func() {
		defer a.inPlaceBusy.Store(false)
		// Bounded: a recovery that cannot be prepared in an hour fails.
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		err := a.prepareInPlace(ctx, req)
		if err == nil {
			return // the supervisor swaps it in, and clears inPlace then
		}
		a.log.Warn("in-place recovery not done; the cluster is unchanged", "id", req.ID, "error", err)
		msg := err.Error()
		var refused *errRefused
		if errors.As(err, &refused) {
			msg = "refused: " + refused.msg
		}
		a.inPlace.Store(&agentapi.RecoveryResult{ID: req.ID, Error: msg})
	}()
	return nil
}

func (a *Agent) inPlaceProgress(id, msg string) {
	a.log.Info("in-place recovery", "id", id, "step", msg)
	a.inPlace.Store(&agentapi.RecoveryResult{ID: id, Message: msg})
}

// prepareInPlace does everything up to the swap, then hands the swap to the
// supervisor. Any error leaves the cluster as it was.
func (a *Agent) prepareInPlace(ctx context.Context, req agentapi.InPlaceRecoveryRequest) error {
	sysid, err := postgres.ReadSystemID(a.cfg.PGData)
	if err != nil {
		return err
	}
	keep := time.Duration(req.KeepPreviousSeconds) * time.Second
	state := recoveryState{ID: req.ID, ConfigDir: a.cfg.WALArchiveDir, PreviousData: filepath.Base(a.previousDir(req.ID))}
	plan := &inPlacePlan{ID: req.ID, Prev: a.previousDir(req.ID), Keep: keep}
	if _, err := os.Stat(plan.Prev); err == nil {
		return fmt.Errorf("recovery %s was already swapped in once (%s exists): it is not done again", req.ID, filepath.Base(plan.Prev))
	}
	if req.Undo != "" {
		plan.Src = a.previousDir(req.Undo)
		if err := a.prepareUndo(ctx, req, sysid, &state, plan.Src); err != nil {
			return err
		}
	} else {
		plan.Src = a.inPlaceStaging(req.ID)
		if err := a.prepareStaging(ctx, req, sysid, &state, plan.Src); err != nil {
			_ = os.RemoveAll(plan.Src)
			return err
		}
	}
	undoPrepared := func() {
		if req.Undo != "" {
			_ = dropRecoveryFiles(plan.Src)
			_ = os.Remove(filepath.Join(plan.Src, "recovery.signal"))
		} else {
			_ = os.RemoveAll(plan.Src)
		}
	}
	if err := a.archiveCaughtUp(ctx, req.ID); err != nil {
		undoPrepared()
		return err
	}
	a.inPlaceProgress(req.ID, "stopping PostgreSQL to swap the data directory")
	reply := make(chan error, 1)
	select {
	case a.instr <- instruction{inPlace: plan, reply: reply}:
	case <-time.After(30 * time.Second):
		undoPrepared()
		return errors.New("the supervisor did not take the swap (busy with another instruction)")
	}
	select {
	case err := <-reply:
		if err != nil {
			undoPrepared()
			return fmt.Errorf("not swapped: %w", err)
		}
		return nil
	case <-time.After(time.Minute):
		if !plan.claim.CompareAndSwap(0, planAbandoned) {
			return nil // the supervisor took it after all
		}
		undoPrepared()
		return errors.New("the primary did not stop for the swap in time (it was not running as the primary)")
	}
}

// prepareStaging restores the base backup that reaches the target into the
// staging directory, with the recovery files.
func (a *Agent) prepareStaging(ctx context.Context, req agentapi.InPlaceRecoveryRequest, sysid string, state *recoveryState, staging string) error {
	r := walarchive.RecoveryRequest{SystemID: sysid, Time: req.Time, LSN: req.LSN, XID: req.XID, RestorePoint: req.RestorePoint,
		Latest: req.Latest, Inclusive: req.Inclusive}
	caBundle := filepath.Join(filepath.Dir(a.cfg.AgentBinary), "ca-certificates.crt")
	arch, err := walarchive.OpenSystem(a.cfg.WALArchiveDir, caBundle, sysid)
	if err != nil {
		return fmt.Errorf("opening the archive: %w", err)
	}
	base, err := a.chooseRecoveryBase(ctx, arch, r, req.BaseBackup)
	if err != nil {
		return err
	}
	// What an earlier attempt left (an agent killed while restoring).
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(a.cfg.PGData), ".inplace-*"))
	for _, d := range left {
		if err := os.RemoveAll(d); err != nil {
			return err
		}
	}
	free, err := freeBytes(filepath.Dir(a.cfg.PGData))
	if err != nil {
		return err
	}
	if need := base.Size + base.Size/10; free < need {
		return &errRefused{msg: fmt.Sprintf("the data volume has %d bytes free; restoring base backup %s beside the current data directory needs about %d", free, base.Name, need)}
	}
	a.inPlaceProgress(req.ID, fmt.Sprintf("restoring base backup %s into a staging directory (PostgreSQL still serves)", base.Name))
	if _, err := arch.RestoreBase(ctx, base.Name, staging); err != nil {
		return fmt.Errorf("restoring base backup %s: %w", base.Name, err)
	}
	state.Request, state.BaseBackup = r, base.Name
	return a.writeRecoveryFiles(staging, *state)
}

// prepareUndo checks the previous directory an undo puts back and gives it
// the recovery files: it replays its own timeline to its end (its last WAL
// is in its pg_wal) and promotes on a new timeline, above every timeline in
// the archive.
func (a *Agent) prepareUndo(ctx context.Context, req agentapi.InPlaceRecoveryRequest, sysid string, state *recoveryState, dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "global", "pg_control")); err != nil {
		return &errRefused{msg: fmt.Sprintf("the data directory recovery %s replaced is not on this instance (%s): it was deleted, or is on another instance's volume", req.Undo, filepath.Base(dir))}
	}
	if id, err := postgres.ReadSystemID(dir); err != nil || id != sysid {
		return &errRefused{msg: fmt.Sprintf("%s is not a data directory of this cluster", filepath.Base(dir))}
	}
	tl, err := a.checkpointTimeline(ctx, dir)
	if err != nil {
		return err
	}
	if a.cfg.WALArchiveDir == "" {
		return &errRefused{msg: "an undo replays with the WAL archive's history files: spec.walArchive is not set"}
	}
	// The expiry must not take the directory while the undo uses it (both
	// hold inPlaceBusy; the swap then removes this sidecar).
	hold, _ := json.Marshal(previousMeta{KeepUntil: time.Now().Add(24 * time.Hour).UTC()})
	if err := a.writeFileSync(dir+".json", string(hold)); err != nil {
		return err
	}
	state.Request = walarchive.RecoveryRequest{SystemID: sysid, Latest: true, Timeline: tl, Inclusive: true}
	state.BaseBackup = filepath.Base(dir)
	if err := dropRecoveryFiles(dir); err != nil {
		return err
	}
	return a.writeRecoveryFiles(dir, *state)
}

// writeRecoveryFiles makes dir start in archive recovery for state.
func (a *Agent) writeRecoveryFiles(dir string, state recoveryState) error {
	if err := dropRecoveryFiles(dir); err != nil {
		return err
	}
	st, err := json.Marshal(state)
	if err != nil {
		return err
	}
	for name, content := range map[string]string{"recovery.signal": "", recoveryStateFile: string(st)} {
		if err := a.writeFile(filepath.Join(dir, name), content, 0o600); err != nil {
			return err
		}
	}
	// A standby's base backup holds standby.signal: with it PostgreSQL
	// would follow, never promote at the target.
	if err := os.Remove(filepath.Join(dir, "standby.signal")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return a.chown(p)
	})
}

// checkpointTimeline is the timeline of dir's latest checkpoint.
func (a *Agent) checkpointTimeline(ctx context.Context, dir string) (int64, error) {
	cmd := a.command(ctx, filepath.Join(a.bins.Dir, "pg_controldata"), "-D", dir)
	cmd.Stdout = nil
	cmd.Env = []string{"LC_ALL=C"}
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("pg_controldata %s: %w", filepath.Base(dir), err)
	}
	return parseCheckpointTimeline(string(out))
}

func parseCheckpointTimeline(out string) (int64, error) {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "Latest checkpoint's TimeLineID:"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("pg_controldata printed no latest checkpoint timeline")
}

// archiveCaughtUp switches to a new WAL segment and waits until the
// archive holds it: every commit before the stop is then recoverable from
// the archive (what is written after it is kept in the previous data
// directory).
func (a *Agent) archiveCaughtUp(ctx context.Context, id string) error {
	a.inPlaceProgress(id, "switching WAL and waiting for the archive to hold it")
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	conn, err := a.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var seg string
	if err := conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&seg); err != nil {
		return fmt.Errorf("switching WAL: %w", err)
	}
	for {
		var last string
		if err := conn.QueryRow(ctx, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").Scan(&last); err != nil {
			return fmt.Errorf("reading the archiver: %w", err)
		}
		if len(last) >= 24 && last[:24] >= seg {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the archive did not receive WAL segment %s within 3 minutes (its last is %q): "+
				"see the ContinuousArchiving condition; nothing was changed", seg, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// swapInPlace puts the plan's directory in place of PGDATA, which is kept
// as the plan's previous directory. PostgreSQL is stopped. The journal
// makes the two renames one step across an agent restart.
func (a *Agent) swapInPlace(p *inPlacePlan) error {
	if _, err := os.Stat(filepath.Join(p.Src, "global", "pg_control")); err != nil {
		return fmt.Errorf("nothing to swap in: %w", err)
	}
	keepUntil := time.Now().Add(p.Keep).UTC().Truncate(time.Second)
	meta, _ := json.Marshal(previousMeta{KeepUntil: keepUntil})
	if err := a.writeFileSync(p.Prev+".json", string(meta)); err != nil {
		return err
	}
	if err := a.setKeepUntil(p.Src, keepUntil); err != nil {
		return err
	}
	if err := a.journalledSwap(p); err != nil {
		return err
	}
	_ = os.Remove(p.Src + ".json") // an undo's source was a previous directory
	a.log.Info("in-place recovery swapped in; PostgreSQL replays the archive to the target", "id", p.ID, "previous", p.Prev)
	return nil
}

// journalledSwap moves PGDATA to p.Prev and p.Src to PGDATA under the swap
// journal (finishSwap completes it after a restart half-way); a second
// rename that fails puts PGDATA back.
func (a *Agent) journalledSwap(p *inPlacePlan) error {
	j, _ := json.Marshal(p)
	if err := a.writeFileSync(a.swapJournal(), string(j)); err != nil {
		return err
	}
	if err := os.Rename(a.cfg.PGData, p.Prev); err != nil {
		_ = os.Remove(a.swapJournal())
		return fmt.Errorf("keeping the data directory aside: %w", err)
	}
	if err := os.Rename(p.Src, a.cfg.PGData); err != nil {
		if rerr := os.Rename(p.Prev, a.cfg.PGData); rerr != nil {
			return &errSwapIncomplete{fmt.Errorf("swapping in %s: %w (and putting the data directory back: %w; the journal finishes it at the next start)", p.Src, err, rerr)}
		}
		_ = os.Remove(a.swapJournal())
		return fmt.Errorf("swapping in %s: %w", p.Src, err)
	}
	syncDir(filepath.Dir(a.cfg.PGData))
	return os.Remove(a.swapJournal())
}

// errSwapIncomplete: PGDATA may be missing; only the journal, at the next
// start, can finish the swap (the agent exits).
type errSwapIncomplete struct{ error }

func (e *errSwapIncomplete) Unwrap() error { return e.error }

// setKeepUntil records in dir's recovery state file when the directory it
// replaces is deleted.
func (a *Agent) setKeepUntil(dir string, t time.Time) error {
	path := filepath.Join(dir, recoveryStateFile)
	b, err := os.ReadFile(path) // #nosec G304 -- the data volume
	if err != nil {
		return err
	}
	var st recoveryState
	if err := json.Unmarshal(b, &st); err != nil {
		return err
	}
	st.KeepUntil = &t
	out, _ := json.Marshal(st)
	return a.writeFileSync(path, string(out))
}

// writeFileSync writes a file atomically and durably (file and directory
// synced): a journal must be on disk before the rename it describes.
func (a *Agent) writeFileSync(path, content string) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600) // #nosec G304 -- the data volume
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := a.chown(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

// finishSwap completes a swap an agent restart interrupted: PGDATA missing
// means the first rename happened; the source then goes in (or, gone, the
// previous directory goes back).
func (a *Agent) finishSwap() error {
	b, err := os.ReadFile(a.swapJournal())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var p inPlacePlan
	if err := json.Unmarshal(b, &p); err != nil || p.Src == "" || p.Prev == "" {
		return fmt.Errorf("unreadable swap journal %s", a.swapJournal())
	}
	if _, err := os.Stat(a.cfg.PGData); errors.Is(err, os.ErrNotExist) {
		src := p.Src
		if _, err := os.Stat(filepath.Join(src, "global", "pg_control")); err != nil {
			src = p.Prev // the source is gone or incomplete: roll back
		}
		if err := os.Rename(src, a.cfg.PGData); err != nil {
			return fmt.Errorf("finishing the interrupted swap: %w", err)
		}
		a.log.Warn("finished a swap an agent restart interrupted", "id", p.ID, "installed", src)
		syncDir(filepath.Dir(a.cfg.PGData))
	}
	return os.Remove(a.swapJournal())
}

func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil { // #nosec G304 -- the data volume
		_ = f.Sync()
		_ = f.Close()
	}
}

// dropExpiredPrevious deletes previous data directories whose keep-until
// time passed (on any instance: they live on its own volume).
func (a *Agent) dropExpiredPrevious(now time.Time) {
	// Never while an in-place recovery prepares (an undo reads a previous
	// directory) or a swap is journalled.
	if !a.inPlaceBusy.CompareAndSwap(false, true) {
		return
	}
	defer a.inPlaceBusy.Store(false)
	if _, err := os.Stat(a.swapJournal()); err == nil {
		return
	}
	metas, _ := filepath.Glob(filepath.Join(filepath.Dir(a.cfg.PGData), ".previous-*.json"))
	aborted, _ := filepath.Glob(filepath.Join(filepath.Dir(a.cfg.PGData), ".aborted-*.json"))
	metas = append(metas, aborted...)
	unfinished := ""
	if st := a.readRecoveryState(); st != nil && st.ID != "" {
		unfinished = a.previousDir(st.ID)
	}
	for _, m := range metas {
		b, err := os.ReadFile(m) // #nosec G304 -- the data volume
		if err != nil {
			continue
		}
		var pm previousMeta
		if json.Unmarshal(b, &pm) != nil || now.Before(pm.KeepUntil) {
			continue
		}
		dir := strings.TrimSuffix(m, ".json")
		if dir == a.cfg.PGData || dir == unfinished {
			continue // the rollback of an unfinished recovery needs it
		}
		if err := os.RemoveAll(dir); err != nil {
			a.log.Warn("deleting an expired previous data directory", "dir", dir, "error", err)
			continue
		}
		_ = os.Remove(m)
		a.log.Info("deleted an expired previous data directory", "dir", filepath.Base(dir))
	}
}

// rollBackFailedReplay puts the previous data directory back when
// PostgreSQL stopped by itself during an in-place recovery's replay (a
// target it could not reach, a timeline the base backup is not on): the
// Restore fails and the cluster is as it was. It reports whether it did.
func (a *Agent) rollBackFailedReplay() (bool, error) {
	s := a.readRecoveryState()
	if s == nil || s.ID == "" {
		return false, nil
	}
	if _, err := os.Stat(filepath.Join(a.cfg.PGData, "recovery.signal")); err != nil {
		// PostgreSQL removed it: it promoted, its new timeline may be
		// archived already. The recovery is recorded at the next start.
		return false, nil
	}
	f := a.lastFatal.Load()
	if f == nil || !targetUnreachable(*f) {
		// A store that did not answer (wal-fetch makes PostgreSQL stop
		// rather than end the recovery early), a killed process: PostgreSQL
		// is restarted and replays on.
		return false, nil
	}
	prev := a.previousDir(s.ID)
	if _, err := os.Stat(filepath.Join(prev, "global", "pg_control")); err != nil {
		return false, nil // nothing to put back (deleted): the agent keeps retrying
	}
	why := "PostgreSQL stopped during the replay: " + *f
	// What goes out of PGDATA: a restored base backup is deleted; an undo's
	// directory (the data of before the restore it undoes) goes back where
	// it was kept.
	failed := filepath.Join(filepath.Dir(a.cfg.PGData), ".failed-"+s.ID)
	undo := strings.HasPrefix(s.BaseBackup, ".previous-")
	if undo {
		failed = filepath.Join(filepath.Dir(a.cfg.PGData), s.BaseBackup)
		meta, _ := json.Marshal(previousMeta{KeepUntil: time.Now().Add(24 * time.Hour).UTC()})
		if err := a.writeFileSync(failed+".json", string(meta)); err != nil {
			return false, err
		}
	} else {
		_ = os.RemoveAll(failed)
	}
	if err := a.journalledSwap(&inPlacePlan{ID: s.ID, Src: prev, Prev: failed}); err != nil {
		return false, err
	}
	_ = os.Remove(prev + ".json")
	if undo {
		// Kept as it was before the undo: no recovery files.
		_ = dropRecoveryFiles(failed)
		_ = os.Remove(filepath.Join(failed, "recovery.signal"))
	} else {
		_ = os.RemoveAll(failed)
	}
	a.log.Error("in-place recovery failed during the replay; the previous data directory is back in place", "id", s.ID, "reason", why)
	a.inPlace.Store(&agentapi.RecoveryResult{ID: s.ID, Error: why + "; the data directory of before the restore was put back"})
	return true, nil
}

// targetUnreachable reports whether PostgreSQL's FATAL line says the
// recovery can never reach its target from this base: retrying would fail
// the same way.
func targetUnreachable(fatal string) bool {
	for _, m := range []string{"recovery ended before configured recovery target was reached",
		"is not a child of this server's history", "requested timeline", "not in this server's history"} {
		if strings.Contains(fatal, m) {
			return true
		}
	}
	return false
}

// setAsideUnfinishedRecovery keeps a data directory whose in-place recovery
// never finished (this instance lost the primary role during the replay)
// instead of rewinding or re-cloning over it: it holds what the recovery was
// restoring (an undo's data). It reports whether it did.
func (a *Agent) setAsideUnfinishedRecovery() (bool, error) {
	s := a.readRecoveryState()
	if s == nil || s.ID == "" {
		return false, nil
	}
	dir := filepath.Join(filepath.Dir(a.cfg.PGData), ".aborted-"+s.ID)
	meta, _ := json.Marshal(previousMeta{KeepUntil: time.Now().Add(24 * time.Hour).UTC()})
	if err := a.writeFileSync(dir+".json", string(meta)); err != nil {
		return false, err
	}
	if err := os.Rename(a.cfg.PGData, dir); err != nil {
		return false, err
	}
	syncDir(filepath.Dir(a.cfg.PGData))
	a.log.Warn("this instance is no longer the primary and its in-place recovery never finished: its data directory is kept aside for 24h",
		"id", s.ID, "dir", filepath.Base(dir))
	return true, nil
}
