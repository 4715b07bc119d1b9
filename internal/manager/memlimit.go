package manager

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The Go runtime does not know the container's memory limit: with its default
// GOGC it lets the heap grow to twice the live heap before collecting, and an
// operator whose cache holds 1,000 Databases (about 90 MB live; make
// bench-scale) grows past a 256 MiB limit and is OOM-killed. The manager sets
// the runtime's soft memory limit to a fraction of the cgroup's limit instead,
// so that the collector runs harder as the limit nears. GOMEMLIMIT, when set,
// wins.

// cgroupMemoryLimit returns the memory limit of the cgroup the process runs
// in (cgroup v2, then v1), read below root (the host's /sys/fs/cgroup); 0 when
// there is none.
func cgroupMemoryLimit(root string) (int64, error) {
	v2 := filepath.Join(root, "memory.max")
	b, err := os.ReadFile(v2) // #nosec G304 -- a fixed path below /sys/fs/cgroup
	if errors.Is(err, fs.ErrNotExist) {
		b, err = os.ReadFile(filepath.Join(root, "memory", "memory.limit_in_bytes")) // #nosec G304 -- as above
	}
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading the cgroup's memory limit: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing the cgroup's memory limit %q: %w", s, err)
	}
	// cgroup v1 reports "no limit" as the largest page-aligned int64.
	if n <= 0 || n >= 1<<62 {
		return 0, nil
	}
	return n, nil
}

// softMemoryLimit is the runtime limit for a cgroup limit: ratio of it, or 0
// (leave the runtime's default) when there is no limit, the ratio is 0 or
// GOMEMLIMIT is set.
func softMemoryLimit(cgroup int64, ratio float64, env string) int64 {
	if cgroup <= 0 || ratio <= 0 || env != "" {
		return 0
	}
	if ratio > 1 {
		ratio = 1
	}
	return int64(float64(cgroup) * ratio)
}
