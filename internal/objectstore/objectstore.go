// Package objectstore stores backup artifacts: on an S3-compatible object store, or
// in a directory (a PersistentVolumeClaim mounted into the backup Job). Writes
// stream; a failed write leaves no object behind.
package objectstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sys/unix"
)

// Location is a parsed storage location: s3://bucket/prefix or pvc://claim/path.
type Location struct {
	// Scheme is "s3" or "pvc".
	Scheme string
	// Bucket is the S3 bucket or the PersistentVolumeClaim name.
	Bucket string
	// Prefix is the path inside the bucket or volume, without leading or trailing
	// slashes.
	Prefix string
}

var (
	bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
	claimRE  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// ParseLocation parses and validates a location URL.
func ParseLocation(s string) (Location, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Location{}, fmt.Errorf("storage location %q is not a URL: %w", s, err)
	}
	l := Location{Scheme: u.Scheme, Bucket: u.Host, Prefix: strings.Trim(path.Clean("/"+u.Path), "/")}
	switch u.Scheme {
	case "s3":
		if !bucketRE.MatchString(l.Bucket) {
			return Location{}, fmt.Errorf("storage location %q: %q is not a valid bucket name", s, l.Bucket)
		}
	case "pvc":
		if !claimRE.MatchString(l.Bucket) {
			return Location{}, fmt.Errorf("storage location %q: %q is not a valid PersistentVolumeClaim name", s, l.Bucket)
		}
	default:
		return Location{}, fmt.Errorf("storage location %q: unsupported scheme %q (want s3:// or pvc://)", s, u.Scheme)
	}
	return l, nil
}

// Key joins the location's prefix and name.
func (l Location) Key(name string) string {
	if l.Prefix == "" {
		return name
	}
	return l.Prefix + "/" + name
}

// URL is the address of the object key in this location.
func (l Location) URL(key string) string { return l.Scheme + "://" + l.Bucket + "/" + key }

// ErrNotFound is returned (wrapped) by Get for a key that does not exist.
var ErrNotFound = errors.New("no such object")

// Store holds artifacts by key.
type Store interface {
	// Put streams r into key. On any error nothing is left under key.
	Put(ctx context.Context, key string, r io.Reader) (int64, error)
	// Get opens key for streaming; a missing key is an ErrNotFound.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// Delete removes key; a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// List returns the keys under prefix (a "directory": prefix ends with
	// "/"), sorted, without objects still being written.
	List(ctx context.Context, prefix string) ([]string, error)
}

// Dir stores objects as files under Root (e.g. a volume's mount point).
type Dir struct{ Root string }

func (d Dir) path(key string) (string, error) {
	clean := path.Clean("/" + key)
	if clean == "/" || strings.Contains(key, "..") {
		return "", fmt.Errorf("invalid object key %q", key)
	}
	return filepath.Join(d.Root, filepath.FromSlash(clean)), nil
}

// Put writes key.partial, syncs it and renames it into place.
func (d Dir) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	p, err := d.path(key)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		return 0, err
	}
	partial := p + ".partial"
	f, err := os.OpenFile(partial, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, contextReader{ctx, r})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(partial, p)
	}
	if err != nil {
		_ = os.Remove(partial)
		return 0, err
	}
	if dir, err := os.Open(filepath.Dir(p)); err == nil {
		_ = dir.Sync()
		_ = dir.Close()
	}
	return n, nil
}

// Get opens the file of key.
func (d Dir) Get(_ context.Context, key string) (io.ReadCloser, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		// A missing volume root (an unmounted claim) is not a missing
		// object: a caller may act on "not found" (recovery ends there).
		if _, rerr := os.Stat(d.Root); rerr != nil {
			return nil, fmt.Errorf("the storage root %s: %w", d.Root, rerr)
		}
		return nil, fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	// Read from the device, not the page cache: the pages a backup just wrote
	// (and fsynced) are dropped first, so a verification read sees what the
	// volume holds.
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	return f, nil
}

// Delete removes the file of key.
func (d Dir) Delete(_ context.Context, key string) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// List walks the directory of prefix; files being written (.partial) are
// not listed.
func (d Dir) List(_ context.Context, prefix string) ([]string, error) {
	p := d.Root
	if strings.Trim(prefix, "/") != "" {
		var err error
		if p, err = d.path(prefix); err != nil {
			return nil, err
		}
	}
	var keys []string
	err := filepath.WalkDir(p, func(fp string, e os.DirEntry, err error) error {
		if errors.Is(err, os.ErrNotExist) && fp == p {
			return filepath.SkipAll
		}
		if err != nil || e.IsDir() || strings.HasSuffix(fp, ".partial") {
			return err
		}
		rel, err := filepath.Rel(d.Root, fp)
		if err != nil {
			return err
		}
		keys = append(keys, filepath.ToSlash(rel))
		return nil
	})
	sort.Strings(keys)
	return keys, err
}

type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// S3Options configure an S3 store. Credentials are values read from files by the
// caller, never from flags.
type S3Options struct {
	Endpoint       string
	Region         string
	ForcePathStyle bool
	AccessKeyID    string
	SecretKey      string
	Bucket         string
	// PartSize bounds the memory of an upload: one part is buffered at a time.
	PartSize uint64
	// CAFiles are PEM bundles of certificate authorities trusted for an https://
	// endpoint, in addition to the system's (which an official postgres image
	// may not have at all).
	CAFiles []string
}

// tlsTransport trusts the system's roots plus those in files.
func tlsTransport(files []string) (*http.Transport, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for _, f := range files {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("reading the CA bundle: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no PEM certificates in the CA bundle %s", f)
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return tr, nil
}

// S3 stores objects in a bucket of an S3-compatible store.
type S3 struct {
	client   *minio.Client
	bucket   string
	partSize uint64
}

// NewS3 returns a store for o.Bucket.
func NewS3(o S3Options) (*S3, error) {
	u, err := url.Parse(o.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("s3 endpoint %q must be an http:// or https:// URL", o.Endpoint)
	}
	lookup := minio.BucketLookupDNS
	if o.ForcePathStyle {
		lookup = minio.BucketLookupPath
	}
	mo := &minio.Options{
		Creds:        credentials.NewStaticV4(o.AccessKeyID, o.SecretKey, ""),
		Secure:       u.Scheme == "https",
		Region:       o.Region,
		BucketLookup: lookup,
	}
	if u.Scheme == "https" && len(o.CAFiles) > 0 {
		if mo.Transport, err = tlsTransport(o.CAFiles); err != nil {
			return nil, err
		}
	}
	c, err := minio.New(u.Host, mo)
	if err != nil {
		return nil, fmt.Errorf("s3 client: %w", err)
	}
	if o.PartSize == 0 {
		o.PartSize = 16 << 20
	}
	return &S3{client: c, bucket: o.Bucket, partSize: o.PartSize}, nil
}

// Put streams r as a multipart upload of unknown length; a failed upload is
// aborted, so no partial object is ever visible.
func (s *S3) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	info, err := s.client.PutObject(ctx, s.bucket, key, r, -1, minio.PutObjectOptions{
		PartSize:    s.partSize,
		NumThreads:  1,
		ContentType: "application/octet-stream",
	})
	if err != nil {
		// minio-go aborts the multipart upload on error; make sure nothing remains.
		_ = s.client.RemoveIncompleteUpload(context.Background(), s.bucket, key)
		return 0, fmt.Errorf("uploading s3://%s/%s: %w", s.bucket, key, err)
	}
	return info.Size, nil
}

// Get streams key.
func (s *S3) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	obj, err := s.client.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading s3://%s/%s: %w", s.bucket, key, err)
	}
	if _, err := obj.Stat(); err != nil {
		obj.Close()
		if minio.ToErrorResponse(err).Code == "NoSuchKey" {
			// minio-go reports any 404 of a HEAD as NoSuchKey: a missing
			// bucket (or a proxy's 404) must not read as a missing object.
			ok, berr := s.client.BucketExists(ctx, s.bucket)
			switch {
			case berr != nil:
				return nil, fmt.Errorf("reading s3://%s/%s: checking the bucket: %w", s.bucket, key, berr)
			case !ok:
				return nil, fmt.Errorf("reading s3://%s/%s: the bucket does not exist", s.bucket, key)
			}
			return nil, fmt.Errorf("reading s3://%s/%s: %w", s.bucket, key, ErrNotFound)
		}
		return nil, fmt.Errorf("reading s3://%s/%s: %w", s.bucket, key, err)
	}
	return obj, nil
}

// Delete removes key.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := s.client.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("deleting s3://%s/%s: %w", s.bucket, key, err)
	}
	return nil
}

// List lists the keys under prefix (multipart uploads in progress are not
// objects yet).
func (s *S3) List(ctx context.Context, prefix string) ([]string, error) {
	var keys []string
	for o := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			return nil, fmt.Errorf("listing s3://%s/%s: %w", s.bucket, prefix, o.Err)
		}
		keys = append(keys, o.Key)
	}
	sort.Strings(keys)
	return keys, nil
}

// EnsureBucket creates the bucket if it does not exist (tests and the local store).
func (s *S3) EnsureBucket(ctx context.Context, region string) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	return s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: region})
}
