package walarchive

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Segment is a WAL segment's place: its timeline and its number (the
// position of its first byte divided by the segment size).
type Segment struct {
	Timeline uint32
	No       uint64
}

// SegmentName is the file name of s for segments of segSize bytes.
func SegmentName(s Segment, segSize uint64) string {
	perLog := uint64(0x100000000) / segSize
	return fmt.Sprintf("%08X%08X%08X", s.Timeline, s.No/perLog, s.No%perLog)
}

// ParseSegmentName parses a segment's file name (not a partial, history or
// backup file).
func ParseSegmentName(name string, segSize uint64) (Segment, bool) {
	if len(name) != 24 || !ValidName(name) || segSize == 0 {
		return Segment{}, false
	}
	tl, err1 := strconv.ParseUint(name[:8], 16, 32)
	log, err2 := strconv.ParseUint(name[8:16], 16, 32)
	seg, err3 := strconv.ParseUint(name[16:], 16, 32)
	perLog := uint64(0x100000000) / segSize
	if err1 != nil || err2 != nil || err3 != nil || seg >= perLog {
		return Segment{}, false
	}
	return Segment{Timeline: uint32(tl), No: log*perLog + seg}, true
}

// Contents is what the archive holds.
type Contents struct {
	// Segments are the archived segments of each timeline, in order.
	Segments map[uint32][]uint64
	// Histories are the timelines whose history file is archived.
	Histories []uint32
	// Other are the other names (partial segments, backup history files).
	Other []string
}

// Gap is a run of missing segments between two archived ones of a timeline:
// no recovery can replay across it.
type Gap struct {
	Timeline uint32
	// First and Last are the first and last missing segments' names.
	First, Last string
}

func (g Gap) String() string {
	if g.First == g.Last {
		return "segment " + g.First + " is missing"
	}
	return "segments " + g.First + " to " + g.Last + " are missing"
}

// List reads what the archive holds.
func (a *Archive) List(ctx context.Context, segSize uint64) (Contents, error) {
	prefix := a.key("")
	keys, err := a.Store.List(ctx, prefix)
	if err != nil {
		return Contents{}, err
	}
	c := Contents{Segments: map[uint32][]uint64{}}
	for _, k := range keys {
		name := strings.TrimPrefix(k, prefix)
		if s, ok := ParseSegmentName(name, segSize); ok {
			c.Segments[s.Timeline] = append(c.Segments[s.Timeline], s.No)
			continue
		}
		if tl, ok := strings.CutSuffix(name, ".history"); ok && ValidName(name) {
			n, _ := strconv.ParseUint(tl, 16, 32)
			c.Histories = append(c.Histories, uint32(n))
			continue
		}
		c.Other = append(c.Other, name)
	}
	for tl := range c.Segments {
		slices.Sort(c.Segments[tl])
	}
	slices.Sort(c.Histories)
	return c, nil
}

// Gaps are the runs of missing segments inside each timeline's archived
// range, by timeline then position.
func (c Contents) Gaps(segSize uint64) []Gap {
	var out []Gap
	tls := make([]uint32, 0, len(c.Segments))
	for tl := range c.Segments {
		tls = append(tls, tl)
	}
	slices.Sort(tls)
	for _, tl := range tls {
		segs := c.Segments[tl]
		for i := 1; i < len(segs); i++ {
			if segs[i] > segs[i-1]+1 {
				out = append(out, Gap{Timeline: tl,
					First: SegmentName(Segment{tl, segs[i-1] + 1}, segSize),
					Last:  SegmentName(Segment{tl, segs[i] - 1}, segSize)})
			}
		}
	}
	return out
}

// commitPattern matches the commit records pg_waldump prints (with TZ=UTC):
// "desc: COMMIT 2026-12-07 16:50:12.345678 UTC".
var commitPattern = regexp.MustCompile(`desc: COMMIT(?:_PREPARED \d+:)? (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC`)

// LastCommitTime is the commit time of the last commit record in the WAL
// segment at path, read with pg_waldump: the newest point a recovery that
// replays this segment can reach by time. ok is false when the segment holds
// no commit.
func LastCommitTime(ctx context.Context, pgWaldump, path string) (t time.Time, ok bool, err error) {
	// The segment as both start and end: pg_waldump would otherwise go on
	// into the next segments of the directory.
	cmd := exec.CommandContext(ctx, pgWaldump, "--rmgr=Transaction", path, path) // #nosec G204 -- PostgreSQL's program on a WAL file
	cmd.Env = []string{"TZ=UTC", "LC_ALL=C"}
	out, err := cmd.Output()
	// pg_waldump reads to the end of the segment and complains about the
	// first invalid record after the last one (a segment not yet filled, or
	// switched): its output is complete all the same.
	if len(out) == 0 && err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok { //nolint:errorlint // the concrete type carries stderr
			stderr = strings.TrimSpace(string(ee.Stderr))
		}
		if !strings.Contains(stderr, "could not find a valid record") && !strings.Contains(stderr, "invalid record length") &&
			!strings.Contains(stderr, "error in WAL record") {
			return time.Time{}, false, fmt.Errorf("pg_waldump %s: %w: %s", path, err, stderr)
		}
	}
	m := commitPattern.FindAllSubmatch(out, -1)
	if len(m) == 0 {
		return time.Time{}, false, nil
	}
	t, err = time.Parse("2006-01-02 15:04:05.999999", string(m[len(m)-1][1]))
	if err != nil {
		return time.Time{}, false, fmt.Errorf("pg_waldump %s: commit time: %w", path, err)
	}
	return t.UTC(), true, nil
}
