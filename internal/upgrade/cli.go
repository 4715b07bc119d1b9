package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/example/postgres-operator/internal/logging"
)

// MessageLimit is the size of a container's termination message the kubelet
// keeps; the result is shortened to fit.
const MessageLimit = 4096

// ErrFailed is returned by Command when the check, upgrade or rollback failed
// (its result says why).
var ErrFailed = errors.New("failed")

// Command runs `manager upgrade collect|check|run|rollback`, the commands of the
// upgrade Jobs. The result is printed and written to --result-file (the
// container's termination message) as JSON.
func Command(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: upgrade collect|check|run|rollback [flags]")
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("upgrade "+sub, flag.ContinueOnError)
	var cfg Config
	var method, resultFile, dest string
	fs.StringVar(&cfg.PGData, "pgdata", "/var/lib/postgresql/data/pgdata", "the data directory")
	fs.StringVar(&cfg.OldDir, "old", "/old", "where the old installation is collected")
	fs.StringVar(&dest, "dest", "/old", "collect: where to copy the old installation")
	fs.StringVar(&method, "method", string(MethodLink), "link or copy")
	fs.BoolVar(&cfg.RebuildCollationIndexes, "rebuild-collation-indexes", true, "rebuild indexes that depend on a changed collation")
	fs.StringVar(&cfg.FailAfter, "fail-after", "", "testing: exit right after this step")
	fs.StringVar(&resultFile, "result-file", "/dev/termination-log", "where to write the result")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.Method = Method(method)
	cfg.Log = logging.New(os.Stderr, slog.LevelInfo).With("command", "upgrade "+sub)

	var res Result
	switch sub {
	case "collect":
		inst, err := Collect(dest)
		if err != nil {
			return fmt.Errorf("collecting the old installation: %w", err)
		}
		cfg.Log.Info("collected the old installation", "version", inst.Version, "glibc", inst.Glibc, "icu", orNone(inst.ICU), "libraries", len(inst.Libs))
		return nil
	case "check":
		res = Check(ctx, cfg)
	case "run":
		res = Run(ctx, cfg)
	case "rollback":
		res = Rollback(ctx, cfg)
	default:
		return fmt.Errorf("unknown upgrade command %q (collect, check, run or rollback)", sub)
	}
	b := Encode(res)
	fmt.Println(string(b))
	if resultFile != "" {
		if err := os.WriteFile(resultFile, b, 0o600); err != nil { // #nosec G306 G304 -- the termination log
			cfg.Log.Warn("writing the result", logging.ErrorKey, err)
		}
	}
	if !res.OK {
		return fmt.Errorf("%s %w: %s", sub, ErrFailed, res.Message)
	}
	return nil
}

// Encode returns the result as JSON within MessageLimit: long lists and the
// message are shortened first.
func Encode(res Result) []byte {
	b, _ := json.Marshal(res)
	for len(b) > MessageLimit {
		switch {
		case len(res.IndexesToRebuild) > 5:
			n := len(res.IndexesToRebuild)
			res.IndexesToRebuild = append(res.IndexesToRebuild[:4:4], fmt.Sprintf("… %d more", n-4))
		case len(res.ExtensionsToUpdate) > 5:
			n := len(res.ExtensionsToUpdate)
			res.ExtensionsToUpdate = append(res.ExtensionsToUpdate[:4:4], fmt.Sprintf("… %d more", n-4))
		case len(res.Message) > 1500:
			res.Message = res.Message[:1500] + "…"
		case len(res.Steps) > 0:
			res.Steps = nil
		default:
			res.Message = ""
		}
		b, _ = json.Marshal(res)
	}
	return b
}

// Decode reads a result written by Command.
func Decode(s string) (Result, error) {
	var r Result
	err := json.Unmarshal([]byte(s), &r)
	return r, err
}
