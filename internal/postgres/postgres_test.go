package postgres

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestScramVerifierHasPostgresFormatAndAFreshSalt(t *testing.T) {
	v1, err := ScramVerifier("secret")
	if err != nil {
		t.Fatal(err)
	}
	v2, err := ScramVerifier("secret")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^SCRAM-SHA-256\$4096:([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$`)
	m := re.FindStringSubmatch(v1)
	if m == nil {
		t.Fatalf("verifier %q is not in PostgreSQL's format", v1)
	}
	for i, want := range map[int]int{1: 16, 2: 32, 3: 32} {
		b, err := base64.StdEncoding.DecodeString(m[i])
		if err != nil || len(b) != want {
			t.Errorf("part %d decodes to %d bytes (%v), want %d", i, len(b), err, want)
		}
	}
	if v1 == v2 {
		t.Error("two verifiers of the same password share a salt")
	}
	if strings.Contains(v1, "secret") {
		t.Error("the verifier contains the password")
	}
}

// TestScramVerifierAcceptsTheRFC7677Exchange checks the keys against the example
// exchange of RFC 7677 section 3 (user "user", password "pencil"): a server holding
// the verifier accepts the client's proof and produces the server signature the RFC
// shows.
func TestScramVerifierAcceptsTheRFC7677Exchange(t *testing.T) {
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	v, err := scramVerifier("pencil", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`^SCRAM-SHA-256\$4096:W22ZaJ0SNY7soEsUEjb6gQ==\$([^:]+):(.+)$`).FindStringSubmatch(v)
	if m == nil {
		t.Fatalf("verifier %q", v)
	}
	storedKey, _ := base64.StdEncoding.DecodeString(m[1])
	serverKey, _ := base64.StdEncoding.DecodeString(m[2])
	authMessage := "n=user,r=rOprNGfwEbeRWgbNEkqO," +
		"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096," +
		"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	mac := func(key []byte) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(authMessage))
		return h.Sum(nil)
	}
	proof, _ := base64.StdEncoding.DecodeString("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
	clientSignature := mac(storedKey)
	clientKey := make([]byte, len(proof))
	for i := range proof {
		clientKey[i] = proof[i] ^ clientSignature[i]
	}
	if got := sha256.Sum256(clientKey); !hmac.Equal(got[:], storedKey) {
		t.Error("the RFC's client proof does not verify against StoredKey")
	}
	if got := base64.StdEncoding.EncodeToString(mac(serverKey)); got != "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=" {
		t.Errorf("server signature = %s, want the RFC's", got)
	}
}

func TestQuotingEscapesEverySpecialCharacter(t *testing.T) {
	conf := func(s string) string {
		q, err := QuoteConfString(s)
		if err != nil {
			t.Fatalf("QuoteConfString(%q): %v", s, err)
		}
		return q
	}
	tests := []struct{ name, got, want string }{
		{"identifier", QuoteIdentifier("app"), `"app"`},
		{"identifier with a double quote", QuoteIdentifier(`my"db`), `"my""db"`},
		{"identifier with a NUL", QuoteIdentifier("a\x00b"), `"ab"`},
		{"literal", QuoteLiteral("abc"), `'abc'`},
		{"literal with a quote", QuoteLiteral(`it's`), `'it''s'`},
		{"literal with a backslash is an escape string", QuoteLiteral(`a\'b`), `E'a\\''b'`},
		{"conf string", conf(`/run/x`), `'/run/x'`},
		{"conf string with quote and backslash", conf(`a'b\c`), `'a''b\\c'`},
		{"conninfo value", ConninfoValue(`a'b\c`), `'a\'b\\c'`},
		{"pgpass line", PgpassLine("u:1", `p:w\d`), "*:*:*:u\\:1:p\\:w\\\\d\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got %s, want %s", tc.got, tc.want)
			}
		})
	}
	for _, bad := range []string{"a\nb", "a\rb", "a\x00b"} {
		if _, err := QuoteConfString(bad); err == nil {
			t.Errorf("QuoteConfString(%q) accepted a line break or NUL", bad)
		}
	}
}

func fakeBinDir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"postgres", "initdb", "pg_basebackup", "pg_ctl", "pg_controldata"} {
		if err := os.WriteFile(filepath.Join(dir, p), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFindBinariesPrefersBinDirThenPathThenHighestDebianVersion(t *testing.T) {
	root := t.TempDir()
	old := debianRoot
	debianRoot = filepath.Join(root, "usr-lib-postgresql")
	t.Cleanup(func() { debianRoot = old })
	t.Setenv("PATH", "")
	if _, err := FindBinaries(""); err == nil {
		t.Fatal("found binaries in an empty tree")
	}
	for _, v := range []string{"9", "13", "15"} {
		fakeBinDir(t, filepath.Join(debianRoot, v, "bin"))
	}
	if err := os.MkdirAll(filepath.Join(debianRoot, "16", "bin"), 0o755); err != nil { // no postgres in it
		t.Fatal(err)
	}
	explicit := filepath.Join(root, "custom")
	fakeBinDir(t, explicit)
	onPath := filepath.Join(root, "onpath")
	fakeBinDir(t, onPath)

	tests := []struct {
		name, binDir, path, want string
	}{
		{"highest Debian version with a postgres program", "", "", filepath.Join(debianRoot, "15", "bin")},
		{"postgres on PATH", "", onPath, onPath},
		{"--bin-dir wins over PATH", explicit, onPath, explicit},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PATH", tc.path)
			b, err := FindBinaries(tc.binDir)
			if err != nil {
				t.Fatal(err)
			}
			if b.Dir != tc.want || b.Postgres != filepath.Join(tc.want, "postgres") || b.PgBasebackup != filepath.Join(tc.want, "pg_basebackup") {
				t.Errorf("found %+v, want dir %s", b, tc.want)
			}
		})
	}
	if _, err := FindBinaries(filepath.Join(root, "missing")); err == nil {
		t.Error("a --bin-dir without programs was accepted")
	}
}

func TestSummaryKeepsTheErrorAndDropsValues(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"check violation with the failing row",
			"pg_restore: while PROCESSING TOC:\npg_restore: error: could not execute query: ERROR:  new row for relation \"t\" violates check constraint \"c\"\nDETAIL:  Failing row contains (1, canary-secret).\nCommand was: COPY public.t (id, v) FROM stdin;",
			`pg_restore: error: could not execute query: ERROR: new row for relation "…" violates check constraint "…"`},
		{"input syntax with the value",
			`pg_dump: error: query failed: ERROR:  invalid input syntax for type integer: "canary-secret"`,
			`pg_dump: error: query failed: ERROR: invalid input syntax for type integer: "…"`},
		{"single-quoted value and detail on the same line",
			`psql: FATAL:  password authentication failed for user 'canary-secret' DETAIL: x`,
			`psql: FATAL: password authentication failed for user '…'`},
		{"no error line: the last one", "first\nlast line", "last line"},
		{"long line is cut", "error: " + strings.Repeat("x", 300), "error: " + strings.Repeat("x", 193) + "…"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Summary(tc.in)
			if got != tc.want {
				t.Errorf("Summary() = %q, want %q", got, tc.want)
			}
			if strings.Contains(got, "canary-secret") {
				t.Errorf("the summary kept a value: %q", got)
			}
		})
	}
}
