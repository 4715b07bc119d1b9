package instance

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The timeline an undo replays is the previous data directory's own.
func TestParseCheckpointTimeline(t *testing.T) {
	out := "pg_control version number:            1300\nLatest checkpoint's TimeLineID:       3\nLatest checkpoint's PrevTimeLineID:   2\n"
	if tl, err := parseCheckpointTimeline(out); err != nil || tl != 3 {
		t.Errorf("got %d %v, want 3", tl, err)
	}
	if _, err := parseCheckpointTimeline("nothing"); err == nil {
		t.Error("no timeline was not an error")
	}
}

// mkData makes a directory that looks like a data directory, tagged.
func mkData(t *testing.T, dir, tag string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "global"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"global/pg_control": "x", "PG_VERSION": "15", "tag": tag} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func tagOf(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "tag"))
	if err != nil {
		return "missing"
	}
	return string(b)
}

// The swap keeps the data directory aside and puts the prepared one in its
// place; an agent restart at any point between the two renames finishes it
// (or rolls it back when the prepared directory is gone): PGDATA is never
// left missing, and no directory is lost.
func TestTheSwapOfAnInPlaceRecoveryIsOneStepAcrossRestarts(t *testing.T) {
	setup := func(t *testing.T) (*Agent, *inPlacePlan) {
		root := t.TempDir()
		a := &Agent{cfg: Config{PGData: filepath.Join(root, "pgdata")}, log: testLogger()}
		mkData(t, a.cfg.PGData, "current")
		mkData(t, a.inPlaceStaging("r1"), "restored")
		if err := os.WriteFile(filepath.Join(a.inPlaceStaging("r1"), recoveryStateFile), []byte(`{"id":"r1"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		return a, &inPlacePlan{ID: "r1", Src: a.inPlaceStaging("r1"), Prev: a.previousDir("r1"), Keep: time.Hour}
	}
	t.Run("swap", func(t *testing.T) {
		a, p := setup(t)
		if err := a.swapInPlace(p); err != nil {
			t.Fatal(err)
		}
		if tagOf(a.cfg.PGData) != "restored" || tagOf(p.Prev) != "current" {
			t.Errorf("PGDATA %s, previous %s", tagOf(a.cfg.PGData), tagOf(p.Prev))
		}
		if _, err := os.Stat(a.swapJournal()); !os.IsNotExist(err) {
			t.Errorf("the journal is left: %v", err)
		}
		// Kept for an hour from the swap, as the sidecar and the state
		// file (reported to the operator) say.
		var m previousMeta
		b, _ := os.ReadFile(p.Prev + ".json")
		if json.Unmarshal(b, &m) != nil || time.Until(m.KeepUntil) < 59*time.Minute || time.Until(m.KeepUntil) > time.Hour {
			t.Errorf("previous directory's keep-until %q", b)
		}
		if st := a.readRecoveryState(); st == nil || st.KeepUntil == nil || !st.KeepUntil.Equal(m.KeepUntil) {
			t.Errorf("the recovery state's keep-until %+v, the sidecar's %s", st, m.KeepUntil)
		}
	})
	t.Run("an incomplete source is never swapped in", func(t *testing.T) {
		a, p := setup(t)
		_ = os.Remove(filepath.Join(p.Src, "global", "pg_control"))
		if err := a.swapInPlace(p); err == nil {
			t.Fatal("swapped in an incomplete directory")
		}
		if tagOf(a.cfg.PGData) != "current" {
			t.Errorf("PGDATA %s", tagOf(a.cfg.PGData))
		}
	})
	for _, tc := range []struct {
		name       string
		crash      func(a *Agent, p *inPlacePlan)
		pgdata     string
		prev       string
		stagingTag string
	}{
		{"a restart after the first rename finishes the swap", func(a *Agent, p *inPlacePlan) {
			_ = os.Rename(a.cfg.PGData, p.Prev)
		}, "restored", "current", "missing"},
		{"a restart after the first rename with the source gone rolls back", func(a *Agent, p *inPlacePlan) {
			_ = os.Rename(a.cfg.PGData, p.Prev)
			_ = os.RemoveAll(p.Src)
		}, "current", "missing", "missing"},
		{"a restart before the first rename changes nothing", func(*Agent, *inPlacePlan) {}, "current", "missing", "restored"},
		{"a restart after both renames changes nothing", func(a *Agent, p *inPlacePlan) {
			_ = os.Rename(a.cfg.PGData, p.Prev)
			_ = os.Rename(p.Src, a.cfg.PGData)
		}, "restored", "current", "missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, p := setup(t)
			j, _ := json.Marshal(p)
			if err := os.WriteFile(a.swapJournal(), j, 0o600); err != nil {
				t.Fatal(err)
			}
			tc.crash(a, p)
			if err := a.finishSwap(); err != nil {
				t.Fatal(err)
			}
			if got := tagOf(a.cfg.PGData); got != tc.pgdata {
				t.Errorf("PGDATA %s, want %s", got, tc.pgdata)
			}
			if got := tagOf(p.Prev); got != tc.prev {
				t.Errorf("previous %s, want %s", got, tc.prev)
			}
			if got := tagOf(p.Src); got != tc.stagingTag {
				t.Errorf("staging %s, want %s", got, tc.stagingTag)
			}
			if _, err := os.Stat(a.swapJournal()); !os.IsNotExist(err) {
				t.Errorf("the journal is left: %v", err)
			}
		})
	}
}

// Previous data directories go when their time is up, on any instance, and
// never PGDATA.
func TestExpiredPreviousDataDirectoriesAreDeleted(t *testing.T) {
	root := t.TempDir()
	a := &Agent{cfg: Config{PGData: filepath.Join(root, "pgdata")}, log: testLogger()}
	mkData(t, a.cfg.PGData, "current")
	now := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	for id, until := range map[string]time.Time{"old": now.Add(-time.Minute), "kept": now.Add(time.Hour)} {
		mkData(t, a.previousDir(id), id)
		b, _ := json.Marshal(previousMeta{KeepUntil: until})
		if err := os.WriteFile(a.previousDir(id)+".json", b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The directory an unfinished in-place recovery would roll back to is
	// kept, expired or not.
	mkData(t, a.previousDir("running"), "running")
	b, _ := json.Marshal(previousMeta{KeepUntil: now.Add(-time.Hour)})
	if err := os.WriteFile(a.previousDir("running")+".json", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a.cfg.PGData, recoveryStateFile), []byte(`{"id":"running"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	a.dropExpiredPrevious(now)
	if tagOf(a.previousDir("old")) != "missing" {
		t.Error("an expired previous data directory is kept")
	}
	if tagOf(a.previousDir("running")) != "running" {
		t.Error("the directory an unfinished recovery rolls back to was deleted")
	}
	if tagOf(a.previousDir("kept")) != "kept" || tagOf(a.cfg.PGData) != "current" {
		t.Error("a directory whose time is not up was deleted")
	}
}

func testLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// PostgreSQL that stops during an in-place recovery's replay (a target it
// cannot reach) gets the data directory of before the restore back, and
// the recovery reports the failure with PostgreSQL's reason; once it
// promoted (recovery.signal gone) nothing is rolled back.
func TestAFailedReplayIsRolledBack(t *testing.T) {
	setup := func(t *testing.T) *Agent {
		root := t.TempDir()
		a := &Agent{cfg: Config{PGData: filepath.Join(root, "pgdata")}, log: testLogger()}
		mkData(t, a.cfg.PGData, "restored")
		for name, content := range map[string]string{recoveryStateFile: `{"id":"r1"}`, "recovery.signal": ""} {
			if err := os.WriteFile(filepath.Join(a.cfg.PGData, name), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		mkData(t, a.previousDir("r1"), "before")
		return a
	}
	a := setup(t)
	a.watchLogLine("2026-12-07 23:01:02.003 UTC [40] FATAL:  recovery ended before configured recovery target was reached")
	done, err := a.rollBackFailedReplay()
	if err != nil || !done {
		t.Fatalf("rolled back %v %v", done, err)
	}
	if tagOf(a.cfg.PGData) != "before" || tagOf(a.previousDir("r1")) != "missing" {
		t.Errorf("PGDATA %s, previous %s", tagOf(a.cfg.PGData), tagOf(a.previousDir("r1")))
	}
	r := a.recoveryReport()
	if r == nil || r.ID != "r1" || !strings.Contains(r.Error, "recovery ended before configured recovery target was reached") {
		t.Errorf("report %+v", r)
	}

	a = setup(t)
	a.watchLogLine("2026-12-07 23:01:02.003 UTC [40] FATAL:  recovery ended before configured recovery target was reached")
	_ = os.Remove(filepath.Join(a.cfg.PGData, "recovery.signal"))
	if done, err := a.rollBackFailedReplay(); done || err != nil {
		t.Errorf("rolled back a recovery that promoted: %v %v", done, err)
	}
	if tagOf(a.cfg.PGData) != "restored" {
		t.Errorf("PGDATA %s", tagOf(a.cfg.PGData))
	}

	// A store that did not answer makes PostgreSQL stop too (wal-fetch's
	// exit 200): that is retried, never rolled back.
	a = setup(t)
	a.watchLogLine(`2026-12-07 23:01:02.003 UTC [40] FATAL:  could not restore file "000000010000000000000007" from archive: child process exited with exit code 200`)
	if done, err := a.rollBackFailedReplay(); done || err != nil {
		t.Errorf("rolled back on a store error: %v %v", done, err)
	}
	if tagOf(a.cfg.PGData) != "restored" {
		t.Errorf("PGDATA %s", tagOf(a.cfg.PGData))
	}
}

// The rollback of a failed undo puts the directory it was putting back (the
// data of before the restore it undoes) where it was kept, never deletes
// it.
func TestAFailedUndoKeepsTheDataItWasPuttingBack(t *testing.T) {
	root := t.TempDir()
	a := &Agent{cfg: Config{PGData: filepath.Join(root, "pgdata")}, log: testLogger()}
	mkData(t, a.cfg.PGData, "before-the-restore")
	for name, content := range map[string]string{recoveryStateFile: `{"id":"u1","baseBackup":".previous-r1"}`, "recovery.signal": ""} {
		if err := os.WriteFile(filepath.Join(a.cfg.PGData, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mkData(t, a.previousDir("u1"), "restored")
	a.watchLogLine("FATAL:  requested timeline 3 is not a child of this server's history")
	if done, err := a.rollBackFailedReplay(); !done || err != nil {
		t.Fatalf("rolled back %v %v", done, err)
	}
	if tagOf(a.cfg.PGData) != "restored" || tagOf(a.previousDir("r1")) != "before-the-restore" {
		t.Errorf("PGDATA %s, .previous-r1 %s", tagOf(a.cfg.PGData), tagOf(a.previousDir("r1")))
	}
	for _, f := range []string{"recovery.signal", recoveryStateFile} {
		if _, err := os.Stat(filepath.Join(a.previousDir("r1"), f)); err == nil {
			t.Errorf("the kept directory still has %s", f)
		}
	}
	if _, err := os.Stat(a.previousDir("r1") + ".json"); err != nil {
		t.Errorf("the kept directory has no expiry: %v", err)
	}
}

// Divergence never heals by itself: the marker keeps it through a quiet
// period and an agent restart, until a clone replaces the data directory;
// a primary drops it.
func TestDivergenceIsKeptUntilTheReclone(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pgdata")
	mkData(t, dir, "standby")
	a := &Agent{cfg: Config{PGData: dir}, log: testLogger()}
	a.rt.Store(&runtimeView{})
	a.watchLogLine("2026-12-07 22:30:05.790 UTC [56] LOG:  new timeline 3 is not a child of database system timeline 2")
	a.divergedAt.Store(0) // two minutes later, or another agent
	if !a.diverged() {
		t.Error("divergence forgotten")
	}
	if err := dropRecoveryFiles(dir); err != nil || a.diverged() {
		t.Errorf("a clone keeps the divergence: %v", err)
	}
}

// An instance that lost the primary role during an in-place recovery keeps
// the data directory it was recovering aside, instead of rewinding or
// re-cloning over it.
func TestAnUnfinishedRecoveryIsSetAsideNotOverwritten(t *testing.T) {
	root := t.TempDir()
	a := &Agent{cfg: Config{PGData: filepath.Join(root, "pgdata")}, log: testLogger()}
	mkData(t, a.cfg.PGData, "undoing")
	if err := os.WriteFile(filepath.Join(a.cfg.PGData, recoveryStateFile), []byte(`{"id":"u1"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if aside, err := a.setAsideUnfinishedRecovery(); !aside || err != nil {
		t.Fatalf("set aside %v %v", aside, err)
	}
	if tagOf(filepath.Join(root, ".aborted-u1")) != "undoing" || a.hasData() {
		t.Errorf("aside %s, PGDATA has data %v", tagOf(filepath.Join(root, ".aborted-u1")), a.hasData())
	}
	mkData(t, a.cfg.PGData, "plain")
	if aside, _ := a.setAsideUnfinishedRecovery(); aside {
		t.Error("a data directory without an in-place recovery was set aside")
	}
}
