package database

import (
	"context"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	databasev1 "github.com/example/postgres-operator/api/v1"
	"github.com/example/postgres-operator/internal/agentapi"
	"github.com/example/postgres-operator/internal/walarchive"
)

// The ContinuousArchiving condition and status.walArchive, from the archive
// step and the primary's report: one row per rule.
func TestDecideArchiving(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	t1 := t0.Add(time.Minute)
	loc := "s3://bucket/ns/db"
	configured := &archiveObs{Configured: true, Location: loc}
	report := func(a *agentapi.ArchiveStatus) *agentapi.Status {
		return &agentapi.Status{Role: agentapi.RolePrimary, Archive: a}
	}
	for _, tc := range []struct {
		name    string
		obs     *archiveObs
		primary *agentapi.Status
		status  metav1.ConditionStatus
		reason  string
		message string
	}{
		{"no archive: no condition", nil, nil, "", "", ""},
		{"no location: False with why", &archiveObs{Reason: databasev1.ReasonNoArchiveLocation, Message: "no default"}, nil,
			metav1.ConditionFalse, databasev1.ReasonNoArchiveLocation, "no default"},
		{"no primary: Unknown", configured, nil, metav1.ConditionUnknown, databasev1.ReasonArchiveUnknown, "Waiting for the primary"},
		{"a primary still archiving elsewhere (before its reload): Unknown", configured,
			report(&agentapi.ArchiveStatus{Location: "s3://old/x"}), metav1.ConditionUnknown, databasev1.ReasonArchiveUnknown, loc},
		{"nothing archived yet: starting", configured, report(&agentapi.ArchiveStatus{Location: loc}),
			metav1.ConditionTrue, databasev1.ReasonArchiveStarting, "no WAL file archived yet"},
		{"archived: True naming the file", configured,
			report(&agentapi.ArchiveStatus{Location: loc, LastArchivedWAL: "000000010000000000000003", LastArchivedTime: &t0}),
			metav1.ConditionTrue, databasev1.ReasonArchiving, "000000010000000000000003"},
		{"a failure after the last success: False with the store's error", configured,
			report(&agentapi.ArchiveStatus{Location: loc, LastArchivedWAL: "000000010000000000000003", LastArchivedTime: &t0,
				LastFailedWAL: "000000010000000000000004", LastFailedTime: &t1, PendingFiles: 2, Error: "connection refused"}),
			metav1.ConditionFalse, databasev1.ReasonArchiveFailing, "connection refused"},
		{"a success after the last failure: True again", configured,
			report(&agentapi.ArchiveStatus{Location: loc, LastArchivedWAL: "000000010000000000000004", LastArchivedTime: &t1,
				LastFailedWAL: "000000010000000000000004", LastFailedTime: &t0}),
			metav1.ConditionTrue, databasev1.ReasonArchiving, "000000010000000000000004"},
		{"a configuration the agent cannot read: False, every push fails", configured,
			report(&agentapi.ArchiveStatus{ConfigError: "reading the archive configuration: config.json: invalid character"}),
			metav1.ConditionFalse, databasev1.ReasonArchiveFailing, "invalid character"},
		{"failing from the start", configured,
			report(&agentapi.ArchiveStatus{Location: loc, LastFailedWAL: "000000010000000000000001", LastFailedTime: &t0}),
			metav1.ConditionFalse, databasev1.ReasonArchiveFailing, "000000010000000000000001"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := decideArchiving(tc.obs, tc.primary, nil)
			if v.Condition != tc.status || v.Reason != tc.reason || !strings.Contains(v.Message, tc.message) {
				t.Errorf("got %s %s %q, want %s %s containing %q", v.Condition, v.Reason, v.Message, tc.status, tc.reason, tc.message)
			}
			if tc.primary != nil && tc.primary.Archive != nil && tc.primary.Archive.Location == loc {
				a := tc.primary.Archive
				if v.Status == nil || v.Status.LastArchivedWAL != a.LastArchivedWAL || v.Status.LastFailedWAL != a.LastFailedWAL ||
					int(v.Status.PendingFiles) != a.PendingFiles || v.Status.Location != loc {
					t.Errorf("status = %+v from %+v", v.Status, a)
				}
			}
		})
	}
}

// The window in status.walArchive and the Recoverable condition, from the
// primary's survey of the archive and its last archived commit.
func TestTheRecoverableWindow(t *testing.T) {
	loc := "s3://bucket/ns/db"
	configured := &archiveObs{Configured: true, Location: loc}
	at := func(s string) *time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return &v
	}
	mt := func(s string) *metav1.Time { v := metav1.NewTime(*at(s)); return &v }
	survey := &agentapi.ArchiveWindow{SurveyTime: *at("2026-12-07T12:00:00Z"), FirstRecoverablePoint: at("2026-12-07T10:00:00.2Z"),
		FirstBaseBackup: "nightly", BaseBackups: 2, Usable: 1, Gaps: []string{"segment 000000010000000000000002 is missing"}}
	prev := &databasev1.WALArchiveStatus{Location: loc, FirstRecoverablePoint: mt("2026-12-06T10:00:01Z"), LastRecoverablePoint: mt("2026-12-07T11:00:00Z"),
		BaseBackups: 3, UsableBaseBackups: 3, SurveyTime: mt("2026-12-07T11:59:00Z")}
	for _, tc := range []struct {
		name        string
		report      *agentapi.ArchiveStatus
		prev        *databasev1.WALArchiveStatus
		first, last string
		status      metav1.ConditionStatus
		reason, msg string
	}{
		{"no survey yet: Unknown", &agentapi.ArchiveStatus{Location: loc}, nil, "", "", metav1.ConditionUnknown, databasev1.ReasonRecoverableUnknown, "survey"},
		{"a new primary that has not surveyed keeps the previous window", &agentapi.ArchiveStatus{Location: loc}, prev,
			"2026-12-06T10:00:01Z", "2026-12-07T11:00:00Z", metav1.ConditionTrue, databasev1.ReasonRecoverable, "3 usable"},
		{"no base backup: False, take a Physical Backup", &agentapi.ArchiveStatus{Location: loc, Window: &agentapi.ArchiveWindow{SurveyTime: time.Now()}}, nil,
			"", "", metav1.ConditionFalse, databasev1.ReasonNoBaseBackup, "method: Physical"},
		{"every base backup before a gap: False naming it", &agentapi.ArchiveStatus{Location: loc, Window: &agentapi.ArchiveWindow{SurveyTime: time.Now(), BaseBackups: 1,
			Gaps: []string{"segment 000000010000000000000009 is missing"}}}, nil, "", "", metav1.ConditionFalse, databasev1.ReasonArchiveGap, "000000010000000000000009"},
		{"a window: from the base backup's end rounded up to the last commit rounded down", &agentapi.ArchiveStatus{Location: loc, Window: survey,
			LastCommitTime: at("2026-12-07T11:58:30.9Z")}, nil,
			"2026-12-07T10:00:01Z", "2026-12-07T11:58:30Z", metav1.ConditionTrue, databasev1.ReasonRecoverable, "before the window: segment 000000010000000000000002"},
		{"no commit since the base backup: the window is its end", &agentapi.ArchiveStatus{Location: loc, Window: survey}, nil,
			"2026-12-07T10:00:01Z", "2026-12-07T10:00:01Z", metav1.ConditionTrue, databasev1.ReasonRecoverable, "1 usable"},
		{"a new primary that has archived no commit yet keeps the last point", &agentapi.ArchiveStatus{Location: loc, Window: survey}, prev,
			"2026-12-07T10:00:01Z", "2026-12-07T11:00:00Z", metav1.ConditionTrue, databasev1.ReasonRecoverable, "2026-12-07T11:00:00Z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := decideArchiving(configured, &agentapi.Status{Role: agentapi.RolePrimary, Archive: tc.report}, tc.prev)
			st := v.Status
			str := func(p *metav1.Time) string {
				if p == nil {
					return ""
				}
				return p.UTC().Format(time.RFC3339)
			}
			if str(st.FirstRecoverablePoint) != tc.first || str(st.LastRecoverablePoint) != tc.last {
				t.Errorf("window %s to %s, want %s to %s", str(st.FirstRecoverablePoint), str(st.LastRecoverablePoint), tc.first, tc.last)
			}
			cs, reason, msg := decideRecoverable(st)
			if cs != tc.status || reason != tc.reason || !strings.Contains(msg, tc.msg) {
				t.Errorf("Recoverable %s %s %q, want %s %s containing %q", cs, reason, msg, tc.status, tc.reason, tc.msg)
			}
		})
	}
}

func TestResolveArchive(t *testing.T) {
	s3 := &databasev1.S3Config{Endpoint: "http://s3:9000", CredentialsSecret: corev1.LocalObjectReference{Name: "creds"}}
	db := func(spec databasev1.WALArchiveSpec) *databasev1.Database {
		return &databasev1.Database{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns"},
			Spec: databasev1.DatabaseSpec{WALArchive: &spec}}
	}
	for _, tc := range []struct {
		name     string
		db       *databasev1.Database
		defaults ArchiveDefaults
		want     string
		wantErr  string
	}{
		{"the spec's location", db(databasev1.WALArchiveSpec{StorageLocation: "s3://wal/prod", S3: s3}), ArchiveDefaults{}, "s3://wal/prod", ""},
		{"the default location, under namespace/name", db(databasev1.WALArchiveSpec{}), ArchiveDefaults{Location: "s3://backups/cluster", S3: s3},
			"s3://backups/cluster/ns/db", ""},
		{"no default", db(databasev1.WALArchiveSpec{}), ArchiveDefaults{}, "", "no default s3:// location"},
		{"a pvc:// default is no WAL archive location", db(databasev1.WALArchiveSpec{}), ArchiveDefaults{Location: "pvc://backups"}, "", "no default s3:// location"},
		{"a location without S3 settings", db(databasev1.WALArchiveSpec{StorageLocation: "s3://wal/prod"}), ArchiveDefaults{}, "", "needs spec.walArchive.s3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := resolveArchive(tc.db, tc.defaults)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("resolveArchive = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("resolveArchive = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// Against a real API server: turning spec.walArchive on writes the
// <name>-wal-archive Secret every instance mounts (the configuration and the
// credentials copied from the user's Secret), a missing credentials Secret is
// a False condition with its reason, and turning it off deletes the Secret.
func TestTheWALArchiveSecretFollowsTheSpec(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	manifest := strings.Replace(seedManifest, "size: 10Gi", `size: 10Gi
  walArchive:
    storageLocation: s3://wal/prod
    archiveTimeout: 30s
    s3:
      endpoint: http://s3.storage:9000
      forcePathStyle: true
      credentialsSecret:
        name: wal-creds`, 1)
	if err := applyYAML(t, ns, manifest); err != nil {
		t.Fatal(err)
	}
	key := types.NamespacedName{Namespace: ns, Name: "my-database"}
	condition := func() *metav1.Condition {
		db := &databasev1.Database{}
		if err := k8s.Get(ctx, key, db); err != nil {
			return nil
		}
		for i := range db.Status.Conditions {
			if db.Status.Conditions[i].Type == databasev1.ConditionContinuousArchiving {
				return &db.Status.Conditions[i]
			}
		}
		return nil
	}
	eventually(t, "ContinuousArchiving False: the credentials Secret is missing", func() string {
		c := condition()
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != databasev1.ReasonArchiveSecretNotFound || !strings.Contains(c.Message, "wal-creds") {
			return "condition " + condString(c)
		}
		return ""
	})
	if err := k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "wal-creds", Namespace: ns},
		Data: map[string][]byte{"accessKeyId": []byte("AK"), "secretAccessKey": []byte("SK-secret")}}); err != nil {
		t.Fatal(err)
	}
	secret := &corev1.Secret{}
	secretKey := types.NamespacedName{Namespace: ns, Name: "my-database-wal-archive"}
	eventually(t, "the wal-archive Secret", func() string {
		if err := k8s.Get(ctx, secretKey, secret); err != nil {
			return err.Error()
		}
		return ""
	})
	var c walarchive.Config
	if err := json.Unmarshal(secret.Data[walarchive.ConfigFile], &c); err != nil {
		t.Fatal(err)
	}
	if c.Location != "s3://wal/prod" || c.Endpoint != "http://s3.storage:9000" || !c.ForcePathStyle || c.ArchiveTimeoutSeconds != 30 || c.Encrypted {
		t.Errorf("config = %+v", c)
	}
	if string(secret.Data[walarchive.AccessKeyFile]) != "AK" || string(secret.Data[walarchive.SecretKeyFile]) != "SK-secret" {
		t.Errorf("credentials not copied: %v", secret.Data)
	}
	if !metav1.IsControlledBy(secret, mustGetDB(t, key)) {
		t.Error("the Secret is not owned by the Database")
	}
	eventually(t, "ContinuousArchiving Unknown until the primary reports", func() string {
		if c := condition(); c == nil || c.Status != metav1.ConditionUnknown || c.Reason != databasev1.ReasonArchiveUnknown {
			return "condition " + condString(c)
		}
		return ""
	})
	// Off: the Secret goes (the agents write archive_command '/bin/true' at
	// their next look) and so does the condition.
	db := mustGetDB(t, key)
	patch := []byte(`{"spec":{"walArchive":null}}`)
	if err := k8s.Patch(ctx, db, client.RawPatch(types.MergePatchType, patch)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the wal-archive Secret deleted and the condition gone", func() string {
		if err := k8s.Get(ctx, secretKey, &corev1.Secret{}); !apierrors.IsNotFound(err) {
			return "secret still there: " + errString(err)
		}
		if c := condition(); c != nil {
			return "condition " + condString(c)
		}
		return ""
	})
}

func mustGetDB(t *testing.T, key types.NamespacedName) *databasev1.Database {
	t.Helper()
	db := &databasev1.Database{}
	if err := k8s.Get(context.Background(), key, db); err != nil {
		t.Fatal(err)
	}
	return db
}

func condString(c *metav1.Condition) string {
	if c == nil {
		return "absent"
	}
	return string(c.Status) + " " + c.Reason + ": " + c.Message
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}

// Every instance pod mounts the (optional) wal-archive Secret and the agent
// is told where: turning the archive on or off never changes the pod.
func TestInstancePodsAlwaysMountTheWALArchiveSecret(t *testing.T) {
	for _, archived := range []bool{false, true} {
		db := testDB(2)
		if archived {
			db.Spec.WALArchive = &databasev1.WALArchiveSpec{StorageLocation: "s3://wal/x"}
		}
		sts := buildStatefulSet(db, statefulSetInput{Image: "postgres:15", AgentImage: "op:1", ClaimSize: resource.MustParse("1Gi")})
		spec := sts.Spec.Template.Spec
		found := false
		for _, v := range spec.Volumes {
			if *v.Name == volumeWALArchive && v.Secret != nil && *v.Secret.SecretName == db.Name+"-wal-archive" && *v.Secret.Optional {
				found = true
			}
		}
		if !found {
			t.Errorf("archived %v: no optional wal-archive Secret volume", archived)
		}
		c := spec.Containers[0]
		if !slices.Contains(c.Command, "--wal-archive-dir="+WALArchiveDir) {
			t.Errorf("archived %v: command %v", archived, c.Command)
		}
		mounted := false
		for _, m := range c.VolumeMounts {
			mounted = mounted || (*m.Name == volumeWALArchive && *m.MountPath == WALArchiveDir)
		}
		if !mounted {
			t.Errorf("archived %v: not mounted", archived)
		}
	}
	a := buildStatefulSet(testDB(2), statefulSetInput{Image: "postgres:15", AgentImage: "op:1", ClaimSize: resource.MustParse("1Gi")})
	db := testDB(2)
	db.Spec.WALArchive = &databasev1.WALArchiveSpec{StorageLocation: "s3://wal/x"}
	b := buildStatefulSet(db, statefulSetInput{Image: "postgres:15", AgentImage: "op:1", ClaimSize: resource.MustParse("1Gi")})
	if !reflect.DeepEqual(a.Spec.Template, b.Spec.Template) {
		t.Error("turning the archive on changed the pod template (a rollout)")
	}
}

// A Database recovered from another Database's archive may not archive into
// that same archive (it keeps the source's system identifier: the two
// clusters' timelines would mix): nothing is configured and the condition
// says why; another location is archived to.
func TestARecoveredDatabaseNeverArchivesIntoItsSourcesArchive(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	archive := `
  walArchive:
    storageLocation: s3://wal/src/
    s3:
      endpoint: http://s3.storage:9000
      forcePathStyle: true
      credentialsSecret:
        name: wal-creds`
	if err := k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "wal-creds", Namespace: ns},
		Data: map[string][]byte{"accessKeyId": []byte("AK"), "secretAccessKey": []byte("SK-secret")}}); err != nil {
		t.Fatal(err)
	}
	if err := applyYAML(t, ns, strings.Replace(strings.Replace(seedManifest, "size: 10Gi", "size: 10Gi"+archive, 1), "name: my-database", "name: src", 1)); err != nil {
		t.Fatal(err)
	}
	src := &databasev1.Database{}
	eventually(t, "the source's recorded system identifier", func() string {
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "src"}, src); err != nil {
			return err.Error()
		}
		src.Status.SystemIdentifier = "7400"
		if err := k8s.Status().Update(ctx, src); err != nil {
			return err.Error()
		}
		return ""
	})
	clone := strings.Replace(seedManifest, "size: 10Gi", "size: 10Gi"+strings.Replace(archive, "s3://wal/src/", "s3://wal/src", 1)+`
  bootstrap:
    pointInTime:
      databaseRef: {name: src}
      latest: true`, 1)
	if err := applyYAML(t, ns, clone); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ContinuousArchiving False: ArchiveIsRecoverySource", func() string {
		c := condition(t, ns, databasev1.ConditionContinuousArchiving)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != databasev1.ReasonArchiveIsRecoverySource || !strings.Contains(c.Message, "another storageLocation") {
			return "condition " + condString(c)
		}
		return ""
	})
	secretKey := types.NamespacedName{Namespace: ns, Name: "my-database-wal-archive"}
	if err := k8s.Get(ctx, secretKey, &corev1.Secret{}); err == nil {
		t.Error("the archive Secret was written for the source's archive")
	}
	if err := applyYAML(t, ns, strings.Replace(clone, "s3://wal/src", "s3://wal/clone", 1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the archive Secret for another location", func() string {
		if err := k8s.Get(ctx, secretKey, &corev1.Secret{}); err != nil {
			return err.Error()
		}
		return ""
	})
}
