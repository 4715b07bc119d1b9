package agentapi

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	databasev1 "github.com/example/postgres-operator/api/v1"
)

// MonitorUser is the role the agent reads PostgreSQL's state with: a member of
// pg_monitor that may log in only over the private socket, as the postgres OS
// user (peer authentication), with a small connection limit. The superuser is
// used only for what needs it (roles, promotion, slots, restores).
const MonitorUser = "postgres_operator_monitor"

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
