package database

import (
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/pki"
)

func getSecret(t *testing.T, ns, name string) *corev1.Secret {
	t.Helper()
	var s corev1.Secret
	eventually(t, "secret "+name, func() string {
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: ns, Name: name}, &s); err != nil {
			return err.Error()
		}
		return ""
	})
	return &s
}

// verifyLeaf checks that certPEM chains to caPEM for name and usage.
func verifyLeaf(certPEM, caPEM []byte, name string, usage x509.ExtKeyUsage) error {
	cert, err := pki.ParseCert(certPEM)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	_, err = cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

func TestEveryDatabaseGetsACAAndCertificatesAndHardenedInstances(t *testing.T) {
	ns := newNamespace(t)
	if err := applyYAML(t, ns, seedManifest); err != nil {
		t.Fatal(err)
	}
	db := waitPhase(t, ns, "my-database", databasev1.PhaseProvisioning)

	ca := getSecret(t, ns, "my-database-ca")
	assertOwned(t, ca, db)
	caPEM := ca.Data["ca.crt"]
	if c, err := pki.ParseCert(caPEM); err != nil || !c.IsCA {
		t.Fatalf("CA secret: %v", err)
	}
	if len(ca.Data["ca.key"]) == 0 {
		t.Fatal("CA secret without its key")
	}

	server := getSecret(t, ns, "my-database-server-tls")
	assertOwned(t, server, db)
	if string(server.Data["ca.crt"]) != string(caPEM) {
		t.Error("server-tls ca.crt is not the Database's CA")
	}
	if _, err := tls.X509KeyPair(server.Data["tls.crt"], server.Data["tls.key"]); err != nil {
		t.Errorf("server certificate and key: %v", err)
	}
	// Every name an application or another instance connects with.
	for _, name := range []string{
		"my-database." + ns + ".svc.cluster.local", "my-database", "my-database-ro." + ns + ".svc",
		"my-database-0.my-database-hl", "my-database-1.my-database-hl." + ns + ".svc.cluster.local",
		agentServerName(db),
	} {
		if err := verifyLeaf(server.Data["tls.crt"], caPEM, name, x509.ExtKeyUsageServerAuth); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}
	if err := verifyLeaf(server.Data["tls.crt"], caPEM, "other-db."+ns+".svc", x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("server certificate valid for another Database's Service")
	}

	restore := getSecret(t, ns, "my-database-restore-tls")
	rc, err := pki.ParseCert(restore.Data["tls.crt"])
	if err != nil || rc.Subject.CommonName != agentapi.ClientRestore {
		t.Fatalf("restore client certificate: %v %v", err, rc)
	}
	if err := verifyLeaf(restore.Data["tls.crt"], caPEM, "", x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("restore client certificate: %v", err)
	}
	if _, ok := restore.Data["ca.key"]; ok {
		t.Error("the restore Secret carries the CA key")
	}

	// The credentials Secret: the CA and a uri that verifies the server.
	creds := getSecret(t, ns, "my-database-credentials")
	if string(creds.Data["ca.crt"]) != string(caPEM) || string(creds.Data["sslmode"]) != "verify-full" {
		t.Errorf("credentials ca.crt/sslmode: %q", creds.Data["sslmode"])
	}
	u, err := url.Parse(string(creds.Data["uri"]))
	if err != nil || u.Query().Get("sslmode") != "verify-full" {
		t.Errorf("uri %v: %v", u, err)
	}

	// The instances mount the server certificate, never the CA's key, and the
	// kubelet probes the agent over HTTPS.
	sts, err := getSTS(ns, "my-database")
	if err != nil {
		t.Fatal(err)
	}
	spec := sts.Spec.Template.Spec
	var mounted []string
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			mounted = append(mounted, v.Secret.SecretName)
		}
	}
	slices.Sort(mounted)
	// (and the WAL archive's configuration and store credentials, optional:
	// empty without spec.walArchive)
	if want := []string{"my-database-credentials", "my-database-internal", "my-database-server-tls", "my-database-wal-archive"}; !slices.Equal(mounted, want) {
		t.Errorf("mounted Secrets %v, want %v", mounted, want)
	}
	// Every container writes only to its volumes, with bounded resources for
	// the init container; /dev/shm is bounded.
	for _, ct := range append(spec.InitContainers, spec.Containers...) {
		if sc := ct.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("container %s: root filesystem writable", ct.Name)
		}
	}
	if spec.InitContainers[0].Resources.Limits.Memory().IsZero() {
		t.Error("init container without a memory limit")
	}
	for _, v := range spec.Volumes {
		if v.Name == volumeShm && (v.EmptyDir == nil || v.EmptyDir.SizeLimit == nil) {
			t.Error("/dev/shm unbounded")
		}
	}
	c := spec.Containers[0]
	if !slices.Contains(c.Command, "--tls-dir="+agentapi.DefaultTLSDir) || slices.Contains(c.Command, "--tls-optional") {
		t.Errorf("command %v", c.Command)
	}
	for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
		if p.HTTPGet.Scheme != corev1.URISchemeHTTPS {
			t.Errorf("probe %s over %s", p.HTTPGet.Path, p.HTTPGet.Scheme)
		}
	}

	// spec.tls.mode Optional lets the agent accept plain connections.
	if err := applyYAML(t, ns, strings.Replace(seedManifest, "spec:\n", "spec:\n  tls: {mode: Optional}\n", 1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "--tls-optional", func() string {
		sts, err := getSTS(ns, "my-database")
		if err != nil {
			return err.Error()
		}
		if !slices.Contains(sts.Spec.Template.Spec.Containers[0].Command, "--tls-optional") {
			return "not yet"
		}
		return ""
	})
}

func TestACertificateWithWrongNamesOrNearExpiryIsReissued(t *testing.T) {
	ns := newNamespace(t)
	if err := applyYAML(t, ns, seedManifest); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "my-database", databasev1.PhaseProvisioning)
	ca := getSecret(t, ns, "my-database-ca")
	caPair := pki.Pair{CertPEM: ca.Data["ca.crt"], KeyPEM: ca.Data["ca.key"]}

	cases := []struct {
		name string
		leaf pki.Leaf
		at   time.Time
	}{
		// Issued for other names (an edited Secret).
		{"wrong names", pki.Leaf{CommonName: "x", DNSNames: []string{"elsewhere.example"}}, time.Now()},
		// Issued 80 days ago: past two thirds of its 90 days.
		{"near expiry", serverLeaf(getDB(t, ns, "my-database"), ""), time.Now().Add(-80 * 24 * time.Hour)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			old, err := pki.Issue(caPair, tc.leaf, tc.at)
			if err != nil {
				t.Fatal(err)
			}
			s := getSecret(t, ns, "my-database-server-tls")
			s.Data["tls.crt"], s.Data["tls.key"] = old.CertPEM, old.KeyPEM
			if err := k8s.Update(testCtx, s); err != nil {
				t.Fatal(err)
			}
			eventually(t, "reissued", func() string {
				s := getSecret(t, ns, "my-database-server-tls")
				if string(s.Data["tls.crt"]) == string(old.CertPEM) {
					return "not yet"
				}
				if err := verifyLeaf(s.Data["tls.crt"], caPair.CertPEM, "my-database."+ns+".svc", x509.ExtKeyUsageServerAuth); err != nil {
					return err.Error()
				}
				if r := pki.RenewReason(s.Data["tls.crt"], caPair.CertPEM, serverLeaf(getDB(t, ns, "my-database"), ""), time.Now()); r != "" {
					return r
				}
				return ""
			})
		})
	}
}
