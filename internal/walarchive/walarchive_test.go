package walarchive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5"

	"github.com/example/postgres-operator/internal/objectstore"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/example/postgres-operator/internal/testenv"
)

// segSize is the test servers' WAL segment size (initdb --wal-segsize=1).
const segSize = 1 << 20

// server is a real PostgreSQL that archives with `cp` into archiveDir: the
// source of real WAL segments for the tests.
type server struct {
	bins                   postgres.Binaries
	root, data, archiveDir string
	port                   int
	conn                   *pgx.Conn
	cred                   *syscall.Credential
}

func startServer(t *testing.T) *server {
	t.Helper()
	bins, err := postgres.FindBinaries("")
	if err != nil {
		t.Skipf("no PostgreSQL binaries: %v (hack/ensure-postgres.sh installs them)", err)
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Skipf("no postgres user: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	root, err := os.MkdirTemp("", "walarchive-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	s := &server{bins: bins, root: root, data: filepath.Join(root, "data"), archiveDir: filepath.Join(root, "archive"),
		port: testenv.FreePort(t), cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	for _, d := range []string{root, s.archiveDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	s.run(t, bins.Initdb, "-D", s.data, "-U", "postgres", "--auth=trust", "--no-sync", "--wal-segsize=1", "-E", "UTF8")
	// In postgresql.conf, not on the command line: ALTER SYSTEM can change
	// the archive_command.
	conf, err := os.OpenFile(filepath.Join(s.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fmt.Fprintf(conf, "\narchive_mode = on\nwal_level = replica\nfsync = off\narchive_command = 'cp %%p %s/%%f'\n", s.archiveDir)
	if cerr := conf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	s.run(t, bins.PgCtl, "-D", s.data, "-w", "-l", filepath.Join(root, "log"), "-o",
		fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s", s.port, root), "start")
	t.Cleanup(func() {
		cmd := exec.Command(bins.PgCtl, "-D", s.data, "-m", "immediate", "stop")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
		_ = cmd.Run()
	})
	s.conn, err = pgx.Connect(context.Background(), fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", s.port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.conn.Close(context.Background()) })
	s.exec(t, "CREATE TABLE t (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
	return s
}

func (s *server) run(t *testing.T, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	cmd.Env = []string{"PATH=" + s.bins.Dir + ":/usr/bin:/bin", "LC_ALL=C"}
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.root, "log"))
		t.Fatalf("%s %v: %v\n%s\n%s", name, args, err, out, log)
	}
}

func (s *server) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := s.conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// commitAndSwitch commits row id and switches to a new segment, and returns
// the commit's time as the server recorded it and the name of the segment
// that holds it.
func (s *server) commitAndSwitch(t *testing.T, id int) (time.Time, string) {
	t.Helper()
	var at time.Time
	if err := s.conn.QueryRow(context.Background(), "INSERT INTO t (id) VALUES ($1) RETURNING at", id).Scan(&at); err != nil {
		t.Fatal(err)
	}
	var seg string
	if err := s.conn.QueryRow(context.Background(), "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&seg); err != nil {
		t.Fatal(err)
	}
	s.exec(t, "SELECT pg_switch_wal()")
	return at, seg
}

// archived waits until PostgreSQL's archiver copied name.
func (s *server) archived(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(s.archiveDir, name)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("PostgreSQL never archived %s", name)
	return ""
}

func stores(t *testing.T) map[string]func(t *testing.T) objectstore.Store {
	return map[string]func(t *testing.T) objectstore.Store{
		"s3": func(t *testing.T) objectstore.Store {
			st, _ := testenv.StartS3(t, "wal")
			return st
		},
		"volume": func(t *testing.T) objectstore.Store { return objectstore.Dir{Root: t.TempDir()} },
	}
}

// A segment pushed and fetched back is byte for byte the one PostgreSQL
// wrote, on S3 and on a volume, encrypted or not; a second push of the same
// file is a success that writes nothing, and a fetch of a missing name is
// ErrNotArchived (recovery's "not found").
func TestArchiveAndFetchRoundTrip(t *testing.T) {
	s := startServer(t)
	_, seg := s.commitAndSwitch(t, 1)
	src := s.archived(t, seg)
	want, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	for storeName, newStore := range stores(t) {
		for _, encrypted := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, encrypted %v", storeName, encrypted), func(t *testing.T) {
				a := &Archive{Store: newStore(t), Prefix: "ns/db"}
				if encrypted {
					a.Recipient, a.Identity = id.Recipient(), id
				}
				ctx := context.Background()
				res, err := a.Push(ctx, src, seg)
				if err != nil || res.AlreadyArchived || res.Header.Size != int64(len(want)) || res.Header.Encrypted != encrypted {
					t.Fatalf("push: %+v %v", res, err)
				}
				if res.StoredBytes >= int64(len(want))/2 {
					t.Errorf("a 1 MiB segment with one row stored as %d bytes: not compressed", res.StoredBytes)
				}
				again, err := a.Push(ctx, src, seg)
				if err != nil || !again.AlreadyArchived {
					t.Errorf("the same push again: %+v %v, want already archived", again, err)
				}
				dest := filepath.Join(t.TempDir(), "RECOVERYXLOG")
				if _, err := a.Fetch(ctx, seg, dest); err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(dest)
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("fetched %d bytes (%v), want the %d bytes PostgreSQL wrote", len(got), err, len(want))
				}
				if storeName == "volume" {
					// An unmounted volume is not an empty archive.
					gone := &Archive{Store: objectstore.Dir{Root: filepath.Join(t.TempDir(), "unmounted")}}
					if _, err := gone.Fetch(ctx, seg, dest+"x"); err == nil || errors.Is(err, ErrNotArchived) {
						t.Errorf("fetching from a missing volume root: %v, want an error that is not ErrNotArchived", err)
					}
				}
				missing := SegmentName(Segment{Timeline: 9, No: 1}, segSize)
				if _, err := a.Fetch(ctx, missing, dest+"2"); !errors.Is(err, ErrNotArchived) {
					t.Errorf("fetching a missing segment: %v, want ErrNotArchived", err)
				}
				if _, err := os.Stat(dest + "2"); !errors.Is(err, os.ErrNotExist) {
					t.Error("a failed fetch left a file behind")
				}
				if !encrypted {
					// A clear-text object in an encrypted archive is refused:
					// anyone who can write to the store could have put it there.
					enc := &Archive{Store: a.Store, Prefix: a.Prefix, Recipient: id.Recipient(), Identity: id}
					if _, err := enc.Fetch(ctx, seg, dest+"4"); !errors.Is(err, ErrNotEncrypted) {
						t.Errorf("a clear-text segment fetched from an encrypted archive: %v, want ErrNotEncrypted", err)
					}
				}
				if encrypted {
					// Without the identity nothing is restored.
					b := &Archive{Store: a.Store, Prefix: a.Prefix}
					if _, err := b.Fetch(ctx, seg, dest+"3"); err == nil {
						t.Error("an encrypted segment was fetched without the identity")
					}
					// The body holds no WAL in clear: PostgreSQL's page magic
					// appears nowhere in the object.
					rc, err := a.Store.Get(ctx, a.key(seg))
					if err != nil {
						t.Fatal(err)
					}
					raw, _ := io.ReadAll(rc)
					rc.Close()
					if bytes.Contains(raw, want[:16]) {
						t.Error("the encrypted object contains the segment's first page header")
					}
				}
			})
		}
	}
}

// The archive never replaces a file by a different one of the same name (a
// diverged primary's segment, a corrupted file): the push fails and the
// archived file is unchanged.
func TestADifferentFileUnderAnArchivedNameIsRefused(t *testing.T) {
	s := startServer(t)
	_, seg := s.commitAndSwitch(t, 1)
	src := s.archived(t, seg)
	a := &Archive{Store: objectstore.Dir{Root: t.TempDir()}}
	ctx := context.Background()
	if _, err := a.Push(ctx, src, seg); err != nil {
		t.Fatal(err)
	}
	original, _ := os.ReadFile(src)
	other := filepath.Join(t.TempDir(), seg)
	changed := bytes.Clone(original)
	changed[len(changed)/2] ^= 0xff
	if err := os.WriteFile(other, changed, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Push(ctx, other, seg); !errors.Is(err, ErrConflict) {
		t.Fatalf("pushing a different file under %s: %v, want ErrConflict", seg, err)
	}
	dest := filepath.Join(t.TempDir(), "f")
	if _, err := a.Fetch(ctx, seg, dest); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, original) {
		t.Error("the archived segment changed")
	}
	if _, err := a.Push(ctx, other, "not-a-wal-file"); err == nil {
		t.Error("a file that is not WAL was archived")
	}
}

// A corrupted object never restores different bytes: a fetch either fails
// and leaves nothing for recovery to replay, or gives back exactly the
// segment (some bits of a compressed stream change nothing). An object whose
// body decodes to another segment fails on its checksum.
func TestACorruptedArchivedSegmentIsNeverRestored(t *testing.T) {
	s := startServer(t)
	_, seg := s.commitAndSwitch(t, 1)
	src := s.archived(t, seg)
	root := t.TempDir()
	a := &Archive{Store: objectstore.Dir{Root: root}}
	ctx := context.Background()
	if _, err := a.Push(ctx, src, seg); err != nil {
		t.Fatal(err)
	}
	obj := filepath.Join(root, Dir, seg)
	raw, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	original, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	// Another segment's body under this segment's header.
	_, seg2 := s.commitAndSwitch(t, 2)
	other := &Archive{Store: objectstore.Dir{Root: t.TempDir()}}
	if _, err := other.Push(ctx, s.archived(t, seg2), seg2); err != nil {
		t.Fatal(err)
	}
	otherRaw, err := os.ReadFile(filepath.Join(other.Store.(objectstore.Dir).Root, Dir, seg2))
	if err != nil {
		t.Fatal(err)
	}
	header := raw[:bytes.IndexByte(raw, '\n')+1]
	swapped := append(bytes.Clone(header), otherRaw[bytes.IndexByte(otherRaw, '\n')+1:]...)

	damaged := map[string][]byte{
		"truncated":              bytes.Clone(raw[:len(raw)*2/3]),
		"no header":              bytes.Clone(raw[len(header):]),
		"another segment's body": swapped,
		"an empty body":          bytes.Clone(header),
	}
	// A flipped bit at every 97th byte of the body.
	for i := len(header); i < len(raw); i += 97 {
		c := bytes.Clone(raw)
		c[i] ^= 0x01
		damaged[fmt.Sprintf("bit flipped at byte %d", i)] = c
	}
	failed := 0
	for name, b := range damaged {
		if err := os.WriteFile(obj, b, 0o600); err != nil {
			t.Fatal(err)
		}
		dest := filepath.Join(t.TempDir(), "f")
		_, err := a.Fetch(ctx, seg, dest)
		if err != nil {
			failed++
			if _, serr := os.Stat(dest); !errors.Is(serr, os.ErrNotExist) {
				t.Errorf("%s: a failed fetch left a file for recovery", name)
			}
			continue
		}
		if !strings.HasPrefix(name, "bit flipped") {
			t.Errorf("%s: fetched without an error", name)
		}
		if got, _ := os.ReadFile(dest); !bytes.Equal(got, original) {
			t.Errorf("%s: fetched bytes that are not the segment", name)
		}
	}
	if failed < len(damaged)/2 {
		t.Errorf("only %d of %d damaged objects were refused", failed, len(damaged))
	}
}

// An archiver killed in the middle of an upload leaves no object: PostgreSQL
// pushes the file again and it is archived whole.
func TestAKilledArchiverLeavesNoPartialObject(t *testing.T) {
	s := startServer(t)
	_, seg := s.commitAndSwitch(t, 1)
	src := s.archived(t, seg)
	for storeName, newStore := range stores(t) {
		t.Run(storeName, func(t *testing.T) {
			store := &stallingStore{Store: newStore(t), after: 512, stalled: make(chan struct{})}
			a := &Archive{Store: store}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { _, err := a.Push(ctx, src, seg); done <- err }()
			select {
			case <-store.stalled:
			case <-time.After(20 * time.Second):
				t.Fatal("the upload never started")
			}
			cancel() // the archiver is killed mid-upload
			if err := <-done; err == nil {
				t.Fatal("a cancelled push succeeded")
			}
			if _, err := a.Head(context.Background(), seg); !errors.Is(err, ErrNotArchived) {
				t.Fatalf("after a killed push the archive has %s: %v", seg, err)
			}
			keys, err := store.List(context.Background(), "")
			if err != nil || len(keys) != 0 {
				t.Errorf("objects left behind: %v %v", keys, err)
			}
			store.after = -1
			if res, err := a.Push(context.Background(), src, seg); err != nil || res.AlreadyArchived {
				t.Fatalf("the retry: %+v %v", res, err)
			}
			if _, err := a.Fetch(context.Background(), seg, filepath.Join(t.TempDir(), "f")); err != nil {
				t.Errorf("the retried segment: %v", err)
			}
		})
	}
}

// stallingStore's Put blocks after `after` bytes until its context ends: an
// upload cut by a kill.
type stallingStore struct {
	objectstore.Store
	after   int
	stalled chan struct{}
}

func (s *stallingStore) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	if s.after < 0 {
		return s.Store.Put(ctx, key, r)
	}
	return s.Store.Put(ctx, key, &stallReader{ctx: ctx, r: r, left: s.after, stalled: s.stalled})
}

type stallReader struct {
	ctx     context.Context
	r       io.Reader
	left    int
	stalled chan struct{}
}

func (s *stallReader) Read(p []byte) (int, error) {
	if s.left <= 0 {
		select {
		case <-s.stalled:
		default:
			close(s.stalled)
		}
		<-s.ctx.Done()
		return 0, s.ctx.Err()
	}
	if len(p) > s.left {
		p = p[:s.left]
	}
	n, err := s.r.Read(p)
	s.left -= n
	return n, err
}

// A segment missing from the archive is found and named; the archive's
// listing has every other segment of the timeline and the history files.
func TestAMissingSegmentIsNamedAsAGap(t *testing.T) {
	s := startServer(t)
	var segs []string
	for i := 1; i <= 5; i++ {
		_, seg := s.commitAndSwitch(t, i)
		segs = append(segs, seg)
	}
	a := &Archive{Store: objectstore.Dir{Root: t.TempDir()}, Prefix: "p"}
	ctx := context.Background()
	for i, seg := range segs {
		if i == 2 {
			continue // the segment lost
		}
		if _, err := a.Push(ctx, s.archived(t, seg), seg); err != nil {
			t.Fatal(err)
		}
	}
	c, err := a.List(ctx, segSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Segments) != 1 || len(c.Segments[1]) != 4 {
		t.Fatalf("contents: %+v", c)
	}
	gaps := c.Gaps(segSize)
	if len(gaps) != 1 || gaps[0].First != segs[2] || gaps[0].Last != segs[2] || gaps[0].Timeline != 1 {
		t.Fatalf("gaps = %v, want only %s", gaps, segs[2])
	}
	if !strings.Contains(gaps[0].String(), segs[2]) {
		t.Errorf("the gap does not name the segment: %s", gaps[0])
	}
	// Pushed, the gap closes.
	if _, err := a.Push(ctx, s.archived(t, segs[2]), segs[2]); err != nil {
		t.Fatal(err)
	}
	if c, _ = a.List(ctx, segSize); len(c.Gaps(segSize)) != 0 {
		t.Errorf("gaps after the segment arrived: %v", c.Gaps(segSize))
	}
}

// The commit time read from a segment is the time PostgreSQL recorded for
// the last commit in it (what the window's last recoverable point is made of).
func TestTheLastCommitTimeOfASegment(t *testing.T) {
	s := startServer(t)
	waldump := filepath.Join(s.bins.Dir, "pg_waldump")
	if _, err := os.Stat(waldump); err != nil {
		t.Skipf("no pg_waldump: %v", err)
	}
	s.exec(t, "INSERT INTO t (id) VALUES (100)")
	at, seg := s.commitAndSwitch(t, 101)
	got, ok, err := LastCommitTime(context.Background(), waldump, s.archived(t, seg))
	if err != nil || !ok {
		t.Fatalf("LastCommitTime: %v %v %v", got, ok, err)
	}
	// now() is the transaction's start; the commit comes after it, within
	// the statement.
	if got.Before(at) || got.Sub(at) > 2*time.Second {
		t.Errorf("commit time %v, the row's transaction started at %v", got, at.UTC())
	}
	// A segment without a commit (only the switch record) has none.
	// (The checkpoint first: right after a switch the current position is
	// the boundary, which pg_walfile_name counts in the previous segment.)
	s.exec(t, "CHECKPOINT")
	var empty string
	if err := s.conn.QueryRow(context.Background(), "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&empty); err != nil {
		t.Fatal(err)
	}
	if empty == seg {
		t.Fatalf("the checkpoint is in the committed segment %s", seg)
	}
	s.exec(t, "SELECT pg_switch_wal()")
	if _, ok, err := LastCommitTime(context.Background(), waldump, s.archived(t, empty)); err != nil || ok {
		t.Errorf("a segment without commits: ok %v err %v", ok, err)
	}
}

func TestSegmentNames(t *testing.T) {
	for _, tc := range []struct {
		seg  Segment
		size uint64
		name string
	}{
		{Segment{1, 1}, 16 << 20, "000000010000000000000001"},
		{Segment{1, 256}, 16 << 20, "000000010000000100000000"},
		{Segment{2, 4097}, 1 << 20, "000000020000000100000001"},
		{Segment{0x1A, 0xFF}, 16 << 20, "0000001A00000000000000FF"},
	} {
		if got := SegmentName(tc.seg, tc.size); got != tc.name {
			t.Errorf("SegmentName(%+v, %d) = %s, want %s", tc.seg, tc.size, got, tc.name)
		}
		if got, ok := ParseSegmentName(tc.name, tc.size); !ok || got != tc.seg {
			t.Errorf("ParseSegmentName(%s) = %+v %v", tc.name, got, ok)
		}
	}
	for _, bad := range []string{"00000001000000000000001", "000000010000000000000100.partial", "00000002.history", "x00000010000000000000001", "000000010000000000000100"} {
		if _, ok := ParseSegmentName(bad, 16<<20); ok {
			t.Errorf("ParseSegmentName accepted %q", bad)
		}
	}
}
