package walarchive

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/example/postgres-operator/internal/agekey"
	"github.com/example/postgres-operator/internal/objectstore"
)

// Files of the WAL archive's configuration directory: the Database's
// <name>-wal-archive Secret, which the operator writes and every instance
// mounts (optional: absent, the archive is off). A change is picked up by the
// agent without a restart.
const (
	// ConfigFile holds Config as JSON.
	ConfigFile = "config.json"
	// AccessKeyFile and SecretKeyFile are the S3 credentials.
	AccessKeyFile = "accessKeyId"
	SecretKeyFile = "secretAccessKey"
	// IdentityFile is the age identity of an encrypted archive.
	IdentityFile = "identity"
	// CAFile holds the PEM certificates of a private CA of the S3 endpoint.
	CAFile = "ca.crt"
)

// Config is where and how a Database archives its WAL.
type Config struct {
	// Location is s3://bucket/prefix.
	Location string `json:"location"`
	// Endpoint, Region, ForcePathStyle reach the S3 store.
	Endpoint       string `json:"endpoint"`
	Region         string `json:"region,omitempty"`
	ForcePathStyle bool   `json:"forcePathStyle,omitempty"`
	// Encrypted: IdentityFile is there and every file is encrypted to it.
	Encrypted bool `json:"encrypted,omitempty"`
	// ArchiveTimeoutSeconds is archive_timeout.
	ArchiveTimeoutSeconds int `json:"archiveTimeoutSeconds,omitempty"`
}

// ErrNoConfig: the configuration directory holds no archive configuration
// (archiving is off).
var ErrNoConfig = errors.New("no WAL archive configured")

// ReadConfig reads the configuration in dir.
func ReadConfig(dir string) (Config, error) {
	b, err := os.ReadFile(filepath.Join(dir, ConfigFile)) // #nosec G304 -- the mounted Secret's file
	if errors.Is(err, os.ErrNotExist) {
		return Config{}, ErrNoConfig
	}
	if err != nil {
		return Config{}, err
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, fmt.Errorf("%s: %w", ConfigFile, err)
	}
	if _, err := objectstore.ParseLocation(c.Location); err != nil {
		return Config{}, err
	}
	return c, nil
}

// ArchiveTimeout is archive_timeout (60 s when unset).
func (c Config) ArchiveTimeout() time.Duration {
	if c.ArchiveTimeoutSeconds <= 0 {
		return time.Minute
	}
	return time.Duration(c.ArchiveTimeoutSeconds) * time.Second
}

// OpenConfigDir opens the archive the configuration in dir describes;
// caBundle (used when the file exists) is the operator image's CA bundle,
// copied next to the agent (a postgres image may have none).
func OpenConfigDir(dir, caBundle string) (*Archive, error) {
	c, err := ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	loc, err := objectstore.ParseLocation(c.Location)
	if err != nil {
		return nil, err
	}
	f := objectstore.Flags{S3Endpoint: c.Endpoint, S3Region: c.Region, S3PathStyle: c.ForcePathStyle, S3CredentialsDir: dir, S3CABundle: caBundle}
	if _, err := os.Stat(filepath.Join(dir, CAFile)); err == nil {
		f.S3CAFile = filepath.Join(dir, CAFile)
	}
	store, err := f.Open(loc)
	if err != nil {
		return nil, err
	}
	a := &Archive{Store: store, Prefix: loc.Prefix}
	if c.Encrypted {
		b, err := os.ReadFile(filepath.Join(dir, IdentityFile)) // #nosec G304 -- the mounted Secret's file
		if err != nil {
			return nil, fmt.Errorf("reading the archive's encryption key: %w", err)
		}
		id, err := agekey.Parse(string(b))
		if err != nil {
			return nil, err
		}
		a.Recipient, a.Identity = id.Recipient(), id
	}
	return a, nil
}

// OpenSystem opens the archive of the configuration in dir, in the
// directory of the cluster with the given system identifier.
func OpenSystem(dir, caBundle, systemID string) (*Archive, error) {
	if systemID == "" {
		return nil, errors.New("no system identifier")
	}
	a, err := OpenConfigDir(dir, caBundle)
	if err != nil {
		return nil, err
	}
	a.Prefix = strings.TrimPrefix(a.Prefix+"/"+systemID, "/")
	return a, nil
}

// PushStatus is what the last wal-push wrote into its status file: the
// agent reports it (the store's error, which PostgreSQL's own statistics
// lack).
type PushStatus struct {
	Time  time.Time `json:"time"`
	Name  string    `json:"name"`
	Error string    `json:"error,omitempty"`
	// LastCommitTime is the commit time of the last commit in the newest
	// archived segment that holds one (LastCommitWAL): the newest point a
	// recovery from the archive reaches by time. Carried from push to push.
	LastCommitTime *time.Time `json:"lastCommitTime,omitempty"`
	LastCommitWAL  string     `json:"lastCommitWAL,omitempty"`
}

// WritePushStatus records the result of a push at path (atomically).
func WritePushStatus(path string, s PushStatus) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ReadPushStatus reads the status file at path (zero when there is none).
func ReadPushStatus(path string) (PushStatus, error) {
	var s PushStatus
	b, err := os.ReadFile(path) // #nosec G304 -- the agent's run directory
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(b, &s)
}
