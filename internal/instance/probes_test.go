package instance

import (
	"testing"
	"time"
)

func TestReadinessVerdict(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	fresh := observation{At: now.Add(-400 * time.Millisecond), OK: true}
	standby := fresh
	standby.InRecovery, standby.Receiver = true, "streaming"
	held := leaseView{Known: true, Held: true, Target: "db-0"}
	base := readinessInput{Now: now, SetUp: true, Pod: "db-0", RetryPeriod: 2 * time.Second, MaxLagBytes: 64 << 20}
	with := func(f func(*readinessInput)) readinessInput {
		in := base
		f(&in)
		return in
	}
	tests := []struct {
		name string
		in   readinessInput
		want bool
	}{
		{"primary holding the Lease", with(func(in *readinessInput) { in.Primary, in.Obs, in.Lease = true, fresh, held }), true},
		{"primary whose roles are not set up", with(func(in *readinessInput) { in.Primary, in.Obs, in.Lease, in.SetUp = true, fresh, held, false }), false},
		{"postgres exited", with(func(in *readinessInput) { in.Primary, in.Obs, in.Lease, in.Exited = true, fresh, held, true }), false},
		{"no answer", with(func(in *readinessInput) { in.Primary, in.Lease = true, held; in.Obs = observation{At: now} }), false},
		{"stale reading", with(func(in *readinessInput) {
			in.Primary, in.Lease = true, held
			in.Obs = fresh
			in.Obs.At = now.Add(-probeStaleAfter - time.Millisecond)
		}), false},
		{"primary without the Lease", with(func(in *readinessInput) {
			in.Primary, in.Obs = true, fresh
			in.Lease = leaseView{Known: true, Target: "db-0"}
		}), false},
		{"primary that is not the target", with(func(in *readinessInput) {
			in.Primary, in.Obs = true, fresh
			in.Lease = leaseView{Known: true, Held: true, Target: "db-1"}
		}), false},
		{"fencing primary renewed recently", with(func(in *readinessInput) {
			in.Primary, in.Obs, in.Lease = true, fresh, held
			in.Lease.Fencing, in.Renewed, in.SinceRenew = true, true, 4*time.Second
		}), true},
		{"fencing primary not renewed for 2.5 retry periods", with(func(in *readinessInput) {
			in.Primary, in.Obs, in.Lease = true, fresh, held
			in.Lease.Fencing, in.Renewed, in.SinceRenew = true, true, 5*time.Second+time.Millisecond
		}), false},
		{"primary still in recovery", with(func(in *readinessInput) { in.Primary, in.Obs, in.Lease = true, standby, held }), false},
		{"streaming standby", with(func(in *readinessInput) { in.Obs = standby }), true},
		{"standby not streaming", with(func(in *readinessInput) { in.Obs = standby; in.Obs.Receiver = "startup" }), false},
		{"standby lagging", with(func(in *readinessInput) { in.Obs = standby; in.Obs.ReplayLagBytes = 64<<20 + 1 }), false},
		{"not primary and not in recovery", with(func(in *readinessInput) { in.Obs = fresh }), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, why := readiness(tc.in)
			if got != tc.want {
				t.Errorf("readiness = %v (%s), want %v", got, why, tc.want)
			}
		})
	}
}
