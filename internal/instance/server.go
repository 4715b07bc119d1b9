package instance

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/example/postgres-operator/internal/agentapi"
)

const requestTimeout = 3 * time.Second

// serve starts the HTTP server: probes for the kubelet without authentication
// (they reveal only ok/not ok), the status and instruction endpoints with a bearer
// token.
func (a *Agent) serve() (*http.Server, error) {
	mux := http.NewServeMux()
	// handle serves an endpoint at its ProtocolVersion path and, for agents and
	// restore Jobs of the previous release during an upgrade, at its
	// PreviousProtocolVersion path (the same handler: the versions differ only
	// in their paths).
	handle := func(method, path string, h http.HandlerFunc) {
		mux.HandleFunc(method+" "+agentapi.Versioned(path), h)
		mux.HandleFunc(method+" "+path, h)
	}
	// Live (and started) while the agent answers: the agent itself restarts
	// PostgreSQL in place, and a clone that progresses is never cut short by a
	// probe (the agent stops only clones that stall).
	live := func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }
	handle("GET", agentapi.PathHealthz, live)
	handle("GET", agentapi.PathStartup, live)
	// Readiness is answered from the probe loop's last reading: a request costs
	// no backend, however many arrive.
	handle("GET", agentapi.PathReadyz, func(w http.ResponseWriter, _ *http.Request) {
		if !a.readyNow() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	handle("GET", agentapi.PathStatus, a.authenticated(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
		defer cancel()
		writeJSON(w, http.StatusOK, a.status(ctx))
	}))
	handle("PUT", agentapi.PathSlots, a.authenticated(func(w http.ResponseWriter, r *http.Request) {
		var req agentapi.SlotsRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
			http.Error(w, "invalid body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if rt := a.view(); !rt.Primary || rt.Exited {
			http.Error(w, "not a running primary", http.StatusConflict)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*requestTimeout)
		defer cancel()
		slots, err := a.syncSlots(ctx, req.Names)
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		writeJSON(w, http.StatusOK, slots)
	}))
	handle("POST", agentapi.PathReclone, a.authenticated(func(w http.ResponseWriter, _ *http.Request) {
		rt := a.view()
		st := rt.State
		if rt.Primary || a.isTarget() || (st != agentapi.StateRunning && st != agentapi.StateRestarting) {
			http.Error(w, "only a running standby re-clones (state "+string(st)+")", http.StatusConflict)
			return
		}
		a.send(w, instruction{reclone: true})
	}))
	handle("POST", agentapi.PathRecover, a.authenticated(func(w http.ResponseWriter, r *http.Request) {
		var req agentapi.RecoverRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<12)).Decode(&req); err != nil {
			http.Error(w, "invalid body: "+err.Error(), http.StatusBadRequest)
			return
		}
		st, _ := a.currentState()
		if !a.isTarget() || st != agentapi.StateDataMissing {
			http.Error(w, "only a primary whose data is missing is recovered (state "+string(st)+")", http.StatusConflict)
			return
		}
		if !a.isPeer(req.Source) {
			http.Error(w, fmt.Sprintf("%q is not another instance of this Database", req.Source), http.StatusBadRequest)
			return
		}
		a.send(w, instruction{recoverFrom: req.Source})
	}))

	handle("POST", agentapi.PathRecoverInPlace, a.authenticated(func(w http.ResponseWriter, r *http.Request) {
		var req agentapi.InPlaceRecoveryRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<12)).Decode(&req); err != nil {
			http.Error(w, "invalid body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if err := a.startInPlace(req); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	handle("PUT", agentapi.PathRestore, a.authenticatedAs(a.handleRestore, agentapi.ClientOperator, agentapi.ClientRestore))

	ln, err := net.Listen("tcp", net.JoinHostPort(a.cfg.AgentAddress, strconv.Itoa(a.cfg.AgentPort)))
	if err != nil {
		return nil, fmt.Errorf("agent HTTP listener: %w", err)
	}
	a.addr.Store(ln.Addr())
	if a.tlsEnabled() {
		ln = tls.NewListener(ln, a.serverTLSConfig())
	}
	close(a.ready)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("agent HTTP server stopped", "error", err)
		}
	}()
	return srv, nil
}

// isPeer reports whether pod is another ordinal of this instance's StatefulSet.
func (a *Agent) isPeer(pod string) bool {
	i := strings.LastIndex(a.cfg.PodName, "-")
	j := strings.LastIndex(pod, "-")
	return i > 0 && j > 0 && pod != a.cfg.PodName && pod[:j] == a.cfg.PodName[:i] && agentapi.Ordinal(pod) >= 0
}

// send passes an instruction to the main loop without blocking.
func (a *Agent) send(w http.ResponseWriter, in instruction) {
	select {
	case a.instr <- in:
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte("accepted"))
	default:
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte("already in progress"))
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// authenticated admits the operator: with TLS, by its client certificate
// (verified against the Database's CA by the handshake, common name
// ClientOperator); without TLS (an agent run outside a pod), by the bearer token.
func (a *Agent) authenticated(h http.HandlerFunc) http.HandlerFunc {
	return a.authenticatedAs(h, agentapi.ClientOperator)
}

// authenticatedAs admits the client certificate common names given.
func (a *Agent) authenticatedAs(h http.HandlerFunc, names ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if a.tlsEnabled() {
			if !clientIs(r, names...) {
				http.Error(w, "a client certificate of the Database's CA is required", http.StatusUnauthorized)
				return
			}
			h(w, r)
			return
		}
		if !a.authorized(r) {
			w.Header().Set("WWW-Authenticate", "Bearer")
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h(w, r)
	}
}

// clientIs reports whether the request came with a verified client certificate
// for one of names.
func clientIs(r *http.Request, names ...string) bool {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return false
	}
	cn := r.TLS.VerifiedChains[0][0].Subject.CommonName
	for _, n := range names {
		if cn == n {
			return true
		}
	}
	return false
}

// authorized accepts the current token, and the previous one for TokenGrace after
// the token file changed: the operator may still hold the old one.
func (a *Agent) authorized(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	t := a.tokens.Load()
	cur, prev, until := t.cur, t.prev, t.prevUntil
	if subtle.ConstantTimeCompare([]byte(got), cur) == 1 {
		return true
	}
	return len(prev) > 0 && time.Now().Before(until) && subtle.ConstantTimeCompare([]byte(got), prev) == 1
}
