package instance

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	databasev1 "github.com/example/postgres-operator/api/v1"
)

// UserConfigFile is the file in the config directory (the Database's
// <name>-config ConfigMap) with spec.postgresql as JSON.
const UserConfigFile = "postgresql.json"

// DefaultConfigDir is where instance pods mount the <name>-config ConfigMap.
const DefaultConfigDir = "/etc/postgres-operator/config"

// UserConfig is a Database's spec.postgresql as the agent applies it.
type UserConfig struct {
	Parameters             map[string]string `json:"parameters,omitempty"`
	PgHBA                  []string          `json:"pgHBA,omitempty"`
	SharedPreloadLibraries []string          `json:"sharedPreloadLibraries,omitempty"`
}

// Encode is the canonical JSON of c (map keys sorted) and its hash: what the
// operator writes into the ConfigMap and the agent reports once it runs it.
func (c UserConfig) Encode() ([]byte, string, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, "", err
	}
	return b, ConfigHash(b), nil
}

// ConfigHash is the hash of a config file's bytes.
func ConfigHash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

var (
	parameterName = regexp.MustCompile(`^[a-z][a-z0-9_]*([.][a-z][a-z0-9_]*)?$`)
	hbaLine       = regexp.MustCompile(`^(local|host|hostssl|hostnossl|hostgssenc|hostnogssenc)\s+\S.*$`)
	reservedInHBA = regexp.MustCompile(`(^|[\s,])(postgres|` + ReplicationUser + `|` + MonitorUser + `)([\s,]|$)`)
	libraryName   = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)
)

// Validate refuses what the CRD refuses (the agent never trusts a file more
// than the API server's validation): settings the operator manages, names that
// are not settings, values and lines with line breaks, pg_hba lines naming the
// reserved roles, library names with paths.
func (c UserConfig) Validate() error {
	var errs []error
	for k, v := range c.Parameters {
		switch {
		case !parameterName.MatchString(k):
			errs = append(errs, fmt.Errorf("parameter %q is not a setting name", k))
		case slices.Contains(databasev1.ManagedParameters, k):
			errs = append(errs, fmt.Errorf("parameter %s is managed by the operator", k))
		case strings.ContainsAny(v, "\n\r\x00"):
			errs = append(errs, fmt.Errorf("the value of %s has a line break", k))
		}
	}
	for _, l := range c.PgHBA {
		switch {
		case strings.ContainsAny(l, "\n\r\x00") || !hbaLine.MatchString(l):
			errs = append(errs, fmt.Errorf("pg_hba line %q is not one local/host… line", l))
		case reservedInHBA.MatchString(l):
			errs = append(errs, fmt.Errorf("pg_hba line %q names a role the operator reserves", l))
		}
	}
	for _, lib := range c.SharedPreloadLibraries {
		if !libraryName.MatchString(lib) {
			errs = append(errs, fmt.Errorf("library %q is not a library name", lib))
		}
	}
	return errors.Join(errs...)
}

// readUserConfig reads and validates the config file; no directory or no file
// is the empty configuration. It returns the hash of the file's bytes.
func (a *Agent) readUserConfig() (UserConfig, string, error) {
	var c UserConfig
	if a.cfg.ConfigDir == "" {
		_, h, err := c.Encode()
		return c, h, err
	}
	b, err := os.ReadFile(filepath.Join(a.cfg.ConfigDir, UserConfigFile))
	if errors.Is(err, os.ErrNotExist) {
		_, h, err := c.Encode()
		return c, h, err
	}
	if err != nil {
		return c, "", fmt.Errorf("reading %s: %w", UserConfigFile, err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, "", fmt.Errorf("parsing %s: %w", UserConfigFile, err)
	}
	if err := c.Validate(); err != nil {
		return c, "", fmt.Errorf("%s: %w", UserConfigFile, err)
	}
	return c, ConfigHash(b), nil
}

// userConfLines are the user's settings as postgresql.conf lines, sorted,
// quoted; the operator's own lines come after them (and so win).
func userConfLines(c UserConfig, q func(string) string) []string {
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
