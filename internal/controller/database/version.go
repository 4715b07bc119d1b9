package database

import (
	"regexp"
	"strconv"
	"strings"
)

var tagMajor = regexp.MustCompile(`^(\d+)(?:[.\-_]|$)`)

// imageMajor returns the PostgreSQL major version an image tag names ("postgres:15",
// "postgres:15.18", "registry/x/postgres:17-bookworm@sha256:..." give 15, 15 and 17),
// or 0 when the tag does not say (no tag, "latest", a digest only).
func imageMajor(image string) int {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	slash := strings.LastIndex(image, "/")
	colon := strings.LastIndex(image, ":")
	if colon <= slash {
		return 0
	}
	m := tagMajor.FindStringSubmatch(image[colon+1:])
	if m == nil {
		return 0
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		return 0
	}
	return n
}

// versionMajor returns the major of a server_version such as "15.18" or "17.6
// (Debian 17.6-1)".
func versionMajor(v string) int {
	m := tagMajor.FindStringSubmatch(v)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
