package database

import (
	"context"
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

// InstanceStatusSource asks the agents of pods for their status. The production
// implementation calls each agent's authenticated /status endpoint.
type InstanceStatusSource interface {
	Statuses(ctx context.Context, pods []corev1.Pod, token string) map[string]InstanceReport
}

// HTTPInstanceStatusSource queries agents over HTTP at <podIP>:<AgentPort>.
type HTTPInstanceStatusSource struct {
	HTTPClient *http.Client
	// Timeout bounds each request; Reconcile never waits longer than this.
	Timeout time.Duration
}

// NewHTTPInstanceStatusSource returns a source with a short per-request timeout.
func NewHTTPInstanceStatusSource() *HTTPInstanceStatusSource {
	return &HTTPInstanceStatusSource{
		HTTPClient: &http.Client{Timeout: 3 * time.Second},
		Timeout:    3 * time.Second,
	}
}

// Statuses queries all pods concurrently.
func (s *HTTPInstanceStatusSource) Statuses(ctx context.Context, pods []corev1.Pod, token string) map[string]InstanceReport {
	out := make(map[string]InstanceReport, len(pods))
	var mu sync.Mutex
	var wg sync.WaitGroup
	c := instance.NewClient(s.HTTPClient, token)
	for i := range pods {
		pod := &pods[i]
		if pod.Status.PodIP == "" || pod.DeletionTimestamp != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, s.Timeout)
			defer cancel()
			base := "http://" + net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(instance.AgentPort))
			st, err := c.GetStatus(rctx, base)
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
