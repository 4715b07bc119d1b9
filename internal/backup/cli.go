package backup

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/logging"
	"github.com/example/postgres-operator/internal/objectstore"
	"github.com/example/postgres-operator/internal/postgres"
	"github.com/example/postgres-operator/internal/walarchive"
)

// Paths and files the backup Jobs use.
const (
	// StorageMount is where a pvc:// location's claim is mounted in the Job.
	StorageMount = "/backup-storage"
	// S3CredentialsDir holds the files accessKeyId and secretAccessKey.
	S3CredentialsDir = "/etc/postgres-operator/s3"
	// S3CADir holds ca.crt, a private CA for an https:// S3 endpoint.
	S3CADir = "/etc/postgres-operator/s3-ca"
	// CABundleFile is the operator image's CA bundle, copied next to the agent
	// binary by install-agent.
	CABundleFile = "ca-certificates.crt"
	// AgentTokenDir holds the agent-token file in a restore Job.
	AgentTokenDir = "/etc/postgres-operator/agent"
	// AgentTLSDir holds a restore Job's client certificate for the agent
	// (tls.crt, tls.key) and the Database's CA (ca.crt).
	AgentTLSDir = "/etc/postgres-operator/agent-tls"
	// ManifestKeyDir holds the Database's manifest-key file in backup and
	// restore Jobs.
	ManifestKeyDir = "/etc/postgres-operator/manifest-key"
	// TrustedManifestKeyDir holds, in restore Jobs, the manifest-key file of
	// the Database that wrote the artifact (spec.manifestKeySecret).
	TrustedManifestKeyDir = "/etc/postgres-operator/trusted-manifest-key"
	// EncryptionDir holds the identity file of the age key of an encrypted
	// Backup; EncryptionIdentityFile is that key of the user's Secret.
	EncryptionDir          = "/etc/postgres-operator/encryption"
	EncryptionIdentityFile = "identity"
	// TerminationLog receives the result, read by the operator from the pod status.
	TerminationLog = "/dev/termination-log"
)

// Result is what a backup Job reports in its termination message.
type Result struct {
	Manifest *Manifest               `json:"manifest,omitempty"`
	Restore  *agentapi.RestoreResult `json:"restore,omitempty"`
	// Base is a physical backup's base backup.
	Base  *walarchive.BaseBackup `json:"base,omitempty"`
	Error string                 `json:"error,omitempty"`
}

// Command runs the `backup` subcommand: `backup run|restore|delete [flags]`.
func Command(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: backup run|restore|delete [flags]")
	}
	action := args[0]
	// The Job's diagnostics, in the one log format; stdout carries the result.
	slog.SetDefault(logging.New(os.Stderr, slog.LevelInfo).With("command", "backup "+action))
	fs := flag.NewFlagSet("backup "+action, flag.ContinueOnError)
	location := fs.String("location", "", "s3://bucket/prefix or pvc://claim/path")
	key := fs.String("key", "", "object key of the artifact, relative to the bucket or volume")
	host := fs.String("host", "", "PostgreSQL host")
	port := fs.String("port", "5432", "PostgreSQL port")
	credentialsDir := fs.String("credentials-dir", "/etc/postgres-operator/credentials", "directory with username, password, database files")
	runDir := fs.String("run-dir", "/controller/run", "private directory for the passfile")
	binDir := fs.String("bin-dir", "", "PostgreSQL programs (found automatically when empty)")
	var storeFlags objectstore.Flags
	storeFlags.Register(fs, StorageMount, S3CredentialsDir)
	agentURL := fs.String("agent-url", "", "restore: base URL of the primary's agent")
	agentTokenDir := fs.String("agent-token-dir", AgentTokenDir, "restore: directory with the agent-token file (an agent without TLS)")
	agentTLSDir := fs.String("agent-tls-dir", "", "restore: directory with the client certificate and CA for an agent that serves HTTPS")
	expectSHA := fs.String("expect-sha256", "", "restore: the Backup's recorded checksum")
	restoreID := fs.String("restore-id", "", "restore: identity of this restore (names its scratch database)")
	jobs := fs.Int("jobs", 2, "restore: pg_restore parallel jobs")
	keepPrevious := fs.Int64("keep-previous-seconds", 86400, "restore: how long the pre-restore copy is kept")
	sessionTimeout := fs.Int("session-timeout-seconds", 30, "restore: bound on waiting for terminated sessions to end")
	databaseUID := fs.String("database-uid", "", "run: UID of the Database, recorded in the manifest; restore: refuse artifacts of another")
	databaseObject := fs.String("database-object", "", "run: namespace/name of the Database, recorded in the manifest")
	allowOther := fs.Bool("allow-other-database", false, "restore: restore an artifact another Database wrote")
	encryptionDir := fs.String("encryption-dir", "", "directory with the identity file of an age key: encrypt (run), decrypt (restore)")
	manifestKeyDir := fs.String("manifest-key-dir", "", "run: sign the manifest, restore: authenticate it, with the manifest-key file there (none when empty)")
	trustedKeyDir := fs.String("trusted-manifest-key-dir", "", "restore: also authenticate the manifest with the manifest-key file there (the writing Database's)")
	allowUnauth := fs.Bool("allow-unauthenticated", false, "restore: restore a manifest no key authenticates")
	verifyOnly := fs.Bool("verify-only", false, "restore: a drill (restore into a scratch database, compare row counts, drop it)")
	termLog := fs.String("termination-log", TerminationLog, "file that receives the JSON result")
	method := fs.String("method", "logical", "logical (pg_dump to --location) or physical (pg_basebackup into the Database's WAL archive)")
	walArchiveDir := fs.String("wal-archive-dir", agentapi.WALArchiveDir, "physical: the Database's WAL archive configuration (its <name>-wal-archive Secret)")
	systemID := fs.String("system-id", "", "physical: the Database's system identifier (the archive's directory; a source of another cluster is refused)")
	baseName := fs.String("base-name", "", "physical: the base backup's name in the archive")
	replicationDir := fs.String("replication-password-dir", ReplicationPasswordDir, "physical: directory with the replication-password file")
	caFile := fs.String("ca-file", "", "physical: the Database's CA, to verify the instance (verify-full); TLS is only preferred when the file is absent")
	walTimeout := fs.Duration("wal-timeout", 10*time.Minute, "physical: bound on the wait for the backup's WAL to be archived")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *method == "physical" {
		var portN int
		if _, err := fmt.Sscan(*port, &portN); err != nil {
			return fmt.Errorf("--port: %w", err)
		}
		b, err := RunPhysical(ctx, PhysicalOptions{Action: action, ArchiveDir: *walArchiveDir, CABundle: storeFlags.S3CABundle,
			SystemID: *systemID, BaseName: *baseName, Host: *host, Port: portN, ReplicationPasswordDir: *replicationDir,
			CAFile: *caFile, RunDir: *runDir, BinDir: *binDir, WALTimeout: *walTimeout})
		if err != nil {
			writeResult(*termLog, Result{Error: err.Error()})
			return err
		}
		if b != nil {
			writeResult(*termLog, Result{Base: b})
			printJSON(b)
		}
		return nil
	}
	err := func() error {
		loc, err := objectstore.ParseLocation(*location)
		if err != nil {
			return err
		}
		store, err := storeFlags.Open(loc)
		if err != nil {
			return err
		}
		manifestKey, err := readManifestKey(*manifestKeyDir, "the Database's manifest key")
		if err != nil {
			return err
		}
		trustedKey, err := readManifestKey(*trustedKeyDir, "the manifest key of spec.manifestKeySecret")
		if err != nil {
			return err
		}
		var identity *age.X25519Identity
		if *encryptionDir != "" {
			text, err := readFile(*encryptionDir, EncryptionIdentityFile)
			if err != nil {
				return err
			}
			if identity, err = ParseIdentity(text); err != nil {
				return err
			}
		}
		switch action {
		case "delete":
			return Delete(ctx, store, *key)
		case "restore":
			agent, err := agentClient(*agentTLSDir, *agentTokenDir)
			if err != nil {
				return err
			}
			res, err := Restore(ctx, RestoreOptions{Store: store, Key: *key, ExpectSHA256: *expectSHA,
				ExpectDatabaseUID: *databaseUID, AllowOtherDatabase: *allowOther, ManifestKey: manifestKey, Identity: identity,
				TrustedManifestKey: trustedKey, AllowUnauthenticated: *allowUnauth,
				Agent: agent, AgentURL: *agentURL,
				Request: agentapi.RestoreRequest{ID: *restoreID, Jobs: *jobs, KeepPreviousSeconds: *keepPrevious,
					SessionTimeoutSeconds: *sessionTimeout, VerifyOnly: *verifyOnly}})
			if res != nil {
				writeResult(*termLog, Result{Restore: res})
				b, _ := json.Marshal(res)
				fmt.Println(string(b))
			}
			return err
		}
		bins, err := postgres.FindBinaries(*binDir)
		if err != nil {
			return err
		}
		conn, err := connFromFiles(*credentialsDir, *runDir, *host, *port)
		if err != nil {
			return err
		}
		switch action {
		case "run":
			m, err := Run(ctx, Options{PgDump: bins.PgDump, PgRestore: bins.PgRestore, Conn: conn, Store: store,
				Key: *key, Location: loc.URL(*key), DatabaseUID: *databaseUID, DatabaseObject: *databaseObject, ManifestKey: manifestKey,
				Identity: identity})
			if err != nil {
				return err
			}
			writeResult(*termLog, Result{Manifest: m})
			b, _ := json.Marshal(m)
			fmt.Println(string(b))
			return nil
		default:
			return fmt.Errorf("unknown backup action %q", action)
		}
	}()
	if err != nil {
		writeResult(*termLog, Result{Error: err.Error()})
	}
	return err
}

// agentClient authenticates to the primary's agent with the client certificate
// in tlsDir, or, without one, with the token in tokenDir.
func agentClient(tlsDir, tokenDir string) (*agentapi.Client, error) {
	if tlsDir != "" {
		cfg, err := agentapi.ClientTLSConfig(tlsDir)
		if err != nil {
			return nil, err
		}
		return agentapi.NewClient(&http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}, ""), nil
	}
	token, err := readFile(tokenDir, agentapi.InternalAgentTokenFile)
	if err != nil {
		return nil, err
	}
	return agentapi.NewClient(&http.Client{}, token), nil
}

func readFile(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// connFromFiles builds the connection from the credentials Secret's files and
// writes the password into a private passfile for libpq.
func connFromFiles(credentialsDir, runDir, host, port string) (Conn, error) {
	user, err := readFile(credentialsDir, "username")
	if err != nil {
		return Conn{}, err
	}
	password, err := readFile(credentialsDir, "password")
	if err != nil {
		return Conn{}, err
	}
	database, err := readFile(credentialsDir, "database")
	if err != nil {
		return Conn{}, err
	}
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return Conn{}, err
	}
	passfile := filepath.Join(runDir, "backup.pgpass")
	if err := os.WriteFile(passfile, []byte(postgres.PgpassLine(user, password)), 0o600); err != nil {
		return Conn{}, err
	}
	c := Conn{Host: host, Port: port, User: user, Database: database, Passfile: passfile}
	if ca := filepath.Join(credentialsDir, agentapi.TLSCAFile); fileExists(ca) {
		c.SSLRootCert = ca
	}
	return c, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// writeResult writes the termination message (bounded by Kubernetes to 4 KiB).
func writeResult(path string, r Result) {
	if path == "" {
		return
	}
	b, _ := json.Marshal(r)
	if len(b) > 4000 {
		r.Error = r.Error[:min(len(r.Error), 3000)]
		b, _ = json.Marshal(r)
	}
	_ = os.WriteFile(path, b, 0o600) // #nosec G703 -- the termination log path is the Job spec's
}

// readManifestKey reads the manifest-key file in dir (nil when dir is "").
func readManifestKey(dir, what string) ([]byte, error) {
	if dir == "" {
		return nil, nil
	}
	k, err := readFile(dir, agentapi.InternalManifestKeyFile)
	if err != nil {
		return nil, fmt.Errorf("%s is missing: %w", what, err)
	}
	if k == "" {
		return nil, fmt.Errorf("%s is empty", what)
	}
	return []byte(k), nil
}
