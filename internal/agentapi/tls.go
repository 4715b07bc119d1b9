package agentapi

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Files of the TLS directory (the Database's <name>-server-tls Secret): the
// instances' server certificate and key (PostgreSQL's and the agent's) and the
// Database's CA, which also signs the client certificates the agent accepts.
const (
	TLSCertFile = "tls.crt"
	TLSKeyFile  = "tls.key"
	TLSCAFile   = "ca.crt"
)

// Client certificate common names the agent accepts: the operator, and the
// Database's restore Jobs (which may only restore).
const (
	ClientOperator = "postgres-operator"
	ClientRestore  = "postgres-operator-restore"
)

// tlsDirFlag is the instance subcommand's flag naming the TLS directory.
const tlsDirFlag = "--tls-dir="

// TLSDirArg is the argument that starts an agent with TLS from dir.
func TLSDirArg(dir string) string { return tlsDirFlag + dir }

// ContainerName is the name of the instance pods' container that runs the agent
// and PostgreSQL.
const ContainerName = "postgres"

// RestoreTLSSecret is the name of the Secret with the client certificate
// (ClientRestore) that the restore Jobs of Database database present.
func RestoreTLSSecret(database string) string { return database + "-restore-tls" }

// ClientTLSConfig is the configuration of a client of the agents with the
// client certificate in dir (TLSCertFile, TLSKeyFile) that trusts only the CA
// there (TLSCAFile).
func ClientTLSConfig(dir string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, TLSCertFile), filepath.Join(dir, TLSKeyFile))
	if err != nil {
		return nil, fmt.Errorf("loading the client certificate: %w", err)
	}
	ca, err := os.ReadFile(filepath.Join(dir, TLSCAFile))
	if err != nil {
		return nil, fmt.Errorf("reading the CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, errors.New("the CA file holds no certificate")
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, Certificates: []tls.Certificate{pair}}, nil
}
