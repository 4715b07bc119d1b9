package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/example/postgres-operator/internal/objectstore"
)

// StartS3 runs versitygw (a real S3-compatible server, built once by
// hack/s3-server.sh) on a loopback port and returns a store on a fresh
// bucket, and how to stop and start the server again (its data kept).
func StartS3(t *testing.T, bucket string) (*objectstore.S3, *S3Server) {
	t.Helper()
	out, err := exec.Command(filepath.Join(RepoRoot(), "hack", "s3-server.sh")).Output()
	if err != nil {
		t.Fatalf("building the S3 server: %v", err)
	}
	srv := &S3Server{t: t, bin: strings.TrimSpace(string(out)), dir: t.TempDir(), port: FreePort(t)}
	srv.Start()
	t.Cleanup(srv.Stop)
	store, err := objectstore.NewS3(objectstore.S3Options{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", srv.port), Region: "us-east-1",
		ForcePathStyle: true, AccessKeyID: "testkey", SecretKey: "testsecret123", Bucket: bucket, PartSize: 5 << 20})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := store.EnsureBucket(context.Background(), "us-east-1")
		if err == nil {
			return store, srv
		}
		if time.Now().After(deadline) {
			t.Fatalf("S3 server: %v\n%s", err, srv.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// S3Server is a running versitygw.
type S3Server struct {
	t        *testing.T
	bin, dir string
	port     int
	cmd      *exec.Cmd
	logs     bytes.Buffer
}

// Endpoint is the server's URL.
func (s *S3Server) Endpoint() string { return fmt.Sprintf("http://127.0.0.1:%d", s.port) }

// Start starts the server (again) on its port and data directory.
func (s *S3Server) Start() {
	s.t.Helper()
	s.cmd = exec.Command(s.bin, "--access", "testkey", "--secret", "testsecret123",
		"--port", fmt.Sprintf("127.0.0.1:%d", s.port), "posix", s.dir)
	s.cmd.Stdout, s.cmd.Stderr = &s.logs, &s.logs
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
}

// Stop kills the server.
func (s *S3Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}
