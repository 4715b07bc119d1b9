// Bootstrap and clone: initdb of a new cluster, pg_basebackup of a standby.

package instance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
)

// initdb creates a new cluster without a superuser password: the superuser only
// logs in over the private socket (peer).
func (a *Agent) initdb(ctx context.Context) error {
	a.log.Info("initialising a new primary", "pgdata", a.cfg.PGData)
	staging := a.stagingDir()
	if err := os.RemoveAll(staging); err != nil {
		return fmt.Errorf("clearing a partial data directory: %w", err)
	}
	cmd := a.command(ctx, a.bins.Initdb,
		"--pgdata="+staging,
		"--username=postgres",
		"--auth-local=peer",
		"--auth-host=scram-sha-256",
		"--data-checksums",
		"--encoding=UTF8",
		"--no-instructions",
	)
	if err := cmd.Run(); err != nil {
		_ = os.RemoveAll(staging)
		return fmt.Errorf("initdb: %w", err)
	}
	return a.install()
}

// clone copies an instance (the primary, or a standby when a primary is rebuilt)
// with pg_basebackup, retrying with backoff until it succeeds or ctx ends: the
// source may still be starting. An attempt that copies nothing for
// CloneStallTimeout is stopped and retried; one that progresses runs as long as it
// needs.
func (a *Agent) clone(ctx context.Context, host string, port int, maxAttempts int) error {
	delay := a.cfg.CloneRetry
	staging := a.stagingDir()
	for attempt := 1; ; attempt++ {
		if err := os.RemoveAll(staging); err != nil {
			return fmt.Errorf("clearing a partial data directory: %w", err)
		}
		a.log.Info("cloning", "host", host, "port", port, "attempt", attempt)
		actx, cancel := context.WithCancel(ctx)
		stalled := atomic.Bool{}
		go a.watchClone(actx, cancel, staging, &stalled)
		cmd := a.command(actx, a.bins.PgBasebackup,
			"--pgdata="+staging,
			"--host="+host,
			"--port="+strconv.Itoa(port),
			"--username="+agentapi.ReplicationUser,
			"--wal-method=stream",
			"--checkpoint=fast",
			"--no-password",
		)
		// verify-full against the Database's CA (or prefer without TLS).
		cmd.Env = append(cmd.Env, a.sslEnv()...)
		err := cmd.Run()
		cancel()
		if err == nil {
			if err := dropRecoveryFiles(staging); err != nil {
				return err
			}
			if err := a.writeFile(filepath.Join(staging, "standby.signal"), "", 0o600); err != nil {
				return err
			}
			return a.install()
		}
		if ctx.Err() != nil {
			_ = os.RemoveAll(staging)
			return ctx.Err()
		}
		if stalled.Load() {
			a.log.Warn("pg_basebackup made no progress; retrying", "for", a.cfg.CloneStallTimeout.String())
		}
		if maxAttempts > 0 && attempt >= maxAttempts {
			_ = os.RemoveAll(staging)
			return fmt.Errorf("pg_basebackup from %s:%d failed %d times: %w", host, port, attempt, err)
		}
		a.log.Warn("pg_basebackup failed; retrying", "error", err, "in", delay.String())
		st, _ := a.currentState()
		a.setState(st, fmt.Sprintf("cloning %s:%d: attempt %d failed (%v); retrying in %s", host, port, attempt, err, delay))
		select {
		case <-ctx.Done():
			_ = os.RemoveAll(staging)
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 30*time.Second)
	}
}

// watchClone cancels a clone attempt whose staging directory stops growing.
func (a *Agent) watchClone(ctx context.Context, cancel context.CancelFunc, dir string, stalled *atomic.Bool) {
	tick := min(a.cfg.CloneStallTimeout/4, 15*time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	last, since := int64(-1), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if size := dirSize(dir); size > last {
			last, since = size, time.Now()
			continue
		}
		if time.Since(since) >= a.cfg.CloneStallTimeout {
			stalled.Store(true)
			cancel()
			return
		}
	}
}

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}
