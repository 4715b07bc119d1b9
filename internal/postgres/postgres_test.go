package postgres

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

func TestScramVerifierFormatAndSalt(t *testing.T) {
	v1, err := ScramVerifier("secret")
	if err != nil {
		t.Fatal(err)
	}
	v2, _ := ScramVerifier("secret")
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
}

func TestScramVerifierIsDeterministicForASalt(t *testing.T) {
	salt := []byte("0123456789abcdef")
	a, _ := scramVerifier("pencil", salt, 4096)
	b, _ := scramVerifier("pencil", salt, 4096)
	c, _ := scramVerifier("pencil2", salt, 4096)
	if a != b || a == c {
		t.Errorf("verifiers: %s %s %s", a, b, c)
	}
}

func TestQuoting(t *testing.T) {
	tests := []struct{ got, want string }{
		{QuoteIdentifier(`my"db`), `"my""db"`},
		{QuoteLiteral(`it's`), `'it''s'`},
		{ConninfoValue(`a'b\c`), `'a\'b\\c'`},
		{PgpassLine("u:1", `p:w\d`), "*:*:*:u\\:1:p\\:w\\\\d\n"},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
	}
}

func TestFindBinaries(t *testing.T) {
	dir := t.TempDir()
	old := debianRoot
	debianRoot = dir
	t.Cleanup(func() { debianRoot = old })
	t.Setenv("PATH", "")
	if _, err := FindBinaries(""); err == nil {
		t.Fatal("found binaries in an empty tree")
	}
	for _, v := range []string{"13", "15"} {
		bin := filepath.Join(dir, v, "bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"postgres", "initdb", "pg_basebackup"} {
			if err := os.WriteFile(filepath.Join(bin, p), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	b, err := FindBinaries("")
	if err != nil {
		t.Fatal(err)
	}
	if b.Dir != filepath.Join(dir, "15", "bin") {
		t.Errorf("picked %s, want the highest version", b.Dir)
	}
	t.Setenv("PATH", filepath.Join(dir, "13", "bin"))
	if b, _ := FindBinaries(""); b.Dir != filepath.Join(dir, "13", "bin") {
		t.Errorf("PATH lookup picked %s", b.Dir)
	}
}
