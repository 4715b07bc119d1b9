package database

import (
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	databasev1 "github.com/example/postgres-operator/api/v1"
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
		{"point-in-time bootstrap with two targets", "size: 10Gi", "size: 10Gi\n  bootstrap:\n    pointInTime:\n      databaseRef: {name: src}\n      latest: true\n      lsn: 0/1000000",
			"set exactly one target: time, lsn, xid, restorePoint or latest: true"},
		{"point-in-time bootstrap without a target", "size: 10Gi", "size: 10Gi\n  bootstrap:\n    pointInTime:\n      databaseRef: {name: src}\n      inclusive: false",
			"set exactly one target"},
		{"point-in-time bootstrap with two sources", "size: 10Gi", "size: 10Gi\n  bootstrap:\n    pointInTime:\n      databaseRef: {name: src}\n      storageLocation: s3://b/p\n      systemIdentifier: \"7\"\n      latest: true",
			"set exactly one source"},
		{"point-in-time bootstrap from a bare location without the system identifier", "size: 10Gi", "size: 10Gi\n  bootstrap:\n    pointInTime:\n      storageLocation: s3://b/p\n      latest: true",
			"a bare archive location needs systemIdentifier"},
		{"point-in-time bootstrap to a malformed LSN", "size: 10Gi", "size: 10Gi\n  bootstrap:\n    pointInTime:\n      databaseRef: {name: src}\n      lsn: yesterday",
			"spec.bootstrap.pointInTime.lsn in body should match"},
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
		{"negative maxLagOnFailover", "size: 10Gi", "size: 10Gi\n  failover:\n    maxLagOnFailover: -1Mi", "failover.maxLagOnFailover must be a non-negative quantity of bytes such as 1Mi"},
		{"negative failover delay", "size: 10Gi", "size: 10Gi\n  failover:\n    failoverDelaySeconds: -1", "spec.failover.failoverDelaySeconds in body should be greater than or equal to 0"},
		{"parameters the operator manages", "size: 10Gi", "size: 10Gi\n  postgresql:\n    parameters:\n      work_mem: 64MB\n      wal_level: minimal\n      port: \"6543\"",
			"a parameter is managed by the operator and cannot be set"},
		{"a parameter name that is no setting", "size: 10Gi", "size: 10Gi\n  postgresql:\n    parameters:\n      Work-Mem: 64MB",
			"parameter names are lowercase PostgreSQL setting names"},
		{"a parameter value over two lines", "size: 10Gi", "size: 10Gi\n  postgresql:\n    parameters:\n      work_mem: \"64MB\\nport = 1\"",
			"spec.postgresql.parameters.work_mem in body should match"},
		{"shared_preload_libraries as a parameter", "size: 10Gi", "size: 10Gi\n  postgresql:\n    parameters:\n      shared_preload_libraries: pg_stat_statements",
			"shared_preload_libraries (use sharedPreloadLibraries)"},
		{"a pg_hba line of another type", "size: 10Gi", "size: 10Gi\n  postgresql:\n    pgHBA: [\"all all 0.0.0.0/0 trust\"]",
			"each pg_hba line starts with local, host, hostssl"},
		{"a pg_hba line for the superuser", "size: 10Gi", "size: 10Gi\n  postgresql:\n    pgHBA: [\"host all postgres 0.0.0.0/0 trust\"]",
			"pg_hba lines may not name postgres, streaming_replica or postgres_operator_monitor"},
		{"a library name with a path", "size: 10Gi", "size: 10Gi\n  postgresql:\n    sharedPreloadLibraries: [\"/tmp/evil\"]",
			"spec.postgresql.sharedPreloadLibraries[0] in body should match"},
		{"a pvc:// WAL archive", "size: 10Gi", "size: 10Gi\n  walArchive:\n    storageLocation: pvc://claim/wal",
			"walArchive.storageLocation must be an s3:// location"},
		{"a WAL archive timeout below 10s", "size: 10Gi", "size: 10Gi\n  walArchive:\n    archiveTimeout: 5s",
			"walArchive.archiveTimeout must be between 10s and 1h"},
		{"a WAL archive timeout above 1h", "size: 10Gi", "size: 10Gi\n  walArchive:\n    archiveTimeout: 2h",
			"walArchive.archiveTimeout must be between 10s and 1h"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			manifest := strings.Replace(seedManifest, tc.from, tc.to, 1)
			manifest = strings.Replace(manifest, "name: my-database", "name: bad-"+strconv.Itoa(i), 1)
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
// The CRD's deny-list of parameters is databasev1.ManagedParameters, no more,
// no less.
func TestManagedParametersMatchTheCRDRule(t *testing.T) {
	raw, err := os.ReadFile("../../../config/crd/bases/database.example.com_databases.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`self.all\(k, !\(k in \[([^\]]*)\]\)\)`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("no deny-list rule in the CRD")
	}
	var inCRD []string
	for _, q := range strings.Split(string(m[1]), ",") {
		inCRD = append(inCRD, strings.Trim(strings.TrimSpace(q), "'"))
	}
	if !slices.Equal(inCRD, databasev1.ManagedParameters) {
		t.Errorf("the CRD refuses %v, ManagedParameters is %v", inCRD, databasev1.ManagedParameters)
	}
}

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
		{"bootstrap cannot be added to a Database that exists", "storageClass: fast", "storageClass: fast\n  bootstrap:\n    pointInTime:\n      databaseRef: {name: src}\n      latest: true",
			"spec.bootstrap can be set only when the Database is created, and never removed"},
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
	t.Run("bootstrap can neither be removed nor changed", func(t *testing.T) {
		pitr := strings.Replace(strings.Replace(base, "name: my-database", "name: pitr-db", 1), "storageClass: fast",
			"storageClass: fast\n  bootstrap:\n    pointInTime:\n      databaseRef: {name: src}\n      latest: true", 1)
		if err := applyYAML(t, ns, pitr); err != nil {
			t.Fatal(err)
		}
		for to, want := range map[string]string{
			"":                               "spec.bootstrap can be set only when the Database is created, and never removed",
			"time: \"2026-12-07T12:00:00Z\"": "spec.bootstrap cannot change",
		} {
			changed := strings.Replace(pitr, "\n  bootstrap:\n    pointInTime:\n      databaseRef: {name: src}\n      latest: true", "", 1)
			if to != "" {
				changed = strings.Replace(pitr, "latest: true", to, 1)
			}
			if err := applyYAML(t, ns, changed); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%q: %v, want %q", to, err, want)
			}
		}
	})
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

// maxLagOnFailover takes any non-negative quantity, as a string or an integer;
// when absent the CRD defaults it to 1Mi.
func TestMaxLagOnFailoverAcceptsNonNegativeQuantities(t *testing.T) {
	ns := newNamespace(t)
	for i, v := range []string{"0", "16Mi", "1048576", "\"2M\""} {
		manifest := strings.Replace(seedManifest, "size: 10Gi", "size: 10Gi\n  failover:\n    maxLagOnFailover: "+v, 1)
		manifest = strings.Replace(manifest, "name: my-database", "name: lag-"+strconv.Itoa(i), 1)
		if err := applyYAML(t, ns, manifest); err != nil {
			t.Errorf("maxLagOnFailover %s refused: %v", v, err)
		}
	}
	if err := applyYAML(t, ns, strings.Replace(seedManifest, "name: my-database", "name: lag-default", 1)); err != nil {
		t.Fatal(err)
	}
	db := getDB(t, ns, "lag-default")
	if q := db.Spec.Failover.MaxLagOnFailover; q == nil || q.Value() != 1<<20 {
		t.Errorf("default maxLagOnFailover %v, want 1Mi", q)
	}
}
