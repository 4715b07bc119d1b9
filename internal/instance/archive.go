// Continuous WAL archiving: archive_command, and what the agent reports of it.

package instance

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/example/postgres-operator/internal/agentapi"
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
			if strings.HasSuffix(e.Name(), ".ready") {
				st.PendingFiles++
			}
		}
	}
	if ps, err := walarchive.ReadPushStatus(a.pushStatusFile()); err == nil && ps.Error != "" && (lastOK == nil || ps.Time.After(*lastOK)) {
		st.Error = ps.Error
	}
	return st
}
