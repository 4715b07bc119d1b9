package agentapi

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a WAL position (pg_lsn).
type LSN uint64

// ParseLSN parses "16/B374D848".
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	return LSN(h<<32 | l), nil
}

func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xffffffff) }

// LaterLSN returns the later of two LSNs ("" counts as earliest).
func LaterLSN(a, b string) string {
	la, errA := ParseLSN(a)
	lb, errB := ParseLSN(b)
	switch {
	case errA != nil:
		return b
	case errB != nil:
		return a
	case lb > la:
		return b
	}
	return a
}

// LSNDiff returns a minus b in bytes (0 when either is not a valid LSN).
func LSNDiff(a, b string) int64 {
	la, errA := ParseLSN(a)
	lb, errB := ParseLSN(b)
	if errA != nil || errB != nil {
		return 0
	}
	return int64(la) - int64(lb)
}
