package database

import (
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
)

func report(hash string, pending []string, errs ...string) InstanceReport {
	return InstanceReport{Status: &agentapi.Status{Running: true, ConfigHash: hash, PendingRestart: pending, ConfigErrors: errs}}
}

// The transitions of spec.postgresql's rollout: loading, reloaded, a restart
// decided once and kept, invalid values never restarted.
func TestDecideConfiguration(t *testing.T) {
	for _, c := range []struct {
		name        string
		prev        *databasev1.ConfigurationStatus
		reports     map[string]InstanceReport
		wantReason  string
		wantStatus  metav1.ConditionStatus
		wantRestart string
		wantApplied string
		wantInMsg   string
	}{
		{"not loaded anywhere yet", nil,
			map[string]InstanceReport{"db-0": report("old", nil), "db-1": report("old", nil)},
			databasev1.ReasonConfigurationApplying, metav1.ConditionFalse, "", "0/2", "0 of 2 instances run configuration new"},
		{"loaded by a reload everywhere", nil,
			map[string]InstanceReport{"db-0": report("new", nil), "db-1": report("new", nil)},
			databasev1.ReasonConfigurationApplied, metav1.ConditionTrue, "", "2/2", "loaded by a reload"},
		{"a setting needs a restart: decided for this hash", &databasev1.ConfigurationStatus{RestartedFor: "older"},
			map[string]InstanceReport{"db-0": report("new", []string{"shared_buffers"}), "db-1": report("new", []string{"max_connections", "shared_buffers"})},
			databasev1.ReasonRollingRestart, metav1.ConditionFalse, "new", "2/2", "max_connections, shared_buffers take effect after a restart"},
		{"the restart went through", &databasev1.ConfigurationStatus{RestartedFor: "new"},
			map[string]InstanceReport{"db-0": report("new", nil), "db-1": report("new", nil)},
			databasev1.ReasonConfigurationApplied, metav1.ConditionTrue, "new", "2/2", "after a rolling restart"},
		{"a pending restart of an instance that has not loaded the new file does not count", &databasev1.ConfigurationStatus{RestartedFor: "older"},
			map[string]InstanceReport{"db-0": report("old", []string{"shared_buffers"}), "db-1": report("new", nil)},
			databasev1.ReasonConfigurationApplying, metav1.ConditionFalse, "older", "1/2", ""},
		{"an invalid value is reported and never restarts", &databasev1.ConfigurationStatus{RestartedFor: "older"},
			map[string]InstanceReport{"db-0": report("new", []string{"shared_buffers"}, `shared_buffers (line 3): setting could not be applied`), "db-1": report("new", nil)},
			databasev1.ReasonConfigurationInvalid, metav1.ConditionFalse, "older", "2/2", "db-0: shared_buffers (line 3)"},
		{"a refused file", nil,
			map[string]InstanceReport{"db-0": {Status: &agentapi.Status{Running: true, ConfigError: "port is managed by the operator"}}},
			databasev1.ReasonConfigurationInvalid, metav1.ConditionFalse, "", "0/2", "port is managed"},
		{"instances that do not run are not counted", nil,
			map[string]InstanceReport{"db-0": report("new", nil), "db-1": {Status: &agentapi.Status{Running: false, ConfigHash: "new"}}},
			databasev1.ReasonConfigurationApplying, metav1.ConditionFalse, "", "1/2", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := decideConfiguration("new", c.prev, 2, c.reports)
			if v.Reason != c.wantReason || v.Condition != c.wantStatus || v.Status.RestartedFor != c.wantRestart || v.Status.Applied != c.wantApplied ||
				!strings.Contains(v.Message, c.wantInMsg) {
				t.Errorf("got %s/%s restartedFor %q applied %s: %s", v.Condition, v.Reason, v.Status.RestartedFor, v.Status.Applied, v.Message)
			}
		})
	}
}

func TestTheConfigMapCarriesSpecPostgreSQLAndThePodsMountIt(t *testing.T) {
	db := testDB(2)
	db.Spec.PostgreSQL = databasev1.PostgreSQLConfig{
		Parameters:             map[string]databasev1.ParameterValue{"work_mem": "64MB", "max_connections": "200"},
		PgHBA:                  []string{"hostssl all all 10.0.0.0/8 scram-sha-256"},
		SharedPreloadLibraries: []string{"pg_stat_statements"},
	}
	cm, hash, err := buildConfigMap(db)
	if err != nil {
		t.Fatal(err)
	}
	file := cm.Data[agentapi.UserConfigFile]
	if want := `{"parameters":{"max_connections":"200","work_mem":"64MB"},"pgHBA":["hostssl all all 10.0.0.0/8 scram-sha-256"],"sharedPreloadLibraries":["pg_stat_statements"]}`; file != want {
		t.Errorf("file = %s", file)
	}
	if hash != agentapi.ConfigHash([]byte(file)) {
		t.Error("the hash is not the file's")
	}
	_, again, _ := buildConfigMap(db)
	if again != hash {
		t.Error("the hash is not stable")
	}
	db.Spec.PostgreSQL.Parameters["work_mem"] = "128MB"
	if _, changed, _ := buildConfigMap(db); changed == hash {
		t.Error("a changed parameter keeps the hash")
	}
}

func TestThePodsMountTheConfigurationAndCarryTheRestartHash(t *testing.T) {
	db := testDB(2)
	db.Spec.PodTemplate.Annotations = map[string]string{"team": "payments"}
	plain := buildStatefulSet(db, statefulSetInput{Image: "postgres:15", AgentImage: "op:1", ClaimSize: resource.MustParse("1Gi")})
	if _, ok := plain.Spec.Template.Annotations[databasev1.AnnotationConfigRestart]; ok {
		t.Error("a restart annotation before any restart was needed")
	}
	ac := buildStatefulSet(db, statefulSetInput{Image: "postgres:15", AgentImage: "op:1", ClaimSize: resource.MustParse("1Gi"), ConfigRestart: "abc"})
	if got := ac.Spec.Template.Annotations; got[databasev1.AnnotationConfigRestart] != "abc" || got["team"] != "payments" {
		t.Errorf("annotations = %v", got)
	}
	if db.Spec.PodTemplate.Annotations[databasev1.AnnotationConfigRestart] != "" {
		t.Error("the spec's map was modified")
	}
	var mounted, optional bool
	for _, v := range ac.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil && *v.ConfigMap.Name == configMapName(db) {
			optional = v.ConfigMap.Optional != nil && *v.ConfigMap.Optional
		}
	}
	c := ac.Spec.Template.Spec.Containers[0]
	for _, m := range c.VolumeMounts {
		mounted = mounted || (*m.MountPath == agentapi.DefaultConfigDir && *m.ReadOnly)
	}
	if !mounted || !optional {
		t.Errorf("config volume mounted %v (read-only), optional %v", mounted, optional)
	}
	if !slices.Contains(c.Command, "--config-dir="+agentapi.DefaultConfigDir) {
		t.Errorf("the agent is not told where the configuration is: %v", c.Command)
	}
}
