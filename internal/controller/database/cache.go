package database

import (
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// CacheOptions restrict the Secret and Pod caches to the objects the operator
// manages, so it does not hold every Secret and Pod of the cluster in memory.
func CacheOptions() cache.Options {
	managed := labels.SelectorFromSet(labels.Set{LabelManagedBy: ManagedByValue})
	return cache.Options{
		// Nothing reads managedFields from the cache: a third of a typical
		// object's size (make bench-scale).
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Label: managed},
			// spec.postgresql's ConfigMaps.
			&corev1.ConfigMap{}: {Label: managed},
			&corev1.Pod{}:       {Label: managed, Transform: TransformPod},
			// The instances' access objects and disruption budgets.
			&corev1.ServiceAccount{}:        {Label: managed},
			&rbacv1.Role{}:                  {Label: managed},
			&rbacv1.RoleBinding{}:           {Label: managed},
			&policyv1.PodDisruptionBudget{}: {Label: managed},
			// The primary Leases (the reconciler reads them live; a cached read
			// must not hold every node's and controller's Lease).
			&coordinationv1.Lease{}: {Label: managed},
		}}
}

// TransformPod keeps of a cached pod what the operator reads: its metadata
// (without managedFields), its containers' names, images and commands (the
// image it runs, whether its agent serves TLS) and its status. A pod's spec
// is most of its size (make bench-scale: the pods were a fifth of the heap at
// 1,000 Databases). Pods are only ever patched with a merge patch of their
// labels, so a stripped copy is never written back.
func TransformPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	pod.ManagedFields = nil
	containers := make([]corev1.Container, len(pod.Spec.Containers))
	for i, c := range pod.Spec.Containers {
		containers[i] = corev1.Container{Name: c.Name, Image: c.Image, Command: c.Command}
	}
	pod.Spec = corev1.PodSpec{Containers: containers, NodeName: pod.Spec.NodeName}
	return pod, nil
}
