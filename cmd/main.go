// Command manager is the one binary of postgres-operator. Its subcommands:
//
//	manager        the controller manager (the default)
//	instance       the instance agent, PID 1 of every PostgreSQL container
//	backup         backup run|restore|delete: the Jobs of Backups and Restores
//	upgrade        upgrade collect|check|run|rollback: the major-upgrade Jobs
//	install-agent  copies this binary into a volume (init container of instance pods)
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/example/postgres-operator/internal/backup"
	"github.com/example/postgres-operator/internal/instance"
	"github.com/example/postgres-operator/internal/logging"
	"github.com/example/postgres-operator/internal/manager"
	"github.com/example/postgres-operator/internal/upgrade"
	"github.com/example/postgres-operator/internal/walarchive"
)

func main() {
	args := os.Args[1:]
	cmd := "manager"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "manager":
		err = manager.Run(args)
	case "instance":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		err = instance.Run(ctx, args)
		stop()
	case "backup":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		err = backup.Command(ctx, args)
		stop()
	case "upgrade":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		err = upgrade.Command(ctx, args)
		stop()
	case "wal-push", "wal-fetch":
		// archive_command and restore_command of a Database with a WAL archive.
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		err = walarchive.Command(ctx, cmd, args)
		stop()
	case "install-agent":
		err = installAgent(args)
	default:
		err = fmt.Errorf("unknown subcommand %q (want manager, instance, backup, upgrade, wal-push, wal-fetch or install-agent)", cmd)
	}
	if err != nil {
		logging.New(os.Stderr, slog.LevelInfo).Error("exiting", "command", cmd, logging.ErrorKey, err)
		var exit interface{ ExitCode() int }
		if errors.As(err, &exit) {
			os.Exit(exit.ExitCode())
		}
		os.Exit(1)
	}
}

// installAgent copies the running executable to args[0], atomically, mode 0755.
func installAgent(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: install-agent <destination>")
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("locating own executable: %w", err)
	}
	if err := copyExecutable(self, args[0]); err != nil {
		return err
	}
	// The image's CA bundle goes along: the Jobs that run this binary in a
	// postgres image (which may have none) use it for https:// object stores.
	if err := copyFile(systemCABundle, filepath.Join(filepath.Dir(args[0]), backup.CABundleFile), 0o644); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

const systemCABundle = "/etc/ssl/certs/ca-certificates.crt"

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil { // #nosec G703 -- install-agent's destination argument, set by the pod spec
		return err
	}
	return os.Rename(tmp, dst) // #nosec G703 -- as above
}

func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("opening %s: %w", src, err)
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".install-*")
	if err != nil {
		return fmt.Errorf("creating temporary file next to %s: %w", dst, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("copying %s: %w", src, err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return fmt.Errorf("making %s executable: %w", dst, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil { // #nosec G703 -- as above
		return fmt.Errorf("installing %s: %w", dst, err)
	}
	return nil
}
