package database

import (
	"context"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
)

// The rolling update. The StatefulSet's update strategy is OnDelete: the operator
// replaces pods itself, one at a time, so that the primary is never restarted
// while a standby could take over:
//
//	rolloutIdle           every pod runs the update revision
//	rolloutWaiting        an instance is not healthy yet: nothing is deleted
//	rolloutReplaceBroken  a standby on the old revision is not ready: it is replaced first
//	rolloutReplaceStandby every instance is healthy: the most lagged standby on the old revision is replaced
//	rolloutSwitchover     only the primary is on the old revision: switch over to an updated standby
//	rolloutReplacePrimary a single instance: its pod is replaced (the only restart with downtime)
//
// The target image is already running on the new primary before the old one
// stops, so image pulls are outside the write outage. A new image that does not
// start stalls on the first standby (rolloutWaiting); reverting spec.image makes
// that pod "old revision and not ready", which rolloutReplaceBroken replaces.
type rolloutState string

const (
	rolloutIdle           rolloutState = "Idle"
	rolloutWaiting        rolloutState = "Waiting"
	rolloutReplaceBroken  rolloutState = "ReplaceBroken"
	rolloutReplaceStandby rolloutState = "ReplaceStandby"
	rolloutSwitchover     rolloutState = "Switchover"
	rolloutReplacePrimary rolloutState = "ReplacePrimary"
)

type rolloutInput struct {
	Replicas int
	Target   string
	Changing bool
	Pods     map[string]podObs
	Reports  map[string]InstanceReport
	// Lag is each standby's replay lag as the primary reports it (-1: not
	// streaming).
	Lag map[string]int64
	// PrimaryOK: the target reports primary and holds the Lease.
	PrimaryOK bool
	// LegacyPrimary: the target runs an agent of the previous version (no Lease):
	// it cannot switch over, so it is replaced in place, once.
	LegacyPrimary bool
	// Waiting explains per pod why a container does not run (image pull errors).
	Waiting map[string]string
}

type rolloutDecision struct {
	State rolloutState
	// Delete is the pod to replace now.
	Delete string
	// Switchover: ask for a switchover away from the primary.
	Switchover bool
	Message    string
}

func rolloutInputFrom(db *databasev1.Database, obs observation, in haInput) rolloutInput {
	ri := rolloutInput{Replicas: int(replicas(db)), Target: in.Target, Changing: in.Change != nil, Pods: in.Pods, Reports: obs.Instances,
		Lag: map[string]int64{}, PrimaryOK: promoted(in, in.Target), Waiting: map[string]string{}}
	if p := in.report(in.Target); legacyPrimary(p) {
		ri.PrimaryOK, ri.LegacyPrimary = true, true
	}
	if p := in.report(in.Target); p != nil {
		for _, r := range p.Replicas {
			if r.State == "streaming" {
				ri.Lag[r.ApplicationName] = r.LagBytes
			}
		}
	}
	for _, p := range obs.Pods {
		for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
			if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != "PodInitializing" && w.Reason != "ContainerCreating" {
				ri.Waiting[p.Name] = fmt.Sprintf("container %s: %s: %s", cs.Name, w.Reason, w.Message)
			}
		}
	}
	return ri
}

// healthy explains why pod is not a healthy instance ("" when it is).
func (in rolloutInput) healthy(pod string) string {
	p := in.Pods[pod]
	if w := in.Waiting[pod]; w != "" {
		return fmt.Sprintf("%s is not running: %s", pod, w)
	}
	if !p.Ready {
		return fmt.Sprintf("%s is not ready", pod)
	}
	if pod == in.Target {
		if !in.PrimaryOK {
			return fmt.Sprintf("primary %s does not hold the Lease", pod)
		}
		return ""
	}
	if _, ok := in.Lag[pod]; !ok {
		return fmt.Sprintf("standby %s is not streaming", pod)
	}
	return ""
}

// decideRollout is the rolling update's transition function.
func decideRollout(in rolloutInput) rolloutDecision {
	var oldStandbys, broken []string
	primaryOld := false
	names := make([]string, 0, len(in.Pods))
	for n := range in.Pods {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := in.Pods[n]
		if p.Updated || p.Terminating || agentapi.Ordinal(n) >= in.Replicas {
			continue
		}
		if n == in.Target {
			primaryOld = true
			continue
		}
		oldStandbys = append(oldStandbys, n)
		if in.healthy(n) != "" {
			broken = append(broken, n)
		}
	}
	if !primaryOld && len(oldStandbys) == 0 {
		return rolloutDecision{State: rolloutIdle}
	}
	if in.Changing {
		return rolloutDecision{State: rolloutWaiting, Message: "waiting for the change of primary to finish"}
	}
	for _, n := range names {
		if in.Pods[n].Terminating {
			return rolloutDecision{State: rolloutWaiting, Message: fmt.Sprintf("waiting for %s to be replaced", n)}
		}
	}
	if len(broken) > 0 {
		return rolloutDecision{State: rolloutReplaceBroken, Delete: broken[0],
			Message: fmt.Sprintf("replacing %s (old revision, not serving: %s)", broken[0], in.healthy(broken[0]))}
	}
	var unhealthy []string
	for _, n := range names {
		if agentapi.Ordinal(n) >= in.Replicas || in.Pods[n].Terminating {
			continue
		}
		if why := in.healthy(n); why != "" {
			unhealthy = append(unhealthy, why)
		}
	}
	if len(unhealthy) > 0 {
		return rolloutDecision{State: rolloutWaiting, Message: "waiting before replacing the next instance: " + strings.Join(unhealthy, "; ")}
	}
	if len(oldStandbys) > 0 {
		sort.SliceStable(oldStandbys, func(i, j int) bool {
			a, b := in.Lag[oldStandbys[i]], in.Lag[oldStandbys[j]]
			if a != b {
				return a > b
			}
			return agentapi.Ordinal(oldStandbys[i]) > agentapi.Ordinal(oldStandbys[j])
		})
		return rolloutDecision{State: rolloutReplaceStandby, Delete: oldStandbys[0],
			Message: fmt.Sprintf("replacing standby %s (%d standby(s) on the old revision; the primary last, after a switchover)", oldStandbys[0], len(oldStandbys))}
	}
	if in.Replicas > 1 && !in.LegacyPrimary {
		return rolloutDecision{State: rolloutSwitchover, Switchover: true,
			Message: fmt.Sprintf("every standby runs the new revision: switching over from %s before replacing it", in.Target)}
	}
	if in.LegacyPrimary {
		return rolloutDecision{State: rolloutReplacePrimary, Delete: in.Target,
			Message: fmt.Sprintf("replacing primary %s in place: its agent is of the previous version and cannot switch over (once, on the operator upgrade)", in.Target)}
	}
	return rolloutDecision{State: rolloutReplacePrimary, Delete: in.Target,
		Message: fmt.Sprintf("replacing the only instance %s (a single instance cannot switch over)", in.Target)}
}

// reconcileRollout replaces the pod decideRollout names.
func (r *Reconciler) reconcileRollout(ctx context.Context, db *databasev1.Database, obs *observation) error {
	if obs.StatefulSet == nil || obs.ObserveErr != nil || db.Status.TargetPrimary == "" ||
		obs.StatefulSet.Status.UpdateRevision == "" || obs.StatefulSet.Status.ObservedGeneration < obs.StatefulSet.Generation {
		return nil
	}
	in := haInput{Target: db.Status.TargetPrimary, Change: db.Status.PrimaryChange, Lease: observeLease(obs.Lease), Pods: observePods(*obs), Reports: obs.Instances}
	d := decideRollout(rolloutInputFrom(db, *obs, in))
	obs.Rollout = &d
	if d.Delete == "" {
		return nil
	}
	for i := range obs.Pods {
		pod := &obs.Pods[i]
		if pod.Name != d.Delete {
			continue
		}
		if err := r.Delete(ctx, pod, client.Preconditions{UID: &pod.UID}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("replacing pod %s: %w", pod.Name, err)
		}
		logf.FromContext(ctx).Info("rolling update progress", "state", string(d.State), "pod", pod.Name, "message", d.Message)
		r.event(db, corev1.EventTypeNormal, databasev1.ReasonRollingUpdate, "RollingUpdate", "Rolling update: "+d.Message)
	}
	return nil
}
