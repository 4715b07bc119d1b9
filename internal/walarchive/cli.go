package walarchive

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/example/postgres-operator/internal/agekey"
	"github.com/example/postgres-operator/internal/objectstore"
	"github.com/example/postgres-operator/internal/postgres"
)

// Exit codes of wal-fetch, as restore_command: PostgreSQL takes 1 for "this
// file is not in the archive" (recovery ends there, or a standby switches to
// streaming) and an exit status above 125 as a failure that aborts recovery.
// A store that cannot be reached must never end a recovery early at a point
// the user did not ask for: it exits ExitUnavailable, PostgreSQL stops, and
// the agent starts it again.
const (
	ExitNotArchived = 1
	ExitUnavailable = 200
)

// ExitError carries the process's exit status.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// ExitCode is the status the process exits with.
func (e *ExitError) ExitCode() int { return e.Code }

// Command runs `wal-push [flags] <path> <name>` (an archive_command: %p %f)
// and `wal-fetch [flags] <name> <dest>` (a restore_command: %f %p). Both run
// in the data directory (PostgreSQL's working directory), whose system
// identifier names the archive's directory: <location>/<system id>/wal/, so a
// new cluster (a recreated Database, a restore into a new one) never mixes
// its WAL with another's under the same names.
//
// wal-push fails with status 1 whatever went wrong (PostgreSQL counts the
// failure in pg_stat_archiver, keeps the file and retries; a status above
// 125 would only restart its archiver, unseen) and records the error in
// --status-file. wal-fetch exits ExitNotArchived only for a file the archive
// does not have, ExitUnavailable for anything else.
func Command(ctx context.Context, sub string, args []string) error {
	fs := flag.NewFlagSet(sub, flag.ContinueOnError)
	location := fs.String("location", "", "s3://bucket/prefix or pvc://claim/path of the Database's WAL archive")
	configDir := fs.String("config-dir", "", "directory of the Database's WAL archive configuration (the <name>-wal-archive Secret); replaces --location and the store flags")
	statusFile := fs.String("status-file", "", "wal-push: where to record the result (for the agent's status)")
	encryptionDir := fs.String("encryption-dir", "", "directory with the identity file of an age key: encrypt (push), decrypt (fetch)")
	systemID := fs.String("system-id", "", "the cluster's system identifier (default: read from the data directory, the working directory)")
	timeout := fs.Duration("timeout", time.Minute, "bound on one push or fetch")
	var storeFlags objectstore.Flags
	storeFlags.Register(fs, "/wal-archive", "/etc/postgres-operator/wal-archive-s3")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return fmt.Errorf("usage: %s [flags] %s", sub, map[string]string{"wal-push": "<path> <name>", "wal-fetch": "<name> <dest>"}[sub])
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	a, err := open(*configDir, *location, *encryptionDir, *systemID, storeFlags)
	switch sub {
	case "wal-push":
		if err == nil {
			_, err = a.Push(ctx, fs.Arg(0), fs.Arg(1))
		}
		if *statusFile != "" {
			st := PushStatus{Time: time.Now().UTC(), Name: fs.Arg(1)}
			prev, _ := ReadPushStatus(*statusFile)
			st.LastCommitTime, st.LastCommitWAL = prev.LastCommitTime, prev.LastCommitWAL
			if err != nil {
				st.Error = err.Error()
			} else if t, ok := lastCommit(ctx, fs.Arg(0), fs.Arg(1)); ok && (prev.LastCommitWAL == "" || fs.Arg(1) >= prev.LastCommitWAL) {
				st.LastCommitTime, st.LastCommitWAL = &t, fs.Arg(1)
			}
			_ = WritePushStatus(*statusFile, st)
		}
		return err
	case "wal-fetch":
		if err == nil {
			_, err = a.Fetch(ctx, fs.Arg(0), fs.Arg(1))
		}
		switch {
		case errors.Is(err, ErrNotArchived):
			return &ExitError{Code: ExitNotArchived, Err: err}
		case err != nil:
			return &ExitError{Code: ExitUnavailable, Err: err}
		}
		return nil
	}
	return fmt.Errorf("unknown WAL command %q (wal-push or wal-fetch)", sub)
}

// lastCommit reads the last commit time of the segment just archived (not
// of a history or partial file). It never fails a push: without
// pg_waldump, or on an unreadable segment, the previous figure stays.
func lastCommit(ctx context.Context, path, name string) (time.Time, bool) {
	if len(name) != 24 {
		return time.Time{}, false
	}
	bins, err := postgres.FindBinaries("")
	if err != nil {
		return time.Time{}, false
	}
	t, ok, err := LastCommitTime(ctx, filepath.Join(bins.Dir, "pg_waldump"), path)
	return t, ok && err == nil
}

// open opens the archive of the configuration directory, or of the location
// and store flags, in the system identifier's directory.
func open(configDir, location, encryptionDir, systemID string, storeFlags objectstore.Flags) (*Archive, error) {
	if systemID == "" {
		id, err := postgres.ReadSystemID(".")
		if err != nil {
			return nil, fmt.Errorf("the system identifier of the data directory (the working directory): %w", err)
		}
		systemID = id
	}
	var a *Archive
	if configDir != "" {
		var err error
		if a, err = OpenConfigDir(configDir, storeFlags.S3CABundle); err != nil {
			return nil, err
		}
	} else {
		loc, err := objectstore.ParseLocation(location)
		if err != nil {
			return nil, err
		}
		store, err := storeFlags.Open(loc)
		if err != nil {
			return nil, err
		}
		a = &Archive{Store: store, Prefix: loc.Prefix}
	}
	a.Prefix = strings.TrimPrefix(a.Prefix+"/"+systemID, "/")
	if encryptionDir != "" {
		b, err := os.ReadFile(filepath.Join(encryptionDir, IdentityFile)) // #nosec G304 -- the mounted key's file
		if err != nil {
			return nil, fmt.Errorf("reading the encryption key: %w", err)
		}
		id, err := agekey.Parse(string(b))
		if err != nil {
			return nil, err
		}
		a.Recipient, a.Identity = id.Recipient(), id
	}
	return a, nil
}
