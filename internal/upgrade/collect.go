// Package upgrade upgrades a PostgreSQL data directory to a higher major version
// in place, with the binaries of two images: the old image's PostgreSQL is copied
// (with the shared libraries it needs) into a shared volume by Collect, which runs
// in the old image; Check, Run and Rollback run in the new image with that copy.
//
// The official images hold one major each and move between Debian releases, so
// the old binaries may need libraries the new image has in other versions (ICU,
// LDAP, GnuTLS) or not at all: Collect copies the old binaries' whole library
// closure except the C library itself (newer glibc runs older binaries), and
// Prepare drops every copied library whose soname the new image has.
package upgrade

import (
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/example/postgres-operator/internal/postgres"
)

// Installation describes a PostgreSQL installation copied by Collect (the file
// old.json in the destination) or found in the running image.
type Installation struct {
	// Major and Version of the server binary ("15", "15.18").
	Major   int    `json:"major"`
	Version string `json:"version"`
	// Bindir, Pkglibdir and Sharedir are the absolute paths in the image they were
	// copied from; under the destination they keep the same relative layout, so
	// the relocatable binaries find their share and lib directories.
	Bindir    string `json:"bindir"`
	Pkglibdir string `json:"pkglibdir"`
	Sharedir  string `json:"sharedir"`
	// Libs are the shared libraries copied into lib/ (sonames).
	Libs []string `json:"libs,omitempty"`
	// Glibc is the C library's version ("2.36"): collations of the libc provider
	// follow it. ICU is the ICU major linked by the server ("72"), "" without ICU.
	Glibc string `json:"glibc,omitempty"`
	ICU   string `json:"icu,omitempty"`
}

const manifestFile = "old.json"

// coreLibs are the C library's own objects: never copied (the new image's glibc is
// newer and runs the old binaries; mixing two is impossible).
var coreLibs = regexp.MustCompile(`^(ld-linux.*|ld64.*|libc|libm|libpthread|libdl|librt|libresolv|libutil|libanl|libmvec|libBrokenLocale|libnss_[a-z]+|libthread_db)\.so(\.\d+)*$`)

// skipFiles are server modules not copied: the JIT provider (its LLVM is ~100 MiB
// and the upgrade runs with jit=off) and its bitcode.
var skipFiles = regexp.MustCompile(`^(llvmjit.*\.so|bitcode)$`)

// Locate finds the PostgreSQL installation on PATH (pg_config of the image).
func Locate() (Installation, error) {
	pgConfig, err := exec.LookPath("pg_config")
	if err != nil {
		return Installation{}, fmt.Errorf("pg_config is not on PATH: %w", err)
	}
	out, err := exec.Command(pgConfig, "--bindir", "--pkglibdir", "--sharedir").Output() // #nosec G204 -- pg_config of the image
	if err != nil {
		return Installation{}, fmt.Errorf("pg_config: %w", err)
	}
	lines := strings.Fields(string(out))
	if len(lines) != 3 {
		return Installation{}, fmt.Errorf("pg_config printed %q", out)
	}
	inst := Installation{Bindir: lines[0], Pkglibdir: lines[1], Sharedir: lines[2]}
	v, err := exec.Command(filepath.Join(inst.Bindir, "postgres"), "-V").Output() // #nosec G204 -- the image's server
	if err != nil {
		return Installation{}, fmt.Errorf("postgres -V: %w", err)
	}
	if inst.Major, inst.Version, err = postgres.ParseServerVersion(string(v)); err != nil {
		return Installation{}, err
	}
	inst.Glibc = glibcVersion()
	return inst, nil
}

// libDirs are the directories the dynamic linker searches in this image.
func libDirs() []string {
	dirs := []string{}
	confs, _ := filepath.Glob("/etc/ld.so.conf.d/*.conf")
	sort.Strings(confs)
	for _, c := range confs {
		b, err := os.ReadFile(c) // #nosec G304 -- the image's linker configuration
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			l = strings.TrimSpace(l)
			if strings.HasPrefix(l, "/") {
				dirs = append(dirs, l)
			}
		}
	}
	return append(dirs, "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
		"/lib64", "/usr/lib64", "/lib", "/usr/lib")
}

func findLib(dirs []string, soname string) string {
	for _, d := range dirs {
		p := filepath.Join(d, soname)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p
		}
	}
	return ""
}

var glibcRelease = regexp.MustCompile(`release version (\d+\.\d+)`)

// glibcVersion reads the C library's version from its banner string.
func glibcVersion() string {
	p := findLib(libDirs(), "libc.so.6")
	if p == "" {
		return ""
	}
	b, err := os.ReadFile(p) // #nosec G304 -- the image's libc
	if err != nil {
		return ""
	}
	if m := glibcRelease.FindSubmatch(b); m != nil {
		return string(m[1])
	}
	return ""
}

var icuSoname = regexp.MustCompile(`^libicuuc\.so\.(\d+)$`)

// closure returns the sonames (and their paths) that the ELF files need,
// transitively, except the C library's.
func closure(files []string, dirs []string) (map[string]string, error) {
	found := map[string]string{}
	queue := append([]string(nil), files...)
	seen := map[string]bool{}
	for len(queue) > 0 {
		f := queue[0]
		queue = queue[1:]
		if seen[f] {
			continue
		}
		seen[f] = true
		ef, err := elf.Open(f)
		if err != nil {
			continue // a script or data file
		}
		needed, err := ef.ImportedLibraries()
		ef.Close()
		if err != nil {
			continue
		}
		for _, so := range needed {
			if coreLibs.MatchString(so) {
				continue
			}
			if _, ok := found[so]; ok {
				continue
			}
			p := findLib(dirs, so)
			if p == "" {
				return nil, fmt.Errorf("%s needs %s, which is not in this image", f, so)
			}
			found[so] = p
			queue = append(queue, p)
		}
	}
	return found, nil
}

// Collect copies the PostgreSQL installation of this (old) image into dest: its
// bin, lib and share directories under their absolute paths, the shared libraries
// they need into dest/lib, and a manifest. It runs in the old image.
func Collect(dest string) (Installation, error) {
	inst, err := Locate()
	if err != nil {
		return inst, err
	}
	var elfs []string
	for _, d := range []string{inst.Bindir, inst.Pkglibdir, inst.Sharedir} {
		if err := copyTree(d, filepath.Join(dest, d), &elfs); err != nil {
			return inst, fmt.Errorf("copying %s: %w", d, err)
		}
	}
	libs, err := closure(elfs, libDirs())
	if err != nil {
		return inst, err
	}
	if err := os.MkdirAll(filepath.Join(dest, "lib"), 0o755); err != nil { // #nosec G301 -- binaries, readable
		return inst, err
	}
	for so, p := range libs {
		if err := copyFile(p, filepath.Join(dest, "lib", so), 0o755); err != nil {
			return inst, err
		}
		inst.Libs = append(inst.Libs, so)
		if m := icuSoname.FindStringSubmatch(so); m != nil {
			inst.ICU = m[1]
		}
	}
	sort.Strings(inst.Libs)
	b, _ := json.MarshalIndent(inst, "", "  ")
	if err := os.WriteFile(filepath.Join(dest, manifestFile), b, 0o644); err != nil { // #nosec G306 -- no secret
		return inst, err
	}
	return inst, nil
}

// copyTree copies a directory, following symbolic links to files (Debian links
// some shared data to /usr/share), and collects the ELF candidates.
func copyTree(src, dst string, elfs *[]string) error {
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if skipFiles.MatchString(d.Name()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		st, err := os.Stat(p)
		if err != nil {
			return nil // a dangling link
		}
		if st.IsDir() {
			if d.Type()&os.ModeSymlink != 0 {
				return copyTree(p, target, elfs)
			}
			return os.MkdirAll(target, 0o755) // #nosec G301 -- binaries, readable
		}
		if strings.HasSuffix(p, ".so") || st.Mode()&0o111 != 0 {
			*elfs = append(*elfs, p)
		}
		return copyFile(p, target, st.Mode().Perm())
	})
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src) // #nosec G304 -- files of the image
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil { // #nosec G301 -- binaries, readable
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode) // #nosec G304 -- under the destination
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// loadManifest reads what Collect copied into dir.
func loadManifest(dir string) (Installation, error) {
	var inst Installation
	b, err := os.ReadFile(filepath.Join(dir, manifestFile)) // #nosec G304 -- the shared volume
	if err != nil {
		return inst, fmt.Errorf("the old installation was not collected: %w", err)
	}
	if err := json.Unmarshal(b, &inst); err != nil {
		return inst, fmt.Errorf("reading %s: %w", manifestFile, err)
	}
	return inst, nil
}

// Prepare makes the collected old installation runnable in this (new) image: a
// copied library whose soname this image has is removed, so only what the image
// lacks (or has under another soname) is on the old binaries' library path. It
// returns the old installation with its directories under dir, and the new
// one.
func Prepare(dir string) (old Installation, newInst Installation, err error) {
	if old, err = loadManifest(dir); err != nil {
		return old, newInst, err
	}
	if newInst, err = Locate(); err != nil {
		return old, newInst, err
	}
	dirs := libDirs()
	var kept []string
	for _, so := range old.Libs {
		if findLib(dirs, so) != "" {
			if err := os.Remove(filepath.Join(dir, "lib", so)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return old, newInst, err
			}
			continue
		}
		kept = append(kept, so)
	}
	old.Libs = kept
	for _, so := range findICU(dirs) {
		newInst.ICU = so
	}
	old.Bindir = filepath.Join(dir, old.Bindir)
	old.Pkglibdir = filepath.Join(dir, old.Pkglibdir)
	old.Sharedir = filepath.Join(dir, old.Sharedir)
	return old, newInst, nil
}

// findICU returns the ICU majors of this image's libicuuc.
func findICU(dirs []string) []string {
	var out []string
	for _, d := range dirs {
		m, _ := filepath.Glob(filepath.Join(d, "libicuuc.so.*"))
		for _, p := range m {
			if s := icuSoname.FindStringSubmatch(filepath.Base(p)); s != nil {
				out = append(out, s[1])
			}
		}
	}
	sort.Strings(out)
	return out
}
