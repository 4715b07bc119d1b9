// Package pki is the operator's small certificate authority: one CA per Database
// (its key only in that Database's <name>-ca Secret), which issues the server
// certificate of the Database's instances (PostgreSQL and the agent) and the
// client certificates the operator and restore Jobs present to the agents.
// Keys are ECDSA P-256 from crypto/rand; serial numbers are 128 random bits.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"time"
)

// Validity of what the CA issues, and when it is renewed: a leaf certificate is
// reissued once two thirds of its lifetime have passed, so that it is replaced a
// month before it expires (the kubelet refreshes mounted Secrets within a minute
// or two; the agents reload on change).
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	LeafValidity = 90 * 24 * time.Hour
	// backdate absorbs clock skew between the operator and the instances.
	backdate = 5 * time.Minute
)

// Pair is a PEM certificate and its PEM private key.
type Pair struct {
	CertPEM, KeyPEM []byte
}

// NewCA returns a self-signed CA certificate and key.
func NewCA(commonName string, now time.Time) (Pair, error) {
	key, serial, err := newKey()
	if err != nil {
		return Pair{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"postgres-operator"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return Pair{}, err
	}
	return encode(der, key)
}

// Leaf describes a certificate to issue.
type Leaf struct {
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	// Client makes a client certificate; else a server certificate.
	Client bool
}

// Issue signs a leaf certificate valid for LeafValidity with the CA.
func Issue(ca Pair, leaf Leaf, now time.Time) (Pair, error) {
	caCert, caKey, err := parsePair(ca)
	if err != nil {
		return Pair{}, fmt.Errorf("reading the CA: %w", err)
	}
	key, serial, err := newKey()
	if err != nil {
		return Pair{}, err
	}
	usage := x509.ExtKeyUsageServerAuth
	if leaf.Client {
		usage = x509.ExtKeyUsageClientAuth
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: leaf.CommonName, Organization: []string{"postgres-operator"}},
		DNSNames:     leaf.DNSNames,
		IPAddresses:  leaf.IPs,
		NotBefore:    now.Add(-backdate),
		NotAfter:     earlier(now.Add(LeafValidity), caCert.NotAfter),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return Pair{}, err
	}
	return encode(der, key)
}

// RenewReason says why a leaf certificate must be reissued ("" when it need
// not): missing or unreadable, not signed by the CA, names that differ from want,
// or two thirds of its lifetime passed.
func RenewReason(certPEM, caPEM []byte, want Leaf, now time.Time) string {
	cert, err := ParseCert(certPEM)
	if err != nil {
		return "no valid certificate"
	}
	ca, err := ParseCert(caPEM)
	if err != nil {
		return "no valid CA"
	}
	if err := cert.CheckSignatureFrom(ca); err != nil {
		return "not issued by the current CA"
	}
	if cert.Subject.CommonName != want.CommonName || !sameStrings(cert.DNSNames, want.DNSNames) || !sameIPs(cert.IPAddresses, want.IPs) {
		return "names changed"
	}
	life := cert.NotAfter.Sub(cert.NotBefore)
	if now.After(cert.NotBefore.Add(life * 2 / 3)) {
		return "two thirds of its lifetime passed (expires " + cert.NotAfter.UTC().Format(time.RFC3339) + ")"
	}
	return ""
}

// RenewAt is when RenewReason starts to report the lifetime (zero when the
// certificate cannot be read).
func RenewAt(certPEM []byte) time.Time {
	cert, err := ParseCert(certPEM)
	if err != nil {
		return time.Time{}
	}
	return cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) * 2 / 3)
}

// Fingerprint is the SHA-256 of a PEM certificate's DER, hex.
func Fingerprint(certPEM []byte) string {
	cert, err := ParseCert(certPEM)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(cert.Raw)
	return fmt.Sprintf("%x", sum)
}

// ParseCert reads the first certificate of PEM data.
func ParseCert(certPEM []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

func parsePair(p Pair) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cert, err := ParseCert(p.CertPEM)
	if err != nil {
		return nil, nil, err
	}
	b, _ := pem.Decode(p.KeyPEM)
	if b == nil {
		return nil, nil, errors.New("no PEM key")
	}
	key, err := x509.ParseECPrivateKey(b.Bytes)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func encode(der []byte, key *ecdsa.PrivateKey) (Pair, error) {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Pair{}, err
	}
	return Pair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
	}, nil
}

// newKey returns a P-256 key and a 128-bit random serial number.
func newKey() (*ecdsa.PrivateKey, *big.Int, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	return key, serial, err
}

func sameStrings(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func sameIPs(a, b []net.IP) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
