package objectstore

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Flags are the command-line flags of a program that opens a location (the
// backup Jobs, the WAL archiver): where a pvc:// claim is mounted, and for
// S3 the endpoint, region, addressing, CAs and the directory of the
// credentials files (never the credentials themselves).
type Flags struct {
	StorageMount, S3Endpoint, S3Region, S3CABundle, S3CAFile, S3CredentialsDir string
	S3PathStyle                                                                bool
}

// Register adds the flags to fs with the defaults given.
func (f *Flags) Register(fs *flag.FlagSet, storageMount, s3CredentialsDir string) {
	fs.StringVar(&f.StorageMount, "storage-mount", storageMount, "mount point of a pvc:// location's claim")
	fs.StringVar(&f.S3Endpoint, "s3-endpoint", "", "S3 endpoint URL")
	fs.StringVar(&f.S3Region, "s3-region", "us-east-1", "S3 region")
	fs.BoolVar(&f.S3PathStyle, "s3-path-style", false, "path-style bucket addressing")
	fs.StringVar(&f.S3CABundle, "s3-ca-bundle", "", "CA bundle of the operator image (used when the file exists)")
	fs.StringVar(&f.S3CAFile, "s3-ca-file", "", "PEM certificates of a private CA to trust (must exist)")
	fs.StringVar(&f.S3CredentialsDir, "s3-credentials-dir", s3CredentialsDir, "directory with accessKeyId and secretAccessKey files")
}

// Open returns the store of loc: the mounted directory of a pvc:// claim, or
// the S3 bucket with the credentials read from their files.
func (f *Flags) Open(loc Location) (Store, error) {
	switch loc.Scheme {
	case "pvc":
		return Dir{Root: f.StorageMount}, nil
	case "s3":
		ak, err := readCredential(f.S3CredentialsDir, "accessKeyId")
		if err != nil {
			return nil, err
		}
		sk, err := readCredential(f.S3CredentialsDir, "secretAccessKey")
		if err != nil {
			return nil, err
		}
		var cas []string
		if _, err := os.Stat(f.S3CABundle); f.S3CABundle != "" && err == nil {
			cas = append(cas, f.S3CABundle)
		}
		if f.S3CAFile != "" {
			cas = append(cas, f.S3CAFile)
		}
		return NewS3(S3Options{Endpoint: f.S3Endpoint, Region: f.S3Region, ForcePathStyle: f.S3PathStyle,
			AccessKeyID: ak, SecretKey: sk, Bucket: loc.Bucket, CAFiles: cas})
	}
	return nil, fmt.Errorf("unsupported location scheme %q", loc.Scheme)
}

func readCredential(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, name)) // #nosec G304 -- a mounted Secret's file
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("the S3 credentials have no %s (%s)", name, dir)
	}
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
