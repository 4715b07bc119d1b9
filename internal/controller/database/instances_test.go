package database

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/pki"
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
		_ = json.NewEncoder(w).Encode(agentapi.Status{Pod: "db-0", Role: agentapi.RolePrimary, Running: true})
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(agentapi.AgentPort))
	if err != nil {
		t.Skipf("agent port %d is busy: %v", agentapi.AgentPort, err)
	}
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	pods := []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "db-0"}, Status: corev1.PodStatus{PodIP: "127.0.0.1"}}}
	c := NewHTTPInstanceClient()
	got := c.Statuses(context.Background(), pods, AgentAuth{Tokens: []string{"new-token", "old-token"}})
	if r := got["db-0"]; r.Err != nil || r.Status == nil || r.Status.Role != agentapi.RolePrimary {
		t.Errorf("report = %+v", r)
	}
	if len(seen) != 2 || seen[0] != "Bearer new-token" || seen[1] != "Bearer old-token" {
		t.Errorf("tokens tried: %v", seen)
	}
	if r := c.Statuses(context.Background(), pods, AgentAuth{Tokens: []string{"other"}}); r["db-0"].Err == nil {
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

// A pod started with a TLS directory is reached over HTTPS with the operator's
// client certificate from the Database's CA, and the agent's certificate is
// verified against that CA only.
func TestInstanceClientUsesMutualTLSForAgentsThatServeIt(t *testing.T) {
	now := time.Now()
	ca, err := pki.NewCA("ns/db", now)
	if err != nil {
		t.Fatal(err)
	}
	db := &databasev1.Database{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns", UID: "u1"}}
	serve := func(ca pki.Pair) (*httptest.Server, *[]string) {
		var clients []string
		srv := startTLSAgent(t, db, ca, now, func(w http.ResponseWriter, r *http.Request) {
			if len(r.TLS.VerifiedChains) > 0 {
				clients = append(clients, r.TLS.VerifiedChains[0][0].Subject.CommonName)
			}
			if r.Header.Get("Authorization") != "" {
				t.Error("a bearer token was sent over mutual TLS")
			}
			_ = json.NewEncoder(w).Encode(agentapi.Status{Pod: "db-0", Role: agentapi.RolePrimary, Running: true})
		})
		return srv, &clients
	}
	pods := []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "db-0"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: agentapi.ContainerName,
			Command: []string{"/controller/manager", "instance", agentapi.TLSDirArg(agentapi.DefaultTLSDir)}}}},
		Status: corev1.PodStatus{PodIP: "127.0.0.1"}}}

	r := &Reconciler{}
	httpc, err := r.agentTLS(db, ca, now)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := r.agentTLS(db, ca, now); again != httpc {
		t.Error("the client (and its certificate) is not reused while current")
	}
	r.forgetAgentClient(types.NamespacedName{Namespace: "ns", Name: "db"})
	if again, _ := r.agentTLS(db, ca, now); again == httpc {
		t.Error("the client of a deleted Database was kept")
	}
	if later, _ := r.agentTLS(db, ca, now.Add(70*24*time.Hour)); later == httpc {
		t.Error("the client certificate is not reissued at two thirds of its lifetime")
	}
	newCA, err := pki.NewCA("ns/db", now)
	if err != nil {
		t.Fatal(err)
	}
	if renewed, _ := r.agentTLS(db, newCA, now); renewed == httpc {
		t.Error("the client is kept after the CA changed")
	}
	httpc, _ = r.agentTLS(db, ca, now)
	c := NewHTTPInstanceClient()
	srv, clients := serve(ca)
	got := c.Statuses(context.Background(), pods, AgentAuth{HTTPS: httpc, Tokens: []string{"token"}})
	srv.Close()
	if rep := got["db-0"]; rep.Err != nil || rep.Status == nil || rep.Status.Role != agentapi.RolePrimary {
		t.Errorf("report = %+v", rep)
	}
	if len(*clients) != 1 || (*clients)[0] != agentapi.ClientOperator {
		t.Errorf("client certificates seen: %v", *clients)
	}

	// An agent whose certificate comes from another CA is not trusted.
	other, err := pki.NewCA("ns/other", now)
	if err != nil {
		t.Fatal(err)
	}
	srv, _ = serve(other)
	got = c.Statuses(context.Background(), pods, AgentAuth{HTTPS: httpc})
	srv.Close()
	if rep := got["db-0"]; rep.Err == nil {
		t.Error("an agent with a certificate of another CA was trusted")
	}
	// Without the Database's CA there is no way to reach a TLS agent, and no
	// fallback to plain HTTP with the token.
	if rep := c.Statuses(context.Background(), pods, AgentAuth{Tokens: []string{"token"}})["db-0"]; rep.Err == nil {
		t.Error("a TLS agent was queried without the TLS client")
	}
}

// startTLSAgent serves h over HTTPS at 127.0.0.1:AgentPort with a server
// certificate of ca for db's instances, admitting only client certificates of
// ca.
func startTLSAgent(t *testing.T, db *databasev1.Database, ca pki.Pair, now time.Time, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	leaf, err := pki.Issue(ca, serverLeaf(db, ""), now)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM)
	srv := httptest.NewUnstartedServer(h)
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(agentapi.AgentPort))
	if err != nil {
		t.Skipf("agent port %d is busy: %v", agentapi.AgentPort, err)
	}
	srv.Listener = ln
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	srv.StartTLS()
	return srv
}

// The operator speaks to each agent the protocol its pod's annotation names:
// an agent of the previous release (no annotation, unversioned paths only) is
// still read and instructed during an operator upgrade, an agent of this
// release is reached under /v1, and so is an agent of a newer release (after
// a rollback of the operator): it still serves this version.
func TestTheOperatorSpeaksEachPodsProtocol(t *testing.T) {
	now := time.Now()
	ca, err := pki.NewCA("ns/db", now)
	if err != nil {
		t.Fatal(err)
	}
	db := &databasev1.Database{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns", UID: "u1"}}
	httpc, err := (&Reconciler{}).agentTLS(db, ca, now)
	if err != nil {
		t.Fatal(err)
	}
	tlsCommand := []string{"/controller/manager", "instance", agentapi.TLSDirArg(agentapi.DefaultTLSDir)}
	newPod := func(annotations map[string]string) []corev1.Pod {
		return []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "db-0", Annotations: annotations},
			Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: agentapi.ContainerName, Command: tlsCommand}}},
			Status: corev1.PodStatus{PodIP: "127.0.0.1"}}}
	}
	for _, tc := range []struct {
		name string
		// agentPrefix is where the fake agent serves its endpoints: "" is the
		// previous release's agent (it knows no /v1), "/v1" this one's.
		agentPrefix string
		protocol    int
		annotations map[string]string
		wantPaths   []string
		wantErr     string
	}{
		{"previous release", "", 0, nil, []string{"GET /status", "PUT /slots", "POST /reclone", "POST /recover"}, ""},
		{"this release", "/v1", 1, map[string]string{agentapi.ProtocolAnnotation: "1"},
			[]string{"GET /v1/status", "PUT /v1/slots", "POST /v1/reclone", "POST /v1/recover"}, ""},
		{"a newer release's agent", "/v1", 2, map[string]string{agentapi.ProtocolAnnotation: "2"},
			[]string{"GET /v1/status", "PUT /v1/slots", "POST /v1/reclone", "POST /v1/recover"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var paths []string
			srv := startTLSAgent(t, db, ca, now, func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				paths = append(paths, r.Method+" "+r.URL.Path)
				mu.Unlock()
				if !strings.HasPrefix(r.URL.Path, tc.agentPrefix+"/") || strings.Count(r.URL.Path, "/") != strings.Count(tc.agentPrefix, "/")+1 {
					http.NotFound(w, r)
					return
				}
				_ = json.NewEncoder(w).Encode(agentapi.Status{Protocol: tc.protocol, Pod: "db-0", Role: agentapi.RolePrimary, Running: true})
			})
			defer srv.Close()
			pods := newPod(tc.annotations)
			c := NewHTTPInstanceClient()
			auth := AgentAuth{HTTPS: httpc}
			rep := c.Statuses(context.Background(), pods, auth)["db-0"]
			errs := []error{rep.Err,
				c.SetSlots(context.Background(), &pods[0], auth, []string{"pgop_db_1"}),
				c.Reclone(context.Background(), &pods[0], auth),
				c.Recover(context.Background(), &pods[0], auth, "db-1")}
			if tc.wantErr != "" {
				if rep.Err == nil || !strings.Contains(rep.Err.Error(), tc.wantErr) || rep.Status != nil {
					t.Errorf("status report = %+v, want an error containing %q", rep, tc.wantErr)
				}
			} else {
				for _, err := range errs {
					if err != nil {
						t.Errorf("a request to the agent failed: %v", err)
					}
				}
				if rep.Status == nil || rep.Status.Role != agentapi.RolePrimary || rep.Status.Protocol != tc.protocol {
					t.Errorf("status report = %+v", rep)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if tc.wantPaths != nil && (len(paths) < len(tc.wantPaths) || !slices.Equal(paths[:len(tc.wantPaths)], tc.wantPaths)) {
				t.Errorf("requests = %v, want %v first", paths, tc.wantPaths)
			}
			if tc.wantPaths == nil && len(paths) != 0 {
				t.Errorf("a pod of a newer protocol was sent requests: %v", paths)
			}
		})
	}
}
