// Package scale is the control-plane scale benchmark (make bench-scale) and
// its reduced form in make check: the operator against a real kube-apiserver,
// etcd, kube-controller-manager and kube-scheduler, with kwok playing the
// nodes and the pods (on loopback addresses) and scripted instance agents.
package scale

import (
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// Requests counts the API requests a client makes, by verb, resource and
// namespace class (the part of the namespace before its first "-", so that
// the benchmark's "single-3" and "ha-3" namespaces count apart).
type Requests struct {
	m sync.Map // RequestKey -> *atomic.Int64
}

// RequestKey is what one count is kept for.
type RequestKey struct {
	Verb, Resource, Class string
}

// Wrap counts each request that rt carries.
func (c *Requests) Wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(req *http.Request) (*http.Response, error) {
		k := Classify(req.Method, req.URL.Path, req.URL.Query().Get("watch") == "true", req.Header.Get("Content-Type"))
		v, _ := c.m.LoadOrStore(k, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
		return rt.RoundTrip(req)
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// Classify names a request the way the API server's audit log does: the verb
// (get, list, watch, create, update, patch, apply, delete, deletecollection),
// the resource with its subresource ("databases/status") and the namespace's
// class.
func Classify(method, path string, watch bool, contentType string) RequestKey {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	// /api/v1/... or /apis/group/version/...
	switch {
	case len(parts) >= 2 && parts[0] == "api":
		parts = parts[2:]
	case len(parts) >= 3 && parts[0] == "apis":
		parts = parts[3:]
	default:
		return RequestKey{Verb: strings.ToLower(method), Resource: "nonresource:" + path}
	}
	var k RequestKey
	if len(parts) >= 2 && parts[0] == "namespaces" && len(parts) > 2 {
		ns := parts[1]
		k.Class, _, _ = strings.Cut(ns, "-")
		parts = parts[2:]
	}
	named := len(parts) >= 2
	if len(parts) > 0 {
		k.Resource = parts[0]
	}
	if len(parts) >= 3 {
		k.Resource += "/" + parts[2]
	}
	switch method {
	case http.MethodGet:
		switch {
		case watch:
			k.Verb = "watch"
		case named:
			k.Verb = "get"
		default:
			k.Verb = "list"
		}
	case http.MethodPost:
		k.Verb = "create"
	case http.MethodPut:
		k.Verb = "update"
	case http.MethodPatch:
		k.Verb = "patch"
		if strings.HasPrefix(contentType, "application/apply-patch") {
			k.Verb = "apply"
		}
	case http.MethodDelete:
		k.Verb = "delete"
		if !named {
			k.Verb = "deletecollection"
		}
	default:
		k.Verb = strings.ToLower(method)
	}
	return k
}

// IsWrite tells the verbs that change objects.
func IsWrite(verb string) bool {
	switch verb {
	case "get", "list", "watch":
		return false
	}
	return true
}

// Count is one line of a snapshot.
type Count struct {
	RequestKey
	N int64
}

// Snapshot returns the counts so far, sorted.
func (c *Requests) Snapshot() []Count {
	var out []Count
	c.m.Range(func(k, v any) bool {
		out = append(out, Count{RequestKey: k.(RequestKey), N: v.(*atomic.Int64).Load()})
		return true
	})
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Verb != b.Verb {
			return a.Verb < b.Verb
		}
		if a.Resource != b.Resource {
			return a.Resource < b.Resource
		}
		return a.Class < b.Class
	})
	return out
}

// ServeHTTP answers the snapshot as JSON.
func (c *Requests) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(c.Snapshot())
}

// Counts is a snapshot indexed by key.
type Counts map[RequestKey]int64

// Index turns a snapshot into Counts.
func Index(s []Count) Counts {
	out := Counts{}
	for _, c := range s {
		out[c.RequestKey] += c.N
	}
	return out
}

// Minus returns c - before, key by key.
func (c Counts) Minus(before Counts) Counts {
	out := Counts{}
	for k, n := range c {
		if d := n - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// Sum adds the counts that keep says to keep.
func (c Counts) Sum(keep func(RequestKey) bool) int64 {
	var n int64
	for k, v := range c {
		if keep(k) {
			n += v
		}
	}
	return n
}
