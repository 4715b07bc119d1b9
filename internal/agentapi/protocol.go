package agentapi

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Protocol versions. The agent reports the version it speaks in its status
// (Status.Protocol) and the operator's pod builder writes it on every instance
// pod (ProtocolAnnotation): the operator reads the pod's annotation to know how
// to reach its agent before it has ever spoken to it, instead of guessing from
// the pod's command line.
const (
	// ProtocolVersion is the version this package describes: every
	// authenticated endpoint under PathPrefix ("/v1/status", ...), HTTPS with
	// client certificates, the Lease annotations of LeaseIntent and
	// LeaseReport.
	ProtocolVersion = 1
	// PreviousProtocolVersion is the unversioned protocol of the release
	// before: the same endpoints at the root ("/status", ...). The agent keeps
	// serving it for one release, so that an operator (or a restore Job) of the
	// previous release can still reach a new agent during an upgrade or a
	// rollback, and the operator speaks it to pods without the annotation.
	PreviousProtocolVersion = 0

	// PathPrefix is the prefix of every path of ProtocolVersion.
	PathPrefix = "/v1"

	// ProtocolAnnotation, on an instance pod, is the protocol version its agent
	// speaks. A pod without it was created by an operator of the previous
	// release (PreviousProtocolVersion).
	ProtocolAnnotation = "database.example.com/agent-protocol"
)

// Versioned returns the ProtocolVersion path of an endpoint: "/v1/status".
func Versioned(path string) string { return PathPrefix + path }

// PathsFor returns the prefix of the endpoints of a protocol version: "" for
// the previous protocol, PathPrefix for this one.
func PathsFor(version int) string {
	if version == PreviousProtocolVersion {
		return ""
	}
	return PathPrefix
}

// Endpoint is how to reach one instance pod's agent.
type Endpoint struct {
	// Protocol is the version the pod's agent speaks.
	Protocol int
	// TLS: the agent serves HTTPS and admits clients by their certificate
	// (always, from ProtocolVersion 1 on); without it, HTTP with the agent
	// token.
	TLS bool
}

// PodEndpoint reads how to reach a pod's agent from the pod: its protocol
// annotation, or for a pod of the previous release (no annotation) whether
// the operator that created it started the agent with a TLS directory. A pod
// of a newer release is spoken to in this release's version, which its agent
// still serves (the rule for every protocol change).
func PodEndpoint(pod *corev1.Pod) (Endpoint, error) {
	v, ok := pod.Annotations[ProtocolAnnotation]
	if !ok {
		return Endpoint{Protocol: PreviousProtocolVersion, TLS: startedWithTLSDir(pod)}, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return Endpoint{}, fmt.Errorf("pod %s: annotation %s=%q is not a protocol version", pod.Name, ProtocolAnnotation, v)
	}
	// An agent of a newer release (after a rollback of the operator) still
	// serves its previous version, which is this one.
	return Endpoint{Protocol: min(n, ProtocolVersion), TLS: true}, nil
}

// URL is the base URL of the agent at host ("10.0.0.7" or a DNS name): the
// scheme, the host, AgentPort and the version's path prefix. A client appends
// the unversioned endpoint path (PathStatus, ...).
func (e Endpoint) URL(host string) string {
	scheme := "http://"
	if e.TLS {
		scheme = "https://"
	}
	return scheme + net.JoinHostPort(host, strconv.Itoa(AgentPort)) + PathsFor(e.Protocol)
}

// startedWithTLSDir reports whether a pod of the previous release started its
// agent with a TLS directory (and so serves HTTPS). Only pods without the
// protocol annotation are judged by their command line; this goes with
// PreviousProtocolVersion.
func startedWithTLSDir(pod *corev1.Pod) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name != ContainerName {
			continue
		}
		for _, a := range c.Command {
			if strings.HasPrefix(a, tlsDirFlag) && len(a) > len(tlsDirFlag) {
				return true
			}
		}
	}
	return false
}
