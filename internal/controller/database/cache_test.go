package database

import (
	"testing"

	"github.com/example/postgres-operator/internal/agentapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestTheCachedPodKeepsWhatTheOperatorReads(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "db-0", Namespace: "ns", UID: "u1",
			Labels:        map[string]string{LabelRole: agentapi.RolePrimary, "controller-revision-hash": "db-abc"},
			Annotations:   map[string]string{"a": "b", agentapi.ProtocolAnnotation: "1"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
		Spec: corev1.PodSpec{
			NodeName:       "node-1",
			InitContainers: []corev1.Container{{Name: "init", Image: "agent:1"}},
			Containers: []corev1.Container{{Name: agentapi.ContainerName, Image: "postgres:17.7",
				Command: []string{"/agent", "--tls-dir=/tls"}, Args: []string{"x"},
				Env: []corev1.EnvVar{{Name: "A", Value: "b"}}, VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
			Volumes: []corev1.Volume{{Name: "data"}},
		},
		Status: corev1.PodStatus{PodIP: "127.1.0.9", Phase: corev1.PodRunning,
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: agentapi.ContainerName, Ready: true, RestartCount: 2}}},
	}
	before := pod.DeepCopy()
	out, err := TransformPod(pod)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.Pod)
	if got.ManagedFields != nil {
		t.Errorf("managedFields kept: %v", got.ManagedFields)
	}
	if got.Name != "db-0" || got.UID != "u1" || got.Labels[LabelRole] != agentapi.RolePrimary || got.Labels["controller-revision-hash"] != "db-abc" || got.Annotations["a"] != "b" {
		t.Errorf("metadata lost: %+v", got.ObjectMeta)
	}
	if len(got.Spec.InitContainers) != 0 || len(got.Spec.Volumes) != 0 {
		t.Errorf("init containers or volumes kept: %+v", got.Spec)
	}
	if len(got.Spec.Containers) != 1 {
		t.Fatalf("containers: %+v", got.Spec.Containers)
	}
	c := got.Spec.Containers[0]
	if c.Name != agentapi.ContainerName || c.Image != "postgres:17.7" || len(c.Env) != 0 || len(c.Args) != 0 || len(c.VolumeMounts) != 0 {
		t.Errorf("container: %+v", c)
	}
	if e, err := agentapi.PodEndpoint(got); err != nil || e != (agentapi.Endpoint{Protocol: 1, TLS: true}) {
		t.Errorf("the cached pod's agent endpoint: %+v %v", e, err)
	}
	delete(pod.Annotations, agentapi.ProtocolAnnotation)
	out, _ = TransformPod(pod)
	if e, err := agentapi.PodEndpoint(out.(*corev1.Pod)); err != nil || e != (agentapi.Endpoint{Protocol: 0, TLS: true}) {
		t.Errorf("the cached pod of the previous release (started with a TLS directory): %+v %v", e, err)
	}
	if got.Spec.NodeName != "node-1" {
		t.Errorf("node name lost")
	}
	if got.Status.PodIP != before.Status.PodIP || got.Status.Conditions[0].Status != corev1.ConditionTrue || got.Status.ContainerStatuses[0].RestartCount != 2 {
		t.Errorf("status changed: %+v", got.Status)
	}
	other := &corev1.Secret{Data: map[string][]byte{"k": []byte("v")}}
	if out, _ := TransformPod(other); out.(*corev1.Secret).Data["k"] == nil {
		t.Error("a non-pod object was changed")
	}
}
