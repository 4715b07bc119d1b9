// Package agekey reads the age keys that encrypt backups and the WAL archive.
package agekey

import (
	"errors"
	"fmt"
	"strings"

	"filippo.io/age"
)

// Parse reads an age X25519 identity (age-keygen's output: comment lines and
// one AGE-SECRET-KEY-1… line).
func Parse(text string) (*age.X25519Identity, error) {
	ids, err := age.ParseIdentities(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("reading the age identity: %w", err)
	}
	for _, id := range ids {
		if x, ok := id.(*age.X25519Identity); ok {
			return x, nil
		}
	}
	return nil, errors.New("no age X25519 identity (AGE-SECRET-KEY-1…) found")
}
