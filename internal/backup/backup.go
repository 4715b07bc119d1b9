// Package backup runs logical backups and restores: pg_dump's custom-format output
// is streamed through zstd and SHA-256 straight into an object store (no temporary
// file, no whole-backup buffer), verified by reading all of it back through
// `pg_restore`, and described by a manifest stored next to it. Restores verify the
// checksum, then hand the artifact to the primary's agent, which restores it into
// a scratch database and swaps it in (internal/instance/restore.go).
package backup

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"

	"github.com/example/postgres-operator/internal/agekey"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/logging"
	"github.com/example/postgres-operator/internal/objectstore"
	"github.com/example/postgres-operator/internal/postgres"
)

// Format describes the artifact: pg_dump custom format, compressed with zstd.
const Format = "pg_dump-custom+zstd"

// ManifestSuffix is appended to an artifact's key to name its manifest.
const ManifestSuffix = ".manifest.json"

// Conn is how pg_dump / pg_restore reach the database; the password comes from a
// passfile (PGPASSFILE), never an argument or a variable holding it.
type Conn struct {
	Host, Port, User, Database, Passfile string
	// SSLRootCert is the Database's CA: the connection then uses TLS and
	// verifies the server's certificate and name (verify-full).
	SSLRootCert string
}

func (c Conn) env() []string {
	env := []string{"PGHOST=" + c.Host, "PGPORT=" + c.Port, "PGUSER=" + c.User,
		"PGDATABASE=" + c.Database, "PGPASSFILE=" + c.Passfile, "PGCONNECT_TIMEOUT=10"}
	if c.SSLRootCert != "" {
		env = append(env, "PGSSLMODE=verify-full", "PGSSLROOTCERT="+c.SSLRootCert)
	}
	return env
}

// Options of a backup.
type Options struct {
	PgDump, PgRestore string
	Conn              Conn
	Store             objectstore.Store
	// Key is the artifact's object key; its manifest is Key+ManifestSuffix.
	Key string
	// Location is the human-readable URL of Key, recorded in the manifest.
	Location string
	// DatabaseUID and DatabaseObject (namespace/name) identify the Database
	// backed up, recorded in the manifest.
	DatabaseUID, DatabaseObject string
	// ManifestKey is the Database's manifest key: the manifest is signed with
	// it (HMAC-SHA256) so that a restore detects an edited one. Unsigned when
	// empty.
	ManifestKey []byte
	// Identity encrypts the artifact to its recipient (age); nil: plain.
	Identity *age.X25519Identity
}

// EncryptionAge is the manifest's name of age encryption to an X25519
// recipient.
const EncryptionAge = "age-x25519"

// ParseIdentity reads an age X25519 identity (age-keygen's output: comment
// lines and one AGE-SECRET-KEY-1… line).
func ParseIdentity(text string) (*age.X25519Identity, error) { return agekey.Parse(text) }

// Manifest describes an artifact; it is stored next to it once the artifact is
// verified, so an artifact without a manifest is never taken as valid.
type Manifest struct {
	Location string `json:"location"`
	// DatabaseUID is the UID of the Database object backed up: a restore into
	// another Database must be allowed explicitly.
	DatabaseUID string `json:"databaseUID,omitempty"`
	// DatabaseObject is its namespace/name.
	DatabaseObject   string `json:"databaseObject,omitempty"`
	Database         string `json:"database"`
	ServerVersion    string `json:"serverVersion"`
	PgDumpVersion    string `json:"pgDumpVersion"`
	Format           string `json:"format"`
	SizeBytes        int64  `json:"sizeBytes"`
	UncompressedSize int64  `json:"uncompressedBytes"`
	SHA256           string `json:"sha256"`
	// Encryption is EncryptionAge for an encrypted artifact (to Recipient);
	// PlainSHA256 is then the SHA-256 of the compressed archive before
	// encryption, what the restoring agent receives.
	Encryption  string `json:"encryption,omitempty"`
	Recipient   string `json:"recipient,omitempty"`
	PlainSHA256 string `json:"plainSHA256,omitempty"`
	// Tables are the rows of each table in the archive (schema.table), counted
	// while verifying it; restore drills compare them with what they restored.
	Tables    map[string]int64 `json:"tables,omitempty"`
	StartTime time.Time        `json:"startTime"`
	EndTime   time.Time        `json:"endTime"`
	// HMAC authenticates everything above with the Database's manifest key
	// (HMAC-SHA256 of the manifest's JSON without this field, hex).
	HMAC string `json:"hmac,omitempty"`
}

// mac is the manifest's HMAC with key.
func (m Manifest) mac(key []byte) string {
	m.HMAC = ""
	b, _ := json.Marshal(m)
	h := hmac.New(sha256.New, key)
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// Sign sets the manifest's HMAC.
func (m *Manifest) Sign(key []byte) { m.HMAC = m.mac(key) }

// Authentic reports whether the manifest carries a valid HMAC for key.
func (m *Manifest) Authentic(key []byte) bool {
	want, err := hex.DecodeString(m.HMAC)
	if err != nil || len(key) == 0 || m.HMAC == "" {
		return false
	}
	got, _ := hex.DecodeString(m.mac(key))
	return hmac.Equal(got, want)
}

// Run backs up the database and returns the verified artifact's manifest. On any
// failure nothing is left in the store.
func Run(ctx context.Context, o Options) (*Manifest, error) {
	m := &Manifest{Location: o.Location, Database: o.Conn.Database, Format: Format, StartTime: time.Now().UTC(),
		DatabaseUID: o.DatabaseUID, DatabaseObject: o.DatabaseObject}
	var err error
	if m.PgDumpVersion, err = version(ctx, o.PgDump); err != nil {
		return nil, err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, o.PgDump, "--format=custom", "--compress=0", "--no-password")
	cmd.Env = o.Conn.env()
	stderr := &postgres.Tail{Max: 8 << 10}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting pg_dump: %w", err)
	}

	// pg_dump → zstd → (sha256, store). The pipe is closed with an error unless
	// pg_dump exits cleanly with output, so the store aborts the upload.
	// With an identity: pg_dump → zstd → (plain sha256, age) → (sha256, store).
	pr, pw := io.Pipe()
	hash, plainHash := sha256.New(), sha256.New()
	var raw int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var sealed io.WriteCloser
		out := io.MultiWriter(pw, hash)
		if o.Identity != nil {
			w, err := age.Encrypt(out, o.Identity.Recipient())
			if err != nil {
				_ = stdout.Close()
				_ = cmd.Wait()
				pw.CloseWithError(fmt.Errorf("encrypting: %w", err))
				return
			}
			sealed, out = w, io.MultiWriter(w, plainHash)
		}
		enc, err := zstd.NewWriter(out, zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(2), zstd.WithWindowSize(4<<20))
		if err != nil {
			_ = stdout.Close()
			_ = cmd.Wait()
			pw.CloseWithError(err)
			return
		}
		raw, err = io.Copy(enc, stdout)
		if cerr := enc.Close(); err == nil {
			err = cerr
		}
		if sealed != nil {
			if cerr := sealed.Close(); err == nil {
				err = cerr
			}
		}
		werr := cmd.Wait()
		switch {
		case werr != nil:
			// pg_dump's messages can quote rows: whole in the Job's log only.
			slog.Warn("pg_dump failed", logging.ErrorKey, werr, "stderr", stderr.String())
			pw.CloseWithError(fmt.Errorf("pg_dump failed: %w: %s", werr, postgres.Summary(stderr.String())))
		case err != nil:
			pw.CloseWithError(fmt.Errorf("compressing the dump: %w", err))
		case raw == 0:
			pw.CloseWithError(errors.New("pg_dump produced no output"))
		default:
			pw.Close()
		}
	}()
	size, perr := o.Store.Put(ctx, o.Key, pr)
	if perr != nil {
		cancel()
	}
	_ = pr.CloseWithError(errors.New("upload ended"))
	wg.Wait()
	if perr != nil {
		return nil, perr
	}
	m.SizeBytes, m.UncompressedSize, m.SHA256 = size, raw, hex.EncodeToString(hash.Sum(nil))
	if o.Identity != nil {
		m.Encryption, m.Recipient, m.PlainSHA256 = EncryptionAge, o.Identity.Recipient().String(), hex.EncodeToString(plainHash.Sum(nil))
	}

	// Verify: the stored bytes have the checksum and form a readable archive.
	serverVersion, tables, err := verify(ctx, o.Store, o.Key, m.SHA256, o.PgRestore, o.Identity)
	if err != nil {
		_ = o.Store.Delete(context.Background(), o.Key)
		return nil, fmt.Errorf("verifying the artifact: %w", err)
	}
	m.ServerVersion, m.Tables = serverVersion, tables
	m.EndTime = time.Now().UTC()
	if len(o.ManifestKey) > 0 {
		m.Sign(o.ManifestKey)
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	if _, err := o.Store.Put(ctx, o.Key+ManifestSuffix, bytes.NewReader(b)); err != nil {
		_ = o.Store.Delete(context.Background(), o.Key)
		return nil, fmt.Errorf("writing the manifest: %w", err)
	}
	return m, nil
}

// verify reads the stored artifact back in full: through SHA-256 (compared with
// the upload's), zstd (which checks every frame) and `pg_restore` writing the whole
// SQL script to nowhere, so every data block of the archive is decoded, not only
// its table of contents. It returns the server version the dump was taken from.
func verify(ctx context.Context, store objectstore.Store, key, wantSHA, pgRestore string, id *age.X25519Identity) (string, map[string]int64, error) {
	rc, err := store.Get(ctx, key)
	if err != nil {
		return "", nil, err
	}
	defer rc.Close()
	hash := sha256.New()
	in := io.TeeReader(rc, hash)
	if id != nil {
		// Every chunk is authenticated as it is decrypted.
		if in, err = age.Decrypt(in, id); err != nil {
			return "", nil, fmt.Errorf("decrypting the artifact: %w", err)
		}
	}
	dec, err := zstd.NewReader(in, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
	if err != nil {
		return "", nil, err
	}
	defer dec.Close()
	cmd := exec.CommandContext(ctx, pgRestore, "--file=-")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	stderr := &postgres.Tail{Max: 4 << 10}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	// Feed pg_restore through Read only (the decoder's WriteTo would latch the
	// broken pipe of an early exit).
	fed := make(chan error, 1)
	go func() {
		_, err := io.Copy(stdin, struct{ io.Reader }{dec})
		stdin.Close()
		fed <- err
	}()
	serverVersion, tables := scanScript(bufio.NewReaderSize(stdout, 256<<10))
	werr := cmd.Wait()
	ferr := <-fed
	if werr != nil {
		slog.Warn("pg_restore could not read the archive", logging.ErrorKey, werr, "stderr", stderr.String())
		return "", nil, fmt.Errorf("pg_restore could not read the archive: %w: %s", werr, postgres.Summary(stderr.String()))
	}
	if ferr != nil && !errors.Is(ferr, syscall.EPIPE) {
		return "", nil, fmt.Errorf("reading the artifact: %w", ferr)
	}
	// Whatever pg_restore did not need is decompressed and hashed too.
	if _, err := io.Copy(io.Discard, struct{ io.Reader }{dec}); err != nil {
		return "", nil, fmt.Errorf("reading the artifact: %w", err)
	}
	if got := hex.EncodeToString(hash.Sum(nil)); got != wantSHA {
		return "", nil, fmt.Errorf("checksum mismatch: stored %s, expected %s", got, wantSHA)
	}
	if serverVersion == "" {
		return "", nil, errors.New("the archive names no server version")
	}
	return serverVersion, tables, nil
}

// scanScript reads pg_restore's SQL script to its end: the server version from
// its header, and the rows of each table's COPY block.
func scanScript(br *bufio.Reader) (string, map[string]int64) {
	version, tables, table := "", map[string]int64{}, ""
	whole := true // the previous slice ended a line
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			start := whole
			whole = line[len(line)-1] == '\n'
			switch {
			case !start:
			case table != "":
				// A row is counted at its first slice (long rows span several).
				if string(line) == "\\.\n" {
					table = ""
				} else {
					tables[table]++
				}
			case bytes.HasPrefix(line, []byte("COPY ")) && bytes.HasSuffix(line, []byte(" FROM stdin;\n")):
				table = copyTarget(strings.TrimPrefix(string(line), "COPY "))
				tables[table] += 0
			case version == "" && bytes.HasPrefix(line, []byte("-- Dumped from database version ")):
				version = strings.TrimSpace(strings.TrimPrefix(string(line), "-- Dumped from database version "))
			}
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return version, tables
		}
	}
}

// copyTarget is the qualified table name at the start of a COPY statement's rest
// (up to the first space outside double quotes).
func copyTarget(rest string) string {
	quoted := false
	for i, r := range rest {
		switch {
		case r == '"':
			quoted = !quoted
		case r == ' ' && !quoted:
			return rest[:i]
		}
	}
	return rest
}

// ReadManifest reads the manifest of key.
func ReadManifest(ctx context.Context, store objectstore.Store, key string) (*Manifest, error) {
	rc, err := store.Get(ctx, key+ManifestSuffix)
	if err != nil {
		return nil, fmt.Errorf("reading the manifest (a backup without one was never completed): %w", err)
	}
	defer rc.Close()
	var m Manifest
	if err := json.NewDecoder(io.LimitReader(rc, 1<<20)).Decode(&m); err != nil {
		return nil, fmt.Errorf("decoding the manifest: %w", err)
	}
	return &m, nil
}

// compareRows checks that every table of the manifest was restored with its rows.
func compareRows(want, got map[string]int64) error {
	if len(want) == 0 {
		return errors.New("the manifest has no row counts (a backup made before drills existed): nothing to compare")
	}
	var diffs []string
	for t, n := range want {
		if g, ok := got[t]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s missing", t))
		} else if g != n {
			diffs = append(diffs, fmt.Sprintf("%s has %d rows, the backup %d", t, g, n))
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		if len(diffs) > 5 {
			diffs = append(diffs[:5], fmt.Sprintf("and %d more", len(diffs)-5))
		}
		return fmt.Errorf("the restored tables differ from the backup: %s", strings.Join(diffs, "; "))
	}
	return nil
}

// ErrOtherDatabase starts the error of a restore refused because the artifact
// belongs to another Database.
const ErrOtherDatabase = "refusing to restore an artifact of another database"

// ErrUnauthenticated starts the error of a restore refused because the
// artifact's manifest is not authenticated by the Database's key.
const ErrUnauthenticated = "refusing to restore an artifact whose manifest is not authenticated"

// ErrEncryptionKey starts the error of a restore of an encrypted artifact
// without its key.
const ErrEncryptionKey = "no key for the encrypted artifact"

// RestoreOptions of a restore.
type RestoreOptions struct {
	Store objectstore.Store
	Key   string
	// ExpectSHA256 is the checksum the Backup's status recorded; the manifest
	// must agree ("" skips this check, for bare artifact locations).
	ExpectSHA256 string
	// ExpectDatabaseUID is the UID of the Database restored into; an artifact
	// whose manifest names another is refused unless AllowOtherDatabase.
	ExpectDatabaseUID  string
	AllowOtherDatabase bool
	// Identity decrypts an encrypted artifact.
	Identity *age.X25519Identity
	// ManifestKey is the target Database's manifest key, TrustedManifestKey
	// the key of the Database that wrote the artifact (spec.manifestKeySecret;
	// nil when not given). A manifest neither authenticates is refused unless
	// AllowUnauthenticated, whether or not AllowOtherDatabase; an unsigned one
	// (written before manifests were signed) passes when ExpectSHA256 vouches
	// for the artifact. A nil ManifestKey skips the check (a Job of an operator
	// before signed manifests).
	ManifestKey, TrustedManifestKey []byte
	AllowUnauthenticated            bool
	// Agent is the client of the primary's agent and AgentURL its address.
	Agent    *agentapi.Client
	AgentURL string
	// Request is what the agent is told (ID, Jobs, KeepPreviousSeconds); the
	// checksum and size come from the manifest.
	Request agentapi.RestoreRequest
}

// Restore checks the artifact's manifest (its checksum against the Backup's
// status, its Database), then streams the artifact to the primary's agent, which
// restores it into a scratch database and swaps that in only if the bytes it
// received have the manifest's checksum (see internal/instance/restore.go); this
// side hashes what it read too. A failure or an interruption before the swap
// leaves the database as it was.
func Restore(ctx context.Context, o RestoreOptions) (*agentapi.RestoreResult, error) {
	m, err := ReadManifest(ctx, o.Store, o.Key)
	if err != nil {
		return nil, err
	}
	if o.ExpectSHA256 != "" && m.SHA256 != o.ExpectSHA256 {
		return nil, fmt.Errorf("refusing to restore: the manifest's sha256 %s is not the Backup's %s", m.SHA256, o.ExpectSHA256)
	}
	if o.ExpectDatabaseUID != "" && m.DatabaseUID != "" && m.DatabaseUID != o.ExpectDatabaseUID && !o.AllowOtherDatabase {
		return nil, fmt.Errorf("%s: Database %s (UID %s) wrote it, not this one (UID %s); set spec.allowOtherDatabase to restore it anyway",
			ErrOtherDatabase, m.DatabaseObject, m.DatabaseUID, o.ExpectDatabaseUID)
	}
	// Then the signature: every manifest is signed, with this Database's key
	// or with the writer's the Restore names.
	if o.ManifestKey != nil {
		signed := m.HMAC != "" && (m.Authentic(o.ManifestKey) || (len(o.TrustedManifestKey) > 0 && m.Authentic(o.TrustedManifestKey)))
		switch {
		case signed, o.AllowUnauthenticated:
		case m.HMAC == "" && o.ExpectSHA256 != "":
			// Written before manifests were signed: the Backup's status,
			// which only the operator writes, vouches for its checksum.
		case m.HMAC == "":
			return nil, fmt.Errorf("%s: its manifest is not signed and no Backup vouches for its checksum; set spec.allowUnauthenticated to restore it anyway", ErrUnauthenticated)
		case len(o.TrustedManifestKey) > 0:
			return nil, fmt.Errorf("%s: its manifest's signature verifies with neither this Database's key nor spec.manifestKeySecret's (the manifest was edited, or yet another Database wrote it); set spec.allowUnauthenticated to restore it anyway", ErrUnauthenticated)
		default:
			return nil, fmt.Errorf("%s: its manifest's signature does not verify with this Database's key (the manifest was edited, or another Database wrote it: name a Secret holding that Database's manifest-key in spec.manifestKeySecret, or set spec.allowUnauthenticated to restore it anyway)", ErrUnauthenticated)
		}
	}
	if m.Encryption != "" && m.Encryption != EncryptionAge {
		return nil, fmt.Errorf("the artifact is encrypted with %q, which this operator cannot read", m.Encryption)
	}
	if m.Encryption != "" && (o.Identity == nil || o.Identity.Recipient().String() != m.Recipient) {
		return nil, fmt.Errorf("%s: the artifact is encrypted to %s; name the Secret with its identity in spec.encryption", ErrEncryptionKey, m.Recipient)
	}
	// One read: the agent builds the restore in a scratch database and swaps it
	// in only if the bytes it received have the manifest's checksum, so a
	// corrupted artifact changes nothing and needs no separate pass first.
	rc, err := o.Store.Get(ctx, o.Key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	hash := sha256.New()
	req := o.Request
	req.SHA256, req.UncompressedBytes = m.SHA256, m.UncompressedSize
	body := io.TeeReader(rc, hash)
	if m.Encryption != "" {
		// The agent receives the compressed archive: decrypted here, each
		// chunk authenticated (a forged byte ends the stream, so nothing is
		// swapped), and checked by the agent against the plain checksum.
		if body, err = age.Decrypt(body, o.Identity); err != nil {
			return nil, fmt.Errorf("decrypting the artifact: %w", err)
		}
		req.SHA256 = m.PlainSHA256
	}
	res, err := o.Agent.Restore(ctx, o.AgentURL, req, body)
	if err != nil {
		return nil, fmt.Errorf("restoring (the database is unchanged unless the agent swapped it in): %w", err)
	}
	if req.VerifyOnly {
		if err := compareRows(m.Tables, res.RowCounts); err != nil {
			return res, fmt.Errorf("restore drill: %w", err)
		}
	}
	if got := hex.EncodeToString(hash.Sum(nil)); got != m.SHA256 {
		// The agent compared what it received and swapped: this read differs
		// only if the store changed under us. Report it loudly.
		return res, fmt.Errorf("the artifact changed while it was restored (sha256 %s, manifest %s)", got, m.SHA256)
	}
	return res, nil
}

// Delete removes an artifact and its manifest (the manifest first, so a partial
// delete never leaves an artifact that looks valid).
func Delete(ctx context.Context, store objectstore.Store, key string) error {
	if err := store.Delete(ctx, key+ManifestSuffix); err != nil {
		return err
	}
	return store.Delete(ctx, key)
}

func version(ctx context.Context, bin string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("running %s --version: %w", bin, err)
	}
	return strings.TrimSpace(string(out)), nil
}
