// Package walarchive is the continuous WAL archive: WAL segments, timeline
// history files and backup labels, each stored once under <prefix>/wal/ of a
// storage location (S3 or a volume), compressed with zstd, checksummed
// (SHA-256 of the original bytes, verified on every fetch) and, when asked,
// encrypted with age.
//
// An archived object is a clear-text header line (Header: the name, size,
// checksum and how the body is encoded) followed by the body. The header
// lets a push compare without downloading the body: pushing a file whose
// checksum matches the archived one is a success (the archiver's retry after
// a crash), pushing a different file under an existing name is refused
// (ErrConflict) and never overwrites it. A store's Put leaves nothing behind on
// failure, so a killed archiver leaves no partial object: PostgreSQL retries
// the file, which is still in pg_wal.
package walarchive

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"

	"github.com/example/postgres-operator/internal/objectstore"
)

// Dir is the archive's directory under a location's prefix.
const Dir = "wal"

// magic starts every archived object (format version 1).
const magic = "PGOWAL1 "

// maxHeader bounds the header line.
const maxHeader = 4 << 10

var (
	// ErrNotEncrypted: an object of an encrypted archive is in clear text (put
	// there by someone else, or before encryption was turned on).
	ErrNotEncrypted = errors.New("not encrypted")
	// ErrNotArchived: the archive has no file of that name.
	ErrNotArchived = errors.New("not in the archive")
	// ErrConflict: the archive holds a different file under the name pushed.
	ErrConflict = errors.New("the archive holds a different file under this name")
	// ErrCorrupt: an archived object does not decode to the file its header
	// describes.
	ErrCorrupt = errors.New("the archived file is corrupt")
)

// namePattern accepts the names PostgreSQL archives: segments, partial
// segments, timeline history files and backup history files.
var namePattern = regexp.MustCompile(`^([0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$`)

// Header is the clear-text first line of an archived object.
type Header struct {
	// Name is the file's name in pg_wal.
	Name string `json:"name"`
	// Size is the file's size in bytes.
	Size int64 `json:"size"`
	// SHA256 is the checksum of the file's bytes.
	SHA256 string `json:"sha256"`
	// Compression is "zstd".
	Compression string `json:"compression"`
	// Encrypted: the compressed body is encrypted with age.
	Encrypted bool `json:"encrypted,omitempty"`
}

// Archive is the WAL archive of one Database in a store.
type Archive struct {
	Store objectstore.Store
	// Prefix is the location's prefix ("" at the root of the bucket or volume).
	Prefix string
	// Recipient encrypts what is pushed (nil: not encrypted).
	Recipient age.Recipient
	// Identity decrypts what is fetched.
	Identity age.Identity
}

// PushResult says what a push did.
type PushResult struct {
	Header Header
	// AlreadyArchived: the same file was archived before (a retry); nothing
	// was written.
	AlreadyArchived bool
	// StoredBytes is the size of the object written.
	StoredBytes int64
}

func (a *Archive) key(name string) string {
	k := Dir + "/" + name
	if a.Prefix != "" {
		k = a.Prefix + "/" + k
	}
	return k
}

// ValidName reports whether name is a file PostgreSQL archives.
func ValidName(name string) bool { return namePattern.MatchString(name) }

// Push archives the file at path under name.
func (a *Archive) Push(ctx context.Context, path, name string) (PushResult, error) {
	if !ValidName(name) {
		return PushResult{}, fmt.Errorf("%q is not a WAL file name", name)
	}
	sum, size, err := hashFile(path)
	if err != nil {
		return PushResult{}, err
	}
	h := Header{Name: name, Size: size, SHA256: sum, Compression: "zstd", Encrypted: a.Recipient != nil}
	switch have, err := a.Head(ctx, name); {
	case err == nil && have.SHA256 == h.SHA256 && have.Size == h.Size:
		return PushResult{Header: have, AlreadyArchived: true}, nil
	case err == nil:
		return PushResult{}, fmt.Errorf("%s: %w (archived %d bytes sha256 %s, pushed %d bytes sha256 %s)",
			name, ErrConflict, have.Size, have.SHA256, h.Size, h.SHA256)
	case !errors.Is(err, ErrNotArchived):
		return PushResult{}, err
	}
	f, err := os.Open(path) // #nosec G304 -- a file in pg_wal named by PostgreSQL
	if err != nil {
		return PushResult{}, err
	}
	defer f.Close()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(a.encode(pw, f, h)) }()
	n, err := a.Store.Put(ctx, a.key(name), pr)
	_ = pr.CloseWithError(err)
	if err != nil {
		return PushResult{}, fmt.Errorf("archiving %s: %w", name, err)
	}
	return PushResult{Header: h, StoredBytes: n}, nil
}

// encode writes h's header line and the encoded body of r to w, and fails if
// r does not hash to h (the file changed between the two reads): the upload
// is then aborted.
func (a *Archive) encode(w io.Writer, r io.Reader, h Header) error {
	line, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, magic+string(line)+"\n"); err != nil {
		return err
	}
	body := w
	var enc io.WriteCloser
	if a.Recipient != nil {
		if enc, err = age.Encrypt(w, a.Recipient); err != nil {
			return err
		}
		body = enc
	}
	z, err := zstd.NewWriter(body, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return err
	}
	hash := sha256.New()
	n, err := io.Copy(z, io.TeeReader(r, hash))
	if err != nil {
		z.Close()
		return err
	}
	if err := z.Close(); err != nil {
		return err
	}
	if enc != nil {
		if err := enc.Close(); err != nil {
			return err
		}
	}
	if got := hex.EncodeToString(hash.Sum(nil)); got != h.SHA256 || n != h.Size {
		return fmt.Errorf("%s changed while it was archived", h.Name)
	}
	return nil
}

// Head reads the header of the archived file name.
func (a *Archive) Head(ctx context.Context, name string) (Header, error) {
	rc, err := a.Store.Get(ctx, a.key(name))
	if errors.Is(err, objectstore.ErrNotFound) {
		return Header{}, fmt.Errorf("%s: %w", name, ErrNotArchived)
	}
	if err != nil {
		return Header{}, err
	}
	defer rc.Close()
	h, _, err := readHeader(bufio.NewReader(rc), name)
	return h, err
}

func readHeader(br *bufio.Reader, name string) (Header, *bufio.Reader, error) {
	line, err := br.ReadSlice('\n')
	if err != nil || len(line) > maxHeader || !bytes.HasPrefix(line, []byte(magic)) {
		return Header{}, nil, fmt.Errorf("%s: %w: no header", name, ErrCorrupt)
	}
	var h Header
	if err := json.Unmarshal(line[len(magic):], &h); err != nil || h.Name != name || h.Compression != "zstd" || len(h.SHA256) != 64 {
		return Header{}, nil, fmt.Errorf("%s: %w: bad header %q", name, ErrCorrupt, strings.TrimSpace(string(line)))
	}
	return h, br, nil
}

// Fetch restores the archived file name to dest: written beside it, checked
// against its header's size and checksum, synced, then renamed into place. A
// missing file is ErrNotArchived (restore_command answers "not found", and
// recovery ends there); anything else that fails leaves no dest behind.
func (a *Archive) Fetch(ctx context.Context, name, dest string) (Header, error) {
	if !ValidName(name) {
		return Header{}, fmt.Errorf("%q is not a WAL file name", name)
	}
	rc, err := a.Store.Get(ctx, a.key(name))
	if errors.Is(err, objectstore.ErrNotFound) {
		return Header{}, fmt.Errorf("%s: %w", name, ErrNotArchived)
	}
	if err != nil {
		return Header{}, err
	}
	defer rc.Close()
	h, br, err := readHeader(bufio.NewReaderSize(rc, 64<<10), name)
	if err != nil {
		return Header{}, err
	}
	var body io.Reader = br
	if !h.Encrypted && a.Identity != nil && !strings.HasSuffix(name, ".history") {
		// A timeline history file archived before encryption was turned on
		// is accepted (PostgreSQL asks for every timeline's, and never
		// archives one again); its checksum is still checked.
		return Header{}, fmt.Errorf("%s is not encrypted but the archive is: refusing an object that anyone who can write to the store could have put there: %w", name, ErrNotEncrypted)
	}
	if h.Encrypted {
		if a.Identity == nil {
			return Header{}, fmt.Errorf("%s is encrypted and no identity was given", name)
		}
		if body, err = age.Decrypt(br, a.Identity); err != nil {
			return Header{}, fmt.Errorf("decrypting %s: %w", name, err)
		}
	}
	z, err := zstd.NewReader(body, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
	if err != nil {
		return Header{}, err
	}
	defer z.Close()
	tmp := dest + ".pgo-fetch"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600) // #nosec G304 -- the path restore_command names
	if err != nil {
		return Header{}, err
	}
	hash := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, hash), io.LimitReader(z, h.Size+1))
	if err == nil && (n != h.Size || hex.EncodeToString(hash.Sum(nil)) != h.SHA256) {
		err = fmt.Errorf("%s: %w: %d bytes sha256 %s, its header says %d bytes sha256 %s",
			name, ErrCorrupt, n, hex.EncodeToString(hash.Sum(nil)), h.Size, h.SHA256)
	} else if err != nil {
		err = fmt.Errorf("%s: %w: %w", name, ErrCorrupt, err)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dest)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return Header{}, err
	}
	if d, err := os.Open(filepath.Dir(dest)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return h, nil
}

func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path) // #nosec G304 -- a file in pg_wal named by PostgreSQL
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("reading %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
