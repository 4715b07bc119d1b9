package scale

import (
	"context"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/controller/database"
)

// ScriptedAgents play the instance agents of kwok's pods, which run nothing:
// each running pod reports a healthy PostgreSQL of its image's version,
// primary when it holds the Database's Lease as its target and a streaming
// standby otherwise, with
// the configuration the operator published loaded. It is the same interface
// the envtest suites script (database.InstanceClient).
//
// The Lease is taken, renewed and released by the agents' own Lease code,
// which the benchmark runs for every pod (harness.runLeaseAgents); the
// reports follow it: the pod that holds the Lease is the primary. Reads come
// from the operator's own cache (its label-selected Leases and ConfigMaps),
// so the scripted agents add no API request to the operator's.
type ScriptedAgents struct {
	Cache client.Reader

	slots sync.Map // namespace/pod -> []string: the slots the operator set
}

var _ database.InstanceClient = (*ScriptedAgents)(nil)

// Statuses reports every running pod.
func (a *ScriptedAgents) Statuses(ctx context.Context, pods []corev1.Pod, _ database.AgentAuth) map[string]database.InstanceReport {
	out := make(map[string]database.InstanceReport, len(pods))
	running := map[string]bool{}
	for _, p := range pods {
		if p.Status.PodIP != "" && p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			running[p.Name] = true
		}
	}
	for i := range pods {
		p := &pods[i]
		if !running[p.Name] {
			continue
		}
		st, err := a.status(ctx, p, running)
		out[p.Name] = database.InstanceReport{Status: st, Err: err}
	}
	return out
}

func (a *ScriptedAgents) status(ctx context.Context, p *corev1.Pod, running map[string]bool) (*agentapi.Status, error) {
	db := p.Labels[database.LabelDatabase]
	var lease coordinationv1.Lease
	if err := a.Cache.Get(ctx, types.NamespacedName{Namespace: p.Namespace, Name: db + "-primary"}, &lease); err != nil {
		return nil, fmt.Errorf("agent of %s: reading the Lease: %w", p.Name, err)
	}
	intent := agentapi.ReadLeaseIntent(lease.Annotations)
	target := intent.Target
	if target == "" && intent.Change == "" {
		// As a real agent does until the operator names the first target.
		return &agentapi.Status{Pod: p.Name, State: agentapi.StateWaitingForLease, Message: "waiting for the primary Lease to name a target"}, nil
	}
	major, minor := imageVersion(p)
	st := &agentapi.Status{
		Pod: p.Name, Running: true, State: agentapi.StateRunning, Ready: true, Timeline: 1,
		ServerVersion: fmt.Sprintf("%d.%d", major, minor), ServerVersionNum: major*10000 + minor,
		DataVersion: major, BinaryVersion: major, SystemIdentifier: systemID(p.Namespace, db),
		Target: target, CurrentLSN: "0/3000060", WALSegmentSize: 16 << 20,
	}
	var cm corev1.ConfigMap
	if err := a.Cache.Get(ctx, types.NamespacedName{Namespace: p.Namespace, Name: db + "-config"}, &cm); err == nil {
		st.ConfigHash = agentapi.ConfigHash([]byte(cm.Data[agentapi.UserConfigFile]))
	}
	// The Lease itself is the simulated agents' (harness.runLeaseAgents):
	// the pod that holds it is the primary.
	holder := agentapi.LeaseHolder(p.Name, string(p.UID))
	if p.Name != target || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != holder {
		st.Role, st.InRecovery, st.WALReceiverStatus, st.Following = agentapi.RoleReplica, true, "streaming", target
		st.ReceiveLSN, st.ReplayLSN = st.CurrentLSN, st.CurrentLSN
		return st, nil
	}
	st.Role, st.Writable, st.HoldsLease, st.Bootstrapped = agentapi.RolePrimary, true, true, true
	active := map[string]bool{}
	for name := range running {
		active[agentapi.SlotName(name)] = true
		if name != p.Name && strings.HasPrefix(name, db+"-") {
			st.Replicas = append(st.Replicas, agentapi.ReplicaStatus{ApplicationName: name, State: "streaming"})
		}
	}
	if v, ok := a.slots.Load(p.Namespace + "/" + p.Name); ok {
		for _, name := range v.([]string) {
			st.Slots = append(st.Slots, agentapi.SlotStatus{Name: name, Active: active[name], WALStatus: "reserved", RestartLSN: st.CurrentLSN})
		}
	}
	return st, nil
}

// imageVersion is the major and minor of the pod's postgres image tag
// ("postgres:17" runs 17.6, "postgres:17.7" 17.7).
func imageVersion(p *corev1.Pod) (int, int) {
	for _, c := range p.Spec.Containers {
		if c.Name != "postgres" {
			continue
		}
		tag := c.Image[strings.LastIndex(c.Image, ":")+1:]
		maj, mnr, _ := strings.Cut(tag, ".")
		major, _ := strconv.Atoi(maj)
		minor, err := strconv.Atoi(mnr)
		if err != nil {
			minor = 6
		}
		return major, minor
	}
	return 0, 0
}

// systemID is a stable system identifier per Database.
func systemID(ns, db string) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(ns + "/" + db))
	return strconv.FormatUint(h.Sum64()>>1, 10)
}

// SetSlots keeps the primary's slots; Reclone and Recover succeed: the
// scripted instances are healthy.
func (a *ScriptedAgents) SetSlots(_ context.Context, pod *corev1.Pod, _ database.AgentAuth, names []string) error {
	a.slots.Store(pod.Namespace+"/"+pod.Name, append([]string(nil), names...))
	return nil
}

func (a *ScriptedAgents) Reclone(context.Context, *corev1.Pod, database.AgentAuth) error { return nil }

// RecoverInPlace is never asked of scripted agents (no Restores run).
func (a *ScriptedAgents) RecoverInPlace(context.Context, *corev1.Pod, database.AgentAuth, agentapi.InPlaceRecoveryRequest) error {
	return nil
}

func (a *ScriptedAgents) Recover(context.Context, *corev1.Pod, database.AgentAuth, string) error {
	return nil
}
