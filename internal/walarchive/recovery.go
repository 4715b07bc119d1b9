package walarchive

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
)

// RecoveryTargetFile is, in a recovery source directory (the Database's
// <name>-recovery-source Secret, beside the archive's Config), the
// RecoveryRequest as JSON.
const RecoveryTargetFile = "target.json"

// RecoveryRequest is a point-in-time recovery to do: the source cluster's
// directory in the archive and exactly one target.
type RecoveryRequest struct {
	SystemID     string     `json:"systemIdentifier"`
	Time         *time.Time `json:"time,omitempty"`
	LSN          string     `json:"lsn,omitempty"`
	RestorePoint string     `json:"restorePoint,omitempty"`
	XID          string     `json:"xid,omitempty"`
	Latest       bool       `json:"latest,omitempty"`
	Inclusive    bool       `json:"inclusive"`
	// Timeline is the timeline the recovery follows (0: the newest one in the
	// archive). Undoing an in-place recovery replays its previous data
	// directory's own timeline to its end.
	Timeline int64 `json:"timeline,omitempty"`
}

// TargetRequest is the recovery to an API target, of cluster sysid.
func TargetRequest(t databasev1.RecoveryTarget, sysid string) RecoveryRequest {
	r := RecoveryRequest{SystemID: sysid, LSN: t.LSN, XID: t.XID, RestorePoint: t.RestorePoint, Latest: t.Latest,
		Inclusive: t.Inclusive == nil || *t.Inclusive}
	if t.Time != nil {
		tt := t.Time.UTC()
		r.Time = &tt
	}
	return r
}

// String names the target as a human reads it.
func (r RecoveryRequest) String() string {
	incl := ""
	if !r.Inclusive {
		incl = " (exclusive)"
	}
	switch {
	case r.Time != nil:
		return "time " + r.Time.UTC().Format(time.RFC3339Nano) + incl
	case r.LSN != "":
		return "LSN " + r.LSN + incl
	case r.RestorePoint != "":
		return "restore point " + r.RestorePoint + incl
	case r.XID != "":
		return "transaction " + r.XID + incl
	default:
		return "the end of the archive"
	}
}

// ErrTargetNotRecoverable: the archive cannot reach the target.
var ErrTargetNotRecoverable = errors.New("the target is outside the archive's recoverable window")

// ChooseBase picks the base backup a recovery to r starts from: for a time or
// an LSN, the newest usable one that ends before the target; for a restore
// point or a transaction, the oldest usable one (it may be anywhere after it); for the
// end of the archive, the newest. A target before the first usable base
// backup, or (lastCommit and newestEnd known) after the last archived commit
// or the end of the newest segment, is refused naming the window.
func ChooseBase(s Survey, r RecoveryRequest, lastCommit *time.Time, newestEnd agentapi.LSN) (BaseBackup, error) {
	if len(s.UsableBases) == 0 {
		if len(s.Bases) == 0 {
			return BaseBackup{}, fmt.Errorf("%w: the archive holds no base backup of cluster %s", ErrTargetNotRecoverable, r.SystemID)
		}
		return BaseBackup{}, fmt.Errorf("%w: every base backup is followed by a gap in the WAL (%s)", ErrTargetNotRecoverable, gapList(s.Gaps))
	}
	window := func() string {
		w := "from " + s.UsableBases[0].EndTime.UTC().Format(time.RFC3339Nano)
		if lastCommit != nil {
			w += " to " + lastCommit.UTC().Format(time.RFC3339Nano)
		}
		return w
	}
	switch {
	case r.Time != nil:
		if lastCommit != nil && r.Time.After(*lastCommit) {
			return BaseBackup{}, fmt.Errorf("%w: %s is after the last archived commit (the window is %s)", ErrTargetNotRecoverable, r, window())
		}
		var pick *BaseBackup
		for i, b := range s.UsableBases {
			if !b.EndTime.After(*r.Time) {
				pick = &s.UsableBases[i]
			}
		}
		if pick == nil {
			return BaseBackup{}, fmt.Errorf("%w: %s is before the end of the first usable base backup (the window is %s)", ErrTargetNotRecoverable, r, window())
		}
		return *pick, nil
	case r.LSN != "":
		target, err := agentapi.ParseLSN(r.LSN)
		if err != nil {
			return BaseBackup{}, err
		}
		if newestEnd != 0 && target > newestEnd {
			return BaseBackup{}, fmt.Errorf("%w: LSN %s is past the end of the archived WAL (%s)", ErrTargetNotRecoverable, r.LSN, newestEnd)
		}
		var pick *BaseBackup
		for i, b := range s.UsableBases {
			if end, err := agentapi.ParseLSN(b.EndLSN); err == nil && end <= target {
				pick = &s.UsableBases[i]
			}
		}
		if pick == nil {
			return BaseBackup{}, fmt.Errorf("%w: LSN %s is before the end of the first usable base backup (%s)", ErrTargetNotRecoverable, r.LSN, s.UsableBases[0].EndLSN)
		}
		return *pick, nil
	case r.RestorePoint != "", r.XID != "":
		// Where the point or the transaction's commit lies is only known
		// by replaying: from the oldest usable base backup.
		return s.UsableBases[0], nil
	default:
		return s.UsableBases[len(s.UsableBases)-1], nil
	}
}

func gapList(gs []Gap) string {
	var out []string
	for _, g := range gs {
		out = append(out, g.String())
	}
	return strings.Join(out, ", ")
}

// RecoverySettings are PostgreSQL's settings of the recovery: the archive's
// wal-fetch as restore_command, the target, promotion at the target, on the
// newest timeline. quote quotes a setting's value.
func RecoverySettings(r RecoveryRequest, restoreCommand string, quote func(string) string) []string {
	tl := "latest"
	if r.Timeline > 0 {
		tl = strconv.FormatInt(r.Timeline, 10)
	}
	lines := []string{"restore_command = " + quote(restoreCommand), "recovery_target_timeline = " + quote(tl), "recovery_target_action = 'promote'"}
	incl := "on"
	if !r.Inclusive {
		incl = "off"
	}
	switch {
	case r.Time != nil:
		lines = append(lines, "recovery_target_time = "+quote(r.Time.UTC().Format("2006-01-02 15:04:05.999999+00")), "recovery_target_inclusive = "+incl)
	case r.LSN != "":
		lines = append(lines, "recovery_target_lsn = "+quote(r.LSN), "recovery_target_inclusive = "+incl)
	case r.RestorePoint != "":
		lines = append(lines, "recovery_target_name = "+quote(r.RestorePoint), "recovery_target_inclusive = "+incl)
	case r.XID != "":
		lines = append(lines, "recovery_target_xid = "+quote(r.XID), "recovery_target_inclusive = "+incl)
	}
	return lines
}

// NewestCommit is the commit time of the last commit in the archive: the
// newest segments are fetched into tmpDir one by one (at most 32) until one
// holds a commit. nil when none does.
func (a *Archive) NewestCommit(ctx context.Context, s Survey, segSize uint64, pgWaldump, tmpDir string) (*time.Time, error) {
	if s.Newest == (Segment{}) {
		return nil, nil
	}
	for no, n := s.Newest.No, 0; n < 32 && no > 0; no, n = no-1, n+1 {
		name := SegmentName(Segment{Timeline: s.Newest.Timeline, No: no}, segSize)
		dest := filepath.Join(tmpDir, name)
		if _, err := a.Fetch(ctx, name, dest); err != nil {
			if errors.Is(err, ErrNotArchived) {
				return nil, nil // an earlier timeline's: stop here
			}
			return nil, err
		}
		t, ok, err := LastCommitTime(ctx, pgWaldump, dest)
		_ = os.Remove(dest)
		if err != nil {
			return nil, err
		}
		if ok {
			return &t, nil
		}
	}
	return nil, nil
}

// SegmentEnd is the LSN just past segment s.
func SegmentEnd(s Segment, segSize uint64) agentapi.LSN { return agentapi.LSN((s.No + 1) * segSize) }
