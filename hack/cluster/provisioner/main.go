// Command provisioner is the dynamic volume provisioner of the local cluster
// (hack/cluster/cluster.sh). For every pending PersistentVolumeClaim whose
// StorageClass names this provisioner it creates a world-writable directory under
// -root (hostPath volumes get no fsGroup ownership change, so pods running as any
// uid must be able to write there) and a hostPath PersistentVolume pre-bound to
// the claim. Released volumes whose reclaim policy is Delete are removed with
// their directory. Single-node development clusters only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	annProvisionedBy = "pv.kubernetes.io/provisioned-by"
	annSelectedNode  = "volume.kubernetes.io/selected-node"
	annLegacyClass   = "volume.beta.kubernetes.io/storage-class"
)

type provisioner struct {
	name    string
	root    string
	node    string
	client  kubernetes.Interface
	claims  corelisters.PersistentVolumeClaimLister
	volumes corelisters.PersistentVolumeLister
	classes storagelisters.StorageClassLister
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster")
	p := &provisioner{}
	flag.StringVar(&p.name, "name", "postgres-operator.local/cluster-hostpath", "provisioner name in StorageClasses")
	flag.StringVar(&p.root, "root", "", "directory under which volumes are created")
	flag.StringVar(&p.node, "node", "localhost", "name of the (only) node")
	flag.Parse()
	if p.root == "" {
		log.Fatal("-root is required")
	}
	root, err := filepath.Abs(p.root)
	if err != nil {
		log.Fatal(err)
	}
	p.root = root
	if err := os.MkdirAll(p.root, 0o755); err != nil {
		log.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatal(err)
	}
	if p.client, err = kubernetes.NewForConfig(cfg); err != nil {
		log.Fatal(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// Any change of a claim, volume or class triggers a pass over everything: the
	// cluster is small, and a full pass is simpler than per-object queues.
	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}
	factory := informers.NewSharedInformerFactory(p.client, 0)
	claims := factory.Core().V1().PersistentVolumeClaims()
	volumes := factory.Core().V1().PersistentVolumes()
	classes := factory.Storage().V1().StorageClasses()
	for _, inf := range []cache.SharedIndexInformer{claims.Informer(), volumes.Informer(), classes.Informer()} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			log.Fatal(err)
		}
	}
	p.claims, p.volumes, p.classes = claims.Lister(), volumes.Lister(), classes.Lister()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	log.Printf("provisioner %s ready, volumes under %s", p.name, p.root)

	retry := time.NewTicker(10 * time.Second) // failed operations are retried here
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			factory.Shutdown()
			return
		case <-kick:
		case <-retry.C:
		}
		p.sync(ctx)
	}
}

// sync provisions every pending claim of our classes and deletes released volumes.
func (p *provisioner) sync(ctx context.Context) {
	claims, _ := p.claims.List(labels.Everything())
	for _, pvc := range claims {
		if sc := p.classFor(pvc); sc != nil && p.wantsVolume(pvc, sc) {
			if err := p.provision(ctx, pvc, sc); err != nil {
				log.Printf("provisioning %s/%s: %v", pvc.Namespace, pvc.Name, err)
			}
		}
	}
	volumes, _ := p.volumes.List(labels.Everything())
	for _, pv := range volumes {
		if p.released(pv) {
			if err := p.remove(ctx, pv); err != nil {
				log.Printf("deleting %s: %v", pv.Name, err)
			}
		}
	}
}

// classFor returns the claim's StorageClass if this provisioner serves it.
func (p *provisioner) classFor(pvc *corev1.PersistentVolumeClaim) *storagev1.StorageClass {
	name := pvc.Annotations[annLegacyClass]
	if pvc.Spec.StorageClassName != nil {
		name = *pvc.Spec.StorageClassName
	}
	if name == "" {
		return nil
	}
	sc, err := p.classes.Get(name)
	if err != nil || sc.Provisioner != p.name {
		return nil
	}
	return sc
}

func (p *provisioner) wantsVolume(pvc *corev1.PersistentVolumeClaim, sc *storagev1.StorageClass) bool {
	if pvc.Spec.VolumeName != "" || pvc.DeletionTimestamp != nil || pvc.Status.Phase != corev1.ClaimPending {
		return false
	}
	if pvc.Spec.VolumeMode != nil && *pvc.Spec.VolumeMode == corev1.PersistentVolumeBlock {
		return false // hostPath cannot give raw block devices
	}
	waitForConsumer := sc.VolumeBindingMode != nil && *sc.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer
	return !waitForConsumer || pvc.Annotations[annSelectedNode] != ""
}

func (p *provisioner) provision(ctx context.Context, pvc *corev1.PersistentVolumeClaim, sc *storagev1.StorageClass) error {
	name := "pvc-" + string(pvc.UID)
	if _, err := p.volumes.Get(name); err == nil {
		return nil // created already; the PV controller binds it
	}
	dir := filepath.Join(p.root, name)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o777); err != nil { // umask-proof
		return err
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	if sc.ReclaimPolicy != nil {
		reclaim = *sc.ReclaimPolicy
	}
	dirType := corev1.HostPathDirectoryOrCreate
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{annProvisionedBy: p.name},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: pvc.Spec.Resources.Requests[corev1.ResourceStorage]},
			AccessModes:                   pvc.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: reclaim,
			StorageClassName:              sc.Name,
			VolumeMode:                    pvc.Spec.VolumeMode,
			ClaimRef: &corev1.ObjectReference{
				Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID,
			},
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &dirType},
			},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
					Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{p.node},
				}}}},
			}},
		},
	}
	_, err := p.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err == nil {
		log.Printf("created %s (%s) for %s/%s", name, dir, pvc.Namespace, pvc.Name)
	}
	return err
}

func (p *provisioner) released(pv *corev1.PersistentVolume) bool {
	return pv.Annotations[annProvisionedBy] == p.name && pv.DeletionTimestamp == nil &&
		pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete &&
		(pv.Status.Phase == corev1.VolumeReleased || pv.Status.Phase == corev1.VolumeFailed)
}

// remove deletes a released volume's directory (only if it is one of ours) and the PV.
func (p *provisioner) remove(ctx context.Context, pv *corev1.PersistentVolume) error {
	if pv.Spec.HostPath == nil {
		return errors.New("not a hostPath volume")
	}
	dir := filepath.Clean(pv.Spec.HostPath.Path)
	if filepath.Dir(dir) != p.root {
		return fmt.Errorf("refusing to delete %s: not directly under %s", dir, p.root)
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	err := p.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err == nil {
		log.Printf("deleted %s and %s", pv.Name, dir)
	}
	return err
}
