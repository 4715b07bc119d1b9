package backup

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/objectstore"
	"github.com/example/postgres-operator/internal/testenv"
)

// TestBackupAndRestoreOverTLSWithAPrivateCA: the S3 server speaks only TLS with
// a certificate of a private CA. With the CA bundle the backup and the restore
// work; without it the client refuses the server (no silent downgrade, no
// skipped verification).
func TestBackupAndRestoreOverTLSWithAPrivateCA(t *testing.T) {
	p := startPostgres(t)
	p.seed(t)
	original := p.checksums(t)
	ctx := context.Background()
	dir := t.TempDir()
	tf := testenv.WriteTLS(t, dir, []net.IP{net.ParseIP("127.0.0.1")}, nil)
	caFile, certFile, keyFile := tf.CA, tf.Cert, tf.Key
	out, err := exec.Command(filepath.Join("..", "..", "hack", "s3-server.sh")).Output()
	if err != nil {
		t.Fatalf("building the S3 server: %v", err)
	}
	port := testenv.FreePort(t)
	cmd := exec.Command(strings.TrimSpace(string(out)), "--access", "testkey", "--secret", "testsecret123",
		"--port", fmt.Sprintf("127.0.0.1:%d", port), "--cert", certFile, "--key", keyFile, "posix", t.TempDir())
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	open := func(cas ...string) *objectstore.S3 {
		s, err := objectstore.NewS3(objectstore.S3Options{Endpoint: fmt.Sprintf("https://127.0.0.1:%d", port), Region: "us-east-1",
			ForcePathStyle: true, AccessKeyID: "testkey", SecretKey: "testsecret123", Bucket: "backups", PartSize: 5 << 20, CAFiles: cas})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	store := open(caFile)
	testenv.Eventually(t, "the TLS S3 server", func() string {
		if err := store.EnsureBucket(ctx, "us-east-1"); err != nil {
			return err.Error() + "\n" + logs.String()
		}
		return ""
	})

	if err := open().EnsureBucket(ctx, "us-east-1"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without the private CA the server was trusted: %v", err)
	}
	if _, err := objectstore.NewS3(objectstore.S3Options{Endpoint: "https://127.0.0.1:1", Bucket: "b", CAFiles: []string{keyFile}}); err == nil {
		t.Error("a CA bundle without certificates was accepted")
	}

	key := "tls/backup.dump.zst"
	if _, err := Run(ctx, Options{PgDump: p.bins.PgDump, PgRestore: p.bins.PgRestore, Conn: p.conn(), Store: store, Key: key}); err != nil {
		t.Fatalf("backup over TLS: %v", err)
	}
	p.exec(t, "DELETE FROM kinds")
	if _, err := p.restore(ctx, store, key, "tls", 2); err != nil {
		t.Fatalf("restore over TLS: %v", err)
	}
	if d := equalSums(original, p.checksums(t)); d != "" {
		t.Errorf("tables differ after restore: %s", d)
	}
}

// TestS3JobsTrustTheOperatorImageBundleAndAPrivateCA: every S3 Job points at the
// CA bundle copied from the operator image; with s3.caSecret only that Secret's
// key is mounted and named as the private CA.
func TestS3JobsTrustTheOperatorImageBundleAndAPrivateCA(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ca     *corev1.SecretKeySelector
		wantCA bool
	}{
		{"public CAs only", nil, false},
		{"private CA", &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "my-ca"}, Key: "root.pem"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			job := BuildJob(JobSpec{Name: "b-delete", Namespace: "ns", Action: "delete", Image: "op", AgentImage: "op",
				Target: Target{Location: objectstore.Location{Scheme: "s3", Bucket: "bkt"},
					S3: &databasev1.S3Config{Endpoint: "https://s3.example", CredentialsSecret: corev1.LocalObjectReference{Name: "creds"}, CASecret: tc.ca}},
				Key: "k"})
			args := strings.Join(job.Spec.Template.Spec.Containers[0].Command, " ")
			if !strings.Contains(args, "--s3-ca-bundle=/controller/ca-certificates.crt") {
				t.Errorf("args %q lack the image's CA bundle", args)
			}
			if got := strings.Contains(args, "--s3-ca-file="+S3CADir+"/ca.crt"); got != tc.wantCA {
				t.Errorf("private CA flag = %t, want %t: %q", got, tc.wantCA, args)
			}
			var vol *corev1.Volume
			for i, v := range job.Spec.Template.Spec.Volumes {
				if v.Name == "s3-ca" {
					vol = &job.Spec.Template.Spec.Volumes[i]
				}
			}
			if (vol != nil) != tc.wantCA {
				t.Fatalf("s3-ca volume = %+v, want %t", vol, tc.wantCA)
			}
			if vol != nil && (vol.Secret.SecretName != "my-ca" || len(vol.Secret.Items) != 1 || vol.Secret.Items[0].Key != "root.pem" || vol.Secret.Items[0].Path != "ca.crt") {
				t.Errorf("s3-ca volume = %+v", vol.Secret)
			}
		})
	}
}
