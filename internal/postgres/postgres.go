// Package postgres holds what the operator's binaries need to know about PostgreSQL
// itself: where its programs are, how to quote identifiers and literals, and how to
// compute SCRAM-SHA-256 password verifiers.
package postgres

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
)

// Binaries are the absolute paths of the PostgreSQL programs the agent runs.
type Binaries struct {
	Dir                                                  string
	Postgres, Initdb, PgCtl, PgBasebackup, PgControldata string
	PgDump, PgRestore                                    string
}

// debianRoot is where Debian and the official images install versioned binaries.
var debianRoot = "/usr/lib/postgresql"

// FindBinaries locates the PostgreSQL programs: in dir when given, else the
// directory of `postgres` on PATH (official images), else the highest
// /usr/lib/postgresql/NN/bin (Debian).
func FindBinaries(dir string) (Binaries, error) {
	if dir == "" {
		if p, err := exec.LookPath("postgres"); err == nil {
			if resolved, err := filepath.EvalSymlinks(p); err == nil {
				p = resolved
			}
			dir = filepath.Dir(p)
		}
	}
	if dir == "" {
		dir = highestDebianBinDir()
	}
	if dir == "" {
		return Binaries{}, errors.New("no PostgreSQL binaries: postgres is not on PATH and /usr/lib/postgresql/*/bin does not exist")
	}
	b := Binaries{
		Dir:           dir,
		Postgres:      filepath.Join(dir, "postgres"),
		Initdb:        filepath.Join(dir, "initdb"),
		PgCtl:         filepath.Join(dir, "pg_ctl"),
		PgBasebackup:  filepath.Join(dir, "pg_basebackup"),
		PgControldata: filepath.Join(dir, "pg_controldata"),
		PgDump:        filepath.Join(dir, "pg_dump"),
		PgRestore:     filepath.Join(dir, "pg_restore"),
	}
	for _, p := range []string{b.Postgres, b.Initdb, b.PgBasebackup} {
		if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return Binaries{}, fmt.Errorf("PostgreSQL program %s is missing or not executable", p)
		}
	}
	return b, nil
}

func highestDebianBinDir() string {
	entries, err := os.ReadDir(debianRoot)
	if err != nil {
		return ""
	}
	var versions []int
	for _, e := range entries {
		if v, err := strconv.Atoi(e.Name()); err == nil {
			if _, err := os.Stat(filepath.Join(debianRoot, e.Name(), "bin", "postgres")); err == nil {
				versions = append(versions, v)
			}
		}
	}
	if len(versions) == 0 {
		return ""
	}
	sort.Ints(versions)
	return filepath.Join(debianRoot, strconv.Itoa(versions[len(versions)-1]), "bin")
}

// QuoteIdentifier quotes an SQL identifier (a role or database name).
func QuoteIdentifier(s string) string {
	return pgx.Identifier{s}.Sanitize()
}

// QuoteLiteral quotes an SQL string literal. A value holding a backslash is
// written as an escape string (E'...'), so the result means the same whatever
// standard_conforming_strings is.
func QuoteLiteral(s string) string {
	s = strings.ReplaceAll(s, "\x00", "")
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		q = "E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q
}

// QuoteConfString quotes a string value for postgresql.conf, whose parser
// processes backslash escapes in quoted values. It fails on characters a value
// cannot hold (NUL, line breaks).
func QuoteConfString(s string) (string, error) {
	if strings.ContainsAny(s, "\x00\r\n") {
		return "", fmt.Errorf("configuration value %q holds a NUL or line break", s)
	}
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", "''") + "'", nil
}

// ScramIterations is the PBKDF2 iteration count of verifiers, PostgreSQL's default.
const ScramIterations = 4096

// ScramVerifier returns the SCRAM-SHA-256 verifier of password (RFC 5802, RFC
// 7677) in the form PostgreSQL stores in pg_authid, with a fresh random salt. Sent
// as the PASSWORD of CREATE/ALTER ROLE, it lets the role log in with password
// without the password itself ever reaching the server.
func ScramVerifier(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("generating salt: %w", err)
	}
	return scramVerifier(password, salt, ScramIterations)
}

func scramVerifier(password string, salt []byte, iterations int) (string, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("deriving salted password: %w", err)
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(storedKey[:]), b64(serverKey)), nil
}

func hmacSHA256(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

// PgpassLine returns a .pgpass line matching any host, port and database for user.
func PgpassLine(user, password string) string {
	return PgpassEntry("*", "*", "*", user, password)
}

// PgpassEntry is one line of a password file for a host, port and database
// (":" and "\" escaped; "*" matches any).
func PgpassEntry(host, port, database, user, password string) string {
	esc := func(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), ":", `\:`) }
	return esc(host) + ":" + esc(port) + ":" + esc(database) + ":" + esc(user) + ":" + esc(password) + "\n"
}

// ConninfoValue quotes a value for a libpq keyword/value connection string.
func ConninfoValue(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", `\'`) + "'"
}

// Tail keeps the last Max bytes written to it: the end of a program's stderr, for
// error messages.
type Tail struct {
	Max int
	mu  sync.Mutex
	b   []byte
}

// Write keeps the end of p.
func (t *Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.Max {
		t.b = t.b[len(t.b)-t.Max:]
	}
	return len(p), nil
}

// String is what was kept, trimmed.
func (t *Tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}

var (
	quotedDouble = regexp.MustCompile(`"[^"\n]*"`)
	quotedSingle = regexp.MustCompile(`'[^'\n]*'`)
	parenthesed  = regexp.MustCompile(`\([^()\n]*\)`)
)

// Summary is what of a PostgreSQL program's stderr may go into a status or an
// event: the first error line, without its DETAIL, CONTEXT or quoted and
// parenthesised parts (where PostgreSQL puts values: "invalid input syntax for
// type integer: "…"", "Failing row contains (…)"), at most 200 bytes. The whole
// stderr belongs in the log of the process that ran the program only.
func Summary(stderr string) string {
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	line := lines[len(lines)-1]
	for _, l := range lines {
		if ll := strings.ToLower(l); strings.Contains(ll, "error:") || strings.Contains(ll, "fatal:") {
			line = l
			break
		}
	}
	if i := strings.Index(line, "DETAIL:"); i >= 0 {
		line = line[:i]
	}
	line = quotedDouble.ReplaceAllString(line, `"…"`)
	line = quotedSingle.ReplaceAllString(line, `'…'`)
	line = parenthesed.ReplaceAllString(line, `(…)`)
	line = strings.Join(strings.Fields(line), " ")
	if len(line) > 200 {
		line = strings.ToValidUTF8(line[:200], "") + "…"
	}
	return line
}

// ParseServerVersion reads the major and the version from `postgres -V`, e.g.
// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" or "… 18beta1".
func ParseServerVersion(out string) (int, string, error) {
	f := strings.Fields(out)
	for i, w := range f {
		if w == "(PostgreSQL)" && i+1 < len(f) {
			v := f[i+1]
			n := 0
			for n < len(v) && v[n] >= '0' && v[n] <= '9' {
				n++
			}
			major, err := strconv.Atoi(v[:n])
			if err != nil {
				break
			}
			return major, v, nil
		}
	}
	return 0, "", fmt.Errorf("cannot parse the PostgreSQL version from %q", strings.TrimSpace(out))
}

// ReadSystemID returns the system identifier stored at the start of
// global/pg_control (ControlFileData.system_identifier, a uint64 in the
// machine's byte order; every platform the images exist for is little-endian).
func ReadSystemID(pgdata string) (string, error) {
	f, err := os.Open(filepath.Join(pgdata, "global", "pg_control")) // #nosec G304 -- the data directory
	if err != nil {
		return "", fmt.Errorf("reading pg_control: %w", err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], 0); err != nil {
		return "", fmt.Errorf("reading pg_control: %w", err)
	}
	return strconv.FormatUint(binary.LittleEndian.Uint64(b[:]), 10), nil
}

// ReadDataMajor returns the major version in PGDATA/PG_VERSION.
func ReadDataMajor(pgdata string) (int, error) {
	b, err := os.ReadFile(filepath.Join(pgdata, "PG_VERSION")) // #nosec G304 -- the data directory
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("PG_VERSION %q: %w", strings.TrimSpace(string(b)), err)
	}
	return n, nil
}
