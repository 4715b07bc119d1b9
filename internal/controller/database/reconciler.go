// Package database holds the Database controller: it turns a Database into its
// credentials Secrets, Services and a StatefulSet of PostgreSQL instances, labels
// the instances with the role their agents report, and derives the status from what
// it observes.
package database

import (
	"context"
	"errors"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/instance"
)

// Requeue intervals: the agents' state is not watchable, so it is polled.
const (
	requeueWhileProgressing = 5 * time.Second
	requeueWhenReady        = 30 * time.Second
)

// Reconciler reconciles Database objects.
type Reconciler struct {
	client.Client
	// Recorder emits events on phase transitions.
	Recorder events.EventRecorder
	// Instances reads the status of instance agents.
	Instances InstanceStatusSource
	// AgentImage is the operator image the instance pods copy the agent from.
	AgentImage string
	// RequeueProgressing and RequeueReady are how often the instances are checked
	// while the Database progresses and once it is Ready (defaults 5s and 30s).
	RequeueProgressing, RequeueReady time.Duration
}

// +kubebuilder:rbac:groups=database.example.com,resources=databases,verbs=get;list;watch
// +kubebuilder:rbac:groups=database.example.com,resources=databases/status,verbs=get;patch;update
// +kubebuilder:rbac:groups=database.example.com,resources=databases/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=statefulsets,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch

// Reconcile moves one Database towards its spec. It never waits: it applies what is
// needed, records what it observes and requeues.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := logf.FromContext(ctx)

	db := &databasev1.Database{}
	if err := r.Get(ctx, req.NamespacedName, db); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !db.DeletionTimestamp.IsZero() {
		// Children go by garbage collection (owner references); volumes are kept by
		// the StatefulSet's retention policy. Nothing to do.
		return ctrl.Result{}, nil
	}

	obs, err := r.reconcileChildren(ctx, db)
	obs.ReconcileErr = err
	newStatus := deriveStatus(db, obs)
	if perr := r.patchStatus(ctx, db, newStatus); perr != nil {
		return ctrl.Result{}, errors.Join(err, perr)
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	log.V(1).Info("reconciled", "phase", newStatus.Phase)
	switch newStatus.Phase {
	case databasev1.PhaseReady:
		return ctrl.Result{RequeueAfter: orDefault(r.RequeueReady, requeueWhenReady)}, nil
	case databasev1.PhaseFailed:
		// Stalled until the spec changes, which triggers a reconcile by itself.
		return ctrl.Result{}, nil
	default:
		return ctrl.Result{RequeueAfter: orDefault(r.RequeueProgressing, requeueWhileProgressing)}, nil
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// reconcileChildren runs the ordered steps and returns what it observed.
func (r *Reconciler) reconcileChildren(ctx context.Context, db *databasev1.Database) (observation, error) {
	var obs observation
	if err := r.ensureSecrets(ctx, db); err != nil {
		return obs, err
	}
	for _, svc := range buildServices(db) {
		if err := r.applyIfChanged(ctx, svc, func(a map[string]string) { svc.WithAnnotations(a) }, &corev1.Service{}); err != nil {
			return obs, err
		}
	}

	sts, err := r.getStatefulSet(ctx, db)
	if err != nil {
		return obs, err
	}
	img, refusal := chooseImage(db, sts)
	obs.Refusal = refusal
	obs.RunningImage = img
	if err := r.applyStatefulSet(ctx, db, sts, img); err != nil {
		return obs, err
	}
	// Observe what the apply produced (from the cache: may lag one event behind,
	// which the watch corrects).
	if obs.StatefulSet, err = r.getStatefulSet(ctx, db); err != nil {
		return obs, err
	}
	if err := r.expandVolumes(ctx, db); err != nil {
		return obs, err
	}

	pods, err := r.listPods(ctx, db)
	if err != nil {
		return obs, err
	}
	obs.Pods = pods
	token, err := r.agentToken(ctx, db)
	if err != nil {
		return obs, err
	}
	obs.Instances = r.Instances.Statuses(ctx, pods, token)
	if err := r.labelRoles(ctx, pods, obs.Instances); err != nil {
		return obs, err
	}
	if obs.RoutedPods, err = r.routedPods(ctx, db); err != nil {
		return obs, err
	}
	return obs, nil
}

// routedPods returns the pods that the read-write Service's EndpointSlices list as
// ready: Ready is only claimed once status.endpoint reaches the primary.
func (r *Reconciler) routedPods(ctx context.Context, db *databasev1.Database) (map[string]bool, error) {
	var slices discoveryv1.EndpointSliceList
	if err := r.List(ctx, &slices, client.InNamespace(db.Namespace),
		client.MatchingLabels{discoveryv1.LabelServiceName: readWriteServiceName(db)}); err != nil {
		return nil, fmt.Errorf("listing endpoint slices: %w", err)
	}
	out := map[string]bool{}
	for _, s := range slices.Items {
		for _, ep := range s.Endpoints {
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" && (ep.Conditions.Ready == nil || *ep.Conditions.Ready) {
				out[ep.TargetRef.Name] = true
			}
		}
	}
	return out, nil
}

// chooseImage returns the image to run. A change of PostgreSQL major version would
// start the new server on an incompatible data directory, so it is refused: the
// running image is kept and the refusal explained.
func chooseImage(db *databasev1.Database, sts *appsv1.StatefulSet) (img, refusal string) {
	want := image(db)
	if sts == nil {
		return want, ""
	}
	running := runningImage(sts)
	if running == "" || running == want {
		return want, ""
	}
	from, to := imageMajor(running), imageMajor(want)
	if from == 0 && db.Status.PostgresVersion != "" {
		from = versionMajor(db.Status.PostgresVersion)
	}
	if from != 0 && to != 0 && from != to {
		return running, fmt.Sprintf("Changing the image from %s to %s would change the PostgreSQL major version from %d to %d, "+
			"which needs a data directory upgrade that this operator does not perform yet; the instances keep running %s. "+
			"Set spec.image back to a %d.x image to clear this", running, want, from, to, running, from)
	}
	return want, ""
}

func runningImage(sts *appsv1.StatefulSet) string {
	for _, c := range sts.Spec.Template.Spec.Containers {
		if c.Name == containerPostgres {
			return c.Image
		}
	}
	return ""
}

func (r *Reconciler) getStatefulSet(ctx context.Context, db *databasev1.Database) (*appsv1.StatefulSet, error) {
	sts := &appsv1.StatefulSet{}
	err := r.Get(ctx, types.NamespacedName{Namespace: db.Namespace, Name: statefulSetName(db)}, sts)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("getting statefulset: %w", err)
	}
	if !metav1.IsControlledBy(sts, db) {
		return nil, fmt.Errorf("statefulset %s exists and is not owned by Database %s", sts.Name, db.Name)
	}
	return sts, nil
}

func (r *Reconciler) applyStatefulSet(ctx context.Context, db *databasev1.Database, existing *appsv1.StatefulSet, img string) error {
	size, err := resource.ParseQuantity(db.Spec.Storage.Size)
	if err != nil {
		return fmt.Errorf("parsing storage.size: %w", err)
	}
	if existing != nil {
		// volumeClaimTemplates are immutable: keep the size they were created with.
		for _, t := range existing.Spec.VolumeClaimTemplates {
			if t.Name == volumeData {
				size = t.Spec.Resources.Requests[corev1.ResourceStorage]
			}
		}
	}
	ac := buildStatefulSet(db, statefulSetInput{Image: img, AgentImage: r.AgentImage, ClaimSize: size})
	return r.applyIfChanged(ctx, ac, func(a map[string]string) { ac.WithAnnotations(a) }, &appsv1.StatefulSet{})
}

// applyConfiguration is a typed apply configuration of a namespaced object.
type applyConfiguration interface {
	runtime.ApplyConfiguration
	GetName() *string
	GetNamespace() *string
}

// applyIfChanged server-side applies obj unless the live object carries the hash of
// the same configuration, so that a steady state costs no API write.
func (r *Reconciler) applyIfChanged(ctx context.Context, obj applyConfiguration, annotate func(map[string]string), live client.Object) error {
	hash, err := specHash(obj)
	if err != nil {
		return err
	}
	name := obj.GetName()
	key := types.NamespacedName{Namespace: *obj.GetNamespace(), Name: *name}
	switch err := r.Get(ctx, key, live); {
	case err == nil:
		if live.GetAnnotations()[AnnotationSpecHash] == hash {
			return nil
		}
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("getting %s: %w", *name, err)
	}
	annotate(map[string]string{AnnotationSpecHash: hash})
	if err := r.Apply(ctx, obj, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying %s: %w", *name, err)
	}
	return nil
}

// expandVolumes grows PersistentVolumeClaims whose request is below spec.storage.size.
func (r *Reconciler) expandVolumes(ctx context.Context, db *databasev1.Database) error {
	want, err := resource.ParseQuantity(db.Spec.Storage.Size)
	if err != nil {
		return fmt.Errorf("parsing storage.size: %w", err)
	}
	var pvcs corev1.PersistentVolumeClaimList
	if err := r.List(ctx, &pvcs, client.InNamespace(db.Namespace), client.MatchingLabels(selectorLabels(db))); err != nil {
		return fmt.Errorf("listing volumes: %w", err)
	}
	for i := range pvcs.Items {
		pvc := &pvcs.Items[i]
		have := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
		if have.Cmp(want) >= 0 {
			continue
		}
		patch := client.MergeFrom(pvc.DeepCopy())
		pvc.Spec.Resources.Requests[corev1.ResourceStorage] = want
		if err := r.Patch(ctx, pvc, patch, client.FieldOwner(FieldOwner)); err != nil {
			return fmt.Errorf("expanding volume %s to %s: %w", pvc.Name, want.String(), err)
		}
	}
	return nil
}

func (r *Reconciler) listPods(ctx context.Context, db *databasev1.Database) ([]corev1.Pod, error) {
	var pods corev1.PodList
	if err := r.List(ctx, &pods, client.InNamespace(db.Namespace), client.MatchingLabels(selectorLabels(db))); err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	return pods.Items, nil
}

func (r *Reconciler) agentToken(ctx context.Context, db *databasev1.Database) (string, error) {
	var s corev1.Secret
	if err := r.Get(ctx, types.NamespacedName{Namespace: db.Namespace, Name: internalSecretName(db)}, &s); err != nil {
		return "", fmt.Errorf("reading agent token: %w", err)
	}
	return string(s.Data[instance.InternalAgentTokenFile]), nil
}

// labelRoles sets the role label of each pod to what its agent reports, touching only
// pods whose label differs. Pods whose agent did not answer keep their label: a
// primary that is briefly unreachable still receives traffic.
func (r *Reconciler) labelRoles(ctx context.Context, pods []corev1.Pod, reports map[string]InstanceReport) error {
	for i := range pods {
		pod := &pods[i]
		rep, ok := reports[pod.Name]
		if !ok || rep.Err != nil || rep.Status == nil || rep.Status.Role == "" || pod.Labels[LabelRole] == rep.Status.Role {
			continue
		}
		patch := client.MergeFrom(pod.DeepCopy())
		if pod.Labels == nil {
			pod.Labels = map[string]string{}
		}
		pod.Labels[LabelRole] = rep.Status.Role
		if err := r.Patch(ctx, pod, patch, client.FieldOwner(FieldOwner)); err != nil {
			return fmt.Errorf("labelling pod %s as %s: %w", pod.Name, rep.Status.Role, err)
		}
		logf.FromContext(ctx).Info("instance role changed", "pod", pod.Name, "role", rep.Status.Role)
	}
	return nil
}

// patchStatus writes the status only when it changed, and emits an event when the
// phase changed.
func (r *Reconciler) patchStatus(ctx context.Context, db *databasev1.Database, st databasev1.DatabaseStatus) error {
	if equality.Semantic.DeepEqual(db.Status, st) {
		return nil
	}
	before := db.DeepCopy()
	oldPhase := db.Status.Phase
	db.Status = st
	if err := r.Status().Patch(ctx, db, client.MergeFrom(before), client.FieldOwner(FieldOwner)); err != nil {
		return fmt.Errorf("patching status: %w", err)
	}
	if oldPhase != st.Phase && r.Recorder != nil {
		eventType := corev1.EventTypeNormal
		if st.Phase == databasev1.PhaseFailed {
			eventType = corev1.EventTypeWarning
		}
		ready := findCondition(st, databasev1.ConditionReady)
		r.Recorder.Eventf(db, nil, eventType, "Phase"+string(st.Phase), "PhaseChange",
			"Phase changed from %q to %q: %s", oldPhase, st.Phase, ready)
	}
	return nil
}

func findCondition(st databasev1.DatabaseStatus, typ string) string {
	for _, c := range st.Conditions {
		if c.Type == typ {
			return c.Message
		}
	}
	return ""
}

// SetupWithManager registers the controller: it reconciles on spec changes of a
// Database (not on its own status writes), on any change of the children it owns,
// and on changes of the instance pods.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&databasev1.Database{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Owns(&appsv1.StatefulSet{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.Secret{}).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(podToDatabase)).
		Watches(&discoveryv1.EndpointSlice{}, handler.EnqueueRequestsFromMapFunc(sliceToDatabase)).
		Named("database").
		Complete(r)
}

// sliceToDatabase maps an EndpointSlice of a Service the operator manages (the
// slice carries the Service's labels) to its Database.
func sliceToDatabase(_ context.Context, o client.Object) []ctrl.Request {
	l := o.GetLabels()
	if l[LabelManagedBy] != ManagedByValue || l[LabelDatabase] == "" || l[discoveryv1.LabelServiceName] != l[LabelDatabase] {
		return nil
	}
	return []ctrl.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: l[LabelDatabase]}}}
}

func podToDatabase(_ context.Context, o client.Object) []ctrl.Request {
	l := o.GetLabels()
	if l[LabelApp] != appValue || l[LabelDatabase] == "" || l[LabelManagedBy] != ManagedByValue {
		return nil
	}
	return []ctrl.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: l[LabelDatabase]}}}
}
