package database

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/example/postgres-operator/internal/instance"
)

// InstanceReport is what the operator learnt from one instance's agent.
type InstanceReport struct {
	Status *instance.Status
	Err    error
}

// InstanceClient talks to the instance agents: it reads their status and gives
// them the few instructions only the operator can decide (replication slots,
// re-clone, recovery of a primary). Every call tries the tokens in order: the
// current agent token first, then the previous one while the agents still hold it.
type InstanceClient interface {
	Statuses(ctx context.Context, pods []corev1.Pod, tokens []string) map[string]InstanceReport
	SetSlots(ctx context.Context, pod *corev1.Pod, tokens []string, names []string) error
	Reclone(ctx context.Context, pod *corev1.Pod, tokens []string) error
	Recover(ctx context.Context, pod *corev1.Pod, tokens []string, source string) error
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

func agentURL(pod *corev1.Pod) (string, error) {
	if pod.Status.PodIP == "" {
		return "", fmt.Errorf("pod %s has no IP", pod.Name)
	}
	return "http://" + net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(instance.AgentPort)), nil
}

// withTokens calls f with each token until one is not refused.
func (s *HTTPInstanceClient) withTokens(ctx context.Context, tokens []string, f func(ctx context.Context, c *instance.Client) error) error {
	err := errors.New("no agent token")
	for _, t := range tokens {
		if t == "" {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, s.Timeout)
		err = f(rctx, instance.NewClient(s.HTTPClient, t))
		cancel()
		if !errors.Is(err, instance.ErrUnauthorized) {
			return err
		}
	}
	return err
}

// Statuses queries all pods concurrently.
func (s *HTTPInstanceClient) Statuses(ctx context.Context, pods []corev1.Pod, tokens []string) map[string]InstanceReport {
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
			base, _ := agentURL(pod)
			var st *instance.Status
			err := s.withTokens(ctx, tokens, func(ctx context.Context, c *instance.Client) error {
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
func (s *HTTPInstanceClient) SetSlots(ctx context.Context, pod *corev1.Pod, tokens []string, names []string) error {
	base, err := agentURL(pod)
	if err != nil {
		return err
	}
	return s.withTokens(ctx, tokens, func(ctx context.Context, c *instance.Client) error { return c.SetSlots(ctx, base, names) })
}

// Reclone asks a standby to clone the primary again.
func (s *HTTPInstanceClient) Reclone(ctx context.Context, pod *corev1.Pod, tokens []string) error {
	base, err := agentURL(pod)
	if err != nil {
		return err
	}
	return s.withTokens(ctx, tokens, func(ctx context.Context, c *instance.Client) error { return c.Reclone(ctx, base) })
}

// Recover asks a primary whose data is missing to rebuild it from source.
func (s *HTTPInstanceClient) Recover(ctx context.Context, pod *corev1.Pod, tokens []string, source string) error {
	base, err := agentURL(pod)
	if err != nil {
		return err
	}
	return s.withTokens(ctx, tokens, func(ctx context.Context, c *instance.Client) error { return c.Recover(ctx, base, source) })
}
