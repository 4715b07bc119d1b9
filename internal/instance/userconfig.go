package instance

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/example/postgres-operator/internal/agentapi"
)

// readUserConfig reads and validates the config file; no directory or no file
// is the empty configuration. It returns the hash of the file's bytes.
func (a *Agent) readUserConfig() (agentapi.UserConfig, string, error) {
	var c agentapi.UserConfig
	if a.cfg.ConfigDir == "" {
		_, h, err := c.Encode()
		return c, h, err
	}
	b, err := os.ReadFile(filepath.Join(a.cfg.ConfigDir, agentapi.UserConfigFile))
	if errors.Is(err, os.ErrNotExist) {
		_, h, err := c.Encode()
		return c, h, err
	}
	if err != nil {
		return c, "", fmt.Errorf("reading %s: %w", agentapi.UserConfigFile, err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, "", fmt.Errorf("parsing %s: %w", agentapi.UserConfigFile, err)
	}
	if err := c.Validate(); err != nil {
		return c, "", fmt.Errorf("%s: %w", agentapi.UserConfigFile, err)
	}
	return c, agentapi.ConfigHash(b), nil
}

// userConfLines are the user's settings as postgresql.conf lines, sorted,
// quoted; the operator's own lines come after them (and so win).
func userConfLines(c agentapi.UserConfig, q func(string) string) []string {
	keys := make([]string, 0, len(c.Parameters))
	for k := range c.Parameters {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	lines := []string{"# spec.postgresql of the Database"}
	for _, k := range keys {
		lines = append(lines, k+" = "+q(c.Parameters[k]))
	}
	if len(c.SharedPreloadLibraries) > 0 {
		lines = append(lines, "shared_preload_libraries = "+q(strings.Join(c.SharedPreloadLibraries, ",")))
	}
	return append(lines, "# managed by the operator")
}
