package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Restore sends the artifact to the primary's agent at baseURL and waits for the
// swap. The client must have no timeout: a restore takes as long as it takes (the
// Job's deadline bounds it).
func (c *Client) Restore(ctx context.Context, baseURL string, req RestoreRequest, body io.Reader) (*RestoreResult, error) {
	meta, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPut, baseURL+PathRestore, body)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		hr.Header.Set("Authorization", "Bearer "+c.token)
	}
	hr.Header.Set(HeaderRestoreRequest, string(meta))
	hr.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.http.Do(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized {
		return nil, ErrUnauthorized
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return nil, fmt.Errorf("the primary's agent answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	var res RestoreResult
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&res); err != nil {
		return nil, fmt.Errorf("decoding the restore result: %w", err)
	}
	return &res, nil
}

// requestTimeout bounds a request of a client made without an http.Client.
const requestTimeout = 3 * time.Second

// Client reads instance status from agents.
type Client struct {
	http  *http.Client
	token string
}

// NewClient returns a client authenticating with token. It never follows a
// redirect: an agent (or whatever answers at its address) cannot send the
// operator's requests, and its credentials, elsewhere.
func NewClient(h *http.Client, token string) *Client {
	if h == nil {
		h = &http.Client{Timeout: requestTimeout}
	}
	c := *h
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{http: &c, token: token}
}

// ErrUnauthorized is returned when the agent refuses the token.
var ErrUnauthorized = errors.New("agent answered 401 Unauthorized")

func (c *Client) do(ctx context.Context, method, url string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusUnauthorized {
		resp.Body.Close()
		return nil, ErrUnauthorized
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("agent answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	return resp, nil
}

// SetSlots makes the primary's operator-managed replication slots exactly names.
func (c *Client) SetSlots(ctx context.Context, baseURL string, names []string) error {
	resp, err := c.do(ctx, http.MethodPut, strings.TrimSuffix(baseURL, "/")+PathSlots, SlotsRequest{Names: names})
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// Reclone asks a standby to discard its data and clone the primary again.
func (c *Client) Reclone(ctx context.Context, baseURL string) error {
	resp, err := c.do(ctx, http.MethodPost, strings.TrimSuffix(baseURL, "/")+PathReclone, struct{}{})
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// Recover asks a primary whose data is missing to rebuild it from standby source.
func (c *Client) Recover(ctx context.Context, baseURL, source string) error {
	resp, err := c.do(ctx, http.MethodPost, strings.TrimSuffix(baseURL, "/")+PathRecover, RecoverRequest{Source: source})
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// GetStatus returns the status of the agent at baseURL (http://host:port).
func (c *Client) GetStatus(ctx context.Context, baseURL string) (*Status, error) {
	resp, err := c.do(ctx, http.MethodGet, strings.TrimSuffix(baseURL, "/")+PathStatus, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st Status
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 1<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("decoding agent status: %w", err)
	}
	return &st, nil
}
