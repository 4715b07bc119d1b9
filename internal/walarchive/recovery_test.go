package walarchive

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// The base backup a recovery starts from, and the targets refused before
// anything is restored.
func TestChooseBase(t *testing.T) {
	const seg = 16 << 20
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { v := t0.Add(d); return &v }
	a := BaseBackup{Name: "a", StartWAL: "000000010000000000000002", EndLSN: "0/3000100", EndTime: t0.Add(time.Hour), WALSegmentSize: seg}
	b := BaseBackup{Name: "b", StartWAL: "000000010000000000000008", EndLSN: "0/9000100", EndTime: t0.Add(2 * time.Hour), WALSegmentSize: seg}
	window := DecideWindow([]BaseBackup{b, a}, nil, seg)
	last := at(3 * time.Hour)
	for _, tc := range []struct {
		name   string
		s      Survey
		r      RecoveryRequest
		want   string
		refuse string
	}{
		{"a time after both: the newest", window, RecoveryRequest{Time: at(150 * time.Minute)}, "b", ""},
		{"a time between them: the older", window, RecoveryRequest{Time: at(90 * time.Minute)}, "a", ""},
		{"a time at the end of a base backup: that one", window, RecoveryRequest{Time: at(time.Hour)}, "a", ""},
		{"a time before the first: refused, naming the window", window, RecoveryRequest{Time: at(30 * time.Minute)}, "", "before the end of the first usable base backup (the window is from 2026-12-07T13:00:00Z to 2026-12-07T15:00:00Z)"},
		{"a time after the last commit: refused", window, RecoveryRequest{Time: at(4 * time.Hour)}, "", "after the last archived commit"},
		{"an LSN between them: the older", window, RecoveryRequest{LSN: "0/5000000"}, "a", ""},
		{"an LSN before the first end: refused", window, RecoveryRequest{LSN: "0/3000000"}, "", "before the end of the first usable base backup"},
		{"an LSN past the archived WAL: refused", window, RecoveryRequest{LSN: "0/F000000"}, "", "past the end of the archived WAL"},
		{"a restore point: the oldest (it may be anywhere after it)", window, RecoveryRequest{RestorePoint: "before-migration"}, "a", ""},
		{"a transaction: the oldest", window, RecoveryRequest{XID: "900"}, "a", ""},
		{"the end of the archive: the newest", window, RecoveryRequest{Latest: true}, "b", ""},
		{"no base backup: refused", Survey{}, RecoveryRequest{Latest: true, SystemID: "7"}, "", "no base backup of cluster 7"},
		{"every base backup before a gap: refused naming it", DecideWindow([]BaseBackup{a},
			[]Gap{{Timeline: 1, First: "000000010000000000000005", Last: "000000010000000000000005"}}, seg), RecoveryRequest{Latest: true}, "", "segment 000000010000000000000005 is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ChooseBase(tc.s, tc.r, last, SegmentEnd(Segment{Timeline: 1, No: 12}, seg))
			if tc.refuse != "" {
				if !errors.Is(err, ErrTargetNotRecoverable) || !strings.Contains(err.Error(), tc.refuse) {
					t.Errorf("got %s %v, want refused with %q", got.Name, err, tc.refuse)
				}
				return
			}
			if err != nil || got.Name != tc.want {
				t.Errorf("got %s %v, want %s", got.Name, err, tc.want)
			}
		})
	}
}

// The settings PostgreSQL recovers with: the archive's restore command,
// exactly the target asked, promotion there, the newest timeline.
func TestRecoverySettings(t *testing.T) {
	q := func(s string) string { return "'" + s + "'" }
	tm := time.Date(2026, 12, 7, 12, 0, 1, 500000000, time.UTC)
	for _, tc := range []struct {
		r    RecoveryRequest
		want []string
		not  []string
	}{
		{RecoveryRequest{Time: &tm, Inclusive: true}, []string{"recovery_target_time = '2026-12-07 12:00:01.5+00'", "recovery_target_inclusive = on"}, []string{"recovery_target_lsn"}},
		{RecoveryRequest{LSN: "0/3000060"}, []string{"recovery_target_lsn = '0/3000060'", "recovery_target_inclusive = off"}, []string{"recovery_target_time ="}},
		{RecoveryRequest{RestorePoint: "p1", Inclusive: true}, []string{"recovery_target_name = 'p1'"}, nil},
		{RecoveryRequest{XID: "1234", Inclusive: false}, []string{"recovery_target_xid = '1234'", "recovery_target_inclusive = off"}, []string{"recovery_target_name"}},
		{RecoveryRequest{Latest: true}, nil, []string{"recovery_target_time =", "recovery_target_lsn", "recovery_target_name", "recovery_target_inclusive"}},
		// An undo replays its previous data directory's own timeline, never
		// the newer one the restore it undoes created.
		{RecoveryRequest{Latest: true, Timeline: 3}, []string{"recovery_target_timeline = '3'"}, []string{"recovery_target_timeline = 'latest'"}},
	} {
		got := strings.Join(RecoverySettings(tc.r, "/controller/manager wal-fetch %f %p", q), "\n")
		want := append(tc.want, "restore_command = '/controller/manager wal-fetch %f %p'", "recovery_target_action = 'promote'")
		if tc.r.Timeline == 0 {
			want = append(want, "recovery_target_timeline = 'latest'")
		}
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: settings\n%s\nlack %q", tc.r, got, w)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(got, n) {
				t.Errorf("%s: settings\n%s\nhave %q", tc.r, got, n)
			}
		}
	}
}
