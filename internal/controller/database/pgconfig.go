package database

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
)

// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;patch

// The Database's spec.postgresql reaches the instances as a file of the
// <name>-config ConfigMap. Each agent rewrites its configuration when the file
// changes and reloads PostgreSQL; it reports which configuration it runs and the
// settings waiting for a restart. Those restart the instances one at a time:
// status.configuration.restartedFor becomes the configuration's hash, the pods'
// template carries it as an annotation, and the rollout restarts standbys first
// and the primary last, after a switchover.

func configMapName(db *databasev1.Database) string { return db.Name + "-config" }

// userConfig is db's spec.postgresql as the agents read it.
func userConfig(db *databasev1.Database) agentapi.UserConfig {
	c := agentapi.UserConfig{
		PgHBA:                  db.Spec.PostgreSQL.PgHBA,
		SharedPreloadLibraries: db.Spec.PostgreSQL.SharedPreloadLibraries,
	}
	if len(db.Spec.PostgreSQL.Parameters) > 0 {
		c.Parameters = make(map[string]string, len(db.Spec.PostgreSQL.Parameters))
		for k, v := range db.Spec.PostgreSQL.Parameters {
			c.Parameters[k] = string(v)
		}
	}
	return c
}

// buildConfigMap is the <name>-config ConfigMap and the hash of its file.
func buildConfigMap(db *databasev1.Database) (*corev1ac.ConfigMapApplyConfiguration, string, error) {
	b, hash, err := userConfig(db).Encode()
	if err != nil {
		return nil, "", err
	}
	return corev1ac.ConfigMap(configMapName(db), db.Namespace).
		WithLabels(withExtra(map[string]string{LabelManagedBy: ManagedByValue, LabelDatabase: db.Name}, nil)).
		WithOwnerReferences(ownerReference(db)).
		WithData(map[string]string{agentapi.UserConfigFile: string(b)}), hash, nil
}

func (r *Reconciler) reconcileConfig(ctx context.Context, db *databasev1.Database, obs *observation) error {
	ac, hash, err := buildConfigMap(db)
	if err != nil {
		return err
	}
	obs.ConfigHash = hash
	live := &corev1.ConfigMap{}
	err = r.Get(ctx, types.NamespacedName{Namespace: db.Namespace, Name: configMapName(db)}, live)
	switch {
	case err == nil && !metav1.IsControlledBy(live, db):
		conflict(obs, "ConfigMap", live, db)
		return nil
	case err != nil && !apierrors.IsNotFound(err):
		return fmt.Errorf("getting configmap %s: %w", configMapName(db), err)
	case err != nil:
		live = nil
	}
	return r.applyIfChanged(ctx, "ConfigMap", ac, live, func() *string { return ac.ResourceVersion })
}

// configurationVerdict is the Database's configuration status and its
// ConfigurationApplied condition.
type configurationVerdict struct {
	Status          databasev1.ConfigurationStatus
	Condition       metav1.ConditionStatus
	Reason, Message string
}

// decideConfiguration derives how far the configuration hash has reached the
// instances from their reports, and whether they must restart for it.
func decideConfiguration(hash string, prev *databasev1.ConfigurationStatus, total int, reports map[string]InstanceReport) configurationVerdict {
	v := configurationVerdict{Status: databasev1.ConfigurationStatus{Hash: hash}}
	if prev != nil {
		v.Status.RestartedFor = prev.RestartedFor
	}
	applied := 0
	var pending, invalid, refused []string
	pods := make([]string, 0, len(reports))
	for pod := range reports {
		pods = append(pods, pod)
	}
	sort.Strings(pods)
	for _, pod := range pods {
		st := reports[pod].Status
		if st == nil || !st.Running {
			continue
		}
		if st.ConfigError != "" {
			refused = append(refused, pod+": "+st.ConfigError)
		}
		for _, e := range st.ConfigErrors {
			invalid = append(invalid, pod+": "+e)
		}
		if st.ConfigHash != hash {
			continue
		}
		applied++
		for _, p := range st.PendingRestart {
			if !slices.Contains(pending, p) {
				pending = append(pending, p)
			}
		}
	}
	sort.Strings(pending)
	v.Status.Applied = fmt.Sprintf("%d/%d", applied, total)
	v.Status.PendingRestart = pending
	switch {
	case len(invalid) > 0:
		v.Condition, v.Reason = metav1.ConditionFalse, databasev1.ReasonConfigurationInvalid
		v.Message = "PostgreSQL refused settings of spec.postgresql (the previous values stay in effect; no restart is made): " + strings.Join(invalid, "; ")
	case len(refused) > 0:
		v.Condition, v.Reason = metav1.ConditionFalse, databasev1.ReasonConfigurationInvalid
		v.Message = "The instances refused spec.postgresql: " + strings.Join(refused, "; ")
	case len(pending) > 0:
		v.Status.RestartedFor = hash
		v.Condition, v.Reason = metav1.ConditionFalse, databasev1.ReasonRollingRestart
		v.Message = fmt.Sprintf("%s take effect after a restart: the instances restart one at a time, standbys first, then the primary after a switchover",
			strings.Join(pending, ", "))
	case applied < total:
		v.Condition, v.Reason = metav1.ConditionFalse, databasev1.ReasonConfigurationApplying
		v.Message = fmt.Sprintf("%d of %d instances run configuration %s (a ConfigMap reaches the pods within about a minute)", applied, total, hash)
	default:
		how := "loaded by a reload"
		if v.Status.RestartedFor == hash {
			how = "in effect after a rolling restart"
		}
		v.Condition, v.Reason = metav1.ConditionTrue, databasev1.ReasonConfigurationApplied
		v.Message = fmt.Sprintf("All %d instances run configuration %s (%s)", total, hash, how)
	}
	return v
}
