package walarchive

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/example/postgres-operator/internal/agekey"
	"github.com/example/postgres-operator/internal/objectstore"
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
// and `wal-fetch [flags] <name> <dest>` (a restore_command: %f %p).
func Command(ctx context.Context, sub string, args []string) error {
	fs := flag.NewFlagSet(sub, flag.ContinueOnError)
	location := fs.String("location", "", "s3://bucket/prefix or pvc://claim/path of the Database's WAL archive")
	configDir := fs.String("config-dir", "", "directory of the Database's WAL archive configuration (the <name>-wal-archive Secret); replaces --location and the store flags")
	statusFile := fs.String("status-file", "", "wal-push: where to record the result (for the agent's status)")
	encryptionDir := fs.String("encryption-dir", "", "directory with the identity file of an age key: encrypt (push), decrypt (fetch)")
	timeout := fs.Duration("timeout", 5*time.Minute, "bound on one push or fetch")
	var storeFlags objectstore.Flags
	storeFlags.Register(fs, "/wal-archive", "/etc/postgres-operator/wal-archive-s3")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return fmt.Errorf("usage: %s [flags] %s", sub, map[string]string{"wal-push": "<path> <name>", "wal-fetch": "<name> <dest>"}[sub])
	}
	var a *Archive
	if *configDir != "" {
		var err error
		if a, err = OpenConfigDir(*configDir); err != nil {
			return &ExitError{Code: ExitUnavailable, Err: err}
		}
	} else {
		loc, err := objectstore.ParseLocation(*location)
		if err != nil {
			return err
		}
		store, err := storeFlags.Open(loc)
		if err != nil {
			return &ExitError{Code: ExitUnavailable, Err: err}
		}
		a = &Archive{Store: store, Prefix: loc.Prefix}
	}
	if *encryptionDir != "" {
		b, err := os.ReadFile(filepath.Join(*encryptionDir, "identity")) // #nosec G304 -- the mounted key's file
		if err != nil {
			return &ExitError{Code: ExitUnavailable, Err: fmt.Errorf("reading the encryption key: %w", err)}
		}
		id, err := agekey.Parse(string(b))
		if err != nil {
			return &ExitError{Code: ExitUnavailable, Err: err}
		}
		a.Recipient, a.Identity = id.Recipient(), id
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	switch sub {
	case "wal-push":
		_, err := a.Push(ctx, fs.Arg(0), fs.Arg(1))
		if *statusFile != "" {
			st := PushStatus{Time: time.Now().UTC(), Name: fs.Arg(1)}
			if err != nil {
				st.Error = err.Error()
			}
			_ = WritePushStatus(*statusFile, st)
		}
		return err
	case "wal-fetch":
		_, err := a.Fetch(ctx, fs.Arg(0), fs.Arg(1))
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
