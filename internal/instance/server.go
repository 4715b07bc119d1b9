package instance

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const requestTimeout = 3 * time.Second

// serve starts the HTTP server: probes for the kubelet without authentication
// (they reveal only ok/not ok), the status endpoint with a bearer token.
func (a *Agent) serve() (*http.Server, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathHealthz, func(w http.ResponseWriter, _ *http.Request) {
		if a.exited.Load() {
			http.Error(w, "postgres exited", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	// Ready: PostgreSQL answers SELECT 1 over the socket and, on a primary, the
	// roles and database of the Secrets are in place.
	ready := func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		if a.exited.Load() || !a.setUp.Load() || !a.accepting(ctx) {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}
	mux.HandleFunc("GET "+PathReadyz, ready)
	mux.HandleFunc("GET "+PathStartup, ready)
	mux.HandleFunc("GET "+PathStatus, func(w http.ResponseWriter, r *http.Request) {
		if !a.authorized(r) {
			w.Header().Set("WWW-Authenticate", "Bearer")
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(a.status(ctx))
	})

	ln, err := net.Listen("tcp", net.JoinHostPort(a.cfg.AgentAddress, strconv.Itoa(a.cfg.AgentPort)))
	if err != nil {
		return nil, fmt.Errorf("agent HTTP listener: %w", err)
	}
	a.addr.Store(ln.Addr())
	close(a.ready)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("agent HTTP server stopped", "error", err.Error())
		}
	}()
	return srv, nil
}

func (a *Agent) authorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), a.token) == 1
}

// Client reads instance status from agents.
type Client struct {
	http  *http.Client
	token string
}

// NewClient returns a client authenticating with token.
func NewClient(h *http.Client, token string) *Client {
	if h == nil {
		h = &http.Client{Timeout: requestTimeout}
	}
	return &Client{http: h, token: token}
}

// GetStatus returns the status of the agent at baseURL (http://host:port).
func (c *Client) GetStatus(ctx context.Context, baseURL string) (*Status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(baseURL, "/")+PathStatus, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent answered %s", resp.Status)
	}
	var st Status
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 1<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("decoding agent status: %w", err)
	}
	return &st, nil
}
