package database

import (
	"fmt"
	"sort"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
)

// The change-of-primary state machine. Its states are the PrimaryChangePhase
// constants of the API:
//
//	(none) --primary failed--> Detected --failoverDelay--> Fencing --candidate qualifies--> Promoting --candidate primary + Lease--> Completed
//	(none) --switchover requested--> Promoting
//	Detected --primary recovered--> Aborted
//	Fencing --no candidate qualifies--> Blocked --old primary back with the Lease--> Aborted
//	Blocked --candidate qualifies, or force-failover-to--> Promoting
//	Promoting (failover) --candidate lost, or not primary within promoteTimeout--> Fencing
//	Promoting (switchover) --not primary within promoteTimeout--> Aborted (the old primary is the target again)
//
// A candidate qualifies (rule 1 of the README's High availability section)
// when it received the old primary's final WAL position (a primary that shut
// down cleanly released the Lease with it), or, without one, when its WAL is
// within spec.failover.maxLagOnFailover of the position the old primary
// recorded on the Lease at its last renewal; with synchronous replication
// enough standbys must report to be sure one has every acknowledged commit.
// Blocked makes the old primary the target again: it starts as primary when it
// returns with its volume, and no acknowledged write is discarded while it can
// still be reached.
//
// Fencing sets the target primary to "" (the agents read it from the Lease): the
// old primary, if it still runs, demotes itself; the standbys stop streaming, so
// the candidate is chosen from WAL positions that can no longer move (the
// switchover race of cloudnative-pg #11114 cannot happen). decideHA is pure: it
// maps what the operator observed to the next state, the target primary and the
// role labels to remove at once.

// leaseObs is what the operator read of the primary Lease.
type leaseObs struct {
	Exists    bool
	Holder    string
	RenewTime time.Time
	Duration  time.Duration
	// FinalLSN is the final position of a primary that released the Lease after
	// a clean shutdown (only while nobody holds it).
	FinalLSN string
	// PrimaryLSN is the holder's WAL position at its last renewal.
	PrimaryLSN string
	// ReleasedBy is the pod that last released the Lease ("" from agents that
	// did not record it).
	ReleasedBy string
}

// podObs is what the operator knows of an instance pod.
type podObs struct {
	UID         string
	Terminating bool
	// Ready is the kubelet's Ready condition.
	Ready bool
	// Updated: the pod runs the StatefulSet's update revision.
	Updated bool
}

// haInput is everything decideHA looks at.
type haInput struct {
	Now           time.Time
	StatefulSet   string
	Replicas      int
	FailoverDelay time.Duration
	MaxLagBytes   int64
	// Synchronous is spec.synchronousReplicas: each acknowledged commit is on at
	// least that many of the Replicas-1 standbys.
	Synchronous int
	// FencingTimeout bounds how long Fencing waits for the standbys to report
	// that they stopped streaming (they stop once the old primary released the
	// Lease or was silent for the renew deadline); the ones that did not are then
	// ignored.
	FencingTimeout time.Duration
	Target         string
	// CurrentPrimary is status.currentPrimary: the last pod seen as primary.
	CurrentPrimary string
	Change         *databasev1.PrimaryChange
	Lease          leaseObs
	Pods           map[string]podObs
	Reports        map[string]InstanceReport
	// SwitchoverTo is the switchover request (annotation value, "auto", or "" for
	// none); SwitchoverWhy says who asked (annotation, rolling update, scale-down).
	SwitchoverTo, SwitchoverWhy string
	// MaxLagOnFailover is spec.failover.maxLagOnFailover in bytes.
	MaxLagOnFailover int64
	// ForceFailoverTo is the force-failover-to annotation ("" for none).
	ForceFailoverTo string
	// PromoteTimeout bounds the Promoting phase.
	PromoteTimeout time.Duration
}

// haDecision is what decideHA wants done.
type haDecision struct {
	// Target is the target primary to record (and mirror on the Lease).
	Target string
	// Change is the change in progress (nil: none).
	Change *databasev1.PrimaryChange
	// Finished is set when a change completed or was aborted in this step.
	Finished *databasev1.PrimaryChange
	// LeaseChange is agentapi.ChangeFailover, ChangeSwitchover or "".
	LeaseChange string
	// Unlabel are pods whose role label must be removed now.
	Unlabel []string
	// SwitchoverRefused explains why a requested switchover is not done.
	SwitchoverRefused string
	// Forced is set when a standby is promoted by force-failover-to: the bytes
	// of WAL given up (-1: unknown).
	Forced *forcedFailover
}

// forcedFailover is a promotion that gives up acknowledged WAL on request.
type forcedFailover struct {
	Pod       string
	LostBytes int64
}

func (d haDecision) changed(in haInput) bool {
	return d.Target != in.Target || d.Finished != nil || !samePrimaryChange(d.Change, in.Change)
}

func samePrimaryChange(a, b *databasev1.PrimaryChange) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Kind == b.Kind && a.Phase == b.Phase && a.From == b.From && a.To == b.To && a.Message == b.Message && a.PrimaryLSN == b.PrimaryLSN
}

func (in haInput) report(pod string) *agentapi.Status {
	r, ok := in.Reports[pod]
	if !ok || r.Err != nil || r.Status == nil {
		return nil
	}
	return r.Status
}

// primaryFailure explains why the target primary counts as failed ("" when it
// does not). A primary that answers and holds the Lease is never failed, whatever
// its readiness; a primary whose data is missing waits for the recovery procedure.
func primaryFailure(in haInput) string {
	if in.Target == "" {
		return ""
	}
	if agentapi.HolderPod(in.Lease.Holder) != in.Target && in.CurrentPrimary != in.Target {
		// Never primary yet (bootstrap, or still taking the Lease): nothing to
		// fail over from.
		return ""
	}
	pod, exists := in.Pods[in.Target]
	switch {
	case !exists:
		return fmt.Sprintf("pod %s is gone", in.Target)
	case pod.Terminating:
		return fmt.Sprintf("pod %s is being deleted", in.Target)
	}
	holder := in.Lease.Holder
	if holder != "" && agentapi.HolderPod(holder) == in.Target && holder != agentapi.LeaseHolder(in.Target, pod.UID) {
		return fmt.Sprintf("pod %s was replaced: the Lease is still held by its previous incarnation (%s)", in.Target, holder)
	}
	st := in.report(in.Target)
	if st != nil && refusing(st.State) {
		return ""
	}
	if st != nil && st.Fenced {
		return fmt.Sprintf("%s fenced itself: it could not renew the Lease (%s)", in.Target, st.Message)
	}
	expired := holder != "" && in.Lease.expired(in.Now)
	switch {
	case st == nil && !pod.Ready:
		why := "no answer"
		if r, ok := in.Reports[in.Target]; ok && r.Err != nil {
			why = r.Err.Error()
		}
		return fmt.Sprintf("%s is not ready and its agent does not answer (%s)", in.Target, why)
	case expired && (st == nil || !st.HoldsLease):
		return fmt.Sprintf("the Lease of %s was not renewed for %s", in.Target, in.Now.Sub(in.Lease.RenewTime).Round(time.Second))
	}
	return ""
}

// candidate is a standby that may become primary.
type candidate struct {
	Pod      string
	Timeline int64
	LSN      string
	// Lag is how many bytes of the old primary's WAL it lacks (-1: unknown).
	Lag int64
	// Qualifies: it may be promoted without giving up acknowledged WAL (rule 1).
	Qualifies bool
}

// oldPrimaryPosition is what the candidates are measured against: the final
// position of a primary that released the Lease (exact: final is true), else
// the later of the position recorded when the failover started and the one on
// the Lease ("" when neither is known).
func oldPrimaryPosition(in haInput, c *databasev1.PrimaryChange) (pos string, final bool) {
	l := in.Lease
	if l.Holder == "" && l.FinalLSN != "" && (l.ReleasedBy == "" || l.ReleasedBy == c.From) &&
		(c.PrimaryLSN == "" || agentapi.LaterLSN(l.FinalLSN, c.PrimaryLSN) == l.FinalLSN) {
		// Released by the old primary itself, and never behind what was
		// recorded (the reference never moves backwards).
		return l.FinalLSN, true
	}
	if c.PrimaryLSNIsFinal {
		return c.PrimaryLSN, true
	}
	pos = c.PrimaryLSN
	if l.Holder == "" || agentapi.HolderPod(l.Holder) == c.From {
		pos = agentapi.LaterLSN(pos, l.PrimaryLSN)
	}
	return pos, false
}

// qualify measures each candidate against the old primary's position.
func qualify(in haInput, c *databasev1.PrimaryChange, cands []candidate) []candidate {
	pos, final := oldPrimaryPosition(in, c)
	for i := range cands {
		cd := &cands[i]
		switch {
		case pos == "":
			// No position known (agents that record none): the most
			// advanced standby, as before this rule.
			cd.Lag, cd.Qualifies = -1, true
		case agentapi.LSNDiff(cd.LSN, "0/0") <= 0:
			// A standby that reports no position cannot be measured.
			cd.Lag, cd.Qualifies = -1, false
		case final:
			// The shutdown checkpoint record starts at pos: received past it.
			cd.Lag = max(0, agentapi.LSNDiff(pos, cd.LSN))
			cd.Qualifies = agentapi.LaterLSN(cd.LSN, pos) == cd.LSN && cd.LSN != pos
			if !cd.Qualifies && cd.Lag == 0 {
				cd.Lag = 1
			}
		default:
			cd.Lag = max(0, agentapi.LSNDiff(pos, cd.LSN))
			cd.Qualifies = cd.Lag <= in.MaxLagOnFailover
		}
	}
	return cands
}

// describeCandidates lists the candidates and their lag for a message.
func describeCandidates(cands []candidate) string {
	var parts []string
	for _, c := range cands {
		lag := "lag unknown"
		if c.Lag >= 0 {
			lag = fmt.Sprintf("lacks %d bytes", c.Lag)
		}
		parts = append(parts, fmt.Sprintf("%s (received %s, %s)", c.Pod, orNone(c.LSN), lag))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func orNone(s string) string {
	if s == "" {
		return "nothing"
	}
	return s
}

// candidates are the running standbys (excluding except, and those that
// diverged from the primary's timeline) of an ordinal below Replicas, best first: the highest timeline, then the most WAL received, then
// the name.
func candidates(in haInput, except string) []candidate {
	var out []candidate
	for pod := range in.Pods {
		st := in.report(pod)
		if pod == except || st == nil || !st.Running || st.Role != agentapi.RoleReplica || refusing(st.State) ||
			agentapi.Ordinal(pod) < 0 || agentapi.Ordinal(pod) >= in.Replicas || in.Pods[pod].Terminating {
			continue
		}
		if st.Diverged {
			// Its history is not the primary's (a point-in-time restore or an
			// asynchronous failover branched off before its position):
			// promoting it would bring back what was given up.
			continue
		}
		out = append(out, candidate{Pod: pod, Timeline: st.Timeline, LSN: agentapi.LaterLSN(st.ReceiveLSN, st.ReplayLSN)})
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Timeline != b.Timeline {
			return a.Timeline > b.Timeline
		}
		if a.LSN != b.LSN {
			return agentapi.LaterLSN(a.LSN, b.LSN) == a.LSN
		}
		return a.Pod < b.Pod
	})
	return out
}

// writablePrimaries are the instances other than except that report a writable
// primary.
func writablePrimaries(in haInput, except string) []string {
	var out []string
	for pod := range in.Pods {
		if st := in.report(pod); pod != except && st != nil && st.Role == agentapi.RolePrimary && st.Writable {
			out = append(out, pod)
		}
	}
	sort.Strings(out)
	return out
}

// promoted reports whether pod is primary as the operator requires before it
// labels it: it reports primary, holds the Lease, and the Lease names it.
func promoted(in haInput, pod string) bool {
	st := in.report(pod)
	p, ok := in.Pods[pod]
	return st != nil && ok && st.Role == agentapi.RolePrimary && st.HoldsLease && in.Lease.Holder == agentapi.LeaseHolder(pod, p.UID)
}

// decideHA is the state machine's transition function.
func decideHA(in haInput) haDecision {
	d := haDecision{Target: in.Target, Change: in.Change}
	now := metav1.NewTime(in.Now.Truncate(time.Second))
	phase := func(c *databasev1.PrimaryChange, p databasev1.PrimaryChangePhase, msg string) *databasev1.PrimaryChange {
		n := *c
		if n.Phase != p {
			n.PhaseSince = now
		}
		n.Phase, n.Message = p, msg
		return &n
	}
	finish := func(c *databasev1.PrimaryChange, p databasev1.PrimaryChangePhase, msg string) {
		f := phase(c, p, msg)
		f.FinishedAt = &now
		d.Finished, d.Change = f, nil
	}

	if in.Target == "" && in.Change == nil {
		// First target: the instance already primary (a Database created before
		// targets were recorded), else ordinal 0.
		d.Target = in.StatefulSet + "-0"
		for pod := range in.Pods {
			if st := in.report(pod); st != nil && st.Role == agentapi.RolePrimary && st.Writable {
				d.Target = pod
			}
		}
		return d
	}

	if in.Change == nil {
		if why := primaryFailure(in); why != "" && in.Replicas > 1 {
			c := &databasev1.PrimaryChange{Kind: databasev1.PrimaryChangeFailover, Phase: databasev1.PrimaryChangeDetected,
				From: in.Target, Message: "Primary failed: " + why, StartedAt: now, PhaseSince: now}
			c = withPrimaryLSN(in, c)
			d.Change = c
			d.Unlabel = []string{in.Target}
			if in.FailoverDelay > 0 {
				c.Message += fmt.Sprintf("; failing over after %s unless it recovers", in.FailoverDelay)
				return d
			}
			in.Change = c
		} else if in.SwitchoverTo != "" {
			return decideSwitchover(in, d, now)
		} else {
			return d
		}
	}

	c := in.Change
	switch c.Phase {
	case databasev1.PrimaryChangeDetected:
		why := primaryFailure(in)
		if why == "" {
			finish(c, databasev1.PrimaryChangeAborted, fmt.Sprintf("Primary %s recovered within the failover delay", c.From))
			return d
		}
		d.Unlabel = []string{c.From}
		if in.Now.Sub(c.StartedAt.Time) < in.FailoverDelay {
			return d
		}
		d.Target = ""
		d.LeaseChange = agentapi.ChangeFailover
		c = withPrimaryLSN(in, c)
		d.Change = phase(c, databasev1.PrimaryChangeFencing, "Primary failed: "+strings.TrimPrefix(c.Message, "Primary failed: ")+
			"; no instance is the target: the standbys stop streaming before the most advanced one is chosen")
		return d

	case databasev1.PrimaryChangeFencing:
		d.Target, d.LeaseChange = "", agentapi.ChangeFailover
		d.Unlabel = []string{c.From}
		c = withPrimaryLSN(in, c)
		if w := writablePrimaries(in, ""); len(w) > 0 {
			d.Change = phase(c, databasev1.PrimaryChangeFencing, fmt.Sprintf("Waiting for %s to stop accepting writes before a standby is promoted", strings.Join(w, ", ")))
			return d
		}
		if oldPrimaryHoldsLiveLease(in, c.From) && in.Now.Sub(c.PhaseSince.Time) < in.Lease.Duration+demotionBound {
			// A demoting old primary (a graceful deletion) renews the Lease
			// until its clean shutdown, then releases it with its exact final
			// position; its last renewal's position may miss the last commits.
			// It is bounded: the demotion ends within its checkpoint and
			// shutdown bounds, else the Lease expires.
			d.Change = phase(c, databasev1.PrimaryChangeFencing, fmt.Sprintf("Waiting for %s to release the Lease with its final WAL position, or for its Lease to expire", c.From))
			return d
		}
		var streaming []string
		for pod := range in.Pods {
			if st := in.report(pod); st != nil && st.Role == agentapi.RoleReplica && (st.WALReceiverStatus == "streaming" || st.Target != "") {
				streaming = append(streaming, pod)
			}
		}
		sort.Strings(streaming)
		if len(streaming) > 0 && in.Now.Sub(c.PhaseSince.Time) < in.FencingTimeout {
			d.Change = phase(c, databasev1.PrimaryChangeFencing, fmt.Sprintf("Waiting for standbys %s to stop streaming", strings.Join(streaming, ", ")))
			return d
		}
		return choosePromotion(in, d, c, phase)

	case databasev1.PrimaryChangeBlocked:
		// The old primary is the target again: it resumes when it returns.
		d.Target, d.LeaseChange = c.From, ""
		if promoted(in, c.From) {
			finish(c, databasev1.PrimaryChangeAborted, fmt.Sprintf("Failover aborted: %s returned as primary with its data; no standby had all of its acknowledged WAL", c.From))
			return d
		}
		if w := writablePrimaries(in, ""); len(w) > 0 {
			return d
		}
		if p, ok := in.Pods[c.From]; ok && in.Lease.Holder == agentapi.LeaseHolder(c.From, p.UID) {
			// The returning old primary took the Lease back and is starting.
			return d
		}
		for pod := range in.Pods {
			if st := in.report(pod); st != nil && st.Role == agentapi.RoleReplica && st.WALReceiverStatus == "streaming" {
				// Streaming from the returning old primary: it is about to
				// resume, positions are moving.
				return d
			}
		}
		return choosePromotion(in, d, c, phase)

	case databasev1.PrimaryChangePromoting:
		d.Target = c.To
		d.LeaseChange = agentapi.ChangeFailover
		if c.Kind == databasev1.PrimaryChangeSwitchover {
			d.LeaseChange = agentapi.ChangeSwitchover
		}
		if c.From != c.To {
			d.Unlabel = []string{c.From}
		}
		if promoted(in, c.To) {
			kind := "Failover"
			if c.Kind == databasev1.PrimaryChangeSwitchover {
				kind = "Switchover"
			}
			finish(c, databasev1.PrimaryChangeCompleted, fmt.Sprintf("%s from %s to %s completed in %s", kind, c.From, c.To, in.Now.Sub(c.StartedAt.Time).Round(time.Second)))
			d.LeaseChange = ""
			return d
		}
		p, exists := in.Pods[c.To]
		if old, ok := in.Pods[c.From]; (!exists || p.Terminating) && c.Kind == databasev1.PrimaryChangeSwitchover && ok && !old.Terminating {
			// The switchover's target is gone before it promoted; the old
			// primary, which stopped cleanly with all its WAL, is the target
			// again (a failover would measure the standbys against a
			// position from before its last commits).
			d.Target, d.LeaseChange, d.Unlabel = c.From, "", nil
			finish(c, databasev1.PrimaryChangeAborted, fmt.Sprintf("Switchover to %s aborted: %s disappeared before it was promoted; %s is the primary again", c.To, c.To, c.From))
			return d
		}
		if !exists || p.Terminating {
			// The candidate is gone before it promoted: choose again.
			d.Target, d.LeaseChange = "", agentapi.ChangeFailover
			n := phase(c, databasev1.PrimaryChangeFencing, fmt.Sprintf("Candidate %s disappeared before it was promoted; choosing again", c.To))
			n.Kind, n.To = databasev1.PrimaryChangeFailover, ""
			d.Change = n
			return d
		}
		if in.PromoteTimeout > 0 && in.Now.Sub(c.PhaseSince.Time) >= in.PromoteTimeout {
			// Rule 4: no phase waits forever.
			if c.Kind == databasev1.PrimaryChangeSwitchover {
				if old, ok := in.Pods[c.From]; ok && !old.Terminating {
					// The old primary released the Lease after its clean
					// shutdown: it is the target again and starts as primary.
					d.Target, d.LeaseChange, d.Unlabel = c.From, "", nil
					finish(c, databasev1.PrimaryChangeAborted, fmt.Sprintf("Switchover to %s aborted: not primary within %s (%s); %s is the primary again",
						c.To, in.PromoteTimeout, promotingWhy(in, c.To), c.From))
					return d
				}
			}
			d.Target, d.LeaseChange = "", agentapi.ChangeFailover
			n := phase(c, databasev1.PrimaryChangeFencing, fmt.Sprintf("Candidate %s was not primary within %s (%s); choosing again", c.To, in.PromoteTimeout, promotingWhy(in, c.To)))
			n.Kind, n.To = databasev1.PrimaryChangeFailover, ""
			d.Change = n
			return d
		}
		msg := fmt.Sprintf("Waiting for %s to take the Lease and promote", c.To)
		if why := promotingWhy(in, c.To); why != "" {
			msg += ": " + why
		}
		d.Change = phase(c, databasev1.PrimaryChangePromoting, msg)
		return d
	}
	return d
}

// promotingWhy is what the candidate reports while it is not primary yet.
func promotingWhy(in haInput, pod string) string {
	if st := in.report(pod); st != nil {
		return st.Message
	}
	return "no answer"
}

// demotionBound is how long a demoting primary may take at most (the agent's
// checkpoint 20 s, fast shutdown 30 s, reading and releasing 25 s), with a
// margin: Fencing waits no longer for its release, whatever the clocks say.
const demotionBound = 90 * time.Second

// oldPrimaryHoldsLiveLease reports whether an incarnation of pod holds the
// Lease and renewed it within its duration.
func oldPrimaryHoldsLiveLease(in haInput, pod string) bool {
	l := in.Lease
	return l.Holder != "" && agentapi.HolderPod(l.Holder) == pod && !l.RenewTime.IsZero() && !l.expired(in.Now)
}

// expired reports whether the Lease's last renewal is older than its duration
// (false when it was never renewed).
func (l leaseObs) expired(now time.Time) bool {
	return !l.RenewTime.IsZero() && now.Sub(l.RenewTime) > l.Duration
}

// withPrimaryLSN records on the change the old primary's position as the
// Lease has it (the later of the recorded one and the Lease's).
func withPrimaryLSN(in haInput, c *databasev1.PrimaryChange) *databasev1.PrimaryChange {
	pos, final := oldPrimaryPosition(in, c)
	if pos == c.PrimaryLSN && final == c.PrimaryLSNIsFinal {
		return c
	}
	n := *c
	n.PrimaryLSN, n.PrimaryLSNIsFinal = pos, final
	return &n
}

type phaseFunc func(c *databasev1.PrimaryChange, p databasev1.PrimaryChangePhase, msg string) *databasev1.PrimaryChange

// choosePromotion picks the standby to promote once the positions are final:
// the most advanced that qualifies (rule 1), or the one named by
// force-failover-to; with none, the failover is Blocked and the old primary is
// the target again.
func choosePromotion(in haInput, d haDecision, c *databasev1.PrimaryChange, phase phaseFunc) haDecision {
	cands := qualify(in, c, candidates(in, c.From))
	if in.ForceFailoverTo != "" {
		for _, cd := range cands {
			if cd.Pod != in.ForceFailoverTo {
				continue
			}
			d.Target, d.LeaseChange, d.Unlabel = cd.Pod, agentapi.ChangeFailover, []string{c.From}
			d.Forced = &forcedFailover{Pod: cd.Pod, LostBytes: cd.Lag}
			n := phase(c, databasev1.PrimaryChangePromoting, fmt.Sprintf("Promoting %s on request (%s), giving up the WAL it lacks: %s",
				cd.Pod, databasev1.AnnotationForceFailoverTo, describeCandidates([]candidate{cd})))
			n.To = cd.Pod
			d.Change = n
			return d
		}
	}
	blocked := func(why string) haDecision {
		d.Target, d.LeaseChange, d.Unlabel = c.From, "", nil
		resume := fmt.Sprintf("%s is the target again and resumes as primary when it returns with its volume", c.From)
		if st := in.report(c.From); st != nil && refusing(st.State) {
			resume = fmt.Sprintf("%s is the target again but cannot resume: it reports %s (%s)", c.From, st.State, st.Message)
		}
		d.Change = phase(c, databasev1.PrimaryChangeBlocked, fmt.Sprintf("Failover blocked: %s. Candidates: %s. %s; "+
			"to promote a standby anyway and give up the WAL it lacks: kubectl annotate database <name> %s=<pod>",
			why, describeCandidates(cands), resume, databasev1.AnnotationForceFailoverTo))
		return d
	}
	if len(cands) == 0 {
		return blocked(fmt.Sprintf("no standby of ordinal below %d reports running in recovery", in.Replicas))
	}
	if need := in.Replicas - in.Synchronous; in.Synchronous > 0 && len(cands) < need {
		// Every acknowledged commit is on Synchronous of the Replicas-1
		// standbys: only Replicas-Synchronous of them, compared, are sure to
		// include one that has them all.
		return blocked(fmt.Sprintf("synchronous replication (%d): %d standby(s) report, %d are needed to be sure the promoted one has every acknowledged commit",
			in.Synchronous, len(cands), need))
	}
	var best *candidate
	if in.Synchronous > 0 {
		// Every acknowledged commit is on the quorum and enough standbys
		// report: the most advanced has them all, whatever WAL of
		// uncommitted work it lacks.
		best = &cands[0]
	}
	for i := range cands {
		if best == nil && cands[i].Qualifies {
			best = &cands[i]
			break
		}
	}
	if best == nil {
		pos, final := oldPrimaryPosition(in, c)
		if final {
			return blocked(fmt.Sprintf("no standby received the final WAL position %s of %s's clean shutdown", pos, c.From))
		}
		return blocked(fmt.Sprintf("no standby is within maxLagOnFailover (%d bytes) of %s's last recorded position %s", in.MaxLagOnFailover, c.From, pos))
	}
	d.Target, d.LeaseChange, d.Unlabel = best.Pod, agentapi.ChangeFailover, []string{c.From}
	n := phase(c, databasev1.PrimaryChangePromoting, fmt.Sprintf("Promoting %s: the most advanced qualifying standby (timeline %d, WAL received up to %s)", best.Pod, best.Timeline, best.LSN))
	n.To = best.Pod
	d.Change = n
	return d
}

// decideSwitchover starts a requested switchover, or refuses it.
func decideSwitchover(in haInput, d haDecision, now metav1.Time) haDecision {
	refuse := func(format string, args ...any) haDecision {
		d.SwitchoverRefused = fmt.Sprintf(format, args...)
		return d
	}
	if !promoted(in, in.Target) {
		return refuse("the primary %s is not running with the Lease", in.Target)
	}
	to := in.SwitchoverTo
	if to == databasev1.SwitchoverAuto {
		to = ""
		for _, c := range candidates(in, in.Target) {
			if healthyStandby(in, c.Pod) == "" {
				to = c.Pod
				break
			}
		}
		if to == "" {
			return refuse("no standby is streaming within the lag threshold")
		}
	}
	if to == in.Target {
		return refuse("%s is already the primary", to)
	}
	if why := healthyStandby(in, to); why != "" {
		return refuse("%s", why)
	}
	d.Target = to
	d.LeaseChange = agentapi.ChangeSwitchover
	d.Unlabel = []string{in.Target}
	d.Change = &databasev1.PrimaryChange{Kind: databasev1.PrimaryChangeSwitchover, Phase: databasev1.PrimaryChangePromoting,
		From: in.Target, To: to, StartedAt: now, PhaseSince: now,
		Message: fmt.Sprintf("Switchover to %s (%s): the primary checkpoints, stops and releases the Lease; %s promotes once it has received its final WAL", to, in.SwitchoverWhy, to)}
	// Should the switchover become a failover (the old primary dies before
	// its clean shutdown), its candidates are measured against this.
	d.Change = withPrimaryLSN(in, d.Change)
	return d
}

// healthyStandby explains why pod cannot be a switchover target ("" when it can).
func healthyStandby(in haInput, pod string) string {
	p, ok := in.Pods[pod]
	if !ok || p.Terminating {
		return fmt.Sprintf("%s is not an instance of this Database", pod)
	}
	if o := agentapi.Ordinal(pod); o < 0 || o >= in.Replicas {
		return fmt.Sprintf("%s is beyond spec.replicas (%d)", pod, in.Replicas)
	}
	st := in.report(pod)
	if st == nil || !st.Running || st.Role != agentapi.RoleReplica {
		return fmt.Sprintf("%s is not a running standby", pod)
	}
	primary := in.report(in.Target)
	if primary == nil {
		return "the primary does not report"
	}
	for _, r := range primary.Replicas {
		if r.ApplicationName == pod {
			if r.State != "streaming" {
				return fmt.Sprintf("%s is not streaming (%s)", pod, r.State)
			}
			if in.MaxLagBytes > 0 && r.LagBytes > in.MaxLagBytes {
				return fmt.Sprintf("%s lags %d bytes behind, above maxReplicationLag", pod, r.LagBytes)
			}
			return ""
		}
	}
	return fmt.Sprintf("%s is not connected to the primary", pod)
}
