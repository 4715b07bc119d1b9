package instance

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/example/postgres-operator/internal/agentapi"
)

// Copies in the private secret directory (memory-backed in a pod), owned by the
// postgres user with mode 0600, as PostgreSQL requires of its key.
func (a *Agent) serverCertPath() string { return filepath.Join(a.secretDir(), "server.crt") }
func (a *Agent) serverKeyPath() string  { return filepath.Join(a.secretDir(), "server.key") }
func (a *Agent) caPath() string         { return filepath.Join(a.secretDir(), "ca.crt") }

func (a *Agent) tlsEnabled() bool { return a.cfg.TLSDir != "" }

// tlsDigest identifies the mounted TLS files' content ("" without TLS).
func (a *Agent) tlsDigest() string {
	if !a.tlsEnabled() {
		return ""
	}
	h := sha256.New()
	for _, f := range []string{agentapi.TLSCertFile, agentapi.TLSKeyFile, agentapi.TLSCAFile} {
		b, err := os.ReadFile(filepath.Join(a.cfg.TLSDir, f))
		if err != nil {
			return ""
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// installTLS copies the mounted certificate, key and CA into the run directory
// and loads them for the agent's HTTPS server. It checks that the key matches the
// certificate, so that PostgreSQL is never restarted onto a broken pair.
func (a *Agent) installTLS() error {
	if !a.tlsEnabled() {
		return nil
	}
	read := func(f string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(a.cfg.TLSDir, f))
		if err == nil && len(b) == 0 {
			err = errors.New("empty")
		}
		if err != nil {
			return nil, fmt.Errorf("reading TLS file %s: %w", f, err)
		}
		return b, nil
	}
	cert, err := read(agentapi.TLSCertFile)
	if err != nil {
		return err
	}
	key, err := read(agentapi.TLSKeyFile)
	if err != nil {
		return err
	}
	ca, err := read(agentapi.TLSCAFile)
	if err != nil {
		return err
	}
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		return fmt.Errorf("the TLS certificate and key do not form a pair: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return errors.New("the TLS CA file holds no certificate")
	}
	for path, content := range map[string][]byte{a.serverCertPath(): cert, a.serverKeyPath(): key, a.caPath(): ca} {
		if err := a.writeFile(path, string(content), 0o600); err != nil {
			return err
		}
	}
	a.tlsState.set(&pair, pool)
	return nil
}

// tlsState is the agent's current server certificate and client CA pool,
// replaced on rotation without restarting the HTTPS listener.
type tlsState struct {
	mu   sync.RWMutex
	cert *tls.Certificate
	pool *x509.CertPool
}

func (s *tlsState) set(cert *tls.Certificate, pool *x509.CertPool) {
	s.mu.Lock()
	s.cert, s.pool = cert, pool
	s.mu.Unlock()
}

func (s *tlsState) get() (*tls.Certificate, *x509.CertPool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cert, s.pool
}

// serverTLSConfig serves the current certificate. A client certificate is
// verified against the Database's CA when one is presented (the kubelet's probes
// present none); the handlers of everything but the probes require one.
func (a *Agent) serverTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, pool := a.tlsState.get()
			if cert == nil {
				return nil, errors.New("no server certificate")
			}
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{*cert},
				ClientCAs:    pool,
				ClientAuth:   tls.VerifyClientCertIfGiven,
			}, nil
		},
	}
}

// sslVerify is the TLS part of the connection strings to other instances:
// verify-full against the Database's CA (the pod DNS names are in the server
// certificate), or prefer for an agent run without TLS (tests). pgx (the
// agent's own connections) takes it as it is.
func (a *Agent) sslVerify() []string {
	if !a.tlsEnabled() {
		return []string{"sslmode=prefer"}
	}
	return []string{"sslmode=verify-full", "sslrootcert=" + a.caPath()}
}

// sslConninfo is sslVerify for libpq, which also needs to be told there is no
// client certificate: it would otherwise look in the home directory (and fail
// on one it may not read); it ignores a named file that does not exist, which
// pgx does not.
func (a *Agent) sslConninfo() []string {
	if !a.tlsEnabled() {
		return a.sslVerify()
	}
	none := filepath.Join(a.secretDir(), "no-client-cert")
	return append(a.sslVerify(), "sslcert="+none, "sslkey="+none)
}

// sslEnv is sslConninfo for libpq programs given host and port as flags.
func (a *Agent) sslEnv() []string {
	if !a.tlsEnabled() {
		return []string{"PGSSLMODE=prefer"}
	}
	none := filepath.Join(a.secretDir(), "no-client-cert")
	return []string{"PGSSLMODE=verify-full", "PGSSLROOTCERT=" + a.caPath(), "PGSSLCERT=" + none, "PGSSLKEY=" + none}
}
