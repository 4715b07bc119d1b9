package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"
)

func TestIssuedCertificatesVerifyAgainstTheirCAOnly(t *testing.T) {
	now := time.Now()
	ca, err := NewCA("db-ca", now)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewCA("other-ca", now)
	server, err := Issue(ca, Leaf{CommonName: "db", DNSNames: []string{"db.ns.svc", "*.db-hl"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, now)
	if err != nil {
		t.Fatal(err)
	}
	client, err := Issue(ca, Leaf{CommonName: "postgres-operator", Client: true}, now)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM)
	otherPool := x509.NewCertPool()
	otherPool.AppendCertsFromPEM(other.CertPEM)
	sc, _ := ParseCert(server.CertPEM)
	for _, name := range []string{"db.ns.svc", "db-1.db-hl", "127.0.0.1"} {
		if _, err := sc.Verify(x509.VerifyOptions{Roots: pool, DNSName: name}); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}
	if _, err := sc.Verify(x509.VerifyOptions{Roots: pool, DNSName: "evil.example"}); err == nil {
		t.Error("server certificate verified for a name it does not carry")
	}
	if _, err := sc.Verify(x509.VerifyOptions{Roots: otherPool, DNSName: "db.ns.svc"}); err == nil {
		t.Error("server certificate verified against another Database's CA")
	}
	cc, _ := ParseCert(client.CertPEM)
	if _, err := cc.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := sc.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("a server certificate passed as a client certificate")
	}
	if _, err := tls.X509KeyPair(server.CertPEM, server.KeyPEM); err != nil {
		t.Errorf("server pair: %v", err)
	}
	if !strings.Contains(string(server.KeyPEM), "EC PRIVATE KEY") {
		t.Error("key is not PEM EC")
	}
}

func TestRenewReason(t *testing.T) {
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	ca, _ := NewCA("ca", now)
	ca2, _ := NewCA("ca2", now)
	want := Leaf{CommonName: "db", DNSNames: []string{"a", "b"}}
	cert, _ := Issue(ca, want, now)
	tests := []struct {
		name     string
		cert, ca []byte
		want     Leaf
		at       time.Time
		renew    string
	}{
		{"fresh", cert.CertPEM, ca.CertPEM, want, now, ""},
		{"names in another order", cert.CertPEM, ca.CertPEM, Leaf{CommonName: "db", DNSNames: []string{"b", "a"}}, now, ""},
		{"just before two thirds", cert.CertPEM, ca.CertPEM, want, now.Add(LeafValidity*2/3 - time.Hour), ""},
		{"after two thirds", cert.CertPEM, ca.CertPEM, want, now.Add(LeafValidity * 2 / 3), "two thirds"},
		{"missing", nil, ca.CertPEM, want, now, "no valid certificate"},
		{"other CA", cert.CertPEM, ca2.CertPEM, want, now, "not issued by the current CA"},
		{"a name added", cert.CertPEM, ca.CertPEM, Leaf{CommonName: "db", DNSNames: []string{"a", "b", "c"}}, now, "names changed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := RenewReason(tc.cert, tc.ca, tc.want, tc.at)
			if (tc.renew == "") != (got == "") || !strings.Contains(got, tc.renew) {
				t.Errorf("RenewReason = %q, want %q", got, tc.renew)
			}
		})
	}
	if at := RenewAt(cert.CertPEM); at.Before(now.Add(59*24*time.Hour)) || at.After(now.Add(61*24*time.Hour)) {
		t.Errorf("RenewAt = %s, want about 60 days after issue", at)
	}
}
