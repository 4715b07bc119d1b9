package manager

import (
	"os"
	"path/filepath"
	"testing"
)

func TestTheCgroupMemoryLimitIsReadFromV2ThenV1(t *testing.T) {
	for _, tc := range []struct {
		name       string
		v2, v1     string // file contents; "" is no file
		want       int64
		wantErrors bool
	}{
		{name: "v2 limit", v2: "268435456\n", want: 268435456},
		{name: "v2 no limit", v2: "max\n", want: 0},
		{name: "v1 limit", v1: "134217728\n", want: 134217728},
		{name: "v1 no limit", v1: "9223372036854771712\n", want: 0},
		{name: "v2 wins over v1", v2: "1048576", v1: "2097152", want: 1048576},
		{name: "no cgroup files", want: 0},
		{name: "garbage", v2: "lots", wantErrors: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if tc.v2 != "" {
				if err := os.WriteFile(filepath.Join(root, "memory.max"), []byte(tc.v2), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if tc.v1 != "" {
				if err := os.MkdirAll(filepath.Join(root, "memory"), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(root, "memory", "memory.limit_in_bytes"), []byte(tc.v1), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := cgroupMemoryLimit(root)
			if (err != nil) != tc.wantErrors {
				t.Fatalf("error %v, want an error: %t", err, tc.wantErrors)
			}
			if got != tc.want {
				t.Errorf("limit %d, want %d", got, tc.want)
			}
		})
	}
}

func TestTheSoftMemoryLimitIsAFractionOfTheCgroupLimitUnlessGOMEMLIMITIsSet(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cgroup int64
		ratio  float64
		env    string
		want   int64
	}{
		{name: "90% of 256 MiB", cgroup: 256 << 20, ratio: 0.9, want: 241591910},
		{name: "no cgroup limit", cgroup: 0, ratio: 0.9, want: 0},
		{name: "ratio 0 disables", cgroup: 256 << 20, ratio: 0, want: 0},
		{name: "GOMEMLIMIT wins", cgroup: 256 << 20, ratio: 0.9, env: "100MiB", want: 0},
		{name: "ratio above 1 is the limit", cgroup: 256 << 20, ratio: 1.5, want: 256 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := softMemoryLimit(tc.cgroup, tc.ratio, tc.env); got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
		})
	}
}
