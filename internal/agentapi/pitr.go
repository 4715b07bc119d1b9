package agentapi

import (
	"context"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// PathRecoverInPlace (POST, authenticated) asks the primary to restore its
// own cluster in place to a point in time from the Database's WAL archive, or
// to undo an earlier such restore. The answer is 202 once the recovery runs
// (again, for the same ID: it is idempotent); its progress and outcome are in
// Status.Recovery under the request's ID.
const PathRecoverInPlace = "/recover-in-place"

// InPlaceRecoveryRequest is the body of POST PathRecoverInPlace: exactly one
// target (or Undo).
type InPlaceRecoveryRequest struct {
	// ID identifies the recovery (the Restore's UID): the previous data
	// directory is named after it, and a repeated request with the same ID
	// does nothing more.
	ID           string     `json:"id"`
	Time         *time.Time `json:"time,omitempty"`
	LSN          string     `json:"lsn,omitempty"`
	XID          string     `json:"xid,omitempty"`
	RestorePoint string     `json:"restorePoint,omitempty"`
	Latest       bool       `json:"latest,omitempty"`
	Inclusive    bool       `json:"inclusive"`
	// BaseBackup is the base backup to restore ("": the agent picks the newest
	// usable one that can reach the target).
	BaseBackup string `json:"baseBackup,omitempty"`
	// Undo is the ID of an earlier in-place recovery of this instance whose
	// previous data directory is put back (replayed to its end and promoted on
	// a new timeline); the current one is kept in its place.
	Undo string `json:"undo,omitempty"`
	// KeepPreviousSeconds is how long after the swap the agent keeps the
	// data directory the recovery replaces.
	KeepPreviousSeconds int64 `json:"keepPreviousSeconds"`
}

var recoveryIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ValidRecoveryID reports whether id can name a previous data directory.
func ValidRecoveryID(id string) bool { return recoveryIDPattern.MatchString(id) }

// RecoverInPlace asks the primary at baseURL to restore its cluster in place.
func (c *Client) RecoverInPlace(ctx context.Context, baseURL string, req InPlaceRecoveryRequest) error {
	resp, err := c.do(ctx, http.MethodPost, strings.TrimSuffix(baseURL, "/")+PathRecoverInPlace, req)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}
