package agentapi

import (
	"strconv"
	"strings"
)

// Annotations of the primary Lease. The operator writes the target primary, the
// number of instances and the kind of change; the agent that releases the Lease
// writes its final WAL position.
const (
	// LeaseAnnotationTarget is the pod that should be primary ("" while a failover
	// chooses one): the mirror of the Database's status.targetPrimary.
	LeaseAnnotationTarget = "database.example.com/target-primary"
	// LeaseAnnotationInstances is spec.replicas. With one instance the primary
	// neither renews the Lease nor fences itself.
	LeaseAnnotationInstances = "database.example.com/instances"
	// LeaseAnnotationSynchronous is spec.synchronousReplicas: the quorum of
	// standbys the primary waits for at each commit.
	LeaseAnnotationSynchronous = "database.example.com/synchronous-replicas"
	// LeaseAnnotationChange is "failover" or "switchover" while the target changes.
	LeaseAnnotationChange = "database.example.com/change"
	// LeaseAnnotationFinalLSN is the position of the shutdown checkpoint of a
	// primary that stopped cleanly and released the Lease: in a switchover the
	// target promotes only once it has received WAL past it.
	LeaseAnnotationFinalLSN = "database.example.com/final-lsn"
	// LeaseAnnotationPrimaryLSN is the holder's WAL position (pg_current_wal_lsn)
	// as of its last renewal, at most one retry period old: the operator's
	// reference for how much WAL a standby may lack and still be promoted when
	// the primary dies without releasing the Lease (spec.failover.maxLagOnFailover).
	// A new holder removes it when it takes the Lease.
	LeaseAnnotationPrimaryLSN = "database.example.com/primary-lsn"
	// LeaseAnnotationReleasedBy is the pod that released the Lease last: a
	// final-lsn is the old primary's only when it names that primary.
	LeaseAnnotationReleasedBy = "database.example.com/released-by"

	// ChangeFailover and ChangeSwitchover are the values of LeaseAnnotationChange.
	ChangeFailover   = "failover"
	ChangeSwitchover = "switchover"
)

// LeaseHolder is the Lease's holderIdentity for a pod: its name and UID, because a
// StatefulSet gives a recreated pod the same name.
func LeaseHolder(pod, uid string) string { return pod + "/" + uid }

// HolderPod returns the pod name of a holderIdentity.
func HolderPod(holder string) string {
	pod, _, _ := strings.Cut(holder, "/")
	return pod
}

// LeaseIntent is what the operator writes on the primary Lease, as typed
// values: the agents read it with ReadLeaseIntent, the operator writes it with
// ApplyTo. Unknown annotations are left alone.
type LeaseIntent struct {
	// Target is the pod that should be primary ("" while a failover chooses one).
	Target string
	// Instances is spec.replicas (at least 1; with one instance the primary
	// neither renews the Lease nor fences itself).
	Instances int
	// Synchronous is spec.synchronousReplicas.
	Synchronous int
	// Change is ChangeFailover or ChangeSwitchover while the target changes, ""
	// otherwise.
	Change string
}

// ReadLeaseIntent reads the operator's intent from a Lease's annotations. A
// missing or malformed number reads as its default (one instance, no
// synchronous standby): an agent never stops because of an annotation it
// cannot parse, and never fences itself on one.
func ReadLeaseIntent(annotations map[string]string) LeaseIntent {
	return LeaseIntent{
		Target:      annotations[LeaseAnnotationTarget],
		Instances:   annotationInt(annotations, LeaseAnnotationInstances, 1),
		Synchronous: annotationInt(annotations, LeaseAnnotationSynchronous, 0),
		Change:      annotations[LeaseAnnotationChange],
	}
}

// ApplyTo writes the intent into annotations (a Target or Change of ""
// removes the annotation: absent and empty read the same) and reports whether
// anything changed.
func (i LeaseIntent) ApplyTo(annotations map[string]string) bool {
	changed := set(annotations, LeaseAnnotationTarget, i.Target, false)
	changed = set(annotations, LeaseAnnotationInstances, strconv.Itoa(i.Instances), true) || changed
	changed = set(annotations, LeaseAnnotationSynchronous, strconv.Itoa(i.Synchronous), true) || changed
	return set(annotations, LeaseAnnotationChange, i.Change, false) || changed
}

// Matches reports whether annotations already carry the intent (what ApplyTo
// would leave unchanged).
func (i LeaseIntent) Matches(annotations map[string]string) bool {
	c := make(map[string]string, len(annotations))
	for k, v := range annotations {
		c[k] = v
	}
	return !i.ApplyTo(c)
}

// LeaseReport is what the agents write on the primary Lease besides holding
// it: a released primary's final position and name, the holder's position.
type LeaseReport struct {
	// FinalLSN is LeaseAnnotationFinalLSN ("" when there is none).
	FinalLSN string
	// PrimaryLSN is LeaseAnnotationPrimaryLSN.
	PrimaryLSN string
	// ReleasedBy is LeaseAnnotationReleasedBy.
	ReleasedBy string
}

// ReadLeaseReport reads the agents' report from a Lease's annotations.
func ReadLeaseReport(annotations map[string]string) LeaseReport {
	return LeaseReport{
		FinalLSN:   annotations[LeaseAnnotationFinalLSN],
		PrimaryLSN: annotations[LeaseAnnotationPrimaryLSN],
		ReleasedBy: annotations[LeaseAnnotationReleasedBy],
	}
}

// ApplyTo writes the report into annotations (an empty field removes its
// annotation) and reports whether anything changed.
func (r LeaseReport) ApplyTo(annotations map[string]string) bool {
	changed := set(annotations, LeaseAnnotationFinalLSN, r.FinalLSN, false)
	changed = set(annotations, LeaseAnnotationPrimaryLSN, r.PrimaryLSN, false) || changed
	return set(annotations, LeaseAnnotationReleasedBy, r.ReleasedBy, false) || changed
}

// set sets annotations[key] to v, or removes it when v is "" and keepEmpty is
// false, and reports whether that changed the map.
func set(annotations map[string]string, key, v string, keepEmpty bool) bool {
	have, ok := annotations[key]
	if v == "" && !keepEmpty {
		delete(annotations, key)
		return ok
	}
	annotations[key] = v
	return !ok || have != v
}

func annotationInt(annotations map[string]string, key string, def int) int {
	if n, err := strconv.Atoi(annotations[key]); err == nil {
		return n
	}
	return def
}
