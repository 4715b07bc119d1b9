package database

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/pki"
)

// Keys of the CA Secret. The CA's key never leaves it: the operator reads it to
// issue certificates and nothing mounts it.
const (
	caCertKey = "ca.crt"
	caKeyKey  = "ca.key"
)

// Names of the TLS Secrets of a Database: its CA, the instances' server
// certificate (mounted by every instance), and the client certificate of its
// restore Jobs.
func caSecretName(db *databasev1.Database) string         { return db.Name + "-ca" }
func serverTLSSecretName(db *databasev1.Database) string  { return db.Name + "-server-tls" }
func restoreTLSSecretName(db *databasev1.Database) string { return agentapi.RestoreTLSSecret(db.Name) }

// agentServerName is the name the operator verifies in an agent's certificate
// (it reaches the agents by pod IP; all instances share the certificate).
func agentServerName(db *databasev1.Database) string {
	return headlessServiceName(db) + "." + db.Namespace + ".svc"
}

// serverLeaf is the instances' certificate: the three Services under every name
// a client in the cluster may use, and each pod under the headless Service
// (short, as the instances name each other, and qualified).
func serverLeaf(db *databasev1.Database, domain string) pki.Leaf {
	if domain == "" {
		domain = DefaultClusterDomain
	}
	var names []string
	for _, svc := range []string{readWriteServiceName(db), readOnlyServiceName(db), headlessServiceName(db)} {
		names = append(names, svc, svc+"."+db.Namespace, svc+"."+db.Namespace+".svc", svc+"."+db.Namespace+".svc."+domain)
	}
	hl := headlessServiceName(db)
	names = append(names, "*."+hl, "*."+hl+"."+db.Namespace, "*."+hl+"."+db.Namespace+".svc", "*."+hl+"."+db.Namespace+".svc."+domain)
	return pki.Leaf{CommonName: readWriteServiceName(db) + "." + db.Namespace + ".svc", DNSNames: names}
}

// reconcileTLS creates the Database's CA once, keeps the server and restore
// certificates issued by it and current (reissued when missing, not from this
// CA, for other names, or two thirds through their lifetime: the instances
// reload them without a restart), and prepares the operator's own client
// certificate for the agents.
func (r *Reconciler) reconcileTLS(ctx context.Context, db *databasev1.Database, obs *observation) error {
	now := r.now()
	caSecret, _, err := r.ensureSecret(ctx, db, obs, caSecretName(db), func() (map[string][]byte, error) {
		ca, err := pki.NewCA(db.Namespace+"/"+db.Name, now)
		if err != nil {
			return nil, fmt.Errorf("creating the CA: %w", err)
		}
		return map[string][]byte{caCertKey: ca.CertPEM, caKeyKey: ca.KeyPEM}, nil
	})
	if err != nil || caSecret == nil {
		return err
	}
	ca := pki.Pair{CertPEM: caSecret.Data[caCertKey], KeyPEM: caSecret.Data[caKeyKey]}
	if _, err := pki.ParseCert(ca.CertPEM); err != nil {
		return fmt.Errorf("secret %s holds no valid CA certificate (delete it to have a new CA issued): %w", caSecret.Name, err)
	}
	obs.CAPEM = ca.CertPEM
	var errs []error
	for _, want := range []struct {
		secret string
		leaf   pki.Leaf
	}{
		{serverTLSSecretName(db), serverLeaf(db, obs.ClusterDomain)},
		{restoreTLSSecretName(db), pki.Leaf{CommonName: agentapi.ClientRestore, Client: true}},
	} {
		if err := r.ensureLeaf(ctx, db, obs, want.secret, ca, want.leaf, now); err != nil {
			errs = append(errs, err)
		}
	}
	httpc, err := r.agentTLS(db, ca, now)
	if err != nil {
		errs = append(errs, err)
	}
	obs.Agent.HTTPS = httpc
	return errors.Join(errs...)
}

// ensureLeaf creates or reissues the certificate Secret name (tls.crt, tls.key,
// ca.crt) when pki.RenewReason says so.
func (r *Reconciler) ensureLeaf(ctx context.Context, db *databasev1.Database, obs *observation, name string, ca pki.Pair, leaf pki.Leaf, now time.Time) error {
	issue := func() (map[string][]byte, error) {
		p, err := pki.Issue(ca, leaf, now)
		if err != nil {
			return nil, fmt.Errorf("issuing the certificate of secret %s: %w", name, err)
		}
		return map[string][]byte{agentapi.TLSCertFile: p.CertPEM, agentapi.TLSKeyFile: p.KeyPEM, agentapi.TLSCAFile: ca.CertPEM}, nil
	}
	secret, created, err := r.ensureSecret(ctx, db, obs, name, issue)
	if err != nil || secret == nil || created {
		return err
	}
	reason := pki.RenewReason(secret.Data[agentapi.TLSCertFile], ca.CertPEM, leaf, now)
	if reason == "" && string(secret.Data[agentapi.TLSCAFile]) == string(ca.CertPEM) {
		return nil
	}
	if reason == "" {
		reason = "CA bundle changed"
	}
	data, err := issue()
	if err != nil {
		return err
	}
	if err := r.patchSecretData(ctx, secret, data); err != nil {
		return fmt.Errorf("renewing the certificate: %w", err)
	}
	logf.FromContext(ctx).Info("certificate reissued", "secret", name, "reason", reason)
	if r.Recorder != nil {
		r.Recorder.Eventf(db, nil, corev1.EventTypeNormal, "CertificateRenewed", "RenewCertificate",
			"Certificate in Secret %s reissued: %s", name, reason)
	}
	return nil
}

// agentClient is the operator's HTTPS client for one Database's agents.
type agentClient struct {
	caFingerprint string
	renewAt       time.Time
	http          *http.Client
}

// agentTLS returns the HTTPS client for db's agents: it trusts only db's CA,
// expects the instances' certificate, and presents a client certificate with
// the common name the agents admit (issued in memory, never stored; reissued at
// two thirds of its lifetime or when the CA changes).
func (r *Reconciler) agentTLS(db *databasev1.Database, ca pki.Pair, now time.Time) (*http.Client, error) {
	fp := pki.Fingerprint(ca.CertPEM)
	key := client.ObjectKeyFromObject(db)
	if v, ok := r.agentClients.Load(key); ok {
		if c := v.(*agentClient); c.caFingerprint == fp && now.Before(c.renewAt) {
			return c.http, nil
		}
	}
	p, err := pki.Issue(ca, pki.Leaf{CommonName: agentapi.ClientOperator, Client: true}, now)
	if err != nil {
		return nil, fmt.Errorf("issuing the operator's client certificate: %w", err)
	}
	cert, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM)
	c := &agentClient{caFingerprint: fp, renewAt: pki.RenewAt(p.CertPEM), http: &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{
				MinVersion:   tls.VersionTLS12,
				RootCAs:      pool,
				ServerName:   agentServerName(db),
				Certificates: []tls.Certificate{cert},
			},
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     90 * time.Second,
		},
	}}
	if v, ok := r.agentClients.Swap(key, c); ok {
		v.(*agentClient).http.CloseIdleConnections()
	}
	return c.http, nil
}

// forgetAgentClient drops the HTTPS client of a deleted Database.
func (r *Reconciler) forgetAgentClient(key types.NamespacedName) {
	if v, ok := r.agentClients.LoadAndDelete(key); ok {
		v.(*agentClient).http.CloseIdleConnections()
	}
}
