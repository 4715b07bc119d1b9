// Command hostpath-provisioner is the local cluster's dynamic volume provisioner:
// for every PersistentVolumeClaim of its StorageClass it creates a directory on the
// node, world-writable like kind's local-path provisioner (so pods running as any
// uid can use it; hostPath volumes get no fsGroup ownership change), and a hostPath
// PersistentVolume bound to the claim. Released volumes are deleted with their
// directory. For the single-node development cluster only.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const provisionerName = "postgres-operator.local/hostpath"

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster")
	root := flag.String("root", "/var/lib/postgres-operator-cluster/volumes", "directory holding the volumes")
	flag.Parse()
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fail(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// A level-triggered loop: every pass provisions what is pending and deletes what
	// is released. Two seconds of latency is fine for a development cluster.
	for ctx.Err() == nil {
		if err := pass(ctx, cs, *root); err != nil && ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, "hostpath-provisioner:", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "hostpath-provisioner:", err)
	os.Exit(1)
}

func pass(ctx context.Context, cs kubernetes.Interface, root string) error {
	classes, err := cs.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	ours := map[string]storagev1.StorageClass{}
	defaultClass := ""
	for _, c := range classes.Items {
		if c.Provisioner == provisionerName {
			ours[c.Name] = c
			if c.Annotations["storageclass.kubernetes.io/is-default-class"] == "true" {
				defaultClass = c.Name
			}
		}
	}
	pvcs, err := cs.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range pvcs.Items {
		pvc := &pvcs.Items[i]
		class := defaultClass
		if pvc.Spec.StorageClassName != nil {
			class = *pvc.Spec.StorageClassName
		}
		sc, ok := ours[class]
		if !ok || pvc.Status.Phase != corev1.ClaimPending || pvc.Spec.VolumeName != "" || pvc.DeletionTimestamp != nil {
			continue
		}
		if err := provision(ctx, cs, root, pvc, sc); err != nil {
			return fmt.Errorf("provisioning %s/%s: %w", pvc.Namespace, pvc.Name, err)
		}
	}
	pvs, err := cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		if pv.Annotations["pv.kubernetes.io/provisioned-by"] != provisionerName || pv.Status.Phase != corev1.VolumeReleased ||
			pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || pv.Spec.HostPath == nil {
			continue
		}
		path := pv.Spec.HostPath.Path
		if !strings.HasPrefix(filepath.Clean(path), filepath.Clean(root)+"/") {
			continue
		}
		if err := os.RemoveAll(path); err != nil {
			return err
		}
		if err := cs.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return nil
}

func provision(ctx context.Context, cs kubernetes.Interface, root string, pvc *corev1.PersistentVolumeClaim, sc storagev1.StorageClass) error {
	name := "pvc-" + string(pvc.UID)
	path := filepath.Join(root, name)
	if err := os.MkdirAll(path, 0o777); err != nil {
		return err
	}
	if err := os.Chmod(path, 0o777); err != nil {
		return err
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	if sc.ReclaimPolicy != nil {
		reclaim = *sc.ReclaimPolicy
	}
	hostPathType := corev1.HostPathDirectory
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{"pv.kubernetes.io/provisioned-by": provisionerName},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: pvc.Spec.Resources.Requests[corev1.ResourceStorage]},
			AccessModes:                   pvc.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: reclaim,
			StorageClassName:              sc.Name,
			VolumeMode:                    pvc.Spec.VolumeMode,
			ClaimRef: &corev1.ObjectReference{
				Kind: "PersistentVolumeClaim", Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID,
				APIVersion: "v1", ResourceVersion: pvc.ResourceVersion,
			},
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &hostPathType},
			},
		},
	}
	_, err := cs.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}
