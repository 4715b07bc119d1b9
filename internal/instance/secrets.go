// Secrets: the mounted credentials, tokens and certificates, watched and
// applied when they change.

package instance

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/walarchive"
)

// watchSecrets applies changes of the mounted Secret files without a restart: a new
// application or replication password is set on the running primary (and the
// replication passfile rewritten everywhere), a new agent token replaces the old
// one, which stays accepted for TokenGrace.
func (a *Agent) watchSecrets(ctx context.Context) {
	digest := func(dir, name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return ""
		}
		sum := sha256.Sum256([]byte(strings.TrimSpace(string(b))))
		return hex.EncodeToString(sum[:])
	}
	tlsDigest := a.tlsDigest()
	appPw := digest(a.cfg.CredentialsDir, agentapi.CredentialsPasswordFile)
	replPw := digest(a.cfg.InternalDir, agentapi.InternalReplicationPasswordFile)
	userConf := digest(a.cfg.ConfigDir, agentapi.UserConfigFile)
	archiveConf := digest(a.cfg.WALArchiveDir, walarchive.ConfigFile)
	t := time.NewTicker(a.cfg.SecretPoll)
	defer t.Stop()
	pending := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if tok, err := a.readSecret(a.cfg.InternalDir, agentapi.InternalAgentTokenFile); err == nil {
			if cur := a.tokens.Load(); string(cur.cur) != tok {
				a.tokens.Store(&agentTokens{cur: []byte(tok), prev: cur.cur, prevUntil: time.Now().Add(a.cfg.TokenGrace)})
				a.log.Info("agent token changed; the previous one is accepted for a grace period", "grace", a.cfg.TokenGrace.String())
			}
		}
		if d := a.tlsDigest(); d != "" && d != tlsDigest {
			// A renewed certificate (or CA): installed and loaded without a
			// restart (PostgreSQL reloads its certificate on SIGHUP).
			if err := a.installTLS(); err != nil {
				a.log.Warn("installing the renewed TLS certificate; will retry", "error", err)
			} else {
				tlsDigest = d
				a.log.Info("TLS certificate changed: installed")
				if !a.view().Exited {
					if err := a.reload(ctx); err != nil {
						a.log.Warn("reloading PostgreSQL for the renewed certificate", "error", err)
					}
				}
			}
		}
		if d := digest(a.cfg.ConfigDir, agentapi.UserConfigFile); a.cfg.ConfigDir != "" && d != userConf {
			// spec.postgresql changed: the supervisor rewrites the
			// configuration files and reloads (or writes them at the next
			// start); what needs a restart shows in the status
			// (pending_restart) and the operator restarts the instances one at
			// a time.
			userConf = d
			select {
			case a.configChanged <- struct{}{}:
			default: // one already pending
			}
		}
		if d := digest(a.cfg.WALArchiveDir, walarchive.ConfigFile); a.cfg.WALArchiveDir != "" && d != archiveConf {
			// The WAL archive was turned on, off or moved: a rewrite and a
			// reload (archive_mode is always on).
			archiveConf = d
			a.log.Info("WAL archive configuration changed")
			select {
			case a.configChanged <- struct{}{}:
			default:
			}
		}
		if d := digest(a.cfg.InternalDir, agentapi.InternalReplicationPasswordFile); d != "" && d != replPw {
			replPw = d
			if err := a.writePassfile(); err != nil {
				a.log.Error("rewriting the replication passfile", "error", err)
			}
			a.log.Info("replication password changed")
			pending = true
		}
		if d := digest(a.cfg.CredentialsDir, agentapi.CredentialsPasswordFile); d != "" && d != appPw {
			appPw = d
			a.log.Info("application password changed")
			pending = true
		}
		rt := a.view()
		if pending && rt.Primary && rt.SetUp && !rt.Exited {
			if err := a.ensureRoles(ctx); err != nil {
				a.log.Warn("applying changed passwords; will retry", "error", err)
				continue
			}
			a.log.Info("changed passwords applied to the running primary")
			pending = false
		} else if pending && !rt.Primary {
			pending = false
		}
	}
}
