// Continuous WAL archiving: archive_command, and what the agent reports of it.

package instance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/example/postgres-operator/internal/walarchive"
)

// archiveConfLines are PostgreSQL's archiving settings. archive_mode is
// always on, so that turning the archive on or off is a reload, never a
// restart: with no archive configured (no configuration file at all),
// archive_command succeeds without keeping anything (as with archiving off,
// nothing accumulates in pg_wal). With one, it is this binary's wal-push,
// which reads the mounted configuration and records its result for the
// status; a configuration it cannot read makes every push fail (and say why),
// never a silent '/bin/true' that would let PostgreSQL recycle WAL the
// archive does not have.
func (a *Agent) archiveConfLines(q func(string) string) []string {
	lines := []string{"archive_mode = on"}
	c, err := a.archiveConfig()
	if errors.Is(err, walarchive.ErrNoConfig) || a.cfg.AgentBinary == "" {
		return append(lines, "archive_command = '/bin/true'", "archive_timeout = 0")
	}
	cmd := strings.Join([]string{a.cfg.AgentBinary, "wal-push",
		"--config-dir=" + a.cfg.WALArchiveDir, "--status-file=" + a.pushStatusFile(),
		// The operator image's CA bundle, copied next to the agent.
		"--s3-ca-bundle=" + filepath.Join(filepath.Dir(a.cfg.AgentBinary), "ca-certificates.crt"),
		"%p", "%f"}, " ")
	return append(lines, "archive_command = "+q(cmd),
		"archive_timeout = "+strconv.Itoa(int(c.ArchiveTimeout()/time.Second)))
}

// archiveConfig reads the mounted archive configuration (ErrNoConfig when
// archiving is off).
func (a *Agent) archiveConfig() (walarchive.Config, error) {
	if a.cfg.WALArchiveDir == "" {
		return walarchive.Config{}, walarchive.ErrNoConfig
	}
	return walarchive.ReadConfig(a.cfg.WALArchiveDir)
}

func (a *Agent) pushStatusFile() string { return filepath.Join(a.cfg.RunDir, "wal-push.json") }

// archiveStatus is what a primary reports of its archiving: PostgreSQL's
// archiver statistics, the WAL files waiting, and wal-push's last error.
func (a *Agent) archiveStatus(ctx context.Context, conn *pgx.Conn) *agentapi.ArchiveStatus {
	c, err := a.archiveConfig()
	if errors.Is(err, walarchive.ErrNoConfig) {
		return nil
	}
	if err != nil {
		return &agentapi.ArchiveStatus{ConfigError: "reading the archive configuration: " + err.Error()}
	}
	st := &agentapi.ArchiveStatus{Location: c.Location}
	var lastOK, lastFail *time.Time
	var okWAL, failWAL *string
	if err := conn.QueryRow(ctx, `SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time
		FROM pg_stat_archiver`).Scan(&st.ArchivedCount, &okWAL, &lastOK, &st.FailedCount, &failWAL, &lastFail); err != nil {
		st.Error = "reading pg_stat_archiver: " + err.Error()
		return st
	}
	if okWAL != nil {
		st.LastArchivedWAL = *okWAL
	}
	if failWAL != nil {
		st.LastFailedWAL = *failWAL
	}
	st.LastArchivedTime, st.LastFailedTime = lastOK, lastFail
	if entries, err := os.ReadDir(filepath.Join(a.cfg.PGData, "pg_wal", "archive_status")); err == nil {
		for _, e := range entries {
			if name, ok := strings.CutSuffix(e.Name(), ".ready"); ok {
				st.PendingFiles++
				if fi, err := os.Stat(filepath.Join(a.cfg.PGData, "pg_wal", name)); err == nil {
					st.PendingBytes += fi.Size()
				}
			}
		}
	}
	if ps, err := walarchive.ReadPushStatus(a.pushStatusFile()); err == nil {
		if ps.Error != "" && (lastOK == nil || ps.Time.After(*lastOK)) {
			st.Error = ps.Error
		}
		st.LastCommitTime, st.LastCommitWAL = ps.LastCommitTime, ps.LastCommitWAL
	}
	st.Window = a.survey.Load()
	if st.Window == nil || time.Since(st.Window.SurveyTime) >= a.surveyInterval() || st.Window.Error != "" && time.Since(st.Window.SurveyTime) >= 10*time.Second {
		var segSize uint64
		if err := conn.QueryRow(ctx, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'").Scan(&segSize); err == nil && segSize > 0 {
			select {
			case a.surveyKick <- segSize:
			default: // one is on its way
			}
		}
	}
	return st
}

// surveyInterval is how often the primary surveys the archive (a listing
// of its WAL and base backups, and a read of each base backup's manifest).
func (a *Agent) surveyInterval() time.Duration {
	if a.cfg.ArchiveSurveyInterval > 0 {
		return a.cfg.ArchiveSurveyInterval
	}
	return time.Minute
}

// surveyLoop surveys the archive when the status asks for it, and publishes
// the result (it alone writes a.survey).
func (a *Agent) surveyLoop(ctx context.Context) {
	for {
		var segSize uint64
		select {
		case <-ctx.Done():
			return
		case segSize = <-a.surveyKick:
		}
		c, err := a.archiveConfig()
		if err != nil {
			continue
		}
		w := &agentapi.ArchiveWindow{SurveyTime: time.Now().UTC()}
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		s, err := a.surveyArchive(sctx, segSize)
		cancel()
		if err != nil {
			// The previous figures stay, with the error.
			if prev := a.survey.Load(); prev != nil {
				keep := *prev
				w = &keep
				w.SurveyTime = time.Now().UTC()
			}
			w.Error = "surveying " + c.Location + ": " + err.Error()
			a.survey.Store(w)
			continue
		}
		w.FirstRecoverablePoint, w.FirstBaseBackup = s.First, s.FirstBase
		w.BaseBackups, w.Usable = len(s.Bases), s.Usable
		for i, g := range s.Gaps {
			if i == 10 {
				w.Gaps = append(w.Gaps, fmt.Sprintf("and %d more", len(s.Gaps)-10))
				break
			}
			w.Gaps = append(w.Gaps, g.String())
		}
		a.survey.Store(w)
	}
}

// surveyArchive lists this cluster's directory of the archive.
func (a *Agent) surveyArchive(ctx context.Context, segSize uint64) (walarchive.Survey, error) {
	sysid, err := postgres.ReadSystemID(a.cfg.PGData)
	if err != nil {
		return walarchive.Survey{}, err
	}
	arch, err := walarchive.OpenSystem(a.cfg.WALArchiveDir, filepath.Join(filepath.Dir(a.cfg.AgentBinary), "ca-certificates.crt"), sysid)
	if err != nil {
		return walarchive.Survey{}, err
	}
	return arch.Survey(ctx, segSize, time.Now().UTC())
}
