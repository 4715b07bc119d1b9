package upgrade

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The tests run the upgrade exactly as the Jobs do, with the local images'
// PostgreSQL 15 (Debian bookworm) and 17 (Debian trixie): hack/pg-rootfs.sh
// unpacks them, and every command runs chrooted into one of them as uid 999,
// in a private mount namespace where the test's volume is bind-mounted at
// /var/lib/postgresql/data and the shared old-installation directory at /old
// (the Job's volumes). POSTGRES_ROOTFS names the unpacked images (make test sets
// it); the tests need root.

const (
	oldImage = "postgres-15-bookworm"
	newImage = "postgres-17-trixie"
	volume   = "/var/lib/postgresql/data"
	pgdata   = volume + "/pgdata"
	sockDir  = volume + "/socket"
)

var (
	buildOnce  sync.Once
	managerBin string
	buildErr   error
)

type harness struct {
	t      *testing.T
	rootfs string
	vol    string
	old    string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	root := os.Getenv("POSTGRES_ROOTFS")
	if root == "" {
		t.Skip("POSTGRES_ROOTFS is not set (make test sets it with hack/pg-rootfs.sh)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (chroot, mount namespaces)")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "upgrade-manager-")
		if err != nil {
			buildErr = err
			return
		}
		managerBin = filepath.Join(dir, "manager")
		cmd := exec.Command("go", "build", "-o", managerBin, "../../cmd")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	base := t.TempDir()
	h := &harness{t: t, rootfs: root, vol: filepath.Join(base, "vol"), old: filepath.Join(base, "old")}
	for _, d := range []string{h.vol, h.old} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, 999, 999); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, img := range []string{oldImage, newImage} {
		for _, d := range []string{"old", "controller"} {
			if err := os.MkdirAll(filepath.Join(root, img, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(root, img, "controller", "manager"), nil, 0o755); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
	}
	return h
}

// commandNS returns args run in image as uid 999 with the Job's mounts, in a
// PID namespace of its own when pod is set: the
// upgrade Jobs run in pods of their own, where the instances' processes (and
// the PID in their postmaster.pid) are invisible.
func (h *harness) commandNS(image string, pod bool, args ...string) *exec.Cmd {
	r := filepath.Join(h.rootfs, image)
	major := "15"
	if image == newImage {
		major = "17"
	}
	script := strings.Join([]string{
		"set -e",
		"mount --bind " + h.vol + " " + r + volume,
		"mount --bind " + h.old + " " + r + "/old",
		"mount --bind " + managerBin + " " + r + "/controller/manager",
		"mount --rbind /dev " + r + "/dev",
		"mount -t proc proc " + r + "/proc",
		`exec chroot --userspec=999:999 "$0" /usr/bin/env -i HOME=/var/lib/postgresql LANG=C.UTF-8 ` +
			"PATH=/usr/lib/postgresql/" + major + "/bin:/usr/bin:/bin " + `"$@"`,
	}, "\n")
	ns := []string{"--mount", "--propagation", "private"}
	if pod {
		ns = append(ns, "--pid", "--fork", "--ipc")
	}
	return exec.Command("unshare", append(append(ns, "sh", "-c", script, r), args...)...) // #nosec G204 -- test
}

func (h *harness) run(image string, args ...string) (string, error) {
	return h.runNS(image, false, args...)
}

func (h *harness) runNS(image string, pod bool, args ...string) (string, error) {
	cmd := h.commandNS(image, pod, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("%v: %w\nstdout: %s\nstderr: %s", args, err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

func (h *harness) must(image string, args ...string) string {
	h.t.Helper()
	out, err := h.run(image, args...)
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

// initOld creates a PostgreSQL 15 cluster like the agent does and starts it.
func (h *harness) initOld(checksums bool) {
	h.t.Helper()
	args := []string{"initdb", "-D", pgdata, "--username=postgres", "--auth-local=peer", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-instructions"}
	if checksums {
		args = append(args, "--data-checksums")
	}
	h.must(oldImage, args...)
	h.start(oldImage)
}

func (h *harness) start(image string) {
	h.t.Helper()
	if err := os.MkdirAll(filepath.Join(h.vol, "socket"), 0o700); err != nil {
		h.t.Fatal(err)
	}
	_ = os.Chown(filepath.Join(h.vol, "socket"), 999, 999)
	h.must(image, "pg_ctl", "start", "-D", pgdata, "-w", "-l", volume+"/server.log",
		"-o", "-c listen_addresses='' -c unix_socket_directories='"+sockDir+"'")
	h.t.Cleanup(func() { _, _ = h.run(image, "pg_ctl", "stop", "-D", pgdata, "-m", "immediate") })
}

func (h *harness) stop(image string) {
	h.t.Helper()
	h.must(image, "pg_ctl", "stop", "-D", pgdata, "-m", "fast", "-w")
}

// sql runs statements with psql against the running server of image.
func (h *harness) sql(image, db, statements string) string {
	h.t.Helper()
	return strings.TrimSpace(h.must(image, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", sockDir, "-U", "postgres", "-d", db, "-c", statements))
}

// upgrade runs `manager upgrade <sub>` in the new image (collecting the old
// installation first, as the Job's init container does) and returns its result.
func (h *harness) upgrade(sub string, flags ...string) (Result, error) {
	h.t.Helper()
	h.collect()
	out, err := h.runNS(newImage, true, append([]string{"/controller/manager", "upgrade", sub, "--result-file="}, flags...)...)
	var res Result
	line := strings.TrimSpace(out)
	if i := strings.LastIndex(line, "\n"); i >= 0 {
		line = line[i+1:]
	}
	if jerr := json.Unmarshal([]byte(line), &res); jerr != nil && err == nil {
		h.t.Fatalf("upgrade %s printed %q: %v", sub, out, jerr)
	}
	return res, err
}

func (h *harness) collect() {
	h.t.Helper()
	if _, err := os.Stat(filepath.Join(h.old, manifestFile)); err == nil {
		return
	}
	h.must(oldImage, "/controller/manager", "upgrade", "collect", "--dest=/old")
}
