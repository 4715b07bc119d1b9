package database

import (
	"fmt"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
)

// observation is everything Reconcile saw; deriveStatus turns it into a status.
type observation struct {
	// Now is the time of the observation; ReadyGrace and StallAfter the hysteresis
	// settings.
	Now                    time.Time
	ReadyGrace, StallAfter time.Duration
	// ConfigHash is the hash of spec.postgresql's file ("" until the ConfigMap
	// step ran).
	ConfigHash string
	// ClusterDomain is the cluster's DNS domain (the operator's --cluster-domain).
	ClusterDomain string
	// StatefulSet is nil until it exists.
	StatefulSet *appsv1.StatefulSet
	// Pods are the instance pods, ordered by name.
	Pods []corev1.Pod
	// Instances maps pod name to what its agent reported.
	Instances map[string]InstanceReport
	// Agent is how the operator authenticates to the agents: its TLS client
	// for agents that serve HTTPS, the bearer tokens (current first) for
	// agents of pods created before TLS.
	Agent AgentAuth
	// CAPEM is the Database's CA certificate (nil when its Secret is not ours).
	CAPEM []byte
	// SecretSystemID is the system identifier found in the internal Secret.
	SecretSystemID string
	// Refusal explains why the spec cannot be applied (e.g. a major version change);
	// empty when there is none.
	Refusal string
	// RefusalReason is the reason of the refusal (MajorVersionChangeUnsupported
	// when empty).
	RefusalReason string
	// Upgrade is the major upgrade's decision of this reconcile (nil before the
	// StatefulSet exists).
	Upgrade *upgradeDecision
	// Conflicts name children with our names that this Database does not own.
	Conflicts []string
	// Archive is what the WAL archive step found (nil without
	// spec.walArchive).
	Archive *archiveObs
	// Recovery is what the recovery source step found (nil without
	// spec.bootstrap.pointInTime).
	Recovery *recoveryObs
	// InPlace is the in-place recovery the target primary reports (nil: none).
	InPlace *inPlaceObs
	// ReconcileErr joins the errors of this reconcile's steps.
	ReconcileErr error
	// ObserveErr is set when the pods or endpoints could not be listed: the
	// observation of the instances is missing.
	ObserveErr error
	// RunningImage is the image the StatefulSet runs.
	RunningImage string
	// RoutedPods are the pods the read-write Service's EndpointSlices list as ready
	// endpoints: where connections to status.endpoint actually go.
	RoutedPods map[string]bool
	// Storage is the verdict on volume expansion (nil: not observed).
	Storage *conditionVerdict
	// Identity is the system identifier to record (nil: nothing new).
	Identity *identity
	// Recloning maps standby pods the operator asked to re-clone to why.
	Recloning map[string]string
	// RecoveryError explains why the recover-primary-from annotation was not acted
	// on.
	RecoveryError string
	// Restores are the Restores of this Database that run (InProgress), by name,
	// with what they restore; RestoresObserved is false when they could not be
	// listed (the condition is then left as it was).
	Restores         map[string]string
	RestoresObserved bool
	// PVCs are the Database's volumes.
	PVCs []corev1.PersistentVolumeClaim
	// IdentityConflict explains why a freshly initialised cluster's identity is not
	// recorded (volumes of an earlier Database with the same name hold data).
	IdentityConflict string
	// Lease is the primary Lease as last read (nil: not observed).
	Lease *coordinationv1.Lease
	// Unlabel are pods whose role label the failover state machine removed.
	Unlabel []string
	// SwitchoverBlocked explains why a switchover the rollout or a scale-down
	// needs cannot start yet.
	SwitchoverBlocked string
	// Rollout is the rolling update's decision (nil: not evaluated).
	Rollout *rolloutDecision
}

// identity is a system identifier recorded for the first time.
type identity struct {
	SystemID    string
	DataVersion int
	Pod         string
	// Adopted: the data directory existed before (not created by our initdb).
	Adopted bool
	// FromSecret: recovered from the internal Secret (the status had lost it).
	FromSecret bool
	// Existing: the cluster was already running under this Database before the
	// operator recorded identities.
	Existing bool
}

// conditionVerdict is a condition's status with its reason and message.
type conditionVerdict struct {
	Status  metav1.ConditionStatus
	Reason  string
	Message string
}

// verdict is a phase with the reason and message that explain it.
type verdict struct {
	Phase   databasev1.Phase
	Reason  string
	Message string
}

// deriveStatus computes the status of db from what was observed. It is pure: the
// same inputs give the same status, and conditions keep their transition times when
// their status does not change (new transitions are stamped with obs.Now).
func deriveStatus(db *databasev1.Database, obs observation) databasev1.DatabaseStatus {
	prev := db.Status
	st := databasev1.DatabaseStatus{
		ObservedGeneration: db.Generation,
		SecretName:         credentialsSecretName(db),
		Selector:           labels.SelectorFromSet(selectorLabels(db)).String(),
		Image:              obs.RunningImage,
		SystemIdentifier:   prev.SystemIdentifier,
		DataVersion:        prev.DataVersion,
		// The failover state machine writes these itself (optimistic concurrency).
		TargetPrimary:     prev.TargetPrimary,
		PrimaryChange:     prev.PrimaryChange,
		LastPrimaryChange: prev.LastPrimaryChange,
		Timeline:          prev.Timeline,
		// The restart decision (restartedFor) outlives any reconcile that cannot
		// observe the instances.
		Configuration: prev.Configuration,
		Conditions:    append([]metav1.Condition(nil), prev.Conditions...),
	}
	if st.Image == "" {
		st.Image = prev.Image
	}
	set := func(typ string, status metav1.ConditionStatus, reason, message string) {
		setCondition(&st, db.Generation, obs.Now, typ, status, reason, message)
	}

	// A major upgrade gives the data directory a new identity.
	st.Upgrade = prev.Upgrade
	if u := obs.Upgrade; u != nil {
		st.Upgrade = u.Status
		if u.SystemID != "" {
			st.SystemIdentifier, st.DataVersion = u.SystemID, u.DataMajor
			set(databasev1.ConditionInitialized, metav1.ConditionTrue, databasev1.ReasonBootstrapped,
				fmt.Sprintf("System identifier %s of the cluster upgraded to PostgreSQL %d", u.SystemID, u.DataMajor))
		}
	}

	// Identity.
	if obs.Identity != nil && st.SystemIdentifier == "" {
		st.SystemIdentifier = obs.Identity.SystemID
		st.DataVersion = int32(obs.Identity.DataVersion)
		switch {
		case obs.Identity.FromSecret:
			set(databasev1.ConditionInitialized, metav1.ConditionTrue, databasev1.ReasonBootstrapped,
				fmt.Sprintf("System identifier %s recovered from Secret %s", st.SystemIdentifier, internalSecretName(db)))
		case obs.Identity.Existing:
			set(databasev1.ConditionInitialized, metav1.ConditionTrue, databasev1.ReasonBootstrapped,
				fmt.Sprintf("Recorded system identifier %s (PostgreSQL %d) of the cluster already running on %s; no instance will ever run initdb again",
					obs.Identity.SystemID, obs.Identity.DataVersion, obs.Identity.Pod))
		case obs.Identity.Adopted:
			set(databasev1.ConditionInitialized, metav1.ConditionTrue, databasev1.ReasonAdoptedExistingData,
				fmt.Sprintf("Adopted the existing data directory found on %s (system identifier %s, PostgreSQL %d): its volume held data from an earlier Database; no initdb was run",
					obs.Identity.Pod, obs.Identity.SystemID, obs.Identity.DataVersion))
		default:
			set(databasev1.ConditionInitialized, metav1.ConditionTrue, databasev1.ReasonBootstrapped,
				fmt.Sprintf("Cluster initialised by initdb on %s: system identifier %s, PostgreSQL %d; no instance will ever run initdb again",
					obs.Identity.Pod, obs.Identity.SystemID, obs.Identity.DataVersion))
		}
	} else if st.SystemIdentifier == "" {
		set(databasev1.ConditionInitialized, metav1.ConditionFalse, databasev1.ReasonNotInitialized, "Waiting for the primary to initialise the cluster")
	}

	if obs.ObserveErr != nil {
		// Without the instances nothing can be said about the database: keep the last
		// known phase and readiness and report the error.
		st.Phase, st.Ready = prev.Phase, prev.Ready
		st.Replicas, st.ReadyReplicas, st.Instances = prev.Replicas, prev.ReadyReplicas, prev.Instances
		st.Endpoint, st.ReadOnlyEndpoint = prev.Endpoint, prev.ReadOnlyEndpoint
		st.CurrentPrimary, st.PostgresVersion = prev.CurrentPrimary, prev.PostgresVersion
		st.Timeline = prev.Timeline
		st.ObservedGeneration = prev.ObservedGeneration
		setReconcileError(&st, db, obs)
		return st
	}

	if obs.ConfigHash != "" && obs.Instances != nil {
		cv := decideConfiguration(obs.ConfigHash, prev.Configuration, int(replicas(db)), obs.Instances)
		st.Configuration = &cv.Status
		set(databasev1.ConditionConfigurationApplied, cv.Condition, cv.Reason, cv.Message)
	}

	if av := decideArchiving(obs.Archive, primaryOf(obs), prev.WALArchive); obs.Archive != nil {
		st.WALArchive = av.Status
		if av.Status == nil {
			st.WALArchive = prev.WALArchive
		}
		set(databasev1.ConditionContinuousArchiving, av.Condition, av.Reason, av.Message)
	} else if db.Spec.WALArchive == nil {
		meta.RemoveStatusCondition(&st.Conditions, databasev1.ConditionContinuousArchiving)
	} else {
		st.WALArchive = prev.WALArchive
	}
	st.InPlaceRecovery = decideInPlace(obs.InPlace, prev.InPlaceRecovery)
	if db.Spec.Bootstrap != nil && db.Spec.Bootstrap.PointInTime != nil {
		rs, cs, reason, msg := decideRecovered(obs.Recovery, recoveringInstance(obs), prev.Recovery)
		st.Recovery = rs
		set(databasev1.ConditionRecovered, cs, reason, msg)
	}
	if db.Spec.WALArchive != nil && obs.Archive != nil && obs.Archive.Configured {
		rs, rr, rm := decideRecoverable(st.WALArchive)
		set(databasev1.ConditionRecoverable, rs, rr, rm)
	} else if db.Spec.WALArchive == nil {
		meta.RemoveStatusCondition(&st.Conditions, databasev1.ConditionRecoverable)
	}

	if obs.StatefulSet != nil {
		st.Replicas = obs.StatefulSet.Status.Replicas
		st.ReadyReplicas = obs.StatefulSet.Status.ReadyReplicas
		st.Instances = fmt.Sprintf("%d/%d", st.ReadyReplicas, replicas(db))
		st.Endpoint = endpoint(db, obs.ClusterDomain)
		st.ReadOnlyEndpoint = readOnlyEndpoint(db, obs.ClusterDomain)
	}
	if p := primaryOf(obs); p != nil {
		st.CurrentPrimary = p.Pod
		st.PostgresVersion = p.ServerVersion
		st.Timeline = p.Timeline
		st.SynchronousStandbys = synchronousStandbys(p)
	}

	pa := primaryAvailability(db, obs)
	set(databasev1.ConditionPrimaryAvailable, pa.Status, pa.Reason, pa.Message)
	rh := replicasHealth(db, obs)
	set(databasev1.ConditionReplicasHealthy, rh.Status, rh.Reason, rh.Message)
	if obs.Storage != nil {
		set(databasev1.ConditionStorageResized, obs.Storage.Status, obs.Storage.Reason, obs.Storage.Message)
	}
	if obs.RestoresObserved {
		r := restoring(obs)
		set(databasev1.ConditionRestoring, r.Status, r.Reason, r.Message)
	}

	v := decide(db, obs, st.SystemIdentifier)
	if v.Phase != databasev1.PhaseReady && v.Phase != databasev1.PhaseFailed && prev.Phase == databasev1.PhaseReady &&
		prev.ObservedGeneration == db.Generation {
		// Hysteresis: a Ready Database leaves Ready only when a failing check lasts.
		if since, ok := degradedSince(st); ok && obs.Now.Sub(since) < obs.ReadyGrace {
			v = verdict{databasev1.PhaseReady, databasev1.ReasonDegraded,
				fmt.Sprintf("%s (failing for %s; Ready is kept for up to %s)", v.Message, obs.Now.Sub(since).Round(time.Second), obs.ReadyGrace)}
		}
	}
	upgradePhase, stall := upgradeConditions(db, obs, &st, set)
	if upgradePhase != nil {
		v = *upgradePhase
	}
	st.Phase = v.Phase
	st.Ready = v.Phase == databasev1.PhaseReady

	ready := metav1.ConditionFalse
	if st.Ready {
		ready = metav1.ConditionTrue
	}
	set(databasev1.ConditionReady, ready, v.Reason, v.Message)

	switch v.Phase {
	case databasev1.PhaseReady:
		set(databasev1.ConditionReconciling, metav1.ConditionFalse, databasev1.ReasonSucceeded, "The Database matches its spec")
		set(databasev1.ConditionStalled, metav1.ConditionFalse, databasev1.ReasonSucceeded, "No blocking problem")
	case databasev1.PhaseFailed:
		set(databasev1.ConditionReconciling, metav1.ConditionFalse, v.Reason, "Waiting for a change by the user")
		set(databasev1.ConditionStalled, metav1.ConditionTrue, v.Reason, v.Message)
	default:
		set(databasev1.ConditionReconciling, metav1.ConditionTrue, v.Reason, v.Message)
		set(databasev1.ConditionStalled, metav1.ConditionFalse, databasev1.ReasonSucceeded, "No blocking problem")
	}
	if stall != nil {
		// A refused or failed upgrade: the old version serves (Ready may be
		// True) but the spec cannot be realised without a change.
		set(databasev1.ConditionReconciling, metav1.ConditionFalse, stall.Reason, "Waiting for a change by the user")
		set(databasev1.ConditionStalled, metav1.ConditionTrue, stall.Reason, stall.Message)
	}
	if obs.ReconcileErr != nil {
		st.ObservedGeneration = prev.ObservedGeneration
		if st.ObservedGeneration == 0 {
			st.ObservedGeneration = db.Generation
		}
		setReconcileError(&st, db, obs)
	}
	return st
}

// restoring is the Restoring condition: True while a Restore runs, naming it and
// what the primary's agent reports.
func restoring(obs observation) conditionVerdict {
	if len(obs.Restores) == 0 {
		return conditionVerdict{metav1.ConditionFalse, databasev1.ReasonNoRestore, "No Restore of this Database is running"}
	}
	names := make([]string, 0, len(obs.Restores))
	for n := range obs.Restores {
		names = append(names, n)
	}
	sort.Strings(names)
	what := obs.Restores[names[0]]
	msg := fmt.Sprintf("Restore %s is restoring %s into a separate database on the primary; the application database is unchanged "+
		"until the restored one is swapped in (its sessions are terminated then); backups wait", names[0], what)
	if strings.HasPrefix(what, "a point in time") || strings.HasPrefix(what, "the undo") {
		msg = fmt.Sprintf("Restore %s is restoring the cluster in place to %s: the primary prepares it while it serves, "+
			"then stops and replays the WAL archive (no writes meanwhile); backups wait", names[0], what)
	}
	if p := primaryOf(obs); p != nil && p.Restoring != "" {
		msg += "; the primary's agent is applying it"
	}
	return conditionVerdict{metav1.ConditionTrue, databasev1.ReasonRestoreRunning, msg}
}

// setReconcileError reports a failing step in Reconciling; when failures go on
// for the same generation longer than StallAfter, Stalled says so. The streak
// starts at the first failing reconcile (kept as the condition's transition time
// while the reason stays ReconcileError), whatever the phase did meanwhile.
func setReconcileError(st *databasev1.DatabaseStatus, db *databasev1.Database, obs observation) {
	err := obs.ReconcileErr
	if err == nil {
		err = obs.ObserveErr
	}
	if err == nil {
		return
	}
	since := obs.Now.Truncate(time.Second)
	prevRec := meta.FindStatusCondition(db.Status.Conditions, databasev1.ConditionReconciling)
	if prevRec != nil && prevRec.Reason == databasev1.ReasonReconcileError && prevRec.Status == metav1.ConditionTrue &&
		prevRec.ObservedGeneration == db.Generation {
		since = prevRec.LastTransitionTime.Time
	}
	c := meta.FindStatusCondition(st.Conditions, databasev1.ConditionReconciling)
	if c == nil {
		st.Conditions = append(st.Conditions, metav1.Condition{Type: databasev1.ConditionReconciling})
		c = &st.Conditions[len(st.Conditions)-1]
	}
	c.Status, c.Reason, c.Message, c.ObservedGeneration = metav1.ConditionTrue, databasev1.ReasonReconcileError, err.Error(), db.Generation
	c.LastTransitionTime = metav1.NewTime(since)
	if obs.Now.Sub(since) >= obs.StallAfter {
		setCondition(st, db.Generation, obs.Now, databasev1.ConditionStalled, metav1.ConditionTrue, databasev1.ReasonReconcileError,
			fmt.Sprintf("The same step has been failing for over %s: %v", obs.StallAfter, err))
	}
}

// degradedSince is when the first of PrimaryAvailable and ReplicasHealthy turned
// False, if one is False.
func degradedSince(st databasev1.DatabaseStatus) (time.Time, bool) {
	var since time.Time
	found := false
	for _, typ := range []string{databasev1.ConditionPrimaryAvailable, databasev1.ConditionReplicasHealthy} {
		c := meta.FindStatusCondition(st.Conditions, typ)
		if c == nil || c.Status != metav1.ConditionFalse {
			continue
		}
		if !found || c.LastTransitionTime.Time.Before(since) {
			since, found = c.LastTransitionTime.Time, true
		}
	}
	return since, found
}

func setCondition(st *databasev1.DatabaseStatus, gen int64, now time.Time, typ string, status metav1.ConditionStatus, reason, message string) {
	c := metav1.Condition{
		Type:               typ,
		Status:             status,
		Reason:             reason,
		Message:            message,
		ObservedGeneration: gen,
	}
	if old := meta.FindStatusCondition(st.Conditions, typ); old == nil || old.Status != status {
		c.LastTransitionTime = metav1.NewTime(now.Truncate(time.Second))
	}
	meta.SetStatusCondition(&st.Conditions, c)
}

// refusing reports whether an agent state is a refusal to start.
func refusing(s agentapi.State) bool {
	return s == agentapi.StateDataMissing || s == agentapi.StateForeignData || s == agentapi.StateVersionMismatch
}

// agentRefusal returns the first instance whose agent refuses to start, by name.
func agentRefusal(obs observation) (string, *agentapi.Status) {
	for _, n := range podNames(obs) {
		if r, ok := obs.Instances[n]; ok && r.Err == nil && r.Status != nil && refusing(r.Status.State) {
			return n, r.Status
		}
	}
	return "", nil
}

func podNames(obs observation) []string {
	names := make([]string, 0, len(obs.Pods))
	for _, p := range obs.Pods {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	return names
}

// mostAdvancedStandby returns the running standby (other than except) with the
// latest received or replayed WAL position: rebuilding a primary from any other
// would lose the transactions only that one has.
func mostAdvancedStandby(obs observation, except string) (string, string) {
	best, bestLSN := "", ""
	for _, n := range standbyNames(obs, except) {
		st := obs.Instances[n].Status
		pos := agentapi.LaterLSN(st.ReplayLSN, st.ReceiveLSN)
		if best == "" || agentapi.LaterLSN(bestLSN, pos) != bestLSN {
			best, bestLSN = n, pos
		}
	}
	return best, bestLSN
}

// standbyNames returns the running standbys (by agent report) other than pod.
func standbyNames(obs observation, except string) []string {
	var out []string
	for _, n := range podNames(obs) {
		if r, ok := obs.Instances[n]; ok && n != except && r.Err == nil && r.Status != nil && r.Status.Running && r.Status.Role == agentapi.RoleReplica {
			out = append(out, n)
		}
	}
	return out
}

// decide walks the phases in order and stops at the first that is not complete.
func decide(db *databasev1.Database, obs observation, systemID string) verdict {
	if len(obs.Conflicts) > 0 {
		return verdict{databasev1.PhaseFailed, databasev1.ReasonChildConflict, strings.Join(obs.Conflicts, "; ")}
	}
	if obs.IdentityConflict != "" {
		return verdict{databasev1.PhaseFailed, databasev1.ReasonRetainedDataConflict, obs.IdentityConflict}
	}
	if pod, st := agentRefusal(obs); st != nil {
		switch st.State {
		case agentapi.StateDataMissing:
			msg := fmt.Sprintf("Primary %s has no data directory on its volume (PVC %s-%s) although the Database was initialised (system identifier %s); "+
				"the operator refuses to create a new, empty database", pod, volumeData, pod, systemID)
			if best, lsn := mostAdvancedStandby(obs, pod); best != "" {
				at := ""
				if lsn != "" {
					at = " (the most advanced, at " + lsn + ")"
				}
				msg += fmt.Sprintf(". The data is on standby %s%s: to rebuild the primary from it, run "+
					"kubectl annotate database %s %s=%s", best, at, db.Name, databasev1.AnnotationRecoverPrimaryFrom, best)
			} else {
				msg += ". No standby holds a copy: restore a Backup into a new Database, or put the volume back"
			}
			if obs.RecoveryError != "" {
				msg += ". " + obs.RecoveryError
			}
			return verdict{databasev1.PhaseFailed, databasev1.ReasonPrimaryDataMissing, msg}
		case agentapi.StateForeignData:
			return verdict{databasev1.PhaseFailed, databasev1.ReasonPrimaryDataForeign,
				fmt.Sprintf("Primary %s (PVC %s-%s): %s", pod, volumeData, pod, st.Message)}
		case agentapi.StateVersionMismatch:
			return verdict{databasev1.PhaseFailed, databasev1.ReasonDataVersionMismatch,
				fmt.Sprintf("Instance %s: its data directory is PostgreSQL %d but image %s runs PostgreSQL %d; PostgreSQL was not started. "+
					"Set spec.image back to a PostgreSQL %d image (the instance is then recreated with it)", pod, st.DataVersion, podImage(obs, pod), st.BinaryVersion, st.DataVersion)}
		}
	}
	sts := obs.StatefulSet
	if sts == nil {
		return verdict{databasev1.PhasePending, databasev1.ReasonCreating, "Creating the Secrets, Services and StatefulSet"}
	}
	if c := db.Status.PrimaryChange; c != nil {
		if c.Kind == databasev1.PrimaryChangeSwitchover {
			return verdict{databasev1.PhaseSwitchingOver, databasev1.ReasonSwitchingOver, fmt.Sprintf("%s: %s", c.Phase, c.Message)}
		}
		if c.Phase == databasev1.PrimaryChangeBlocked {
			return verdict{databasev1.PhaseFailingOver, databasev1.ReasonFailoverBlocked, fmt.Sprintf("%s: %s", c.Phase, c.Message)}
		}
		return verdict{databasev1.PhaseFailingOver, databasev1.ReasonFailingOver, fmt.Sprintf("%s: %s", c.Phase, c.Message)}
	}
	for _, n := range podNames(obs) {
		if r, ok := obs.Instances[n]; ok && r.Err == nil && r.Status != nil && r.Status.State == agentapi.StateRecovering {
			return verdict{databasev1.PhaseDeploying, databasev1.ReasonRecoveringPrimary, fmt.Sprintf("Primary %s: %s", n, r.Status.Message)}
		}
	}
	want := replicas(db)
	s := sts.Status
	if s.ReadyReplicas == 0 {
		return verdict{databasev1.PhaseProvisioning, databasev1.ReasonInstancesStarting,
			fmt.Sprintf("Waiting for the primary %s-0 to start", sts.Name)}
	}
	stsReplicas := want
	if sts.Spec.Replicas != nil {
		stsReplicas = *sts.Spec.Replicas
	}
	if obs.SwitchoverBlocked != "" && stsReplicas != want {
		return verdict{databasev1.PhaseDeploying, databasev1.ReasonScaling, obs.SwitchoverBlocked}
	}
	if s.ObservedGeneration < sts.Generation || stsReplicas != want {
		return verdict{databasev1.PhaseDeploying, databasev1.ReasonRollingUpdate, "Waiting for the StatefulSet controller to observe the new spec"}
	}
	if ro := obs.Rollout; ro != nil && ro.State != rolloutIdle {
		msg := fmt.Sprintf("Rolling update: %d of %d instances updated; %s", s.UpdatedReplicas, want, ro.Message)
		if obs.SwitchoverBlocked != "" {
			msg += "; " + obs.SwitchoverBlocked
		}
		return verdict{databasev1.PhaseDeploying, databasev1.ReasonRollingUpdate, msg}
	}
	if s.ReadyReplicas != want || s.Replicas != want {
		return verdict{databasev1.PhaseDeploying, databasev1.ReasonScaling,
			fmt.Sprintf("%d of %d instances ready", s.ReadyReplicas, want)}
	}
	if pa := primaryAvailability(db, obs); pa.Status != metav1.ConditionTrue {
		return verdict{databasev1.PhaseVerifying, pa.Reason, pa.Message}
	}
	if rh := replicasHealth(db, obs); rh.Status != metav1.ConditionTrue {
		return verdict{databasev1.PhaseVerifying, rh.Reason, rh.Message}
	}
	return verdict{databasev1.PhaseReady, databasev1.ReasonChecksPassed,
		fmt.Sprintf("Primary %s accepts writes; %d standby(s) streaming within the lag threshold", primaryOf(obs).Pod, want-1)}
}

func podImage(obs observation, pod string) string {
	for _, p := range obs.Pods {
		if p.Name != pod {
			continue
		}
		for _, c := range p.Spec.Containers {
			if c.Name == containerPostgres {
				return c.Image
			}
		}
	}
	return "(unknown)"
}

// primaryOf returns the status of the one instance that reports itself primary, or
// nil when none or more than one does.
func primaryOf(obs observation) *agentapi.Status {
	var p *agentapi.Status
	for _, pod := range obs.Pods {
		r, ok := obs.Instances[pod.Name]
		if !ok || r.Err != nil || r.Status == nil || r.Status.Role != agentapi.RolePrimary {
			continue
		}
		if p != nil {
			return nil
		}
		p = r.Status
	}
	return p
}

// recoveringInstance is the report of the instance that carries a
// point-in-time bootstrap (it is in recovery, or not running, until it
// promotes at the target): the one whose report has a recovery.
func recoveringInstance(obs observation) *agentapi.Status {
	for _, pod := range obs.Pods {
		if r, ok := obs.Instances[pod.Name]; ok && r.Err == nil && r.Status != nil && r.Status.Recovery != nil && r.Status.Recovery.ID == "" {
			return r.Status
		}
	}
	return nil
}

func maxLagBytes(db *databasev1.Database) int64 {
	if db.Spec.MaxReplicationLag != nil {
		return db.Spec.MaxReplicationLag.Value()
	}
	return 64 << 20
}

// primaryAvailability: exactly one primary, it accepts a write, and the read-write
// Service routes to it. It says nothing about the standbys.
func primaryAvailability(db *databasev1.Database, obs observation) conditionVerdict {
	fail := func(reason, format string, args ...any) conditionVerdict {
		return conditionVerdict{metav1.ConditionFalse, reason, fmt.Sprintf(format, args...)}
	}
	var primaries []string
	var unreachable []string
	for _, n := range podNames(obs) {
		r, ok := obs.Instances[n]
		switch {
		case !ok:
			unreachable = append(unreachable, n+" has not reported its status yet")
		case r.Err != nil:
			unreachable = append(unreachable, fmt.Sprintf("%s: %v", n, r.Err))
		case r.Status != nil && r.Status.Running && r.Status.Role == agentapi.RolePrimary:
			primaries = append(primaries, n)
		}
	}
	switch {
	case len(primaries) > 1:
		return fail(databasev1.ReasonPrimaryUnknown, "Expected exactly one primary, found %d: [%s]", len(primaries), strings.Join(primaries, ", "))
	case len(primaries) == 0 && len(unreachable) > 0:
		return fail(databasev1.ReasonInstanceUnreachable, "No primary is reporting: %s", strings.Join(unreachable, "; "))
	case len(primaries) == 0:
		msg := "No instance reports itself as a running primary"
		if len(obs.Pods) == 0 {
			msg = "No instance pod exists yet"
		}
		for _, n := range podNames(obs) {
			if r := obs.Instances[n]; r.Status != nil && n == db.Status.TargetPrimary {
				if r.Status.Error != "" {
					msg += fmt.Sprintf("; %s: %s", n, r.Status.Error)
				}
				if r.Status.Message != "" {
					msg += fmt.Sprintf(" (%s)", r.Status.Message)
				}
			}
		}
		return fail(databasev1.ReasonPrimaryUnknown, "%s", msg)
	}
	primary := obs.Instances[primaries[0]].Status
	if !primary.Writable {
		return fail(databasev1.ReasonPrimaryNotWritable, "Primary %s does not accept writes: %s", primary.Pod, primary.WriteError)
	}
	if !obs.RoutedPods[primary.Pod] {
		return fail(databasev1.ReasonServiceNotRouting, "Service %s does not route to primary %s yet", readWriteServiceName(db), primary.Pod)
	}
	return conditionVerdict{metav1.ConditionTrue, databasev1.ReasonPrimaryAvailable,
		fmt.Sprintf("Primary %s accepts writes and Service %s routes to it", primary.Pod, readWriteServiceName(db))}
}

// replicasHealth: every standby the spec asks for exists and streams from the
// primary within maxReplicationLag.
func replicasHealth(db *databasev1.Database, obs observation) conditionVerdict {
	fail := func(reason, format string, args ...any) conditionVerdict {
		return conditionVerdict{metav1.ConditionFalse, reason, fmt.Sprintf(format, args...)}
	}
	want := replicas(db)
	if want == 1 {
		return conditionVerdict{metav1.ConditionTrue, databasev1.ReasonNoStandbys, "No standbys are configured (replicas: 1)"}
	}
	primary := primaryOf(obs)
	if primary == nil {
		return fail(databasev1.ReasonPrimaryUnknown, "Standbys cannot be checked without a primary")
	}
	streaming := make(map[string]agentapi.ReplicaStatus, len(primary.Replicas))
	for _, rs := range primary.Replicas {
		streaming[rs.ApplicationName] = rs
	}
	limit := maxLagBytes(db)
	stsName := statefulSetName(db)
	for i := int32(0); i < want; i++ {
		n := fmt.Sprintf("%s-%d", stsName, i)
		if n == primary.Pod {
			continue
		}
		if why, ok := obs.Recloning[n]; ok {
			return fail(databasev1.ReasonStandbyRecloning, "Standby %s is being re-cloned: %s", n, why)
		}
		r, ok := obs.Instances[n]
		switch {
		case !ok:
			return fail(databasev1.ReasonInstanceUnreachable, "Standby %s has not reported its status yet", n)
		case r.Err != nil:
			return fail(databasev1.ReasonInstanceUnreachable, "Standby %s: %v", n, r.Err)
		case r.Status == nil || !r.Status.Running:
			msg := ""
			if r.Status != nil && r.Status.Error != "" {
				msg = ": " + r.Status.Error
			}
			if r.Status != nil && r.Status.Message != "" {
				msg += " (" + string(r.Status.State) + ": " + r.Status.Message + ")"
			}
			return fail(databasev1.ReasonInstanceUnreachable, "Standby %s: PostgreSQL is not accepting connections%s", n, msg)
		}
		rs, ok := streaming[n]
		if !ok || rs.State != "streaming" {
			state := "not connected"
			if ok {
				state = rs.State
			}
			return fail(databasev1.ReasonReplicaNotStreaming, "Standby %s is not streaming from primary %s (%s)", n, primary.Pod, state)
		}
		if rs.LagBytes > limit {
			return fail(databasev1.ReasonReplicationLagHigh, "Standby %s replay lag is %s, above the %s threshold",
				n, resource.NewQuantity(rs.LagBytes, resource.BinarySI).String(), resource.NewQuantity(limit, resource.BinarySI).String())
		}
	}
	return conditionVerdict{metav1.ConditionTrue, databasev1.ReasonStandbysHealthy,
		fmt.Sprintf("%d standby(s) streaming from %s within %s", want-1, primary.Pod, resource.NewQuantity(limit, resource.BinarySI).String())}
}

// synchronousStandbys are the standbys the primary counts toward its quorum,
// sorted (nil when none).
func synchronousStandbys(p *agentapi.Status) []string {
	var out []string
	for _, r := range p.Replicas {
		if r.SyncState == "sync" || r.SyncState == "quorum" {
			out = append(out, r.ApplicationName)
		}
	}
	sort.Strings(out)
	return out
}
