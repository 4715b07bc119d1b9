package agentapi

import (
	"maps"
	"testing"
)

// The operator's intent survives a write and a read unchanged, whatever else
// the Lease carries; what the agents wrote is left alone by the operator's
// write, and the reverse.
func TestTheLeaseIntentAndReportRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name   string
		intent LeaseIntent
		report LeaseReport
	}{
		{"steady primary", LeaseIntent{Target: "db-0", Instances: 3, Synchronous: 1}, LeaseReport{PrimaryLSN: "0/3000060"}},
		{"switchover", LeaseIntent{Target: "db-1", Instances: 3, Change: ChangeSwitchover}, LeaseReport{FinalLSN: "0/4000028", ReleasedBy: "db-0"}},
		{"failover choosing a target", LeaseIntent{Target: "", Instances: 2, Change: ChangeFailover}, LeaseReport{}},
		{"single instance", LeaseIntent{Target: "db-0", Instances: 1}, LeaseReport{ReleasedBy: "db-0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := map[string]string{"example.com/other": "kept"}
			if !tc.intent.ApplyTo(a) {
				t.Error("the first write changed nothing")
			}
			tc.report.ApplyTo(a)
			if got := ReadLeaseIntent(a); got != tc.intent {
				t.Errorf("intent read back %+v, wrote %+v", got, tc.intent)
			}
			if got := ReadLeaseReport(a); got != tc.report {
				t.Errorf("report read back %+v, wrote %+v", got, tc.report)
			}
			if a["example.com/other"] != "kept" {
				t.Errorf("an unknown annotation was touched: %v", a)
			}
			if !tc.intent.Matches(a) {
				t.Error("the intent just written does not match")
			}
			before := maps.Clone(a)
			if tc.intent.ApplyTo(a) || !maps.Equal(a, before) {
				t.Errorf("writing the same intent again changed the Lease: %v -> %v", before, a)
			}
		})
	}
}

// A Change or Target of "" removes its annotation (absent and empty mean the
// same), and the write reports the change.
func TestAnEmptyIntentFieldRemovesItsAnnotation(t *testing.T) {
	a := map[string]string{}
	LeaseIntent{Target: "db-0", Instances: 2, Change: ChangeFailover}.ApplyTo(a)
	i := LeaseIntent{Instances: 2}
	if i.Matches(a) {
		t.Error("an intent without a change matches a Lease in a failover")
	}
	if !i.ApplyTo(a) {
		t.Error("clearing the change reported no change")
	}
	if _, ok := a[LeaseAnnotationChange]; ok {
		t.Errorf("the change annotation is still there: %v", a)
	}
	if _, ok := a[LeaseAnnotationTarget]; ok {
		t.Errorf("an empty target was written: %v", a)
	}
	LeaseReport{FinalLSN: "0/1"}.ApplyTo(a)
	if !(LeaseReport{}).ApplyTo(a) || a[LeaseAnnotationFinalLSN] != "" {
		t.Errorf("an empty final LSN did not remove it: %v", a)
	}
}

// An agent reads a missing or malformed number as its default: one instance
// (so it never fences itself because of an annotation it cannot parse) and no
// synchronous standby.
func TestAMalformedLeaseNumberReadsAsItsDefault(t *testing.T) {
	for _, a := range []map[string]string{
		nil,
		{},
		{LeaseAnnotationInstances: "three", LeaseAnnotationSynchronous: "1.5"},
		{LeaseAnnotationInstances: "", LeaseAnnotationSynchronous: ""},
	} {
		if got := ReadLeaseIntent(a); got.Instances != 1 || got.Synchronous != 0 {
			t.Errorf("ReadLeaseIntent(%v) = %+v, want 1 instance and 0 synchronous", a, got)
		}
	}
}

func TestHolderIdentityNamesThePodAndItsUID(t *testing.T) {
	h := LeaseHolder("db-1", "6f1c")
	if h != "db-1/6f1c" || HolderPod(h) != "db-1" || HolderPod("") != "" || HolderPod("db-2") != "db-2" {
		t.Errorf("LeaseHolder = %q, HolderPod = %q", h, HolderPod(h))
	}
}
