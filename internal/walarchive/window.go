package walarchive

import (
	"context"
	"errors"
	"sort"
	"strings"
	"time"
)

// Survey is what the archive holds that a recovery can use: its verified
// base backups, the gaps in its WAL, and from them the earliest point a
// recovery can reach.
type Survey struct {
	Time time.Time
	// Bases are the verified base backups (a backup.json), oldest first.
	Bases []BaseBackup
	// Gaps are the runs of missing segments.
	Gaps []Gap
	// First is the earliest recoverable point: the end of the oldest base
	// backup with no gap in the WAL after its start (nil: none, there is no
	// window). FirstBase names that backup.
	First     *time.Time
	FirstBase string
	// Usable is how many base backups have no gap after their start;
	// UsableBases are they, oldest first.
	Usable      int
	UsableBases []BaseBackup
	// Newest is the newest archived segment (zero when none).
	Newest Segment
}

// Survey lists the archive: its base backups and WAL segments of segSize.
func (a *Archive) Survey(ctx context.Context, segSize uint64, now time.Time) (Survey, error) {
	c, err := a.List(ctx, segSize)
	if err != nil {
		return Survey{}, err
	}
	prefix := strings.TrimSuffix(a.BaseKey("x", ""), "x/")
	keys, err := a.Store.List(ctx, prefix)
	if err != nil {
		return Survey{}, err
	}
	var bases []BaseBackup
	for _, k := range keys {
		name, ok := strings.CutSuffix(strings.TrimPrefix(k, prefix), "/"+BaseManifest)
		if !ok || strings.Contains(name, "/") {
			continue
		}
		b, err := a.ReadBase(ctx, name)
		if errors.Is(err, ErrNotArchived) || errors.Is(err, ErrCorrupt) {
			continue // deleted meanwhile, or unreadable: never a recovery's start
		}
		if err != nil {
			return Survey{}, err
		}
		if a.Identity != nil && !b.Encrypted {
			continue // an encrypted archive never restores it (ErrNotEncrypted)
		}
		bases = append(bases, b)
	}
	s := DecideWindow(bases, c.Gaps(segSize), segSize)
	s.Time = now
	for tl, segs := range c.Segments {
		if n := segs[len(segs)-1]; len(segs) > 0 && (n > s.Newest.No || n == s.Newest.No && tl > s.Newest.Timeline) {
			s.Newest = Segment{Timeline: tl, No: n}
		}
	}
	return s, nil
}

// DecideWindow derives the window from the base backups and the gaps: a base
// backup is usable when no gap lies at or after its first segment (a
// recovery from it would have to replay across the gap to reach any point
// after it, and the archive's newest point is after it); the window starts at
// the end of the oldest usable one. A window never spans a gap.
func DecideWindow(bases []BaseBackup, gaps []Gap, segSize uint64) Survey {
	bases = append([]BaseBackup(nil), bases...)
	sort.Slice(bases, func(i, j int) bool { return bases[i].EndTime.Before(bases[j].EndTime) })
	s := Survey{Bases: bases, Gaps: gaps}
	for _, b := range bases {
		start, ok := ParseSegmentName(b.StartWAL, segSize)
		if !ok || b.WALSegmentSize != segSize {
			continue
		}
		usable := true
		for _, g := range gaps {
			if last, ok := ParseSegmentName(g.Last, segSize); ok && last.No >= start.No {
				usable = false
				break
			}
		}
		if !usable {
			continue
		}
		s.Usable++
		s.UsableBases = append(s.UsableBases, b)
		if s.First == nil {
			t := b.EndTime
			s.First, s.FirstBase = &t, b.Name
		}
	}
	return s
}
