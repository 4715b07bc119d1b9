package walarchive

import (
	"testing"
	"time"
)

// The window starts at the end of the oldest base backup that no gap
// follows; a gap before a base backup does not matter, one after it makes it
// useless; with none usable there is no window.
func TestDecideWindow(t *testing.T) {
	const seg = 16 << 20
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	base := func(name, startWAL string, end time.Duration) BaseBackup {
		return BaseBackup{Name: name, StartWAL: startWAL, EndTime: t0.Add(end), WALSegmentSize: seg}
	}
	gap := func(first, last string) Gap { return Gap{Timeline: 1, First: first, Last: last} }
	for _, tc := range []struct {
		name      string
		bases     []BaseBackup
		gaps      []Gap
		firstBase string
		usable    int
	}{
		{"no base backup", nil, nil, "", 0},
		{"one, no gap", []BaseBackup{base("a", "000000010000000000000005", time.Minute)}, nil, "a", 1},
		{"the oldest of two", []BaseBackup{base("b", "000000010000000000000009", 2*time.Minute), base("a", "000000010000000000000005", time.Minute)}, nil, "a", 2},
		{"a gap before it does not matter", []BaseBackup{base("a", "000000010000000000000005", time.Minute)},
			[]Gap{gap("000000010000000000000002", "000000010000000000000003")}, "a", 1},
		{"a gap after it makes it useless", []BaseBackup{base("a", "000000010000000000000005", time.Minute)},
			[]Gap{gap("000000010000000000000007", "000000010000000000000007")}, "", 0},
		{"a gap in its own first segment", []BaseBackup{base("a", "000000010000000000000005", time.Minute)},
			[]Gap{gap("000000010000000000000005", "000000010000000000000005")}, "", 0},
		{"a gap between two: the newer one starts the window", []BaseBackup{base("a", "000000010000000000000005", time.Minute), base("b", "000000010000000000000009", 2*time.Minute)},
			[]Gap{gap("000000010000000000000007", "000000010000000000000008")}, "b", 1},
		{"a later timeline's gap counts by position", []BaseBackup{base("a", "000000010000000000000005", time.Minute)},
			[]Gap{{Timeline: 2, First: "00000002000000000000000A", Last: "00000002000000000000000A"}}, "", 0},
		{"another segment size is not trusted", []BaseBackup{{Name: "a", StartWAL: "000000010000000000000005", EndTime: t0, WALSegmentSize: 1 << 20}}, nil, "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := DecideWindow(tc.bases, tc.gaps, seg)
			if s.FirstBase != tc.firstBase || s.Usable != tc.usable || (s.First == nil) != (tc.firstBase == "") {
				t.Fatalf("got first %v (%q), usable %d; want %q, %d", s.First, s.FirstBase, s.Usable, tc.firstBase, tc.usable)
			}
			for _, b := range tc.bases {
				if b.Name == tc.firstBase && !s.First.Equal(b.EndTime) {
					t.Errorf("first %v, want the end of %s, %v", s.First, b.Name, b.EndTime)
				}
			}
		})
	}
}
