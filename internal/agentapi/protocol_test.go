package agentapi

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func pod(annotations map[string]string, command ...string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "db-0", Annotations: annotations},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: ContainerName, Command: command}}},
	}
}

// The operator knows how to reach an agent from its pod alone: the protocol
// annotation of a pod of this release, and for a pod of the previous release
// (no annotation) whether its agent was started with a TLS directory.
func TestThePodSaysHowToReachItsAgent(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pod     *corev1.Pod
		want    Endpoint
		url     string
		wantErr string
	}{
		{"this release", pod(map[string]string{ProtocolAnnotation: "1"}, "/manager", "instance", TLSDirArg(DefaultTLSDir)),
			Endpoint{Protocol: 1, TLS: true}, "https://10.0.0.7:8000/v1", ""},
		{"this release, the command is not read", pod(map[string]string{ProtocolAnnotation: "1"}, "/manager", "instance"),
			Endpoint{Protocol: 1, TLS: true}, "https://10.0.0.7:8000/v1", ""},
		{"previous release with TLS", pod(nil, "/manager", "instance", "--tls-dir=/etc/tls"),
			Endpoint{Protocol: 0, TLS: true}, "https://10.0.0.7:8000", ""},
		{"previous release before TLS", pod(nil, "/manager", "instance"),
			Endpoint{Protocol: 0, TLS: false}, "http://10.0.0.7:8000", ""},
		{"an empty TLS flag is no TLS", pod(nil, "/manager", "instance", "--tls-dir="),
			Endpoint{Protocol: 0, TLS: false}, "http://10.0.0.7:8000", ""},
		{"a newer release's pod is spoken to in this version", pod(map[string]string{ProtocolAnnotation: "2"}),
			Endpoint{Protocol: 1, TLS: true}, "https://10.0.0.7:8000/v1", ""},
		{"garbage", pod(map[string]string{ProtocolAnnotation: "v1"}), Endpoint{}, "", "is not a protocol version"},
		{"zero is not written", pod(map[string]string{ProtocolAnnotation: "0"}), Endpoint{}, "", "is not a protocol version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PodEndpoint(tc.pod)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("PodEndpoint = %+v, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("PodEndpoint = %+v, %v; want %+v", got, err, tc.want)
			}
			if u := got.URL("10.0.0.7"); u != tc.url {
				t.Errorf("URL = %q, want %q", u, tc.url)
			}
		})
	}
}

func TestVersionedPaths(t *testing.T) {
	if got := Versioned(PathStatus); got != "/v1/status" {
		t.Errorf("Versioned(PathStatus) = %q", got)
	}
	if PathsFor(PreviousProtocolVersion) != "" || PathsFor(ProtocolVersion) != PathPrefix {
		t.Errorf("PathsFor: %q %q", PathsFor(PreviousProtocolVersion), PathsFor(ProtocolVersion))
	}
}
