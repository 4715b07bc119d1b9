package walarchive

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"

	"github.com/example/postgres-operator/internal/objectstore"
	"github.com/example/postgres-operator/internal/postgres"
)

// mirror pushes what the server's archive_command copies into archiveDir to
// the archive, as wal-push would, until the test ends.
func (s *server) mirror(t *testing.T, a *Archive) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		pushed := map[string]bool{}
		for ctx.Err() == nil {
			entries, _ := os.ReadDir(s.archiveDir)
			for _, e := range entries {
				if !pushed[e.Name()] && ValidName(e.Name()) {
					if _, err := a.Push(ctx, filepath.Join(s.archiveDir, e.Name()), e.Name()); err == nil {
						pushed[e.Name()] = true
					}
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
}

func (s *server) baseOptions(name, sysid string) BaseOptions {
	return BaseOptions{Name: name, PgBasebackup: s.bins.Dir + "/pg_basebackup",
		Source:   Source{Host: "127.0.0.1", Port: s.port, User: "postgres", Env: []string{"PGSSLMODE=disable"}},
		SystemID: sysid, WALTimeout: 30 * time.Second, Poll: 50 * time.Millisecond}
}

// rewriteBase replaces the stored tar of base backup name by edit's result
// (and, with fixSum, records the new tar's checksum in its backup.json, so
// that only the per-file checks of the backup manifest can catch it).
func rewriteBase(t *testing.T, a *Archive, name string, fixSum bool, edit func(hdr *tar.Header, body []byte) (*tar.Header, []byte)) {
	t.Helper()
	ctx := context.Background()
	b, err := a.ReadBase(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := a.Store.Get(ctx, a.BaseKey(name, BaseObject))
	if err != nil {
		t.Fatal(err)
	}
	z, _ := zstd.NewReader(rc)
	tr := tar.NewReader(z)
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		if nh, nb := edit(h, body); nh != nil {
			nh.Size = int64(len(nb))
			_ = tw.WriteHeader(nh)
			_, _ = tw.Write(nb)
		}
	}
	_ = tw.Close()
	rc.Close()
	z.Close()
	var enc bytes.Buffer
	if err := a.encodeStream(&enc, bytes.NewReader(out.Bytes())); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Store.Put(ctx, a.BaseKey(name, BaseObject), &enc); err != nil {
		t.Fatal(err)
	}
	if fixSum {
		b.SHA256, b.Size = sha256Hex(out.Bytes()), int64(out.Len())
		m, _ := json.Marshal(b)
		if _, err := a.Store.Put(ctx, a.BaseKey(name, BaseManifest), bytes.NewReader(m)); err != nil {
			t.Fatal(err)
		}
	}
}

// A base backup is streamed into the archive, read back and checked file by
// file against the manifest PostgreSQL wrote for it, and declared complete
// only once its WAL is archived. A restore extracts exactly what was backed
// up, or fails and leaves nothing: a flipped bit, a changed file (even with
// the whole-tar checksum fixed up), a missing file, a file added. Encrypted
// archives hold no clear data. A source of another cluster, and WAL that
// never reaches the archive, fail the backup and leave no object.
func TestABaseBackupIsVerifiedWhenTakenAndWhenRestored(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	sysid, err := postgres.ReadSystemID(s.data)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := age.GenerateX25519Identity()
	for _, encrypted := range []bool{false, true} {
		a := &Archive{Store: objectstore.Dir{Root: t.TempDir()}, Prefix: "db/" + sysid}
		if encrypted {
			a.Recipient, a.Identity = id.Recipient(), id
		}
		s.mirror(t, a)
		s.exec(t, "INSERT INTO t (id) SELECT g FROM generate_series(1, 5000) g ON CONFLICT DO NOTHING")
		b, err := a.TakeBase(ctx, s.baseOptions("nightly", sysid))
		if err != nil {
			t.Fatal(err)
		}
		if b.PGVersion == "" || b.Encrypted != encrypted || b.Timeline != 1 || b.StoredBytes >= b.Size || b.EndTime.Before(b.StartTime) {
			t.Errorf("encrypted=%t: %+v", encrypted, b)
		}
		for _, seg := range []string{b.StartWAL, b.EndWAL} {
			if _, err := a.Head(ctx, seg); err != nil {
				t.Errorf("a completed base backup's WAL %s: %v", seg, err)
			}
		}
		// A retry of a run that completed (and died before it said so)
		// reports the completed base backup and writes nothing.
		if again, err := a.TakeBase(ctx, s.baseOptions("nightly", sysid)); err != nil || again.SHA256 != b.SHA256 || !again.EndTime.Equal(b.EndTime) {
			t.Errorf("a retry under the same name: %+v %v, want the completed %+v", again, err, b)
		}
		if !encrypted {
			// An encrypted archive refuses a clear-text base backup.
			enc := &Archive{Store: a.Store, Prefix: a.Prefix, Recipient: id.Recipient(), Identity: id}
			if _, err := enc.RestoreBase(ctx, "nightly", filepath.Join(t.TempDir(), "clear")); !errors.Is(err, ErrNotEncrypted) {
				t.Errorf("a clear-text base backup restored from an encrypted archive: %v, want ErrNotEncrypted", err)
			}
			// Nor is it part of the encrypted archive's window.
			if sv, err := enc.Survey(ctx, b.WALSegmentSize, time.Now()); err != nil || len(sv.Bases) != 0 {
				t.Errorf("an encrypted archive's survey counts a clear-text base backup: %+v %v", sv.Bases, err)
			}
		}
		if encrypted {
			raw, _ := os.ReadFile(filepath.Join(a.Store.(objectstore.Dir).Root, a.BaseKey("nightly", BaseObject)))
			if bytes.Contains(raw, []byte("backup_manifest")) || bytes.Contains(raw, []byte("PG_VERSION")) {
				t.Error("the encrypted base backup holds clear tar entries")
			}
			stranger, _ := age.GenerateX25519Identity()
			other := &Archive{Store: a.Store, Prefix: a.Prefix, Identity: stranger}
			if _, err := other.RestoreBase(ctx, "nightly", filepath.Join(t.TempDir(), "d")); err == nil {
				t.Error("restored an encrypted base backup with another key")
			}
		}
		dir := filepath.Join(t.TempDir(), "restored")
		if _, err := a.RestoreBase(ctx, "nightly", dir); err != nil {
			t.Fatal(err)
		}
		if v, _ := os.ReadFile(filepath.Join(dir, "PG_VERSION")); strings.TrimSpace(string(v)) != b.PGVersion {
			t.Errorf("restored PG_VERSION %q", v)
		}
		if got, err := postgres.ReadSystemID(dir); err != nil || got != sysid {
			t.Errorf("restored system identifier %q %v", got, err)
		}
	}

	a := &Archive{Store: objectstore.Dir{Root: t.TempDir()}, Prefix: "db/" + sysid}
	s.mirror(t, a)
	corruptions := []struct {
		name   string
		fixSum bool
		edit   func(h *tar.Header, body []byte) (*tar.Header, []byte)
		want   string
	}{
		{"a tar header changed (the files intact)", false, func(h *tar.Header, b []byte) (*tar.Header, []byte) {
			if h.Name == "PG_VERSION" {
				h.ModTime = h.ModTime.Add(time.Hour)
			}
			return h, b
		}, "sha256"},
		{"a data file changed, the checksum fixed up", true, changeFile("global/pg_control"), "CRC32C"},
		{"a file missing", true, func(h *tar.Header, b []byte) (*tar.Header, []byte) {
			if h.Name == "PG_VERSION" {
				return nil, nil
			}
			return h, b
		}, "not in the tar"},
		{"a file added", true, func(h *tar.Header, b []byte) (*tar.Header, []byte) {
			if h.Name == "PG_VERSION" {
				h.Name = "postgresql.auto.conf.extra"
			}
			return h, b
		}, "not in the tar"},
		{"a path outside the data directory", true, func(h *tar.Header, b []byte) (*tar.Header, []byte) {
			if h.Name == "PG_VERSION" {
				h.Name = "../escape"
			}
			return h, b
		}, "unsafe path"},
		{"the manifest edited", true, func(h *tar.Header, b []byte) (*tar.Header, []byte) {
			if h.Name == "backup_manifest" {
				b = bytes.Replace(b, []byte(`"Path": "PG_VERSION", "Size": 3`), []byte(`"Path": "PG_VERSION", "Size": 4`), 1)
			}
			return h, b
		}, "its own checksum"},
	}
	for i, c := range corruptions {
		t.Run(c.name, func(t *testing.T) {
			name := "corrupt-" + string(rune('a'+i))
			if _, err := a.TakeBase(ctx, s.baseOptions(name, sysid)); err != nil {
				t.Fatal(err)
			}
			rewriteBase(t, a, name, c.fixSum, c.edit)
			dir := filepath.Join(t.TempDir(), "restored")
			_, err := a.RestoreBase(ctx, name, dir)
			if err == nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("restore: %v, want ErrCorrupt mentioning %q", err, c.want)
			}
			if _, serr := os.Stat(dir); !os.IsNotExist(serr) {
				t.Errorf("a failed restore left %s behind", dir)
			}
		})
	}

	t.Run("a source of another cluster is refused before anything is written", func(t *testing.T) {
		a := &Archive{Store: objectstore.Dir{Root: t.TempDir()}, Prefix: "db/1"}
		if _, err := a.TakeBase(ctx, s.baseOptions("other", "1234")); err == nil || !strings.Contains(err.Error(), "system identifier") {
			t.Errorf("TakeBase: %v, want the system identifiers named", err)
		}
		if keys, _ := a.Store.List(ctx, ""); len(keys) != 0 {
			t.Errorf("left %v", keys)
		}
	})
	t.Run("WAL that never reaches the archive fails the backup and leaves nothing", func(t *testing.T) {
		a := &Archive{Store: objectstore.Dir{Root: t.TempDir()}, Prefix: "db/" + sysid} // no mirror
		o := s.baseOptions("unarchived", sysid)
		o.WALTimeout = 2 * time.Second
		if _, err := a.TakeBase(ctx, o); !errors.Is(err, ErrWALNotArchived) {
			t.Errorf("TakeBase: %v, want ErrWALNotArchived", err)
		}
		if keys, _ := a.Store.List(ctx, ""); len(keys) != 0 {
			t.Errorf("left %v", keys)
		}
	})
}

func changeFile(name string) func(h *tar.Header, b []byte) (*tar.Header, []byte) {
	return func(h *tar.Header, b []byte) (*tar.Header, []byte) {
		if h.Name == name {
			b = append([]byte(nil), b...)
			b[len(b)/2] ^= 0x01
		}
		return h, b
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
