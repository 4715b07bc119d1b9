package database

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
	corev1 "k8s.io/api/core/v1"
)

// InstanceReport is what the operator learnt from one instance's agent.
type InstanceReport struct {
	Status *agentapi.Status
	Err    error
}

// AgentAuth is how the operator authenticates to one Database's agents.
type AgentAuth struct {
	// HTTPS is the mutual-TLS client for agents that serve HTTPS (pods started
	// with a TLS directory): it trusts only the Database's CA and presents the
	// operator's client certificate.
	HTTPS *http.Client
	// Tokens are the bearer tokens (current first, then the previous one while
	// the agents may still hold it) for agents of pods started without TLS,
	// which an operator upgrade replaces.
	Tokens []string
}

// InstanceClient talks to the instance agents: it reads their status and gives
// them the few instructions only the operator can decide (replication slots,
// re-clone, recovery of a primary).
type InstanceClient interface {
	Statuses(ctx context.Context, pods []corev1.Pod, auth AgentAuth) map[string]InstanceReport
	SetSlots(ctx context.Context, pod *corev1.Pod, auth AgentAuth, names []string) error
	Reclone(ctx context.Context, pod *corev1.Pod, auth AgentAuth) error
	Recover(ctx context.Context, pod *corev1.Pod, auth AgentAuth, source string) error
	RecoverInPlace(ctx context.Context, pod *corev1.Pod, auth AgentAuth, req agentapi.InPlaceRecoveryRequest) error
}

// HTTPInstanceClient calls agents over HTTP at <podIP>:<AgentPort>.
type HTTPInstanceClient struct {
	HTTPClient *http.Client
	// Timeout bounds each request; Reconcile never waits longer than this.
	Timeout time.Duration
}

// NewHTTPInstanceClient returns a client with a short per-request timeout.
func NewHTTPInstanceClient() *HTTPInstanceClient {
	return &HTTPInstanceClient{
		HTTPClient: &http.Client{Timeout: 5 * time.Second},
		Timeout:    5 * time.Second,
	}
}

// agentEndpoint is how to reach a pod's agent (its protocol annotation) and
// its base URL.
func agentEndpoint(pod *corev1.Pod) (agentapi.Endpoint, string, error) {
	if pod.Status.PodIP == "" {
		return agentapi.Endpoint{}, "", fmt.Errorf("pod %s has no IP", pod.Name)
	}
	e, err := agentapi.PodEndpoint(pod)
	if err != nil {
		return agentapi.Endpoint{}, "", err
	}
	return e, e.URL(pod.Status.PodIP), nil
}

// withAuth calls f with the agent's base URL and the mutual-TLS client for a
// pod that serves HTTPS, else (a pod of the previous release started without
// TLS) with each token until one is not refused.
func (s *HTTPInstanceClient) withAuth(ctx context.Context, pod *corev1.Pod, auth AgentAuth, f func(ctx context.Context, c *agentapi.Client, base string) error) error {
	e, base, err := agentEndpoint(pod)
	if err != nil {
		return err
	}
	if e.TLS {
		if auth.HTTPS == nil {
			return errors.New("no TLS client for the agent (the Database's CA is not available)")
		}
		rctx, cancel := context.WithTimeout(ctx, s.Timeout)
		defer cancel()
		return f(rctx, agentapi.NewClient(auth.HTTPS, ""), base)
	}
	err = errors.New("no agent token")
	for _, t := range auth.Tokens {
		if t == "" {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, s.Timeout)
		err = f(rctx, agentapi.NewClient(s.HTTPClient, t), base)
		cancel()
		if !errors.Is(err, agentapi.ErrUnauthorized) {
			return err
		}
	}
	return err
}

// Statuses queries all pods concurrently.
func (s *HTTPInstanceClient) Statuses(ctx context.Context, pods []corev1.Pod, auth AgentAuth) map[string]InstanceReport {
	out := make(map[string]InstanceReport, len(pods))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range pods {
		pod := &pods[i]
		if pod.Status.PodIP == "" || pod.DeletionTimestamp != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var st *agentapi.Status
			err := s.withAuth(ctx, pod, auth, func(ctx context.Context, c *agentapi.Client, base string) error {
				var err error
				st, err = c.GetStatus(ctx, base)
				return err
			})
			if err != nil {
				err = fmt.Errorf("querying agent of %s: %w", pod.Name, err)
			}
			mu.Lock()
			out[pod.Name] = InstanceReport{Status: st, Err: err}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// SetSlots sets the primary's replication slots.
func (s *HTTPInstanceClient) SetSlots(ctx context.Context, pod *corev1.Pod, auth AgentAuth, names []string) error {
	return s.withAuth(ctx, pod, auth, func(ctx context.Context, c *agentapi.Client, base string) error { return c.SetSlots(ctx, base, names) })
}

// Reclone asks a standby to clone the primary again.
func (s *HTTPInstanceClient) Reclone(ctx context.Context, pod *corev1.Pod, auth AgentAuth) error {
	return s.withAuth(ctx, pod, auth, func(ctx context.Context, c *agentapi.Client, base string) error { return c.Reclone(ctx, base) })
}

// RecoverInPlace asks the primary to restore its cluster in place to a point
// in time (or to undo such a restore).
func (s *HTTPInstanceClient) RecoverInPlace(ctx context.Context, pod *corev1.Pod, auth AgentAuth, req agentapi.InPlaceRecoveryRequest) error {
	return s.withAuth(ctx, pod, auth, func(ctx context.Context, c *agentapi.Client, base string) error {
		return c.RecoverInPlace(ctx, base, req)
	})
}

// Recover asks a primary whose data is missing to rebuild it from source.
func (s *HTTPInstanceClient) Recover(ctx context.Context, pod *corev1.Pod, auth AgentAuth, source string) error {
	return s.withAuth(ctx, pod, auth, func(ctx context.Context, c *agentapi.Client, base string) error { return c.Recover(ctx, base, source) })
}
