package database

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/instance"
)

// After the agent token changed, the operator holds the new token before the
// kubelet refreshed the agents' mounted file: it must fall back to the previous one.
func TestInstanceClientFallsBackToThePreviousToken(t *testing.T) {
	var seen []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Header.Get("Authorization"))
		if r.Header.Get("Authorization") != "Bearer old-token" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode(instance.Status{Pod: "db-0", Role: instance.RolePrimary, Running: true})
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(instance.AgentPort))
	if err != nil {
		t.Skipf("agent port %d is busy: %v", instance.AgentPort, err)
	}
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	pods := []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "db-0"}, Status: corev1.PodStatus{PodIP: "127.0.0.1"}}}
	c := NewHTTPInstanceClient()
	got := c.Statuses(context.Background(), pods, []string{"new-token", "old-token"})
	if r := got["db-0"]; r.Err != nil || r.Status == nil || r.Status.Role != instance.RolePrimary {
		t.Errorf("report = %+v", r)
	}
	if len(seen) != 2 || seen[0] != "Bearer new-token" || seen[1] != "Bearer old-token" {
		t.Errorf("tokens tried: %v", seen)
	}
	if r := c.Statuses(context.Background(), pods, []string{"other"}); r["db-0"].Err == nil {
		t.Error("a refused token gave no error")
	}
}

func TestRememberTokenKeepsThePreviousOne(t *testing.T) {
	r := &Reconciler{}
	db := &databasev1.Database{ObjectMeta: metav1.ObjectMeta{UID: "u1"}}
	if got := r.rememberToken(db, "a"); len(got) != 1 || got[0] != "a" {
		t.Errorf("first = %v", got)
	}
	if got := r.rememberToken(db, "a"); len(got) != 1 {
		t.Errorf("unchanged = %v", got)
	}
	if got := r.rememberToken(db, "b"); len(got) != 2 || got[0] != "b" || got[1] != "a" {
		t.Errorf("rotated = %v", got)
	}
	if got := r.rememberToken(db, "b"); len(got) != 2 || got[1] != "a" {
		t.Errorf("after rotation = %v", got)
	}
}
