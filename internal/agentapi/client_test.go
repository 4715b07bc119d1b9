package agentapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestTheClientFollowsNoRedirect: an answer redirecting elsewhere is an error,
// and the other address never receives the request (no blind SSRF through the
// operator, no token sent on).
func TestTheClientFollowsNoRedirect(t *testing.T) {
	var hit atomic.Int32
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { hit.Add(1) }))
	defer elsewhere.Close()
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+"/internal", http.StatusTemporaryRedirect)
	}))
	defer agent.Close()
	c := NewClient(&http.Client{}, "token")
	ctx := context.Background()
	if _, err := c.GetStatus(ctx, agent.URL); err == nil || !strings.Contains(err.Error(), "307") {
		t.Errorf("status through a redirect: %v, want an error naming the 307", err)
	}
	if err := c.Reclone(ctx, agent.URL); err == nil {
		t.Error("an instruction through a redirect succeeded")
	}
	if _, err := c.Restore(ctx, agent.URL, RestoreRequest{ID: "x"}, strings.NewReader("body")); err == nil {
		t.Error("a restore through a redirect succeeded")
	}
	if n := hit.Load(); n != 0 {
		t.Errorf("the redirect target received %d requests", n)
	}
}
