package database

import (
	"strings"
	"testing"
)

// Every validation rule of the CRD, applied to the real API server: bad input is
// rejected with a message that says what is wrong.
func TestCreateValidation(t *testing.T) {
	ns := newNamespace(t)
	tests := []struct {
		name, from, to, wantMessage string
	}{
		{"replicas above 10", "replicas: 1", "replicas: 11", "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10"},
		{"replicas zero", "replicas: 1", "replicas: 0", "spec.replicas in body should be greater than or equal to 1"},
		{"size not a quantity", "size: 10Gi", "size: ten-gigs", "storage.size must be a positive quantity such as 10Gi"},
		{"size zero", "size: 10Gi", "size: \"0\"", "storage.size must be a positive quantity such as 10Gi"},
		{"database name with a dash", "databaseName: mydb", "databaseName: my-db", "databaseName must be a lowercase PostgreSQL identifier"},
		{"database name uppercase", "databaseName: mydb", "databaseName: MyDB", "databaseName must be a lowercase PostgreSQL identifier"},
		{"database name postgres", "databaseName: mydb", "databaseName: postgres", "databaseName must not be a reserved name"},
		{"database name template0", "databaseName: mydb", "databaseName: template0", "databaseName must not be a reserved name"},
		{"database name template1", "databaseName: mydb", "databaseName: template1", "databaseName must not be a reserved name"},
		{"database name pg_", "databaseName: mydb", "databaseName: pg_stuff", "databaseName must not be a reserved name"},
		{"database name too long", "databaseName: mydb", "databaseName: " + strings.Repeat("a", 64), "spec.databaseName: Too long"},
		{"username with a quote", "username: admin", "username: \"ad'min\"", "username must be a lowercase PostgreSQL identifier"},
		{"username postgres", "username: admin", "username: postgres", "username must not be a reserved name"},
		{"username pg_", "username: admin", "username: pg_admin", "username must not be a reserved name"},
		{"username streaming_replica", "username: admin", "username: streaming_replica", "username must not be a reserved name"},
		{"empty image", "image: postgres:14", "image: \"\"", "image must not be empty"},
		{"missing databaseName", "  databaseName: mydb\n", "", "spec.databaseName: Required value"},
		{"renew deadline too close to the lease duration", "size: 10Gi", "size: 10Gi\n  failover:\n    leaseDurationSeconds: 11",
			"failover.renewDeadlineSeconds must be at least 2 seconds shorter than failover.leaseDurationSeconds"},
		{"retry period above half the renew deadline", "size: 10Gi", "size: 10Gi\n  failover:\n    retryPeriodSeconds: 6",
			"failover.retryPeriodSeconds must be at most half of failover.renewDeadlineSeconds"},
		{"lease duration below 5s", "size: 10Gi", "size: 10Gi\n  failover:\n    leaseDurationSeconds: 4\n    renewDeadlineSeconds: 2\n    retryPeriodSeconds: 1",
			"spec.failover.leaseDurationSeconds in body should be greater than or equal to 5"},
		{"synchronous replicas not below replicas", "replicas: 1", "replicas: 2\n  synchronousReplicas: 2", "synchronousReplicas must be below replicas"},
		{"a pod label the operator selects on", "size: 10Gi", "size: 10Gi\n  podTemplate:\n    labels:\n      role: primary",
			"labels must not set app, database, name, role or app.kubernetes.io/managed-by"},
		{"a Service label the operator selects on", "size: 10Gi", "size: 10Gi\n  serviceTemplate:\n    labels:\n      app: other",
			"labels must not set app, database, name, role or app.kubernetes.io/managed-by"},
		{"negative failover delay", "size: 10Gi", "size: 10Gi\n  failover:\n    failoverDelaySeconds: -1", "spec.failover.failoverDelaySeconds in body should be greater than or equal to 0"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			manifest := strings.Replace(seedManifest, tc.from, tc.to, 1)
			manifest = strings.Replace(manifest, "name: my-database", "name: bad-"+string(rune('a'+i)), 1)
			err := applyYAML(t, ns, manifest)
			if err == nil {
				t.Fatalf("accepted:\n%s", manifest)
			}
			if !strings.Contains(err.Error(), tc.wantMessage) {
				t.Errorf("error %q does not contain %q", err.Error(), tc.wantMessage)
			}
		})
	}
}

// The Database's own name must give children that can exist: a DNS-1035 label of
// at most 52 characters, not ending in a suffix of another Database's Services.
func TestNameValidation(t *testing.T) {
	ns := newNamespace(t)
	tests := []struct{ name, wantMessage string }{
		{strings.Repeat("a", 53), "at most 52 characters"},
		{"my.database", "must be a DNS-1035 label"},
		{"1database", "must be a DNS-1035 label"},
		{"orders-ro", "must not end in -ro or -hl"},
		{"orders-hl", "must not end in -ro or -hl"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := applyYAML(t, ns, strings.Replace(seedManifest, "name: my-database", "name: "+tc.name, 1))
			if err == nil || !strings.Contains(err.Error(), tc.wantMessage) {
				t.Errorf("name %q: error %v, want one containing %q", tc.name, err, tc.wantMessage)
			}
		})
	}
	if err := applyYAML(t, ns, strings.Replace(seedManifest, "name: my-database", "name: "+strings.Repeat("a", 52), 1)); err != nil {
		t.Errorf("a 52-character name was refused: %v", err)
	}
}

func TestUpdateValidation(t *testing.T) {
	ns := newNamespace(t)
	base := strings.Replace(seedManifest, "size: 10Gi", "size: 10Gi\n    storageClass: fast", 1)
	if err := applyYAML(t, ns, base); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, from, to, wantMessage string
	}{
		{"databaseName is immutable", "databaseName: mydb", "databaseName: otherdb", "databaseName is immutable"},
		{"username is immutable", "username: admin", "username: other", "username is immutable"},
		{"storageClass is immutable", "storageClass: fast", "storageClass: slow", "storage.storageClass is immutable"},
		{"storageClass cannot be removed", "\n    storageClass: fast", "", "storage.storageClass is immutable"},
		{"storage never shrinks", "size: 10Gi", "size: 5Gi", "storage.size may grow but never shrink"},
		{"storage never shrinks across units", "size: 10Gi", "size: 10G", "storage.size may grow but never shrink"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := applyYAML(t, ns, strings.Replace(base, tc.from, tc.to, 1))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.wantMessage) {
				t.Errorf("error %q does not contain %q", err.Error(), tc.wantMessage)
			}
		})
	}
	t.Run("storage may grow", func(t *testing.T) {
		if err := applyYAML(t, ns, strings.Replace(base, "size: 10Gi", "size: 20Gi", 1)); err != nil {
			t.Errorf("growing storage was refused: %v", err)
		}
	})
}

func TestDefaults(t *testing.T) {
	ns := newNamespace(t)
	manifest := strings.Replace(strings.Replace(seedManifest, "  image: postgres:14\n", "", 1), "  replicas: 1\n", "", 1)
	if err := applyYAML(t, ns, manifest); err != nil {
		t.Fatal(err)
	}
	db := getDB(t, ns, "my-database")
	if db.Spec.Image != "postgres:17" || db.Spec.Replicas == nil || *db.Spec.Replicas != 1 {
		t.Errorf("defaults: image %q replicas %v", db.Spec.Image, db.Spec.Replicas)
	}
	if db.Spec.MaxReplicationLag == nil || db.Spec.MaxReplicationLag.String() != "64Mi" {
		t.Errorf("default maxReplicationLag = %v", db.Spec.MaxReplicationLag)
	}
}
