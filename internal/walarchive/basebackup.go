package walarchive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/klauspost/compress/zstd"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/objectstore"
	"github.com/example/postgres-operator/internal/postgres"
)

// Base backups live beside the WAL they need, in the same system
// identifier's directory: <prefix>/base/<name>/base.tar.zst (pg_basebackup's
// tar, compressed with zstd and, for an encrypted archive, encrypted with
// age) and <name>/backup.json (BaseBackup), written last, once the tar was
// read back and verified and the WAL it needs is archived: a base backup
// without its backup.json is never used.
const (
	// BaseDir is the base backups' directory under the system identifier's.
	BaseDir = "base"
	// BaseObject and BaseManifest are a base backup's two objects.
	BaseObject   = "base.tar.zst"
	BaseManifest = "backup.json"
	// BaseFormat names the artifact's format.
	BaseFormat = "pg_basebackup-tar+zstd"
)

// BaseBackup describes a verified base backup (its backup.json).
type BaseBackup struct {
	Name     string `json:"name"`
	SystemID string `json:"systemIdentifier"`
	// PGVersion is the data directory's major version (PG_VERSION).
	PGVersion string `json:"pgVersion"`
	// Timeline, StartLSN and EndLSN are the WAL a restore replays at least
	// (the manifest's WAL range); StartWAL and EndWAL its first and last
	// segments, all archived before the backup was declared complete.
	Timeline uint32 `json:"timeline"`
	StartLSN string `json:"startLSN"`
	EndLSN   string `json:"endLSN"`
	StartWAL string `json:"startWAL"`
	EndWAL   string `json:"endWAL"`
	// WALSegmentSize is the cluster's wal_segment_size in bytes.
	WALSegmentSize uint64 `json:"walSegmentSize"`
	// StartTime is when pg_basebackup started; EndTime when it finished:
	// every transaction the backup holds committed before it, so it is the
	// earliest time a restore of this backup can stop at.
	StartTime time.Time `json:"startTime"`
	EndTime   time.Time `json:"endTime"`
	// Files is how many files the backup manifest lists (all checked).
	Files int `json:"files"`
	// Size and SHA256 are the tar's; StoredBytes the object's.
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
	StoredBytes int64  `json:"storedBytes"`
	Format      string `json:"format"`
	Encrypted   bool   `json:"encrypted,omitempty"`
	// Source is the instance the backup was taken from.
	Source string `json:"source,omitempty"`
}

// BaseKey is the key of a base backup's object file (BaseObject or
// BaseManifest) in the archive.
func (a *Archive) BaseKey(name, file string) string {
	k := BaseDir + "/" + name + "/" + file
	if a.Prefix != "" {
		k = a.Prefix + "/" + k
	}
	return k
}

var baseNamePattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)

// Source is the instance a base backup streams from: a replication
// connection (the passfile and TLS settings are in Env, never an argument).
type Source struct {
	Host string
	Port int
	User string
	// Env is libpq's environment: PGPASSFILE, PGSSLMODE, PGSSLROOTCERT…
	Env []string
}

func (s Source) conninfo(replication bool) string {
	c := fmt.Sprintf("host=%s port=%d user=%s connect_timeout=10", postgres.ConninfoValue(s.Host), s.Port, postgres.ConninfoValue(s.User))
	if replication {
		c += " replication=true"
	}
	for _, e := range s.Env {
		k, v, _ := strings.Cut(e, "=")
		// Not PGSSLCERT/PGSSLKEY: libpq ignores a missing client
		// certificate (the way to send none), pgconn fails on it.
		if p, ok := map[string]string{"PGPASSFILE": "passfile", "PGSSLMODE": "sslmode", "PGSSLROOTCERT": "sslrootcert"}[k]; ok {
			c += " " + p + "=" + postgres.ConninfoValue(v)
		}
	}
	return c
}

// BaseOptions is a base backup to take.
type BaseOptions struct {
	// Name names it in the archive (a DNS-1123 subdomain).
	Name string
	// PgBasebackup is the program (of the server's major version).
	PgBasebackup string
	Source       Source
	// SystemID is the Database's: a source of another cluster is refused.
	SystemID string
	// WALTimeout bounds the wait for the archive to hold the WAL the backup
	// needs (a standby's last segment is archived by the primary, within its
	// archive_timeout); Poll is the interval of that check.
	WALTimeout, Poll time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// ErrWALNotArchived: the archive did not get the WAL a base backup needs in
// time; the backup is not usable.
var ErrWALNotArchived = errors.New("the WAL the base backup needs was not archived in time")

// TakeBase streams a base backup of the source into the archive (no
// temporary file), reads it back and verifies every file against the
// backup's own manifest, waits until the WAL from its start to its end is
// archived, and only then writes its backup.json. Whatever fails removes
// what was written.
func (a *Archive) TakeBase(ctx context.Context, o BaseOptions) (BaseBackup, error) {
	now := o.Now
	if now == nil {
		now = time.Now
	}
	if !baseNamePattern.MatchString(o.Name) {
		return BaseBackup{}, fmt.Errorf("%q is not a valid base backup name", o.Name)
	}
	// A base backup of this name that completed is this backup's (names
	// are unique per Backup): a retry of a run that completed, but died
	// before it could say so, reports it instead of failing.
	switch done, err := a.ReadBase(ctx, o.Name); {
	case err == nil:
		return done, nil
	case errors.Is(err, ErrNotArchived):
	default:
		return BaseBackup{}, err
	}
	sysid, segSize, err := identify(ctx, o.Source)
	if err != nil {
		return BaseBackup{}, err
	}
	if o.SystemID != "" && sysid != o.SystemID {
		return BaseBackup{}, fmt.Errorf("%s belongs to the cluster with system identifier %s, not %s", o.Source.Host, sysid, o.SystemID)
	}
	b := BaseBackup{Name: o.Name, SystemID: sysid, WALSegmentSize: segSize, StartTime: now().UTC(),
		Format: BaseFormat, Encrypted: a.Recipient != nil, Source: o.Source.Host}
	objKey := a.BaseKey(o.Name, BaseObject)
	fail := func(err error) (BaseBackup, error) {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = a.Store.Delete(dctx, objKey)
		return BaseBackup{}, err
	}

	// pg_basebackup → SHA-256 → zstd → age → the store.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(cctx, o.PgBasebackup, "--pgdata=-", "--format=tar", "--wal-method=none", "--checkpoint=fast",
		"--no-password", "--host="+o.Source.Host, "--port="+strconv.Itoa(o.Source.Port), "--username="+o.Source.User)
	cmd.Env = append(os.Environ(), o.Source.Env...)
	var stderr postgres.Tail
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return BaseBackup{}, err
	}
	if err := cmd.Start(); err != nil {
		return BaseBackup{}, fmt.Errorf("starting pg_basebackup: %w", err)
	}
	sum := sha256.New()
	counted := &countingReader{r: io.TeeReader(out, sum)}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(a.encodeStream(pw, counted)) }()
	stored, putErr := a.Store.Put(cctx, objKey, pr)
	_ = pr.CloseWithError(putErr)
	if putErr != nil {
		cancel()
	}
	waitErr := cmd.Wait()
	switch {
	case waitErr != nil:
		return fail(fmt.Errorf("pg_basebackup from %s: %w: %s", o.Source.Host, waitErr, postgres.Summary(stderr.String())))
	case putErr != nil:
		return fail(fmt.Errorf("uploading the base backup: %w", putErr))
	}
	b.EndTime = now().UTC()
	b.Size, b.SHA256, b.StoredBytes = counted.n, hex.EncodeToString(sum.Sum(nil)), stored

	// Read back: what is stored is the backup PostgreSQL described.
	facts, err := a.readBase(ctx, b, "")
	if err != nil {
		return fail(fmt.Errorf("verifying the stored base backup: %w", err))
	}
	if facts.systemID != "" && facts.systemID != sysid {
		return fail(fmt.Errorf("the stored base backup's pg_control has system identifier %s, not %s", facts.systemID, sysid))
	}
	b.Files, b.PGVersion = facts.files, facts.pgVersion
	if len(facts.ranges) == 0 {
		return fail(errors.New("the backup manifest has no WAL range"))
	}
	first, last := facts.ranges[0], facts.ranges[len(facts.ranges)-1]
	b.Timeline, b.StartLSN, b.EndLSN = last.Timeline, first.Start.String(), last.End.String()
	b.StartWAL = SegmentName(Segment{Timeline: first.Timeline, No: uint64(first.Start) / segSize}, segSize)
	b.EndWAL = SegmentName(Segment{Timeline: last.Timeline, No: (uint64(last.End) - 1) / segSize}, segSize)

	if err := a.waitForWAL(ctx, facts.ranges, segSize, o.WALTimeout, o.Poll); err != nil {
		return fail(err)
	}
	m, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return fail(err)
	}
	if _, err := a.Store.Put(ctx, a.BaseKey(o.Name, BaseManifest), bytes.NewReader(m)); err != nil {
		return fail(fmt.Errorf("writing %s: %w", BaseManifest, err))
	}
	return b, nil
}

// identify reads the source's system identifier and WAL segment size over a
// replication connection (IDENTIFY_SYSTEM, SHOW).
func identify(ctx context.Context, s Source) (sysid string, segSize uint64, err error) {
	c, err := pgconn.Connect(ctx, s.conninfo(true))
	if err != nil {
		return "", 0, fmt.Errorf("connecting to %s for replication: %w", s.Host, err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	// The replication protocol takes one command per query.
	var vals []string
	for _, q := range []string{"IDENTIFY_SYSTEM", "SHOW wal_segment_size"} {
		res, err := c.Exec(ctx, q).ReadAll()
		if err == nil && (len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) == 0) {
			err = errors.New("unexpected answer")
		}
		if err != nil {
			return "", 0, fmt.Errorf("%s on %s: %w", q, s.Host, err)
		}
		vals = append(vals, string(res[0].Rows[0][0]))
	}
	segSize, err = parseSize(vals[1])
	return vals[0], segSize, err
}

// parseSize reads a size setting as SHOW prints it ("16MB").
func parseSize(s string) (uint64, error) {
	units := map[string]uint64{"B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
	for u, m := range units {
		if n, ok := strings.CutSuffix(s, u); ok {
			if v, err := strconv.ParseUint(n, 10, 64); err == nil && v*m > 0 && v*m&(v*m-1) == 0 {
				return v * m, nil
			}
		}
	}
	return 0, fmt.Errorf("unexpected wal_segment_size %q", s)
}

// waitForWAL waits until every segment of the ranges (and the history file
// of each timeline after the first) is archived.
func (a *Archive) waitForWAL(ctx context.Context, ranges []walRange, segSize uint64, timeout, poll time.Duration) error {
	var names []string
	for _, r := range ranges {
		if r.Timeline > 1 {
			names = append(names, fmt.Sprintf("%08X.history", r.Timeline))
		}
		for no := uint64(r.Start) / segSize; no <= (uint64(r.End)-1)/segSize; no++ {
			names = append(names, SegmentName(Segment{Timeline: r.Timeline, No: no}, segSize))
		}
	}
	if poll <= 0 {
		poll = 2 * time.Second
	}
	deadline := time.Now().Add(timeout)
	for _, n := range names {
		for {
			_, err := a.Head(ctx, n)
			if err == nil {
				break
			}
			if !errors.Is(err, ErrNotArchived) {
				return err
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%w: %s is missing after %s", ErrWALNotArchived, n, timeout)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(poll):
			}
		}
	}
	return nil
}

// encodeStream compresses (and encrypts) r into w.
func (a *Archive) encodeStream(w io.Writer, r io.Reader) error {
	body := w
	var enc io.WriteCloser
	var err error
	if a.Recipient != nil {
		if enc, err = age.Encrypt(w, a.Recipient); err != nil {
			return err
		}
		body = enc
	}
	z, err := zstd.NewWriter(body, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(2))
	if err != nil {
		return err
	}
	if _, err := io.Copy(z, r); err != nil {
		z.Close()
		return err
	}
	if err := z.Close(); err != nil {
		return err
	}
	if enc != nil {
		return enc.Close()
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// ReadBase reads the backup.json of the base backup name.
func (a *Archive) ReadBase(ctx context.Context, name string) (BaseBackup, error) {
	rc, err := a.Store.Get(ctx, a.BaseKey(name, BaseManifest))
	if errors.Is(err, objectstore.ErrNotFound) {
		return BaseBackup{}, fmt.Errorf("base backup %s: %w", name, ErrNotArchived)
	}
	if err != nil {
		return BaseBackup{}, err
	}
	defer rc.Close()
	var b BaseBackup
	if err := json.NewDecoder(io.LimitReader(rc, 1<<20)).Decode(&b); err != nil {
		return BaseBackup{}, fmt.Errorf("%s of base backup %s: %w: %w", BaseManifest, name, ErrCorrupt, err)
	}
	if b.Name != name || b.Format != BaseFormat || len(b.SHA256) != 64 {
		return BaseBackup{}, fmt.Errorf("%s of base backup %s: %w", BaseManifest, name, ErrCorrupt)
	}
	return b, nil
}

// RestoreBase extracts the verified base backup name into dir (which must
// not exist; it is created with mode 0700): every file is checked against
// the backup's manifest and the whole against its checksum, and a failure
// removes dir. The caller then adds the recovery settings.
func (a *Archive) RestoreBase(ctx context.Context, name, dir string) (BaseBackup, error) {
	b, err := a.ReadBase(ctx, name)
	if err != nil {
		return BaseBackup{}, err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return BaseBackup{}, err
	}
	if _, err := a.readBase(ctx, b, dir); err != nil {
		_ = os.RemoveAll(dir)
		return BaseBackup{}, err
	}
	return b, nil
}

// DeleteBase deletes the base backup name: its backup.json first (from then
// on it is never used), then its tar.
func (a *Archive) DeleteBase(ctx context.Context, name string) error {
	if !baseNamePattern.MatchString(name) {
		return fmt.Errorf("%q is not a valid base backup name", name)
	}
	for _, f := range []string{BaseManifest, BaseObject} {
		if err := a.Store.Delete(ctx, a.BaseKey(name, f)); err != nil && !errors.Is(err, objectstore.ErrNotFound) {
			return fmt.Errorf("deleting %s of base backup %s: %w", f, name, err)
		}
	}
	return nil
}

// walRange is one WAL-Ranges entry of a backup manifest.
type walRange struct {
	Timeline   uint32
	Start, End agentapi.LSN
}

// baseFacts is what reading a base backup's tar established.
type baseFacts struct {
	files     int
	pgVersion string
	systemID  string
	ranges    []walRange
}

// readBase reads the stored object of b, decrypting and decompressing it,
// checks its size and SHA-256 against b and every file against the backup
// manifest inside it (size and CRC32C; the manifest's own checksum), and,
// when dir is set, extracts it there.
func (a *Archive) readBase(ctx context.Context, b BaseBackup, dir string) (baseFacts, error) {
	rc, err := a.Store.Get(ctx, a.BaseKey(b.Name, BaseObject))
	if err != nil {
		return baseFacts{}, err
	}
	defer rc.Close()
	var body io.Reader = bufio.NewReaderSize(rc, 256<<10)
	if !b.Encrypted && a.Identity != nil {
		return baseFacts{}, fmt.Errorf("base backup %s is not encrypted but the archive is: %w (take a new Physical Backup after turning encryption on)", b.Name, ErrNotEncrypted)
	}
	if b.Encrypted {
		if a.Identity == nil {
			return baseFacts{}, fmt.Errorf("base backup %s is encrypted and no identity was given", b.Name)
		}
		if body, err = age.Decrypt(body, a.Identity); err != nil {
			return baseFacts{}, fmt.Errorf("decrypting base backup %s: %w", b.Name, err)
		}
	}
	z, err := zstd.NewReader(body, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
	if err != nil {
		return baseFacts{}, err
	}
	defer z.Close()
	sum := sha256.New()
	counted := &countingReader{r: io.TeeReader(z, sum)}
	facts, err := checkTar(counted, dir)
	if err != nil {
		return baseFacts{}, fmt.Errorf("base backup %s: %w: %w", b.Name, ErrCorrupt, err)
	}
	// The tar's end-of-archive blocks may be followed by padding.
	if _, err := io.Copy(io.Discard, counted); err != nil {
		return baseFacts{}, fmt.Errorf("base backup %s: %w: %w", b.Name, ErrCorrupt, err)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != b.SHA256 || counted.n != b.Size {
		return baseFacts{}, fmt.Errorf("base backup %s: %w: %d bytes sha256 %s, recorded %d bytes sha256 %s",
			b.Name, ErrCorrupt, counted.n, got, b.Size, b.SHA256)
	}
	return facts, nil
}

// manifest is the part of PostgreSQL's backup_manifest that is checked.
type manifest struct {
	Version any `json:"PostgreSQL-Backup-Manifest-Version"`
	Files   []struct {
		Path      string `json:"Path"`
		Size      int64  `json:"Size"`
		Algorithm string `json:"Checksum-Algorithm"`
		Checksum  string `json:"Checksum"`
	} `json:"Files"`
	WALRanges []struct {
		Timeline uint32 `json:"Timeline"`
		Start    string `json:"Start-LSN"`
		End      string `json:"End-LSN"`
	} `json:"WAL-Ranges"`
	Checksum string `json:"Manifest-Checksum"`
}

type seenFile struct {
	size int64
	crc  uint32
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checkTar reads pg_basebackup's tar, records each regular file's size and
// checksums, extracts into dir when set, and checks the result against the
// backup_manifest the tar carries.
func checkTar(r io.Reader, dir string) (baseFacts, error) {
	tr := tar.NewReader(r)
	seen := map[string]seenFile{}
	var manifestBytes []byte
	var f baseFacts
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return f, err
		}
		name := path.Clean(h.Name)
		if name == "." || path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return f, fmt.Errorf("unsafe path %q in the tar", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if dir != "" {
				if err := os.MkdirAll(filepath.Join(dir, filepath.FromSlash(name)), 0o700); err != nil {
					return f, err
				}
			}
			continue
		case tar.TypeReg:
		default:
			return f, fmt.Errorf("%s: entries of type %q (tablespaces, links) are not supported", name, string(h.Typeflag))
		}
		if name == "backup_manifest" {
			if manifestBytes, err = io.ReadAll(io.LimitReader(tr, 256<<20)); err != nil {
				return f, err
			}
			if dir != "" {
				if err := os.WriteFile(filepath.Join(dir, name), manifestBytes, 0o600); err != nil {
					return f, err
				}
			}
			continue
		}
		crc := crc32.New(castagnoli)
		var w io.Writer = crc
		var small bytes.Buffer
		if name == "PG_VERSION" || name == "global/pg_control" {
			w = io.MultiWriter(crc, &small)
		}
		var file *os.File
		if dir != "" {
			dest := filepath.Join(dir, filepath.FromSlash(name))
			if err := os.MkdirAll(filepath.Dir(dest), 0o700); err != nil {
				return f, err
			}
			if file, err = os.OpenFile(dest, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err != nil { // #nosec G304 -- a cleaned relative path under dir
				return f, err
			}
			w = io.MultiWriter(w, file)
		}
		// Exactly the size the entry declares (the tar reader stops there).
		n, err := io.CopyN(w, tr, h.Size)
		if file != nil {
			if err == nil {
				err = file.Sync()
			}
			if cerr := file.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return f, fmt.Errorf("%s: %w", name, err)
		}
		seen[name] = seenFile{size: n, crc: crc.Sum32()}
		switch name {
		case "PG_VERSION":
			f.pgVersion = strings.TrimSpace(small.String())
		case "global/pg_control":
			if small.Len() >= 8 {
				f.systemID = strconv.FormatUint(binary.LittleEndian.Uint64(small.Bytes()[:8]), 10)
			}
		}
	}
	if manifestBytes == nil {
		return f, errors.New("the tar has no backup_manifest")
	}
	m, err := parseManifest(manifestBytes)
	if err != nil {
		return f, err
	}
	for _, r := range m.WALRanges {
		start, err1 := agentapi.ParseLSN(r.Start)
		end, err2 := agentapi.ParseLSN(r.End)
		if err1 != nil || err2 != nil || end < start || end == 0 {
			return f, fmt.Errorf("backup_manifest: bad WAL range %+v", r)
		}
		f.ranges = append(f.ranges, walRange{Timeline: r.Timeline, Start: start, End: end})
	}
	listed := map[string]bool{}
	for _, mf := range m.Files {
		listed[mf.Path] = true
		got, ok := seen[mf.Path]
		if !ok {
			return f, fmt.Errorf("%s is in the backup manifest but not in the tar", mf.Path)
		}
		if got.size != mf.Size {
			return f, fmt.Errorf("%s has %d bytes, the backup manifest says %d", mf.Path, got.size, mf.Size)
		}
		switch mf.Algorithm {
		case "CRC32C":
			var le [4]byte
			binary.LittleEndian.PutUint32(le[:], got.crc)
			if hex.EncodeToString(le[:]) != strings.ToLower(mf.Checksum) {
				return f, fmt.Errorf("%s: CRC32C %s, the backup manifest says %s", mf.Path, hex.EncodeToString(le[:]), mf.Checksum)
			}
		case "", "NONE":
		default:
			return f, fmt.Errorf("%s: checksum algorithm %s is not supported (use pg_basebackup's default, CRC32C)", mf.Path, mf.Algorithm)
		}
	}
	var extra []string
	for p := range seen {
		if !listed[p] {
			extra = append(extra, p)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return f, fmt.Errorf("the tar holds files the backup manifest does not list: %s", strings.Join(extra, ", "))
	}
	f.files = len(m.Files)
	return f, nil
}

// parseManifest parses backup_manifest and checks its own checksum (the
// SHA-256 of everything before its Manifest-Checksum line).
func parseManifest(b []byte) (manifest, error) {
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("backup_manifest: %w", err)
	}
	i := bytes.LastIndex(b, []byte(`"Manifest-Checksum"`))
	if i < 0 || len(m.Checksum) != 64 {
		return m, errors.New("backup_manifest has no checksum")
	}
	sum := sha256.Sum256(b[:i])
	if hex.EncodeToString(sum[:]) != strings.ToLower(m.Checksum) {
		return m, errors.New("backup_manifest does not match its own checksum")
	}
	return m, nil
}
