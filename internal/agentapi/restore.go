package agentapi

import "time"

// PathRestore (PUT, authenticated) restores the request body into the application
// database; the RestoreRequest is JSON in the HeaderRestoreRequest header.
const (
	PathRestore          = "/restore"
	HeaderRestoreRequest = "X-Restore-Request"
	// PreRestoreInfix is in the name of every pre-restore copy.
	PreRestoreInfix = "_prerestore_"
)

// RestoreRequest describes the artifact in the body of PUT /restore.
type RestoreRequest struct {
	// ID names the scratch database (lower-case letters and digits).
	ID string `json:"id"`
	// SHA256 of the body (the compressed artifact), from its verified manifest.
	SHA256 string `json:"sha256"`
	// UncompressedBytes is the archive's size, to decide whether it can be spooled.
	UncompressedBytes int64 `json:"uncompressedBytes"`
	// Jobs is pg_restore's parallelism (1: stream, no spool).
	Jobs int `json:"jobs"`
	// KeepPreviousSeconds: how long the pre-restore copy is kept (0: dropped at once).
	KeepPreviousSeconds int64 `json:"keepPreviousSeconds"`
	// VerifyOnly makes a restore drill: the artifact is restored into the
	// scratch database, its rows counted and the scratch database dropped; the
	// application database is not touched.
	VerifyOnly bool `json:"verifyOnly,omitempty"`
	// SessionTimeoutSeconds bounds the wait for sessions to end once terminated
	// (default 30).
	SessionTimeoutSeconds int `json:"sessionTimeoutSeconds,omitempty"`
}

// RestoreResult is the answer of PUT /restore.
type RestoreResult struct {
	Database string `json:"database"`
	// PreviousDatabase is the pre-restore copy ("" when it was dropped at once).
	PreviousDatabase  string    `json:"previousDatabase,omitempty"`
	PreviousDropAfter time.Time `json:"previousDropAfter,omitempty"`
	// TerminatedSessions is how many sessions the swap terminated.
	TerminatedSessions int `json:"terminatedSessions"`
	// Jobs is the parallelism pg_restore ran with (1 when streamed).
	Jobs int `json:"jobs"`
	// Tables is the number of tables in the restored database.
	Tables int `json:"tables"`
	// Seconds is the time from the first byte received to the swap.
	Seconds float64 `json:"seconds"`
	// RowCounts are the rows of each restored table (drills only).
	RowCounts map[string]int64 `json:"rowCounts,omitempty"`
	// Phases are the seconds spent in each step: prepare (scratch database),
	// restore (receive, spool, pg_restore), analyze, swap.
	Phases map[string]float64 `json:"phases,omitempty"`
	// AlreadyRestored: this restore's ID was swapped in before (a retry whose
	// first attempt completed without its answer arriving); nothing was done.
	AlreadyRestored bool `json:"alreadyRestored,omitempty"`
}
