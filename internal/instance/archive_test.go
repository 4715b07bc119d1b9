package instance

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/example/postgres-operator/internal/walarchive"
)

// archive_mode is always on; archive_command keeps nothing only when no
// archive is configured at all, is wal-push with the mounted configuration
// otherwise, and stays wal-push (failing, and saying why) when that
// configuration cannot be read: never '/bin/true', which would let
// PostgreSQL recycle WAL the archive does not have.
func TestArchiveCommandFollowsTheMountedConfiguration(t *testing.T) {
	q := func(s string) string { return "'" + s + "'" }
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		setup   func()
		archDir string
		want    []string
		notWant string
	}{
		{"no archive directory", func() {}, "", []string{"archive_mode = on", "archive_command = '/bin/true'", "archive_timeout = 0"}, "wal-push"},
		{"an empty Secret (archive off)", func() {}, dir, []string{"archive_mode = on", "archive_command = '/bin/true'"}, "wal-push"},
		{"a configuration", func() {
			_ = os.WriteFile(filepath.Join(dir, walarchive.ConfigFile), []byte(`{"location":"s3://wal-bucket/p","endpoint":"http://s3:9000","archiveTimeoutSeconds":30}`), 0o600)
		}, dir, []string{"archive_mode = on", "archive_command = '/controller/manager wal-push --config-dir=" + dir + " --status-file=/run/x/wal-push.json --s3-ca-bundle=/controller/ca-certificates.crt %p %f'",
			"archive_timeout = 30"}, "/bin/true"},
		{"a configuration that cannot be read", func() {
			_ = os.WriteFile(filepath.Join(dir, walarchive.ConfigFile), []byte(`{not json`), 0o600)
		}, dir, []string{"archive_mode = on", "wal-push --config-dir=" + dir}, "/bin/true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			a := &Agent{cfg: Config{WALArchiveDir: tc.archDir, AgentBinary: "/controller/manager", RunDir: "/run/x"}}
			got := strings.Join(a.archiveConfLines(q), "\n")
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("missing %q in:\n%s", w, got)
				}
			}
			if strings.Contains(got, tc.notWant) {
				t.Errorf("%q in:\n%s", tc.notWant, got)
			}
		})
	}
}
